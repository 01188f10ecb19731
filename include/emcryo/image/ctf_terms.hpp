// The CTF's formula, once, for the host (image::Ctf) and for device code (src/gpu, which computes
// CTF grids of particle batches on the GPU): the same doubles through the same expressions.
#pragma once
#include <math.h>

#if defined(__CUDACC__)
#define EMCRYO_HOST_DEVICE __host__ __device__
#else
#define EMCRYO_HOST_DEVICE
#endif

namespace emcryo::image {

/// One CTF's constants (see Ctf): astigmatic defocus form, wave aberration, amplitude contrast,
/// B-factor, phase shift, scale.
struct CtfTerms {
  double axx = 0, axy = 0, ayy = 0, k1 = 0, k2 = 0, k3 = 0, k4 = 0, k5 = 0, scale = 1;
};

/// Phase shift gamma at spatial frequency (fx, fy) in 1/Å.
EMCRYO_HOST_DEVICE inline double ctf_gamma(const CtfTerms& t, double fx, double fy) {
  const double u2 = fx * fx + fy * fy;
  return t.k1 * (t.axx * fx * fx + 2 * t.axy * fx * fy + t.ayy * fy * fy) + t.k2 * u2 * u2 - t.k5 - t.k3;
}

/// RELION's CTF = -sin(gamma), times the B-factor envelope and the scale.
EMCRYO_HOST_DEVICE inline double ctf_value(const CtfTerms& t, double fx, double fy) {
  double v = -::sin(ctf_gamma(t, fx, fy));
  if (t.k4 != 0) v *= ::exp(t.k4 * (fx * fx + fy * fy));
  return t.scale * v;
}

}  // namespace emcryo::image
