// The coarse pass's posterior reduction on the GPU (reduction.hpp): two kernels over the batch's
// kept score matrix, then only per-class sums and the ranked candidates go back to the host, where
// em::PosteriorReducer::finish() turns them into the posterior exactly as it does for host scores.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "device_memory.cuh"
#include "reduction.hpp"

namespace emcryo::gpu {

namespace {

std::string kept_memory(int device, double need, double free, double total) {
  return out_of_device_memory(device, need, free, total, "the coarse pass's kept scores",
                              "batch x coarse shifts x coarse templates x 4 bytes, plus batch x classes x 16 bytes and batch x 2 cap x 16 bytes",
                              "use a smaller --batch or EMCRYO_GPU_REDUCE=0 (reduce on the CPU)");
}

struct CandidateDevice {
  int k;
  float score;
  long long id;
};
static_assert(sizeof(CandidateDevice) == sizeof(em::ReducedScores::Candidate), "Candidate layout");

constexpr int kStatsThreads = 256, kSelectThreads = 1024, kBins = 2048;
/// Posterior log-weights this far below the particle's best cannot matter to a mass cut of
/// 1 - 1e-5 over at most a few thousand hypotheses (e^-40 ~ 4e-18 each).
constexpr float kRange = 40;

/// Block-wide (max, smallest id at the max) over kStatsThreads threads.
__device__ void block_argmax(float& value, long long& id) {
  __shared__ float values[kStatsThreads];
  __shared__ long long ids[kStatsThreads];
  values[threadIdx.x] = value, ids[threadIdx.x] = id;
  __syncthreads();
  for (int half = kStatsThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const float v = values[threadIdx.x + half];
      const long long i = ids[threadIdx.x + half];
      if (v > values[threadIdx.x] || (v == values[threadIdx.x] && i < ids[threadIdx.x])) values[threadIdx.x] = v, ids[threadIdx.x] = i;
    }
    __syncthreads();
  }
  value = values[0], id = ids[0];
  __syncthreads();
}

__device__ double block_sum(double value) {
  __shared__ double sums[kStatsThreads];
  sums[threadIdx.x] = value;
  __syncthreads();
  for (int half = kStatsThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  return sums[0];
}

/// Block (class k, particle b): the class's maximum over its T x O scores, the first hypothesis
/// there (smallest id, id = t J + j), and the sum of exp(s - max): PosteriorReducer's ClassSum.
__global__ void class_stats_kernel(const float* scores, int P, int T, int J, int O, float* class_max, double* class_sum,
                                   long long* class_best) {
  const int k = blockIdx.x, b = blockIdx.y, K = gridDim.x, n = T * O;
  float top = -INFINITY;
  long long best = LLONG_MAX;
  for (int i = threadIdx.x; i < n; i += kStatsThreads) {
    const int t = i / O, j = k * O + i % O;
    const float v = scores[(static_cast<long long>(t) * P + b) * J + j];
    const long long id = static_cast<long long>(t) * J + j;
    if (v > top || (v == top && id < best)) top = v, best = id;
  }
  block_argmax(top, best);
  double partial = 0;
  for (int i = threadIdx.x; i < n; i += kStatsThreads) {
    const int t = i / O, j = k * O + i % O;
    partial += expf(scores[(static_cast<long long>(t) * P + b) * J + j] - top);
  }
  const double sum = block_sum(partial);
  if (threadIdx.x == 0) {
    const long long at = static_cast<long long>(b) * K + k;
    class_max[at] = top, class_sum[at] = sum, class_best[at] = best == LLONG_MAX ? static_cast<long long>(k) * O : best;
  }
}

/// Block b: particle b's hypotheses ranked by posterior log-weight
///   key = log P(k) - log sum_k + (s - max_k),
/// P(k) tempered with priors as PosteriorReducer::finish() has it, among those within `window` of
/// their class's maximum (not the class's best: the host enters those). A histogram of the keys
/// over kRange below the best finds the bin where `cap` is reached; every candidate above it is
/// written, and from that bin up to `capacity` in all.
__global__ void select_kernel(const float* scores, int P, int T, int J, int O, int K, const float* class_max, const double* class_sum,
                              const long long* class_best, const double* log_prior, double temperature, bool hard_classes,
                              float window, int cap, int capacity, CandidateDevice* out, int* counts) {
  extern __shared__ unsigned char shared[];
  float* offset = reinterpret_cast<float*>(shared);  // [K]: log P(k) - log sum_k (-inf: not ranked)
  const int b = blockIdx.x;
  const float* cmax = class_max + static_cast<long long>(b) * K;
  const double* csum = class_sum + static_cast<long long>(b) * K;
  const long long* cbest = class_best + static_cast<long long>(b) * K;
  __shared__ unsigned histogram[kBins];
  __shared__ float top;
  __shared__ int threshold, above, taken_above, taken_tie;
  for (int i = threadIdx.x; i < kBins; i += blockDim.x) histogram[i] = 0;
  if (threadIdx.x == 0) {
    // Tempered class log-posteriors (K is small: one thread).
    double most = -INFINITY;
    int best_class = 0;
    for (int k = 0; k < K; ++k) {
      const double evidence = cmax[k] + log(csum[k]);
      const double tempered = (log_prior ? log_prior[k] : 0.0) + evidence / temperature;
      if (tempered > most) most = tempered, best_class = k;
    }
    double norm = 0;
    for (int k = 0; k < K; ++k) norm += exp((log_prior ? log_prior[k] : 0.0) + (cmax[k] + log(csum[k])) / temperature - most);
    float highest = -INFINITY;
    for (int k = 0; k < K; ++k) {
      const double log_posterior = (log_prior ? log_prior[k] : 0.0) + (cmax[k] + log(csum[k])) / temperature - most - log(norm);
      offset[k] = hard_classes && k != best_class ? -INFINITY : static_cast<float>(log_posterior - log(csum[k]));
      highest = fmaxf(highest, offset[k]);
    }
    top = highest;
    taken_above = taken_tie = 0;
  }
  __syncthreads();
  const float scale = kBins / kRange;
  const int n = T * J;
  // The bin of hypothesis i, or -1 where it is not ranked.
  const auto bin_of = [&](int i, float& v, int& k, long long& id) {
    const int t = i / J, j = i % J;
    k = j / O;
    v = scores[(static_cast<long long>(t) * P + b) * J + j];
    id = static_cast<long long>(t) * J + j;
    const float lead = v - cmax[k];
    if (!(lead > -window) || id == cbest[k]) return -1;
    const float below = top - (offset[k] + lead);
    if (!(below < kRange)) return -1;
    return min(kBins - 1, static_cast<int>(below * scale));
  };
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v;
    int k;
    long long id;
    const int bin = bin_of(i, v, k, id);
    if (bin >= 0) atomicAdd(&histogram[bin], 1u);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned cumulative = 0;
    int bin = 0;
    while (bin < kBins && cumulative + histogram[bin] < static_cast<unsigned>(cap)) cumulative += histogram[bin++];
    threshold = bin, above = static_cast<int>(cumulative);  // bins before `threshold` hold `above` < cap
  }
  __syncthreads();
  CandidateDevice* mine = out + static_cast<long long>(b) * capacity;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v;
    int k;
    long long id;
    const int bin = bin_of(i, v, k, id);
    if (bin < 0 || bin > threshold) continue;
    const int at = bin < threshold ? atomicAdd(&taken_above, 1) : above + atomicAdd(&taken_tie, 1);
    if (at < capacity) mine[at] = CandidateDevice{k, v, id};
  }
  __syncthreads();
  if (threadIdx.x == 0) counts[b] = min(capacity, above + taken_tie);
}

}  // namespace

