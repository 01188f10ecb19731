// Central slices (Projector) and their inverse (BackProjector): projections at known rotations
// against real-space projections, and reconstruction from many noise-free slices.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>
#include <random>
#include <vector>

#include "emcryo/em/projector.hpp"
#include "emcryo/em/projector2d.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fft.hpp"
#include "emcryo/image/fourier.hpp"

namespace {

namespace img = emcryo::image;
using emcryo::em::BackProjector;
using emcryo::em::Projector;
using emcryo::geometry::euler_to_matrix;
using emcryo::geometry::Mat3;
using emcryo::geometry::transpose;
using emcryo::geometry::Vec3;
using img::Complex;

// A particle-like test volume: smooth Gaussian blobs inside a sphere of radius n/4 about the
// centre pixel n/2 (nothing near the box edge, so pixel permutations about the centre stay in
// the box).
std::vector<float> blob_volume(int n, unsigned seed, int blobs = 12) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1, 1), sigma(1.2, 2.5), amp(0.5, 1.5);
  std::vector<float> v(static_cast<std::size_t>(n) * n * n, 0.0f);
  const double c = n / 2, r = n / 4.0;
  for (int b = 0; b < blobs; ++b) {
    double bx, by, bz;
    do {
      bx = u(rng), by = u(rng), bz = u(rng);
    } while (bx * bx + by * by + bz * bz > 1);
    bx = c + r * bx, by = c + r * by, bz = c + r * bz;
    const double s = sigma(rng), a = amp(rng);
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x) {
          const double d2 = (x - bx) * (x - bx) + (y - by) * (y - by) + (z - bz) * (z - bz);
          v[(static_cast<std::size_t>(z) * n + y) * n + x] += static_cast<float>(a * std::exp(-d2 / (2 * s * s)));
        }
  }
  return v;
}

float at(const std::vector<float>& v, int n, int x, int y, int z) {
  return v[(static_cast<std::size_t>(z) * n + y) * n + x];
}

std::vector<float> z_sum(const std::vector<float>& v, int n) {
  std::vector<float> out(static_cast<std::size_t>(n) * n, 0.0f);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) out[static_cast<std::size_t>(y) * n + x] += at(v, n, x, y, z);
  return out;
}

double trilinear(const std::vector<float>& v, int n, double x, double y, double z) {
  const int x0 = static_cast<int>(std::floor(x)), y0 = static_cast<int>(std::floor(y)), z0 = static_cast<int>(std::floor(z));
  double sum = 0;
  for (int dz = 0; dz < 2; ++dz)
    for (int dy = 0; dy < 2; ++dy)
      for (int dx = 0; dx < 2; ++dx) {
        const int xi = x0 + dx, yi = y0 + dy, zi = z0 + dz;
        if (xi < 0 || yi < 0 || zi < 0 || xi >= n || yi >= n || zi >= n) continue;
        sum += (dx ? x - x0 : 1 - (x - x0)) * (dy ? y - y0 : 1 - (y - y0)) * (dz ? z - z0 : 1 - (z - z0)) * at(v, n, xi, yi, zi);
      }
  return sum;
}

// The real-space meaning of a projection at A: image(x, y) = sum_z v(A^T (x, y, z)) about the
// centre (fine sampling along z to keep the line integral accurate).
std::vector<float> real_space_projection(const std::vector<float>& v, int n, const Mat3& a) {
  const Mat3 at_ = transpose(a);
  const double c = n / 2;
  std::vector<float> out(static_cast<std::size_t>(n) * n, 0.0f);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      double sum = 0;
      for (int k = 0; k < 2 * n; ++k) {
        const double z = (k - n) / 2.0;
        const Vec3 p = at_ * Vec3{x - c, y - c, z};
        sum += trilinear(v, n, p.x + c, p.y + c, p.z + c);
      }
      out[static_cast<std::size_t>(y) * n + x] = static_cast<float>(sum / 2);
    }
  return out;
}

// Normalized complex correlation of two half grids over |k| <= radius (the kx = 0 column counts
// once per coefficient; its mates are in it).
double spectral_correlation(const std::vector<Complex>& a, const std::vector<Complex>& b, int n, double radius) {
  const int h = n / 2 + 1;
  double cross = 0, pa = 0, pb = 0;
  for (int j = 0; j < n; ++j) {
    const int ky = img::wrap_frequency(j, n);
    for (int kx = 0; kx < h; ++kx) {
      if (kx * kx + ky * ky > radius * radius) continue;
      const std::complex<double> x = a[static_cast<std::size_t>(j) * h + kx], y = b[static_cast<std::size_t>(j) * h + kx];
      cross += (x * std::conj(y)).real();
      pa += std::norm(x);
      pb += std::norm(y);
    }
  }
  return cross / std::sqrt(pa * pb);
}

