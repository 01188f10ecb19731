// One line per event to stderr and, when set, to the job's log file.
#pragma once
#include <fmt/format.h>
#include <string>

namespace emcryo::log {

enum class Level { debug, info, warning, error };

void set_level(Level level);
/// Tee every following line into this file (appended); empty path stops the tee.
void set_file(const std::string& path);
void write(Level level, const std::string& line);

template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... a) { write(Level::info, fmt::format(f, std::forward<Args>(a)...)); }
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... a) { write(Level::warning, fmt::format(f, std::forward<Args>(a)...)); }
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... a) { write(Level::error, fmt::format(f, std::forward<Args>(a)...)); }
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... a) { write(Level::debug, fmt::format(f, std::forward<Args>(a)...)); }

}  // namespace emcryo::log
