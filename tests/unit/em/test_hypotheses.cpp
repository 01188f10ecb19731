// The pose prior of local refinement.
#include <gtest/gtest.h>

#include "emcryo/em/hypotheses.hpp"

using namespace emcryo;

TEST(PosePrior, GaussianInsideTheExtentsExcludedBeyond) {
  em::PosePrior p;
  EXPECT_FALSE(p.active());
  EXPECT_EQ(p.log_prior(30, 10), 0);  // flat
  p.sigma_rotation = 15, p.sigma_shift = 2;
  EXPECT_TRUE(p.active());
  EXPECT_NEAR(p.log_prior(15, 0), -0.5, 1e-12);
  EXPECT_NEAR(p.log_prior(0, 4), -2.0, 1e-12);
  EXPECT_NEAR(p.log_prior(15, 4), -2.5, 1e-12);  // the parts add up
  p.max_rotation = 45, p.max_shift = 5;
  EXPECT_NEAR(p.log_prior(45, 5), -4.5 - 3.125, 1e-9);  // on the edge: still inside
  EXPECT_LT(p.log_prior(46, 0), em::PosePrior::kExcluded / 2);
  EXPECT_LT(p.log_prior(0, 5.5), em::PosePrior::kExcluded / 2);
}
