#include "emcryo/em/projector.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EMCRYO_TRILINEAR_SIMD 1
#endif

#include "emcryo/core/error.hpp"

namespace emcryo::em {

namespace {
double sinc(double x) { return std::abs(x) < 1e-8 ? 1.0 : std::sin(x) / x; }
/// One axis's factor of the trilinear kernel's transform on m points: sinc(pi (i - center) / m).
double axis_sinc(int i, int center, int m) { return sinc(std::numbers::pi * (i - center) / m); }
/// The correction from its three axis factors (one expression: the same float wherever it is formed).
float correction_of(double sx, double sy, double sz) { return static_cast<float>(sx * sx * sy * sy * sz * sz); }
}  // namespace

float gridding_correction(int x, int y, int z, int center, int m) {
  return correction_of(axis_sinc(x, center, m), axis_sinc(y, center, m), axis_sinc(z, center, m));
}

namespace {
/// Visits the n^3 box centred in the padded m^3 box: f(index in the n box, index in the m box,
/// trilinear gridding correction there), planes over the threads (each voxel is f's once).
/// Padding divides by it, cropping back divides again. The sines once per axis position, not per
/// voxel (they were ~1% of a small hetero-refine, each projector and reconstruction 3 n^3 of them).
template <class F>
void for_each_centred_voxel(int n, int m, F f) {
  const int offset = m / 2 - n / 2;
  std::vector<double> axis(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) axis[static_cast<std::size_t>(i)] = axis_sinc(i + offset, m / 2, m);
#pragma omp parallel for schedule(static)
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const int px = x + offset, py = y + offset, pz = z + offset;
        f((static_cast<std::size_t>(z) * n + static_cast<std::size_t>(y)) * n + static_cast<std::size_t>(x),
          (static_cast<std::size_t>(pz) * m + static_cast<std::size_t>(py)) * m + static_cast<std::size_t>(px),
          correction_of(axis[static_cast<std::size_t>(x)], axis[static_cast<std::size_t>(y)], axis[static_cast<std::size_t>(z)]));
      }
}
}  // namespace

Projector::Projector(const std::vector<float>& volume, int n, int padding)
    : n_(n), pad_(padding), m_(n * padding), hm_(n * padding / 2 + 1) {
  if (volume.size() != static_cast<std::size_t>(n) * n * n) fail("projector: volume is not {}^3", n);
  // Zero-pad to m^3 about the centre and pre-divide by the interpolation kernel's transform.
  std::vector<float> padded(static_cast<std::size_t>(m_) * m_ * m_, 0.0f);
  for_each_centred_voxel(n, m_, [&](std::size_t inner, std::size_t outer, float correction) { padded[outer] = volume[inner] / correction; });
  grid_ = image::fft_forward_3d(padded, m_);
}

Projector::Projector(std::vector<Complex> grid, int n, int padding)
    : n_(n), pad_(padding), m_(n * padding), hm_(n * padding / 2 + 1), grid_(std::move(grid)) {
  if (grid_.size() != image::half_size(m_, m_, m_)) fail("projector: a transform of {} values is not that of a {}^3 box padded x{}", grid_.size(), n, padding);
}

Projector::Projector(std::shared_ptr<const HeldGrid> held, int n, int padding)
    : n_(n), pad_(padding), m_(n * padding), hm_(n * padding / 2 + 1), held_(std::move(held)), fetched_(std::make_unique<std::once_flag>()) {
  if (!held_) fail("projector: no transform (internal error)");
}

const std::vector<Complex>& Projector::grid() const {
  if (held_)
    std::call_once(*fetched_, [this] {
      grid_.resize(image::half_size(m_, m_, m_));
      held_->copy_to(grid_.data());
    });
  return grid_;
}

