// One error path for the whole library: user-facing errors are emcryo::Error, one line each.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace emcryo {

/// A problem the user can act on (bad input, bad option, I/O failure). what() is one line that
/// names the file, the record and the field where they are known.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace emcryo
