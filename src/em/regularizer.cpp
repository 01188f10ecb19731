#include "emcryo/em/regularizer.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "emcryo/image/fft.hpp"

namespace emcryo::em {

std::vector<double> wiener_from_fsc(const std::vector<double>& mean_weight, const std::vector<double>& fsc, double halves) {
  std::vector<double> reg(mean_weight.size());
  for (std::size_t s = 0; s < reg.size(); ++s) {
    const double f = std::clamp(s < fsc.size() ? fsc[s] : 0.0, 1e-3, 0.999);
    reg[s] = mean_weight[s] * (1 - f) / (halves * f);
  }
  return reg;
}

namespace {

std::size_t sz(int v) { return static_cast<std::size_t>(v); }

/// |k| (pixels of the n grid) of every element of a 3D half grid.
std::vector<float> frequency_radius_3d(int n) {
  const int h = n / 2 + 1;
  std::vector<float> r(image::half_size(n, n, n));
  std::size_t idx = 0;
  for (int k = 0; k < n; ++k) {
    const int kz = image::wrap_frequency(k, n);
    for (int j = 0; j < n; ++j) {
      const int ky = image::wrap_frequency(j, n);
      for (int kx = 0; kx < h; ++kx) r[idx++] = static_cast<float>(std::sqrt(kx * kx + ky * ky + kz * kz));
    }
  }
  return r;
}

/// The transform of a normalised spherical window (sum 1) of `radius` px centred on the origin, so
/// that multiplying a transform by it averages the map over the window (periodic convolution).
std::vector<Complex> window_transform(int n, double radius) {
  std::vector<float> w(sz(n) * sz(n) * sz(n), 0.0f);
  double total = 0;
  const int reach = static_cast<int>(std::ceil(radius + 1));
  for (int z = -reach; z <= reach; ++z)
    for (int y = -reach; y <= reach; ++y)
      for (int x = -reach; x <= reach; ++x) {
        // A one-pixel soft edge: windows of neighbouring sizes differ smoothly.
        const double v = std::clamp(radius + 0.5 - std::sqrt(x * x + y * y + z * z), 0.0, 1.0);
        if (v <= 0) continue;
        w[(sz(image::storage_index(z, n)) * sz(n) + sz(image::storage_index(y, n))) * sz(n) + sz(image::storage_index(x, n))] +=
            static_cast<float>(v);
        total += v;
      }
  for (auto& v : w) v = static_cast<float>(v / total);
  return image::fft_forward_3d(w, n);
}

}  // namespace

namespace {

/// A map averaged over a spherical window (periodic convolution through the FFT).
std::vector<float> window_average(const std::vector<float>& map, int n, double radius) {
  auto spectrum = image::fft_forward_3d(map, n);
  const auto window = window_transform(n, radius);
  for (std::size_t k = 0; k < spectrum.size(); ++k) spectrum[k] *= window[k];
  return image::fft_inverse_3d(spectrum, n);
}

/// Both halves low-passed by the Butterworth filter of `cutoff` px.
void butterworth_pair(const std::vector<Complex>& f1, const std::vector<Complex>& f2, const std::vector<float>& radius, double cutoff, int order,
                      int n, std::vector<float>& a, std::vector<float>& b) {
  std::vector<Complex> g1(f1.size()), g2(f2.size());
#pragma omp parallel for schedule(static)
  for (std::size_t k = 0; k < f1.size(); ++k) {
    const float h = static_cast<float>(1 / std::sqrt(1 + std::pow(radius[k] / cutoff, 2 * order)));
    g1[k] = f1[k] * h, g2[k] = f2[k] * h;
  }
  a = image::fft_inverse_3d(g1, n), b = image::fft_inverse_3d(g2, n);
}

}  // namespace

LocalFilterResult local_cross_validated_filter(const std::vector<float>& half1, const std::vector<float>& half2, int n,
                                               const LocalFilterSettings& settings) {
  const std::size_t voxels = half1.size();
  const auto f1 = image::fft_forward_3d(half1, n), f2 = image::fft_forward_3d(half2, n);
  const auto radius = frequency_radius_3d(n);
  const double nyquist = n / 2.0;
  const int count = std::max(2, settings.cutoffs);
  const double lowest = std::clamp(settings.lowest_shell, 1.0, nyquist);
  // Candidate cut-offs on a geometric ladder: equal steps in log-resolution.
  const auto cutoff_of = [&](double c) { return lowest * std::pow(nyquist / lowest, c / (count - 1)); };
  // Pass 1: each cut-off's cross-validation error map: each filtered half against the other,
  // unfiltered and independent, half. Kept as transforms, for window averages of any size.
  std::vector<std::vector<Complex>> error_spectra;
  std::vector<float> a, b, error(voxels);
  for (int c = 0; c < count; ++c) {
    butterworth_pair(f1, f2, radius, cutoff_of(c), settings.order, n, a, b);
#pragma omp parallel for schedule(static)
    for (std::size_t v = 0; v < voxels; ++v) {
      const float e1 = a[v] - half2[v], e2 = b[v] - half1[v];
      error[v] = e1 * e1 + e2 * e2;
    }
    error_spectra.push_back(image::fft_forward_3d(error, n));
  }
  // Per window size w (sized for cut-off w): the cut-off whose error averaged in that window is
  // lowest. A voxel takes the window that agrees best with the cut-off it chooses (window =
  // window_factor x its resolution). Comparing errors averaged over windows of different sizes
  // instead would let the large windows of low cut-offs reach into the solvent, whose small
  // errors make low cut-offs win in the ordered core (measured: 40 Å chosen where 15 Å is best).
  std::vector<float> choice(voxels, 0.0f), mismatch(voxels, std::numeric_limits<float>::max());
  for (int w = 0; w < count; ++w) {
    const auto window = window_transform(n, std::max(2.0, settings.window_factor * (n / cutoff_of(w)) / 2));
    std::vector<float> best(voxels, std::numeric_limits<float>::max()), best_c(voxels, 0.0f);
    std::vector<Complex> product(window.size());
    for (int c = 0; c < count; ++c) {
      for (std::size_t k = 0; k < product.size(); ++k) product[k] = error_spectra[sz(c)][k] * window[k];
      const auto local_error = image::fft_inverse_3d(product, n);
#pragma omp parallel for schedule(static)
      for (std::size_t v = 0; v < voxels; ++v)
        if (local_error[v] < best[v]) best[v] = local_error[v], best_c[v] = static_cast<float>(c);
    }
#pragma omp parallel for schedule(static)
    for (std::size_t v = 0; v < voxels; ++v) {
      const float d = std::abs(best_c[v] - static_cast<float>(w));
      if (d < mismatch[v]) mismatch[v] = d, choice[v] = best_c[v];
    }
  }
  // The choice smoothed over a few voxels: switching cut-offs voxel by voxel would put the same
  // sharp seams into both halves, high-frequency content that they share and the FSC would count.
  choice = window_average(choice, n, 2.0);
  // Pass 2: each voxel interpolated between the two cut-offs around its (fractional) choice.
  LocalFilterResult out;
  out.half1.assign(voxels, 0.0f), out.half2.assign(voxels, 0.0f), out.local_resolution.assign(voxels, 0.0f);
  for (int c = 0; c < count; ++c) {
    butterworth_pair(f1, f2, radius, cutoff_of(c), settings.order, n, a, b);
#pragma omp parallel for schedule(static)
    for (std::size_t v = 0; v < voxels; ++v) {
      const float w = std::max(0.0f, 1 - std::abs(choice[v] - static_cast<float>(c)));
      if (w > 0) out.half1[v] += w * a[v], out.half2[v] += w * b[v];
    }
  }
#pragma omp parallel for schedule(static)
  for (std::size_t v = 0; v < voxels; ++v)
    out.local_resolution[v] = static_cast<float>(n / cutoff_of(std::clamp<double>(choice[v], 0, count - 1)) * settings.pixel_size);
  return out;
}

LocalFilterResult reconstruct_nonuniform(const BackProjector& half1, const BackProjector& half2, const std::vector<double>& fsc,
                                         const LocalFilterSettings& settings, VolumeTransforms& transforms) {
  const GlobalWiener global(fsc, 1);
  auto raw1 = global.reconstruct(half1, transforms), raw2 = global.reconstruct(half2, transforms);
  auto out = local_cross_validated_filter(raw1, raw2, half1.box(), settings);
  out.raw1 = std::move(raw1), out.raw2 = std::move(raw2);
  return out;
}

}  // namespace emcryo::em