double max_relative_difference(const std::vector<Complex>& a, const std::vector<Complex>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  }
  return diff / scale;
}

Mat3 random_rotation(std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  const double rot = 360 * u(rng) - 180, tilt = std::acos(2 * u(rng) - 1) * 180 / std::numbers::pi,
               psi = 360 * u(rng) - 180;
  return euler_to_matrix({rot, tilt, psi});
}

std::vector<Complex> project(const Projector& p, const Mat3& a, int n) {
  std::vector<Complex> out(img::half_size(n, n));
  p.project(a, out.data(), n, n / 2.0 - 1);
  return out;
}

TEST(Projector, IdentityEqualsTransformOfZSum) {
  const int n = 32;
  const auto volume = blob_volume(n, 1);
  const Projector projector(volume, n);
  EXPECT_EQ(projector.box(), n);
  const auto slice = project(projector, Mat3::identity(), n);
  const auto expected = img::fft_forward_2d(z_sum(volume, n), n);
  EXPECT_GT(spectral_correlation(slice, expected, n, n / 2.0 - 2), 0.999);
  // The scale is that of the unnormalized 2D transform: the DC terms agree within the
  // gridding pre-correction's few percent.
  EXPECT_NEAR(slice[0].real() / expected[0].real(), 1.0, 0.1);
  // And zero beyond the requested radius.
  std::vector<Complex> limited(img::half_size(n, n));
  projector.project(Mat3::identity(), limited.data(), n, 5);
  const int h = n / 2 + 1;
  for (int j = 0; j < n; ++j) {
    const int ky = img::wrap_frequency(j, n);
    for (int kx = 0; kx < h; ++kx) {
      const Complex v = limited[static_cast<std::size_t>(j) * h + kx];
      if (kx * kx + ky * ky > 25) {
        ASSERT_EQ(v, Complex{}) << kx << "," << ky;
      } else {
        ASSERT_EQ(v, slice[static_cast<std::size_t>(j) * h + kx]) << kx << "," << ky;
      }
    }
  }
}

TEST(Projector, RotNinetyEqualsVolumeRotatedInPlane) {
  // rot = 90: A = Rz(90), A^T (x, y, z) = (-y, x, z): the image is the z-sum of the volume
  // w(x, y, z) = v(-y, x, z) (about the centre), an exact pixel permutation.
  const int n = 32, c = n / 2;
  const auto volume = blob_volume(n, 2);
  std::vector<float> rotated(volume.size(), 0.0f);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const int sx = c - (y - c), sy = x;
        if (sx < 0 || sx >= n) continue;
        rotated[(static_cast<std::size_t>(z) * n + y) * n + x] = at(volume, n, sx, sy, z);
      }
  const auto a = euler_to_matrix({90, 0, 0});
  const auto slice = project(Projector(volume, n), a, n);
  const auto expected = project(Projector(rotated, n), Mat3::identity(), n);
  EXPECT_LT(max_relative_difference(slice, expected), 1e-4);
  // psi = 90 is the same in-plane rotation.
  EXPECT_LT(max_relative_difference(project(Projector(volume, n), euler_to_matrix({0, 0, 90}), n), expected), 1e-4);
  // And the real-space image is the z-sum of the rotated volume.
  const auto image = img::fft_inverse_2d(slice, n);
  const auto zs = z_sum(rotated, n);
  EXPECT_GT(img::correlation(image.data(), zs.data(), image.size()), 0.99);
}

TEST(Projector, TiltNinetyProjectsAlongX) {
  // tilt = 90: A^T (x, y, z) = (z, y, -x): image(x, y) = sum_t v(t, y, -x), i.e. a sum along x
  // with the image's x running down the volume's z.
  const int n = 32, c = n / 2;
  const auto volume = blob_volume(n, 3);
  std::vector<float> expected_image(static_cast<std::size_t>(n) * n, 0.0f);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      const int z = c - (x - c);
      if (z < 0 || z >= n) continue;
      float s = 0;
      for (int t = 0; t < n; ++t) s += at(volume, n, t, y, z);
      expected_image[static_cast<std::size_t>(y) * n + x] = s;
    }
  const auto slice = project(Projector(volume, n), euler_to_matrix({0, 90, 0}), n);
  const auto expected = img::fft_forward_2d(expected_image, n);
  EXPECT_GT(spectral_correlation(slice, expected, n, n / 2.0 - 2), 0.999);
  // The projection direction is the third row of A: here +x.
  const Mat3 a = euler_to_matrix({0, 90, 0});
  EXPECT_NEAR(a(2, 0), 1.0, 1e-12);
}

