#include "emcryo/image/map_tools.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>

#include "emcryo/core/random.hpp"
#include "emcryo/image/fft.hpp"
#include "emcryo/image/fourier.hpp"

namespace emcryo::image {

std::vector<float> dilate(const std::vector<float>& binary, int n, int steps) {
  std::vector<float> current = binary;
  const std::size_t nn = static_cast<std::size_t>(n);
  for (int s = 0; s < steps; ++s) {
    std::vector<float> next = current;
    for (int z = 1; z < n - 1; ++z)
      for (int y = 1; y < n - 1; ++y)
        for (int x = 1; x < n - 1; ++x) {
          const std::size_t i = (static_cast<std::size_t>(z) * nn + static_cast<std::size_t>(y)) * nn + static_cast<std::size_t>(x);
          if (current[i] > 0) continue;
          if (current[i - 1] > 0 || current[i + 1] > 0 || current[i - nn] > 0 || current[i + nn] > 0 || current[i - nn * nn] > 0 ||
              current[i + nn * nn] > 0)
            next[i] = 1;
        }
    current = std::move(next);
  }
  return current;
}

namespace {

/// City-block (6-neighbour) distance of every voxel to the nearest set voxel of `binary`, capped at
/// `cap`: what `cap` rounds of dilate() reach, found by a forward and a backward sweep along each
/// axis in turn (the city-block distance is a sum over the axes, so the sweeps are exact). One
/// pass over the volume per sweep instead of one per dilation: at box 256 the mask of a half map
/// took 1.2 s, in refine's every iteration.
std::vector<std::uint8_t> city_block_distance(const std::vector<float>& binary, int n, int cap) {
  const auto far = static_cast<std::uint8_t>(cap + 1);
  std::vector<std::uint8_t> d(binary.size());
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = binary[i] > 0 ? 0 : far;
  const std::size_t nn = static_cast<std::size_t>(n);
  const auto relax = [cap](std::uint8_t& here, std::uint8_t neighbour) {
    here = std::min(here, static_cast<std::uint8_t>(std::min(neighbour + 1, cap + 1)));
  };
  // Along x: each row on its own.
#pragma omp parallel for schedule(static)
  for (std::int64_t row = 0; row < static_cast<std::int64_t>(nn * nn); ++row) {
    std::uint8_t* p = d.data() + static_cast<std::size_t>(row) * nn;
    for (std::size_t k = 1; k < nn; ++k) relax(p[k], p[k - 1]);
    for (std::size_t k = nn - 1; k-- > 0;) relax(p[k], p[k + 1]);
  }
  // Along y and z: whole rows (y) or planes (z) at a time, so the inner loop runs over contiguous
  // voxels; the work is split in runs of 64 voxels of a row or plane.
  for (const std::size_t stride : {nn, nn * nn}) {
    const std::size_t blocks = d.size() / (stride * nn), runs = (stride + 63) / 64;
#pragma omp parallel for schedule(static)
    for (std::int64_t task = 0; task < static_cast<std::int64_t>(blocks * runs); ++task) {
      const std::size_t block = static_cast<std::size_t>(task) / runs, first = static_cast<std::size_t>(task) % runs * 64;
      const std::size_t last = std::min(stride, first + 64);
      std::uint8_t* p = d.data() + block * stride * nn;
      for (std::size_t k = 1; k < nn; ++k)
        for (std::size_t j = first; j < last; ++j) relax(p[k * stride + j], p[(k - 1) * stride + j]);
      for (std::size_t k = nn - 1; k-- > 0;)
        for (std::size_t j = first; j < last; ++j) relax(p[k * stride + j], p[(k + 1) * stride + j]);
    }
  }
  return d;
}

}  // namespace

std::vector<float> solvent_mask(const std::vector<float>& map, int n, double pixel) {
  const auto smooth = lowpass_volume(map, n, pixel, std::max(15.0, 3 * pixel));
  const float peak = *std::max_element(smooth.begin(), smooth.end());
  std::vector<float> binary(smooth.size());
  for (std::size_t i = 0; i < smooth.size(); ++i) binary[i] = smooth[i] > 0.15f * peak ? 1.0f : 0.0f;
  // A core dilated by 3 voxels, then a raised-cosine edge 5 voxels wide: distance 3 + k has value
  // 0.5 (1 + cos(pi k / 6)). dilate() never sets the box's outer layer, nor does this.
  const int core = 3, edge = 5;
  const auto distance = city_block_distance(binary, n, core + edge);
  std::vector<float> value_at(core + edge + 2, 0.0f);  // by distance; beyond the edge 0
  for (int d = 0; d <= core + edge; ++d)
    value_at[static_cast<std::size_t>(d)] = d <= core ? 1.0f : static_cast<float>(0.5 * (1 + std::cos(std::numbers::pi * (d - core) / (edge + 1))));
  std::vector<float> mask(binary.size());
  const std::size_t nn = static_cast<std::size_t>(n);
#pragma omp parallel for schedule(static)
  for (std::int64_t zz = 0; zz < n; ++zz)
    for (std::size_t y = 0; y < nn; ++y)
      for (std::size_t x = 0; x < nn; ++x) {
        const std::size_t z = static_cast<std::size_t>(zz), i = (z * nn + y) * nn + x;
        const bool outer = x == 0 || y == 0 || z == 0 || x == nn - 1 || y == nn - 1 || z == nn - 1;
        mask[i] = outer ? binary[i] : value_at[distance[i]];
      }
  return mask;
}

std::vector<float> masked(std::vector<float> map, const std::vector<float>& mask) {
  for (std::size_t i = 0; i < map.size(); ++i) map[i] *= mask[i];
  return map;
}

std::vector<float> randomize_phases_beyond(const std::vector<float>& map, int n, int shell, std::uint64_t seed) {
  auto spectrum = fft_forward_3d(map, n);
  auto rng = item_rng(seed, 77);
  std::uniform_real_distribution<float> phase(0, 2 * static_cast<float>(std::numbers::pi));
  const auto shells = shell_index_3d(n);
  for (std::size_t i = 0; i < spectrum.size(); ++i)
    if (shells[i] > shell) spectrum[i] *= std::polar(1.0f, phase(rng));
  // The kx = 0 and kx = n/2 planes hold both (ky, kz) and (-ky, -kz): keep them conjugate, or
  // the inverse transform would average the two random phases and lose amplitude there.
  const int h = n / 2 + 1;
  for (int x : {0, n / 2})
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y) {
        const std::size_t i = (static_cast<std::size_t>(z) * n + static_cast<std::size_t>(y)) * h + static_cast<std::size_t>(x);
        const std::size_t m = (static_cast<std::size_t>((n - z) % n) * n + static_cast<std::size_t>((n - y) % n)) * h + static_cast<std::size_t>(x);
        if (m < i && shells[i] > shell) spectrum[i] = std::conj(spectrum[m]);
      }
  return fft_inverse_3d(spectrum, n);
}

