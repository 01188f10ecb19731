// Point-group symmetry with RELION 3.1's axis settings (so that our symmetrised maps overlay
// maps from relion_reconstruct / relion_refine --sym X).
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "emcryo/geometry/rotation.hpp"

namespace emcryo::geometry {

/// The rotation matrices of a point group, identity first. Names as RELION: C1, Cn, Dn, T, O,
/// I (= I2), I1, I2, I3, I4 (case-insensitive, e.g. "c5", "D7"). `name` is the canonical
/// (upper-case) spelling, e.g. "C5", "D7", "I2" stays "I2", "i" becomes "I".
///
/// Settings (RELION 3.1 src/symmetries.cpp, SymList::fill_symmetry_class):
///   Cn: n-fold about z.   Dn: Cn plus a 2-fold about x.
///   T: 3-fold about z, 2-fold about (0, sqrt(2/3), sqrt(1/3)).
///   O: 3-fold about (1, 1, 1)/sqrt(3), 4-fold about z.
///   I2 (= I): 2-folds on x, y, z; 5-fold (1, 0, phi)/|.|; 3-fold (0, phi - 1, phi)/sqrt(3).
///   I1: 2-folds on x, y, z; 5-fold (phi, 0, -1)/|.|; 3-fold (phi, phi - 1, 0)/sqrt(3)
///       (= I2 turned 90 degrees about z).
///   I3: 5-fold on z; 2-fold (-1, 0, phi)/|.|.   I4: 5-fold on z (RELION names the one at
///       (2, 0, 1)/sqrt(5)); 2-fold (1, 0, phi)/|.| (= I3 turned 180 degrees about z).
///   (phi = golden ratio.)
/// The set of operators is closed under inversion, so it does not matter whether a caller
/// applies R or R^T to sample a map.
struct SymmetryGroup {
  std::string name;
  std::vector<Mat3> operators;
};

/// Fails with emcryo::fail("unknown symmetry '{}': use C<n>, D<n>, T, O or I", name) for
/// anything else (also n < 1, n > 999, garbage).
SymmetryGroup make_symmetry_group(std::string_view name);

}  // namespace emcryo::geometry
