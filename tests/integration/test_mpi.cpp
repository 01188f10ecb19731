// Jobs across processes with mpirun (issue 13): 2 ranks give the single-process answer, a rank
// that dies or fails ends the whole job with a message (never a hang), and --continue resumes
// with another rank count. Skipped, with the reason, where emcryo was built without MPI or
// mpirun is missing.
#include <gtest/gtest.h>

#include <chrono>
#include <sstream>
#include <thread>

#include "emcryo/core/mpi.hpp"
#include "emcryo/io/mrc.hpp"
#include "support/test_support.hpp"

namespace emcryo {
namespace {

namespace fs = std::filesystem;
const std::string kExe = EMCRYO_EXE;

class MpiJobs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // CI may run as root; OpenMPI refuses that without these.
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    // On a GPU machine: the 3D back-projection on the CPU, whose sums do not depend on the rank
    // count bit for bit; the GPU's atomics vary in their last bits from run to run (GpuJobs checks
    // the GPU's maps against the CPU's).
    ::setenv("EMCRYO_GPU_BACKPROJECT", "0", 1);
    data_ = new test::TempDir("mpi");
    // 200 particles: each half set, and class2d's whole set, splits into 2 chunks (mpi::Chunks).
    ASSERT_EQ(test::run(fmt::format("{} -j 1 simulate --model {}/data/1tii.pdb.gz --out {} --particles 200 --box 24 "
                                    "--pixel-size 6 --snr 0.5 --seed 3 >/dev/null 2>&1",
                                    kExe, EMCRYO_SOURCE_DIR, data().string())),
              0);
  }
  static void TearDownTestSuite() { delete data_; }
  void SetUp() override {
    if (!mpi::built_with_mpi()) GTEST_SKIP() << "emcryo was built without MPI (EMCRYO_MPI=OFF or no MPI found)";
    if (!test::have_program("mpirun")) GTEST_SKIP() << "mpirun is not on PATH (Debian: openmpi-bin)";
  }
  static fs::path data() { return data_->path(); }
  static std::string mpirun(int ranks) { return fmt::format("timeout 120 mpirun -np {} --oversubscribe {}", ranks, kExe); }
  static std::string class2d_args(const fs::path& out, int iterations = 3) {
    return fmt::format("-j 1 class2d --particles {}/particles.star --classes 3 --iterations {} --out {}", data().string(), iterations,
                       out.string());
  }
  static std::string refine_args(const fs::path& out) {
    return fmt::format("-j 1 refine --particles {0}/particles.star --ref {0}/truth_class001.mrc --max-iterations 3 --out {1}",
                       data().string(), out.string());
  }

  /// particles.star without its comment lines: every particle's class, angles and shifts.
  static std::string answer(const fs::path& dir) {
    std::string kept, line;
    std::istringstream in(test::read_text(dir / "particles.star"));
    while (std::getline(in, line))
      if (line.rfind('#', 0) != 0) kept += line + '\n';
    return kept;
  }
  static void expect_same_map(const fs::path& a, const fs::path& b) {
    const auto x = io::MrcReader(a).read_all(), y = io::MrcReader(b).read_all();
    ASSERT_EQ(x.size(), y.size()) << a;
    double scale = 0;
    for (float v : x) scale = std::max(scale, static_cast<double>(std::abs(v)));
    EXPECT_LE(test::max_abs_diff(x, y), 1e-6 * scale) << a << " vs " << b;
  }

  static test::TempDir* data_;
};
test::TempDir* MpiJobs::data_ = nullptr;

TEST_F(MpiJobs, Class2DTwoRanksGiveTheSingleProcessResult) {
  test::TempDir work("mpi_class2d");
  ASSERT_EQ(test::run(fmt::format("{} {} >{}/one.log 2>&1", kExe, class2d_args(work.path() / "one"), work.path().string())), 0);
  const auto two = test::run_capture(fmt::format("{} {}", mpirun(2), class2d_args(work.path() / "two")));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_EQ(answer(work.path() / "one"), answer(work.path() / "two"));
  expect_same_map(work.path() / "one/classes.mrcs", work.path() / "two/classes.mrcs");
  // Rank 0 alone logs: one "done" line, and no second lock or log writer.
  std::size_t done_lines = 0;
  for (std::size_t at = two.output.find("class2d: done"); at != std::string::npos; at = two.output.find("class2d: done", at + 1)) ++done_lines;
  EXPECT_EQ(done_lines, 1u) << two.output;
}

