// Post-processing of 3D maps: solvent masks, masking, phase randomisation, B-factor and
// FSC-weighted sharpening (what refinement's outputs need; also usable on their own).
#pragma once
#include <cstdint>
#include <vector>

namespace emcryo::image {

/// Binary dilation of a 0/1 n^3 volume by `steps` voxels (6-neighbourhood).
std::vector<float> dilate(const std::vector<float>& binary, int n, int steps);
/// Automatic solvent mask: the map low-passed to 15 Å (or 3 px), thresholded at 15% of its peak,
/// dilated 3 px, with a 5 px raised-cosine edge.
std::vector<float> solvent_mask(const std::vector<float>& map, int n, double pixel_size);
/// map * mask, voxel by voxel.
std::vector<float> masked(std::vector<float> map, const std::vector<float>& mask);
/// The map with the phases of every shell beyond `shell` replaced by random ones (seeded).
std::vector<float> randomize_phases_beyond(const std::vector<float>& map, int n, int shell, std::uint64_t seed);
/// B-factor (Å^2, RELION's sign: negative sharpens) from the Guinier slope of the map's
/// amplitudes between 10 Å and `resolution`; 0 when fewer than three shells lie there.
double guinier_bfactor(const std::vector<float>& map, int n, double pixel_size, double resolution);
/// FSC-weighted (sqrt(2 FSC / (1 + FSC))), B-factor-corrected map, low-passed at `resolution`.
std::vector<float> sharpen_map(const std::vector<float>& map, int n, double pixel_size, const std::vector<double>& fsc,
                               double bfactor, double resolution);

}  // namespace emcryo::image
