#include "emcryo/image/map_align.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "emcryo/image/fourier.hpp"

namespace emcryo::image {

using geometry::Mat3;
using geometry::Vec3;

namespace {

std::size_t voxel(int x, int y, int z, int n) { return (static_cast<std::size_t>(z) * n + y) * n + x; }

Vec3 add(const Vec3& a, const Vec3& b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
Vec3 sub(const Vec3& a, const Vec3& b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
Vec3 scale(const Vec3& a, double f) { return {a.x * f, a.y * f, a.z * f}; }

}  // namespace

Vec3 centre_of_mass(const std::vector<float>& map, int n) {
  double sx = 0, sy = 0, sz = 0, total = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double v = std::max(0.0f, map[voxel(x, y, z, n)]);
        sx += v * x, sy += v * y, sz += v * z, total += v;
      }
  if (total <= 0) return {n / 2.0, n / 2.0, n / 2.0};
  return {sx / total, sy / total, sz / total};
}

std::vector<float> shift_volume(const std::vector<float>& map, int n, double dx, double dy, double dz) {
  auto spectrum = fft_forward_3d(map, n);
  const int h = n / 2 + 1;
  std::size_t idx = 0;
  for (int z = 0; z < n; ++z) {
    const double kz = wrap_frequency(z, n);
    for (int y = 0; y < n; ++y) {
      const double ky = wrap_frequency(y, n);
      for (int x = 0; x < h; ++x, ++idx) {
        const double phase = -2 * std::numbers::pi * (x * dx + ky * dy + kz * dz) / n;
        spectrum[idx] *= Complex(static_cast<float>(std::cos(phase)), static_cast<float>(std::sin(phase)));
      }
    }
  }
  return fft_inverse_3d(spectrum, n);
}

namespace {

/// The reference's voxels inside a sphere about the box centre, as points with values.
struct Points {
  std::vector<Vec3> position;  // relative to the box centre
  std::vector<double> value;
};

Points sphere_points(const std::vector<float>& map, int n, double radius) {
  Points p;
  const double c = n / 2;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const Vec3 r{x - c, y - c, z - c};
        if (r.x * r.x + r.y * r.y + r.z * r.z > radius * radius) continue;
        p.position.push_back(r);
        p.value.push_back(map[voxel(x, y, z, n)]);
      }
  return p;
}

/// Pearson correlation of the reference points with the moving map sampled at R (x - t) + c.
double correlation(const Points& ref, const std::vector<float>& moving, int n, const Mat3& r, const Vec3& t) {
  const double c = n / 2;
  double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
  for (std::size_t i = 0; i < ref.position.size(); ++i) {
    const Vec3 q = r * sub(ref.position[i], t);
    const double b = sample_trilinear(moving, n, q.x + c, q.y + c, q.z + c);
    const double a = ref.value[i];
    sa += a, sb += b, saa += a * a, sbb += b * b, sab += a * b;
  }
  const double m = static_cast<double>(ref.position.size());
  const double cov = sab - sa * sb / m, va = saa - sa * sa / m, vb = sbb - sb * sb / m;
  return va > 0 && vb > 0 ? cov / std::sqrt(va * vb) : 0;
}

/// Rotations about `step` degrees apart over SO(3): Fibonacci-sphere directions times in-plane angles.
std::vector<Mat3> rotation_grid(double step) {
  const double rad = step * std::numbers::pi / 180;
  const int directions = std::max(8, static_cast<int>(std::ceil(4 * std::numbers::pi / (rad * rad))));
  const int in_plane = std::max(4, static_cast<int>(std::ceil(360 / step)));
  std::vector<Mat3> out;
  const double golden = std::numbers::pi * (3 - std::sqrt(5.0));
  for (int d = 0; d < directions; ++d) {
    const double z = 1 - (2 * d + 1.0) / directions;
    const double tilt = std::acos(z) * 180 / std::numbers::pi;
    const double rot = std::fmod(d * golden, 2 * std::numbers::pi) * 180 / std::numbers::pi;
    for (int k = 0; k < in_plane; ++k) out.push_back(geometry::euler_to_matrix({rot, tilt, k * 360.0 / in_plane}));
  }
  return out;
}

struct Candidate {
  Mat3 rotation;
  Vec3 shift;  // pixels of the box it was found in
  double score = -2;
};

/// Hill climbing in rotation (left-multiplied rotation vectors) and shift, with halving steps.
Candidate refine_locally(const Points& ref, const std::vector<float>& moving, int n, Candidate c, double angle_step,
                         double shift_step, double min_angle) {
  c.score = correlation(ref, moving, n, c.rotation, c.shift);
  for (; angle_step >= min_angle; angle_step /= 2, shift_step /= 2) {
    for (int round = 0; round < 12; ++round) {
      Candidate best = c;
      std::vector<Candidate> moves;
      const double a = angle_step * std::numbers::pi / 180;
      for (int axis = 0; axis < 3; ++axis)
        for (int sign = -1; sign <= 1; sign += 2) {
          Vec3 v{0, 0, 0}, dt{0, 0, 0};
          (axis == 0 ? v.x : axis == 1 ? v.y : v.z) = sign * a;
          (axis == 0 ? dt.x : axis == 1 ? dt.y : dt.z) = sign * shift_step;
          moves.push_back({geometry::rotation_from_vector(v) * c.rotation, c.shift, -2});
          moves.push_back({c.rotation, add(c.shift, dt), -2});
        }
#pragma omp parallel for schedule(static, 1)
      for (std::size_t m = 0; m < moves.size(); ++m) moves[m].score = correlation(ref, moving, n, moves[m].rotation, moves[m].shift);
      for (const auto& m : moves)
        if (m.score > best.score) best = m;
      if (best.score <= c.score) break;
      c = best;
    }
  }
  return c;
}

/// A low-passed copy of a map in a box of `small` voxels.
std::vector<float> search_copy(const std::vector<float>& map, int n, double pixel, double resolution, int small) {
  return resample_volume(lowpass_volume(map, n, pixel, resolution), n, small);
}

}  // namespace

double sample_trilinear(const std::vector<float>& v, int n, double x, double y, double z) {
  const int x0 = static_cast<int>(std::floor(x)), y0 = static_cast<int>(std::floor(y)), z0 = static_cast<int>(std::floor(z));
  double sum = 0;
  for (int dz = 0; dz < 2; ++dz)
    for (int dy = 0; dy < 2; ++dy)
      for (int dx = 0; dx < 2; ++dx) {
        const int xi = x0 + dx, yi = y0 + dy, zi = z0 + dz;
        if (xi < 0 || yi < 0 || zi < 0 || xi >= n || yi >= n || zi >= n) continue;
        const double w = (dx ? x - x0 : 1 - (x - x0)) * (dy ? y - y0 : 1 - (y - y0)) * (dz ? z - z0 : 1 - (z - z0));
        sum += w * v[voxel(xi, yi, zi, n)];
      }
  return sum;
}

std::vector<float> flip_hand(const std::vector<float>& map, int n) {
  std::vector<float> out(map.size(), 0.0f);
  for (int z = 1; z < n; ++z)  // z -> n - z keeps the centre n/2 in place; plane 0 has no mirror
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) out[voxel(x, y, z, n)] = map[voxel(x, y, n - z, n)];
  return out;
}