namespace {
/// Storage index of signed frequency i on an axis of m points, without a branch: the signs of
/// a slice's coordinates are as good as random, and a mispredicted branch per voxel costs more
/// than the arithmetic.
inline std::size_t wrap_index(int i, int m) { return static_cast<std::size_t>(i + (m & (i >> 31))); }

/// The trilinear cell of a point of the padded half grid (m x m x hm), Hermitian-mirrored: where
/// px < 0 the point (-p) is read or written instead, its value conjugated (sign = -1). The four
/// (y, z) corners' first voxels; each corner's x + 1 neighbour follows it in memory. Single
/// precision: a padded coordinate (< 512) keeps ~1e-5 px, far below what interpolation resolves,
/// and the float arithmetic is what lets the corners go through SIMD registers.
struct Cell {
  std::size_t corner[4];  // (y0, z0), (y1, z0), (y0, z1), (y1, z1)
  float fx, fy, fz, sign;
};
inline Cell cell_at(float px, float py, float pz, int m, std::size_t hm, std::size_t plane) {
  Cell c;
  c.sign = px < 0 ? -1.0f : 1.0f;
  px *= c.sign, py *= c.sign, pz *= c.sign;
  const int x0 = static_cast<int>(px);  // px >= 0: truncation is floor
  const int y0 = static_cast<int>(std::floor(py)), z0 = static_cast<int>(std::floor(pz));
  c.fx = px - static_cast<float>(x0), c.fy = py - static_cast<float>(y0), c.fz = pz - static_cast<float>(z0);
  const std::size_t y0i = wrap_index(y0, m) * hm + static_cast<std::size_t>(x0), y1i = wrap_index(y0 + 1, m) * hm + static_cast<std::size_t>(x0);
  const std::size_t z0i = wrap_index(z0, m) * plane, z1i = wrap_index(z0 + 1, m) * plane;
  c.corner[0] = z0i + y0i, c.corner[1] = z0i + y1i, c.corner[2] = z1i + y0i, c.corner[3] = z1i + y1i;
  return c;
}

#ifdef EMCRYO_TRILINEAR_SIMD
/// The cells of 8 points at once: cell_at's arithmetic lane by lane (the same floats, so the same
/// cells), for the loops of sample() and insert(), where the scalar setup of each point's cell was
/// as costly as its interpolation. Corner indices in 32 bits: only for grids below 2^31 voxels.
struct Cells8 {
  alignas(32) std::int32_t corner[4][8];
  alignas(32) float fx[8], fy[8], fz[8], sign[8];
  Cell operator[](int i) const {
    Cell c;
    for (int k = 0; k < 4; ++k) c.corner[k] = static_cast<std::uint32_t>(corner[k][i]);
    c.fx = fx[i], c.fy = fy[i], c.fz = fz[i], c.sign = sign[i];
    return c;
  }
};
inline bool fits_cells8(int m, std::size_t hm) { return static_cast<double>(m) * static_cast<double>(m) * static_cast<double>(hm) < 2147483647.0; }
inline void cells8_at(__m256 px, __m256 py, __m256 pz, int m, std::size_t hm, std::size_t plane, Cells8& out) {
  const __m256 sign = _mm256_or_ps(_mm256_and_ps(_mm256_cmp_ps(px, _mm256_setzero_ps(), _CMP_LT_OQ), _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
  px = _mm256_mul_ps(px, sign), py = _mm256_mul_ps(py, sign), pz = _mm256_mul_ps(pz, sign);
  const __m256 xf = _mm256_floor_ps(px), yf = _mm256_floor_ps(py), zf = _mm256_floor_ps(pz);
  _mm256_store_ps(out.fx, _mm256_sub_ps(px, xf));
  _mm256_store_ps(out.fy, _mm256_sub_ps(py, yf));
  _mm256_store_ps(out.fz, _mm256_sub_ps(pz, zf));
  _mm256_store_ps(out.sign, sign);
  const __m256i mv = _mm256_set1_epi32(m), one = _mm256_set1_epi32(1);
  const auto wrap = [&](__m256i i) { return _mm256_add_epi32(i, _mm256_and_si256(mv, _mm256_srai_epi32(i, 31))); };
  const __m256i x0 = _mm256_cvtps_epi32(xf), y0 = _mm256_cvtps_epi32(yf), z0 = _mm256_cvtps_epi32(zf);
  const __m256i row = _mm256_set1_epi32(static_cast<int>(hm)), slab = _mm256_set1_epi32(static_cast<int>(plane));
  const __m256i y0i = _mm256_add_epi32(_mm256_mullo_epi32(wrap(y0), row), x0);
  const __m256i y1i = _mm256_add_epi32(_mm256_mullo_epi32(wrap(_mm256_add_epi32(y0, one)), row), x0);
  const __m256i z0i = _mm256_mullo_epi32(wrap(z0), slab), z1i = _mm256_mullo_epi32(wrap(_mm256_add_epi32(z0, one)), slab);
  _mm256_store_si256(reinterpret_cast<__m256i*>(out.corner[0]), _mm256_add_epi32(z0i, y0i));
  _mm256_store_si256(reinterpret_cast<__m256i*>(out.corner[1]), _mm256_add_epi32(z0i, y1i));
  _mm256_store_si256(reinterpret_cast<__m256i*>(out.corner[2]), _mm256_add_epi32(z1i, y0i));
  _mm256_store_si256(reinterpret_cast<__m256i*>(out.corner[3]), _mm256_add_epi32(z1i, y1i));
}
#endif

/// A central slice's place in the padded grid: slice frequency (kx, ky) sits at kx a + ky b, a and b
/// the first two rows of the rotation scaled by the padding (A^T (kx, ky, 0)); the cells there.
/// The one setup of project(), sample() and insert().
struct SliceFrame {
  float ax, ay, az, bx, by, bz;
  int m;
  std::size_t hm, plane;
  SliceFrame(const geometry::Mat3& a, int padding, int m_, int hm_)
      : ax(static_cast<float>(a(0, 0) * padding)), ay(static_cast<float>(a(0, 1) * padding)), az(static_cast<float>(a(0, 2) * padding)),
        bx(static_cast<float>(a(1, 0) * padding)), by(static_cast<float>(a(1, 1) * padding)), bz(static_cast<float>(a(1, 2) * padding)),
        m(m_), hm(static_cast<std::size_t>(hm_)), plane(static_cast<std::size_t>(m_) * static_cast<std::size_t>(hm_)) {}
  Cell cell(float px, float py, float pz) const { return cell_at(px, py, pz, m, hm, plane); }
};

/// The grid's value at a cell (interpolated along x, then y, then z), conjugated where mirrored.
inline Complex interpolate(const Complex* grid, const Cell& c) {
#ifdef EMCRYO_TRILINEAR_SIMD
  // A corner and its x + 1 neighbour are four floats (re, im, re', im'): two corners per register.
  const auto* g = reinterpret_cast<const float*>(grid);
  const __m256 z0 = _mm256_set_m128(_mm_loadu_ps(g + 2 * c.corner[1]), _mm_loadu_ps(g + 2 * c.corner[0]));
  const __m256 z1 = _mm256_set_m128(_mm_loadu_ps(g + 2 * c.corner[3]), _mm_loadu_ps(g + 2 * c.corner[2]));
  const __m256 fx = _mm256_set1_ps(c.fx);
  const auto along_x = [&](__m256 pair) {  // (v0 + fx (v1 - v0)), twice per 128-bit half
    const __m256 v0 = _mm256_permute_ps(pair, 0x44), v1 = _mm256_permute_ps(pair, 0xEE);
    return _mm256_fmadd_ps(fx, _mm256_sub_ps(v1, v0), v0);
  };
  const __m128 fy = _mm_set1_ps(c.fy);
  const auto along_y = [&](__m256 x) {
    const __m128 y0 = _mm256_castps256_ps128(x), y1 = _mm256_extractf128_ps(x, 1);
    return _mm_fmadd_ps(fy, _mm_sub_ps(y1, y0), y0);
  };
  const __m128 c0 = along_y(along_x(z0)), c1 = along_y(along_x(z1));
  const __m128 v = _mm_fmadd_ps(_mm_set1_ps(c.fz), _mm_sub_ps(c1, c0), c0);
  return Complex(_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)) * c.sign);
#else
  Complex corner[4];
  for (int i = 0; i < 4; ++i) {
    const Complex* v = grid + c.corner[i];
    corner[i] = v[0] + c.fx * (v[1] - v[0]);
  }
  const Complex c0 = corner[0] + c.fy * (corner[1] - corner[0]), c1 = corner[2] + c.fy * (corner[3] - corner[2]);
  const Complex v = c0 + c.fz * (c1 - c0);
  return Complex(v.real(), v.imag() * c.sign);
#endif
}

/// Spreads a value (vr, vi, conjugated where mirrored by the caller) and its weight w over a cell
/// of the back-projector's cells (re, im, weight, 0 per voxel).
inline void spread(float* cells, const Cell& c, float vr, float vi, float w) {
  const float wzy[4] = {(1 - c.fz) * (1 - c.fy), (1 - c.fz) * c.fy, c.fz * (1 - c.fy), c.fz * c.fy};
#ifdef EMCRYO_TRILINEAR_SIMD
  // The value and weight split along x once ((1 - fx) for the corner, fx for its x + 1 neighbour),
  // then per corner one register of 8 floats scaled by the corner's (y, z) weight and added.
  const __m128 v = _mm_setr_ps(vr, vi, w, 0);
  const __m256 along_x = _mm256_set_m128(_mm_mul_ps(_mm_set1_ps(c.fx), v), _mm_mul_ps(_mm_set1_ps(1 - c.fx), v));
  for (int i = 0; i < 4; ++i) {
    float* d = cells + BackProjector::kCellFloats * c.corner[i];
    _mm256_storeu_ps(d, _mm256_fmadd_ps(_mm256_set1_ps(wzy[i]), along_x, _mm256_loadu_ps(d)));
  }
#else
  const float x0[3] = {(1 - c.fx) * vr, (1 - c.fx) * vi, (1 - c.fx) * w}, x1[3] = {c.fx * vr, c.fx * vi, c.fx * w};
  for (int i = 0; i < 4; ++i) {
    float* d = cells + BackProjector::kCellFloats * c.corner[i];
    for (int j = 0; j < 3; ++j) d[j] += wzy[i] * x0[j], d[4 + j] += wzy[i] * x1[j];
  }
#endif
}
}  // namespace

