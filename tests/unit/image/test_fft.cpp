// Real <-> complex transforms: round trips, the centre convention (origin at pixel N/2), the
// projection-slice theorem that the unnormalized forward transform makes exact, and concurrent
// use from OpenMP threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstddef>
#include <numbers>
#include <random>
#include <vector>

#include "emcryo/core/error.hpp"
#include "emcryo/image/fft.hpp"
#include "support/test_support.hpp"

namespace {

using emcryo::test::max_abs_diff;
using emcryo::test::random_values;

using emcryo::image::Complex;
using emcryo::image::half_size;
namespace img = emcryo::image;



TEST(FftRoundTrip, Square2D) {
  for (int n : {16, 64, 100}) {
    const auto image = random_values(static_cast<std::size_t>(n) * n, 1u + static_cast<unsigned>(n));
    const auto spectrum = img::fft_forward_2d(image, n);
    ASSERT_EQ(spectrum.size(), half_size(n, n));
    const auto back = img::fft_inverse_2d(spectrum, n);
    EXPECT_LT(max_abs_diff(image, back), 1e-5) << "n = " << n;
  }
}

TEST(FftRoundTrip, Rectangular2D) {
  const int nx = 48, ny = 32;
  const auto image = random_values(static_cast<std::size_t>(nx) * ny, 7);
  std::vector<Complex> spectrum(half_size(nx, ny));
  img::fft_forward_2d(image.data(), spectrum.data(), nx, ny);
  const auto spectrum_copy = spectrum;
  std::vector<float> back(image.size());
  img::fft_inverse_2d(spectrum.data(), back.data(), nx, ny);
  EXPECT_LT(max_abs_diff(image, back), 1e-5);
  // The inverse leaves its input alone.
  EXPECT_EQ(spectrum, spectrum_copy);
}

TEST(FftRoundTrip, UnalignedBuffersGiveTheSameResult) {
  // Plans are made once per size and then run on any buffer, aligned or not.
  const int n = 32;
  const auto image = random_values(static_cast<std::size_t>(n) * n, 8);
  const auto aligned = img::fft_forward_2d(image, n);
  std::vector<float> shifted(image.size() + 1);
  std::copy(image.begin(), image.end(), shifted.begin() + 1);
  std::vector<Complex> out(aligned.size() + 1);
  img::fft_forward_2d(shifted.data() + 1, out.data() + 1, n, n);
  for (std::size_t i = 0; i < aligned.size(); ++i) ASSERT_LT(std::abs(out[i + 1] - aligned[i]), 1e-4f);
  std::vector<float> back(image.size() + 1);
  img::fft_inverse_2d(out.data() + 1, back.data() + 1, n, n);
  for (std::size_t i = 0; i < image.size(); ++i) ASSERT_NEAR(back[i + 1], image[i], 1e-5);
}

TEST(FftRoundTrip, Cube3D) {
  const int n = 32;
  const auto volume = random_values(static_cast<std::size_t>(n) * n * n, 11);
  const auto spectrum = img::fft_forward_3d(volume, n);
  ASSERT_EQ(spectrum.size(), half_size(n, n, n));
  const auto back = img::fft_inverse_3d(spectrum, n);
  EXPECT_LT(max_abs_diff(volume, back), 1e-5);
}

TEST(FftRoundTrip, Box3D) {
  const int nx = 16, ny = 24, nz = 20;
  const auto volume = random_values(static_cast<std::size_t>(nx) * ny * nz, 12);
  std::vector<Complex> spectrum(half_size(nx, ny, nz));
  img::fft_forward_3d(volume.data(), spectrum.data(), nx, ny, nz);
  std::vector<float> back(volume.size());
  img::fft_inverse_3d(spectrum.data(), back.data(), nx, ny, nz);
  EXPECT_LT(max_abs_diff(volume, back), 1e-5);
}

TEST(FftRoundTrip, ParsevalAndUnnormalizedForward) {
  // Forward is unnormalized: the DC term is the sum, and sum |F|^2 over the full grid = N sum f^2.
  const int n = 32;
  const auto image = random_values(static_cast<std::size_t>(n) * n, 13);
  const auto spectrum = img::fft_forward_2d(image, n);
  double sum = 0, power = 0;
  for (float v : image) sum += v, power += static_cast<double>(v) * v;
  EXPECT_NEAR(spectrum[0].real(), sum, 1e-3);
  EXPECT_NEAR(spectrum[0].imag(), 0.0, 1e-3);
  const int h = n / 2 + 1;
  double spectral = 0;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < h; ++x) {
      // Columns 1..n/2-1 stand for themselves and their Hermitian mates.
      const double mult = (x == 0 || x == n / 2) ? 1 : 2;
      spectral += mult * std::norm(std::complex<double>(spectrum[static_cast<std::size_t>(y) * h + x]));
    }
  EXPECT_NEAR(spectral / (n * n), power, 1e-4 * power);
}