double guinier_bfactor(const std::vector<float>& map, int n, double pixel, double resolution) {
  const auto spectrum = fft_forward_3d(map, n);
  const auto shells = shell_index_3d(n);
  std::vector<double> amplitude(static_cast<std::size_t>(n / 2 + 1)), count(amplitude.size());
  for (std::size_t i = 0; i < spectrum.size(); ++i)
    if (shells[i] <= n / 2) amplitude[static_cast<std::size_t>(shells[i])] += std::abs(spectrum[i]), count[static_cast<std::size_t>(shells[i])] += 1;
  double sx = 0, sy = 0, sxx = 0, sxy = 0, m = 0;
  for (std::size_t s = 1; s < amplitude.size(); ++s) {
    const double res = n * pixel / static_cast<double>(s);
    if (res > 10 || res < resolution || count[s] == 0 || amplitude[s] <= 0) continue;
    const double x = 1 / (res * res), y = std::log(amplitude[s] / count[s]);
    sx += x, sy += y, sxx += x * x, sxy += x * y, m += 1;
  }
  if (m < 3) return 0;
  const double slope = (m * sxy - sx * sy) / (m * sxx - sx * sx);
  return 4 * slope;  // amplitude ~ exp(-B s^2 / 4): B = -4 slope, reported with RELION's sign (negative = sharpen)
}

std::vector<float> sharpen_map(const std::vector<float>& map, int n, double pixel, const std::vector<double>& fsc, double bfactor,
                               double resolution) {
  auto spectrum = fft_forward_3d(map, n);
  const auto shells = shell_index_3d(n);
  for (std::size_t v = 0; v < spectrum.size(); ++v) {
    const auto s = static_cast<std::size_t>(shells[v]);
    const double f = s < fsc.size() ? std::max(0.0, fsc[s]) : 0.0;
    const double q = static_cast<double>(s) / (n * pixel);
    spectrum[v] *= static_cast<float>(std::sqrt(2 * f / (1 + f)) * std::exp(-bfactor * q * q / 4));
  }
  lowpass_half_grid_3d(spectrum.data(), n, n * pixel / resolution, 2);
  return fft_inverse_3d(spectrum, n);
}

}  // namespace emcryo::image
