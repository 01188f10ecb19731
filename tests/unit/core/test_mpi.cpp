// core/mpi in one process: chunks that depend on the item count only, messages that read back
// what was written, and the chunk-ordered fold (issue 13; the multi-rank runs are in
// tests/integration/test_mpi.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstring>

#include "emcryo/core/error.hpp"
#include "emcryo/core/mpi.hpp"

namespace emcryo {
namespace {

TEST(MpiChunks, CoverEveryItemOnceInOrderAndDependOnTheCountOnly) {
  for (std::size_t count : {0u, 1u, 31u, 64u, 150u, 1000u, 100000u}) {
    const mpi::Chunks chunks(count);
    ASSERT_GE(chunks.count(), 1);
    EXPECT_LE(chunks.count(), 32);
    EXPECT_EQ(chunks.begin(0), 0u);
    EXPECT_EQ(chunks.end(chunks.count() - 1), count);
    for (int c = 0; c + 1 < chunks.count(); ++c) EXPECT_EQ(chunks.end(c), chunks.begin(c + 1));
    if (count >= 64) {
      for (int c = 0; c < chunks.count(); ++c) EXPECT_GE(chunks.end(c) - chunks.begin(c), 32u) << count;
    }
    EXPECT_EQ(chunks.owned_items(), count);  // one process owns every chunk
  }
  EXPECT_EQ(mpi::Chunks(40).count(), 1);
  EXPECT_EQ(mpi::Chunks(150).count(), 2);
  EXPECT_EQ(mpi::Chunks(1250).count(), 4);
  EXPECT_EQ(mpi::Chunks(100000).count(), 32);
}

TEST(MpiMessage, ReadsBackWhatWasWrittenAndAddsArraysInPlace) {
  mpi::Message m;
  m.put(7), m.put(2.5), m.put(std::vector<double>{1, 2, 3}), m.put(std::vector<std::complex<float>>{{1, 2}, {3, 4}});
  EXPECT_EQ(m.get<int>(), 7);
  EXPECT_EQ(m.get<double>(), 2.5);
  EXPECT_EQ(m.get_vector<double>(), (std::vector<double>{1, 2, 3}));
  std::vector<std::complex<float>> total{{10, 10}, {20, 20}};
  m.add_into(total);
  EXPECT_EQ(total[0], std::complex<float>(11, 12));
  EXPECT_EQ(total[1], std::complex<float>(23, 24));
  EXPECT_THROW(m.get<int>(), Error);  // past the end
}

TEST(MpiMessage, AnArrayOfAnotherLengthIsRefused) {
  mpi::Message m;
  m.put(std::vector<float>{1, 2, 3});
  std::vector<float> two(2);
  EXPECT_THROW(m.add_into(two), Error);
}

/// Chunk c's sums: values of very different sizes and signs, so that adding the chunks in
/// another order changes the total's bits.
std::vector<double> chunk_values(int c) {
  std::vector<double> v(64);
  for (std::size_t j = 0; j < v.size(); ++j) {
    const auto h = (static_cast<std::uint64_t>(c) * 2654435761u + j * 40503u) % 1000003u;
    v[j] = std::ldexp((h % 2 ? -1.0 : 1.0) * (1.0 + static_cast<double>(h % 997) / 997.0), static_cast<int>(h % 61) - 30);
  }
  return v;
}

// Also run under mpirun (tests/integration/test_mpi.cpp: MpiJobs.ReductionOnThreeRanks): rank 0
// alone folds, in chunk order, messages that the owners computed and sent (several in flight per
// rank), and every rank ends with rank 0's totals, bitwise those of one process.
TEST(MpiReduce, TheFoldingRankFoldsInChunkOrderAndEveryRankGetsTheSingleProcessTotals) {
  const mpi::Chunks chunks(1000);
  std::vector<double> expected(64, 0.0), reversed(64, 0.0);
  for (int c = 0; c < chunks.count(); ++c)
    for (std::size_t j = 0; j < expected.size(); ++j) expected[j] += chunk_values(c)[j];
  for (int c = chunks.count(); c-- > 0;)
    for (std::size_t j = 0; j < reversed.size(); ++j) reversed[j] += chunk_values(c)[j];
  ASSERT_NE(expected, reversed) << "the values must make the order visible";

  // Folded on rank 0, then on rank 1 (refine folds its second half there).
  for (int root : {0, 1}) {
    std::vector<int> computed, folded, owned, order;
    std::vector<int> results(1000, -1);
    std::vector<double> total(64, 0.0);
    for (int c = 0; c < chunks.count(); ++c) {
      order.push_back(c);
      if (chunks.owner(c) == mpi::rank()) owned.push_back(c);
    }
    mpi::ChunkReduction reduction;
    reduction.compute = [&](int c, mpi::Message& m) {
      computed.push_back(c);
      for (std::size_t i = chunks.begin(c); i < chunks.end(c); ++i) m.put(static_cast<int>(7 * i));
      m.put(chunk_values(c));
    };
    reduction.fold = [&](int c, mpi::Message& m) {
      folded.push_back(c);
      for (std::size_t i = chunks.begin(c); i < chunks.end(c); ++i) results[i] = m.get<int>();
      m.add_into(total);
    };
    reduction.share = [&](mpi::Message& m) { m.put(results), m.put(total); };
    reduction.take = [&](mpi::Message& m) { m.get_into(results), m.get_into(total); };
    mpi::reduce_in_chunk_order(chunks, reduction, root);

    EXPECT_EQ(computed, owned);
    EXPECT_EQ(folded, mpi::rank() == root % mpi::size() ? order : std::vector<int>{}) << "root " << root;
    EXPECT_EQ(std::memcmp(total.data(), expected.data(), total.size() * sizeof(double)), 0) << "rank " << mpi::rank() << ", root " << root;
    for (std::size_t i = 0; i < results.size(); ++i)
      ASSERT_EQ(results[i], static_cast<int>(7 * i)) << "item " << i << ", rank " << mpi::rank() << ", root " << root;
  }
}

TEST(MpiReduce, PiecesMadeOnceReachEveryRankAndGatherListsEveryRank) {
  // Piece i is made on rank i % size() alone; every rank ends with every piece.
  std::vector<int> made_here;
  const auto pieces = mpi::made_once<float>(5, [&](int i) {
    made_here.push_back(i);
    return std::vector<float>(static_cast<std::size_t>(i + 1), 0.5f * static_cast<float>(i));
  });
  for (int i : made_here) EXPECT_EQ(i % mpi::size(), mpi::rank());
  ASSERT_EQ(pieces.size(), 5u);
  for (std::size_t i = 0; i < pieces.size(); ++i) EXPECT_EQ(pieces[i], std::vector<float>(i + 1, 0.5f * static_cast<float>(i))) << i;
  const auto all = mpi::gather(10.0 + mpi::rank());
  if (!mpi::is_root()) {
    EXPECT_TRUE(all.empty());
    return;
  }
  ASSERT_EQ(all.size(), static_cast<std::size_t>(mpi::size()));
  for (std::size_t r = 0; r < all.size(); ++r) EXPECT_EQ(all[r], 10.0 + static_cast<double>(r));
}

TEST(MpiMessage, GetIntoReplacesAnArray) {
  mpi::Message m;
  m.put(std::vector<float>{-0.0f, 2});
  std::vector<float> into{5, 5};
  m.get_into(into);
  EXPECT_TRUE(std::signbit(into[0]));  // copied, not added: -0 stays -0
  EXPECT_EQ(into[1], 2.0f);
}

}  // namespace
}  // namespace emcryo
