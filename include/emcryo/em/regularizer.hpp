// The M-step's regulariser of a 3D reconstruction: V = sum(w C X) / (sum(w C^2) + sigma^2/tau^2),
// with tau^2 per shell from an FSC (a Wiener filter). Jobs reconstruct through a MapRegularizer,
// so non-uniform refinement's local, cross-validated filtering replaces the global one behind the
// same call.
#pragma once
#include <utility>
#include <vector>

#include "emcryo/em/projector.hpp"
#include "emcryo/em/volume_transforms.hpp"

namespace emcryo::em {

/// sigma^2/tau^2 per shell from an FSC: the SSNR of a map made of `halves` half sets (1: a half
/// map, 2: both joined) is halves * FSC / (1 - FSC); the regularisation is the mean Fourier
/// weight per shell over that SSNR. FSC values are clamped to [1e-3, 0.999].
std::vector<double> wiener_from_fsc(const std::vector<double>& mean_weight, const std::vector<double>& fsc, double halves);

class MapRegularizer {
 public:
  virtual ~MapRegularizer() = default;
  /// The map of `sums` through `transforms` (the CPU's, or a device backend's).
  virtual std::vector<float> reconstruct(const BackProjector& sums, VolumeTransforms& transforms) const = 0;
};

/// One filter for the whole map, from an FSC per shell.
class GlobalWiener final : public MapRegularizer {
 public:
  GlobalWiener(std::vector<double> fsc, double halves) : fsc_(std::move(fsc)), halves_(halves) {}
  std::vector<float> reconstruct(const BackProjector& sums, VolumeTransforms& transforms) const override {
    return transforms.reconstruct(sums, wiener_from_fsc(sums.mean_weight_per_shell(), fsc_, halves_));
  }

 private:
  std::vector<double> fsc_;
  double halves_;
};

/// Non-uniform refinement's regulariser (Punjani, Zhang & Fleet 2020): instead of one filter for
/// the whole map, each voxel gets the low-pass (Butterworth) whose cut-off minimises a local
/// cross-validation error between the half maps: the squared difference between one half,
/// filtered, and the other, unfiltered and independent, averaged in a window whose size is
/// `window_factor` times the cut-off's resolution. Where a region holds only low-resolution
/// signal (flexible or disordered parts, solvent), the error is lowest at a low cut-off and its
/// noise is removed; where it is ordered, the cut-off stays high.
struct LocalFilterSettings {
  double pixel_size = 1;      // Å
  double window_factor = 3;   // window diameter = window_factor x the cut-off's resolution
  int order = 8;              // Butterworth order
  int cutoffs = 12;           // candidate cut-offs, geometric from `lowest_shell` to Nyquist
  double lowest_shell = 3;
};

struct LocalFilterResult {
  std::vector<float> half1, half2;     // each half filtered voxel by voxel
  std::vector<float> local_resolution; // Å per voxel: the chosen cut-off
  std::vector<float> raw1, raw2;       // reconstruct_nonuniform: the halves before the local filter
};

LocalFilterResult local_cross_validated_filter(const std::vector<float>& half1, const std::vector<float>& half2, int n,
                                               const LocalFilterSettings& settings);

/// The non-uniform M-step: each half reconstructed with refine's global Wiener filter (from the
/// previous FSC, as GlobalWiener) and then filtered locally by local_cross_validated_filter, so
/// the result is the product of the two filters: where the halves cross-validate to Nyquist it is
/// refine's reference, where they do not (disordered density, solvent) it is cut off lower.
/// The local filter alone (halves reconstructed almost unregularised) passes the shells below its
/// cut-off at full weight, where the Wiener filter weights them by their FSC. Measured (bench/RESULTS.md,
/// second session of 2026-12-06): with the product, nu-refine aligns better than refine on the belt
/// set (mean FSC to truth +0.007, +0.008 on two seeds; the local filter alone tied) and on uniform
/// data (+0.002, +0.003; alone -0.001, -0.002).
/// The cross-validation is unchanged by the common Wiener weight: a shell still passes where the
/// local SNR exceeds one. Both halves are needed at once (the cross-validation pairs them).
/// The FSC belongs to the halves before the local filter (raw1, raw2): the filtered ones share the
/// cut-off map chosen from both, and with their noise removed, the high-frequency content that
/// this and the mask's edge put into both halves alike makes their FSC reach Nyquist (measured:
/// 5.1 Å at 2.5 Å/px on data that resolve 11 Å).
LocalFilterResult reconstruct_nonuniform(const BackProjector& half1, const BackProjector& half2, const std::vector<double>& fsc,
                                         const LocalFilterSettings& settings, VolumeTransforms& transforms);

}  // namespace emcryo::em
