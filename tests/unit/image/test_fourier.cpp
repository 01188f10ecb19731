// Half-grid operations: shifts as phase ramps, Fourier cropping/padding, FSC and resolution,
// masks, low-pass filters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "emcryo/image/fft.hpp"
#include "emcryo/image/fourier.hpp"
#include "support/test_support.hpp"

namespace {

using emcryo::test::max_abs_diff;
using emcryo::test::random_values;

namespace img = emcryo::image;
using img::Complex;
constexpr double kPi = std::numbers::pi;


// A band-limited image: a few plane waves with integer frequencies (cycles per box) about the
// centre pixel, so it can be sampled exactly on any grid finer than twice its highest frequency.
struct Wave {
  int kx, ky, kz;
  double amplitude, phase;
};
const std::vector<Wave> kWaves = {{0, 0, 0, 0.7, 0.0},  {1, 0, 2, 1.0, 0.3},   {2, -3, 1, 0.5, 1.1},
                                  {-4, 5, -3, 0.8, -0.4}, {6, 1, 0, 0.3, 2.0},  {3, 6, -6, 0.4, 0.9}};

std::vector<float> waves_2d(int n) {
  std::vector<float> out(static_cast<std::size_t>(n) * n);
  const double c = n / 2;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      double v = 0;
      for (const auto& w : kWaves) v += w.amplitude * std::cos(2 * kPi * (w.kx * (x - c) + w.ky * (y - c)) / n + w.phase);
      out[static_cast<std::size_t>(y) * n + x] = static_cast<float>(v);
    }
  return out;
}

std::vector<float> waves_3d(int n) {
  std::vector<float> out(static_cast<std::size_t>(n) * n * n);
  const double c = n / 2;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double v = 0;
        for (const auto& w : kWaves)
          v += w.amplitude * std::cos(2 * kPi * (w.kx * (x - c) + w.ky * (y - c) + w.kz * (z - c)) / n + w.phase);
        out[(static_cast<std::size_t>(z) * n + y) * n + x] = static_cast<float>(v);
      }
  return out;
}


// ---- shifts ----

TEST(FourierShift, PhaseRampEqualsIntegerShift) {
  const int n = 32;
  const auto image = random_values(static_cast<std::size_t>(n) * n, 1);
  for (const auto& d : {std::pair{3, -5}, std::pair{-1, 0}, std::pair{0, 7}, std::pair{-11, 13}}) {
    auto spectrum = img::fft_forward_2d(image, n);
    img::shift_half_grid_2d(spectrum.data(), n, d.first, d.second);
    const auto shifted = img::fft_inverse_2d(spectrum, n);
    // out(x, y) = in(x - dx, y - dy), periodically.
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const int sx = ((x - d.first) % n + n) % n, sy = ((y - d.second) % n + n) % n;
        ASSERT_NEAR(shifted[static_cast<std::size_t>(y) * n + x], image[static_cast<std::size_t>(sy) * n + sx], 1e-4)
            << "shift " << d.first << "," << d.second << " at " << x << "," << y;
      }
  }
}

TEST(FourierShift, AddShiftedIsAWeightedShiftWithinTheRadius) {
  // The same values as shift_half_grid_2d times the weight, added where |k| <= radius; the rest
  // of the sum untouched.
  const int n = 32, h = n / 2 + 1;
  const double radius = 9.5;
  const auto spectrum = img::fft_forward_2d(random_values(static_cast<std::size_t>(n * n), 5), n);
  auto shifted = spectrum;
  img::shift_half_grid_2d(shifted.data(), n, 1.3, -0.7);
  std::vector<img::Complex> sum(spectrum.size(), img::Complex(1, -1));
  img::add_shifted_half_grid_2d(spectrum.data(), n, 1.3, -0.7, 0.25f, radius, sum.data());
  int inside = 0;
  for (int j = 0; j < n; ++j)
    for (int kx = 0; kx < h; ++kx) {
      const int ky = img::wrap_frequency(j, n);
      const std::size_t k = static_cast<std::size_t>(j) * h + kx;
      const bool in = kx * kx + ky * ky <= radius * radius;
      inside += in;
      const img::Complex expected = img::Complex(1, -1) + (in ? shifted[k] * 0.25f : img::Complex(0, 0));
      ASSERT_NEAR(std::abs(sum[k] - expected), 0.0, 1e-4 * (1 + std::abs(expected))) << kx << "," << ky;
    }
  EXPECT_GT(inside, 100);
  EXPECT_LT(inside, h * n);
}

