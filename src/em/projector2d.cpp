#include "emcryo/em/projector2d.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace emcryo::em {

namespace {
double sinc(double x) { return std::abs(x) < 1e-8 ? 1.0 : std::sin(x) / x; }
float gridding_2d(int x, int y, int c, int m) {
  const double sx = sinc(std::numbers::pi * (x - c) / m), sy = sinc(std::numbers::pi * (y - c) / m);
  return static_cast<float>(sx * sx * sy * sy);
}
}  // namespace

FrequencyList make_frequency_list(int n, double radius) {
  struct Entry {
    int r2, ky, kx;
  };
  std::vector<Entry> entries;
  const int h = n / 2 + 1;
  const int r = static_cast<int>(std::floor(radius));
  for (int ky = -r; ky <= r; ++ky) {
    if (ky >= n / 2 || ky < -n / 2) continue;
    for (int kx = 0; kx <= r && kx < h; ++kx) {
      if (kx == 0 && ky <= 0) continue;
      if (kx * kx + ky * ky > radius * radius) continue;
      entries.push_back({kx * kx + ky * ky, ky, kx});
    }
  }
  // By radius, so that the list at a smaller radius is a prefix of this one (coarse passes).
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.r2 < b.r2; });
  FrequencyList list;
  list.n = n;
  list.radius = radius;
  for (const auto& e : entries) {
    list.kx.push_back(e.kx);
    list.ky.push_back(e.ky);
    list.shell.push_back(static_cast<int>(std::lround(std::sqrt(e.r2))));
    list.index.push_back(image::storage_index(e.ky, n) * h + e.kx);
  }
  return list;
}

std::size_t frequencies_within(const FrequencyList& list, double radius) {
  std::size_t count = 0;
  while (count < list.size() &&
         list.kx[count] * list.kx[count] + list.ky[count] * list.ky[count] <= radius * radius) ++count;
  return count;
}

Projector2D::Projector2D(const std::vector<float>& img, int n, int padding)
    : n_(n), pad_(padding), m_(n * padding), hm_(n * padding / 2 + 1) {
  std::vector<float> padded(static_cast<std::size_t>(m_) * m_, 0.0f);
  const int off = m_ / 2 - n / 2;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x)
      padded[static_cast<std::size_t>(y + off) * m_ + x + off] =
          img[static_cast<std::size_t>(y) * n + x] / gridding_2d(x + off, y + off, m_ / 2, m_);
  grid_.resize(image::half_size(m_, m_));
  image::fft_forward_2d(padded.data(), grid_.data(), m_, m_);
}

void Projector2D::sample(double psi, const FrequencyList& list, Complex* out) const {
  const double a = psi * std::numbers::pi / 180, c = std::cos(a), s = std::sin(a);
  for (std::size_t f = 0; f < list.size(); ++f) {
    // A^T k with A = [[c, s], [-s, c]].
    double px = (c * list.kx[f] - s * list.ky[f]) * pad_, py = (s * list.kx[f] + c * list.ky[f]) * pad_;
    bool conjugate = false;
    if (px < 0) px = -px, py = -py, conjugate = true;
    const int x0 = static_cast<int>(std::floor(px)), y0 = static_cast<int>(std::floor(py));
    const float fx = static_cast<float>(px - x0), fy = static_cast<float>(py - y0);
    const std::size_t r0 = static_cast<std::size_t>(image::storage_index(y0, m_)) * hm_;
    const std::size_t r1 = static_cast<std::size_t>(image::storage_index(y0 + 1, m_)) * hm_;
    const Complex v0 = grid_[r0 + x0] + fx * (grid_[r0 + x0 + 1] - grid_[r0 + x0]);
    const Complex v1 = grid_[r1 + x0] + fx * (grid_[r1 + x0 + 1] - grid_[r1 + x0]);
    const Complex v = v0 + fy * (v1 - v0);
    out[f] = conjugate ? std::conj(v) : v;
  }
}

BackProjector2D::BackProjector2D(int n, int padding)
    : n_(n), pad_(padding), m_(n * padding), hm_(n * padding / 2 + 1),
      data_(image::half_size(m_, m_)), weight_(image::half_size(m_, m_)) {}