TEST(Projector, GeneralRotationMatchesRealSpaceProjection) {
  const int n = 32;
  const auto volume = blob_volume(n, 4);
  const Projector projector(volume, n);
  std::mt19937 rng(5);
  for (int trial = 0; trial < 3; ++trial) {
    const Mat3 a = random_rotation(rng);
    const auto slice = project(projector, a, n);
    const auto expected = img::fft_forward_2d(real_space_projection(volume, n, a), n);
    EXPECT_GT(spectral_correlation(slice, expected, n, n / 2.0 - 2), 0.998) << "trial " << trial;
  }
}

TEST(Projector, CroppedOutputHoldsTheLowFrequencies) {
  // out_n < n: index k still means frequency k / (n pixel); the values are those of the full slice.
  const int n = 32, small = 16;
  const auto volume = blob_volume(n, 6);
  const Projector projector(volume, n);
  const Mat3 a = euler_to_matrix({30, 60, -45});
  const auto full = project(projector, a, n);
  std::vector<Complex> cropped(img::half_size(small, small));
  projector.project(a, cropped.data(), small, small / 2.0 - 1);
  std::vector<Complex> expected(img::half_size(small, small));
  img::resize_half_grid_2d(full.data(), n, expected.data(), small);
  const int h = small / 2 + 1;
  for (int j = 0; j < small; ++j) {
    const int ky = img::wrap_frequency(j, small);
    for (int kx = 0; kx < h; ++kx) {
      if (kx * kx + ky * ky > (small / 2.0 - 1) * (small / 2.0 - 1)) continue;
      const std::size_t i = static_cast<std::size_t>(j) * h + kx;
      ASSERT_LT(std::abs(cropped[i] - expected[i]), 1e-4f * (1 + std::abs(expected[i]))) << kx << "," << ky;
    }
  }
}

TEST(Projector, SampleAtListedFrequenciesEqualsProject) {
  const int n = 32;
  const auto volume = blob_volume(n, 13);
  const Projector projector(volume, n);
  const auto list = emcryo::em::make_frequency_list(n, n / 2.0 - 1);
  ASSERT_GT(list.size(), 0u);
  std::mt19937 rng(14);
  std::vector<Complex> sampled(list.size());
  for (int trial = 0; trial < 4; ++trial) {
    const Mat3 a = trial == 0 ? Mat3::identity() : random_rotation(rng);
    const auto full = project(projector, a, n);
    projector.sample(a, list, sampled.data());
    for (std::size_t f = 0; f < list.size(); ++f) {
      const Complex want = full[static_cast<std::size_t>(list.index[f])];
      ASSERT_LT(std::abs(sampled[f] - want), 1e-4f * (1 + std::abs(want)))
          << "trial " << trial << " at (" << list.kx[f] << ", " << list.ky[f] << ")";
    }
  }
}

// Reconstruction from noise-free slices. Without CTF: data = X, weight = 1. With CTF: the image
// is X = CTF P (P the projection), data = CTF X and weight = CTF^2 (BackProjector::insert's
// contract), so the map is P again wherever some CTF is non-zero.
std::vector<float> reconstruct_from_slices(const std::vector<float>& volume, int n, int count, bool with_ctf,
                                           bool two_parts) {
  const Projector projector(volume, n);
  BackProjector bp(n), second(n);
  std::mt19937 rng(8);
  std::uniform_real_distribution<double> defocus(8000, 25000);
  std::vector<Complex> slice(img::half_size(n, n));
  std::vector<float> weight(img::half_size(n, n), 1.0f);
  for (int i = 0; i < count; ++i) {
    const Mat3 a = random_rotation(rng);
    projector.project(a, slice.data(), n, n / 2.0 - 1);
    if (with_ctf) {
      img::CtfParams p;
      p.defocus_u = defocus(rng);
      p.defocus_v = p.defocus_u - 200;
      p.defocus_angle = 30;
      img::ctf_half_grid(p, n, 2.0, weight.data());
      for (std::size_t j = 0; j < slice.size(); ++j) {
        slice[j] *= weight[j] * weight[j];  // CTF (image formation) times CTF (correction)
        weight[j] *= weight[j];
      }
    }
    (two_parts && i % 2 ? second : bp).insert(a, slice.data(), weight.data(), n, n / 2.0 - 1);
  }
  if (two_parts) bp.add(second);
  return bp.reconstruct();
}