TEST(FourierShift, SubPixelShiftOfBandLimitedImage) {
  // A shift by (dx, dy) of a band-limited image is the image evaluated at (x - dx, y - dy); and
  // shifting back restores it.
  const int n = 32;
  const double dx = 1.3, dy = -2.6;
  const auto image = waves_2d(n);
  auto spectrum = img::fft_forward_2d(image, n);
  img::shift_half_grid_2d(spectrum.data(), n, dx, dy);
  const auto shifted = img::fft_inverse_2d(spectrum, n);
  const double c = n / 2;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      double v = 0;
      for (const auto& w : kWaves)
        v += w.amplitude * std::cos(2 * kPi * (w.kx * (x - dx - c) + w.ky * (y - dy - c)) / n + w.phase);
      ASSERT_NEAR(shifted[static_cast<std::size_t>(y) * n + x], v, 1e-4) << x << "," << y;
    }
  img::shift_half_grid_2d(spectrum.data(), n, -dx, -dy);
  EXPECT_LT(max_abs_diff(img::fft_inverse_2d(spectrum, n), image), 1e-4);
}

// ---- resize / crop ----

TEST(FourierResize, CropAndPadOfBandLimitedImage) {
  // Cropping 64 -> 32 (pixel size doubles) and padding 32 -> 48 keep a band-limited image:
  // the result is the same waves sampled on the new grid.
  const auto fine = waves_2d(64);
  const auto coarse = img::resample_image(fine, 64, 32);
  EXPECT_LT(max_abs_diff(coarse, waves_2d(32)), 1e-4);
  const auto padded = img::resample_image(coarse, 32, 48);
  EXPECT_LT(max_abs_diff(padded, waves_2d(48)), 1e-4);
  EXPECT_EQ(img::resample_image(fine, 64, 64), fine);
}

TEST(FourierResize, CropAndPadOfBandLimitedVolume) {
  const auto fine = waves_3d(32);
  EXPECT_LT(max_abs_diff(img::resample_volume(fine, 32, 16), waves_3d(16)), 1e-4);
  EXPECT_LT(max_abs_diff(img::resample_volume(fine, 32, 40), waves_3d(40)), 1e-4);
}

TEST(FourierResize, HalfGridCopiesLowFrequencies) {
  // Cropping keeps |kx|, |ky| < n_out/2 and leaves the new grid's Nyquist row/column empty.
  const int n_in = 32, n_out = 20, kmax = n_out / 2;
  const auto spectrum = img::fft_forward_2d(random_values(static_cast<std::size_t>(n_in) * n_in, 3), n_in);
  std::vector<Complex> cropped(img::half_size(n_out, n_out));
  img::resize_half_grid_2d(spectrum.data(), n_in, cropped.data(), n_out);
  const int h_in = n_in / 2 + 1, h_out = n_out / 2 + 1;
  for (int j = 0; j < n_out; ++j) {
    const int ky = img::wrap_frequency(j, n_out);
    for (int kx = 0; kx < h_out; ++kx) {
      const Complex got = cropped[static_cast<std::size_t>(j) * h_out + kx];
      if (kx < kmax && ky > -kmax && ky < kmax) {
        ASSERT_EQ(got, spectrum[static_cast<std::size_t>(img::storage_index(ky, n_in)) * h_in + kx]) << kx << "," << ky;
      } else {
        ASSERT_EQ(got, Complex{}) << kx << "," << ky;
      }
    }
  }
  // Padding back: the cropped frequencies again, zeros beyond.
  std::vector<Complex> padded(img::half_size(n_in, n_in));
  img::resize_half_grid_2d(cropped.data(), n_out, padded.data(), n_in);
  for (int j = 0; j < n_in; ++j) {
    const int ky = img::wrap_frequency(j, n_in);
    for (int kx = 0; kx < h_in; ++kx) {
      const Complex got = padded[static_cast<std::size_t>(j) * h_in + kx];
      if (kx < kmax && ky > -kmax && ky < kmax) {
        ASSERT_EQ(got, spectrum[static_cast<std::size_t>(j) * h_in + kx]) << kx << "," << ky;
      } else {
        ASSERT_EQ(got, Complex{}) << kx << "," << ky;  // includes the (empty) Nyquist row
      }
    }
  }
}

