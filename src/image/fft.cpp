#include "emcryo/image/fft.hpp"

#include <fftw3.h>
#include <omp.h>

#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "emcryo/core/error.hpp"

namespace emcryo::image {

namespace {

// FFTW's planner is not thread-safe; execution with new arrays is. Plans are unaligned so any
// buffer works (the measured cost of FFTW_UNALIGNED is a few percent at our sizes).
std::mutex g_plan_mutex;

struct PlanKey {
  int nx, ny, nz;
  bool forward;
  auto operator<=>(const PlanKey&) const = default;
};

struct Plans {
  std::map<PlanKey, fftwf_plan> plans;
  ~Plans() = default;  // plans live for the process; FFTW frees them at exit
};
Plans& plans() {
  static Plans p;
  return p;
}

fftwf_plan get_plan(int nx, int ny, int nz, bool forward) {
  std::lock_guard lock(g_plan_mutex);
  static bool threads_ready = false;
  if (!threads_ready) {
    fftwf_init_threads();
    threads_ready = true;
  }
  PlanKey key{nx, ny, nz, forward};
  auto it = plans().plans.find(key);
  if (it != plans().plans.end()) return it->second;
  const std::size_t real_count = static_cast<std::size_t>(nx) * ny * nz;
  float* real = fftwf_alloc_real(real_count);
  fftwf_complex* cplx = fftwf_alloc_complex(half_size(nx, ny, nz));
  const unsigned flags = FFTW_ESTIMATE | FFTW_UNALIGNED;
  // 3D transforms are called outside parallel regions and get FFTW's threads; 2D ones run one per
  // OpenMP thread.
  fftwf_plan_with_nthreads(nz > 1 ? omp_get_max_threads() : 1);
  fftwf_plan plan;
  if (nz > 1)
    plan = forward ? fftwf_plan_dft_r2c_3d(nz, ny, nx, real, cplx, flags)
                   : fftwf_plan_dft_c2r_3d(nz, ny, nx, cplx, real, flags);
  else
    plan = forward ? fftwf_plan_dft_r2c_2d(ny, nx, real, cplx, flags)
                   : fftwf_plan_dft_c2r_2d(ny, nx, cplx, real, flags);
  fftwf_free(real);
  fftwf_free(cplx);
  if (!plan) fail("FFTW could not plan a transform of size {}x{}x{}", nx, ny, nz);
  plans().plans.emplace(key, plan);
  return plan;
}

// Moving the centre pixel N/2 to index 0 equals multiplying the transform by (-1)^(kx+ky+kz) for
// even sizes; doing it on the spectrum avoids a copy of the real data.
void checkerboard(Complex* spectrum, int nx, int ny, int nz) {
  const int hx = nx / 2 + 1;
  // 3D transforms are called outside parallel regions: their planes over the threads.
#pragma omp parallel for schedule(static) if (nz > 1)
  for (int z = 0; z < nz; ++z)
    for (int y = 0; y < ny; ++y) {
      Complex* row = spectrum + (static_cast<std::size_t>(z) * ny + y) * hx;
      // Negate where x + y + z is odd (storage and signed indices have the same parity for even
      // sizes; for nz = 1, z = 0).
      const int start = ((y + z) & 1) ^ 1;
      for (int x = start; x < hx; x += 2) row[x] = -row[x];
    }
}

void check_even(int nx, int ny, int nz) {
  if (nx % 2 || ny % 2 || (nz > 1 && nz % 2))
    fail("box size {}x{}x{} must be even", nx, ny, nz);
}

void forward(const float* in, Complex* out, int nx, int ny, int nz) {
  check_even(nx, ny, nz);
  fftwf_plan plan = get_plan(nx, ny, nz, true);
  // r2c does not modify its input, but FFTW's signature is not const.
  fftwf_execute_dft_r2c(plan, const_cast<float*>(in), reinterpret_cast<fftwf_complex*>(out));
  checkerboard(out, nx, ny, nz);
}

/// The inverse of `in`, which it overwrites (c2r destroys its input).
void inverse_in_place(Complex* in, float* out, int nx, int ny, int nz) {
  check_even(nx, ny, nz);
  fftwf_plan plan = get_plan(nx, ny, nz, false);
  checkerboard(in, nx, ny, nz);
  fftwf_execute_dft_c2r(plan, reinterpret_cast<fftwf_complex*>(in), out);
  const float scale = 1.0f / (static_cast<float>(nx) * ny * nz);
  const auto count = static_cast<std::ptrdiff_t>(nx) * ny * nz;
#pragma omp parallel for schedule(static) if (nz > 1)
  for (std::ptrdiff_t i = 0; i < count; ++i) out[i] *= scale;
}

void inverse(const Complex* in, float* out, int nx, int ny, int nz) {
  std::vector<Complex> copy(in, in + half_size(nx, ny, nz));
  inverse_in_place(copy.data(), out, nx, ny, nz);
}

}  // namespace

void fft_forward_2d(const float* image, Complex* spectrum, int nx, int ny) { forward(image, spectrum, nx, ny, 1); }
void fft_inverse_2d(const Complex* spectrum, float* image, int nx, int ny) { inverse(spectrum, image, nx, ny, 1); }
void fft_forward_3d(const float* v, Complex* s, int nx, int ny, int nz) { forward(v, s, nx, ny, nz); }
void fft_inverse_3d(const Complex* s, float* v, int nx, int ny, int nz) { inverse(s, v, nx, ny, nz); }

std::vector<Complex> fft_forward_2d(const std::vector<float>& image, int n) {
  std::vector<Complex> out(half_size(n, n));
  fft_forward_2d(image.data(), out.data(), n, n);
  return out;
}
std::vector<float> fft_inverse_2d(const std::vector<Complex>& spectrum, int n) {
  std::vector<float> out(static_cast<std::size_t>(n) * n);
  fft_inverse_2d(spectrum.data(), out.data(), n, n);
  return out;
}
std::vector<Complex> fft_forward_3d(const std::vector<float>& volume, int n) {
  std::vector<Complex> out(half_size(n, n, n));
  fft_forward_3d(volume.data(), out.data(), n, n, n);
  return out;
}
std::vector<float> fft_inverse_3d(const std::vector<Complex>& spectrum, int n) {
  std::vector<float> out(static_cast<std::size_t>(n) * n * n);
  fft_inverse_3d(spectrum.data(), out.data(), n, n, n);
  return out;
}
std::vector<float> fft_inverse_3d(std::vector<Complex>&& spectrum, int n) {
  if (spectrum.size() != half_size(n, n, n)) fail("inverse 3D transform: {} values for a {}^3 box", spectrum.size(), n);
  std::vector<float> out(static_cast<std::size_t>(n) * n * n);
  inverse_in_place(spectrum.data(), out.data(), n, n, n);
  return out;
}

}  // namespace emcryo::image
