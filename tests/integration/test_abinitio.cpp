// Ab-initio reconstruction on small simulated sets, judged against the truth after superposition
// (rotation, shift and hand; jobs/align_map). The sets are scaled down from the issue's 5000
// particles at 64 px (bench/abinitio.sh runs those) so that the four tests take about two minutes.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string_view>
#include <thread>

#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"
#include "emcryo/jobs/align_map.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

fs::path log_file() { return fs::temp_directory_path() / "emcryo_test_abinitio.log"; }
int run(const std::string& command) { return test::run_logged(command, log_file()); }

/// index@basename of an rlnImageName: the stack's folder differs between truth.star and outputs.
std::string image_key(std::string_view name) {
  const auto at = name.find('@');
  return std::string(name.substr(0, at)) + "@" + fs::path(std::string(name.substr(at + 1))).filename().string();
}

jobs::AlignMapResult compare(const fs::path& map, const fs::path& truth) {
  io::MrcReader t(truth);
  return jobs::align_and_compare(io::MrcReader(map).read_all(), t.read_all(), t.nx(), t.pixel_size());
}

/// 1TII, 1200 particles of 40 px at 3.2 Å/px (Nyquist 6.4 Å), SNR 0.1, and one ab-initio run on
/// them, shared by the single-protein tests.
class AbinitioSingle : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    temp_ = new test::TempDir("abinitio_single", true);
    const std::string exe = EMCRYO_EXE;
    ASSERT_EQ(run(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --out {} --particles 1200 --box 40 --pixel-size 3.2 --snr 0.1 --seed 5",
                              exe, EMCRYO_SOURCE_DIR, (dir() / "data").string())),
              0);
    ASSERT_EQ(run(fmt::format("{} abinitio --particles {} --out {} --iterations 24 --final-batch 200", exe,
                              (dir() / "data/particles.star").string(), (dir() / "ab").string())),
              0);
  }
  static void TearDownTestSuite() { delete temp_; }
  static fs::path dir() { return temp_->path(); }
  static test::TempDir* temp_;
};
test::TempDir* AbinitioSingle::temp_ = nullptr;

