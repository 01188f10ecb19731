// RELION's ZYZ Euler convention (relion-notes.md §2.2), its inverse, and rotation distances.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "emcryo/geometry/rotation.hpp"

namespace {

using emcryo::geometry::axis_angle;
using emcryo::geometry::Euler;
using emcryo::geometry::euler_to_matrix;
using emcryo::geometry::Mat3;
using emcryo::geometry::matrix_to_euler;
using emcryo::geometry::rotation_angle_between;
using emcryo::geometry::Vec3;

constexpr double kDeg = std::numbers::pi / 180;

double max_diff(const Mat3& a, const Mat3& b) {
  double d = 0;
  for (int i = 0; i < 9; ++i) d = std::max(d, std::abs(a.m[static_cast<size_t>(i)] - b.m[static_cast<size_t>(i)]));
  return d;
}

// The matrix of relion-notes.md §2.2, written out element by element.
Mat3 relion_formula(double rot, double tilt, double psi) {
  const double ca = std::cos(rot * kDeg), sa = std::sin(rot * kDeg);
  const double cb = std::cos(tilt * kDeg), sb = std::sin(tilt * kDeg);
  const double cg = std::cos(psi * kDeg), sg = std::sin(psi * kDeg);
  Mat3 a;
  a.m = {cg * cb * ca - sg * sa,  cg * cb * sa + sg * ca,  -cg * sb,  //
         -sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb,   //
         sb * ca,                 sb * sa,                 cb};
  return a;
}

// Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]], Ry(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]].
Mat3 rz(double t) {
  Mat3 r;
  r.m = {std::cos(t * kDeg), std::sin(t * kDeg), 0, -std::sin(t * kDeg), std::cos(t * kDeg), 0, 0, 0, 1};
  return r;
}
Mat3 ry(double t) {
  Mat3 r;
  r.m = {std::cos(t * kDeg), 0, -std::sin(t * kDeg), 0, 1, 0, std::sin(t * kDeg), 0, std::cos(t * kDeg)};
  return r;
}

double wrap180(double a) {  // to (-180, 180]
  a = std::fmod(a, 360.0);
  if (a <= -180) a += 360;
  if (a > 180) a -= 360;
  return a;
}

TEST(EulerMatrix, MatchesRelionFormula) {
  const double angles[][3] = {{0, 0, 0},      {90, 0, 0},    {0, 90, 0},       {0, 0, 90},
                              {30, 60, -45},  {-170, 12, 77}, {123.4, 179.9, -5.6}, {10, 180, 20},
                              {250, 95, 359}, {-33, 0.001, 41}};
  for (const auto& e : angles) {
    const Mat3 a = euler_to_matrix({e[0], e[1], e[2]});
    EXPECT_LT(max_diff(a, relion_formula(e[0], e[1], e[2])), 1e-12) << e[0] << " " << e[1] << " " << e[2];
    EXPECT_LT(max_diff(a, rz(e[2]) * ry(e[1]) * rz(e[0])), 1e-12);
    // Rz(t), Ry(t) are right-handed rotations by -t.
    EXPECT_LT(max_diff(a, axis_angle({0, 0, 1}, -e[2]) * axis_angle({0, 1, 0}, -e[1]) * axis_angle({0, 0, 1}, -e[0])),
              1e-12);
    // Projection direction = third row (sin(tilt) cos(rot), sin(tilt) sin(rot), cos(tilt)).
    EXPECT_NEAR(a(2, 0), std::sin(e[1] * kDeg) * std::cos(e[0] * kDeg), 1e-12);
    EXPECT_NEAR(a(2, 1), std::sin(e[1] * kDeg) * std::sin(e[0] * kDeg), 1e-12);
    EXPECT_NEAR(a(2, 2), std::cos(e[1] * kDeg), 1e-12);
  }
}

TEST(EulerMatrix, KnownValues) {
  // rot = 90 alone: Rz(90) = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]].
  Mat3 a = euler_to_matrix({90, 0, 0});
  Mat3 expect;
  expect.m = {0, 1, 0, -1, 0, 0, 0, 0, 1};
  EXPECT_LT(max_diff(a, expect), 1e-15);
  // tilt = 90 alone: A = Ry(90) = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]; viewing direction +x.
  a = euler_to_matrix({0, 90, 0});
  expect.m = {0, 0, -1, 0, 1, 0, 1, 0, 0};
  EXPECT_LT(max_diff(a, expect), 1e-15);
}

TEST(EulerMatrix, IsProperRotation) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-360, 360);
  for (int t = 0; t < 100; ++t) {
    const Mat3 a = euler_to_matrix({u(rng), u(rng), u(rng)});
    EXPECT_LT(max_diff(a * emcryo::geometry::transpose(a), Mat3::identity()), 1e-14);
    const double det = a(0, 0) * (a(1, 1) * a(2, 2) - a(1, 2) * a(2, 1)) -
                       a(0, 1) * (a(1, 0) * a(2, 2) - a(1, 2) * a(2, 0)) +
                       a(0, 2) * (a(1, 0) * a(2, 1) - a(1, 1) * a(2, 0));
    EXPECT_NEAR(det, 1, 1e-14);
  }
}

