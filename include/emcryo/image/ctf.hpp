// The contrast transfer function with RELION's formula and sign (CTF = -sin(gamma)).
#pragma once
#include <vector>

#include "emcryo/image/ctf_terms.hpp"

namespace emcryo::image {

struct CtfParams {
  double defocus_u = 10000;     // Å, positive = underfocus (rlnDefocusU)
  double defocus_v = 10000;     // Å (rlnDefocusV)
  double defocus_angle = 0;     // degrees from the x axis to the U direction (rlnDefocusAngle)
  double voltage = 300;         // kV (rlnVoltage)
  double cs = 2.7;              // mm (rlnSphericalAberration)
  double amplitude_contrast = 0.1;  // fraction (rlnAmplitudeContrast)
  double bfactor = 0;           // Å^2 (rlnCtfBfactor)
  double scale = 1;             // rlnCtfScalefactor
  double phase_shift = 0;       // degrees (rlnPhaseShift)
};

/// Precomputed constants of one CTF; value(fx, fy) takes spatial frequencies in 1/Å.
class Ctf {
 public:
  explicit Ctf(const CtfParams& p);
  double value(double fx, double fy) const;
  double gamma(double fx, double fy) const;
  const CtfTerms& terms() const { return t_; }

 private:
  CtfTerms t_;
};

/// Fills a half grid (n/2+1 by n, see fft.hpp) with CTF values for an image of `n` pixels
/// whose Fourier spacing is 1/(n * pixel_size). For a Fourier-cropped or padded grid pass the
/// grid's own n and its own effective pixel size.
void ctf_half_grid(const CtfParams& p, int n, double pixel_size, float* out);
std::vector<float> ctf_half_grid(const CtfParams& p, int n, double pixel_size);
/// The same from a CTF's constants (Ctf::terms()).
void ctf_half_grid(const CtfTerms& t, int n, double pixel_size, float* out);

/// Electron wavelength in Å for an acceleration voltage in kV (relativistic).
double electron_wavelength(double voltage_kv);

}  // namespace emcryo::image
