// `emcryo info` on a STAR file and an MRC stack; a bad file gives one line and a non-zero exit.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "support/test_support.hpp"

namespace fs = std::filesystem;
namespace test = emcryo::test;

TEST(Info, SummarisesStarAndMrc) {
  const test::TempDir temp("info");
  const fs::path& dir = temp.path();
  const std::string exe = EMCRYO_EXE;
  ASSERT_EQ(test::run(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --out {} --particles 30 --box 32 --pixel-size 4 >/dev/null 2>&1",
                                  exe, EMCRYO_SOURCE_DIR, dir.string())), 0);
  const auto star_info = test::run_capture(fmt::format("{} info {}", exe, (dir / "particles.star").string()));
  ASSERT_EQ(star_info.exit_code, 0);
  const auto& star = star_info.output;
  EXPECT_NE(star.find("particles     30"), std::string::npos) << star;
  EXPECT_NE(star.find("box           32 px"), std::string::npos) << star;
  EXPECT_NE(star.find("pixel size    4.0000"), std::string::npos) << star;
  EXPECT_NE(star.find("optics groups 1"), std::string::npos) << star;
  EXPECT_NE(star.find("rlnDefocusU"), std::string::npos) << star;
  const auto mrc_info = test::run_capture(fmt::format("{} info {}", exe, (dir / "particles.mrcs").string()));
  ASSERT_EQ(mrc_info.exit_code, 0);
  const auto& mrc = mrc_info.output;
  EXPECT_NE(mrc.find("32 x 32 x 30"), std::string::npos) << mrc;
  EXPECT_NE(mrc.find("image stack"), std::string::npos) << mrc;
  test::write_text(dir / "bad.mrc", "not an mrc file");
  const auto bad_info = test::run_capture(fmt::format("{} info {}", exe, (dir / "bad.mrc").string()));
  EXPECT_NE(bad_info.exit_code, 0);
  const auto& bad = bad_info.output;
  EXPECT_NE(bad.find("bad.mrc"), std::string::npos) << bad;
  EXPECT_EQ(std::count(bad.begin(), bad.end(), '\n'), 1) << bad;
}

// Any STAR file: its blocks, columns and rows; a particle STAR with missing stacks still gets its
// summary, with a warning that names them. A .cs file lists its fields and its particles.
TEST(Info, AnyStarFileAndMissingStacks) {
  const std::string exe = EMCRYO_EXE;
  const fs::path data = fs::path(EMCRYO_SOURCE_DIR) / "tests/data/star";
  const auto model = test::run_capture(fmt::format("{} info {}", exe, (data / "model.star").string()));
  ASSERT_EQ(model.exit_code, 0) << model.output;
  EXPECT_NE(model.output.find("data_model_general: key-value pairs, 8 keys"), std::string::npos) << model.output;
  EXPECT_NE(model.output.find("data_model_classes: loop, 2 rows, 5 columns"), std::string::npos) << model.output;
  EXPECT_NE(model.output.find("rlnClassDistribution"), std::string::npos) << model.output;
  const auto missing = test::run_capture(fmt::format("{} info {}", exe, (data / "missing_stacks.star").string()));
  ASSERT_EQ(missing.exit_code, 0) << missing.output;
  EXPECT_NE(missing.output.find("particles     2"), std::string::npos) << missing.output;
  EXPECT_NE(missing.output.find("2 of 2 stacks not found"), std::string::npos) << missing.output;
  EXPECT_NE(missing.output.find("20170629_00022_frameImage.mrcs"), std::string::npos) << missing.output;

  const test::TempDir temp("info_cs");
  const auto cs = temp / "p.cs";
  ASSERT_EQ(test::run(fmt::format("{} convert {} {} > /dev/null", exe, (data / "relion31_particles.star").string(),
                                  cs.string())), 0);
  const auto cs_info = test::run_capture(fmt::format("{} info {} --cs-root {}", exe, cs.string(), temp.path().string()));
  ASSERT_EQ(cs_info.exit_code, 0) << cs_info.output;
  EXPECT_NE(cs_info.output.find("alignments3D/pose"), std::string::npos) << cs_info.output;
  EXPECT_NE(cs_info.output.find("particles     2"), std::string::npos) << cs_info.output;
}
