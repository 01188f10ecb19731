#include "emcryo/jobs/belt.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"

namespace emcryo::jobs {

using geometry::Mat3;
using geometry::Vec3;

namespace {

double dot(const Vec3& a, const Vec3& b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
Vec3 cross(const Vec3& a, const Vec3& b) { return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x}; }
Vec3 unit(const Vec3& v) {
  const double l = std::sqrt(dot(v, v));
  return {v.x / l, v.y / l, v.z / l};
}

/// Calls f(x, y, z, p, v) for every voxel of a map with positive density v, p = position from the box centre.
template <class F>
void for_each_positive(const std::vector<float>& map, int n, F&& f) {
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const float v = map[(static_cast<std::size_t>(z) * n + y) * n + x];
        if (v > 0) f(Vec3{x - n / 2.0, y - n / 2.0, z - n / 2.0}, static_cast<double>(v));
      }
}

/// The particle's most distinct principal axis of inertia: the long axis of an elongated particle,
/// the normal of a flat one; a belt round its waist or rim. Power iterations on the inertia
/// tensor T (largest eigenvalue) and on trace(T) - T (smallest).
Vec3 belt_axis(const std::vector<float>& map, int n, const Vec3& centre) {
  double t[3][3] = {};
  for_each_positive(map, n, [&](const Vec3& p, double v) {
    const double d[3] = {p.x - centre.x, p.y - centre.y, p.z - centre.z};
    const double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) t[i][j] += v * ((i == j ? r2 : 0) - d[i] * d[j]);
  });
  const double trace = t[0][0] + t[1][1] + t[2][2];
  const auto apply = [&](const Vec3& a, double shift, double sign) {
    return Vec3{shift * a.x + sign * (t[0][0] * a.x + t[0][1] * a.y + t[0][2] * a.z),
                shift * a.y + sign * (t[1][0] * a.x + t[1][1] * a.y + t[1][2] * a.z),
                shift * a.z + sign * (t[2][0] * a.x + t[2][1] * a.y + t[2][2] * a.z)};
  };
  Vec3 large{0.3, 0.5, 0.8}, small{0.3, 0.5, 0.8};
  for (int it = 0; it < 500; ++it) large = unit(apply(large, 0, 1)), small = unit(apply(small, trace, -1));
  const double l1 = dot(large, apply(large, 0, 1)), l3 = dot(small, apply(small, 0, 1)), l2 = trace - l1 - l3;
  return l1 - l2 >= l2 - l3 ? large : small;
}

/// Columns: two unit vectors in the plane normal to `axis`, then the axis.
Mat3 frame_about(const Vec3& axis) {
  const Vec3 w = unit(axis);
  const Vec3 u = unit(cross(w, std::abs(w.x) < 0.9 ? Vec3{1, 0, 0} : Vec3{0, 1, 0}));
  const Vec3 v = cross(w, u);
  Mat3 f;
  const Vec3 cols[3] = {u, v, w};
  for (int c = 0; c < 3; ++c) f(0, c) = cols[c].x, f(1, c) = cols[c].y, f(2, c) = cols[c].z;
  return f;
}

/// The particle's girth in the belt's band: 95th percentile of the distance from the axis of the
/// voxels above 10% of the peak within the band.
double girth(const std::vector<float>& map, int n, const Vec3& centre, const Mat3& frame, double half_height) {
  const float peak = *std::max_element(map.begin(), map.end());
  const Mat3 to_local = geometry::transpose(frame);
  std::vector<double> radii;
  for_each_positive(map, n, [&](const Vec3& p, double v) {
    if (v < 0.1 * peak) return;
    const Vec3 q = to_local * Vec3{p.x - centre.x, p.y - centre.y, p.z - centre.z};
    if (std::abs(q.z) <= half_height) radii.push_back(std::hypot(q.x, q.y));
  });
  if (radii.empty()) return 0;
  const auto k = static_cast<std::ptrdiff_t>(0.95 * static_cast<double>(radii.size() - 1));
  std::nth_element(radii.begin(), radii.begin() + k, radii.end());
  return radii[static_cast<std::size_t>(k)];
}

}  // namespace

