#include "emcryo/image/ctf.hpp"

#include <cmath>
#include <numbers>

#include "emcryo/image/fft.hpp"

namespace emcryo::image {

double electron_wavelength(double voltage_kv) {
  const double v = voltage_kv * 1e3;
  return 12.2643247 / std::sqrt(v * (1 + 0.978466e-6 * v));
}

Ctf::Ctf(const CtfParams& p) {
  const double pi = std::numbers::pi;
  const double lambda = electron_wavelength(p.voltage);
  const double cs_angstrom = p.cs * 1e7;
  // Astigmatic defocus as a symmetric form: defocus U lies along defocus_angle.
  const double a = p.defocus_angle * pi / 180;
  const double c = std::cos(a), s = std::sin(a);
  const double du = -p.defocus_u, dv = -p.defocus_v;
  t_.axx = c * c * du + s * s * dv;
  t_.axy = c * s * (du - dv);
  t_.ayy = s * s * du + c * c * dv;
  t_.k1 = pi * lambda;
  t_.k2 = pi / 2 * cs_angstrom * lambda * lambda * lambda;
  const double q = p.amplitude_contrast;
  t_.k3 = std::atan(q / std::sqrt(1 - q * q));
  t_.k4 = -p.bfactor / 4;
  t_.k5 = p.phase_shift * pi / 180;
  t_.scale = p.scale;
}

double Ctf::gamma(double fx, double fy) const { return ctf_gamma(t_, fx, fy); }

double Ctf::value(double fx, double fy) const { return ctf_value(t_, fx, fy); }

void ctf_half_grid(const CtfParams& p, int n, double pixel_size, float* out) { ctf_half_grid(Ctf(p).terms(), n, pixel_size, out); }

void ctf_half_grid(const CtfTerms& t, int n, double pixel_size, float* out) {
  const int hx = n / 2 + 1;
  const double step = 1.0 / (n * pixel_size);
  for (int j = 0; j < n; ++j) {
    const double fy = wrap_frequency(j, n) * step;
    for (int i = 0; i < hx; ++i) out[static_cast<std::size_t>(j) * hx + i] = static_cast<float>(ctf_value(t, i * step, fy));
  }
}

std::vector<float> ctf_half_grid(const CtfParams& p, int n, double pixel_size) {
  std::vector<float> out(half_size(n, n));
  ctf_half_grid(p, n, pixel_size, out.data());
  return out;
}

}  // namespace emcryo::image
