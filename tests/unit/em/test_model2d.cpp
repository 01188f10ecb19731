// The 2D working-limit rule (em/model2d).
#include <gtest/gtest.h>

#include "emcryo/em/model2d.hpp"

using namespace emcryo;

namespace {

em::Class2DModel classes_with(const std::vector<int>& shells, const std::vector<double>& priors) {
  em::Class2DModel m;
  m.resolution_shell = shells;
  m.priors = priors;
  m.radius = 10;
  return m;
}

}  // namespace

// Many empty classes (shell 1: no resolution) must not pull the limit down: it follows the class
// holding the median particle. The old rule (median over classes) gave 1 + 3 = 4 px here.
TEST(Class2DWorkingRadius, EmptyClassesDoNotDragTheLimitDown) {
  std::vector<int> shells(10, 1);
  std::vector<double> priors(10, 0.0);
  for (int k = 0; k < 4; ++k) shells[static_cast<std::size_t>(k)] = 12, priors[static_cast<std::size_t>(k)] = 0.25;
  EXPECT_DOUBLE_EQ(em::class2d_working_radius(classes_with(shells, priors), 3, 31), 15);
}

// It is the median particle's class, not the best class: one large well-resolved class among
// smaller blurrier ones holding most particles does not set the limit.
TEST(Class2DWorkingRadius, FollowsTheMedianParticleNotTheBestClass) {
  const auto m = classes_with({20, 8, 9, 10}, {0.4, 0.2, 0.2, 0.2});
  EXPECT_DOUBLE_EQ(em::class2d_working_radius(m, 3, 31), 10 + 3);
  EXPECT_DOUBLE_EQ(em::class2d_working_radius(m, 3, 12), 12);   // within the highest limit
  EXPECT_DOUBLE_EQ(em::class2d_working_radius(classes_with({1, 1}, {0.5, 0.5}), 6, 31), 6);  // and the lowest
}