TEST(FourierResize, HalfGrid3DCropKeepsCentralCube) {
  const int n_in = 16, n_out = 8;
  const auto spectrum = img::fft_forward_3d(random_values(static_cast<std::size_t>(n_in) * n_in * n_in, 4), n_in);
  std::vector<Complex> cropped(img::half_size(n_out, n_out, n_out));
  img::resize_half_grid_3d(spectrum.data(), n_in, cropped.data(), n_out);
  const int h_in = n_in / 2 + 1, h_out = n_out / 2 + 1;
  auto small = [&](int kx, int ky, int kz) {
    return cropped[(static_cast<std::size_t>(img::storage_index(kz, n_out)) * n_out + img::storage_index(ky, n_out)) * h_out + kx];
  };
  for (int kz : {-3, -1, 0, 3})
    for (int ky : {-3, 0, 2, 3})
      for (int kx : {0, 1, 3}) {
        const Complex want = spectrum[(static_cast<std::size_t>(img::storage_index(kz, n_in)) * n_in +
                                       img::storage_index(ky, n_in)) * h_in + kx];
        ASSERT_EQ(small(kx, ky, kz), want) << kx << "," << ky << "," << kz;
      }
  // The Nyquist planes of the small grid stay empty.
  EXPECT_EQ(small(4, 1, 1), Complex{});
  EXPECT_EQ(small(1, 4, 1), Complex{});
  EXPECT_EQ(small(1, 1, 4), Complex{});
}

// ---- FSC and resolution ----

TEST(FourierFsc, MapWithItselfIsOne) {
  const int n = 32;
  const auto map = random_values(static_cast<std::size_t>(n) * n * n, 5);
  const auto fsc = img::fsc_3d(map, map, n);
  ASSERT_EQ(fsc.size(), static_cast<std::size_t>(n / 2 + 1));
  for (double f : fsc) EXPECT_NEAR(f, 1.0, 1e-9);
  // Scale does not matter; a sign flip gives -1 (shell 0 is 1 by definition).
  auto scaled = map;
  for (auto& v : scaled) v *= 3.5f;
  for (double f : img::fsc_3d(map, scaled, n)) EXPECT_NEAR(f, 1.0, 1e-6);
  auto negated = map;
  for (auto& v : negated) v = -v;
  const auto fn = img::fsc_3d(map, negated, n);
  EXPECT_EQ(fn[0], 1.0);
  for (std::size_t s = 1; s < fn.size(); ++s) EXPECT_NEAR(fn[s], -1.0, 1e-6);
}

TEST(FourierFsc, IndependentNoiseIsNearZero) {
  const int n = 32;
  const auto a = random_values(static_cast<std::size_t>(n) * n * n, 6);
  const auto b = random_values(static_cast<std::size_t>(n) * n * n, 7);
  const auto fsc = img::fsc_3d(a, b, n);
  double mean = 0;
  for (std::size_t s = 2; s < fsc.size(); ++s) {
    // Shell s holds ~2 pi s^2 independent values: |FSC| ~ 1/sqrt(that); allow 5 sigma.
    EXPECT_LT(std::abs(fsc[s]), 5.0 / std::sqrt(2 * kPi * static_cast<double>(s * s))) << "shell " << s;
    mean += fsc[s];
  }
  mean /= static_cast<double>(fsc.size() - 2);
  EXPECT_LT(std::abs(mean), 0.05);
}

