// 3x3 rotations and RELION's ZYZ Euler angles (rot, tilt, psi in degrees).
#pragma once
#include <array>
#include <cmath>
#include <random>

namespace emcryo::geometry {

struct Vec3 {
  double x = 0, y = 0, z = 0;
};

struct Mat3 {
  std::array<double, 9> m{1, 0, 0, 0, 1, 0, 0, 0, 1};  // row-major
  double operator()(int r, int c) const { return m[static_cast<size_t>(3 * r + c)]; }
  double& operator()(int r, int c) { return m[static_cast<size_t>(3 * r + c)]; }
  static Mat3 identity() { return Mat3{}; }
};

Mat3 operator*(const Mat3& a, const Mat3& b);
Vec3 operator*(const Mat3& a, const Vec3& v);
Mat3 transpose(const Mat3& a);

struct Euler {
  double rot = 0, tilt = 0, psi = 0;  // degrees
};

/// RELION's matrix A = Rz(psi) Ry(tilt) Rz(rot), with Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]] and
/// Ry(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]. A projection image is the volume rotated by A,
/// summed along z; its Fourier coefficient at (kx, ky) samples the volume's transform at
/// A^T (kx, ky, 0).
Mat3 euler_to_matrix(const Euler& e);
/// Inverse of euler_to_matrix with RELION's choice of branch (tilt in [0, 180]).
Euler matrix_to_euler(const Mat3& a);
/// Angle of the rotation a^T b, in degrees (0..180): the distance between two orientations.
double rotation_angle_between(const Mat3& a, const Mat3& b);
/// Rotation by angle (degrees) about a unit axis (right-handed).
Mat3 axis_angle(const Vec3& axis, double degrees);
/// The rotation vector (axis times angle, radians; the exponential map) of a right-handed
/// rotation; the zero vector gives the identity.
Mat3 rotation_from_vector(const Vec3& v);
/// Inverse of rotation_from_vector, angle in [0, pi]; accurate near 0 and near pi.
Vec3 rotation_vector(const Mat3& r);
/// A rotation drawn uniformly over SO(3) (a uniformly distributed unit quaternion) from `rng`.
Mat3 random_rotation(std::mt19937_64& rng);

}  // namespace emcryo::geometry
