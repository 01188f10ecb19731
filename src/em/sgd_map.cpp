#include "emcryo/em/sgd_map.hpp"

#include <algorithm>

namespace emcryo::em {

void SgdMap::step(const BackProjector& batch, double ridge, double rate, double momentum) {
  std::vector<double> lambda = batch.mean_weight_per_shell();
  for (double& l : lambda) l *= ridge;
  const std::vector<float> batch_map = batch.reconstruct(lambda);
  for (std::size_t i = 0; i < map_.size(); ++i) {
    velocity_[i] = static_cast<float>(momentum * velocity_[i] + rate * (batch_map[i] - map_[i]));
    map_[i] += velocity_[i];
  }
}

void SgdMap::constrain(const std::vector<float>& window) {
  for (std::size_t i = 0; i < map_.size(); ++i) map_[i] = std::max(0.0f, map_[i]) * window[i];
}

}  // namespace emcryo::em
