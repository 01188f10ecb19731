// Rigid superposition of one 3D map onto another: rotation, shift and hand (a map from
// projections alone is known only up to its mirror image), and the FSC after superposition.
// Ab-initio's evaluation against a known truth, and a user's tool to compare two maps.
#pragma once
#include <vector>

#include "emcryo/geometry/rotation.hpp"

namespace emcryo::image {

/// Trilinear value of an n^3 volume at voxel coordinates (x, y, z); zero outside.
double sample_trilinear(const std::vector<float>& volume, int n, double x, double y, double z);

/// Centre of mass of the positive density, voxel coordinates (the box centre n/2 when there is none).
geometry::Vec3 centre_of_mass(const std::vector<float>& map, int n);
/// The map moved by (dx, dy, dz) voxels (a Fourier phase ramp: sub-voxel, periodic).
std::vector<float> shift_volume(const std::vector<float>& map, int n, double dx, double dy, double dz);

/// The mirror image of a map through the plane z = n/2 (the other hand).
std::vector<float> flip_hand(const std::vector<float>& map, int n);

/// A superposition: aligned(x) = moving'(R (x - c - t) + c), c = n/2, moving' the moving map or,
/// when `flipped`, its mirror image (flip_hand).
struct MapAlignment {
  geometry::Mat3 rotation;
  geometry::Vec3 shift;   // pixels
  bool flipped = false;
  double correlation = 0; // real-space correlation inside the search sphere, low-passed
};

/// The superposition of `moving` that best matches `reference` (both n^3, the same pixel size):
/// both low-passed to `search_resolution` Å and centred on their centres of mass, a global search
/// over rotations (about 10 degrees apart) for each hand, then a local search in rotation and shift
/// around the best candidates.
MapAlignment align_map(const std::vector<float>& moving, const std::vector<float>& reference, int n, double pixel_size,
                       double search_resolution = 15);

/// The moving map resampled under `alignment` (interpolated on a grid twice as fine, so that
/// resampling loses little below Nyquist).
std::vector<float> apply_alignment(const std::vector<float>& moving, int n, const MapAlignment& alignment);

}  // namespace emcryo::image
