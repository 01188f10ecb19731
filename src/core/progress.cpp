#include "emcryo/core/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace emcryo {

namespace {
std::atomic<bool> g_shown{true};

std::string format_seconds(double s) {
  if (s < 0 || s > 1e7) return "--:--";
  auto total = static_cast<long>(s + 0.5);
  if (total >= 3600) return fmt::format("{}:{:02}:{:02}", total / 3600, total / 60 % 60, total % 60);
  return fmt::format("{:02}:{:02}", total / 60, total % 60);
}
}  // namespace

Progress::Progress(std::string label, std::int64_t total)
    : label_(std::move(label)), total_(total > 0 ? total : 1), tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() { finish(); }

void Progress::set_shown(bool shown) { g_shown = shown; }

void Progress::advance(std::int64_t count) {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  done_ += count;
  auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_draw_ > std::chrono::milliseconds(200) || done_ >= total_) {
      last_draw_ = now;
      draw(false);
    }
  } else {
    int decile = static_cast<int>(10 * done_ / total_);
    if (decile > last_decile_ && decile < 10) {
      last_decile_ = decile;
      draw(false);
    }
  }
}

void Progress::finish() {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final_line) {
  if (!g_shown) return;
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double fraction = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : -1;
  if (tty_) {
    constexpr int width = 30;
    int filled = static_cast<int>(fraction * width);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(width - filled), '.');
    std::fprintf(stderr, "\r%s [%s] %3.0f%% %lld/%lld %.1f/s elapsed %s ETA %s%s", label_.c_str(),
                 bar.c_str(), 100 * fraction, static_cast<long long>(done_),
                 static_cast<long long>(total_), rate, format_seconds(elapsed).c_str(),
                 format_seconds(final_line ? 0 : eta).c_str(), final_line ? "\n" : "   ");
  } else if (!final_line || last_decile_ < 10) {
    if (final_line) last_decile_ = 10;
    std::fprintf(stderr, "%s: %3.0f%% (%lld/%lld, %.1f/s, elapsed %s, ETA %s)\n", label_.c_str(),
                 100 * fraction, static_cast<long long>(done_), static_cast<long long>(total_), rate,
                 format_seconds(elapsed).c_str(), format_seconds(final_line ? 0 : eta).c_str());
  }
  std::fflush(stderr);
}

}  // namespace emcryo
