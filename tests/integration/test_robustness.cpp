// Nothing lost, nothing crashes (issue 16), through the CLI: hostile input files give one line and
// exit 1; a full disk stops a job with the file named and everything earlier intact, and
// --continue then finishes it; read-only folders; two jobs into one folder.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "emcryo/io/mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
namespace test = emcryo::test;

namespace {

const std::string kExe = EMCRYO_EXE;

// The error line of a failed command: exit 1, exactly one line, naming `what`.
void expect_one_line_error(const test::CommandResult& r, const std::string& what) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_NE(r.output.find(what), std::string::npos) << r.output;
}

class Robustness : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new test::TempDir("robustness");
    ASSERT_EQ(test::run(fmt::format("{} -j 1 simulate --model {}/data/1tii.pdb.gz --out {} --particles 60 --box 24 "
                                    "--pixel-size 6 --snr 0.5 --seed 2 >/dev/null 2>&1",
                                    kExe, EMCRYO_SOURCE_DIR, data().string())),
              0);
  }
  static void TearDownTestSuite() { delete data_; }
  static fs::path data() { return data_->path(); }
  static std::string star() { return (data() / "particles.star").string(); }

  // A file system of `kib` KiB at `dir` (tmpfs, else a loop-mounted ext2 image); false when
  // neither can be mounted here (not root, no CAP_SYS_ADMIN), with the reason in `why`.
  bool mount_small(const fs::path& dir, int kib, bool read_only, std::string& why) {
    fs::create_directories(dir);
    const std::string options = fmt::format("size={}k{}", kib, read_only ? ",ro" : "");
    if (test::run(fmt::format("mount -t tmpfs -o {} tmpfs {} 2>/dev/null", options, dir.string())) == 0) {
      mounts_.push_back(dir);
      return true;
    }
    const fs::path image = scratch_.path() / fmt::format("fs{}.img", mounts_.size());
    if (test::run(fmt::format("truncate -s {}k {} && mkfs.ext2 -q -F {} >/dev/null 2>&1 && mount -o loop{} {} {} "
                              "2>/dev/null",
                              kib, image.string(), image.string(), read_only ? ",ro" : "", image.string(),
                              dir.string())) == 0) {
      mounts_.push_back(dir);
      return true;
    }
    why = "cannot mount a tmpfs or a loop image here (needs root with CAP_SYS_ADMIN)";
    return false;
  }
  void TearDown() override {
    for (const auto& m : mounts_) ::umount2(m.c_str(), MNT_DETACH);
  }

  static test::TempDir* data_;
  const test::TempDir scratch_{"robustness_run"};
  std::vector<fs::path> mounts_;
};
test::TempDir* Robustness::data_ = nullptr;

TEST_F(Robustness, HostileFilesGiveOneLineAndExitOne) {
  const fs::path& d = scratch_.path();
  const std::string stack = (data() / "particles.mrcs").string();
  const auto info = [&](const fs::path& file) { return test::run_capture(fmt::format("{} info '{}'", kExe, file.string())); };
  const auto reconstruct = [&](const fs::path& file) {
    return test::run_capture(
        fmt::format("{} -j 1 reconstruct --particles '{}' --out '{}'", kExe, file.string(), (d / "rec").string()));
  };
  // MRC: sizes overflowing when multiplied, zero, a huge nz with a short file, a NaN cell.
  std::string bytes = test::read_text(stack);
  const auto with_words = [&](const std::string& name, std::vector<std::pair<int, std::int32_t>> words) {
    std::string b = bytes;
    for (auto [word, value] : words) std::memcpy(b.data() + 4 * word, &value, 4);
    return test::write_text(d / name, b);
  };
  expect_one_line_error(info(with_words("overflow.mrcs", {{0, 2147483647}, {1, 2147483647}, {2, 2147483647}})),
                        "overflow.mrcs: truncated");
  expect_one_line_error(info(with_words("zero.mrcs", {{0, 0}})), "zero.mrcs: non-positive");
  expect_one_line_error(info(with_words("hugenz.mrcs", {{2, 2147483647}})), "hugenz.mrcs: truncated");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::int32_t nan_bits;
  std::memcpy(&nan_bits, &nan, 4);
  expect_one_line_error(info(with_words("nancell.mrcs", {{10, nan_bits}})), "nancell.mrcs: header field cella");
  expect_one_line_error(info(test::write_text(d / "empty.mrc", "")), "empty.mrc: not an MRC file");

  // STAR given to info and reconstruct: empty, junk, a 10^6-character line, CRLF, bad names.
  const std::string text = test::read_text(star());
  const auto variant = [&](const std::string& name, const std::string& content) {
    return test::write_text(data() / name, content);  // beside the stack, so image names resolve
  };
  expect_one_line_error(reconstruct(variant("empty.star", "")), "empty.star: no data_ block");
  expect_one_line_error(info(variant("junk.star", std::string("\x7f\x45LF\x02\x01\x01\0\0\0", 10))), "junk.star:1:");
  expect_one_line_error(info(variant("long.star", text + std::string(1'000'000, 'y') + "\n")), "long.star:");
  std::string crlf;
  for (char c : text) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  EXPECT_EQ(info(variant("crlf.star", crlf)).exit_code, 0);
  const auto first_name = text.find("@");
  const auto renamed = [&](const std::string& name, const std::string& replacement) {
    std::string t = text;
    const auto start = t.rfind('\n', first_name) + 1;
    t.replace(start, first_name + 1 - start, replacement);
    return variant(name, t);
  };
  expect_one_line_error(reconstruct(renamed("index0.star", "0@")), "index0.star:");
  expect_one_line_error(reconstruct(renamed("beyond.star", "999@")), "is beyond the end");
  std::string t = text;
  t.replace(first_name, t.find(' ', first_name) - first_name, "@");
  expect_one_line_error(reconstruct(variant("nopath.star", t)), "names no stack file");
  std::string dup = text;
  dup.insert(dup.find("_rlnImageName"), "_rlnDefocusU #99\n");
  expect_one_line_error(reconstruct(variant("dup.star", dup)), "duplicate column rlnDefocusU");
  std::string missing = text;
  missing.replace(missing.find("_rlnImageName"), 13, "_rlnImageNam");
  expect_one_line_error(reconstruct(variant("missing.star", missing)), "missing.star: data_particles: missing required column rlnImageName");
}

