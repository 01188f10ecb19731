// The kernels of ScoringBackend::score_many on the GPU (internal to src/gpu; the CUDA backend stages
// the requests and calls these on one stream): a batch's per-particle passes, each a small product
// of its rows (one per shift) and its templates, built and scored on the card in one launch each
// instead of a round trip per particle.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "emcryo/em/scoring_backend.hpp"
#include "prepare.hpp"  // KeptParticles
#include "sampling.hpp"

namespace emcryo::gpu {

/// One request of the batch: where its rows, templates and scores start in the batch's arrays.
struct ManyRequest {
  int first_row, rows, first_template, templates;
  long long first_score;  // scores [t][j], templates apart
};

/// A row to build: its particle (request) and its fine and base shifts (pixels).
struct ManyRow {
  int particle;
  float sx, sy, bx, by;
};

/// A tile of one request's scores: rows [row, + tiling rows) x templates [column, + tiling columns).
struct ManyTile {
  int request, row, column;
};

/// How a group's scores are cut for the scores kernel. Tiles hold kManyTileArea scores, `rows`
/// (8, 16 or 32) shifts by the rest in templates: a local search's request is ~9 shifts x ~50
/// templates, and 32 x 32 tiles were three quarters padding. The inner dimension (2F, ~12,000 floats
/// near Nyquist at box 256) is cut into `split` chunks of `chunk` floats, summed afterwards in
/// chunk order: a group of ~120 long requests made only ~240 blocks, too few to fill the card.
constexpr int kManyTileArea = 1024;
constexpr int kManyChunkStep = 32;  // chunks are whole steps of the kernel's shared-memory staging
struct ManyTiling {
  int rows = 32, split = 1, chunk = 0;
  int columns() const { return kManyTileArea / rows; }
};
/// The tiles of a request of `rows` x `templates` scores.
inline int many_tiles_of(int rows, int templates, const ManyTiling& tiling) {
  return ((rows + tiling.rows - 1) / tiling.rows) * ((templates + tiling.columns() - 1) / tiling.columns());
}
/// Request `request`'s tiles (rows x templates scores) written from `out`; returns how many.
int list_many_tiles(int request, int rows, int templates, const ManyTiling& tiling, ManyTile* out);
/// The tiling of requests [begin, end) whose inner dimension is `width` floats: the tile rows that
/// leave the least padding (or `forced_rows` when not 0), then the fewest chunks of at least 512
/// floats that give `blocks_wanted` blocks (or `forced_split` chunks of at least 32 when not 0).
/// A group is split only where it has fewer tiles than blocks_wanted, so its partial sums (split x
/// scores) stay below 2 x blocks_wanted x 1024 floats (~17 MB on a 132-multiprocessor card).
ManyTiling choose_many_tiling(const std::vector<em::ScoreRequest>& requests, std::size_t begin, std::size_t end, int width,
                              int blocks_wanted, int forced_rows = 0, int forced_split = 0);

/// Where stage_many writes a group of requests (page-locked host arrays, sized by the caller):
/// per particle X (2F), C / sigma^2 (F) and C^2 / sigma^2 (F) (x, ctf_isg and ctf2 null where the
/// particles are gathered on the device instead: launch_many_gather); per row its ManyRow; per
/// template its pose and particle; per request its ManyRequest; the tiles.
struct ManyStaging {
  float *x, *ctf_isg, *ctf2;
  ManyRow* rows;
  TemplatePose* poses;
  int* owner;
  ManyRequest* requests;
  ManyTile* tiles;
};

/// Requests [begin, end) staged for the kernels, in parallel over the CPU's threads (many_staging.cpp).
void stage_many(const std::vector<em::ScoreRequest>& requests, std::size_t begin, std::size_t end, const HostReferences& references,
                const ManyTiling& tiling, const ManyStaging& out);

/// Each request's scores from the group's (`scores`, at the requests' first_score) into outs[begin + i].
void unstage_many_scores(const ManyRequest* requests, int count, const float* scores, const std::vector<float*>& outs, std::size_t begin);

/// x [count][2F], ctf_isg and ctf2 [count][F] of requests whose particles are index[i] of the
/// prepared batch kept on the device: what stage_many would have staged, gathered on the card.
void launch_many_gather(float* x, float* ctf_isg, float* ctf2, const KeptParticles& kept, const int* index, int count, int frequencies,
                        cudaStream_t stream);
/// rows[r] (2F floats): (Re Y, -Im Y) with Y = conj(X) ramp(s) ramp(base) C / sigma^2, as the host's
/// build_particle_rows (the ramps' phases in double, as shift_ramps); x and ctf_isg are [particle][F].
void launch_many_rows(float* rows, const ManyRow* info, int row_count, const float2* x, const float* ctf_isg, const int2* kxy,
                      int frequencies, int box, cudaStream_t stream);
/// norms[j] = sum_f ctf2[particle_of[j]][f] power[j][f].
void launch_many_norms(float* norms, const float* power, const float* ctf2, const int* particle_of, int templates, int frequencies,
                       cudaStream_t stream);
/// Every tile's scores: x = row . template (FP32), then x - norm / 2 (or x / sqrt(norm) for
/// cross-correlation), into scores at the request's first_score (score_count of them in all).
/// With a split, each chunk's share goes into partial[chunk][score_count] first (split x
/// score_count floats) and the chunks are summed in order.
void launch_many_scores(float* scores, float* partial, long long score_count, const ManyTiling& tiling, const ManyTile* tiles,
                        int tile_count, const ManyRequest* requests, const float* rows, const float* templates, const float* norms,
                        int frequencies, bool cross_correlation, cudaStream_t stream);

}  // namespace emcryo::gpu