TEST(FftRoundTrip, OddSizesAreRefused) {
  std::vector<float> image(31 * 31, 0.0f);
  EXPECT_THROW(img::fft_forward_2d(image, 31), emcryo::Error);
  std::vector<float> volume(static_cast<std::size_t>(15) * 16 * 16, 0.0f);
  std::vector<Complex> spectrum(half_size(16, 16, 15));
  EXPECT_THROW(img::fft_forward_3d(volume.data(), spectrum.data(), 16, 16, 15), emcryo::Error);
}

TEST(FftCentre, DeltaAtCentreHasConstantRealTransform2D) {
  for (int n : {8, 32, 50}) {
    std::vector<float> image(static_cast<std::size_t>(n) * n, 0.0f);
    image[static_cast<std::size_t>(n / 2) * n + n / 2] = 1.0f;
    const auto spectrum = img::fft_forward_2d(image, n);
    for (const Complex& c : spectrum) {
      ASSERT_NEAR(c.real(), 1.0f, 1e-6) << "n = " << n;
      ASSERT_NEAR(c.imag(), 0.0f, 1e-6) << "n = " << n;
    }
  }
}

TEST(FftCentre, DeltaAtCentreHasConstantRealTransform3D) {
  const int n = 16;
  std::vector<float> volume(static_cast<std::size_t>(n) * n * n, 0.0f);
  volume[(static_cast<std::size_t>(n / 2) * n + n / 2) * n + n / 2] = 2.5f;
  const auto spectrum = img::fft_forward_3d(volume, n);
  for (const Complex& c : spectrum) {
    ASSERT_NEAR(c.real(), 2.5f, 1e-5);
    ASSERT_NEAR(c.imag(), 0.0f, 1e-5);
  }
}

TEST(FftCentre, OffCentreDeltaIsAPhaseRamp) {
  // A delta at (N/2 + dx, N/2 + dy) transforms to exp(-2 pi i (kx dx + ky dy) / N).
  const int n = 32, dx = 3, dy = -5;
  std::vector<float> image(static_cast<std::size_t>(n) * n, 0.0f);
  image[static_cast<std::size_t>(n / 2 + dy) * n + n / 2 + dx] = 1.0f;
  const auto spectrum = img::fft_forward_2d(image, n);
  const int h = n / 2 + 1;
  for (int j = 0; j < n; ++j) {
    const int ky = img::wrap_frequency(j, n);
    for (int kx = 0; kx < h; ++kx) {
      const double phase = -2 * std::numbers::pi * (kx * dx + ky * dy) / n;
      const Complex c = spectrum[static_cast<std::size_t>(j) * h + kx];
      ASSERT_NEAR(c.real(), std::cos(phase), 1e-5) << kx << "," << ky;
      ASSERT_NEAR(c.imag(), std::sin(phase), 1e-5) << kx << "," << ky;
    }
  }
}

TEST(FftCentre, SymmetricObjectHasRealTransform) {
  // f(c + r) = f(c - r) about the centre pixel => real transform.
  const int n = 32, c = n / 2;
  std::vector<float> image(static_cast<std::size_t>(n) * n, 0.0f);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      const double dx = x - c, dy = y - c;
      image[static_cast<std::size_t>(y) * n + x] =
          static_cast<float>(std::exp(-(dx * dx / 18 + dy * dy / 8)) + 0.3 * std::exp(-(dx * dx + dy * dy) / 50));
    }
  const auto spectrum = img::fft_forward_2d(image, n);
  double max_imag = 0, max_real = 0;
  for (const Complex& v : spectrum) {
    max_imag = std::max(max_imag, static_cast<double>(std::abs(v.imag())));
    max_real = std::max(max_real, static_cast<double>(std::abs(v.real())));
  }
  EXPECT_LT(max_imag, 1e-5 * max_real);
}