TEST_F(AbinitioSingle, ReachesFifteenAngstromToTheTruth) {
  io::MrcReader map(dir() / "ab/class_001.mrc");
  EXPECT_EQ(map.nx(), 40);
  EXPECT_NEAR(map.pixel_size(), 3.2, 1e-3);
  const auto r = compare(dir() / "ab/class_001.mrc", dir() / "data/truth_class001.mrc");
  EXPECT_LE(r.resolution_05, 15.0) << "FSC 0.5 to the truth after superposition";
  // Outputs: poses and classes of every particle, the report with its handedness note and stages.
  const auto star = io::read_star(dir() / "ab/particles.star");
  const auto& t = star.require_block("particles").table;
  EXPECT_EQ(t.rows(), 1200u);
  for (const char* label : {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnClassNumber"})
    EXPECT_GE(t.find(label), 0) << label;
  const std::string report = test::read_text(dir() / "ab/report.html");
  EXPECT_NE(report.find("mirror image"), std::string::npos);
  EXPECT_NE(report.find("Resolution schedule"), std::string::npos);
  EXPECT_NE(report.find("iteration 24"), std::string::npos);
}

TEST_F(AbinitioSingle, RefineFromItMatchesRefineFromTheTruth) {
  const std::string exe = EMCRYO_EXE;
  const std::string particles = (dir() / "data/particles.star").string();
  ASSERT_EQ(run(fmt::format("{} refine --particles {} --ref {} --ini-high 30 --out {}", exe, particles, (dir() / "ab/class_001.mrc").string(),
                            (dir() / "from_ab").string())),
            0);
  ASSERT_EQ(run(fmt::format("{} refine --particles {} --ref {} --ini-high 30 --out {}", exe, particles,
                            (dir() / "data/truth_class001.mrc").string(), (dir() / "from_truth").string())),
            0);
  // Judged by the FSC to the truth after superposition: the ab-initio map's hand and frame are
  // its own. (The gold-standard figures of both runs are logged for the record.)
  const auto from_ab = compare(dir() / "from_ab/map_unfil.mrc", dir() / "data/truth_class001.mrc");
  const auto from_truth = compare(dir() / "from_truth/map_unfil.mrc", dir() / "data/truth_class001.mrc");
  // FSC 0.5 within 5% (the issue's bound). At 0.143 the two refinements of 1200 particles differ
  // by up to ~6% from run to run either way (measured: 9.91 vs 9.61 and 10.17 vs 9.65 Å), so the
  // bound there is 10%; bench/abinitio.sh compares them on the 5000-particle set.
  EXPECT_LE(from_ab.resolution_05, 1.05 * from_truth.resolution_05) << "from truth: " << from_truth.resolution_05;
  EXPECT_LE(from_ab.resolution_0143, 1.10 * from_truth.resolution_0143) << "from truth: " << from_truth.resolution_0143;
}

// A bad input fails with a message naming it and leaves no output folder behind (the inputs are
// judged before the folder is made): a missing particles file, and --max-res beyond Nyquist.
TEST_F(AbinitioSingle, BadInputLeavesNoOutputFolder) {
  const std::string exe = EMCRYO_EXE;
  const auto missing = test::run_capture(fmt::format("{} abinitio --particles {} --out {}", exe, (dir() / "nothing.star").string(),
                                                     (dir() / "bad_missing").string()));
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("nothing.star"), std::string::npos) << missing.output;
  EXPECT_FALSE(fs::exists(dir() / "bad_missing"));
  const auto beyond = test::run_capture(fmt::format("{} abinitio --particles {} --out {} --max-res 5", exe,
                                                    (dir() / "data/particles.star").string(), (dir() / "bad_nyquist").string()));
  EXPECT_NE(beyond.exit_code, 0);
  EXPECT_NE(beyond.output.find("Nyquist"), std::string::npos) << beyond.output;
  EXPECT_FALSE(fs::exists(dir() / "bad_nyquist"));
}

TEST(Abinitio, TwoClassMixtureSeparates) {
  const test::TempDir temp("abinitio_mix", true);
  const fs::path& dir = temp.path();
  const std::string exe = EMCRYO_EXE;
  ASSERT_EQ(run(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --model {}/bench/heldout_models/2XHE.pdb.gz --out {} --particles 1200 "
                            "--box 40 --pixel-size 3.2 --snr 0.1 --seed 7",
                            exe, EMCRYO_SOURCE_DIR, EMCRYO_SOURCE_DIR, (dir / "data").string())),
            0);
  ASSERT_EQ(run(fmt::format("{} abinitio --particles {} --out {} --classes 2 --iterations 24 --final-batch 300", exe,
                            (dir / "data/particles.star").string(), (dir / "ab").string())),
            0);
  // Each map matched to the truth it resembles best (the matching with the better total).
  double res[2][2];
  for (int k = 0; k < 2; ++k)
    for (int t = 0; t < 2; ++t)
      res[k][t] = compare(dir / fmt::format("ab/class_{:03}.mrc", k + 1), dir / fmt::format("data/truth_class{:03}.mrc", t + 1)).resolution_05;
  const bool swapped = res[0][1] + res[1][0] < res[0][0] + res[1][1];
  const int truth_of[2] = {swapped ? 1 : 0, swapped ? 0 : 1};
  for (int k = 0; k < 2; ++k) EXPECT_LE(res[k][truth_of[k]], 20.0) << "class " << k + 1;
  // Class assignments against truth.star, by image name.
  const auto truth = io::read_star(dir / "data/truth.star");
  const auto result = io::read_star(dir / "ab/particles.star");
  const auto& tt = truth.require_block("particles").table;
  const auto& rt = result.require_block("particles").table;
  std::map<std::string, int> true_class;
  for (std::size_t i = 0; i < tt.rows(); ++i)
    true_class[image_key(tt.text(i, tt.require("rlnImageName")))] = static_cast<int>(tt.number(i, tt.require("rlnClassNumber"))) - 1;
  std::size_t right = 0;
  for (std::size_t i = 0; i < rt.rows(); ++i) {
    const int k = static_cast<int>(rt.number(i, rt.require("rlnClassNumber"))) - 1;
    right += true_class.at(image_key(rt.text(i, rt.require("rlnImageName")))) == truth_of[k];
  }
  EXPECT_GE(static_cast<double>(right) / static_cast<double>(rt.rows()), 0.9);
}