struct KeptScoreReducer::State {
  int device = 0;
  cudaStream_t stream = nullptr;
  em::KeptScores shape;
  DeviceArray<float, kept_memory> scores, class_max;
  DeviceArray<double, kept_memory> class_sum, log_prior;
  DeviceArray<long long, kept_memory> class_best;
  DeviceArray<CandidateDevice, kept_memory> candidates;
  DeviceArray<int, kept_memory> counts;
  PinnedArray<CandidateDevice> host_candidates;
  PinnedArray<int> host_counts;
};

KeptScoreReducer::KeptScoreReducer(int device) : s_(std::make_unique<State>()) {
  s_->device = device;
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  s_->stream = urgent_stream("cudaStreamCreate (score reduction)");
}

KeptScoreReducer::~KeptScoreReducer() {
  cudaSetDevice(s_->device);
  if (s_->stream) cudaStreamDestroy(s_->stream);
}

float* KeptScoreReducer::scores(const em::KeptScores& shape) {
  check_cuda(cudaSetDevice(s_->device), "cudaSetDevice");
  s_->shape = shape;
  const std::size_t count = static_cast<std::size_t>(shape.particles) * static_cast<std::size_t>(shape.shifts) *
                            static_cast<std::size_t>(shape.templates);
  return s_->scores.reserve(count, s_->device);
}

