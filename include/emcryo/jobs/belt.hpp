// A detergent-belt-like shell for `emcryo simulate`: a ring of small Gaussian blobs (detergent
// molecules) around the particle, drawn anew for every particle, so that the belt's density,
// position and shape vary while the particle stays rigid. Its mean is a smooth ring; each
// particle's belt adds density that no reconstruction can explain, concentrated in one region.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "emcryo/geometry/rotation.hpp"

namespace emcryo::jobs {

struct BeltOptions {
  bool enabled = false;
  double radius = 0;         // Å, from the ring's axis to the middle of its tube; 0: the particle's girth + half the width
  // Defaults sized for the benchmark sets (1TII, box 40 at 3 Å/px): a 30 x 16 Å tube does not fit
  // that box, and a belt as heavy as the particle (mass 1), a nearly round ring, takes over the
  // alignment (median pose error 126°, bench/RESULTS.md); at mass 0.3 alignment works (4.5°).
  double height = 24;        // Å, the tube's extent along the axis
  double width = 14;         // Å, the tube's extent across it (radially)
  double offset = 0;         // Å, the ring's centre along the axis from the particle's centre of mass
  std::vector<double> axis;  // the ring's axis in the model's frame; empty: the particle's most distinct principal axis
  double mass = 0.3;         // the mean belt's integrated density over the particle's
  double density_sd = 0.25;  // per-particle relative spread of the belt's density (sd)
  double shift = 3;          // Å, per-particle displacement of the ring per axis (sd)
  double tilt = 8;           // degrees, per-particle turn of the ring about its centre (sd, random axis)
  double squash = 0.1;       // per-particle elliptic deformation of the ring: radius x (1 + e cos 2phi), e ~ N(0, squash)
  int blobs = 150;           // blobs (detergent molecules) per particle, at random places in the ring
  double blob_size = 3;      // Å, each blob's Gaussian sd
};

/// The belt's fixed geometry, in pixels, in the map frame (pixel n/2 is the origin).
struct Belt {
  geometry::Vec3 centre;
  geometry::Mat3 frame;  // columns: two directions in the ring's plane, then its axis
  double radius = 0, half_height = 0, half_width = 0, blob_sigma = 0;
  double blob_mass = 0;  // mean integrated density of one blob
  int blobs = 0;
  double shift_sd = 0, tilt_sd = 0, squash_sd = 0, density_sd = 0;
};

/// One particle's belt: how it is moved and deformed, and the seed of its blobs' places.
struct BeltState {
  geometry::Mat3 turn = geometry::Mat3::identity();
  double tilt = 0;                // degrees
  geometry::Vec3 shift{0, 0, 0};  // px
  double squash = 0, squash_angle = 0;  // squash_angle in radians, in the ring's plane
  double density = 1;             // relative to the mean belt
  std::uint64_t seed = 0;
};

/// The belt around a particle whose (uncentred) map is `model` (box n, pixel size in Å); fails
/// where the ring does not fit the box.
Belt make_belt(const BeltOptions& options, const std::vector<float>& model, int n, double pixel_size);
BeltState draw_belt_state(const Belt& belt, std::mt19937_64& rng);
/// Blob centres of one particle's belt, pixels from the box centre (map frame).
std::vector<geometry::Vec3> belt_blobs(const Belt& belt, const BeltState& state);
/// Adds the projection at rotation `a` (RELION's matrix: a point p lands at (a p)_xy) of the blobs
/// to an n x n image whose centre is pixel n/2; each blob's integrated density is blob_mass x density.
void add_belt_projection(const Belt& belt, const std::vector<geometry::Vec3>& blobs, double density, const geometry::Mat3& a, int n,
                         float* image);
/// Adds the blobs' density to an n^3 map (for the mean belt of the truth).
void add_belt_density(const Belt& belt, const std::vector<geometry::Vec3>& blobs, double density, int n, std::vector<float>& map);

}  // namespace emcryo::jobs
