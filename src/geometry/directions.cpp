#include "emcryo/geometry/directions.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "emcryo/core/random.hpp"

namespace emcryo::geometry {

namespace {

constexpr double kDeg = std::numbers::pi / 180.0;

double dot(const Vec3& a, const Vec3& b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

Vec3 normalised(const Vec3& v) {
  const double n = std::sqrt(dot(v, v));
  return {v.x / n, v.y / n, v.z / n};
}

/// The smallest chord length between two of the points.
double min_chord(const std::vector<Vec3>& p) {
  double best = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < p.size(); ++i)
    for (std::size_t j = i + 1; j < p.size(); ++j) {
      const Vec3 d{p[i].x - p[j].x, p[i].y - p[j].y, p[i].z - p[j].z};
      best = std::min(best, std::sqrt(dot(d, d)));
    }
  return best;
}

/// Near-uniform start: the Fibonacci (golden-angle) spiral.
std::vector<Vec3> fibonacci_sphere(int count) {
  std::vector<Vec3> p;
  const double golden = std::numbers::pi * (3 - std::sqrt(5.0));
  for (int i = 0; i < count; ++i) {
    const double z = 1 - (2.0 * i + 1) / count, r = std::sqrt(std::max(0.0, 1 - z * z));
    p.push_back({r * std::cos(golden * i), r * std::sin(golden * i), z});
  }
  return p;
}

/// One step of a Riesz s-energy descent on the sphere: each point moves along the tangent part of
/// sum_j (p_i - p_j) / |p_i - p_j|^(s+2), the largest move `step` long. A high s makes the force
/// short-ranged, so the closest pairs dominate: the energy minimum approaches the max-min spacing.
void repel(std::vector<Vec3>& p, double s, double step) {
  const double scale = min_chord(p);  // distances in units of the closest pair: no overflow at high s
  std::vector<Vec3> force(p.size());
  double largest = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    Vec3 f{0, 0, 0};
    for (std::size_t j = 0; j < p.size(); ++j) {
      if (j == i) continue;
      const Vec3 d{p[i].x - p[j].x, p[i].y - p[j].y, p[i].z - p[j].z};
      const double r = std::sqrt(dot(d, d)) / scale;
      const double w = std::pow(r, -(s + 2));
      f.x += w * d.x, f.y += w * d.y, f.z += w * d.z;
    }
    const double radial = dot(f, p[i]);
    force[i] = {f.x - radial * p[i].x, f.y - radial * p[i].y, f.z - radial * p[i].z};
    largest = std::max(largest, std::sqrt(dot(force[i], force[i])));
  }
  if (largest <= 0) return;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double k = step / largest;
    p[i] = normalised({p[i].x + k * force[i].x, p[i].y + k * force[i].y, p[i].z + k * force[i].z});
  }
}

}  // namespace

double angle_between(const Vec3& a, const Vec3& b) {
  return std::acos(std::clamp(dot(a, b) / std::sqrt(dot(a, a) * dot(b, b)), -1.0, 1.0)) / kDeg;
}

std::vector<Vec3> spread_directions(int count, std::uint64_t seed) {
  if (count <= 0) return {};
  std::vector<Vec3> p = fibonacci_sphere(count), best = p;
  if (count > 1) {
    // Work bounded to ~2e7 pair terms; a few hundred steps settle a hundred points.
    const double pairs = static_cast<double>(count) * count;
    const int steps = static_cast<int>(std::clamp(2e7 / pairs, 20.0, 400.0));
    double best_chord = min_chord(p);
    for (int t = 0; t < steps; ++t) {
      const double progress = static_cast<double>(t) / steps;
      // Soft (s = 2) to sharp (s = 40), with a step that shrinks from a fifth of the closest chord.
      repel(p, 2 + 38 * progress, 0.2 * min_chord(p) * (1 - 0.95 * progress));
      const double chord = min_chord(p);
      if (chord > best_chord) best_chord = chord, best = p;
    }
  }
  auto rng = item_rng(seed, 0xd1ec);
  const Mat3 turn = random_rotation(rng);
  for (auto& v : best) v = turn * v;
  return best;
}

Euler direction_to_euler(const Vec3& d) {
  const Vec3 u = normalised(d);
  return {std::atan2(u.y, u.x) / kDeg, std::acos(std::clamp(u.z, -1.0, 1.0)) / kDeg, 0.0};
}

}  // namespace emcryo::geometry
