// core/mpi in one process: chunks that depend on the item count only, messages that read back
// what was written, and the chunk-ordered fold (issue 13; the multi-rank runs are in
// tests/integration/test_mpi.cpp).
#include <gtest/gtest.h>

#include <complex>

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
  EXPECT_EQ(mpi::Chunks(150).count(), 4);
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

TEST(MpiReduce, FoldsEveryChunkOnceInChunkOrder) {
  const mpi::Chunks chunks(1000);
  std::vector<int> computed, folded;
  double total = 0;
  mpi::reduce_in_chunk_order(
      chunks,
      [&](int c, mpi::Message& m) {
        computed.push_back(c);
        m.put(static_cast<double>(chunks.end(c) - chunks.begin(c)));
      },
      [&](int c, mpi::Message& m) {
        folded.push_back(c);
        total += m.get<double>();
      });
  std::vector<int> order(static_cast<std::size_t>(chunks.count()));
  for (int c = 0; c < chunks.count(); ++c) order[static_cast<std::size_t>(c)] = c;
  EXPECT_EQ(computed, order);
  EXPECT_EQ(folded, order);
  EXPECT_EQ(total, 1000.0);
}

}  // namespace
}  // namespace emcryo