Belt make_belt(const BeltOptions& o, const std::vector<float>& model, int n, double pixel_size) {
  if (o.height <= 0 || o.width <= 0 || o.blob_size <= 0 || o.blobs < 1 || o.mass <= 0)
    fail("simulate: --belt-height, --belt-width, --belt-blob-size, --belt-blobs and --belt-mass must be positive");
  if (o.radius < 0 || o.density_sd < 0 || o.shift < 0 || o.tilt < 0 || o.squash < 0)
    fail("simulate: --belt-radius, --belt-density-sd, --belt-shift, --belt-tilt and --belt-squash must not be negative");
  if (!o.axis.empty() && o.axis.size() != 3) fail("simulate: --belt-axis takes x,y,z (3 numbers, not {})", o.axis.size());
  Belt b;
  double mass = 0, sx = 0, sy = 0, sz = 0;
  for_each_positive(model, n, [&](const Vec3& p, double v) { mass += v, sx += v * p.x, sy += v * p.y, sz += v * p.z; });
  if (mass <= 0) fail("simulate: the model is empty: no belt can wrap it");
  const Vec3 com{sx / mass, sy / mass, sz / mass};
  Vec3 axis = o.axis.empty() ? belt_axis(model, n, com) : Vec3{o.axis[0], o.axis[1], o.axis[2]};
  if (dot(axis, axis) < 1e-12) fail("simulate: --belt-axis must not be zero");
  b.frame = frame_about(axis);
  axis = unit(axis);
  const double offset = o.offset / pixel_size;
  b.centre = {com.x + offset * axis.x, com.y + offset * axis.y, com.z + offset * axis.z};
  b.half_height = o.height / 2 / pixel_size;
  b.half_width = o.width / 2 / pixel_size;
  b.radius = o.radius > 0 ? o.radius / pixel_size : girth(model, n, b.centre, b.frame, b.half_height) + b.half_width;
  b.blob_sigma = o.blob_size / pixel_size;
  b.blobs = o.blobs;
  b.blob_mass = o.mass * mass / o.blobs;
  b.shift_sd = o.shift / pixel_size;
  b.tilt_sd = o.tilt, b.squash_sd = o.squash, b.density_sd = o.density_sd;
  // The ring (with its tube and the blobs' spread) must stay inside the box, or its projections
  // would wrap around the image edges.
  const double centre_off = std::sqrt(dot(b.centre, b.centre));
  const double outer = centre_off + std::hypot(b.radius + b.half_width, b.half_height) + 2 * b.blob_sigma;
  if (outer > n / 2.0 - 1)
    fail("simulate: the belt reaches {:.1f} Å from the box centre, beyond the box's half-width {:.1f} Å: give a larger --box or a "
         "smaller --belt-radius/--belt-width/--belt-height",
         outer * pixel_size, (n / 2.0 - 1) * pixel_size);
  log::info("simulate: belt of {} blobs ({:.1f} Å sd) on a ring of radius {:.1f} Å (tube {:.1f} x {:.1f} Å), axis ({:.2f}, {:.2f}, {:.2f}), "
            "mass {} x the particle's",
            b.blobs, o.blob_size, b.radius * pixel_size, o.width, o.height, axis.x, axis.y, axis.z, o.mass);
  return b;
}

BeltState draw_belt_state(const Belt& belt, std::mt19937_64& rng) {
  std::normal_distribution<double> g(0, 1);
  std::uniform_real_distribution<double> u(0, 1);
  BeltState s;
  const Vec3 axis{g(rng), g(rng), g(rng)};
  s.tilt = belt.tilt_sd * g(rng);
  if (belt.tilt_sd > 0) s.turn = geometry::axis_angle(axis, s.tilt);
  s.shift = {belt.shift_sd * g(rng), belt.shift_sd * g(rng), belt.shift_sd * g(rng)};
  s.squash = std::clamp(belt.squash_sd * g(rng), -0.5, 0.5);
  s.squash_angle = std::numbers::pi * u(rng);
  s.density = std::max(0.0, 1 + belt.density_sd * g(rng));
  s.seed = rng();
  return s;
}

