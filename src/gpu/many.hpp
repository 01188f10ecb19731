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

/// A tile of one request's scores: rows [row, + kManyTile) x templates [column, + kManyTile).
struct ManyTile {
  int request, row, column;
};
constexpr int kManyTile = 32;

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
                const ManyStaging& out);

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
/// cross-correlation), into scores at the request's first_score.
void launch_many_scores(float* scores, const ManyTile* tiles, int tile_count, const ManyRequest* requests, const float* rows,
                        const float* templates, const float* norms, int frequencies, bool cross_correlation, cudaStream_t stream);

}  // namespace emcryo::gpu