void Projector::project(const geometry::Mat3& a, Complex* out, int out_n, double max_radius) const {
  const int h = out_n / 2 + 1;
  const double r_max = std::min(max_radius, n_ / 2.0 - 1.0);
  const double r2_max = r_max * r_max;
  std::fill(out, out + image::half_size(out_n, out_n), Complex{});
  const SliceFrame s(a, pad_, m_, hm_);
  const Complex* const grid = this->grid().data();
  const int ky_limit = std::min(out_n / 2, static_cast<int>(std::ceil(r_max)));
  for (int ky = -ky_limit; ky <= ky_limit; ++ky) {
    if (ky >= out_n / 2) continue;
    Complex* row = out + static_cast<std::size_t>(image::storage_index(ky, out_n)) * h;
    const float fky = static_cast<float>(ky);
    for (int kx = 0; kx < h; ++kx) {
      if (kx * kx + ky * ky > r2_max) break;
      const float fkx = static_cast<float>(kx);
      row[kx] = interpolate(grid, s.cell(s.ax * fkx + s.bx * fky, s.ay * fkx + s.by * fky, s.az * fkx + s.bz * fky));
    }
  }
}

void Projector::sample(const geometry::Mat3& a, const FrequencyList& list, Complex* out) const {
  const SliceFrame s(a, pad_, m_, hm_);
  const Complex* const grid = this->grid().data();
  std::size_t f = 0;
#ifdef EMCRYO_TRILINEAR_SIMD
  if (fits_cells8(m_, s.hm)) {
    Cells8 cells;
    const auto along = [&](float x, float y, __m256 kx, __m256 ky) { return _mm256_fmadd_ps(_mm256_set1_ps(x), kx, _mm256_mul_ps(_mm256_set1_ps(y), ky)); };
    for (; f + 8 <= list.size(); f += 8) {
      const __m256 kx = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(list.kx.data() + f)));
      const __m256 ky = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(list.ky.data() + f)));
      cells8_at(along(s.ax, s.bx, kx, ky), along(s.ay, s.by, kx, ky), along(s.az, s.bz, kx, ky), m_, s.hm, s.plane, cells);
      for (int i = 0; i < 8; ++i) out[f + static_cast<std::size_t>(i)] = interpolate(grid, cells[i]);
    }
  }
