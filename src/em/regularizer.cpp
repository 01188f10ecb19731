#include "emcryo/em/regularizer.hpp"

#include <algorithm>

namespace emcryo::em {

std::vector<double> wiener_from_fsc(const std::vector<double>& mean_weight, const std::vector<double>& fsc, double halves) {
  std::vector<double> reg(mean_weight.size());
  for (std::size_t s = 0; s < reg.size(); ++s) {
    const double f = std::clamp(s < fsc.size() ? fsc[s] : 0.0, 1e-3, 0.999);
    reg[s] = mean_weight[s] * (1 - f) / (halves * f);
  }
  return reg;
}

}  // namespace emcryo::em
