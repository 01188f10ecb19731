#include "emcryo/geometry/rotation.hpp"

#include <algorithm>
#include <numbers>

namespace emcryo::geometry {

namespace {
constexpr double kDeg = std::numbers::pi / 180.0;
}

Mat3 operator*(const Mat3& a, const Mat3& b) {
  Mat3 c;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) c(i, j) = a(i, 0) * b(0, j) + a(i, 1) * b(1, j) + a(i, 2) * b(2, j);
  return c;
}

Vec3 operator*(const Mat3& a, const Vec3& v) {
  return {a(0, 0) * v.x + a(0, 1) * v.y + a(0, 2) * v.z, a(1, 0) * v.x + a(1, 1) * v.y + a(1, 2) * v.z,
          a(2, 0) * v.x + a(2, 1) * v.y + a(2, 2) * v.z};
}

Mat3 transpose(const Mat3& a) {
  Mat3 t;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) t(i, j) = a(j, i);
  return t;
}

Mat3 euler_to_matrix(const Euler& e) {
  const double ca = std::cos(e.rot * kDeg), sa = std::sin(e.rot * kDeg);
  const double cb = std::cos(e.tilt * kDeg), sb = std::sin(e.tilt * kDeg);
  const double cg = std::cos(e.psi * kDeg), sg = std::sin(e.psi * kDeg);
  const double cc = cb * ca, cs = cb * sa, sc = sb * ca, ss = sb * sa;
  Mat3 a;
  a(0, 0) = cg * cc - sg * sa;
  a(0, 1) = cg * cs + sg * ca;
  a(0, 2) = -cg * sb;
  a(1, 0) = -sg * cc - cg * sa;
  a(1, 1) = -sg * cs + cg * ca;
  a(1, 2) = sg * sb;
  a(2, 0) = sc;
  a(2, 1) = ss;
  a(2, 2) = cb;
  return a;
}

Euler matrix_to_euler(const Mat3& a) {
  Euler e;
  const double sb = std::sqrt(a(0, 2) * a(0, 2) + a(1, 2) * a(1, 2));
  if (sb > 16 * 1e-6) {
    e.psi = std::atan2(a(1, 2), -a(0, 2));
    e.rot = std::atan2(a(2, 1), a(2, 0));
    // Choose sin(tilt) >= 0 so that tilt lies in [0, 180].
    e.tilt = std::atan2(sb, a(2, 2));
  } else {
    // Gimbal lock: only rot+psi (tilt 0) or psi-rot (tilt 180) is defined; put it all in psi.
    e.rot = 0;
    e.tilt = a(2, 2) > 0 ? 0 : std::numbers::pi;
    e.psi = a(2, 2) > 0 ? std::atan2(-a(1, 0), a(0, 0)) : std::atan2(a(1, 0), -a(0, 0));
  }
  e.rot /= kDeg;
  e.tilt /= kDeg;
  e.psi /= kDeg;
  return e;
}

double rotation_angle_between(const Mat3& a, const Mat3& b) {
  Mat3 r = transpose(a) * b;
  double c = (r(0, 0) + r(1, 1) + r(2, 2) - 1) / 2;
  return std::acos(std::clamp(c, -1.0, 1.0)) / kDeg;
}

Mat3 axis_angle(const Vec3& axis, double degrees) {
  const double n = std::sqrt(axis.x * axis.x + axis.y * axis.y + axis.z * axis.z);
  const double x = axis.x / n, y = axis.y / n, z = axis.z / n;
  const double c = std::cos(degrees * kDeg), s = std::sin(degrees * kDeg), t = 1 - c;
  Mat3 r;
  r(0, 0) = t * x * x + c;
  r(0, 1) = t * x * y - s * z;
  r(0, 2) = t * x * z + s * y;
  r(1, 0) = t * x * y + s * z;
  r(1, 1) = t * y * y + c;
  r(1, 2) = t * y * z - s * x;
  r(2, 0) = t * x * z - s * y;
  r(2, 1) = t * y * z + s * x;
  r(2, 2) = t * z * z + c;
  return r;
}



Mat3 rotation_from_vector(const Vec3& v) {
  const double angle = std::sqrt(v.x * v.x + v.y * v.y + v.z * v.z);
  if (angle == 0) return Mat3::identity();
  return axis_angle(v, angle / kDeg);
}

Vec3 rotation_vector(const Mat3& r) {
  const double c = std::clamp((r(0, 0) + r(1, 1) + r(2, 2) - 1) / 2, -1.0, 1.0);
  // The antisymmetric part gives 2 sin(angle) * axis: well conditioned away from pi. The angle
  // from atan2(sin, cos) is accurate everywhere (acos alone loses half the digits near 0 and pi).
  const Vec3 w{r(2, 1) - r(1, 2), r(0, 2) - r(2, 0), r(1, 0) - r(0, 1)};
  const double s = std::sqrt(w.x * w.x + w.y * w.y + w.z * w.z);
  const double angle = std::atan2(s / 2, c);
  if (angle < 1e-6) return {w.x / 2, w.y / 2, w.z / 2};  // sin(angle) ~ angle
  if (c > -0.9) {
    const double f = angle / s;
    return {w.x * f, w.y * f, w.z * f};
  }
  // Near pi the antisymmetric part vanishes: take the axis from the symmetric part,
  // (R + R^T)/2 - c I = (1 - c) a a^T, using its largest diagonal entry, and the sign from w.
  const double d[3] = {r(0, 0) - c, r(1, 1) - c, r(2, 2) - c};
  const int k = static_cast<int>(std::max_element(d, d + 3) - d);
  double a[3];
  a[k] = std::sqrt(std::max(d[k], 0.0) / (1 - c));
  for (int j = 0; j < 3; ++j)
    if (j != k) a[j] = (r(k, j) + r(j, k)) / (2 * (1 - c) * a[k]);
  const double dot = a[0] * w.x + a[1] * w.y + a[2] * w.z;
  const double sign = dot < 0 ? -1.0 : 1.0;
  return {sign * a[0] * angle, sign * a[1] * angle, sign * a[2] * angle};
}

Mat3 random_rotation(std::mt19937_64& rng) {
  std::normal_distribution<double> g;
  double q[4];
  double norm = 0;
  do {
    norm = 0;
    for (double& c : q) c = g(rng), norm += c * c;
  } while (norm < 1e-12);
  norm = std::sqrt(norm);
  const double w = q[0] / norm, x = q[1] / norm, y = q[2] / norm, z = q[3] / norm;
  Mat3 r;
  r(0, 0) = 1 - 2 * (y * y + z * z), r(0, 1) = 2 * (x * y - z * w), r(0, 2) = 2 * (x * z + y * w);
  r(1, 0) = 2 * (x * y + z * w), r(1, 1) = 1 - 2 * (x * x + z * z), r(1, 2) = 2 * (y * z - x * w);
  r(2, 0) = 2 * (x * z - y * w), r(2, 1) = 2 * (y * z + x * w), r(2, 2) = 1 - 2 * (x * x + y * y);
  return r;
}

}  // namespace emcryo::geometry
