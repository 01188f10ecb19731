// The CTF against a hand evaluation of RELION's formula (src/ctf.h; see
// shared/reference/relion-notes.md section 2.4), written here independently of the library:
//   lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V)), V in volts
//   K1 = pi lambda, K2 = pi/2 Cs lambda^3 (Cs in Å), K3 = atan(Q0 / sqrt(1 - Q0^2)),
//   K4 = -B/4, K5 = phase shift (rad)
//   A = Q^T diag(-dU, -dV) Q with Q = [[c, s], [-s, c]] the rotation by -azimuth
//   gamma = K1 (Axx X^2 + 2 Axy X Y + Ayy Y^2) + K2 u^4 - K5 - K3
//   CTF = -sin(gamma) exp(K4 u^2) scale.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fft.hpp"

namespace {

using emcryo::image::Ctf;
using emcryo::image::CtfParams;
constexpr double kPi = std::numbers::pi;

// RELION's CTF::getCTF written out step by step with explicit 2x2 matrices.
double relion_ctf(const CtfParams& p, double X, double Y) {
  const double V = p.voltage * 1000;
  const double lambda = 12.2643247 / std::sqrt(V * (1 + 0.978466e-6 * V));
  const double Cs = p.cs * 1e7;
  const double K1 = kPi * lambda;
  const double K2 = kPi / 2 * Cs * lambda * lambda * lambda;
  const double Q0 = p.amplitude_contrast;
  const double K3 = std::atan(Q0 / std::sqrt(1 - Q0 * Q0));
  const double K4 = -p.bfactor / 4;
  const double K5 = p.phase_shift * kPi / 180;
  const double az = p.defocus_angle * kPi / 180;
  const double c = std::cos(az), s = std::sin(az);
  const double Q[2][2] = {{c, s}, {-s, c}};
  const double D[2] = {-p.defocus_u, -p.defocus_v};
  double A[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) A[i][j] = Q[0][i] * D[0] * Q[0][j] + Q[1][i] * D[1] * Q[1][j];  // Q^T D Q
  const double u2 = X * X + Y * Y, u4 = u2 * u2;
  const double gamma = K1 * (A[0][0] * X * X + 2 * A[0][1] * X * Y + A[1][1] * Y * Y) + K2 * u4 - K5 - K3;
  double ctf = -std::sin(gamma);
  if (K4 != 0) ctf *= std::exp(K4 * u2);
  return p.scale * ctf;
}

CtfParams astigmatic() {
  CtfParams p;
  p.defocus_u = 21000;
  p.defocus_v = 18500;
  p.defocus_angle = 37.5;
  p.voltage = 300;
  p.cs = 2.7;
  p.amplitude_contrast = 0.07;
  return p;
}

TEST(Ctf, WavelengthMatchesKnownValues) {
  EXPECT_NEAR(emcryo::image::electron_wavelength(300), 0.019687, 2e-6);
  EXPECT_NEAR(emcryo::image::electron_wavelength(200), 0.025079, 2e-6);
  EXPECT_NEAR(emcryo::image::electron_wavelength(100), 0.037014, 2e-6);
}

TEST(Ctf, MatchesHandEvaluationOfRelionFormula) {
  std::vector<CtfParams> cases;
  cases.push_back(CtfParams{});  // isotropic 1 µm, 300 kV
  cases.push_back(astigmatic());
  {
    CtfParams p = astigmatic();
    p.defocus_angle = 123;  // the U axis in the second quadrant
    p.voltage = 200;
    p.cs = 0.01;
    cases.push_back(p);
  }
  {
    CtfParams p = astigmatic();
    p.phase_shift = 90;  // Volta phase plate
    p.defocus_u = 5000, p.defocus_v = 4000;
    cases.push_back(p);
  }
  {
    CtfParams p = astigmatic();
    p.bfactor = 80;
    p.scale = 0.8;
    cases.push_back(p);
  }
  // Frequencies in 1/Å: along the axes, along the diagonal, at the astigmatism angle and beyond.
  const double f[][2] = {{0.0, 0.0}, {0.01, 0.0}, {0.0, 0.02}, {0.03, -0.04}, {-0.07, 0.05},
                         {0.11, 0.09}, {0.2, -0.13}, {0.0013, 0.0021}, {-0.25, -0.25}};
  for (std::size_t c = 0; c < cases.size(); ++c) {
    const Ctf ctf(cases[c]);
    for (const auto& q : f) {
      const double expected = relion_ctf(cases[c], q[0], q[1]);
      EXPECT_NEAR(ctf.value(q[0], q[1]), expected, 1e-9) << "case " << c << " at (" << q[0] << ", " << q[1] << ")";
    }
  }
}

TEST(Ctf, ZeroFrequencyEqualsAmplitudeContrast) {
  // gamma(0) = -K3 - K5, so CTF(0) = sin(K3 + K5): Q0 without a phase plate (positive, the
  // RELION sign), sqrt(1 - Q0^2) with a 90 degree phase shift.
  CtfParams p = astigmatic();
  EXPECT_NEAR(Ctf(p).value(0, 0), p.amplitude_contrast, 1e-12);
  EXPECT_NEAR(Ctf(p).value(0, 0), -std::sin(-std::atan(0.07 / std::sqrt(1 - 0.07 * 0.07))), 1e-12);
  p.phase_shift = 90;
  EXPECT_NEAR(Ctf(p).value(0, 0), std::sqrt(1 - 0.07 * 0.07), 1e-12);
  p.phase_shift = 0;
  p.amplitude_contrast = 0;
  EXPECT_NEAR(Ctf(p).value(0, 0), 0.0, 1e-12);
}

TEST(Ctf, FirstLobeIsPositiveInUnderfocus) {
  // Positive defocus = underfocus: CTF = sin(pi lambda df u^2 + K3) > 0 until the first zero.
  CtfParams p;
  p.defocus_u = p.defocus_v = 15000;
  const Ctf ctf(p);
  const double lambda = emcryo::image::electron_wavelength(300);
  const double first_zero = std::sqrt((kPi - std::asin(0.1)) / (kPi * lambda * 15000));  // Cs term ignored
  for (double u = 0.0; u < 0.95 * first_zero; u += first_zero / 50) EXPECT_GT(ctf.value(u, 0), 0.0) << u;
  EXPECT_LT(ctf.value(1.05 * first_zero, 0), 0.0);
}

TEST(Ctf, ZerosWithoutCsAndAmplitudeContrast) {
  // With Cs = 0 and Q0 = 0, CTF = sin(pi lambda df u^2): zero at u^2 = k / (lambda df).
  CtfParams p;
  p.defocus_u = p.defocus_v = 20000;
  p.cs = 0;
  p.amplitude_contrast = 0;
  const Ctf ctf(p);
  const double lambda = emcryo::image::electron_wavelength(300);
  for (int k = 1; k <= 4; ++k) {
    const double u = std::sqrt(k / (lambda * 20000));
    EXPECT_NEAR(ctf.value(u / std::sqrt(2.0), u / std::sqrt(2.0)), 0.0, 1e-9) << k;
    EXPECT_NEAR(std::abs(ctf.value(std::sqrt((k + 0.5) / (lambda * 20000)), 0)), 1.0, 1e-9) << k;
  }
}

TEST(Ctf, AstigmatismAngleSelectsTheDefocusUDirection) {
  // Along the direction at rlnDefocusAngle the CTF is that of defocus U; 90 degrees off, defocus V.
  for (double angle : {0.0, 30.0, 90.0, 145.0}) {
    CtfParams p;
    p.defocus_u = 24000;
    p.defocus_v = 16000;
    p.defocus_angle = angle;
    CtfParams pu = p, pv = p;
    pu.defocus_v = pu.defocus_u;
    pv.defocus_u = pv.defocus_v;
    const double a = angle * kPi / 180;
    for (double u : {0.02, 0.05, 0.12}) {
      const double ux = u * std::cos(a), uy = u * std::sin(a);
      EXPECT_NEAR(Ctf(p).value(ux, uy), Ctf(pu).value(ux, uy), 1e-9) << angle << " " << u;
      EXPECT_NEAR(Ctf(p).value(-uy, ux), Ctf(pv).value(-uy, ux), 1e-9) << angle << " " << u;
    }
    // Gamma is a quadratic form: point symmetric.
    EXPECT_NEAR(Ctf(p).gamma(0.03, -0.05), Ctf(p).gamma(-0.03, 0.05), 1e-12);
  }
}

TEST(Ctf, PhaseShiftEntersGammaLinearly) {
  CtfParams p = astigmatic();
  CtfParams q = p;
  q.phase_shift = 35;
  for (double x : {0.0, 0.04, 0.1})
    EXPECT_NEAR(Ctf(p).gamma(x, 0.02) - Ctf(q).gamma(x, 0.02), 35 * kPi / 180, 1e-12);
}

TEST(Ctf, BFactorIsAGaussianEnvelope) {
  CtfParams p = astigmatic();
  CtfParams q = p;
  q.bfactor = 120;
  for (double u : {0.01, 0.05, 0.1, 0.2}) {
    const double x = u * 0.6, y = u * 0.8;
    const double plain = Ctf(p).value(x, y);
    EXPECT_NEAR(Ctf(q).value(x, y), plain * std::exp(-120.0 / 4 * u * u), 1e-12) << u;
  }
  q.bfactor = 0;
  q.scale = -2;
  EXPECT_NEAR(Ctf(q).value(0.07, 0.01), -2 * Ctf(p).value(0.07, 0.01), 1e-12);
}

TEST(Ctf, HalfGridSamplesFrequenciesOfTheBox) {
  // Element (row j, column i) is the CTF at (i, wrap(j)) / (n * pixel).
  const CtfParams p = astigmatic();
  const int n = 64;
  const double pixel = 1.7;
  const auto grid = emcryo::image::ctf_half_grid(p, n, pixel);
  ASSERT_EQ(grid.size(), emcryo::image::half_size(n, n));
  const int h = n / 2 + 1;
  for (int j = 0; j < n; j += 3)
    for (int i = 0; i < h; i += 2) {
      const double fx = i / (n * pixel), fy = emcryo::image::wrap_frequency(j, n) / (n * pixel);
      ASSERT_NEAR(grid[static_cast<std::size_t>(j) * h + i], relion_ctf(p, fx, fy), 1e-6) << i << "," << j;
    }
}

}  // namespace
