// Operations on half-grid spectra (see fft.hpp) and on real images: cropping and padding in
// Fourier space, shifts as phase ramps, filters, masks, FSC and resolution.
#pragma once
#include <vector>

#include "emcryo/image/fft.hpp"

namespace emcryo::image {

/// Copies the frequencies |kx|,|ky| < min(n_in, n_out)/2 of a 2D half grid into a grid of another
/// size (Fourier cropping when n_out < n_in, zero padding when larger). Values are unnormalized
/// transforms, so to keep real-space pixel values, scale by (n_out/n_in)^2 yourself if needed.
void resize_half_grid_2d(const Complex* in, int n_in, Complex* out, int n_out);
void resize_half_grid_3d(const Complex* in, int n_in, Complex* out, int n_out);

/// Real-space volume resampled to another box by Fourier cropping/padding (same physical extent,
/// pixel size scales by n_in/n_out); values preserved.
std::vector<float> resample_volume(const std::vector<float>& volume, int n_in, int n_out);
/// A cubic map brought to another pixel size and box: Fourier crop/pad to the new sampling, then
/// a centred crop or zero-pad in real space to `n_out`.
std::vector<float> rescale_volume(const std::vector<float>& volume, int n_in, double pixel_in, int n_out,
                                  double pixel_out);
std::vector<float> resample_image(const std::vector<float>& image, int n_in, int n_out);

/// Multiplies a 2D spectrum by the phase ramp of a real-space shift (dx, dy) in pixels:
/// the result is the transform of image(x - dx, y - dy).
void shift_half_grid_2d(Complex* spectrum, int n, double dx, double dy);
/// sum += weight x (spectrum shifted by (dx, dy), as shift_half_grid_2d) at |k| <= max_radius; the
/// rest of `sum` is left as it is. For weighted sums over many shifts (a back-projection
/// marginalised over hypotheses): no copy of the spectrum per shift, and only the frequencies used.
void add_shifted_half_grid_2d(const Complex* spectrum, int n, double dx, double dy, float weight, double max_radius, Complex* sum);

/// Shell index round(|k|) for each half-grid element of a 2D/3D grid.
std::vector<int> shell_index_2d(int n);
std::vector<int> shell_index_3d(int n);

/// Low-pass with a raised-cosine edge `edge_shells` wide centred on `cutoff_shell`.
void lowpass_half_grid_2d(Complex* spectrum, int n, double cutoff_shell, double edge_shells = 2);
void lowpass_half_grid_3d(Complex* spectrum, int n, double cutoff_shell, double edge_shells = 2);
/// Real-space volume low-passed to a resolution in Å.
std::vector<float> lowpass_volume(const std::vector<float>& volume, int n, double pixel_size,
                                  double resolution_angstrom);

/// Soft circular (2D) / spherical (3D) mask about the centre pixel N/2: 1 inside `radius`, a
/// raised cosine over `edge` pixels, 0 outside. Masking fills the outside with `background`.
std::vector<float> soft_round_mask(int n, int dims, double radius, double edge);
void apply_mask(float* data, const std::vector<float>& mask, float background = 0);

/// Fourier shell correlation per shell (shell 0 .. n/2) between two maps' spectra.
std::vector<double> fsc_3d(const Complex* a, const Complex* b, int n);
std::vector<double> fsc_3d(const std::vector<float>& map_a, const std::vector<float>& map_b, int n);
/// Resolution (Å) where the FSC first drops below `threshold` (interpolated); Nyquist if never.
double resolution_at(const std::vector<double>& fsc, double threshold, int n, double pixel_size);
/// Resolution in Å of shell s in a box of n pixels.
inline double shell_resolution(double shell, int n, double pixel_size) {
  return shell > 0 ? n * pixel_size / shell : 999.0;
}

/// Mean and standard deviation of an array.
void mean_stddev(const float* data, std::size_t count, double& mean, double& stddev);
/// Normalized cross-correlation of two equally sized arrays.
double correlation(const float* a, const float* b, std::size_t count);

}  // namespace emcryo::image