// Random noise inside a soft sphere: a flat spectrum, so the FSC tests every shell.
std::vector<float> noise_volume(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const auto mask = img::soft_round_mask(n, 3, n / 2.0 - 6, 3);
  std::vector<float> v(mask.size());
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = g(rng) * mask[i];
  return v;
}

double stddev_ratio(const std::vector<float>& a, const std::vector<float>& b) {
  double ma, sa, mb, sb;
  img::mean_stddev(a.data(), a.size(), ma, sa);
  img::mean_stddev(b.data(), b.size(), mb, sb);
  return sa / sb;
}

TEST(Projector, BackProjectionReconstructsTheVolume) {
  const int n = 32;
  const auto original = blob_volume(n, 7);
  const auto map = reconstruct_from_slices(original, n, 1500, false, false);
  ASSERT_EQ(map.size(), original.size());
  EXPECT_GT(img::correlation(map.data(), original.data(), map.size()), 0.995);
  // The scale is kept: the reconstruction is the volume, not a multiple of it.
  EXPECT_NEAR(stddev_ratio(map, original), 1.0, 0.03);
  // Shell by shell (flat spectrum), up to the reconstruction radius n/2 - 1.
  const auto noise = noise_volume(n, 9);
  const auto fsc = img::fsc_3d(reconstruct_from_slices(noise, n, 1500, false, false), noise, n);
  for (int s = 1; s <= n / 2 - 2; ++s) EXPECT_GT(fsc[static_cast<std::size_t>(s)], 0.99) << "shell " << s;
}

TEST(Projector, BackProjectionWithCtfWeightsReconstructsTheVolume) {
  // Also split over two accumulators joined with add().
  const int n = 32;
  const auto original = blob_volume(n, 7);
  const auto map = reconstruct_from_slices(original, n, 1500, true, true);
  EXPECT_GT(img::correlation(map.data(), original.data(), map.size()), 0.995);
  EXPECT_NEAR(stddev_ratio(map, original), 1.0, 0.03);
  const auto noise = noise_volume(n, 10);
  const auto fsc = img::fsc_3d(reconstruct_from_slices(noise, n, 1500, true, true), noise, n);
  for (int s = 1; s <= n / 2 - 2; ++s) EXPECT_GT(fsc[static_cast<std::size_t>(s)], 0.99) << "shell " << s;
}

TEST(Projector, CroppedSlicesReconstructTheLowResolutionVolume) {
  // Slices on a Fourier-cropped grid (in_n = n/2, same frequency units) fill the inner half of
  // the volume's spectrum: the map is the volume low-passed to shell n/4 - 1.
  const int n = 32, small = 16;
  const auto original = noise_volume(n, 11);
  const Projector projector(original, n);
  BackProjector bp(n);
  std::mt19937 rng(12);
  std::vector<Complex> slice(img::half_size(small, small));
  const std::vector<float> weight(slice.size(), 1.0f);
  for (int i = 0; i < 800; ++i) {
    const Mat3 a = random_rotation(rng);
    projector.project(a, slice.data(), small, small / 2.0 - 1);
    bp.insert(a, slice.data(), weight.data(), small, small / 2.0 - 1);
  }
  const auto map = bp.reconstruct();
  const auto fsc = img::fsc_3d(map, original, n);
  for (int s = 1; s <= small / 2 - 2; ++s) EXPECT_GT(fsc[static_cast<std::size_t>(s)], 0.99) << "shell " << s;
  // Nothing beyond the inserted radius.
  const auto spectrum = img::fft_forward_3d(map, n);
  const auto shells = img::shell_index_3d(n);
  double outside = 0, total = 0;
  for (std::size_t i = 0; i < spectrum.size(); ++i) {
    total += std::norm(spectrum[i]);
    if (shells[i] >= small / 2 + 2) outside += std::norm(spectrum[i]);
  }
  EXPECT_LT(outside, 0.01 * total);
}

