#include "job_folder.hpp"

#include <exception>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/mpi.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;

JobFolder::JobFolder(const std::string& dir, std::string_view job, Mode mode)
    : dir_(dir), writer_(mpi::is_root()), exceptions_at_start_(std::uncaught_exceptions()) {
  // The other ranks of an MPI job neither claim the folder (the lock is rank 0's) nor judge it:
  // rank 0's refusal stops them all.
  if (!writer_) return;
  lock_.emplace(dir);
  const bool has_run = fs::exists(dir_ / "checkpoint.json");
  if (mode == Mode::start && has_run)
    fail("{}: already holds a {} run; use --continue {} to resume it, or choose another --out", dir, job, dir);
  if (mode == Mode::resume && !has_run) fail("{}: no checkpoint.json: nothing to continue", dir);
}

JobFolder::~JobFolder() {
  // A job that fails leaves its log open: the error line the program writes next belongs in it
  // (a GPU refine that stopped with no reason in run.log was the case). The program closes it.
  if (std::uncaught_exceptions() > exceptions_at_start_) return;
  log::set_file("");
}

void JobFolder::open_log() const {
  if (writer_) log::set_file((dir_ / "run.log").string());
}

nlohmann::json JobFolder::read_checkpoint() const {
  const fs::path path = dir_ / "checkpoint.json";
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    damaged_checkpoint(e.what());
  }
}

void JobFolder::damaged_checkpoint(const std::string& reason) const {
  fail("{}: damaged checkpoint: {}", (dir_ / "checkpoint.json").string(), reason);
}

void JobFolder::write_checkpoint(nlohmann::json state, std::string_view format) const {
  if (!writer_) return;
  state["format"] = format;
  write_text_file(dir_ / "checkpoint.json", state.dump(1));
}

std::string absolute_path(const std::string& path) {
  return path.empty() ? path : fs::absolute(path).lexically_normal().string();
}

}  // namespace emcryo::jobs
