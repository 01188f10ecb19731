// Map superposition: a map moved by a known rotation, shift and mirror is found again.
#include <gtest/gtest.h>

#include <cmath>

#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_align.hpp"

using namespace emcryo;

namespace {

/// An asymmetric test object: three Gaussian blobs of different sizes and weights (chiral).
std::vector<float> blobs(int n) {
  std::vector<float> v(static_cast<std::size_t>(n) * n * n, 0.0f);
  const double c = n / 2;
  const double centres[4][5] = {{4, 0, 0, 3.0, 1.0}, {-3, 5, 0, 2.5, 0.8}, {0, -2, 6, 2.0, 0.6}, {-2, -4, -3, 1.5, 0.5}};
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x)
        for (const auto& b : centres) {
          const double dx = x - c - b[0], dy = y - c - b[1], dz = z - c - b[2];
          v[(static_cast<std::size_t>(z) * n + y) * n + x] += static_cast<float>(b[4] * std::exp(-(dx * dx + dy * dy + dz * dz) / (2 * b[3] * b[3])));
        }
  return v;
}

}  // namespace

TEST(MapAlign, FindsRotationShiftAndHand) {
  const int n = 32;
  const auto truth = blobs(n);
  // The moving map: the truth mirrored, turned and shifted (the inverse of an alignment).
  image::MapAlignment move;
  move.rotation = geometry::euler_to_matrix({37, 71, -122});
  move.shift = {1.5, -2, 0.5};
  move.flipped = false;
  const auto moved = image::flip_hand(image::apply_alignment(truth, n, move), n);
  const auto found = image::align_map(moved, truth, n, 4.0, 15);
  EXPECT_TRUE(found.flipped);
  const auto aligned = image::apply_alignment(moved, n, found);
  EXPECT_GT(image::correlation(aligned.data(), truth.data(), truth.size()), 0.99);
  // The blobs hold little beyond 12 Å (sigma >= 1.5 voxels of 4 Å), where interpolation errors then dominate.
  EXPECT_LT(image::resolution_at(image::fsc_3d(aligned, truth, n), 0.5, n, 4.0), 12.0);
  auto other_hand = found;
  other_hand.flipped = false;
  EXPECT_LT(image::correlation(image::apply_alignment(moved, n, other_hand).data(), truth.data(), truth.size()), 0.9);
}

TEST(MapAlign, ShiftVolumeMovesTheCentreOfMass) {
  const int n = 32;
  const auto v = blobs(n);
  const auto before = image::centre_of_mass(v, n);
  const auto after = image::centre_of_mass(image::shift_volume(v, n, 1.5, -2, 0.25), n);
  EXPECT_NEAR(after.x - before.x, 1.5, 0.1);
  EXPECT_NEAR(after.y - before.y, -2, 0.1);
  EXPECT_NEAR(after.z - before.z, 0.25, 0.1);
}