TEST(FftIndexing, WrapAndStorageIndexAreInverse) {
  for (int n : {8, 9, 32}) {
    for (int j = 0; j < n; ++j) EXPECT_EQ(img::storage_index(img::wrap_frequency(j, n), n), j);
  }
  EXPECT_EQ(img::wrap_frequency(16, 32), 16);
  EXPECT_EQ(img::wrap_frequency(17, 32), -15);
  EXPECT_EQ(half_size(32, 32), 17u * 32u);
  EXPECT_EQ(half_size(32, 24, 10), 17u * 24u * 10u);
}

TEST(FftProjectionSlice, ZSumTransformIsCentralPlane) {
  const int n = 32;
  const auto volume = random_values(static_cast<std::size_t>(n) * n * n, 21);
  std::vector<float> zsum(static_cast<std::size_t>(n) * n, 0.0f);
  for (int z = 0; z < n; ++z)
    for (std::size_t p = 0; p < zsum.size(); ++p) zsum[p] += volume[static_cast<std::size_t>(z) * n * n + p];
  const auto s2 = img::fft_forward_2d(zsum, n);
  const auto s3 = img::fft_forward_3d(volume, n);
  // kz = 0 is storage plane z = 0: the first n * (n/2 + 1) values.
  double max_err = 0, max_val = 0;
  for (std::size_t i = 0; i < s2.size(); ++i) {
    max_err = std::max(max_err, static_cast<double>(std::abs(s2[i] - s3[i])));
    max_val = std::max(max_val, static_cast<double>(std::abs(s2[i])));
  }
  EXPECT_LT(max_err, 1e-5 * max_val + 1e-3);
}

TEST(FftProjectionSlice, YSumTransformIsKyZeroPlane) {
  // The same theorem along another axis: sum over y gives the ky = 0 plane (x, z image).
  const int n = 16;
  const auto volume = random_values(static_cast<std::size_t>(n) * n * n, 22);
  std::vector<float> ysum(static_cast<std::size_t>(n) * n, 0.0f);  // rows = z, columns = x
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x)
        ysum[static_cast<std::size_t>(z) * n + x] += volume[(static_cast<std::size_t>(z) * n + y) * n + x];
  const auto s2 = img::fft_forward_2d(ysum, n);
  const auto s3 = img::fft_forward_3d(volume, n);
  const int h = n / 2 + 1;
  for (int z = 0; z < n; ++z)
    for (int x = 0; x < h; ++x) {
      const Complex a = s2[static_cast<std::size_t>(z) * h + x];
      const Complex b = s3[static_cast<std::size_t>(z) * n * h + x];  // y storage index 0
      ASSERT_LT(std::abs(a - b), 1e-3f) << "x " << x << " z " << z;
    }
}

TEST(FftThreads, ConcurrentTransformsMatchSerial) {
  // 2D transforms run one per OpenMP thread (3D ones are documented for use outside parallel
  // regions). A size not used elsewhere, so its plan is also made while threads race for it.
  const int n2 = 56, images = 64;
  std::vector<std::vector<float>> inputs;
  for (int i = 0; i < images; ++i) inputs.push_back(random_values(static_cast<std::size_t>(n2) * n2, 100u + static_cast<unsigned>(i)));
  std::vector<std::vector<Complex>> parallel_out(images), serial_out(images);
  std::vector<std::vector<float>> parallel_back(images), serial_back(images);
#pragma omp parallel for num_threads(4) schedule(dynamic, 1)
  for (int i = 0; i < images; ++i) {
    const auto k = static_cast<std::size_t>(i);
    parallel_out[k] = img::fft_forward_2d(inputs[k], n2);
    parallel_back[k] = img::fft_inverse_2d(parallel_out[k], n2);
  }
  for (int i = 0; i < images; ++i) {
    const auto k = static_cast<std::size_t>(i);
    serial_out[k] = img::fft_forward_2d(inputs[k], n2);
    serial_back[k] = img::fft_inverse_2d(serial_out[k], n2);
  }
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    ASSERT_EQ(parallel_out[k], serial_out[k]) << "image " << k;
    ASSERT_EQ(parallel_back[k], serial_back[k]) << "image " << k;
    ASSERT_LT(max_abs_diff(parallel_back[k], inputs[k]), 1e-5);
  }
}

}  // namespace
