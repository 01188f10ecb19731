#include "emcryo/em/stage_times.hpp"

#include <fmt/format.h>

namespace emcryo::em {

std::string StageTimes::summary() const {
  static constexpr const char* names[count] = {"read", "prepare",         "coarse templates", "coarse rows",   "coarse score",
                                               "coarse reduce",   "search templates", "search rows",   "search score",
                                               "search reduce",   "M-step sums",      "chunk sums"};
  std::string text;
  for (int i = 0; i < count; ++i) {
    if (seconds[i] <= 0) continue;
    if (!text.empty()) text += ", ";
    text += fmt::format("{} {:.2f} s", names[i], seconds[i]);
  }
  return text.empty() ? "none timed" : text;
}

}  // namespace emcryo::em
