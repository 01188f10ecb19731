// The FSC-based Wiener regulariser of 3D reconstructions.
#include <gtest/gtest.h>

#include "emcryo/em/regularizer.hpp"

using namespace emcryo;

TEST(Regularizer, WienerWeightIsMeanWeightOverSsnr) {
  const std::vector<double> weight{10, 10, 10, 10}, fsc{0.999, 0.5, 0.2, -0.3};
  const auto half = em::wiener_from_fsc(weight, fsc, 1), full = em::wiener_from_fsc(weight, fsc, 2);
  EXPECT_NEAR(half[1], 10.0, 1e-12);                  // FSC 0.5: SSNR 1
  EXPECT_NEAR(half[2], 10 * 0.8 / 0.2, 1e-9);         // SSNR 0.25
  EXPECT_NEAR(full[2], half[2] / 2, 1e-9);            // two halves joined: twice the SSNR
  EXPECT_NEAR(half[3], 10 * 0.999 / 1e-3, 1e-6);      // no signal: clamped, heavy regularisation
  EXPECT_LT(half[0], 0.011);                           // all signal: almost none
}

TEST(Regularizer, GlobalWienerDampsTheShellsWithoutSignal) {
  constexpr int n = 16;
  em::BackProjector sums(n);
  std::vector<em::Complex> slice(static_cast<std::size_t>(n / 2 + 1) * n, em::Complex(1, 0));
  std::vector<float> weight(slice.size(), 1.0f);
  sums.insert(geometry::Mat3::identity(), slice.data(), weight.data(), n, n / 2.0 - 1);
  std::vector<double> good(n / 2 + 1, 0.999), bad(n / 2 + 1, 0.001);
  const auto sharp = em::GlobalWiener(good, 1).reconstruct(sums), damped = em::GlobalWiener(bad, 1).reconstruct(sums);
  double a = 0, b = 0;
  for (std::size_t i = 0; i < sharp.size(); ++i) a += sharp[i] * sharp[i], b += damped[i] * damped[i];
  EXPECT_LT(b, 0.05 * a);  // measured: 0.013
}
