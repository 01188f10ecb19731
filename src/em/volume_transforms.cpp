#include "emcryo/em/volume_transforms.hpp"

namespace emcryo::em {

std::vector<float> VolumeTransforms::reconstruct(const BackProjector& sums, const std::vector<double>& regularisation_per_shell) {
  return sums.reconstruct(regularisation_per_shell);
}

std::vector<Complex> VolumeTransforms::padded_transform(const std::vector<float>& volume, int n, int padding) {
  return Projector(volume, n, padding).take_grid();
}

Projector VolumeTransforms::projector(const std::vector<float>& volume, int n, int padding) {
  return Projector(padded_transform(volume, n, padding), n, padding);
}

VolumeTransforms& cpu_volume_transforms() {
  static VolumeTransforms cpu;
  return cpu;
}

}  // namespace emcryo::em
