#include "emcryo/image/fourier.hpp"

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>

namespace emcryo::image {

void resize_half_grid_2d(const Complex* in, int n_in, Complex* out, int n_out) {
  const int h_in = n_in / 2 + 1, h_out = n_out / 2 + 1;
  const int kmax = std::min(n_in, n_out) / 2;  // exclusive for the negative side
  std::fill(out, out + half_size(n_out, n_out), Complex{});
  for (int j = 0; j < n_out; ++j) {
    const int ky = wrap_frequency(j, n_out);
    if (ky >= kmax || ky < -kmax) continue;
    const Complex* src = in + static_cast<std::size_t>(storage_index(ky, n_in)) * h_in;
    Complex* dst = out + static_cast<std::size_t>(j) * h_out;
    for (int kx = 0; kx < kmax; ++kx) dst[kx] = src[kx];
  }
}

void resize_half_grid_3d(const Complex* in, int n_in, Complex* out, int n_out) {
  const int h_in = n_in / 2 + 1, h_out = n_out / 2 + 1;
  const int kmax = std::min(n_in, n_out) / 2;
  std::fill(out, out + half_size(n_out, n_out, n_out), Complex{});
  for (int k = 0; k < n_out; ++k) {
    const int kz = wrap_frequency(k, n_out);
    if (kz >= kmax || kz < -kmax) continue;
    for (int j = 0; j < n_out; ++j) {
      const int ky = wrap_frequency(j, n_out);
      if (ky >= kmax || ky < -kmax) continue;
      const Complex* src =
          in + (static_cast<std::size_t>(storage_index(kz, n_in)) * n_in + storage_index(ky, n_in)) * h_in;
      Complex* dst = out + (static_cast<std::size_t>(k) * n_out + j) * h_out;
      for (int kx = 0; kx < kmax; ++kx) dst[kx] = src[kx];
    }
  }
}

std::vector<float> resample_volume(const std::vector<float>& volume, int n_in, int n_out) {
  if (n_in == n_out) return volume;
  auto spectrum = fft_forward_3d(volume, n_in);
  std::vector<Complex> resized(half_size(n_out, n_out, n_out));
  resize_half_grid_3d(spectrum.data(), n_in, resized.data(), n_out);
  auto out = fft_inverse_3d(resized, n_out);
  const float scale = std::pow(static_cast<float>(n_out) / static_cast<float>(n_in), 3.0f);
  for (auto& v : out) v *= scale;
  return out;
}

std::vector<float> rescale_volume(const std::vector<float>& volume, int n_in, double pixel_in, int n_out,
                                  double pixel_out) {
  const int scaled = 2 * static_cast<int>(std::lround(n_in * pixel_in / pixel_out / 2));
  const auto resampled = resample_volume(volume, n_in, scaled);
  std::vector<float> boxed(static_cast<std::size_t>(n_out) * n_out * n_out, 0.0f);
  const int off = scaled / 2 - n_out / 2;
  for (int z = 0; z < n_out; ++z)
    for (int y = 0; y < n_out; ++y)
      for (int x = 0; x < n_out; ++x) {
        const int sx = x + off, sy = y + off, sz = z + off;
        if (sx < 0 || sy < 0 || sz < 0 || sx >= scaled || sy >= scaled || sz >= scaled) continue;
        boxed[(static_cast<std::size_t>(z) * n_out + y) * n_out + x] =
            resampled[(static_cast<std::size_t>(sz) * scaled + sy) * scaled + sx];
      }
  return boxed;
}

std::vector<float> resample_image(const std::vector<float>& image, int n_in, int n_out) {
  if (n_in == n_out) return image;
  auto spectrum = fft_forward_2d(image, n_in);
  std::vector<Complex> resized(half_size(n_out, n_out));
  resize_half_grid_2d(spectrum.data(), n_in, resized.data(), n_out);
  auto out = fft_inverse_2d(resized, n_out);
  const float scale = static_cast<float>(n_out) * n_out / (static_cast<float>(n_in) * n_in);
  for (auto& v : out) v *= scale;
  return out;
}

namespace {

/// The phase ramp of a shift is separable, e^{-i(kx dx + ky dy)} = e^{-i kx dx} e^{-i ky dy}: two
/// 1D tables (h + n sines and cosines) instead of one per coefficient. Per thread, reused.
struct RampTables {
  std::vector<std::complex<double>> along_x, along_y;
};

const RampTables& ramp_tables(int n, double dx, double dy) {
  thread_local RampTables t;
  const int h = n / 2 + 1;
  const double two_pi_over_n = 2 * std::numbers::pi / n;
  t.along_x.resize(static_cast<std::size_t>(h));
  t.along_y.resize(static_cast<std::size_t>(n));
  for (int kx = 0; kx < h; ++kx) t.along_x[static_cast<std::size_t>(kx)] = std::polar(1.0, -two_pi_over_n * kx * dx);
  for (int j = 0; j < n; ++j) t.along_y[static_cast<std::size_t>(j)] = std::polar(1.0, -two_pi_over_n * wrap_frequency(j, n) * dy);
  return t;
}

}  // namespace

void add_shifted_half_grid_2d(const Complex* spectrum, int n, double dx, double dy, float weight, double max_radius, Complex* sum) {
  const int h = n / 2 + 1;
  const auto& [along_x, along_y] = ramp_tables(n, dx, dy);
  const double r2_max = max_radius * max_radius;
  for (int j = 0; j < n; ++j) {
    const int ky = wrap_frequency(j, n);
    if (static_cast<double>(ky) * ky > r2_max) continue;
    const std::complex<double> y = along_y[static_cast<std::size_t>(j)];
    const std::size_t row = static_cast<std::size_t>(j) * h;
    for (int kx = 0; kx < h && static_cast<double>(kx * kx + ky * ky) <= r2_max; ++kx)
      sum[row + kx] += spectrum[row + kx] * Complex(y * along_x[static_cast<std::size_t>(kx)]) * weight;
  }
}

void shift_half_grid_2d(Complex* spectrum, int n, double dx, double dy) {
  const int h = n / 2 + 1;
  const auto& [along_x, along_y] = ramp_tables(n, dx, dy);
  for (int j = 0; j < n; ++j) {
    const std::complex<double> y = along_y[static_cast<std::size_t>(j)];
    Complex* row = spectrum + static_cast<std::size_t>(j) * h;
    for (int kx = 0; kx < h; ++kx) row[kx] *= Complex(y * along_x[static_cast<std::size_t>(kx)]);
  }
}

std::vector<int> shell_index_2d(int n) {
  const int h = n / 2 + 1;
  std::vector<int> shells(half_size(n, n));
  for (int j = 0; j < n; ++j) {
    const int ky = wrap_frequency(j, n);
    for (int kx = 0; kx < h; ++kx)
      shells[static_cast<std::size_t>(j) * h + kx] = static_cast<int>(std::lround(std::sqrt(kx * kx + ky * ky)));
  }
  return shells;
}

std::vector<int> shell_index_3d(int n) {
  const int h = n / 2 + 1;
  std::vector<int> shells(half_size(n, n, n));
  std::size_t idx = 0;
  for (int k = 0; k < n; ++k) {
    const int kz = wrap_frequency(k, n);
    for (int j = 0; j < n; ++j) {
      const int ky = wrap_frequency(j, n);
      for (int kx = 0; kx < h; ++kx)
        shells[idx++] = static_cast<int>(std::lround(std::sqrt(kx * kx + ky * ky + kz * kz)));
    }
  }
  return shells;
}

namespace {
double cosine_edge(double radius, double cutoff, double edge) {
  if (edge <= 0) return radius <= cutoff ? 1.0 : 0.0;
  const double lo = cutoff - edge / 2, hi = cutoff + edge / 2;
  if (radius <= lo) return 1.0;
  if (radius >= hi) return 0.0;
  return 0.5 * (1 + std::cos(std::numbers::pi * (radius - lo) / edge));
}
}  // namespace

void lowpass_half_grid_2d(Complex* spectrum, int n, double cutoff, double edge) {
  const int h = n / 2 + 1;
  for (int j = 0; j < n; ++j) {
    const int ky = wrap_frequency(j, n);
    for (int kx = 0; kx < h; ++kx)
      spectrum[static_cast<std::size_t>(j) * h + kx] *=
          static_cast<float>(cosine_edge(std::sqrt(kx * kx + ky * ky), cutoff, edge));
  }
}

void lowpass_half_grid_3d(Complex* spectrum, int n, double cutoff, double edge) {
  const int h = n / 2 + 1;
  std::size_t idx = 0;
  for (int k = 0; k < n; ++k) {
    const int kz = wrap_frequency(k, n);
    for (int j = 0; j < n; ++j) {
      const int ky = wrap_frequency(j, n);
      for (int kx = 0; kx < h; ++kx, ++idx)
        spectrum[idx] *= static_cast<float>(cosine_edge(std::sqrt(kx * kx + ky * ky + kz * kz), cutoff, edge));
    }
  }
}

std::vector<float> lowpass_volume(const std::vector<float>& volume, int n, double pixel_size,
                                  double resolution_angstrom) {
  auto spectrum = fft_forward_3d(volume, n);
  lowpass_half_grid_3d(spectrum.data(), n, n * pixel_size / resolution_angstrom, 2);
  return fft_inverse_3d(spectrum, n);
}

std::vector<float> soft_round_mask(int n, int dims, double radius, double edge) {
  const std::size_t nz = dims == 3 ? static_cast<std::size_t>(n) : 1;
  std::vector<float> mask(static_cast<std::size_t>(n) * n * nz);
  const double c = n / 2;
  std::size_t idx = 0;
  for (std::size_t z = 0; z < nz; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double dz = dims == 3 ? static_cast<double>(z) - c : 0.0;
        const double r = std::sqrt((x - c) * (x - c) + (y - c) * (y - c) + dz * dz);
        double v;
        if (r <= radius) v = 1;
        else if (r >= radius + edge) v = 0;
        else v = 0.5 * (1 + std::cos(std::numbers::pi * (r - radius) / edge));
        mask[idx++] = static_cast<float>(v);
      }
  return mask;
}

void apply_mask(float* data, const std::vector<float>& mask, float background) {
  for (std::size_t i = 0; i < mask.size(); ++i) data[i] = mask[i] * data[i] + (1 - mask[i]) * background;
}

std::vector<double> fsc_3d(const Complex* a, const Complex* b, int n) {
  const int h = n / 2 + 1;
  const int shells = n / 2 + 1;
  std::vector<double> cross(static_cast<std::size_t>(shells)), pa(cross.size()), pb(cross.size());
  std::size_t idx = 0;
  for (int k = 0; k < n; ++k) {
    const int kz = wrap_frequency(k, n);
    for (int j = 0; j < n; ++j) {
      const int ky = wrap_frequency(j, n);
      for (int kx = 0; kx < h; ++kx, ++idx) {
        const int s = static_cast<int>(std::lround(std::sqrt(kx * kx + ky * ky + kz * kz)));
        if (s >= shells) continue;
        const auto& x = a[idx];
        const auto& y = b[idx];
        cross[static_cast<std::size_t>(s)] += static_cast<double>(x.real()) * y.real() + static_cast<double>(x.imag()) * y.imag();
        pa[static_cast<std::size_t>(s)] += std::norm(std::complex<double>(x));
        pb[static_cast<std::size_t>(s)] += std::norm(std::complex<double>(y));
      }
    }
  }
  std::vector<double> fsc(cross.size());
  for (std::size_t s = 0; s < fsc.size(); ++s)
    fsc[s] = (pa[s] > 0 && pb[s] > 0) ? cross[s] / std::sqrt(pa[s] * pb[s]) : 0.0;
  if (!fsc.empty()) fsc[0] = 1.0;
  return fsc;
}

std::vector<double> fsc_3d(const std::vector<float>& map_a, const std::vector<float>& map_b, int n) {
  auto a = fft_forward_3d(map_a, n);
  auto b = fft_forward_3d(map_b, n);
  return fsc_3d(a.data(), b.data(), n);
}

double resolution_at(const std::vector<double>& fsc, double threshold, int n, double pixel_size) {
  for (std::size_t s = 1; s < fsc.size(); ++s) {
    if (fsc[s] < threshold) {
      // Linear interpolation between shells s-1 and s.
      const double f0 = fsc[s - 1], f1 = fsc[s];
      const double t = f0 != f1 ? (f0 - threshold) / (f0 - f1) : 0.0;
      const double shell = static_cast<double>(s - 1) + t;
      return shell_resolution(std::max(shell, 0.5), n, pixel_size);
    }
  }
  return shell_resolution(static_cast<double>(fsc.size() - 1), n, pixel_size);
}

void mean_stddev(const float* data, std::size_t count, double& mean, double& stddev) {
  double s = 0, s2 = 0;
  for (std::size_t i = 0; i < count; ++i) {
    s += data[i];
    s2 += static_cast<double>(data[i]) * data[i];
  }
  mean = count ? s / static_cast<double>(count) : 0;
  stddev = count ? std::sqrt(std::max(0.0, s2 / static_cast<double>(count) - mean * mean)) : 0;
}

double correlation(const float* a, const float* b, std::size_t count) {
  double ma, sa, mb, sb;
  mean_stddev(a, count, ma, sa);
  mean_stddev(b, count, mb, sb);
  if (sa == 0 || sb == 0) return 0;
  double c = 0;
  for (std::size_t i = 0; i < count; ++i) c += (a[i] - ma) * (b[i] - mb);
  return c / (static_cast<double>(count) * sa * sb);
}

}  // namespace emcryo::image
