// Per-particle posterior hypotheses (--save-posteriors N): each particle's N most probable
// (class, orientation, shift) with their posterior weights, one row per particle and hypothesis,
// as posteriors.star (RELION labels where RELION has them) and posteriors.cs (cryoSPARC's).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace emcryo::io {

struct PosteriorHypothesis {
  std::uint32_t particle = 0;   // index into the image names
  std::uint32_t rank = 1;       // 1 = most probable
  std::int32_t class_number = 1;  // 1-based
  double rot = 0, tilt = 0, psi = 0;  // RELION Euler angles, degrees (2D: psi only)
  double shift_x = 0, shift_y = 0;    // Å, as rlnOriginX/YAngst
  double weight = 0;                  // posterior probability, 0..1
};

/// data_posteriors: rlnImageName, emcryoHypothesisRank, rlnClassNumber, rlnAngleRot, rlnAngleTilt,
/// rlnAnglePsi, rlnOriginXAngst, rlnOriginYAngst, emcryoPosterior. Rows in the given order.
/// Fails with "<file>: hypothesis <i>: particle <p> has no image name" for a bad index.
void write_posteriors_star(const std::filesystem::path& path, const std::vector<std::string>& image_names,
                           const std::vector<PosteriorHypothesis>& hypotheses);

/// The same as a .cs: blob/path, blob/idx (0-based), alignments3D/pose (rotation vector),
/// alignments3D/shift (pixels of `pixel_size`), alignments3D/class (0-based),
/// posterior/rank (u4), posterior/weight (f4).
void write_posteriors_cs(const std::filesystem::path& path, const std::vector<std::string>& image_names,
                         const std::vector<PosteriorHypothesis>& hypotheses, double pixel_size);

}  // namespace emcryo::io
