// The SGD M-step: steps towards the minibatch reconstruction with momentum, constraints, centring.
#include <gtest/gtest.h>

#include <algorithm>

#include "emcryo/em/sgd_map.hpp"
#include "emcryo/image/map_align.hpp"

using namespace emcryo;

TEST(SgdMap, StepsTowardsTheBatchMapWithMomentum) {
  const int n = 16;
  // A batch holding one constant slice through the origin: its reconstruction is some map B.
  em::BackProjector batch(n);
  const std::size_t half = static_cast<std::size_t>(n / 2 + 1) * n;
  std::vector<em::Complex> data(half, em::Complex(0, 0));
  std::vector<float> weight(half, 1.0f);
  data[0] = em::Complex(100, 0);
  batch.insert(geometry::Mat3::identity(), data.data(), weight.data(), n, n / 2 - 1);
  const std::vector<float> zero(static_cast<std::size_t>(n) * n * n, 0.0f);
  em::SgdMap reference(zero, n);
  reference.step(batch, 0.0, 1.0, 0.0);
  const auto target = reference.map();  // rate 1 from zero: the batch map itself

  em::SgdMap m(zero, n);
  m.step(batch, 0.0, 0.5, 0.5);  // v = 0.5 B; V = 0.5 B
  for (std::size_t i = 0; i < zero.size(); i += 97) EXPECT_NEAR(m.map()[i], 0.5 * target[i], 1e-4 * std::abs(target[0]) + 1e-6);
  m.step(batch, 0.0, 0.5, 0.5);  // v = 0.25 B + 0.5 (B - 0.5 B) = 0.5 B; V = B
  for (std::size_t i = 0; i < zero.size(); i += 97) EXPECT_NEAR(m.map()[i], target[i], 1e-4 * std::abs(target[0]) + 1e-6);
}

TEST(SgdMap, ConstrainsAndCentres) {
  const int n = 16;
  std::vector<float> map(static_cast<std::size_t>(n) * n * n, 0.0f);
  map[(static_cast<std::size_t>(11) * n + 11) * n + 11] = 1;   // a point 3 voxels off centre on each axis
  map[(static_cast<std::size_t>(2) * n + 2) * n + 2] = -5;     // negative density
  em::SgdMap m(map, n);
  m.constrain(std::vector<float>(map.size(), 1.0f));
  EXPECT_GE(*std::min_element(m.map().begin(), m.map().end()), 0.0f);
  m.centre(0.5);
  const auto c = image::centre_of_mass(m.map(), n);
  EXPECT_NEAR(c.x, n / 2, 0.3);
  EXPECT_NEAR(c.y, n / 2, 0.3);
  EXPECT_NEAR(c.z, n / 2, 0.3);
}
