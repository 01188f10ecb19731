// The host side of ScoringBackend::score_many on the GPU (many.hpp): a group of requests laid out
// for the kernels. Each request's place is known from the counts before it, so the requests are
// staged in parallel (the templates' poses alone are ~10^7 sines and cosines in a first class2d
// iteration of 100,000 particles).
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "many.hpp"

namespace emcryo::gpu {

int list_many_tiles(int request, int rows, int templates, const ManyTiling& tiling, ManyTile* out) {
  int t = 0;
  for (int r0 = 0; r0 < rows; r0 += tiling.rows)
    for (int c0 = 0; c0 < templates; c0 += tiling.columns()) out[t++] = ManyTile{request, r0, c0};
  return t;
}

ManyTiling choose_many_tiling(const std::vector<em::ScoreRequest>& requests, std::size_t begin, std::size_t end, int width,
                              int blocks_wanted, int forced_rows, int forced_split) {
  ManyTiling best;
  long long best_area = -1;
  const std::vector<int> shapes = forced_rows != 0 ? std::vector<int>{forced_rows} : std::vector<int>{32, 16, 8};
  for (const int rows : shapes) {
    ManyTiling t;
    t.rows = rows;
    long long tiles = 0;
    for (std::size_t i = begin; i < end; ++i) tiles += many_tiles_of(requests[i].row_count, requests[i].template_count, t);
    if (best_area < 0 || tiles * kManyTileArea < best_area) best = t, best_area = tiles * kManyTileArea;
  }
  const long long tiles = best_area / kManyTileArea;
  constexpr int kMinimumChunk = 512;
  int split = tiles > 0 ? static_cast<int>((blocks_wanted + tiles - 1) / tiles) : 1;
  split = std::clamp(split, 1, std::max(1, width / kMinimumChunk));
  if (forced_split > 0) split = std::min(forced_split, std::max(1, width / kManyChunkStep));
  best.chunk = ((width + split - 1) / split + kManyChunkStep - 1) / kManyChunkStep * kManyChunkStep;
  best.split = best.chunk > 0 ? (width + best.chunk - 1) / best.chunk : 1;
  return best;
}

void stage_many(const std::vector<em::ScoreRequest>& requests, std::size_t begin, std::size_t end, const HostReferences& references,
                const ManyTiling& tiling, const ManyStaging& out) {
  const int N = static_cast<int>(end - begin);
  std::vector<int> first_tile(static_cast<std::size_t>(N) + 1, 0);
  int row = 0, tj = 0;
  long long score = 0;
  for (int i = 0; i < N; ++i) {
    const em::ScoreRequest& q = requests[begin + static_cast<std::size_t>(i)];
    out.requests[i] = ManyRequest{row, q.row_count, tj, q.template_count, score};
    row += q.row_count, tj += q.template_count, score += static_cast<long long>(q.row_count) * q.template_count;
    first_tile[static_cast<std::size_t>(i) + 1] = first_tile[static_cast<std::size_t>(i)] + many_tiles_of(q.row_count, q.template_count, tiling);
  }
  // One request at a time: a high-resolution local pass's group holds only ~50 requests (992 groups
  // for 50,000 in the 100,000-particle refine), which chunks of 8 spread over 7 of a 16-core host's
  // threads (the templates' poses, a few double sines each, are most of a request's staging).
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < N; ++i) {
    const em::ScoreRequest& q = requests[begin + static_cast<std::size_t>(i)];
    const em::ParticleRows& p = q.particle_rows;
    const ManyRequest& r = out.requests[i];
    const std::size_t F = static_cast<std::size_t>(q.frequencies), at = static_cast<std::size_t>(i) * F;
    if (out.x) {
      std::memcpy(out.x + 2 * at, p.x, 2 * F * sizeof(float));
      for (std::size_t f = 0; f < F; ++f) out.ctf_isg[at + f] = p.ctf[f] * p.inv_sigma2[f];
      std::memcpy(out.ctf2 + at, q.ctf2, F * sizeof(float));
    }
    for (int t = 0; t < q.row_count; ++t) {
      const auto& g = p.shift_grid[p.shift_ids[t]];
      out.rows[r.first_row + t] = ManyRow{i, g.first, g.second, p.base.first, p.base.second};
    }
    template_poses(q.sampled, q.template_count, references, out.poses + r.first_template);
    std::fill_n(out.owner + r.first_template, q.template_count, i);
    list_many_tiles(i, q.row_count, q.template_count, tiling, out.tiles + first_tile[static_cast<std::size_t>(i)]);
  }
}

void unstage_many_scores(const ManyRequest* requests, int count, const float* scores, const std::vector<float*>& outs, std::size_t begin) {
#pragma omp parallel for schedule(dynamic, 8)
  for (int i = 0; i < count; ++i) {
    const ManyRequest& q = requests[i];
    std::memcpy(outs[begin + static_cast<std::size_t>(i)], scores + q.first_score,
                static_cast<std::size_t>(q.rows) * static_cast<std::size_t>(q.templates) * sizeof(float));
  }
}

}  // namespace emcryo::gpu
