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
  axx_ = c * c * du + s * s * dv;
  axy_ = c * s * (du - dv);
  ayy_ = s * s * du + c * c * dv;
  k1_ = pi * lambda;
  k2_ = pi / 2 * cs_angstrom * lambda * lambda * lambda;
  const double q = p.amplitude_contrast;
  k3_ = std::atan(q / std::sqrt(1 - q * q));
  k4_ = -p.bfactor / 4;
  k5_ = p.phase_shift * pi / 180;
  scale_ = p.scale;
}

double Ctf::gamma(double fx, double fy) const {
  const double u2 = fx * fx + fy * fy;
  return k1_ * (axx_ * fx * fx + 2 * axy_ * fx * fy + ayy_ * fy * fy) + k2_ * u2 * u2 - k5_ - k3_;
}

double Ctf::value(double fx, double fy) const {
  double v = -std::sin(gamma(fx, fy));
  if (k4_ != 0) v *= std::exp(k4_ * (fx * fx + fy * fy));
  return scale_ * v;
}

void ctf_half_grid(const CtfParams& p, int n, double pixel_size, float* out) {
  const Ctf ctf(p);
  const int hx = n / 2 + 1;
  const double step = 1.0 / (n * pixel_size);
  for (int j = 0; j < n; ++j) {
    const double fy = wrap_frequency(j, n) * step;
    for (int i = 0; i < hx; ++i) out[static_cast<std::size_t>(j) * hx + i] = static_cast<float>(ctf.value(i * step, fy));
  }
}

std::vector<float> ctf_half_grid(const CtfParams& p, int n, double pixel_size) {
  std::vector<float> out(half_size(n, n));
  ctf_half_grid(p, n, pixel_size, out.data());
  return out;
}

}  // namespace emcryo::image