void KeptScoreReducer::reduce(const em::ScoreReduction& r, em::ReducedScores& out) {
  const em::KeptScores& shape = s_->shape;
  const int P = shape.particles, T = shape.shifts, J = shape.templates, O = shape.orientations;
  if (r.scores.particles != P || r.scores.shifts != T || r.scores.templates != J || r.scores.orientations != O || O <= 0 || J % O != 0)
    fail("GPU score reduction: shape differs from the kept scores (internal error)");
  const int K = J / O;
  const std::size_t PK = static_cast<std::size_t>(P) * static_cast<std::size_t>(K);
  check_cuda(cudaSetDevice(s_->device), "cudaSetDevice");
  cudaStream_t stream = s_->stream;
  float* cmax = s_->class_max.reserve(PK, s_->device);
  double* csum = s_->class_sum.reserve(PK, s_->device);
  long long* cbest = s_->class_best.reserve(PK, s_->device);
  class_stats_kernel<<<dim3(static_cast<unsigned>(K), static_cast<unsigned>(P)), kStatsThreads, 0, stream>>>(s_->scores.data(), P, T, J, O,
                                                                                                         cmax, csum, cbest);
  check_cuda(cudaGetLastError(), "class statistics kernel");
  const int capacity = 2 * r.cap;
  std::vector<int> counts(static_cast<std::size_t>(P), 0);
  if (r.cap > 0) {
    const double* prior = nullptr;
    if (r.log_class_prior) {
      double* d = s_->log_prior.reserve(static_cast<std::size_t>(K), s_->device);
      check_cuda(cudaMemcpyAsync(d, r.log_class_prior, sizeof(double) * static_cast<std::size_t>(K), cudaMemcpyHostToDevice, stream),
                 "cudaMemcpyAsync (class priors)");
      prior = d;
    }
    CandidateDevice* candidates = s_->candidates.reserve(static_cast<std::size_t>(P) * static_cast<std::size_t>(capacity), s_->device);
    int* device_counts = s_->counts.reserve(static_cast<std::size_t>(P), s_->device);
    select_kernel<<<static_cast<unsigned>(P), kSelectThreads, sizeof(float) * static_cast<std::size_t>(K), stream>>>(
        s_->scores.data(), P, T, J, O, K, cmax, csum, cbest, prior, r.class_temperature, r.hard_classes, r.window, r.cap, capacity,
        candidates, device_counts);
    check_cuda(cudaGetLastError(), "candidate selection kernel");
    int* host_counts = s_->host_counts.reserve(static_cast<std::size_t>(P));
    check_cuda(cudaMemcpyAsync(host_counts, device_counts, sizeof(int) * static_cast<std::size_t>(P), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync (candidate counts)");
    CandidateDevice* host = s_->host_candidates.reserve(static_cast<std::size_t>(P) * static_cast<std::size_t>(capacity));
    check_cuda(cudaMemcpyAsync(host, candidates, sizeof(CandidateDevice) * static_cast<std::size_t>(P) * static_cast<std::size_t>(capacity),
                               cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync (candidates)");
  }
  out.class_max.resize(PK), out.class_sum.resize(PK), out.class_best.resize(PK);
  check_cuda(cudaMemcpyAsync(out.class_max.data(), cmax, sizeof(float) * PK, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check_cuda(cudaMemcpyAsync(out.class_sum.data(), csum, sizeof(double) * PK, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  static_assert(sizeof(long long) == sizeof(std::int64_t));
  check_cuda(cudaMemcpyAsync(out.class_best.data(), cbest, sizeof(long long) * PK, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize (score reduction)");
  out.candidates.resize(static_cast<std::size_t>(P));
  for (int b = 0; b < P; ++b) {
    auto& list = out.candidates[static_cast<std::size_t>(b)];
    list.clear();
    if (r.cap <= 0) continue;
    const auto* first = reinterpret_cast<const em::ReducedScores::Candidate*>(s_->host_candidates.data()) +
                        static_cast<std::size_t>(b) * static_cast<std::size_t>(capacity);
    list.assign(first, first + s_->host_counts.data()[b]);
  }
}

}  // namespace emcryo::gpu