// The reduction itself across 3 ranks, each with several chunks (so several messages in flight):
// core's unit tests, run under mpirun, check the fold order (folded on rank 0, then rank 1) and
// every rank's totals bit for bit, and pieces made once on one rank each.
TEST_F(MpiJobs, ReductionOnThreeRanksGivesTheSingleProcessTotalsOnEveryRank) {
  const auto three = test::run_capture(fmt::format("timeout 120 mpirun -np 3 --oversubscribe {}/tests/test_core "
                                                   "--gtest_filter='MpiReduce.*' --gtest_color=no 2>&1",
                                                   EMCRYO_BINARY_DIR));
  EXPECT_EQ(three.exit_code, 0) << three.output;
  std::size_t passed = 0;
  for (auto at = three.output.find("[  PASSED  ] 2 tests"); at != std::string::npos; at = three.output.find("[  PASSED  ] 2 tests", at + 1)) ++passed;
  EXPECT_EQ(passed, 3u) << three.output;  // once per rank
}

TEST_F(MpiJobs, RefineTwoRanksGiveTheSingleProcessResult) {
  test::TempDir work("mpi_refine");
  ASSERT_EQ(test::run(fmt::format("{} {} >{}/one.log 2>&1", kExe, refine_args(work.path() / "one"), work.path().string())), 0);
  const auto two = test::run_capture(fmt::format("{} {}", mpirun(2), refine_args(work.path() / "two")));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_EQ(answer(work.path() / "one"), answer(work.path() / "two"));
  for (const char* map : {"half1_unfil.mrc", "half2_unfil.mrc", "map.mrc"})
    expect_same_map(work.path() / "one" / map, work.path() / "two" / map);
}

// SIGKILL of one rank mid-run: mpirun stops the other and says which rank died; the job then
// resumes from its checkpoint with another rank count and ends with the uninterrupted answer.
TEST_F(MpiJobs, KilledRankEndsTheJobAndContinueWithOtherRanksFinishes) {
  test::TempDir work("mpi_kill");
  const fs::path ref = work.path() / "ref", out = work.path() / "out", log = work.path() / "run.log";
  // Six iterations: time enough to kill a rank after the first checkpoint, even on a busy machine.
  ASSERT_EQ(test::run(fmt::format("{} {} >/dev/null 2>&1", kExe, class2d_args(ref, 6))), 0);
  // mpirun in the background (no `timeout` in between: the ranks must be its children); its pid,
  // then its exit status, go to files. Should it not end, the test kills it below.
  test::run(fmt::format("( mpirun -np 2 --oversubscribe {} {} >{} 2>&1 & echo $! >{}/pid; wait $!; echo $? >{}/rc ) &", kExe,
                        class2d_args(out, 6), log.string(), work.path().string(), work.path().string()));
  struct KillLeftovers {  // what still runs when the test leaves (no rc yet): mpirun's ranks, then mpirun
    std::string dir;
    ~KillLeftovers() { test::run(fmt::format("cd {} && [ ! -f rc ] && p=$(cat pid) && {{ kill -KILL $(pgrep -P $p) $p; }} 2>/dev/null", dir)); }
  } leftovers{test::quoted(work.path())};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(out / "checkpoint.json") && !fs::exists(work.path() / "rc") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(fs::exists(out / "checkpoint.json")) << test::read_text(log);
  ASSERT_FALSE(fs::exists(work.path() / "rc")) << "the job ended before the kill";
  // The ranks are mpirun's children; kill the last one started (not rank 0's process, most likely).
  const auto ranks = test::run_capture(fmt::format("pgrep -P $(cat {}/pid)", work.path().string()));
  ASSERT_EQ(ranks.exit_code, 0) << ranks.output;
  const std::string victim = ranks.output.substr(ranks.output.find_last_of('\n', ranks.output.size() - 2) + 1);
  ASSERT_EQ(test::run(fmt::format("kill -KILL {}", victim)), 0);
  // mpirun must end by itself.
  const auto end_by = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(work.path() / "rc") && std::chrono::steady_clock::now() < end_by)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(fs::exists(work.path() / "rc")) << "mpirun still running 60 s after a rank was killed: " << test::read_text(log);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int rc = std::stoi(test::read_text(work.path() / "rc"));
  const std::string said = test::read_text(log);
  EXPECT_NE(rc, 0) << said;
  EXPECT_NE(said.find("signal 9"), std::string::npos) << said;
  // Resume with 3 ranks (any count works: chunks do not depend on it).
  const auto resumed = test::run_capture(fmt::format("{} -j 1 class2d --continue {}", mpirun(3), out.string()));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(answer(ref), answer(out));
  expect_same_map(ref / "classes.mrcs", out / "classes.mrcs");
}

// An error met by one rank only (rank 0 cannot write an iteration's classes: a folder holds the
// name) stops every rank with the message, instead of leaving rank 1 waiting for rank 0.
TEST_F(MpiJobs, ErrorOnOneRankStopsAllRanksWithTheMessage) {
  test::TempDir work("mpi_error");
  const fs::path out = work.path() / "out";
  fs::create_directories(out / "classes_it002.mrcs" / "blocker");
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = test::run_capture(fmt::format("{} {}", mpirun(2), class2d_args(out)));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "hung until the timeout: " << r.output;
  EXPECT_LT(seconds, 100) << r.output;
  EXPECT_NE(r.output.find("rank 0 of 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("classes_it002.mrcs"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace emcryo
