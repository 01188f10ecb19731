// Helpers shared by the tests: scratch folders, shell commands, text files, MRC files and error
// messages. Header-only; every test binary includes it through tests/support.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "emcryo/core/error.hpp"

namespace emcryo::test {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------- folders

/// Creates a new, empty folder under the system temp folder, named
/// emcryo_<tag>_<pid>_<serial>_<random>, and returns its path. The caller removes it.
inline fs::path make_temp_dir(const std::string& tag) {
  static std::atomic<int> serial{0};
  std::random_device entropy;
  for (;;) {
    const fs::path path = fs::temp_directory_path() /
                          fmt::format("emcryo_{}_{}_{}_{:08x}", tag, static_cast<long>(::getpid()), serial++, entropy());
    if (fs::create_directory(path)) return path;
  }
}

/// A fresh folder (see make_temp_dir), removed with everything in it at the end of its scope.
/// With keep_on_failure, a folder whose test has failed is kept (and named on stderr) so that its
/// logs and maps can be looked at.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "test", bool keep_on_failure = false)
      : path_(make_temp_dir(tag)), keep_on_failure_(keep_on_failure) {}
  ~TempDir() {
    if (keep_on_failure_ && ::testing::Test::HasFailure()) {
      std::fprintf(stderr, "kept %s for inspection\n", path_.c_str());
      return;
    }
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  fs::path operator/(const fs::path& name) const { return path_ / name; }
  /// The names of the entries directly in the folder, in directory order.
  std::vector<std::string> names() const {
    std::vector<std::string> found;
    for (const auto& entry : fs::directory_iterator(path_)) found.push_back(entry.path().filename().string());
    return found;
  }

 private:
  fs::path path_;
  bool keep_on_failure_;
};

// ------------------------------------------------------------------------------- commands

/// The exit status of a process from std::system / pclose: WEXITSTATUS when it exited, else -1.
inline int exit_status(int wait_status) { return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1; }

/// Runs `command` with /bin/sh; its output goes wherever the command sends it. Returns the exit
/// status (-1 when the shell did not exit normally).
inline int run(const std::string& command) { return exit_status(std::system(command.c_str())); }

/// Runs `command` with its stdout and stderr appended to `log`; returns the exit status.
inline int run_logged(const std::string& command, const fs::path& log) {
  return run(fmt::format("{} >>'{}' 2>&1", command, log.string()));
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

/// Runs `command` with /bin/sh, in `dir` when given (RELION resolves file names against the
/// working folder), and returns its exit status and its stdout and stderr together. With `log`,
/// the output is also written to that file.
inline CommandResult run_capture(const std::string& command, const fs::path& dir = {}, const fs::path& log = {}) {
  std::string line = "{ " + command + "\n} 2>&1";
  if (!dir.empty()) line = fmt::format("cd '{}' && {}", dir.string(), line);
  CommandResult result;
  FILE* pipe = ::popen(line.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  std::size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, got);
  result.exit_code = exit_status(::pclose(pipe));
  if (!log.empty()) std::ofstream(log, std::ios::binary) << result.output;
  return result;
}

/// True when `program` is on PATH (or is an executable path).
inline bool have_program(const std::string& program) {
  return run(fmt::format("command -v {} >/dev/null 2>&1", program)) == 0;
}

/// A path in single quotes for a shell command line.
inline std::string quoted(const fs::path& path) { return fmt::format("'{}'", path.string()); }

// ------------------------------------------------------------------------------- files

/// Writes `text` to `path` as it is (binary), replacing the file; returns the path.
inline fs::path write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error(path.string() + ": cannot write");
  return path;
}

/// The whole content of a file, as it is (binary); throws when it cannot be opened.
inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ------------------------------------------------------------------------------- numbers

/// `count` draws from a normal distribution (mean, sd), seeded.
inline std::vector<float> random_values(std::size_t count, unsigned seed, float sd = 1.0f, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(mean, sd);
  std::vector<float> values(count);
  for (auto& v : values) v = normal(rng);
  return values;
}

/// The largest |a[i] - b[i]|.
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double largest = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) largest = std::max(largest, static_cast<double>(std::abs(a[i] - b[i])));
  return largest;
}

// ------------------------------------------------------------------------------- errors

/// The message of the emcryo::Error that `action` throws; "" when it throws none.
template <typename Action>
std::string error_message(Action&& action) {
  try {
    action();
  } catch (const emcryo::Error& error) {
    return error.what();
  }
  return "";
}

}  // namespace emcryo::test