TEST(Projector, BackProjectionOfOneSliceLiesOnThePlane) {
  // One slice at identity fills only the kz = 0 plane (and its trilinear neighbours in the
  // padded grid): the map is constant along z inside the box up to the gridding correction.
  const int n = 16;
  const auto volume = blob_volume(n, 9, 4);
  const Projector projector(volume, n);
  BackProjector bp(n);
  const auto slice = project(projector, Mat3::identity(), n);
  std::vector<float> weight(slice.size(), 1.0f);
  bp.insert(Mat3::identity(), slice.data(), weight.data(), n, n / 2.0 - 1);
  const auto map = bp.reconstruct();
  // The z-sum of the result is (a low-passed) z-sum of the original.
  const auto zs_map = z_sum(map, n), zs_vol = z_sum(volume, n);
  EXPECT_GT(img::correlation(zs_map.data(), zs_vol.data(), zs_map.size()), 0.95);
  // Weight only near kz = 0: the mean weight per shell is positive for shells inside the radius.
  const auto mw = bp.mean_weight_per_shell();
  ASSERT_EQ(mw.size(), static_cast<std::size_t>(n / 2 + 1));
  for (int s = 0; s < n / 2 - 1; ++s) EXPECT_GT(mw[static_cast<std::size_t>(s)], 0.0) << s;
}

TEST(Projector, ClearEmptiesTheAccumulator) {
  const int n = 16;
  BackProjector bp(n);
  std::vector<Complex> slice(img::half_size(n, n), Complex(1.0f, 0.0f));
  std::vector<float> weight(slice.size(), 1.0f);
  bp.insert(Mat3::identity(), slice.data(), weight.data(), n, n / 2.0 - 1);
  bp.clear();
  for (double w : bp.mean_weight_per_shell()) EXPECT_EQ(w, 0.0);
  for (float v : bp.reconstruct()) ASSERT_EQ(v, 0.0f);
}

TEST(Projector, SplitGridsHoldWhatWasInserted) {
  // Each voxel's data and weight are kept side by side; split_grids gives them apart. Trilinear
  // weights of a point sum to 1, so the grids hold the slice's totals (weights scaled by 0.5),
  // and the reconstruction from them is the reconstruction.
  const int n = 16;
  BackProjector bp(n);
  std::vector<Complex> slice(img::half_size(n, n));
  std::vector<float> weight(slice.size());
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (std::size_t i = 0; i < slice.size(); ++i) slice[i] = Complex(u(rng), u(rng)), weight[i] = u(rng);
  const double radius = n / 2.0 - 1;
  bp.insert(emcryo::geometry::euler_to_matrix({20, 50, 70}), slice.data(), weight.data(), n, radius, 0.5f);
  double inserted_weight = 0, inserted_re = 0;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n / 2 + 1; ++x) {
      const int ky = y < n / 2 ? y : y - n;
      if (x * x + ky * ky > radius * radius || (x == 0 && ky < 0)) continue;  // insert takes ky >= 0 on kx = 0
      const std::size_t i = static_cast<std::size_t>(y) * (n / 2 + 1) + static_cast<std::size_t>(x);
      inserted_weight += 0.5 * weight[i], inserted_re += slice[i].real();
    }
  std::vector<Complex> data;
  std::vector<float> weights;
  bp.split_grids(data, weights);
  ASSERT_EQ(data.size(), img::half_size(2 * n, 2 * n, 2 * n));
  ASSERT_EQ(weights.size(), data.size());
  double sum_weight = 0, sum_re_abs = 0;
  for (std::size_t i = 0; i < data.size(); ++i) sum_weight += weights[i], sum_re_abs += std::abs(data[i].real());
  EXPECT_NEAR(sum_weight, inserted_weight, 1e-4 * inserted_weight);
  // Mirrored points (kx < 0 after rotation) are conjugated, so the real parts add up whatever the side.
  double sum_re = 0;
  for (const auto& d : data) sum_re += d.real();
  EXPECT_NEAR(sum_re, inserted_re, 1e-4 * sum_re_abs);
}

/// Slices of a blob at a few rotations, inserted up to `radius` (pixels of the n grid).
void insert_slices(BackProjector& bp, const Projector& projector, int n, double radius, int count, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> angle(0, 360);
  for (int i = 0; i < count; ++i) {
    const Mat3 a = emcryo::geometry::euler_to_matrix({angle(rng), angle(rng) / 2, angle(rng)});
    const auto slice = project(projector, a, n);
    std::vector<float> weight(slice.size(), 1.0f);
    bp.insert(a, slice.data(), weight.data(), n, radius);
  }
}

