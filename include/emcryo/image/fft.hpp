// Real <-> complex FFTs (FFTW, single precision) with one centre convention for the whole program.
//
// Convention: a real image or volume of even size N has its origin at pixel N/2 (RELION's centre).
// Its transform is stored as FFTW's half grid, (N/2+1) values along x (kx = 0..N/2), full along y
// and z with wrap-around (index j means k = j for j <= N/2, else j - N). The transform is taken
// *about the centre pixel*: forward = FFT of the image with its centre moved to index 0, so a
// centred, symmetric object has a real transform. Forward is unnormalized, inverse scales by 1/N^d,
// which makes the projection-slice theorem exact: the 2D forward transform of a sum along z is the
// kz = 0 plane of the 3D forward transform.
#pragma once
#include <complex>
#include <cstddef>
#include <vector>

namespace emcryo::image {

using Complex = std::complex<float>;

/// Half-grid element count for a 2D transform of nx x ny (or 3D with nz).
inline std::size_t half_size(int nx, int ny, int nz = 1) {
  return static_cast<std::size_t>(nx / 2 + 1) * static_cast<std::size_t>(ny) * static_cast<std::size_t>(nz);
}
/// Signed frequency index for storage index j of an axis of length n.
inline int wrap_frequency(int j, int n) { return j <= n / 2 ? j : j - n; }
/// Storage index for signed frequency k on an axis of length n.
inline int storage_index(int k, int n) { return k >= 0 ? k : k + n; }

/// Forward 2D transform about the centre pixel. Thread-safe; plans are made once per size.
void fft_forward_2d(const float* image, Complex* spectrum, int nx, int ny);
/// Inverse of fft_forward_2d (does not modify the input).
void fft_inverse_2d(const Complex* spectrum, float* image, int nx, int ny);
/// 3D versions; use FFTW's own threads (call them outside parallel regions).
void fft_forward_3d(const float* volume, Complex* spectrum, int nx, int ny, int nz);
void fft_inverse_3d(const Complex* spectrum, float* volume, int nx, int ny, int nz);

std::vector<Complex> fft_forward_2d(const std::vector<float>& image, int n);
std::vector<float> fft_inverse_2d(const std::vector<Complex>& spectrum, int n);
std::vector<Complex> fft_forward_3d(const std::vector<float>& volume, int n);
std::vector<float> fft_inverse_3d(const std::vector<Complex>& spectrum, int n);
/// The same, transforming `spectrum` in place of a copy (its values are lost).
std::vector<float> fft_inverse_3d(std::vector<Complex>&& spectrum, int n);

}  // namespace emcryo::image
