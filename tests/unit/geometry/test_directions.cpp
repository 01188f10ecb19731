// Well-spread directions on the sphere (the views of `emcryo simulate --orientations views`).
#include <gtest/gtest.h>

#include <cmath>

#include "emcryo/geometry/directions.hpp"

namespace {

using namespace emcryo::geometry;

double closest_pair(const std::vector<Vec3>& d) {
  double closest = 180;
  for (std::size_t a = 0; a < d.size(); ++a)
    for (std::size_t b = a + 1; b < d.size(); ++b) closest = std::min(closest, angle_between(d[a], d[b]));
  return closest;
}

TEST(SpreadDirections, ComeCloseToTheTammesOptimum) {
  // Best known smallest angles (Tammes problem): 2 -> 180, 4 -> 109.5, 8 -> 74.9, 12 -> 63.4.
  // Independent random draws of 12 directions typically get within 10-20 degrees of each other.
  const std::pair<int, double> cases[] = {{2, 179}, {4, 108}, {8, 72}, {12, 62}, {30, 36}, {100, 18}};
  for (auto [count, floor] : cases)
    for (std::uint64_t seed : {1u, 7u, 12345u}) {
      const auto d = spread_directions(count, seed);
      ASSERT_EQ(d.size(), static_cast<std::size_t>(count));
      for (const auto& v : d) EXPECT_NEAR(v.x * v.x + v.y * v.y + v.z * v.z, 1.0, 1e-9);
      EXPECT_GE(closest_pair(d), floor) << count << " directions, seed " << seed;
    }
}

TEST(SpreadDirections, DeterministicPerSeedAndTurnedBySeed) {
  const auto a = spread_directions(12, 7), b = spread_directions(12, 7), c = spread_directions(12, 8);
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].x, b[i].x);
    EXPECT_EQ(a[i].z, b[i].z);
  }
  // Another seed: the same spacing, turned as a whole.
  EXPECT_GT(angle_between(a[0], c[0]), 1.0);
  EXPECT_NEAR(closest_pair(a), closest_pair(c), 1e-6);
  EXPECT_TRUE(spread_directions(0, 1).empty());
  EXPECT_EQ(spread_directions(1, 1).size(), 1u);
}

TEST(DirectionToEuler, ProjectsAlongTheDirection) {
  for (const auto& d : spread_directions(30, 3)) {
    const Mat3 a = euler_to_matrix(direction_to_euler(d));
    EXPECT_NEAR(a(2, 0), d.x, 1e-9);
    EXPECT_NEAR(a(2, 1), d.y, 1e-9);
    EXPECT_NEAR(a(2, 2), d.z, 1e-9);
  }
}

}  // namespace
