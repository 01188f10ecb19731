// Map post-processing: solvent mask, phase randomisation, B-factor estimate, sharpening.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "emcryo/image/fft.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"

namespace {

namespace img = emcryo::image;

std::size_t voxel(int n, int x, int y, int z) { return (static_cast<std::size_t>(z) * n + static_cast<std::size_t>(y)) * n + static_cast<std::size_t>(x); }

std::vector<float> ball(int n, double radius) {
  std::vector<float> v(static_cast<std::size_t>(n) * n * n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double r = std::hypot(x - n / 2, y - n / 2, z - n / 2);
        v[voxel(n, x, y, z)] = r <= radius ? 1.0f : 0.0f;
      }
  return v;
}

// A map whose shell amplitudes fall as exp(-B s^2 / 4) with random phases.
std::vector<float> decaying_map(int n, double pixel, double bfactor) {
  std::mt19937 rng(4);
  std::normal_distribution<float> g;
  std::vector<float> noise(static_cast<std::size_t>(n) * n * n);
  for (auto& v : noise) v = g(rng);
  auto spectrum = img::fft_forward_3d(noise, n);
  const auto shells = img::shell_index_3d(n);
  std::vector<double> power(static_cast<std::size_t>(n), 0.0), count(power.size(), 0.0);
  for (std::size_t i = 0; i < spectrum.size(); ++i) power[static_cast<std::size_t>(shells[i])] += std::abs(spectrum[i]), count[static_cast<std::size_t>(shells[i])] += 1;
  for (std::size_t i = 0; i < spectrum.size(); ++i) {
    const auto s = static_cast<std::size_t>(shells[i]);
    const double q = static_cast<double>(s) / (n * pixel);
    spectrum[i] *= static_cast<float>(std::exp(-bfactor * q * q / 4) / (power[s] / count[s] + 1e-30));
  }
  return img::fft_inverse_3d(spectrum, n);
}

TEST(MapTools, SolventMaskCoversTheMapWithASoftEdge) {
  const int n = 40;
  const auto map = ball(n, 8);
  const auto mask = img::solvent_mask(map, n, 2.0);
  EXPECT_FLOAT_EQ(mask[voxel(n, n / 2, n / 2, n / 2)], 1.0f);
  EXPECT_FLOAT_EQ(mask[voxel(n, n / 2 + 8, n / 2, n / 2)], 1.0f);  // the ball's rim is inside the dilated core
  EXPECT_FLOAT_EQ(mask[voxel(n, 1, 1, 1)], 0.0f);
  // Along an axis the mask falls monotonically from 1 to 0 through intermediate values.
  int soft = 0;
  for (int x = n / 2; x < n - 1; ++x) {
    const float here = mask[voxel(n, x, n / 2, n / 2)], next = mask[voxel(n, x + 1, n / 2, n / 2)];
    EXPECT_GE(here, next);
    soft += here > 0 && here < 1;
  }
  EXPECT_GE(soft, 3);
  for (float v : mask) ASSERT_TRUE(v >= 0 && v <= 1);
}

// The mask by its definition: the thresholded low-pass dilated 3 voxels, then five dilations of one
// voxel each giving the raised-cosine edge (how solvent_mask was first written; it now computes
// the same from one city-block distance transform).
std::vector<float> solvent_mask_by_dilations(const std::vector<float>& map, int n, double pixel) {
  const auto smooth = img::lowpass_volume(map, n, pixel, std::max(15.0, 3 * pixel));
  const float peak = *std::max_element(smooth.begin(), smooth.end());
  std::vector<float> binary(smooth.size());
  for (std::size_t i = 0; i < smooth.size(); ++i) binary[i] = smooth[i] > 0.15f * peak ? 1.0f : 0.0f;
  const auto core = img::dilate(binary, n, 3);
  std::vector<float> mask = core, layer = core;
  for (int k = 1; k <= 5; ++k) {
    auto grown = img::dilate(layer, n, 1);
    for (std::size_t i = 0; i < mask.size(); ++i)
      if (grown[i] > 0 && layer[i] == 0) mask[i] = static_cast<float>(0.5 * (1 + std::cos(std::numbers::pi * k / 6)));
    layer = std::move(grown);
  }
  return mask;
}

TEST(MapTools, SolventMaskEqualsItsDefinitionByDilations) {
  const int n = 36;
  // Blobs anywhere, some cut by the box's faces, on a noisy background.
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> where(0, n);
  std::normal_distribution<float> noise(0, 0.05f);
  std::vector<float> map(static_cast<std::size_t>(n) * n * n);
  for (auto& v : map) v = noise(rng);
  for (int b = 0; b < 6; ++b) {
    const double cx = where(rng), cy = where(rng), cz = where(rng);
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x)
          if (std::hypot(x - cx, y - cy, z - cz) < 4) map[voxel(n, x, y, z)] += 1.0f;
  }
  const auto expected = solvent_mask_by_dilations(map, n, 2.0);
  const auto got = img::solvent_mask(map, n, 2.0);
  int differing = 0, soft = 0;
  for (std::size_t i = 0; i < got.size(); ++i) differing += std::abs(got[i] - expected[i]) > 1e-6f, soft += got[i] > 0 && got[i] < 1;
  EXPECT_EQ(differing, 0);
  EXPECT_GT(soft, 100);
}

