#include "emcryo/em/score_rows.hpp"

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>

namespace emcryo::em {

void shift_ramps(const FrequencyList& list, const std::vector<Shift>& shifts, double base_x, double base_y, Complex* out) {
  const std::size_t F = list.size();
  if (F == 0) return;
  const double scale = -2 * std::numbers::pi / list.n;
  // exp(i scale (kx sx + ky sy)) = exp(i scale kx sx) exp(i scale ky sy): a table along each axis per
  // shift instead of a sine and cosine per frequency (these were ~3% of a CPU refine). The product
  // is formed in double, so the floats are those of the direct phase but for rare last-bit ties.
  const auto [kx_min, kx_max] = std::minmax_element(list.kx.begin(), list.kx.end());
  const auto [ky_min, ky_max] = std::minmax_element(list.ky.begin(), list.ky.end());
  std::vector<std::complex<double>> along_x(static_cast<std::size_t>(*kx_max - *kx_min + 1)), along_y(static_cast<std::size_t>(*ky_max - *ky_min + 1));
  for (std::size_t t = 0; t < shifts.size(); ++t) {
    const double sx = shifts[t].first + base_x, sy = shifts[t].second + base_y;
    for (std::size_t i = 0; i < along_x.size(); ++i) along_x[i] = std::polar(1.0, scale * (*kx_min + static_cast<int>(i)) * sx);
    for (std::size_t i = 0; i < along_y.size(); ++i) along_y[i] = std::polar(1.0, scale * (*ky_min + static_cast<int>(i)) * sy);
    for (std::size_t f = 0; f < F; ++f) {
      const std::complex<double> v = along_x[static_cast<std::size_t>(list.kx[f] - *kx_min)] * along_y[static_cast<std::size_t>(list.ky[f] - *ky_min)];
      out[t * F + f] = {static_cast<float>(v.real()), static_cast<float>(v.imag())};
    }
  }
}

std::vector<Complex> shift_ramps(const FrequencyList& list, const std::vector<Shift>& shifts, double base_x, double base_y) {
  std::vector<Complex> out(shifts.size() * list.size());
  shift_ramps(list, shifts, base_x, base_y, out.data());
  return out;
}

void fill_score_rows(const Complex* x, const float* ctf, const float* inv_sigma2, const Complex* ramps, int shifts, int F,
                     float* rows) {
  for (int t = 0; t < shifts; ++t) {
    float* row = rows + static_cast<std::size_t>(t) * 2 * F;
    const Complex* ramp = ramps + static_cast<std::size_t>(t) * F;
    for (int f = 0; f < F; ++f) {
      const Complex y = std::conj(x[f]) * ramp[f] * (ctf[f] * inv_sigma2[f]);
      row[2 * f] = y.real();       // Re(Y A) = Re Y Re A - Im Y Im A, so store -Im Y
      row[2 * f + 1] = -y.imag();
    }
  }
}

void build_particle_rows(const ParticleRows& p, int count, int F, float* rows) {
  const FrequencyList& list = *p.list;
  const bool moved = p.base.first != 0 || p.base.second != 0;
  std::vector<Complex> ramp(list.size()), base(moved ? list.size() : 0);
  if (moved) shift_ramps(list, {p.base}, 0, 0, base.data());
  const auto* x = reinterpret_cast<const Complex*>(p.x);
  for (int t = 0; t < count; ++t) {
    shift_ramps(list, {p.shift_grid[p.shift_ids[t]]}, 0, 0, ramp.data());
    if (moved)
      for (int f = 0; f < F; ++f) ramp[static_cast<std::size_t>(f)] *= base[static_cast<std::size_t>(f)];
    fill_score_rows(x, p.ctf, p.inv_sigma2, ramp.data(), 1, F, rows + static_cast<std::size_t>(t) * 2 * static_cast<std::size_t>(F));
  }
}

void store_template_row(const Complex* sample, int F, float* row, float* power) {
  for (int f = 0; f < F; ++f) {
    row[2 * f] = sample[f].real();
    row[2 * f + 1] = sample[f].imag();
    if (power) power[f] = std::norm(sample[f]);
  }
}

void add_noise_residual(const FrequencyList& list, const Complex* x, const float* ctf, const Complex* ramp,
                        const float* template_row, double* sum, double* count) {
  const std::size_t F = list.size();
  for (std::size_t f = 0; f < F; ++f) {
    const Complex model = ctf[f] * ramp[f] * Complex(template_row[2 * f], template_row[2 * f + 1]);
    const auto s = static_cast<std::size_t>(list.shell[f]);
    sum[s] += std::norm(x[f] - model);
    count[s] += 1;
  }
}

}  // namespace emcryo::em
