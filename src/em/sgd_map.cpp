#include "emcryo/em/sgd_map.hpp"

#include <algorithm>
#include <cmath>

#include "emcryo/image/map_align.hpp"

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

void SgdMap::centre(double tolerance) {
  const auto com = image::centre_of_mass(map_, n_);
  const double c = n_ / 2, dx = c - com.x, dy = c - com.y, dz = c - com.z;
  if (std::sqrt(dx * dx + dy * dy + dz * dz) <= tolerance) return;
  map_ = image::shift_volume(map_, n_, dx, dy, dz);
  velocity_ = image::shift_volume(velocity_, n_, dx, dy, dz);
}

}  // namespace emcryo::em
