// How the CUDA backend cuts a group of per-particle requests for its scores kernel (host code:
// runs in any CUDA build, with or without a device).
#ifdef EMCRYO_HAVE_CUDA
#include <gtest/gtest.h>

#include <vector>

#include "gpu/many.hpp"

using namespace emcryo;

namespace {

std::vector<em::ScoreRequest> requests_of(int count, int rows, int templates) {
  std::vector<em::ScoreRequest> requests(static_cast<std::size_t>(count));
  for (auto& q : requests) q.row_count = rows, q.template_count = templates;
  return requests;
}

}  // namespace

// The tile shape that pads least: a local pass's 9 shifts fit 16-row tiles (one 16 x 64 tile for 53
// templates, where 32 x 32 needs two), 25 shifts fill 32-row tiles, 3 shifts 8-row ones.
TEST(ManyTiling, TilesShapedToTheRequests) {
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(120, 9, 53), 0, 120, 12000, 2112).rows, 16);
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(200, 25, 100), 0, 200, 6000, 2112).rows, 32);
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(100, 3, 200), 0, 100, 6000, 2112).rows, 8);
  EXPECT_EQ(gpu::many_tiles_of(9, 53, {16, 1, 0}), 1);
  EXPECT_EQ(gpu::many_tiles_of(9, 53, {32, 1, 0}), 2);
  EXPECT_EQ(gpu::many_tiles_of(33, 129, {8, 1, 0}), 5 * 2);
  // Forced rows are taken as given.
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(120, 9, 53), 0, 120, 12000, 2112, 32).rows, 32);
}

// Few tiles: the inner dimension is cut into whole 32-float steps of at least 512 floats, enough
// chunks for the blocks wanted and none past the end; many tiles (or a short inner dimension):
// no split.
TEST(ManyTiling, FewTilesSplitTheInnerDimension) {
  const auto few = gpu::choose_many_tiling(requests_of(120, 9, 53), 0, 120, 12000, 2112);  // 120 tiles
  EXPECT_EQ(few.split, 18);
  EXPECT_EQ(few.chunk % gpu::kManyChunkStep, 0);
  EXPECT_GE(few.chunk, 512);
  EXPECT_GE(few.split * few.chunk, 12000);
  EXPECT_LT((few.split - 1) * few.chunk, 12000);
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(3000, 9, 53), 0, 3000, 12000, 2112).split, 1);
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(10, 9, 53), 0, 10, 600, 2112).split, 1);  // under two chunks of 512
  // Only requests [begin, end) count.
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(3000, 9, 53), 2900, 3000, 12000, 2112).split, 21);  // 22 wanted, 576-float chunks
  // A forced split, capped at one 32-float step a chunk.
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(10, 9, 53), 0, 10, 600, 2112, 0, 3).split, 3);
  EXPECT_EQ(gpu::choose_many_tiling(requests_of(10, 9, 53), 0, 10, 64, 2112, 0, 3).split, 2);
}

// Each request's tiles cover its scores once: the listed tiles, in order, and their count.
TEST(ManyTiling, ListedTilesCoverEachScoreOnce) {
  for (const int rows : {8, 16, 32}) {
    const gpu::ManyTiling tiling{rows, 1, 0};
    std::vector<gpu::ManyTile> tiles(64);
    const int n = gpu::list_many_tiles(7, 37, 70, tiling, tiles.data());
    ASSERT_EQ(n, gpu::many_tiles_of(37, 70, tiling));
    std::vector<int> covered(37 * 70, 0);
    for (int t = 0; t < n; ++t) {
      EXPECT_EQ(tiles[static_cast<std::size_t>(t)].request, 7);
      for (int r = tiles[static_cast<std::size_t>(t)].row; r < std::min(37, tiles[static_cast<std::size_t>(t)].row + rows); ++r)
        for (int c = tiles[static_cast<std::size_t>(t)].column; c < std::min(70, tiles[static_cast<std::size_t>(t)].column + tiling.columns()); ++c)
          ++covered[static_cast<std::size_t>(r * 70 + c)];
    }
    for (int v : covered) EXPECT_EQ(v, 1);
  }
}
#endif
