// Core services: errors, atomic files, float16, BLAS start-up, progress and log lines.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <vector>
#include <filesystem>
#include <fstream>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/float16.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/zero_pages.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/core/runtime.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

TEST(CoreFiles, AtomicWriteReplacesWholeFileOrNothing) {
  const test::TempDir scratch("core_atomic");
  const fs::path& dir = scratch.path();
  write_text_file(dir / "a.txt", "first");
  EXPECT_EQ(read_text_file(dir / "a.txt"), "first");
  // A writer that fails half-way leaves the earlier file untouched and no temporary behind.
  EXPECT_THROW(write_atomically(dir / "a.txt",
                                [](const fs::path& temp) {
                                  std::ofstream(temp) << "half";
                                  fail("simulated failure");
                                }),
               Error);
  EXPECT_EQ(read_text_file(dir / "a.txt"), "first");
  int files = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++files;
  EXPECT_EQ(files, 1);
}

TEST(CoreFiles, MissingFileMessageNamesIt) {
  try {
    read_text_file("/nonexistent/x.star");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.star"), std::string::npos);
  }
}

TEST(CoreFloat16, RoundTripAndSpecialValues) {
  const float values[] = {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 1e-8f, INFINITY};
  std::uint16_t half[7];
  float back[7];
  float_to_half(values, half, 7);
  half_to_float(half, back, 7);
  EXPECT_EQ(half[1], 0x3C00);
  EXPECT_EQ(back[2], -2.5f);
  EXPECT_EQ(back[3], 65504.0f);
  EXPECT_NEAR(back[4], 6.1035156e-05f, 1e-9);
  EXPECT_TRUE(std::isinf(back[6]));
}

// The vector (F16C) conversion and the one-value-at-a-time one give the same bits: every half
// value, and floats around every rounding case (ties, subnormals, overflow, NaN).
TEST(CoreFloat16, VectorAndScalarConversionsAgreeBitForBit) {
  std::vector<std::uint16_t> halves(65536);
  for (std::size_t i = 0; i < halves.size(); ++i) halves[i] = static_cast<std::uint16_t>(i);
  std::vector<float> fast(halves.size()), slow(halves.size());
  half_to_float(halves.data(), fast.data(), halves.size());
  detail::half_to_float_without_f16c(halves.data(), slow.data(), halves.size());
  for (std::size_t i = 0; i < halves.size(); ++i) {
    if (std::isnan(slow[i])) {
      EXPECT_TRUE(std::isnan(fast[i])) << i;
      continue;
    }
    ASSERT_EQ(std::memcmp(&fast[i], &slow[i], 4), 0) << "half 0x" << std::hex << i;
  }
  // Each half value, its neighbours halfway to the next (ties), and just either side of them.
  std::vector<float> floats;
  for (std::size_t i = 0; i + 1 < halves.size(); ++i) {
    const float a = slow[i], b = slow[i + 1];
    if (!std::isfinite(a) || !std::isfinite(b)) continue;
    const float mid = a + (b - a) / 2;
    floats.insert(floats.end(), {a, mid, std::nextafter(mid, a), std::nextafter(mid, b)});
  }
  floats.insert(floats.end(), {1e-9f, -1e-9f, 70000.0f, -70000.0f, 65520.0f, INFINITY, -INFINITY, NAN});
  std::vector<std::uint16_t> fast_h(floats.size()), slow_h(floats.size());
  float_to_half(floats.data(), fast_h.data(), floats.size());
  detail::float_to_half_without_f16c(floats.data(), slow_h.data(), floats.size());
  for (std::size_t i = 0; i < floats.size(); ++i) {
    if (std::isnan(floats[i])) continue;
    ASSERT_EQ(fast_h[i], slow_h[i]) << floats[i];
  }
}

