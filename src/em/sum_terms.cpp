// class2d's M-step sum terms grouped by template for a device backend (scoring_backend.hpp). A
// broad first iteration of 100,000 particles keeps ~10^9 terms: grouped on one thread, with their
// bounds checked, they held most of the GPU's "M-step sums" (16 s of a 26 s iteration on an H100).
#include <omp.h>

#include <algorithm>
#include <limits>

#include "emcryo/core/error.hpp"
#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::em {

void group_sum_terms(const SumTerm* terms, std::size_t count, int J, int B, int T, GroupedSumTerms& out) {
  const std::size_t templates = static_cast<std::size_t>(std::max(J, 0));
  const std::size_t chunks = std::clamp<std::size_t>(count / 65536, 1, static_cast<std::size_t>(omp_get_max_threads()));
  const auto chunk_begin = [&](std::size_t c) { return count * c / chunks; };
  // Per chunk and template: the count, then where the chunk's next entry of that template goes.
  std::vector<std::size_t> place(chunks * templates, 0);
  bool outside = false;
#pragma omp parallel for schedule(static) reduction(|| : outside)
  for (std::size_t c = 0; c < chunks; ++c) {
    std::size_t* n = place.data() + c * templates;
    for (std::size_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) {
      const SumTerm& t = terms[i];
      if (t.j < 0 || t.j >= J || t.b < 0 || t.b >= B || t.t < 0 || t.t >= T) {
        outside = true;
        continue;
      }
      ++n[static_cast<std::size_t>(t.j)];
    }
  }
  if (count > static_cast<std::size_t>(std::numeric_limits<int>::max())) fail("M-step sums: {} terms in one batch (internal error)", count);
  if (outside) fail("M-step sums: a term outside the batch's {} templates, {} particles and {} shifts (internal error)", J, B, T);
  // Template by template, chunk by chunk: each template's entries in the terms' order.
  out.rows.clear(), out.offsets.clear();
  std::size_t start = 0;
  for (std::size_t j = 0; j < templates; ++j) {
    const std::size_t first = start;
    for (std::size_t c = 0; c < chunks; ++c) {
      const std::size_t n = place[c * templates + j];
      place[c * templates + j] = start;
      start += n;
    }
    if (start == first) continue;
    out.rows.push_back(static_cast<int>(j)), out.offsets.push_back(static_cast<int>(first));
  }
  out.offsets.push_back(static_cast<int>(start));
  out.entries.resize(count);
#pragma omp parallel for schedule(static)
  for (std::size_t c = 0; c < chunks; ++c) {
    std::size_t* next = place.data() + c * templates;
    for (std::size_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) {
      const SumTerm& t = terms[i];
      out.entries[next[static_cast<std::size_t>(t.j)]++] = GroupedSumTerms::Entry{t.b, t.t, t.w};
    }
  }
}

}  // namespace emcryo::em
