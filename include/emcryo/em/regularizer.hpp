// The M-step's regulariser of a 3D reconstruction: V = sum(w C X) / (sum(w C^2) + sigma^2/tau^2),
// with tau^2 per shell from an FSC (a Wiener filter). Jobs reconstruct through a MapRegularizer,
// so non-uniform refinement's local, cross-validated filtering replaces the global one behind the
// same call.
#pragma once
#include <vector>

#include "emcryo/em/projector.hpp"

namespace emcryo::em {

/// sigma^2/tau^2 per shell from an FSC: the SSNR of a map made of `halves` half sets (1: a half
/// map, 2: both joined) is halves * FSC / (1 - FSC); the regularisation is the mean Fourier
/// weight per shell over that SSNR. FSC values are clamped to [1e-3, 0.999].
std::vector<double> wiener_from_fsc(const std::vector<double>& mean_weight, const std::vector<double>& fsc, double halves);

class MapRegularizer {
 public:
  virtual ~MapRegularizer() = default;
  virtual std::vector<float> reconstruct(const BackProjector& sums) const = 0;
};

/// One filter for the whole map, from an FSC per shell.
class GlobalWiener final : public MapRegularizer {
 public:
  GlobalWiener(std::vector<double> fsc, double halves) : fsc_(std::move(fsc)), halves_(halves) {}
  std::vector<float> reconstruct(const BackProjector& sums) const override {
    return sums.reconstruct(wiener_from_fsc(sums.mean_weight_per_shell(), fsc_, halves_));
  }

 private:
  std::vector<double> fsc_;
  double halves_;
};

}  // namespace emcryo::em
