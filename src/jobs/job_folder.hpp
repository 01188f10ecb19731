// The output folder of an iterative job, as every job uses it: claimed for the job's life (a lock
// a second job cannot take), refused when it already holds a run (unless resuming), run.log, and
// the checkpoint written last and atomically each iteration, read back by --continue. Under MPI
// the folder is rank 0's: it alone claims it, logs to run.log and writes; the other ranks read.
#pragma once
#include <filesystem>
#include <optional>
#include "emcryo/jobs/checkpoint_json.hpp"  // nlohmann::json with range-checked integers
#include <string>
#include <string_view>

#include "emcryo/core/job_lock.hpp"

namespace emcryo::jobs {

class JobFolder {
 public:
  enum class Mode { start, resume };
  /// start: fails when `dir` already holds a checkpoint ("use --continue"); resume: fails when
  /// it holds none. Either way the folder is locked until this object goes.
  JobFolder(const std::string& dir, std::string_view job, Mode mode);
  ~JobFolder();
  JobFolder(const JobFolder&) = delete;
  JobFolder& operator=(const JobFolder&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  /// Whether this process writes the job's files (rank 0 of an MPI job; a single process).
  bool writes() const { return writer_; }
  /// Sends log lines to <dir>/run.log as well as the terminal (the writer only).
  void open_log() const;
  /// The checkpoint's JSON; a damaged file fails with its name and the parser's reason.
  nlohmann::json read_checkpoint() const;
  /// The checkpoint as a job's state (its from_json); a field missing or of the wrong type fails
  /// with the file's name and the reason, like a file that does not parse.
  template <typename State>
  State read_checkpoint_as() const {
    const auto j = read_checkpoint();
    try {
      return j.get<State>();
    } catch (const nlohmann::json::exception& e) {
      damaged_checkpoint(e.what());
    }
  }
  /// Writes the checkpoint atomically with its format tag; call it after every file it names.
  /// Only the writer writes; on other ranks this does nothing.
  void write_checkpoint(nlohmann::json state, std::string_view format) const;

 private:
  [[noreturn]] void damaged_checkpoint(const std::string& reason) const;
  std::filesystem::path dir_;
  bool writer_;
  int exceptions_at_start_;  // std::uncaught_exceptions() when made: more at the end means a failure
  std::optional<JobLock> lock_;
};

/// An absolute, normalised path: checkpoints keep these, so --continue works from any directory.
std::string absolute_path(const std::string& path);

}  // namespace emcryo::jobs
