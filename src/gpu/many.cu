// A batch's per-particle passes on the GPU (many.hpp): rows built from the particles, norms, and
// one tiled FP32 kernel for all the small products.
#include "many.hpp"

#include <algorithm>

#include "device_memory.cuh"

namespace emcryo::gpu {

namespace {

constexpr int kRowThreads = 128, kNormWarps = 8, kTileK = kManyChunkStep;

__device__ float2 ramp_at(int2 k, float sx, float sy, double scale) {
  const double phase = scale * (k.x * static_cast<double>(sx) + k.y * static_cast<double>(sy));
  double s, c;
  sincos(phase, &s, &c);
  return make_float2(static_cast<float>(c), static_cast<float>(s));
}

__global__ void many_rows_kernel(float* rows, const ManyRow* info, int row_count, const float2* x, const float* ctf_isg, const int2* kxy,
                                 int frequencies, double scale) {
  const int f = blockIdx.x * blockDim.x + threadIdx.x;
  if (f >= frequencies) return;
  const int2 k = kxy[f];
  for (int r = blockIdx.y; r < row_count; r += gridDim.y) {
    const ManyRow row = info[r];
    float2 ramp = ramp_at(k, row.sx, row.sy, scale);
    if (row.bx != 0 || row.by != 0) {
      const float2 b = ramp_at(k, row.bx, row.by, scale);
      ramp = make_float2(ramp.x * b.x - ramp.y * b.y, ramp.x * b.y + ramp.y * b.x);
    }
    const long long at = static_cast<long long>(row.particle) * frequencies + f;
    const float2 v = x[at];
    const float w = ctf_isg[at];
    // conj(X) ramp, times C / sigma^2; stored as (Re Y, -Im Y).
    const float re = (v.x * ramp.x + v.y * ramp.y) * w, im = (v.x * ramp.y - v.y * ramp.x) * w;
    float* out = rows + static_cast<long long>(r) * 2 * frequencies + 2 * f;
    out[0] = re, out[1] = -im;
  }
}

__global__ void many_norms_kernel(float* norms, const float* power, const float* ctf2, const int* particle_of, int templates,
                                  int frequencies) {
  const int j = blockIdx.x * kNormWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (j >= templates) return;
  const float* p = power + static_cast<long long>(j) * frequencies;
  const float* c = ctf2 + static_cast<long long>(particle_of[j]) * frequencies;
  float sum = 0;
  for (int f = lane; f < frequencies; f += 32) sum += c[f] * p[f];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) norms[j] = sum;
}

/// One tile of R rows x C = 1024 / R templates per block, 256 threads, each 2 x 2 scores (rows
/// ty, ty + R/2; templates tx, tx + C/2), over chunk blockIdx.y of the inner dimension, staged
/// through shared memory 32 floats at a time. Scores go to out + chunk * chunk_stride: the
/// scores themselves without a split, else the chunk's partial sums (the norm term in chunk 0's).
template <int R>
__global__ void many_scores_kernel(float* out, long long chunk_stride, const ManyTile* tiles, const ManyRequest* requests,
                                   const float* rows, const float* templates, const float* norms, int width, int chunk,
                                   bool cross_correlation) {
  constexpr int C = kManyTileArea / R, TX = C / 2;
  __shared__ float rs[R][kTileK + 1], ts[C][kTileK + 1];
  const ManyTile tile = tiles[blockIdx.x];
  const ManyRequest q = requests[tile.request];
  const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
  const int k_begin = blockIdx.y * chunk, k_end = min(width, k_begin + chunk);
  float acc[2][2] = {{0, 0}, {0, 0}};
  for (int k0 = k_begin; k0 < k_end; k0 += kTileK) {
    for (int i = threadIdx.x; i < R * kTileK; i += blockDim.x) {
      const int r = i / kTileK, at = k0 + i % kTileK, row = tile.row + r;
      rs[r][i % kTileK] = row < q.rows && at < k_end ? rows[static_cast<long long>(q.first_row + row) * width + at] : 0.0f;
    }
    for (int i = threadIdx.x; i < C * kTileK; i += blockDim.x) {
      const int c = i / kTileK, at = k0 + i % kTileK, column = tile.column + c;
      ts[c][i % kTileK] = column < q.templates && at < k_end ? templates[static_cast<long long>(q.first_template + column) * width + at] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kTileK; ++k) {
      const float r0 = rs[ty][k], r1 = rs[ty + R / 2][k], t0 = ts[tx][k], t1 = ts[tx + TX][k];
      acc[0][0] += r0 * t0, acc[0][1] += r0 * t1, acc[1][0] += r1 * t0, acc[1][1] += r1 * t1;
    }
    __syncthreads();
  }
  float* to = out + blockIdx.y * chunk_stride;
  for (int a = 0; a < 2; ++a)
    for (int c = 0; c < 2; ++c) {
      const int row = tile.row + ty + (R / 2) * a, column = tile.column + tx + TX * c;
      if (row >= q.rows || column >= q.templates) continue;
      const float n = norms[q.first_template + column], v = acc[a][c];
      to[q.first_score + static_cast<long long>(row) * q.templates + column] =
          cross_correlation ? v * rsqrtf(fmaxf(n, 1e-30f)) : (blockIdx.y == 0 ? v - 0.5f * n : v);
    }
}

/// scores[i] = the chunks' partial sums of score i, added in chunk order (the same on every run).
__global__ void many_sum_chunks_kernel(float* scores, const float* partial, long long count, int split) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count; i += static_cast<long long>(gridDim.x) * blockDim.x) {
    float sum = partial[i];
    for (int c = 1; c < split; ++c) sum += partial[c * count + i];
    scores[i] = sum;
  }
}