TEST(EulerInverse, RoundTripRandom) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<double> ang(-180, 180), tilt(0, 180);
  for (int t = 0; t < 2000; ++t) {
    const Euler e{ang(rng), tilt(rng), ang(rng)};
    const Mat3 a = euler_to_matrix(e);
    const Euler back = matrix_to_euler(a);
    EXPECT_GE(back.tilt, 0);
    EXPECT_LE(back.tilt, 180);
    EXPECT_LT(max_diff(euler_to_matrix(back), a), 1e-10) << e.rot << " " << e.tilt << " " << e.psi;
    if (e.tilt > 0.01 && e.tilt < 179.99) {  // unique angles away from gimbal lock
      EXPECT_NEAR(wrap180(back.rot - e.rot), 0, 1e-8);
      EXPECT_NEAR(back.tilt, e.tilt, 1e-8);
      EXPECT_NEAR(wrap180(back.psi - e.psi), 0, 1e-8);
    }
  }
}

TEST(EulerInverse, RoundTripNearPoles) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> ang(-180, 180);
  const double tilts[] = {0,      1e-9,   1e-6,    1e-4,     9e-4,       1e-3,  0.01,  0.1,
                          179.9,  179.99, 179.999, 179.9991, 179.999999, 180 - 1e-9, 180};
  for (double tilt : tilts) {
    for (int t = 0; t < 50; ++t) {
      const Euler e{ang(rng), tilt, ang(rng)};
      const Mat3 a = euler_to_matrix(e);
      const Euler back = matrix_to_euler(a);
      EXPECT_GE(back.tilt, 0);
      EXPECT_LE(back.tilt, 180);
      // In the gimbal-lock branch (sin(tilt) < 1.6e-5) the matrix is reproduced to ~sin(tilt).
      EXPECT_LT(max_diff(euler_to_matrix(back), a), 2e-5) << e.rot << " " << tilt << " " << e.psi;
      // The viewing direction (third row) and the in-plane angle are what matter: compare the
      // rotation distance too.
      EXPECT_LT(rotation_angle_between(euler_to_matrix(back), a), 2e-3) << tilt;
    }
  }
  // Exactly at the poles only rot + psi (tilt 0) or psi - rot (tilt 180) is defined.
  for (double rot : {-170.0, -30.0, 0.0, 45.0, 160.0}) {
    const Euler b0 = matrix_to_euler(euler_to_matrix({rot, 0, 20}));
    EXPECT_NEAR(b0.tilt, 0, 1e-12);
    EXPECT_NEAR(wrap180(b0.rot + b0.psi - (rot + 20)), 0, 1e-9);
    const Euler b1 = matrix_to_euler(euler_to_matrix({rot, 180, 20}));
    EXPECT_NEAR(b1.tilt, 180, 1e-12);
    EXPECT_NEAR(wrap180(b1.psi - b1.rot - (20 - rot)), 0, 1e-9);
  }
}

