#include "emcryo/image/map_tools.hpp"

#include <algorithm>
#include <cmath>
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

std::vector<float> solvent_mask(const std::vector<float>& map, int n, double pixel) {
  const auto smooth = lowpass_volume(map, n, pixel, std::max(15.0, 3 * pixel));
  const float peak = *std::max_element(smooth.begin(), smooth.end());
  std::vector<float> binary(smooth.size());
  for (std::size_t i = 0; i < smooth.size(); ++i) binary[i] = smooth[i] > 0.15f * peak ? 1.0f : 0.0f;
  const auto core = dilate(binary, n, 3);
  std::vector<float> mask = core, layer = core;
  const int edge = 5;
  for (int k = 1; k <= edge; ++k) {
    auto grown = dilate(layer, n, 1);
    const float value = static_cast<float>(0.5 * (1 + std::cos(std::numbers::pi * k / (edge + 1))));
    for (std::size_t i = 0; i < mask.size(); ++i)
      if (grown[i] > 0 && layer[i] == 0) mask[i] = value;
    layer = std::move(grown);
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