// Sums are cleared, added and sent only within the radius reached so far (a chunk's sums at a low
// limit fill a small corner of the grid): the results must be exactly those of whole-grid sums.
TEST(Projector, SumsWithinTheReachedRadiusAddSendAndClearExactly) {
  const int n = 32;
  const Projector projector(blob_volume(n, 9, 4), n);
  BackProjector low(n), high(n), whole(n);
  insert_slices(low, projector, n, 5, 6, 1);
  insert_slices(high, projector, n, 13, 6, 2);
  insert_slices(whole, projector, n, n / 2.0 - 1, 6, 3);
  // Through a message, as chunks are folded, and by add(): bitwise the same map.
  BackProjector by_add = low;
  by_add.add(high), by_add.add(whole);
  emcryo::mpi::Message message;
  low.put(message), high.put(message), whole.put(message);
  message.rewind();
  BackProjector by_message(n);
  by_message.add_from(message), by_message.add_from(message), by_message.add_from(message);
  const auto expected = by_add.reconstruct();
  EXPECT_EQ(by_message.reconstruct(), expected);
  // take_from replaces: a total sent over a projector holding other sums.
  emcryo::mpi::Message total;
  by_add.put(total);
  total.rewind();
  BackProjector taken = high;
  taken.take_from(total);
  EXPECT_EQ(taken.reconstruct(), expected);
  // Cleared after wide inserts, the projector holds nothing of them: then the same as a fresh one.
  BackProjector reused = whole;
  reused.clear();
  insert_slices(reused, projector, n, 5, 6, 1);
  EXPECT_EQ(reused.reconstruct(), low.reconstruct());
  EXPECT_EQ(reused.mean_weight_per_shell(), low.mean_weight_per_shell());
}

TEST(Projector, SumsThroughAMessageCarryOnlyTheReachedPartAndFoldLikeAdd) {
  // A chunk's sums inserted to a low limit: the message holds the small ball they reach (not the
  // whole padded volume), and folding messages gives bitwise what add() and a copy give.
  const int n = 32;
  const Projector projector(noise_volume(n, 21), n);
  std::mt19937 rng(22);
  const auto sums_of = [&](int slices, double radius) {
    BackProjector bp(n);
    std::vector<Complex> slice(img::half_size(n, n));
    const std::vector<float> weight(slice.size(), 0.5f);
    for (int i = 0; i < slices; ++i) {
      const Mat3 a = random_rotation(rng);
      projector.project(a, slice.data(), n, radius);
      bp.insert(a, slice.data(), weight.data(), n, radius);
    }
    return bp;
  };
  const BackProjector low = sums_of(40, 5.0), wide = sums_of(40, n / 2.0 - 1);
  emcryo::mpi::Message small, full;
  low.put(small), wide.put(full);
  // Reach 2 x 5 + 1 = 11: the voxels of the 64 x 64 x 33 padded half volume within 12 of the
  // origin (every trilinear corner of a point within 11), 12 bytes each (and three counts), fewer
  // than the 23 x 23 x 12 cube; to Nyquist, reach 31: those within 32, fewer than the whole volume.
  const auto within = [](int r) {
    std::size_t count = 0;
    for (int z = -32; z < 32; ++z)
      for (int y = -32; y < 32; ++y)
        for (int x = 0; x <= 32; ++x) count += x * x + y * y + z * z <= r * r;
    return count;
  };
  EXPECT_EQ(small.bytes().size(), within(12) * 12 + 4 + 16);
  EXPECT_EQ(full.bytes().size(), within(32) * 12 + 4 + 16);
  EXPECT_LT(within(12), 23u * 23 * 12);
  EXPECT_LT(within(32), 64u * 64 * 33);

  BackProjector folded(n), added(n), copied(n);
  for (auto* m : {&full, &small}) m->rewind(), folded.add_from(*m);
  added.add(wide), added.add(low);
  small.rewind(), copied.add(wide), copied.take_from(small);  // a copy replaces everything
  const auto a = folded.reconstruct(), b = added.reconstruct(), c = copied.reconstruct(), d = low.reconstruct();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;
  for (std::size_t i = 0; i < c.size(); ++i) ASSERT_EQ(c[i], d[i]) << i;
  // Clearing what was reached empties it; a cleared accumulator sends nothing.
  folded.clear();
  for (double w : folded.mean_weight_per_shell()) EXPECT_EQ(w, 0.0);
  emcryo::mpi::Message empty;
  folded.put(empty);
  EXPECT_LT(empty.bytes().size(), 64u);
}

}  // namespace