void BackProjector2D::insert(double psi, const FrequencyList& list, const Complex* data, const float* weight) {
  const double a = psi * std::numbers::pi / 180, c = std::cos(a), s = std::sin(a);
  for (std::size_t f = 0; f < list.size(); ++f) {
    double px = (c * list.kx[f] - s * list.ky[f]) * pad_, py = (s * list.kx[f] + c * list.ky[f]) * pad_;
    Complex value = data[f];
    if (px < 0) px = -px, py = -py, value = std::conj(value);
    const int x0 = static_cast<int>(std::floor(px)), y0 = static_cast<int>(std::floor(py));
    const float fx = static_cast<float>(px - x0), fy = static_cast<float>(py - y0);
    for (int dy = 0; dy < 2; ++dy) {
      const std::size_t row = static_cast<std::size_t>(image::storage_index(y0 + dy, m_)) * hm_;
      const float wy = dy ? fy : 1 - fy;
      for (int dx = 0; dx < 2; ++dx) {
        const float w = wy * (dx ? fx : 1 - fx);
        data_[row + x0 + dx] += w * value;
        weight_[row + x0 + dx] += w * weight[f];
      }
    }
  }
}

std::vector<double> BackProjector2D::mean_weight_per_shell() const {
  const int shells = n_ / 2 + 1;
  std::vector<double> sum(static_cast<std::size_t>(shells)), count(sum.size());
  for (int y = 0; y < m_; ++y) {
    const int ky = image::wrap_frequency(y, m_);
    for (int x = 0; x < hm_; ++x) {
      const int s = static_cast<int>(std::lround(std::sqrt(x * x + ky * ky) / pad_));
      if (s >= shells) continue;
      sum[static_cast<std::size_t>(s)] += weight_[static_cast<std::size_t>(y) * hm_ + x];
      count[static_cast<std::size_t>(s)] += 1;
    }
  }
  for (std::size_t s = 0; s < sum.size(); ++s) sum[s] = count[s] > 0 ? sum[s] / count[s] : 0;
  return sum;
}

std::vector<float> BackProjector2D::reconstruct(const std::vector<double>& regularisation) const {
  std::vector<Complex> data = data_;
  std::vector<float> weight = weight_;
  // kx = 0 column: (0, ky) and (0, -ky) are conjugates; pool what landed on either.
  for (int y = 1; y < m_ / 2; ++y) {
    const std::size_t i = static_cast<std::size_t>(y) * hm_, j = static_cast<std::size_t>(m_ - y) * hm_;
    const Complex sum = data[i] + std::conj(data[j]);
    const float wsum = weight[i] + weight[j];
    data[i] = sum, data[j] = std::conj(sum);
    weight[i] = weight[j] = wsum;
  }
  const auto mean_weight = mean_weight_per_shell();
  const int shells = n_ / 2 + 1;
  std::vector<Complex> spectrum(data.size());
  for (int y = 0; y < m_; ++y) {
    const int ky = image::wrap_frequency(y, m_);
    for (int x = 0; x < hm_; ++x) {
      const double r = std::sqrt(x * x + ky * ky) / pad_;
      if (r > n_ / 2.0 - 1) continue;
      const auto s = static_cast<std::size_t>(std::min<long>(std::lround(r), shells - 1));
      const std::size_t idx = static_cast<std::size_t>(y) * hm_ + x;
      double w = weight[idx] + (s < regularisation.size() ? regularisation[s] : 0.0);
      w = std::max(w, mean_weight[s] / 1000.0);
      if (w > 0) spectrum[idx] = data[idx] / static_cast<float>(w);
    }
  }
  std::vector<float> padded(static_cast<std::size_t>(m_) * m_);
  image::fft_inverse_2d(spectrum.data(), padded.data(), m_, m_);
  std::vector<float> out(static_cast<std::size_t>(n_) * n_);
  const int off = m_ / 2 - n_ / 2;
  for (int y = 0; y < n_; ++y)
    for (int x = 0; x < n_; ++x)
      out[static_cast<std::size_t>(y) * n_ + x] =
          padded[static_cast<std::size_t>(y + off) * m_ + x + off] / gridding_2d(x + off, y + off, m_ / 2, m_);
  return out;
}

}  // namespace emcryo::em
