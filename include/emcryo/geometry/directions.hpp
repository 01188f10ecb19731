// Directions on the unit sphere.
#pragma once
#include <cstdint>
#include <vector>

#include "emcryo/geometry/rotation.hpp"

namespace emcryo::geometry {

/// Angle between two unit vectors, in degrees (0..180).
double angle_between(const Vec3& a, const Vec3& b);

/// `count` unit vectors spread over the sphere so that the smallest angle between any two comes
/// close to the largest possible (the Tammes problem: 63.4 degrees for 12, 74.9 for 8): a Fibonacci
/// sphere relaxed by a short-range repulsion, then turned as a whole by a rotation drawn from
/// `seed`. The same (count, seed) gives the same directions on every machine and thread count.
std::vector<Vec3> spread_directions(int count, std::uint64_t seed);

/// RELION's Euler angles (psi = 0) of the projection along direction d: the third row of
/// euler_to_matrix is d.
Euler direction_to_euler(const Vec3& d);

}  // namespace emcryo::geometry