TEST(Abinitio, ContinuesAfterAKill) {
  const test::TempDir temp("abinitio_kill");
  const fs::path& dir = temp.path();
  const std::string exe = EMCRYO_EXE;
  ASSERT_EQ(run(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --out {} --particles 300 --box 32 --pixel-size 4 --snr 0.3 --seed 2", exe,
                            EMCRYO_SOURCE_DIR, (dir / "data").string())),
            0);
  const std::string common =
      fmt::format("abinitio --particles {} --iterations 12 --initial-batch 60 --final-batch 100", (dir / "data/particles.star").string());
  // An uninterrupted run, then the same run killed after a checkpoint and resumed: the same maps.
  ASSERT_EQ(run(fmt::format("{} {} --out {}", exe, common, (dir / "whole").string())), 0);
  ASSERT_EQ(test::run(fmt::format("{} {} --out {} >/dev/null 2>&1 & echo $! > {}", exe, common, (dir / "run").string(), (dir / "pid").string())), 0);
  bool seen = false;
  for (int i = 0; i < 6000 && !seen; ++i) {
    seen = fs::exists(dir / "run/checkpoint.json") &&
           nlohmann::json::parse(test::read_text(dir / "run/checkpoint.json")).at("iteration").get<int>() >= 3;
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::string pid = test::read_text(dir / "pid");
  const bool killed_while_running = test::run(fmt::format("kill -9 {} 2>/dev/null", pid.substr(0, pid.find('\n')))) == 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(seen);
  ASSERT_TRUE(killed_while_running) << "the run ended before it could be killed";
  ASSERT_FALSE(fs::exists(dir / "run/class_001.mrc")) << "the run was killed after its end";
  const int at = nlohmann::json::parse(test::read_text(dir / "run/checkpoint.json")).at("iteration").get<int>();
  const auto resumed = test::run_capture(fmt::format("{} abinitio --continue {}", exe, (dir / "run").string()));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find(fmt::format("continuing after SGD iteration {}", at)), std::string::npos) << resumed.output;
  const auto whole = io::MrcReader(dir / "whole/class_001.mrc").read_all(), again = io::MrcReader(dir / "run/class_001.mrc").read_all();
  ASSERT_EQ(whole.size(), again.size());
  double peak = 0;
  for (float v : whole) peak = std::max(peak, static_cast<double>(std::abs(v)));
  EXPECT_LE(test::max_abs_diff(whole, again), 1e-4 * peak);
  // A second start in the same folder is refused.
  EXPECT_NE(run(fmt::format("{} {} --out {}", exe, common, (dir / "run").string())), 0);
}

}  // namespace

namespace {

// Symmetry imposed during the run: the map's axis is the group's (z for C5), so superposing it on
// the (C5-symmetric) truth needs no tilt; 600 particles, 20 iterations.
TEST(Abinitio, ImposesSymmetryOnTheGroupsAxes) {
  const test::TempDir temp("abinitio_c5", true);
  const fs::path& dir = temp.path();
  const std::string exe = EMCRYO_EXE;
  ASSERT_EQ(run(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --sym C5 --out {} --particles 600 --box 40 --pixel-size 3.2 --snr 0.1 --seed 9",
                            exe, EMCRYO_SOURCE_DIR, (dir / "data").string())),
            0);
  ASSERT_EQ(run(fmt::format("{} abinitio --particles {} --out {} --sym C5 --iterations 20 --final-batch 150", exe,
                            (dir / "data/particles.star").string(), (dir / "ab").string())),
            0);
  const auto r = compare(dir / "ab/class_001.mrc", dir / "data/truth_class001.mrc");
  EXPECT_LE(r.resolution_05, 18.0);  // measured 14.5 Å
  // The z axes agree (up to the mirror, which turns z into -z only through a tilt of 180 degrees).
  const double axis_angle = std::acos(std::clamp(std::abs(r.alignment.rotation(2, 2)), 0.0, 1.0)) * 180 / 3.141592653589793;
  EXPECT_LT(axis_angle, 5.0);
}

}  // namespace