TEST(FourierFsc, SignalPlusNoiseFollowsItsSnr) {
  // Two copies of one signal with independent noise of equal power: FSC = SNR / (1 + SNR) = 0.5
  // in every shell for white signal and noise.
  const int n = 32;
  const std::size_t count = static_cast<std::size_t>(n) * n * n;
  const auto signal = random_values(count, 8);
  auto a = random_values(count, 9), b = random_values(count, 10);
  for (std::size_t i = 0; i < count; ++i) a[i] += signal[i], b[i] += signal[i];
  const auto fsc = img::fsc_3d(a, b, n);
  for (std::size_t s = 6; s < fsc.size(); ++s) EXPECT_NEAR(fsc[s], 0.5, 0.12) << "shell " << s;
}

TEST(FourierFsc, ResolutionAtInterpolatesBetweenShells) {
  const int n = 20;
  const double pixel = 2.0;  // box 40 Å
  const std::vector<double> fsc = {1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.05, 0.0, 0.0, 0.0, 0.0};
  // 0.143 lies between shell 4 (0.3) and 5 (0.1): shell 4 + 0.157/0.2.
  EXPECT_NEAR(img::resolution_at(fsc, 0.143, n, pixel), 40.0 / (4 + 0.157 / 0.2), 1e-9);
  // Exactly 0.5 at shell 3.
  EXPECT_NEAR(img::resolution_at(fsc, 0.5, n, pixel), 40.0 / 3, 1e-9);
  // 0.8: half-way between shells 1 and 2.
  EXPECT_NEAR(img::resolution_at(fsc, 0.8, n, pixel), 40.0 / 1.5, 1e-9);
  // Never below the threshold: Nyquist (2 pixels).
  const std::vector<double> high(11, 0.99);
  EXPECT_NEAR(img::resolution_at(high, 0.143, n, pixel), 2 * pixel, 1e-9);
  EXPECT_NEAR(img::shell_resolution(5, n, pixel), 8.0, 1e-12);
  // Monotonic: a higher threshold never gives a finer resolution.
  EXPECT_GE(img::resolution_at(fsc, 0.5, n, pixel), img::resolution_at(fsc, 0.143, n, pixel));
}

TEST(FourierFsc, ShellIndexIsRoundedRadius) {
  const int n = 16, h = n / 2 + 1;
  const auto s2 = img::shell_index_2d(n);
  EXPECT_EQ(s2[0], 0);
  EXPECT_EQ(s2[static_cast<std::size_t>(img::storage_index(-3, n)) * h + 4], 5);
  EXPECT_EQ(s2[static_cast<std::size_t>(1) * h + 1], 1);   // sqrt(2) -> 1
  EXPECT_EQ(s2[static_cast<std::size_t>(2) * h + 2], 3);   // sqrt(8) = 2.83 -> 3
  const auto s3 = img::shell_index_3d(n);
  EXPECT_EQ(s3[(static_cast<std::size_t>(img::storage_index(-2, n)) * n + img::storage_index(-2, n)) * h + 1], 3);
}

// ---- masks, filters ----

TEST(FourierMask, SoftRoundMaskValues) {
  const int n = 32;
  const double radius = 8, edge = 4;
  for (int dims : {2, 3}) {
    const auto mask = img::soft_round_mask(n, dims, radius, edge);
    ASSERT_EQ(mask.size(), dims == 3 ? static_cast<std::size_t>(n) * n * n : static_cast<std::size_t>(n) * n);
    const std::size_t zc = dims == 3 ? static_cast<std::size_t>(n / 2) : 0;
    auto at = [&](int x, int y) { return mask[(zc * n + static_cast<std::size_t>(y)) * n + static_cast<std::size_t>(x)]; };
    EXPECT_EQ(at(16, 16), 1.0f);
    EXPECT_EQ(at(16 + 8, 16), 1.0f);                       // r = radius
    EXPECT_NEAR(at(16 + 10, 16), 0.5f, 1e-6);              // half way through the edge
    EXPECT_NEAR(at(16, 16 - 9), 0.5 * (1 + std::cos(kPi / 4)), 1e-6);
    EXPECT_EQ(at(16 + 12, 16), 0.0f);                      // r = radius + edge
    EXPECT_EQ(at(0, 0), 0.0f);
    // Values in [0, 1], not increasing with the radius.
    for (float v : mask) ASSERT_TRUE(v >= 0.0f && v <= 1.0f);
    for (int x = 16; x + 1 < n; ++x) EXPECT_GE(at(x, 16), at(x + 1, 16));
  }
  // In 3D the mask is spherical about (N/2, N/2, N/2).
  const auto m3 = img::soft_round_mask(n, 3, radius, edge);
  EXPECT_EQ(m3[(static_cast<std::size_t>(16 + 10) * n + 16) * n + 16], m3[(static_cast<std::size_t>(16) * n + 16) * n + 16 + 10]);
  EXPECT_EQ(m3[(static_cast<std::size_t>(16 - 8) * n + 16) * n + 16], 1.0f);
  // A hard mask when edge = 0.
  const auto hard = img::soft_round_mask(n, 2, radius, 0);
  for (float v : hard) ASSERT_TRUE(v == 0.0f || v == 1.0f);
}

