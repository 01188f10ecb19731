// One job per output folder (issue 16): a second job refuses, a killed job's lock is taken over.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "emcryo/core/job_lock.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

TEST(JobLock, SecondClaimOfAFolderRefusesAndReleaseRemovesTheFile) {
  const test::TempDir scratch("job_lock");
  const fs::path dir = scratch.path() / "out";
  {
    const JobLock first(dir);  // creates the folder
    const std::string owner = test::read_text(dir / ".emcryo.lock");
    EXPECT_EQ(owner.substr(0, owner.find(' ')), std::to_string(::getpid())) << owner;
    const std::string message = test::error_message([&] { const JobLock second(dir); });
    EXPECT_NE(message.find(dir.string() + ": another emcryo job (pid " + std::to_string(::getpid())), std::string::npos)
        << message;
  }
  EXPECT_FALSE(fs::exists(dir / ".emcryo.lock"));
  EXPECT_NO_THROW(const JobLock again(dir));
}

TEST(JobLock, AFolderItCreatedIsRemovedWhenNothingWasWrittenThere) {
  const test::TempDir scratch("job_lock_empty");
  const fs::path unused = scratch.path() / "refused";
  { const JobLock lock(unused); }
  EXPECT_FALSE(fs::exists(unused));  // a job refused before writing leaves no empty folder behind
  const fs::path used = scratch.path() / "used";
  {
    const JobLock lock(used);
    test::write_text(used / "run.log", "iteration 1\n");
  }
  EXPECT_TRUE(fs::exists(used / "run.log"));
  fs::remove(used / "run.log");
  { const JobLock lock(used); }  // the folder existed before this lock: it stays, empty or not
  EXPECT_TRUE(fs::exists(used));
}

TEST(JobLock, LockLeftByADeadJobIsTakenOver) {
  const test::TempDir scratch("job_lock_stale");
  test::write_text(scratch.path() / ".emcryo.lock", "999999 some-other-host\n");  // nobody holds its flock
  const JobLock lock(scratch.path());
  const std::string owner = test::read_text(scratch.path() / ".emcryo.lock");
  EXPECT_EQ(owner.substr(0, owner.find(' ')), std::to_string(::getpid())) << owner;
}

// A real second process holds the folder, then is killed with SIGKILL: its flock dies with it.
TEST(JobLock, KilledHolderFreesTheFolder) {
  const test::TempDir scratch("job_lock_kill");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const JobLock held(scratch.path());
    (void)!::write(ready[1], "x", 1);
    for (;;) ::pause();
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  const std::string message = test::error_message([&] { const JobLock second(scratch.path()); });
  EXPECT_NE(message.find("(pid " + std::to_string(child)), std::string::npos) << message;
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  EXPECT_TRUE(fs::exists(scratch.path() / ".emcryo.lock"));  // left behind by the killed job
  EXPECT_NO_THROW(const JobLock taken(scratch.path()));
  ::close(ready[0]);
  ::close(ready[1]);
}

// Found by bench/kill_trials.sh: a job killed while writing left "particles_it003.star.tmp<pid>"
// behind, and --continue did not remove it.
TEST(JobLock, ClaimRemovesTemporariesOfAKilledJobOnly) {
  const test::TempDir scratch("job_lock_tmp");
  for (const char* name : {"particles_it003.star.tmp14713", "classes.mrcs.tmp99_3", "keep.star", "notes.tmp",
                           "data.tmp12x", "checkpoint.json"})
    test::write_text(scratch.path() / name, "x");
  const JobLock lock(scratch.path());
  EXPECT_FALSE(fs::exists(scratch.path() / "particles_it003.star.tmp14713"));
  EXPECT_FALSE(fs::exists(scratch.path() / "classes.mrcs.tmp99_3"));
  for (const char* kept : {"keep.star", "notes.tmp", "data.tmp12x", "checkpoint.json"})
    EXPECT_TRUE(fs::exists(scratch.path() / kept)) << kept;
}
