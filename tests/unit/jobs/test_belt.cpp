// The simulator's detergent-belt-like shell: its analytic projection must agree with the
// projector's projection of its 3D density, and the ring must sit around the particle.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "emcryo/em/projector.hpp"
#include "emcryo/image/fft.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/jobs/belt.hpp"
#include "emcryo/core/error.hpp"

using namespace emcryo;
using geometry::Vec3;

namespace {

/// An ellipsoid of revolution about `normal`: radius `r` px across it, half-length `t` along it.
std::vector<float> disc(int n, double r, double t, const Vec3& normal) {
  const double l = std::sqrt(normal.x * normal.x + normal.y * normal.y + normal.z * normal.z);
  const Vec3 w{normal.x / l, normal.y / l, normal.z / l};
  std::vector<float> map(static_cast<std::size_t>(n) * n * n, 0.0f);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double px = x - n / 2, py = y - n / 2, pz = z - n / 2;
        const double h = px * w.x + py * w.y + pz * w.z;
        const double rr = px * px + py * py + pz * pz - h * h;
        if (rr / (r * r) + h * h / (t * t) <= 1) map[(static_cast<std::size_t>(z) * n + y) * n + x] = 1;
      }
  return map;
}

}  // namespace

TEST(Belt, RingWrapsAFlatParticlesRimAndAnElongatedParticlesWaist) {
  const int n = 48;
  const Vec3 normal{1, 1, 0};
  jobs::BeltOptions o;
  o.width = 8, o.height = 8, o.blob_size = 1.5;  // Å at 1 Å/px
  const auto belt = jobs::make_belt(o, disc(n, 10, 4, normal), n, 1.0);
  // The axis (third column of the frame) is the disc's normal.
  const double c = (belt.frame(0, 2) + belt.frame(1, 2)) / std::sqrt(2.0);
  EXPECT_GT(std::abs(c), 0.999);
  // The ring's inner edge sits on the disc's rim (girth ~10 px): radius = girth + half width.
  EXPECT_NEAR(belt.radius, 10 + 4, 1.0);
  // Every blob lies in the tube (no per-particle movement here).
  jobs::BeltState still;
  still.seed = 7;
  const auto blobs = jobs::belt_blobs(belt, still);
  ASSERT_EQ(blobs.size(), static_cast<std::size_t>(o.blobs));
  double mean_r = 0;
  for (const Vec3& p : blobs) {
    const double h = (p.x + p.y) / std::sqrt(2.0), r = std::sqrt(p.x * p.x + p.y * p.y + p.z * p.z - h * h);
    EXPECT_LE(std::abs(h), belt.half_height + 1e-9);
    EXPECT_LE(std::abs(r - belt.radius), belt.half_width + 1e-9);
    mean_r += r / static_cast<double>(blobs.size());
  }
  // Uniform in the tube's volume: slightly more blobs outside the middle radius than inside.
  EXPECT_GT(mean_r, belt.radius);
  EXPECT_LT(mean_r, belt.radius + 0.25 * belt.half_width);
  // An elongated particle (a cigar along (1, 0, 1)): the ring's axis is its long axis.
  const auto waist = jobs::make_belt(o, disc(n, 4, 12, {1, 0, 1}), n, 1.0);
  EXPECT_GT(std::abs(waist.frame(0, 2) + waist.frame(2, 2)) / std::sqrt(2.0), 0.999);
  EXPECT_NEAR(waist.radius, 4 + 4, 1.0);
}

TEST(Belt, AnalyticProjectionMatchesTheProjectorsProjectionOfItsDensity) {
  const int n = 40;
  jobs::BeltOptions o;
  o.axis = {0.2, -0.3, 1};
  o.radius = 12, o.width = 6, o.height = 8, o.blob_size = 1.5, o.blobs = 40;
  o.shift = 0.5, o.squash = 0.05;  // every blob stays well inside the box
  const auto belt = jobs::make_belt(o, disc(n, 6, 3, {0, 0, 1}), n, 1.0);
  std::mt19937_64 rng(3);
  const auto state = jobs::draw_belt_state(belt, rng);
  const auto blobs = jobs::belt_blobs(belt, state);
  std::vector<float> volume(static_cast<std::size_t>(n) * n * n, 0.0f);
  jobs::add_belt_density(belt, blobs, state.density, n, volume);
  const em::Projector projector(volume, n);
  const auto a = geometry::euler_to_matrix({37, 71, -120});
  std::vector<image::Complex> spectrum(image::half_size(n, n));
  projector.project(a, spectrum.data(), n, n / 2.0 - 1);
  std::vector<float> projected(static_cast<std::size_t>(n) * n), analytic(projected.size(), 0.0f);
  image::fft_inverse_2d(spectrum.data(), projected.data(), n, n);
  jobs::add_belt_projection(belt, blobs, state.density, a, n, analytic.data());
  // Same places (the rotation convention); the projector's gridding correction changes the
  // scale of off-centre density by a few percent, so the scale is checked without it below.
  EXPECT_GT(image::correlation(projected.data(), analytic.data(), projected.size()), 0.99);
  // At the identity the projection is the sum along z, voxel for pixel.
  std::vector<float> summed(projected.size(), 0.0f), straight(projected.size(), 0.0f);
  for (std::size_t v = 0; v < volume.size(); ++v) summed[v % summed.size()] += volume[v];
  jobs::add_belt_projection(belt, blobs, state.density, geometry::Mat3::identity(), n, straight.data());
  const double mass = belt.blob_mass * state.density * o.blobs;
  EXPECT_NEAR(std::accumulate(straight.begin(), straight.end(), 0.0), mass, 1e-3 * mass);
  EXPECT_NEAR(std::accumulate(summed.begin(), summed.end(), 0.0), mass, 1e-3 * mass);
  double largest = 0, peak = 0;
  for (std::size_t i = 0; i < summed.size(); ++i) largest = std::max(largest, std::abs(double{summed[i]} - straight[i])), peak = std::max(peak, double{straight[i]});
  EXPECT_LT(largest, 0.01 * peak);
}

TEST(Belt, RefusedWhereTheRingLeavesTheBox) {
  jobs::BeltOptions o;
  o.radius = 20, o.width = 8, o.height = 6, o.blob_size = 1;
  EXPECT_THROW(jobs::make_belt(o, disc(40, 6, 3, {0, 0, 1}), 40, 1.0), Error);
  o.radius = 10;
  EXPECT_NO_THROW(jobs::make_belt(o, disc(40, 6, 3, {0, 0, 1}), 40, 1.0));
}