TEST(FourierMask, ApplyMaskFillsBackground) {
  const int n = 16;
  const auto mask = img::soft_round_mask(n, 2, 3, 2);
  std::vector<float> data(static_cast<std::size_t>(n) * n, 5.0f);
  img::apply_mask(data.data(), mask, -1.0f);
  EXPECT_EQ(data[static_cast<std::size_t>(8) * n + 8], 5.0f);
  EXPECT_EQ(data[0], -1.0f);
  EXPECT_NEAR(data[static_cast<std::size_t>(8) * n + 8 + 4], 0.5f * 5 + 0.5f * -1, 1e-6);
}

TEST(FourierFilter, LowpassKeepsLowAndRemovesHigh) {
  const int n = 32;
  auto spectrum = img::fft_forward_3d(random_values(static_cast<std::size_t>(n) * n * n, 11), n);
  const auto original = spectrum;
  img::lowpass_half_grid_3d(spectrum.data(), n, 8, 2);
  const auto shells = img::shell_index_3d(n);
  for (std::size_t i = 0; i < spectrum.size(); ++i) {
    if (shells[i] <= 6) {
      ASSERT_EQ(spectrum[i], original[i]);
    } else if (shells[i] >= 10) {
      ASSERT_EQ(spectrum[i], Complex{});
    }
  }
  // In real space: a volume low-passed to 4 pixels has FSC ~1 with the original at low
  // resolution and none of its power near Nyquist.
  const auto volume = random_values(static_cast<std::size_t>(n) * n * n, 12);
  const auto low = img::lowpass_volume(volume, n, 1.5, 4 * 1.5);
  const auto fsc = img::fsc_3d(volume, low, n);
  for (int s = 1; s <= 6; ++s) EXPECT_GT(fsc[static_cast<std::size_t>(s)], 0.999) << s;
  const auto ls = img::fft_forward_3d(low, n);
  double high_power = 0, total_power = 0;
  for (std::size_t i = 0; i < ls.size(); ++i) {
    total_power += std::norm(ls[i]);
    if (shells[i] >= 10) high_power += std::norm(ls[i]);
  }
  EXPECT_LT(high_power, 1e-9 * total_power);
}

TEST(FourierStats, MeanStddevAndCorrelation) {
  const std::vector<float> a = {1, 2, 3, 4, 5};
  double mean, sd;
  img::mean_stddev(a.data(), a.size(), mean, sd);
  EXPECT_NEAR(mean, 3.0, 1e-12);
  EXPECT_NEAR(sd, std::sqrt(2.0), 1e-12);
  std::vector<float> b = {3, 5, 7, 9, 11};  // 2a + 1
  EXPECT_NEAR(img::correlation(a.data(), b.data(), a.size()), 1.0, 1e-12);
  for (auto& v : b) v = -v;
  EXPECT_NEAR(img::correlation(a.data(), b.data(), a.size()), -1.0, 1e-12);
  const std::vector<float> flat(5, 2.0f);
  EXPECT_EQ(img::correlation(a.data(), flat.data(), a.size()), 0.0);
}

}  // namespace