/// Request i's particle from the prepared batch kept on the device (index[i] in it): X, C / sigma^2
/// (the product in float, as stage_many forms it) and C^2 / sigma^2 at the first F frequencies.
__global__ void many_gather_kernel(float2* x, float* ctf_isg, float* ctf2, const float2* kept_x, const float* kept_ctf,
                                   const float* kept_ctf2, const int* group, const float* inv_sigma2, const int* index, int count,
                                   int frequencies, int kept_frequencies) {
  const int f = blockIdx.x * blockDim.x + threadIdx.x;
  if (f >= frequencies) return;
  for (int i = blockIdx.y; i < count; i += gridDim.y) {
    const long long b = index[i], from = b * kept_frequencies + f, to = static_cast<long long>(i) * frequencies + f;
    x[to] = kept_x[from];
    ctf_isg[to] = kept_ctf[from] * inv_sigma2[static_cast<long long>(group[b]) * kept_frequencies + f];
    ctf2[to] = kept_ctf2[from];
  }
}

}  // namespace

void launch_many_gather(float* x, float* ctf_isg, float* ctf2, const KeptParticles& kept, const int* index, int count, int frequencies,
                        cudaStream_t stream) {
  if (count == 0) return;
  const dim3 blocks(static_cast<unsigned>((frequencies + kRowThreads - 1) / kRowThreads), static_cast<unsigned>(std::min(count, 65535)));
  many_gather_kernel<<<blocks, kRowThreads, 0, stream>>>(reinterpret_cast<float2*>(x), ctf_isg, ctf2, reinterpret_cast<const float2*>(kept.x),
                                                         kept.ctf, kept.ctf2, kept.group, kept.inv_sigma2, index, count, frequencies,
                                                         kept.frequencies);
  check_cuda(cudaGetLastError(), "score_many gather kernel");
}

void launch_many_rows(float* rows, const ManyRow* info, int row_count, const float2* x, const float* ctf_isg, const int2* kxy,
                      int frequencies, int box, cudaStream_t stream) {
  if (row_count == 0) return;
  const double scale = -2 * 3.14159265358979323846 / box;  // shift_ramps's
  const dim3 blocks((frequencies + kRowThreads - 1) / kRowThreads, row_count < 65535 ? row_count : 65535);
  many_rows_kernel<<<blocks, kRowThreads, 0, stream>>>(rows, info, row_count, x, ctf_isg, kxy, frequencies, scale);
  check_cuda(cudaGetLastError(), "score_many rows kernel");
}

void launch_many_norms(float* norms, const float* power, const float* ctf2, const int* particle_of, int templates, int frequencies,
                       cudaStream_t stream) {
  if (templates == 0) return;
  many_norms_kernel<<<(templates + kNormWarps - 1) / kNormWarps, 32 * kNormWarps, 0, stream>>>(norms, power, ctf2, particle_of, templates,
                                                                                             frequencies);
  check_cuda(cudaGetLastError(), "score_many norms kernel");
}

void launch_many_scores(float* scores, float* partial, long long score_count, const ManyTiling& tiling, const ManyTile* tiles,
                        int tile_count, const ManyRequest* requests, const float* rows, const float* templates, const float* norms,
                        int frequencies, bool cross_correlation, cudaStream_t stream) {
  if (tile_count == 0) return;
  const int width = 2 * frequencies, chunk = tiling.split > 1 ? tiling.chunk : width;
  const dim3 blocks(static_cast<unsigned>(tile_count), static_cast<unsigned>(std::max(1, tiling.split)));
  float* out = tiling.split > 1 ? partial : scores;
  switch (tiling.rows) {
    case 8: many_scores_kernel<8><<<blocks, 256, 0, stream>>>(out, score_count, tiles, requests, rows, templates, norms, width, chunk, cross_correlation); break;
    case 16: many_scores_kernel<16><<<blocks, 256, 0, stream>>>(out, score_count, tiles, requests, rows, templates, norms, width, chunk, cross_correlation); break;
    case 32: many_scores_kernel<32><<<blocks, 256, 0, stream>>>(out, score_count, tiles, requests, rows, templates, norms, width, chunk, cross_correlation); break;
    default: fail("score_many: tiles of {} rows (8, 16 or 32 only)", tiling.rows);
  }
  check_cuda(cudaGetLastError(), "score_many scores kernel");
  if (tiling.split <= 1) return;
  const long long blocks_needed = (score_count + 255) / 256;
  many_sum_chunks_kernel<<<static_cast<unsigned>(std::min<long long>(blocks_needed, 65535)), 256, 0, stream>>>(scores, partial, score_count, tiling.split);
  check_cuda(cudaGetLastError(), "score_many chunk sums kernel");
}

}  // namespace emcryo::gpu