TEST(MapTools, GuinierBfactorRecoversTheDecay) {
  const int n = 48;
  const double pixel = 1.5;
  for (double b : {50.0, 150.0}) {
    const auto map = decaying_map(n, pixel, b);
    EXPECT_NEAR(img::guinier_bfactor(map, n, pixel, 3.5), -b, 0.1 * b) << "B = " << b;
  }
}

TEST(MapTools, PhaseRandomisationKeepsLowShellsAndDecorrelatesHighOnes) {
  const int n = 32;
  const auto map = decaying_map(n, 2.0, 0);
  const auto randomized = img::randomize_phases_beyond(map, n, 6, 11);
  const auto fsc = img::fsc_3d(map, randomized, n);
  for (int s = 1; s <= 6; ++s) EXPECT_GT(fsc[static_cast<std::size_t>(s)], 0.999) << s;
  double high = 0;
  for (int s = 9; s < n / 2; ++s) high += std::abs(fsc[static_cast<std::size_t>(s)]);
  EXPECT_LT(high / (n / 2 - 9), 0.1);
  // Amplitudes are unchanged: the power spectra agree.
  const auto a = img::fft_forward_3d(map, n), r = img::fft_forward_3d(randomized, n);
  for (std::size_t i = 0; i < a.size(); i += 97) EXPECT_NEAR(std::abs(a[i]), std::abs(r[i]), 1e-3 * (std::abs(a[i]) + 1));
}

TEST(MapTools, SharpeningUndoesTheBfactorAndStopsAtTheResolution) {
  const int n = 40;
  const double pixel = 2;
  const auto map = decaying_map(n, pixel, 100);
  const std::vector<double> fsc(static_cast<std::size_t>(n / 2 + 1), 1.0);
  const auto sharp = img::sharpen_map(map, n, pixel, fsc, -100, 8.0);
  const auto spectrum = img::fft_forward_3d(sharp, n);
  const auto shells = img::shell_index_3d(n);
  std::vector<double> amplitude(static_cast<std::size_t>(n), 0.0), count(amplitude.size(), 0.0);
  for (std::size_t i = 0; i < spectrum.size(); ++i) amplitude[static_cast<std::size_t>(shells[i])] += std::abs(spectrum[i]), count[static_cast<std::size_t>(shells[i])] += 1;
  // Flat (within 5%) up to 10 Å (shell 8), nothing beyond 8 Å (shell 10) plus the filter edge.
  const double reference = amplitude[2] / count[2];
  for (int s = 2; s <= 8; ++s) EXPECT_NEAR(amplitude[static_cast<std::size_t>(s)] / count[static_cast<std::size_t>(s)], reference, 0.05 * reference) << s;
  for (int s = 13; s <= n / 2; ++s) EXPECT_LT(amplitude[static_cast<std::size_t>(s)] / count[static_cast<std::size_t>(s)], 1e-3 * reference) << s;
}

}  // namespace