#endif
  for (; f < list.size(); ++f) {
    const float kx = static_cast<float>(list.kx[f]), ky = static_cast<float>(list.ky[f]);
    out[f] = interpolate(grid, s.cell(s.ax * kx + s.bx * ky, s.ay * kx + s.by * ky, s.az * kx + s.bz * ky));
  }
}

BackProjector::BackProjector(int n, int padding)
    : n_(n), pad_(padding), m_(n * padding), hm_(n * padding / 2 + 1),
      cells_(kCellFloats * image::half_size(m_, m_, m_)) {}

template <class F>
void BackProjector::for_each_reached_row(int reach, F row, bool parallel) const {
  if (reach < 0) return;
  const auto run = [&](int z, int y, int count) {
    row((static_cast<std::size_t>(z) * m_ + static_cast<std::size_t>(y)) * hm_, static_cast<std::size_t>(count));
  };
  // A trilinear corner lies within sqrt(3) of its point, so the ball of radius reach + 1 holds
  // every voxel an insert touched: about half the cube, for every clear, fold and message. Rows
  // are visited once each: signed frequencies -m/2 .. m/2 - 1.
  const int r = reach + 1, lo = std::max(-r, -m_ / 2), hi = std::min(r, m_ / 2 - 1);
#pragma omp parallel for schedule(static) if (parallel && !omp_in_parallel())
  for (int kz = lo; kz <= hi; ++kz)
    for (int ky = lo; ky <= hi; ++ky) {
      const long long left = static_cast<long long>(r) * r - ky * ky - kz * kz;
      if (left < 0) continue;
      run(image::storage_index(kz, m_), image::storage_index(ky, m_),
          static_cast<int>(std::min<long long>(static_cast<long long>(std::sqrt(static_cast<double>(left))), hm_ - 1)) + 1);
    }
}

