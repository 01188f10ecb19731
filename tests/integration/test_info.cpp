// `emcryo info` on a STAR file and an MRC stack; a bad file gives one line and a non-zero exit.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "emcryo/core/files.hpp"

namespace fs = std::filesystem;

TEST(Info, SummarisesStarAndMrc) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("emcryo_info_{}", getpid());
  fs::remove_all(dir);
  const std::string exe = EMCRYO_EXE;
  ASSERT_EQ(std::system(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --out {} --particles 30 --box 32 --pixel-size 4 >/dev/null 2>&1",
                                    exe, EMCRYO_SOURCE_DIR, dir.string()).c_str()), 0);
  ASSERT_EQ(std::system(fmt::format("{} info {} > {} 2>&1", exe, (dir / "particles.star").string(), (dir / "star.txt").string()).c_str()), 0);
  const auto star = emcryo::read_text_file(dir / "star.txt");
  EXPECT_NE(star.find("particles     30"), std::string::npos) << star;
  EXPECT_NE(star.find("box           32 px"), std::string::npos) << star;
  EXPECT_NE(star.find("pixel size    4.0000"), std::string::npos) << star;
  EXPECT_NE(star.find("optics groups 1"), std::string::npos) << star;
  EXPECT_NE(star.find("rlnDefocusU"), std::string::npos) << star;
  ASSERT_EQ(std::system(fmt::format("{} info {} > {} 2>&1", exe, (dir / "particles.mrcs").string(), (dir / "mrc.txt").string()).c_str()), 0);
  const auto mrc = emcryo::read_text_file(dir / "mrc.txt");
  EXPECT_NE(mrc.find("32 x 32 x 30"), std::string::npos) << mrc;
  EXPECT_NE(mrc.find("image stack"), std::string::npos) << mrc;
  emcryo::write_text_file(dir / "bad.mrc", "not an mrc file");
  EXPECT_NE(std::system(fmt::format("{} info {} > {} 2>&1", exe, (dir / "bad.mrc").string(), (dir / "bad.txt").string()).c_str()), 0);
  const auto bad = emcryo::read_text_file(dir / "bad.txt");
  EXPECT_NE(bad.find("bad.mrc"), std::string::npos) << bad;
  EXPECT_EQ(std::count(bad.begin(), bad.end(), '\n'), 1) << bad;
  fs::remove_all(dir);
}
