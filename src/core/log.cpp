#include "emcryo/core/log.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace emcryo::log {
namespace {
std::mutex g_mutex;
Level g_level = Level::info;
std::FILE* g_file = nullptr;

const char* tag(Level level) {
  switch (level) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warning: return "warning";
    case Level::error: return "error";
  }
  return "";
}
}  // namespace

void set_level(Level level) { g_level = level; }

void set_file(const std::string& path) {
  std::lock_guard lock(g_mutex);
  if (g_file) std::fclose(g_file);
  g_file = path.empty() ? nullptr : std::fopen(path.c_str(), "a");
}

void write(Level level, const std::string& line) {
  if (level < g_level) return;
  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  std::lock_guard lock(g_mutex);
  std::string text = level == Level::info ? line : fmt::format("{}: {}", tag(level), line);
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
  if (g_file) {
    std::fprintf(g_file, "[%s] %s\n", stamp, text.c_str());
    std::fflush(g_file);
  }
}

}  // namespace emcryo::log