template <class F>
void BackProjector::for_each_cube_row(int reach, F row) const {
  if (reach < 0) return;
  const auto count = static_cast<std::size_t>(std::min(reach, hm_ - 1) + 1);
  const auto run = [&](int z, int y) { row((static_cast<std::size_t>(z) * m_ + static_cast<std::size_t>(y)) * hm_, count); };
  if (2 * reach + 1 >= m_) {
    for (int z = 0; z < m_; ++z)
      for (int y = 0; y < m_; ++y) run(z, y);
    return;
  }
  for (int kz = -reach; kz <= reach; ++kz)
    for (int ky = -reach; ky <= reach; ++ky) run(image::storage_index(kz, m_), image::storage_index(ky, m_));
}

void BackProjector::clear() {
  // In parallel where the caller is not: a chunk's lanes are cleared and folded between its
  // inserts, while the other threads would otherwise wait.
  for_each_reached_row(reach_, [&](std::size_t first, std::size_t count) {
    std::fill_n(cells_.begin() + static_cast<std::ptrdiff_t>(kCellFloats * first), kCellFloats * count, 0.0f);
  }, true);
  reach_ = -1;
}

void BackProjector::put(mpi::Message& message) const {
  std::vector<Complex> data;
  std::vector<float> weight;
  for_each_reached_row(reach_, [&](std::size_t first, std::size_t count) {
    for (std::size_t i = first; i < first + count; ++i) {
      const float* c = cell(i);
      data.emplace_back(c[0], c[1]), weight.push_back(c[2]);
    }
  });
  message.put(reach_), message.put(data), message.put(weight);
}

