// The M-step's large 3D transforms behind one seam (issue 12): a map reconstructed from its
// back-projected sums, and a map's padded transform for a Projector. At box 256 each is a 512^3
// FFT plus sweeps over 0.5 GB grids, ~2 s a half on 16 CPU cores; a device backend runs them where
// its sums already are (ScoringBackend::volume_transforms). The CPU's are BackProjector::reconstruct
// and Projector's constructor, the reference a device's must match to float rounding.
#pragma once
#include <vector>

#include "emcryo/em/projector.hpp"

namespace emcryo::em {

class VolumeTransforms {
 public:
  virtual ~VolumeTransforms() = default;
  /// As sums.reconstruct(regularisation_per_shell).
  virtual std::vector<float> reconstruct(const BackProjector& sums, const std::vector<double>& regularisation_per_shell);
  /// As Projector(volume, n, padding).grid(): the transform of the zero-padded, gridding-corrected map.
  virtual std::vector<Complex> padded_transform(const std::vector<float>& volume, int n, int padding);
  /// A projector over that transform; a device's keeps it where it was made (Projector::held()),
  /// so that a backend sampling templates there need not copy 0.5 GB (box 256) each way.
  virtual Projector projector(const std::vector<float>& volume, int n, int padding);
};

/// The CPU's (stateless; shared).
VolumeTransforms& cpu_volume_transforms();

}  // namespace emcryo::em