TEST(CoreRuntime, BlasUsesAStrongKernelOnThisCpu) {
  // The test binary starts through ensure_fast_runtime like the program: whatever the CPU offers,
  // OpenBLAS must not be left on an SSE-only core when AVX2/AVX-512 is available. A core the
  // machine's owner chose with OPENBLAS_CORETYPE (some hosts pin one because another misbehaves
  // there) is respected, and must be the one running.
  EXPECT_FALSE(runtime::blas_core_name().empty());
  if (const char* chosen = std::getenv("OPENBLAS_CORETYPE"); chosen && !std::getenv("EMCRYO_NO_BLAS_REEXEC")) {
    std::string want = chosen, have = runtime::blas_core_name();
    for (auto* s : {&want, &have}) std::transform(s->begin(), s->end(), s->begin(), [](unsigned char c) { return std::tolower(c); });
    EXPECT_EQ(have, want) << "OPENBLAS_CORETYPE=" << chosen << " but OpenBLAS runs " << runtime::blas_core_name();
  } else {
    EXPECT_EQ(runtime::preferred_blas_core(), "") << "OpenBLAS runs core " << runtime::blas_core_name();
  }
}

TEST(CoreRuntime, GlibcIsAskedForHugePagesWhereTheKernelGivesThemOnRequest) {
  // The test binary starts through ensure_fast_runtime like the program: where transparent huge
  // pages are given on request, the process runs with glibc told to ask for them (or with the
  // tunables its user set), unless EMCRYO_NO_HUGE_PAGES turned that off.
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string text;
  std::getline(mode, text);
  if (text.find("[madvise]") == std::string::npos) GTEST_SKIP() << "transparent huge pages: " << (text.empty() ? "unknown" : text);
  if (std::getenv("EMCRYO_NO_HUGE_PAGES")) GTEST_SKIP() << "EMCRYO_NO_HUGE_PAGES is set";
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  ASSERT_NE(tunables, nullptr);
  if (std::getenv("EMCRYO_REEXECUTED")) {
    EXPECT_NE(std::string(tunables).find("glibc.malloc.hugetlb=1"), std::string::npos) << tunables;
  }
}

TEST(CoreZeroPages, StartsAtZeroAndBehavesAsAVector) {
  // Value-initialised elements are the kernel's zero pages (never written); everything else is a
  // vector's usual behaviour: writes, copies (element by element), growth and moves.
  ZeroPagesVector<float> v(3 << 20);
  EXPECT_TRUE(std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; }));
  v[12345] = 2.5f, v.back() = -1.0f;
  const std::vector<float> copy(v.begin(), v.end());
  EXPECT_EQ(copy[12345], 2.5f);
  EXPECT_EQ(copy.back(), -1.0f);
  v.resize(v.size() + 1000);
  EXPECT_EQ(v[12345], 2.5f);
  EXPECT_EQ(v[(3 << 20) - 1], -1.0f);
  EXPECT_TRUE(std::all_of(v.end() - 1000, v.end(), [](float x) { return x == 0.0f; }));
  v.push_back(7.0f);
  EXPECT_EQ(v.back(), 7.0f);
  ZeroPagesVector<float> moved = std::move(v);
  EXPECT_EQ(moved[12345], 2.5f);
  ZeroPagesVector<float> copied = moved;
  EXPECT_EQ(copied, moved);
}

TEST(CoreRuntime, SetThreadsKeepsTheOpenMpTeam) {
  // OpenMP builds of OpenBLAS change OpenMP's team size when told to run single-threaded: the
  // engine's parallel regions must still get the threads asked for (or all, for 0).
  const int all = omp_get_num_procs(), before = runtime::threads();
  runtime::set_threads(2);
  EXPECT_EQ(runtime::threads(), 2);
  int team = 0;
#pragma omp parallel
#pragma omp single
  team = omp_get_num_threads();
  EXPECT_EQ(team, 2);
  runtime::set_threads(1);
  EXPECT_EQ(runtime::threads(), 1);
  omp_set_num_threads(all);
  runtime::set_threads(0);
  EXPECT_EQ(runtime::threads(), all);
  runtime::set_threads(before);
}