void BackProjector::read_reached(mpi::Message& message, bool add) {
  const int reach = message.get<int>();
  const auto data = message.get_vector<Complex>();
  const auto weight = message.get_vector<float>();
  if (data.size() != weight.size()) fail("internal error: back-projection sums of another size");
  merge_reached(reach, data.data(), weight.data(), data.size(), add);
}

void BackProjector::merge_reached(int reach, const Complex* data, const float* weight, std::size_t size, bool add) {
  std::size_t at = 0;
  for_each_reached_row(reach, [&](std::size_t first, std::size_t count) {
    if (at + count > size) fail("internal error: back-projection sums of another size");
    for (std::size_t i = 0; i < count; ++i) {
      float* c = cell(first + i);
      c[0] = add ? c[0] + data[at + i].real() : data[at + i].real();
      c[1] = add ? c[1] + data[at + i].imag() : data[at + i].imag();
      c[2] = add ? c[2] + weight[at + i] : weight[at + i];
    }
    at += count;
  });
  reach_ = std::max(reach_, reach);
}

int BackProjector::reach_for(int n, int padding, double max_radius) {
  // Trilinear weights reach one voxel past the padded radius.
  return static_cast<int>(std::ceil(std::min(max_radius, n / 2.0 - 1.0) * padding)) + 1;
}

std::size_t BackProjector::reached_size(int reach) const {
  std::size_t size = 0;
  for_each_cube_row(reach, [&](std::size_t, std::size_t count) { size += count; });
  return size;
}

void BackProjector::add_reached(int reach, const float* cells, int stride) {
  // The cube's voxels outside the ball put() moves hold zeros (no insert reaches them).
  std::size_t at = 0;
  const auto step = static_cast<std::size_t>(stride);
  for_each_cube_row(reach, [&](std::size_t first, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      const float* from = cells + (at + i) * step;
      float* c = cell(first + i);
      c[0] += from[0], c[1] += from[1], c[2] += from[2];
    }
    at += count;
  });
  reach_ = std::max(reach_, reach);
}

void BackProjector::add_from(mpi::Message& message) { read_reached(message, true); }

void BackProjector::take_from(mpi::Message& message) {
  clear();
  read_reached(message, false);
}

void BackProjector::add(const BackProjector& other) {
  for_each_reached_row(other.reach_, [&](std::size_t first, std::size_t count) {
    for (std::size_t i = kCellFloats * first; i < kCellFloats * (first + count); ++i) cells_[i] += other.cells_[i];
  }, true);  // in parallel where the caller is not, as clear()
  reach_ = std::max(reach_, other.reach_);
}

void BackProjector::add_and_clear(std::vector<BackProjector>& lanes) {
  // Lanes nothing was inserted into hold zeros: they are left out (adding them would change nothing).
  std::vector<BackProjector*> used;
  int reach = -1;
  for (auto& lane : lanes) {
    if (lane.n_ != n_ || lane.pad_ != pad_) fail("BackProjector: lanes of another grid (internal error)");
    if (lane.reach_ >= 0) used.push_back(&lane), reach = std::max(reach, lane.reach_);
  }
  for_each_reached_row(reach, [&](std::size_t first, std::size_t count) {
    for (std::size_t i = kCellFloats * first; i < kCellFloats * (first + count); ++i) {
      float v = used[0]->cells_[i];
      used[0]->cells_[i] = 0.0f;
      for (std::size_t l = 1; l < used.size(); ++l) v += used[l]->cells_[i], used[l]->cells_[i] = 0.0f;
      cells_[i] += v;
    }
  }, true);
  for (auto* lane : used) lane->reach_ = -1;
  reach_ = std::max(reach_, reach);
}

void BackProjector::insert(const geometry::Mat3& a, const Complex* data, const float* weight, int in_n,
                           double max_radius, float weight_scale) {
  insert_all({Slice{a, data, weight_scale}}, weight, in_n, max_radius);
}

