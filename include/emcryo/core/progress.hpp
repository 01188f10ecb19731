// A progress bar with rate and ETA on a terminal; plain lines every 10% when not a terminal.
#pragma once
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace emcryo {

class Progress {
 public:
  Progress(std::string label, std::int64_t total);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  /// Off: no bar is drawn in this process (the ranks of an MPI job other than rank 0).
  static void set_shown(bool shown);
  /// Thread-safe; cheap enough to call per particle batch.
  void advance(std::int64_t count = 1);
  void finish();

 private:
  void draw(bool final_line);
  std::string label_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  int last_decile_ = -1;
  bool tty_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  std::mutex mutex_;
};

}  // namespace emcryo