TEST(CoreRandom, StreamsDependOnlyOnSeedAndItem) {
  auto a = item_rng(7, 3), b = item_rng(7, 3), c = item_rng(7, 4);
  EXPECT_EQ(a(), b());
  EXPECT_NE(item_rng(7, 3)(), c());
}

TEST(CoreLog, LinesGoToTheLogFile) {
  const test::TempDir scratch("core_log");
  const fs::path& dir = scratch.path();
  log::set_file((dir / "run.log").string());
  log::info("iteration {} done", 3);
  log::warn("particle {} skipped", 5);
  log::set_file("");
  const auto text = read_text_file(dir / "run.log");
  EXPECT_NE(text.find("iteration 3 done"), std::string::npos);
  EXPECT_NE(text.find("warning: particle 5 skipped"), std::string::npos);
}

TEST(CoreProgress, PlainLinesWhenNotATerminal) {
  testing::internal::CaptureStderr();
  {
    Progress p("work", 100);
    for (int i = 0; i < 100; ++i) p.advance();
  }
  const std::string out = testing::internal::GetCapturedStderr();
  if (isatty(STDERR_FILENO)) GTEST_SKIP();
  EXPECT_NE(out.find("work: 100%"), std::string::npos) << out;
  EXPECT_NE(out.find("ETA"), std::string::npos);
  EXPECT_LE(std::count(out.begin(), out.end(), '\n'), 12);
}

TEST(Files, IterationNumbersFromFileNames) {
  EXPECT_EQ(emcryo::iteration_of_file_name("classes_it007.mrcs"), 7);
  EXPECT_EQ(emcryo::iteration_of_file_name("run_it025_data.star"), 25);
  EXPECT_EQ(emcryo::iteration_of_file_name("particles_it1234.star"), 1234);
  EXPECT_EQ(emcryo::iteration_of_file_name("particles.star"), -1);
  EXPECT_EQ(emcryo::iteration_of_file_name("edit_it.txt"), -1);
  EXPECT_EQ(emcryo::iteration_of_file_name("x_it12.star"), -1);  // fewer than 3 digits
}

TEST(Files, PruneKeepsTheLastAndEveryNthAndNeverCheckpoints) {
  const emcryo::test::TempDir dir("prune");
  for (int it = 1; it <= 10; ++it)
    for (const char* pattern : {"classes_it{:03}.mrcs", "particles_it{:03}.star", "model_it{:03}.star"})
      emcryo::test::write_text(dir / fmt::format(fmt::runtime(pattern), it), "x");
  for (const char* other : {"checkpoint.json", "checkpoint_it010.json", "particles.star", "run.log",
                            "particles_it003.star.tmp123"})
    emcryo::test::write_text(dir / other, "x");
  const auto deleted = emcryo::prune_iteration_files(dir.path(), 2, 4);
  // Kept: 9, 10 (last two), 4 and 8 (every 4th). Deleted: 1, 2, 3, 5, 6, 7, three files each.
  EXPECT_EQ(deleted.size(), 18u);
  for (int it : {4, 8, 9, 10}) EXPECT_TRUE(fs::exists(dir / fmt::format("model_it{:03}.star", it))) << it;
  for (int it : {1, 2, 3, 5, 6, 7}) EXPECT_FALSE(fs::exists(dir / fmt::format("classes_it{:03}.mrcs", it))) << it;
  for (const char* other : {"checkpoint.json", "checkpoint_it010.json", "particles.star", "run.log",
                            "particles_it003.star.tmp123"})
    EXPECT_TRUE(fs::exists(dir / other)) << other;
  // keep_last 0 still keeps the latest iteration (what --continue restarts from).
  (void)emcryo::prune_iteration_files(dir.path(), 0, 0);
  EXPECT_TRUE(fs::exists(dir / "classes_it010.mrcs"));
  EXPECT_FALSE(fs::exists(dir / "classes_it009.mrcs"));
}