void BackProjector::insert_all(const std::vector<Slice>& slices, const float* weight, int in_n, double max_radius) {
  if (slices.empty()) return;
  const int h = in_n / 2 + 1;
  const double r_max = std::min(max_radius, n_ / 2.0 - 1.0);
  const double r2_max = r_max * r_max;
  std::vector<SliceFrame> frames;
  frames.reserve(slices.size());
  for (const Slice& slice : slices) frames.emplace_back(slice.a, pad_, m_, hm_);
  const int ky_limit = std::min(in_n / 2 - 1, static_cast<int>(std::ceil(r_max)));
  reach_ = std::max(reach_, reach_for(n_, pad_, max_radius));
  float* const sums = cells_.data();
#ifdef EMCRYO_TRILINEAR_SIMD
  const bool eight_at_once = fits_cells8(m_, frames.front().hm);
  Cells8 cells;
  const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
#endif
  for (int ky = -ky_limit; ky <= ky_limit; ++ky) {
    const std::size_t row = static_cast<std::size_t>(image::storage_index(ky, in_n)) * h;
    const float fky = static_cast<float>(ky);
    // The kx = 0 column holds both ky and -ky; insert only ky >= 0 there to avoid counting twice
    // (Hermitian symmetry of the 3D grid is restored before reconstruction).
    const int first = ky < 0 ? 1 : 0;
    int end = first;
    while (end < h && end * end + ky * ky <= r2_max) ++end;
#ifdef EMCRYO_TRILINEAR_SIMD
    if (eight_at_once) {
      for (int kx = first; kx < end; kx += 8) {
        const __m256 k = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(kx)), lane);
        const int count = std::min(8, end - kx);
        for (std::size_t o = 0; o < slices.size(); ++o) {
          const SliceFrame& s = frames[o];
          cells8_at(_mm256_fmadd_ps(_mm256_set1_ps(s.ax), k, _mm256_set1_ps(s.bx * fky)),
                    _mm256_fmadd_ps(_mm256_set1_ps(s.ay), k, _mm256_set1_ps(s.by * fky)),
                    _mm256_fmadd_ps(_mm256_set1_ps(s.az), k, _mm256_set1_ps(s.bz * fky)), m_, s.hm, s.plane, cells);
          const Complex* data = slices[o].data;
          const float scale = slices[o].weight_scale;
          for (int i = 0; i < count; ++i) {
            const Cell c = cells[i];
            const std::size_t at = row + static_cast<std::size_t>(kx + i);
            spread(sums, c, data[at].real(), data[at].imag() * c.sign, weight[at] * scale);
          }
        }
      }
      continue;
    }
#endif
    for (int kx = first; kx < end; ++kx) {
      const float fkx = static_cast<float>(kx);
      for (std::size_t o = 0; o < slices.size(); ++o) {
        const SliceFrame& s = frames[o];
        const Cell c = s.cell(s.ax * fkx + s.bx * fky, s.ay * fkx + s.by * fky, s.az * fkx + s.bz * fky);
        const Complex* data = slices[o].data;
        spread(sums, c, data[row + kx].real(), data[row + kx].imag() * c.sign, weight[row + kx] * slices[o].weight_scale);
      }
    }
  }
}

void BackProjector::enforce_hermitian(std::vector<Complex>& data, std::vector<float>& weight) const {
  // On the kx = 0 plane, (0, ky, kz) and (0, -ky, -kz) are conjugate copies of one coefficient:
  // pool what landed on either. Each pair is pooled by its first element's thread only.
#pragma omp parallel for schedule(static)
  for (int z = 0; z < m_; ++z)
    for (int y = 0; y < m_; ++y) {
      const int zm = image::storage_index(-image::wrap_frequency(z, m_), m_);
      const int ym = image::storage_index(-image::wrap_frequency(y, m_), m_);
      const std::size_t i = (static_cast<std::size_t>(z) * m_ + y) * hm_;
      const std::size_t j = (static_cast<std::size_t>(zm) * m_ + ym) * hm_;
      if (j < i) continue;
      if (i == j) {
        data[i] = Complex(data[i].real(), 0.0f);
        continue;
      }
      const Complex sum = data[i] + std::conj(data[j]);
      const float wsum = weight[i] + weight[j];
      data[i] = sum;
      data[j] = std::conj(sum);
      weight[i] = weight[j] = wsum;
    }
}

