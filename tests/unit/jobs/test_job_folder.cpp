// A job that fails after opening its folder's log keeps the reason in that log: the error line
// written after the job's scope has unwound lands in run.log (a GPU refine that stopped at its
// twelfth iteration left a run.log with no reason in it).
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "../../../src/jobs/job_folder.hpp"
#include "emcryo/core/log.hpp"
#include "support/test_support.hpp"

using namespace emcryo;

TEST(JobFolder, AFailedJobsErrorLineLandsInItsLog) {
  const test::TempDir dir("job_folder");
  const std::string out = (dir.path() / "run").string();
  try {
    jobs::JobFolder folder(out, "test", jobs::JobFolder::Mode::start);
    folder.open_log();
    log::info("working");
    throw std::runtime_error("stopped mid-run");
  } catch (const std::runtime_error& e) {
    log::error("{}", e.what());  // what the program's main does with it
  }
  log::set_file("");
  const std::string text = test::read_text(dir.path() / "run" / "run.log");
  EXPECT_NE(text.find("working"), std::string::npos) << text;
  EXPECT_NE(text.find("error: stopped mid-run"), std::string::npos) << text;

  // A job that ends normally closes its log: later lines go elsewhere.
  {
    jobs::JobFolder folder((dir.path() / "second").string(), "test", jobs::JobFolder::Mode::start);
    folder.open_log();
    log::info("second job");
  }
  log::info("after the second job");
  const std::string second = test::read_text(dir.path() / "second" / "run.log");
  EXPECT_NE(second.find("second job"), std::string::npos) << second;
  EXPECT_EQ(second.find("after the second job"), std::string::npos) << second;
}