TEST(EulerDistance, RotationAngleBetween) {
  const Mat3 id = Mat3::identity();
  EXPECT_NEAR(rotation_angle_between(id, id), 0, 1e-12);
  const Vec3 axes[] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {1, 2, 3}, {-0.3, 0.1, 0.9}};
  for (const Vec3& ax : axes) {
    // acos(trace) loses precision at the ends: ~1e-6 degrees near 180 (fine for EM).
    for (double ang : {0.001, 0.01, 0.5, 10.0, 90.0, 135.0, 179.5, 179.99, 180.0}) {
      EXPECT_NEAR(rotation_angle_between(id, axis_angle(ax, ang)), ang, 1e-5) << ang;
      EXPECT_NEAR(rotation_angle_between(id, axis_angle(ax, -ang)), ang, 1e-5) << ang;
    }
    EXPECT_NEAR(rotation_angle_between(id, axis_angle(ax, 300)), 60, 1e-9);
  }
  // Invariant under a common rotation on the left, symmetric in its arguments.
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(-180, 180);
  for (int t = 0; t < 100; ++t) {
    const Mat3 a = euler_to_matrix({u(rng), u(rng), u(rng)});
    const double ang = std::abs(u(rng));
    const Mat3 b = a * axis_angle({u(rng), u(rng), u(rng)}, ang);
    EXPECT_NEAR(rotation_angle_between(a, b), ang, 1e-6);
    EXPECT_NEAR(rotation_angle_between(b, a), ang, 1e-6);
  }
  // The tilt alone: views 30 degrees apart along the same great circle.
  EXPECT_NEAR(rotation_angle_between(euler_to_matrix({0, 10, 0}), euler_to_matrix({0, 40, 0})), 30, 1e-9);
  EXPECT_NEAR(rotation_angle_between(euler_to_matrix({0, 0, 10}), euler_to_matrix({0, 0, -10})), 20, 1e-9);
}

TEST(EulerAxisAngle, RightHanded) {
  const Vec3 y = axis_angle({0, 0, 1}, 90) * Vec3{1, 0, 0};
  EXPECT_NEAR(y.x, 0, 1e-15);
  EXPECT_NEAR(y.y, 1, 1e-15);
  EXPECT_NEAR(y.z, 0, 1e-15);
  const Vec3 z = axis_angle({1, 0, 0}, 90) * Vec3{0, 1, 0};
  EXPECT_NEAR(z.z, 1, 1e-15);
  const Vec3 x = axis_angle({0, 1, 0}, 90) * Vec3{0, 0, 1};
  EXPECT_NEAR(x.x, 1, 1e-15);
  // Un-normalised axes are normalised.
  EXPECT_LT(max_diff(axis_angle({0, 0, 5}, 33), axis_angle({0, 0, 1}, 33)), 1e-15);
}

}  // namespace

TEST(RotationVector, InvertsTheExponentialNearZeroAndNearPi) {
  using namespace emcryo::geometry;
  for (const Vec3 v : {Vec3{0, 0, 0}, Vec3{1e-9, -2e-9, 3e-9}, Vec3{0.3, -1.2, 2.0}, Vec3{3.14159, 0, 0},
                       Vec3{0, -3.1415926, 0.0000001}, Vec3{1.8, 1.8, 1.8}}) {
    const Mat3 r = rotation_from_vector(v);
    const Vec3 w = rotation_vector(r);
    const Mat3 back = rotation_from_vector(w);
    for (std::size_t i = 0; i < 9; ++i) EXPECT_NEAR(back.m[i], r.m[i], 1e-9) << v.x << " " << v.y << " " << v.z;
  }
  // Right-handed: a quarter turn about z takes x to y.
  const Vec3 y = rotation_from_vector({0, 0, std::numbers::pi / 2}) * Vec3{1, 0, 0};
  EXPECT_NEAR(y.y, 1, 1e-12);
}