void BackProjector::split_grids(std::vector<Complex>& data, std::vector<float>& weight) const {
  const std::size_t size = cells_.size() / kCellFloats;
  data.resize(size), weight.resize(size);
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < size; ++i) {
    const float* c = cell(i);
    data[i] = Complex(c[0], c[1]), weight[i] = c[2];
  }
}

std::vector<double> BackProjector::mean_weight_per_shell() const {
  const auto shells = static_cast<std::size_t>(n_ / 2 + 1);
  // Each plane's sums on its own, then the planes in order: the same sums with any thread count.
  std::vector<double> plane_sum(static_cast<std::size_t>(m_) * shells), plane_count(plane_sum.size());
#pragma omp parallel for schedule(static)
  for (int z = 0; z < m_; ++z) {
    const int kz = image::wrap_frequency(z, m_);
    double* sum = plane_sum.data() + static_cast<std::size_t>(z) * shells;
    double* count = plane_count.data() + static_cast<std::size_t>(z) * shells;
    std::size_t idx = static_cast<std::size_t>(z) * static_cast<std::size_t>(m_) * static_cast<std::size_t>(hm_);
    for (int y = 0; y < m_; ++y) {
      const int ky = image::wrap_frequency(y, m_);
      for (int x = 0; x < hm_; ++x, ++idx) {
        const auto s = static_cast<std::size_t>(std::lround(std::sqrt(x * x + ky * ky + kz * kz) / pad_));
        if (s >= shells) continue;
        sum[s] += cells_[kCellFloats * idx + 2];
        count[s] += 1;
      }
    }
  }
  std::vector<double> sum(shells), count(shells);
  for (int z = 0; z < m_; ++z)
    for (std::size_t s = 0; s < shells; ++s)
      sum[s] += plane_sum[static_cast<std::size_t>(z) * shells + s], count[s] += plane_count[static_cast<std::size_t>(z) * shells + s];
  for (std::size_t s = 0; s < sum.size(); ++s) sum[s] = count[s] > 0 ? sum[s] / count[s] : 0;
  return sum;
}

std::vector<float> BackProjector::reconstruct(const std::vector<double>& regularisation) const {
  std::vector<Complex> data;
  std::vector<float> weight;
  split_grids(data, weight);
  enforce_hermitian(data, weight);
  const auto mean_weight = mean_weight_per_shell();
  const int shells = n_ / 2 + 1;
  const double r_max = n_ / 2.0 - 1.0;
  // The data divided by their weights, in place (planes over the threads): zero beyond r_max or
  // without weight.
#pragma omp parallel for schedule(static)
  for (int z = 0; z < m_; ++z) {
    const int kz = image::wrap_frequency(z, m_);
    std::size_t idx = static_cast<std::size_t>(z) * static_cast<std::size_t>(m_) * static_cast<std::size_t>(hm_);
    for (int y = 0; y < m_; ++y) {
      const int ky = image::wrap_frequency(y, m_);
      for (int x = 0; x < hm_; ++x, ++idx) {
        const double r = std::sqrt(x * x + ky * ky + kz * kz) / pad_;
        double w = 0;
        if (r <= r_max) {
          const auto s = static_cast<std::size_t>(std::min<long>(std::lround(r), shells - 1));
          w = weight[idx];
          if (!regularisation.empty()) w += regularisation[s];
          w = std::max(w, mean_weight[s] / 1000.0);
        }
        data[idx] = w > 0 ? data[idx] / static_cast<float>(w) : Complex{};
      }
    }
  }
  std::vector<float> padded = image::fft_inverse_3d(std::move(data), m_);
  std::vector<float> volume(static_cast<std::size_t>(n_) * n_ * n_);
  for_each_centred_voxel(n_, m_, [&](std::size_t inner, std::size_t outer, float correction) { volume[inner] = padded[outer] / correction; });
  return volume;
}

}  // namespace emcryo::em
