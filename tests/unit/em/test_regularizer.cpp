// The FSC-based Wiener regulariser of 3D reconstructions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "emcryo/em/regularizer.hpp"
#include "emcryo/image/fourier.hpp"

using namespace emcryo;

TEST(Regularizer, WienerWeightIsMeanWeightOverSsnr) {
  const std::vector<double> weight{10, 10, 10, 10}, fsc{0.999, 0.5, 0.2, -0.3};
  const auto half = em::wiener_from_fsc(weight, fsc, 1), full = em::wiener_from_fsc(weight, fsc, 2);
  EXPECT_NEAR(half[1], 10.0, 1e-12);                  // FSC 0.5: SSNR 1
  EXPECT_NEAR(half[2], 10 * 0.8 / 0.2, 1e-9);         // SSNR 0.25
  EXPECT_NEAR(full[2], half[2] / 2, 1e-9);            // two halves joined: twice the SSNR
  EXPECT_NEAR(half[3], 10 * 0.999 / 1e-3, 1e-6);      // no signal: clamped, heavy regularisation
  EXPECT_LT(half[0], 0.011);                           // all signal: almost none
}

namespace {
// One flat central slice, every coefficient 1 with weight 1, inserted into an n-voxel grid.
em::BackProjector flat_central_slice(int n) {
  em::BackProjector sums(n);
  std::vector<em::Complex> slice(static_cast<std::size_t>(n / 2 + 1) * n, em::Complex(1, 0));
  std::vector<float> weight(slice.size(), 1.0f);
  sums.insert(geometry::Mat3::identity(), slice.data(), weight.data(), n, n / 2.0 - 1);
  return sums;
}
}  // namespace

TEST(Regularizer, GlobalWienerDampsTheShellsWithoutSignal) {
  constexpr int n = 16;
  const em::BackProjector sums = flat_central_slice(n);
  std::vector<double> good(n / 2 + 1, 0.999), bad(n / 2 + 1, 0.001);
  const auto sharp = em::GlobalWiener(good, 1).reconstruct(sums, em::cpu_volume_transforms()),
             damped = em::GlobalWiener(bad, 1).reconstruct(sums, em::cpu_volume_transforms());
  double a = 0, b = 0;
  for (std::size_t i = 0; i < sharp.size(); ++i) a += sharp[i] * sharp[i], b += damped[i] * damped[i];
  EXPECT_LT(b, 0.05 * a);  // measured: 0.013
}

// nu-refine's M-step is the product of refine's global Wiener filter and the local one: it never
// restores what the global filter damps, and its unfiltered halves are the global filter's maps.
TEST(Regularizer, NonUniformHalvesAreNoMorePermissiveThanTheGlobalWiener) {
  constexpr int n = 16;
  const em::BackProjector sums = flat_central_slice(n);
  std::vector<double> good(n / 2 + 1, 0.999), bad(n / 2 + 1, 0.001);
  em::LocalFilterSettings s;
  const auto sharp = em::reconstruct_nonuniform(sums, sums, good, s, em::cpu_volume_transforms()),
             damped = em::reconstruct_nonuniform(sums, sums, bad, s, em::cpu_volume_transforms());
  EXPECT_EQ(sharp.raw1, em::GlobalWiener(good, 1).reconstruct(sums, em::cpu_volume_transforms()));
  EXPECT_EQ(damped.raw2, em::GlobalWiener(bad, 1).reconstruct(sums, em::cpu_volume_transforms()));
  double a = 0, b = 0;
  for (std::size_t i = 0; i < sharp.half1.size(); ++i) a += sharp.half1[i] * sharp.half1[i], b += damped.half1[i] * damped.half1[i];
  std::printf("filtered power: good FSC %.4g, no signal %.4g\n", a, b);
  EXPECT_GT(a, 0);
  EXPECT_LT(b, 0.05 * a);
}

namespace {
// A map of random blobs at two sharpness levels: sharp in the x < n/2 half, blurred (low-passed
// to 4 shells) in the other; two halves with independent noise.
struct TwoRegionHalves {
  int n = 32;
  std::vector<float> truth, half1, half2;
};

TwoRegionHalves make_two_region_halves() {
  TwoRegionHalves d;
  const int n = d.n;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> g(0, 1);
  std::vector<float> random(static_cast<std::size_t>(n) * n * n);
  for (auto& v : random) v = g(rng);
  const auto sharp = image::lowpass_volume(random, n, 1.0, 2.5), blurred = image::lowpass_volume(random, n, 1.0, 8.0);
  d.truth.resize(random.size());
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const std::size_t v = (static_cast<std::size_t>(z) * n + y) * n + x;
        d.truth[v] = x < n / 2 ? sharp[v] : blurred[v];
      }
  d.half1 = d.truth, d.half2 = d.truth;
  double power = 0;
  for (float v : sharp) power += v * v;
  const float sigma = static_cast<float>(0.7 * std::sqrt(power / static_cast<double>(sharp.size())));
  for (auto& v : d.half1) v += sigma * g(rng);
  for (auto& v : d.half2) v += sigma * g(rng);
  return d;
}

double mean_over(const std::vector<float>& map, int n, int x_from, int x_to) {
  double sum = 0, count = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = x_from; x < x_to; ++x) sum += map[(static_cast<std::size_t>(z) * n + y) * n + x], ++count;
  return sum / count;
}
}  // namespace

TEST(Regularizer, LocalFilterKeepsTheSharpRegionSharpAndSmoothsTheBlurredOne) {
  const auto d = make_two_region_halves();
  em::LocalFilterSettings s;
  s.pixel_size = 1;
  const auto r = em::local_cross_validated_filter(d.half1, d.half2, d.n, s);
  // Away from the seams (x = 0 and n/2 wrap around): the sharp side's local resolution is finer.
  const double sharp = mean_over(r.local_resolution, d.n, 4, 12), blurred = mean_over(r.local_resolution, d.n, 20, 28);
  std::printf("local resolution: sharp region %.2f px, blurred region %.2f px\n", sharp, blurred);
  EXPECT_LT(sharp, 0.75 * blurred);  // measured: 2.62 vs 4.25 px
  // And the filtered halves are closer to the truth than the raw ones, in the blurred region most.
  double raw = 0, filtered = 0;
  for (int z = 0; z < d.n; ++z)
    for (int y = 0; y < d.n; ++y)
      for (int x = 20; x < 28; ++x) {
        const std::size_t v = (static_cast<std::size_t>(z) * d.n + y) * d.n + x;
        raw += std::pow(d.half1[v] - d.truth[v], 2), filtered += std::pow(r.half1[v] - d.truth[v], 2);
      }
  std::printf("blurred region squared error: raw %.1f, filtered %.1f\n", raw, filtered);
  EXPECT_LT(filtered, 0.5 * raw);
}
