// cryoSPARC .cs as a job input: a simulated STAR converted to particles.cs (as cryoSPARC would
// hold it, paths relative to the project folder) reconstructs to the same map as the STAR, and
// converting it back gives a STAR that RELION's own reader accepts.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "emcryo/io/mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
namespace test = emcryo::test;

namespace {

test::CommandResult run(const std::string& command, const fs::path& dir) { return test::run_capture(command, dir); }

TEST(CsInterop, ReconstructFromCsMatchesTheStar) {
  const test::TempDir dir("cs_interop", /*keep_on_failure=*/true);
  const std::string exe = fmt::format("'{}'", EMCRYO_EXE);
  auto ok = [&](const std::string& command) {
    const auto r = run(command, dir.path());
    EXPECT_EQ(r.exit_code, 0) << command << "\n" << r.output;
    return r.exit_code == 0;
  };
  ASSERT_TRUE(ok(fmt::format("{} simulate --model '{}/data/1tii.pdb.gz' --particles 600 --box 32 --pixel-size 4.5 "
                             "--snr 0.5 --out sim",
                             exe, EMCRYO_SOURCE_DIR)));
  fs::create_directories(dir / "J5");
  ASSERT_TRUE(ok(fmt::format("{} convert sim/particles.star J5/particles.cs", exe)));
  ASSERT_TRUE(ok(fmt::format("{} reconstruct --particles sim/particles.star --out from_star", exe)));
  // The .cs sits in a job folder: its blob paths resolve from the project folder above it, by
  // default and with --cs-root.
  ASSERT_TRUE(ok(fmt::format("{} reconstruct --particles J5/particles.cs --out from_cs", exe)));
  ASSERT_TRUE(ok(fmt::format("{} reconstruct --particles J5/particles.cs --cs-root . --out from_cs_root", exe)));
  const auto a = emcryo::io::MrcReader(dir / "from_star/map_unfil.mrc").read_all();
  for (const char* other : {"from_cs/map_unfil.mrc", "from_cs_root/map_unfil.mrc"}) {
    const auto b = emcryo::io::MrcReader(dir / other).read_all();
    ASSERT_EQ(a.size(), b.size());
    double peak = 0, diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      peak = std::max(peak, static_cast<double>(std::abs(a[i])));
      diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
    }
    // Only float32 rounding of defocus and angles in the .cs separates the two.
    EXPECT_LT(diff, 1e-3 * peak) << other;
  }
  ASSERT_TRUE(ok(fmt::format("{} convert J5/particles.cs back.star", exe)));
  if (!test::have_program("relion_star_handler")) GTEST_SKIP() << "relion_star_handler is not installed";
  ASSERT_TRUE(ok("relion_star_handler --i back.star --o relion_copy.star"));
  EXPECT_TRUE(fs::exists(dir / "relion_copy.star"));
}

}  // namespace