TEST_F(Robustness, ReadOnlyOutputFolderIsAClearError) {
  std::string why;
  const fs::path ro = scratch_.path() / "ro";
  if (!mount_small(ro, 256, true, why)) GTEST_SKIP() << why;
  const auto rec = test::run_capture(fmt::format("{} -j 1 reconstruct --particles {} --out {}", kExe, star(), (ro / "rec").string()));
  expect_one_line_error(rec, "Read-only file system");
  const auto c2d = test::run_capture(
      fmt::format("{} -j 1 class2d --particles {} --classes 2 --out {}", kExe, star(), (ro / "c2d").string()));
  expect_one_line_error(c2d, "Read-only file system");
}

TEST_F(Robustness, TwoJobsIntoOneFolderTheSecondRefuses) {
  const fs::path out = scratch_.path() / "c2d";
  const std::string cmd = fmt::format("{} -j 1 class2d --particles {} --classes 3 --iterations 200 --out {}", kExe, star(), out.string());
  ASSERT_EQ(test::run(fmt::format("{} >/dev/null 2>&1 & echo $! > {}", cmd, (scratch_.path() / "pid").string())), 0);
  std::string pid = test::read_text(scratch_.path() / "pid");
  pid = pid.substr(0, pid.find('\n'));
  for (int i = 0; i < 600 && !fs::exists(out / ".emcryo.lock"); ++i) ::usleep(10'000);
  const auto second = test::run_capture(cmd);
  expect_one_line_error(second, "another emcryo job (pid " + pid);
  const auto resume = test::run_capture(fmt::format("{} -j 1 class2d --continue {}", kExe, out.string()));
  EXPECT_EQ(resume.exit_code, 1) << resume.output;
  test::run("kill -9 " + pid);
  for (int i = 0; i < 500 && test::run("kill -0 " + pid + " 2>/dev/null") == 0; ++i) ::usleep(10'000);
}

// The output folder on a file system that fills up mid-run: the job stops with the file named,
// every earlier output and the checkpoint stay intact, and --continue after freeing space ends
// the job with the same result as an uninterrupted run.
TEST_F(Robustness, FullDiskStopsCleanlyAndContinueFinishes) {
  const std::string args = fmt::format("--particles {} --classes 3 --iterations 4", star());
  const fs::path ref = scratch_.path() / "ref";
  ASSERT_EQ(test::run(fmt::format("{} -j 1 class2d {} --out {} >/dev/null 2>&1", kExe, args, ref.string())), 0);
  std::uintmax_t total = 0;
  for (const auto& f : fs::directory_iterator(ref)) total += f.file_size();

  std::string why;
  const fs::path disk = scratch_.path() / "disk";
  const int kib = static_cast<int>(total / 1024 / 2);  // room for about half the run's outputs
  if (!mount_small(disk, kib, false, why)) GTEST_SKIP() << why;
  const fs::path out = disk / "c2d";
  const auto full = test::run_capture(fmt::format("{} -j 1 class2d {} --out {}", kExe, args, out.string()));
  EXPECT_EQ(full.exit_code, 1) << full.output;
  EXPECT_NE(full.output.find("No space left on device"), std::string::npos) << full.output;
  EXPECT_NE(full.output.find(out.string() + "/"), std::string::npos) << full.output;  // names the file

  // Intact: no temporary file, and the checkpoint and every MRC file read whole.
  ASSERT_TRUE(fs::exists(out / "checkpoint.json")) << full.output;
  for (const auto& f : fs::directory_iterator(out)) {
    EXPECT_EQ(f.path().filename().string().find(".tmp"), std::string::npos) << f.path();
    if (f.path().extension() == ".mrcs" || f.path().extension() == ".mrc") {
      EXPECT_NO_THROW(emcryo::io::MrcReader(f.path()).read_all()) << f.path();
    }
  }
  ASSERT_EQ(test::run(fmt::format("mount -o remount,size=65536k {}", disk.string())), 0);
  const auto resumed = test::run_capture(fmt::format("{} -j 1 class2d --continue {}", kExe, out.string()));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto compared = test::run_capture(
      fmt::format("/usr/bin/python3 {}/bench/compare_runs.py {} {}", EMCRYO_SOURCE_DIR, ref.string(), out.string()));
  EXPECT_EQ(compared.exit_code, 0) << compared.output;
}

}  // namespace
