// The hypothesis space of an E-step: orientations (2D in-plane angles, 3D grids over the
// asymmetric unit, local grids around a pose) and shifts, each at a coarse and a fine sampling,
// with the children that link a coarse hypothesis to the fine ones in its cell, and the log-prior
// of a pose around a given one (local refinement).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "emcryo/geometry/rotation.hpp"

namespace emcryo::em {

using Shift = std::pair<float, float>;  // pixels: displacement of the particle from the centre

/// Shifts on a square grid of `step` px inside a disc of `range` px (the fine grid), the subset on
/// the grid of twice the step (the coarse grid), and for each coarse shift the fine shifts of its
/// cell (its 3x3 neighbourhood on the fine grid).
struct ShiftGrid {
  double step = 1;
  std::vector<Shift> fine;
  std::vector<int> coarse;                  // ids into fine
  std::vector<std::vector<int>> children;   // per coarse shift, ids into fine
};
ShiftGrid make_shift_grid(double range, double step);

/// In-plane angles every `step` degrees (0, step, ...), RELION's psi.
std::vector<double> psi_grid(double step);

/// Where psi (degrees, any turn) falls on the grid of `count` in-plane angles 360 r / count: the
/// nearest r in [0, count). Called per kept hypothesis (10^4 per particle in early iterations), so
/// without fmod.
int psi_grid_index(double psi, int count);

/// Near-uniform viewing directions (Fibonacci sphere) at about `step` degrees, reduced to one
/// asymmetric unit of the point group, each combined with in-plane angles at the same step.
std::vector<geometry::Euler> orientation_grid(double step, const std::string& symmetry);

/// `centre` turned by the rotation vectors (u, v, w) x `spacing` degrees, u, v, w integers with
/// u^2 + v^2 + w^2 <= kLocalReach2 (within sqrt(6) spacings: the 5x5x5 grid less its 44 farthest
/// points), kLocalOrientations in all.
std::vector<geometry::Euler> local_orientations(const geometry::Euler& centre, double spacing);
inline constexpr int kLocalReach2 = 6;
inline constexpr int kLocalOrientations = [] {
  int count = 0;
  for (int u = -2; u <= 2; ++u)
    for (int v = -2; v <= 2; ++v)
      for (int w = -2; w <= 2; ++w) count += u * u + v * v + w * w <= kLocalReach2;
  return count;
}();

/// The 8 orientations at the centres of the sub-cells of a cell of `cell` degrees around `centre`
/// (rotation vectors (+-1, +-1, +-1) x cell/4): the fine hypotheses of a coarse 3D orientation.
void sub_orientations(const geometry::Euler& centre, double cell, geometry::Euler out[8]);

/// Gaussian prior on a pose around a reference pose (local refinement): log-prior of a rotation
/// `angle` degrees and a shift `distance` px away. A sigma <= 0 leaves that part flat; poses
/// beyond an extent (> 0) are excluded (a log-prior of kExcluded: finite, so that a particle whose
/// every hypothesis lies outside still has a posterior).
struct PosePrior {
  double sigma_rotation = 0;  // degrees
  double sigma_shift = 0;     // pixels
  double max_rotation = 0;    // degrees; 0: no limit
  double max_shift = 0;       // pixels; 0: no limit
  static constexpr double kExcluded = -1e4;
  double log_prior(double angle, double distance) const;
  bool active() const { return sigma_rotation > 0 || sigma_shift > 0 || max_rotation > 0 || max_shift > 0; }
};

}  // namespace emcryo::em
