// One error path for the whole library: user-facing errors are emcryo::Error, one line each.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>
#include <string_view>

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

/// User text quoted in a message: at most `limit` bytes (then "..."), control bytes shown as '?',
/// so a 10^6-character line or binary junk still makes one short line on a terminal.
inline std::string excerpt(std::string_view text, std::size_t limit = 60) {
  std::string shown(text.substr(0, limit));
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  if (text.size() > limit) shown += "...";
  return shown;
}

}  // namespace emcryo