std::vector<Vec3> belt_blobs(const Belt& belt, const BeltState& s) {
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<double> u(-1, 1);
  const double reach = belt.radius * (1 + std::abs(s.squash)) + belt.half_width;
  const Mat3 place = s.turn * belt.frame;
  std::vector<Vec3> out;
  out.reserve(static_cast<std::size_t>(belt.blobs));
  while (static_cast<int>(out.size()) < belt.blobs) {
    // Uniform in the tube's volume: a point of the cross-section's ellipse, kept with probability
    // proportional to its distance from the axis (the ring's circumference there).
    const double phi = std::numbers::pi * u(rng), a = u(rng), h = u(rng);
    if (a * a + h * h > 1) continue;
    const double r = belt.radius * (1 + s.squash * std::cos(2 * (phi - s.squash_angle))) + a * belt.half_width;
    if (r <= 0 || (u(rng) + 1) / 2 * reach > r) continue;
    const Vec3 q = place * Vec3{r * std::cos(phi), r * std::sin(phi), h * belt.half_height};
    out.push_back({belt.centre.x + s.shift.x + q.x, belt.centre.y + s.shift.y + q.y, belt.centre.z + s.shift.z + q.z});
  }
  return out;
}

void add_belt_projection(const Belt& belt, const std::vector<Vec3>& blobs, double density, const Mat3& a, int n, float* image) {
  const double s2 = belt.blob_sigma * belt.blob_sigma;
  const double amplitude = belt.blob_mass * density / (2 * std::numbers::pi * s2);
  const int reach = static_cast<int>(std::ceil(4 * belt.blob_sigma));
  for (const Vec3& p : blobs) {
    const Vec3 q = a * p;
    const double cx = q.x + n / 2.0, cy = q.y + n / 2.0;
    const int x0 = std::max(0, static_cast<int>(std::floor(cx)) - reach), x1 = std::min(n - 1, static_cast<int>(std::ceil(cx)) + reach);
    const int y0 = std::max(0, static_cast<int>(std::floor(cy)) - reach), y1 = std::min(n - 1, static_cast<int>(std::ceil(cy)) + reach);
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x)
        image[static_cast<std::size_t>(y) * n + x] += static_cast<float>(amplitude * std::exp(-((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (2 * s2)));
  }
}

void add_belt_density(const Belt& belt, const std::vector<Vec3>& blobs, double density, int n, std::vector<float>& map) {
  const double s2 = belt.blob_sigma * belt.blob_sigma;
  const double amplitude = belt.blob_mass * density / std::pow(2 * std::numbers::pi * s2, 1.5);
  const int reach = static_cast<int>(std::ceil(4 * belt.blob_sigma));
  for (const Vec3& p : blobs) {
    const double c[3] = {p.x + n / 2.0, p.y + n / 2.0, p.z + n / 2.0};
    int lo[3], hi[3];
    for (int d = 0; d < 3; ++d)
      lo[d] = std::max(0, static_cast<int>(std::floor(c[d])) - reach), hi[d] = std::min(n - 1, static_cast<int>(std::ceil(c[d])) + reach);
    for (int z = lo[2]; z <= hi[2]; ++z)
      for (int y = lo[1]; y <= hi[1]; ++y)
        for (int x = lo[0]; x <= hi[0]; ++x) {
          const double r2 = (x - c[0]) * (x - c[0]) + (y - c[1]) * (y - c[1]) + (z - c[2]) * (z - c[2]);
          map[(static_cast<std::size_t>(z) * n + y) * n + x] += static_cast<float>(amplitude * std::exp(-r2 / (2 * s2)));
        }
  }
}

}  // namespace emcryo::jobs