MapAlignment align_map(const std::vector<float>& moving, const std::vector<float>& reference, int n, double pixel,
                       double search_resolution) {
  // Global search in a small box (Nyquist at about 80% of the search resolution).
  int small = static_cast<int>(std::lround(n * pixel * 2.5 / search_resolution / 2)) * 2;
  small = std::clamp(small, std::min(n, 16), n);
  const double f = static_cast<double>(small) / n;
  const auto ref_small = search_copy(reference, n, pixel, search_resolution, small);
  const Points ref_points = sphere_points(ref_small, small, small / 2.0 - 1);
  const Vec3 ref_com = sub(centre_of_mass(ref_small, small), Vec3{small / 2.0, small / 2.0, small / 2.0});
  const auto rotations = rotation_grid(10);

  // Fine search in the full box, low-passed a little further.
  const double fine_resolution = std::max(2.5 * pixel, 0.6 * search_resolution);
  const auto ref_fine = lowpass_volume(reference, n, pixel, fine_resolution);
  const Points fine_points = sphere_points(ref_fine, n, n / 2.0 - 1);

  MapAlignment best;
  best.correlation = -2;
  for (bool flipped : {false, true}) {
    const auto mov = flipped ? flip_hand(moving, n) : moving;
    const auto mov_small = search_copy(mov, n, pixel, search_resolution, small);
    const Vec3 mov_com = sub(centre_of_mass(mov_small, small), Vec3{small / 2.0, small / 2.0, small / 2.0});
    std::vector<Candidate> scored(rotations.size());
#pragma omp parallel for schedule(dynamic, 16)
    for (std::size_t i = 0; i < rotations.size(); ++i) {
      // The shift that brings the centres of mass together under this rotation.
      const Vec3 t = sub(ref_com, geometry::transpose(rotations[i]) * mov_com);
      scored[i] = {rotations[i], t, correlation(ref_points, mov_small, small, rotations[i], t)};
    }
    std::partial_sort(scored.begin(), scored.begin() + 4, scored.end(), [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
    const auto mov_fine = lowpass_volume(mov, n, pixel, fine_resolution);
    for (int c = 0; c < 4; ++c) {
      Candidate coarse = refine_locally(ref_points, mov_small, small, scored[static_cast<std::size_t>(c)], 5, 1, 1.2);
      Candidate fine{coarse.rotation, scale(coarse.shift, 1 / f), -2};
      fine = refine_locally(fine_points, mov_fine, n, fine, 1, 0.5, 0.1);
      if (fine.score > best.correlation) best = {fine.rotation, fine.shift, flipped, fine.score};
    }
  }
  return best;
}

std::vector<float> apply_alignment(const std::vector<float>& moving, int n, const MapAlignment& a) {
  const auto fine = resample_volume(a.flipped ? flip_hand(moving, n) : moving, n, 2 * n);
  std::vector<float> out(moving.size());
  const double c = n / 2;
#pragma omp parallel for
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const Vec3 q = add(a.rotation * sub(Vec3{x - c, y - c, z - c}, a.shift), Vec3{c, c, c});
        out[voxel(x, y, z, n)] = static_cast<float>(sample_trilinear(fine, 2 * n, 2 * q.x, 2 * q.y, 2 * q.z));
      }
  return out;
}

}  // namespace emcryo::image
