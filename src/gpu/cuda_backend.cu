// The CUDA scoring backend (DESIGN §4, docs/design.md "GPU"): the same scores as the CPU backend,
// s(r, j) = x(r, j) - n(r % P, j) / 2 (or x / sqrt(n) for cross-correlation), with
//   x = rows . templates^T  (cuBLAS, FP32 / TF32 / split-TF32) and
//   n = ctf2 . power^T      (cuBLAS, always FP32),
// and the combination as a kernel. Templates the caller marks resident stay on the device from
// one call to the next until the next plan() (the coarse pass's templates: uploaded once per
// E-step). Rows go up in pieces through pinned buffers on two streams, so the copies of one piece
// overlap the GEMM of the other.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "backprojection.hpp"
#include "cublas_library.hpp"
#include "device_memory.cuh"
#include "emcryo/gpu/backend.hpp"
#include "many.hpp"
#include "prepare.hpp"
#include "reduction.hpp"
#include "sampling.hpp"
#include "volume_transforms.hpp"

namespace emcryo::gpu {

namespace {

void check(cudaError_t e, const char* what) { check_cuda(e, what); }
void check(cublasStatus_t e, const char* what) {
  if (e != CUBLAS_STATUS_SUCCESS) fail("cuBLAS: {} failed: {}", what, cublas_library().status_string(e));
}

std::size_t sz(int v) { return static_cast<std::size_t>(v); }

/// Scoring's device memory, for the error when it would not fit.
std::string scoring_memory(int device, double need, double free, double total) {
  return fmt::format(
      "GPU {}: scoring needs {:.0f} MiB more but {:.0f} of {:.0f} MiB are free; use a smaller --batch, a lower "
      "resolution limit or another GPU (per thread slot, 4 bytes x: 4 x piece rows x 2F + 2 x piece rows x "
      "templates + particles x (F + templates) + templates x (5F + 14), pieces within 8 Mi floats; plus "
      "the resident coarse templates x 5Fc; plus the references sampled on the GPU, classes x m^(d-1) x (m/2+1) "
      "x 8 bytes, m = 2 x box, d = 2 or 3; plus a batch's per-particle passes scored at once, groups of at most 128 Mi floats "
      "of rows, templates and scores (EMCRYO_GPU_MANY=0: none); plus the 3D back-projection's volumes, classes x (2R+1)^2 x (R+1) x 12 bytes, "
      "R = ceil(2 x insert radius) + 1; docs/design.md)",
      device, need, free, total);
}

using DeviceBuffer = DeviceArray<float, scoring_memory>;
using PinnedBuffer = PinnedArray<float>;

// TF32 keeps 10 of FP32's 23 mantissa bits: round to nearest there (ties away from zero).
__device__ inline float tf32_head(float v) {
  unsigned u = __float_as_uint(v);
  u = (u + 0x1000u) & 0xffffe000u;
  return __uint_as_float(u);
}

/// Splits count rows of `width` floats (stride `stride`) into head and tail (head + tail = v exactly).
__global__ void split_tf32_kernel(float* head, float* tail, int rows, int width, int stride) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<long long>(rows) * width) return;
  const long long at = (i / width) * stride + i % width;
  const float v = head[at], h = tf32_head(v);
  head[at] = h;
  tail[at] = v - h;
}

/// out[r][j] (rows `ld` floats apart) = x - n[r % P][j] / 2, or x / sqrt(n) for cross-correlation.
__global__ void combine_kernel(float* out, int ld, const float* norms, int rows, int templates, int particles, int first_row,
                               bool cross_correlation) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<long long>(rows) * templates) return;
  const int row = static_cast<int>(i / templates), r = row + first_row, j = static_cast<int>(i % templates);
  const float n = norms[static_cast<long long>(r % particles) * templates + j];
  float& v = out[static_cast<long long>(row) * ld + j];
  v = cross_correlation ? v * rsqrtf(fmaxf(n, 1e-30f)) : v - 0.5f * n;
}

/// Template j at frequency f: the bilinear (2D) or trilinear (3D) sample, as the host computes it.
__device__ void sample_one(float* head, float* power, const float2* const* grids, const TemplatePose& p, int j, int2 k, int f, int stride,
                           int power_stride, int dimensions, int m, int hm) {
  const int kx = k.x, ky = k.y;
  double px = p.ax * kx + p.bx * ky, py = p.ay * kx + p.by * ky, pz = dimensions == 3 ? p.az * kx + p.bz * ky : 0.0;
  const bool conjugate = px < 0;
  if (conjugate) px = -px, py = -py, pz = -pz;
  const int x0 = static_cast<int>(floor(px)), y0 = static_cast<int>(floor(py)), z0 = static_cast<int>(floor(pz));
  const float fx = static_cast<float>(px - x0), fy = static_cast<float>(py - y0), fz = static_cast<float>(pz - z0);
  const auto wrap = [m](int i) { return i >= 0 ? i : i + m; };
  const long long plane = static_cast<long long>(m) * hm;
  const float2* g = grids[p.k];
  const auto lerp = [](float2 a, float2 b, float t) { return make_float2(a.x + t * (b.x - a.x), a.y + t * (b.y - a.y)); };
  // Bilinear in one z plane: the 2D sample, or one of the two planes of the trilinear one.
  const auto bilinear = [&](long long z) {
    const float2* r0 = g + z * plane + static_cast<long long>(wrap(y0)) * hm + x0;
    const float2* r1 = g + z * plane + static_cast<long long>(wrap(y0 + 1)) * hm + x0;
    return lerp(lerp(r0[0], r0[1], fx), lerp(r1[0], r1[1], fx), fy);
  };
  float2 v = dimensions == 3 ? lerp(bilinear(wrap(z0)), bilinear(wrap(z0 + 1)), fz) : bilinear(0);
  if (conjugate) v.y = -v.y;
  float* row = head + static_cast<long long>(j) * stride + 2 * f;
  row[0] = v.x, row[1] = v.y;
  power[static_cast<long long>(j) * power_stride + f] = v.x * v.x + v.y * v.y;
}

/// Template rows on the device, exactly as TemplateSource::sample then store_template_row: head
/// (Re A, Im A) per frequency at `stride`, |A|^2 at `power_stride`. Block rows stride over the
/// templates. grids: per class, where its m^(d-1) x hm complex values are; kxy: (kx, ky) per frequency.
__global__ void sample_templates_kernel(float* head, float* power, const float2* const* grids, const TemplatePose* poses, int templates,
                                        const int2* kxy, int frequencies, int stride, int power_stride, int dimensions, int m,
                                        int hm) {
  const int f = blockIdx.x * blockDim.x + threadIdx.x;
  if (f >= frequencies) return;
  for (int j = blockIdx.y; j < templates; j += gridDim.y) sample_one(head, power, grids, poses[j], j, kxy[f], f, stride, power_stride,
                                                                     dimensions, m, hm);
}

using SumEntry = em::GroupedSumTerms::Entry;  // particle b at fine shift t with weight w

/// One block's share of the M-step sums: template rows[row]'s entries over frequencies
/// [first_frequency, end_frequency). A template's frequencies are split among several blocks
/// where it holds many entries, so that no block loops far longer than the rest.
struct SumBlock {
  int row, first_frequency, end_frequency;
};
constexpr int kSumThreads = 128;  // threads of a sums block

/// Block i: template rows[r]'s sums (r = blocks[i].row) over its entries [offsets[r], offsets[r + 1]),
/// one thread per frequency of the block's slice (strided), no atomics (each template frequency is
/// one thread's, which adds the entries in order: the same sums however the frequencies are split):
///   data[j]   += sum w X_b conj(ramp_t) C_b / sigma_b^2,   weight[j] += sum w C_b^2 / sigma_b^2.
/// A batch's X, C/sigma^2 and ramps are a few MB: the entries' reads hit the L2 cache.
__global__ void template_sums_kernel(float2* data, float* weight, const SumBlock* blocks, const int* rows, const int* offsets,
                                     const SumEntry* entries, const float2* x, const float* ctf_isg, const float* ctf2,
                                     const float2* ramps, int frequencies) {
  const SumBlock block = blocks[blockIdx.x];
  const int j = rows[block.row], first = offsets[block.row], end = offsets[block.row + 1];
  for (int f = block.first_frequency + threadIdx.x; f < block.end_frequency; f += blockDim.x) {
    float re = 0, im = 0, w2 = 0;
    for (int e = first; e < end; ++e) {
      const SumEntry entry = entries[e];
      const long long at = static_cast<long long>(entry.b) * frequencies + f;
      const float2 v = x[at], ramp = ramps[static_cast<long long>(entry.t) * frequencies + f];
      const float scale = entry.w * ctf_isg[at];
      re += (v.x * ramp.x + v.y * ramp.y) * scale;  // X conj(ramp)
      im += (v.y * ramp.x - v.x * ramp.y) * scale;
      w2 += entry.w * ctf2[at];
    }
    float2& d = data[static_cast<long long>(j) * frequencies + f];
    d.x += re, d.y += im;
    weight[static_cast<long long>(j) * frequencies + f] += w2;
  }
}

/// total[i] += part[i]: a chunk's sums folded into the E-step's totals, float by float as the host
/// would add them.
__global__ void add_kernel(float* total, const float* part, long long count) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count; i += static_cast<long long>(gridDim.x) * blockDim.x)
    total[i] += part[i];
}

}  // namespace

void add_on_device(float* total, const float* part, long long count, cudaStream_t stream) {
  if (count <= 0) return;
  add_kernel<<<1024, 256, 0, stream>>>(total, part, count);
  check_cuda(cudaGetLastError(), "fold kernel");
}

namespace {

unsigned blocks_for(long long count, int threads) { return static_cast<unsigned>((count + threads - 1) / threads); }

/// Templates (and their powers) on one device: uploaded once while the caller says they are resident.
struct ResidentTemplates {
  DeviceBuffer head, tail, power;
};

/// A template source's padded Fourier grids on one device, once per E-step: read in place where
/// a projector's transform was kept there (host.on_device), else uploaded.
struct ResidentReferences {
  DeviceBuffer grids;  // the uploaded classes' m^(d-1) x hm complex values, one after another
  DeviceArray<const float2*, scoring_memory> table;  // per class: where its values are on this device
  HostReferences host;
};

struct DeviceState {
  int id = 0;
  std::mutex mutex;
  std::unordered_map<const float*, std::unique_ptr<ResidentTemplates>> resident;
  std::unordered_map<const void*, std::unique_ptr<ResidentReferences>> references;  // by TemplateSource
  std::unordered_map<const void*, std::unique_ptr<DeviceBuffer>> lists;               // (kx, ky) by FrequencyList
};

/// One calling thread's stream pair, cuBLAS handle and buffers.
struct Slot {
  int device = 0;
  cudaStream_t stream[2] = {nullptr, nullptr};
  cudaEvent_t ready = nullptr, done[2] = {nullptr, nullptr};
  cublasHandle_t handle = nullptr;
  DeviceBuffer rows_head, rows_tail, ctf2, templates_head, templates_tail, power, norms, scores, poses;
  // 2D M-step sums (slot 0 only): the sums, the batch's inputs, its data rows and weight matrices.
  DeviceBuffer sum_data, sum_weight, sum_x, sum_ctf_isg, sum_ctf2, sum_ramps, sum_terms, sum_rows, sum_offsets, sum_blocks;
  DeviceBuffer total_data, total_weight;  // the E-step's totals of the chunks folded so far
  PinnedBuffer staging_rows[2], staging_scores[2], staging_poses;
  em::BackendStats stats;
};

class CudaBackend final : public em::ScoringBackend {
 public:
  explicit CudaBackend(const CudaOptions& options) : options_(options), cpu_(em::make_cpu_backend()) {
    if (options_.devices.empty()) fail("CUDA backend: no device chosen");
    int count = 0;
    check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    for (int id : options_.devices) {
      if (id < 0 || id >= count) fail("--gpu {}: no such CUDA device (this machine has {})", id, count);
      auto state = std::make_unique<DeviceState>();
      state->id = id;
      devices_.push_back(std::move(state));
    }
  }

  ~CudaBackend() override {
    if (!slots_.empty()) cudaSetDevice(slots_.front()->device);  // score_many's device
    for (auto& h : many_.host)
      for (cudaEvent_t e : h.marks)
        if (e) cudaEventDestroy(e);
    for (auto& s : slots_) {
      cudaSetDevice(s->device);
      for (int i = 0; i < 2; ++i) {
        if (s->stream[i]) cudaStreamDestroy(s->stream[i]);
        if (s->done[i]) cudaEventDestroy(s->done[i]);
      }
      if (s->ready) cudaEventDestroy(s->ready);
      if (s->handle) cublas_library().destroy(s->handle);
    }
  }

  std::string name() const override {
    std::string ids;
    for (const auto& d : devices_) ids += (ids.empty() ? "" : ",") + std::to_string(d->id);
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, devices_.front()->id);
    return fmt::format("CUDA (GPU {}: {}, {} GEMM{}{}{}{}{}{})", ids, prop.name, precision_name(options_.precision),
                       options_.sample_templates ? ", per-particle templates sampled on the GPU" : "",
                       options_.prepare_batches ? ", batches prepared on the GPU" : "",
                       options_.volume_sums ? ", 3D back-projection on the GPU" : "",
                       options_.volume_transforms ? ", 3D reconstructions and transforms on the GPU" : "",
                       options_.reduce_scores ? ", coarse posteriors reduced on the GPU" : "",
                       options_.score_many ? ", per-particle passes scored a batch at once" : "");
  }

  std::string many_stage_summary() const {
    std::string out;
    for (int i = 0; i < kManyStages; ++i) out += fmt::format("{}{} {:.2f} s", i ? ", " : "", kManyStageNames[i], many_time_.stage[i]);
    return out;
  }

  void plan(int slots, int particles, int templates) override {
    cpu_->plan(slots, particles, templates);
    if (many_time_.requests > 0)  // where the last E-step's per-particle passes spent their time
      log::info("GPU per-particle passes of the last E-step: {} requests in {} groups, {:.2f} s staging on the CPU (references {:.2f} s, "
                "particles found {:.2f} s, host arrays {:.2f} s, layout {:.2f} s, scores out {:.2f} s), {:.2f} s waiting for the GPU; on "
                "the GPU: {}",
                many_time_.requests, many_time_.groups, many_time_.staging, many_time_.references, many_time_.kept, many_time_.reserving,
                many_time_.laying_out, many_time_.unstaging, many_time_.device, many_stage_summary());
    many_time_ = {};
    if (const AllocationClock::Reading grown = AllocationClock::process().take(); grown.grown > 0)
      log::info("GPU arrays of the last E-step: grown {} times, {:.2f} s in CUDA's allocation calls", grown.grown, grown.seconds);
    if (volume_sums_) {
      const VolumeSumsTiming t = volume_sums_->take_timing();
      if (t.batches > 0)
        log::info("GPU back-projection of the last E-step: {} insertions in {} batches, {:.2f} s of GPU kernels, the CPU waited {:.2f} s",
                  t.insertions, t.batches, t.kernels, t.host_wait);
    }
    // New E-step, new templates and references: what was resident is stale.
    for (auto& d : devices_) {
      std::lock_guard lock(d->mutex);
      d->resident.clear();
      d->references.clear();
      d->lists.clear();
    }
    while (static_cast<int>(slots_.size()) < std::max(1, slots)) {
      auto s = std::make_unique<Slot>();
      s->device = devices_[slots_.size() % devices_.size()]->id;
      check(cudaSetDevice(s->device), "cudaSetDevice");
      for (int i = 0; i < 2; ++i) {
        s->stream[i] = urgent_stream("cudaStreamCreate (scoring)");
        check(cudaEventCreateWithFlags(&s->done[i], cudaEventDisableTiming), "cudaEventCreate");
      }
      check(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming), "cudaEventCreate");
      check(cublas_library().create(&s->handle), "cublasCreate");
      slots_.push_back(std::move(s));
    }
  }

  void score(const em::ScoreRequest& q, float* out, int slot) override {
    const double flops = 2.0 * q.row_count * q.template_count * 2 * q.frequencies + 2.0 * q.particles * q.template_count * q.frequencies;
    // Requests whose templates the GPU samples itself stay on the GPU (the CPU has no templates to score).
    if (flops < options_.cpu_below_flops && !q.sampled.source) return cpu_->score(q, out, slot);
    if (slot < 0 || static_cast<std::size_t>(slot) >= slots_.size()) fail("scoring: slot {} outside the plan ({} slots)", slot, slots_.size());
    if (q.row_count == 0 || q.template_count == 0) return;
    score_on_slot(q, out, *slots_[static_cast<std::size_t>(slot)], nullptr, 0);
  }

  /// Only where the device samples the source's templates: others would go one request after
  /// another through score() (the seam's default score_many), slower than the per-particle path.
  bool scores_many(const em::TemplateSource& source) const override { return options_.score_many && samples_templates(source); }

  /// Requests in groups of at most options_.many_group_floats floats of rows, templates and scores on the card,
  /// each group staged, built, sampled and scored on slot 0's first stream. Two groups are in
  /// flight: the next is staged on the CPU while the card scores the last (staging was 40% of a
  /// 100,000-particle refine's local passes, on the card's critical path).
  void score_many(const std::vector<em::ScoreRequest>& requests, const std::vector<float*>& outs) override {
    if (!many_on_device(requests)) return em::ScoringBackend::score_many(requests, outs);
    const double F = requests.front().frequencies;
    std::optional<ManyInFlight> running;
    int host = 0;
    for (std::size_t begin = 0, end = 0; begin < requests.size(); begin = end) {
      double floats = 0;
      for (end = begin; end < requests.size(); ++end) {
        const em::ScoreRequest& q = requests[end];
        const double add = q.row_count * 2 * F + q.template_count * 3 * F + double(q.row_count) * q.template_count + 4 * F;
        if (end > begin && floats + add > options_.many_group_floats) break;
        floats += add;
      }
      ManyInFlight next = stage_many_group(requests, begin, end, host);
      // The card takes the next group as soon as the last one is done, and works on it while the
      // last one's scores are copied out here (the card sat idle through that copy, ~0.6 s of a
      // 100,000-particle half E-step). Nothing is in flight while the next is enqueued, so a device
      // array it grows is not freed under a running kernel.
      if (running) wait_for_many_group(*running);
      enqueue_many_group(next);
      if (running) finish_many_group(*running, outs);
      running = next;
      host = 1 - host;
    }
    if (running) wait_for_many_group(*running), finish_many_group(*running, outs);
  }

  /// Kept scores: at most 4 GiB of them (a batch of 256 x 25 shifts x 3,600 templates is 92 MB).
  bool reduces_scores(const em::KeptScores& shape) const override {
    const double bytes = 4.0 * shape.particles * shape.shifts * shape.templates;
    return options_.reduce_scores && bytes <= 4.0 * (1 << 30) && shape.orientations > 0 && shape.templates % shape.orientations == 0;
  }

  void score_kept(const em::ScoreRequest& q, const em::KeptScores& shape, int first_template) override {
    if (slots_.empty()) fail("GPU kept scores before plan() (internal error)");
    if (q.row_count != shape.particles * shape.shifts || first_template + q.template_count > shape.templates)
      fail("GPU kept scores: request outside the batch's shape (internal error)");
    Slot& s = *slots_.front();
    check(cudaSetDevice(s.device), "cudaSetDevice");
    // A new batch may need more room (its contents need not survive); later chunks add columns.
    if (first_template == 0) kept_ = scores_reducer().scores(shape);
    if (q.row_count == 0 || q.template_count == 0) return;
    score_on_slot(q, nullptr, s, kept_ + first_template, shape.templates);
  }

  void reduce_kept(const em::ScoreReduction& reduction, em::ReducedScores& out) override {
    Slot& s = *slots_.front();
    check(cudaSetDevice(s.device), "cudaSetDevice");
    for (cudaStream_t stream : s.stream) check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (kept scores)");
    const auto start = std::chrono::steady_clock::now();
    scores_reducer().reduce(reduction, out);
    s.stats.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  bool samples_templates(const em::TemplateSource& source) const override {
    return options_.sample_templates && host_references(source).dimensions != 0;
  }

  bool sums_templates() const override { return options_.template_sums; }

  void begin_template_sums(int templates, int frequencies) override {
    Slot& s = sums_slot();
    sums_templates_ = templates, sums_frequencies_ = frequencies;
    const std::size_t data = sz(templates) * 2 * sz(frequencies), weight = sz(templates) * sz(frequencies);
    check(cudaMemsetAsync(s.sum_data.reserve(data, s.device), 0, data * sizeof(float), s.stream[0]), "cudaMemsetAsync");
    check(cudaMemsetAsync(s.sum_weight.reserve(weight, s.device), 0, weight * sizeof(float), s.stream[0]), "cudaMemsetAsync");
  }

  /// The batch's kept hypotheses grouped by template on the host (em::group_sum_terms, over the
  /// CPU's threads), then each
  /// template touched summed over its entries on the device by one block, or by several that split
  /// its frequencies where it holds many entries (split_sums_into_blocks). Kept hypotheses are sparse
  /// (a particle holds ~10^2-10^4 of the J x shifts): a dense weight matrix times every particle's
  /// rows at every shift cost ~100x the arithmetic. The split gives every block about the same work
  /// where a few templates hold most entries. (A broad first iteration's 16-18 s of sums for 100,000
  /// particles on an H100 did not move with it: at its resolution (~530 frequencies) a template
  /// splits into at most 4 blocks, and ~10^9 kept terms are grouped on the host and uploaded;
  /// grouped over the CPU's threads (em::group_sum_terms) they took 4.6 s, H100, 2026-12-07.)
  void add_template_sums(const em::TemplateSumsBatch& q) override {
    Slot& s = sums_slot();
    const int B = q.particles, T = q.shifts, F = q.frequencies, J = sums_templates_;
    if (F != sums_frequencies_) fail("GPU M-step sums: {} frequencies, begun with {} (internal error)", F, sums_frequencies_);
    if (B == 0 || q.term_count == 0) return;
    em::group_sum_terms(q.terms, q.term_count, J, B, T, grouped_);
    cudaStream_t stream = s.stream[0];
    const auto up = [&](DeviceBuffer& buffer, const void* host, std::size_t floats) {
      float* d = buffer.reserve(std::max<std::size_t>(1, floats), s.device);
      check(cudaMemcpyAsync(d, host, floats * sizeof(float), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (sums)");
      return d;
    };
    const auto* x = reinterpret_cast<const float2*>(up(s.sum_x, q.x, sz(B) * 2 * sz(F)));
    const float* ctf_isg = up(s.sum_ctf_isg, q.ctf_isg, sz(B) * sz(F));
    const float* ctf2 = up(s.sum_ctf2, q.ctf2, sz(B) * sz(F));
    const auto* ramps = reinterpret_cast<const float2*>(up(s.sum_ramps, q.ramps, sz(T) * 2 * sz(F)));
    static_assert(sizeof(SumEntry) == 3 * sizeof(float) && sizeof(int) == sizeof(float));
    const auto* entries = reinterpret_cast<const SumEntry*>(up(s.sum_terms, grouped_.entries.data(), grouped_.entries.size() * 3));
    const auto* rows = reinterpret_cast<const int*>(up(s.sum_rows, grouped_.rows.data(), grouped_.rows.size()));
    const auto* offsets = reinterpret_cast<const int*>(up(s.sum_offsets, grouped_.offsets.data(), grouped_.offsets.size()));
    split_sums_into_blocks(F);
    static_assert(sizeof(SumBlock) == 3 * sizeof(float));
    const auto* blocks = reinterpret_cast<const SumBlock*>(up(s.sum_blocks, sum_blocks_.data(), sum_blocks_.size() * 3));
    template_sums_kernel<<<static_cast<unsigned>(sum_blocks_.size()), kSumThreads, 0, stream>>>(
        reinterpret_cast<float2*>(s.sum_data.data()), s.sum_weight.data(), blocks, rows, offsets, entries, x, ctf_isg, ctf2, ramps, F);
    check(cudaGetLastError(), "M-step sums kernel");
    // The host's arrays are reused for the next batch only after their copies have been read.
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }

  void end_template_sums(float* data, float* weight) override {
    Slot& s = sums_slot();
    const std::size_t nd = sz(sums_templates_) * 2 * sz(sums_frequencies_), nw = sz(sums_templates_) * sz(sums_frequencies_);
    sums_download_.resize(nd + nw);
    check(cudaMemcpyAsync(sums_download_.data(), s.sum_data.data(), nd * sizeof(float), cudaMemcpyDeviceToHost, s.stream[0]), "cudaMemcpyAsync");
    check(cudaMemcpyAsync(sums_download_.data() + nd, s.sum_weight.data(), nw * sizeof(float), cudaMemcpyDeviceToHost, s.stream[0]),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s.stream[0]), "cudaStreamSynchronize");
    for (std::size_t i = 0; i < nd; ++i) data[i] += sums_download_[i];
    for (std::size_t i = 0; i < nw; ++i) weight[i] += sums_download_[nd + i];
  }

  void fold_template_sums() override {
    Slot& s = sums_slot();
    const std::size_t nd = sz(sums_templates_) * 2 * sz(sums_frequencies_), nw = sz(sums_templates_) * sz(sums_frequencies_);
    if (!totals_begun_) {
      check(cudaMemsetAsync(s.total_data.reserve(nd, s.device), 0, nd * sizeof(float), s.stream[0]), "cudaMemsetAsync");
      check(cudaMemsetAsync(s.total_weight.reserve(nw, s.device), 0, nw * sizeof(float), s.stream[0]), "cudaMemsetAsync");
      totals_begun_ = true, totals_floats_ = {nd, nw};
    }
    if (totals_floats_ != std::pair{nd, nw}) fail("GPU M-step totals: chunks of different sizes (internal error)");
    add_on_device(s.total_data.data(), s.sum_data.data(), static_cast<long long>(nd), s.stream[0]);
    add_on_device(s.total_weight.data(), s.sum_weight.data(), static_cast<long long>(nw), s.stream[0]);
  }

  void take_template_totals(float* data, float* weight) override {
    Slot& s = sums_slot();
    if (!totals_begun_) return;  // no chunk: nothing to write
    const auto [nd, nw] = totals_floats_;
    check(cudaMemcpyAsync(data, s.total_data.data(), nd * sizeof(float), cudaMemcpyDeviceToHost, s.stream[0]), "cudaMemcpyAsync");
    check(cudaMemcpyAsync(weight, s.total_weight.data(), nw * sizeof(float), cudaMemcpyDeviceToHost, s.stream[0]), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s.stream[0]), "cudaStreamSynchronize");
    totals_begun_ = false;
  }

  /// sum_blocks_: the blocks of the sums kernel. A template's frequencies are split into pieces in
  /// proportion to its share of the batch's entries (at least kSumThreads frequencies a piece), so
  /// that a template holding most of a broad posterior's hypotheses does not run alone for long.
  void split_sums_into_blocks(int F) {
    constexpr double kTargetBlocks = 4096;
    const double total = std::max<double>(1, static_cast<double>(grouped_.offsets.back()));
    const int most_pieces = std::max(1, F / kSumThreads);
    sum_blocks_.clear();
    for (std::size_t r = 0; r < grouped_.rows.size(); ++r) {
      const double count = grouped_.offsets[r + 1] - grouped_.offsets[r];
      const int wanted = std::clamp(static_cast<int>(std::ceil(count * kTargetBlocks / total)), 1, most_pieces);
      const int width = (F + wanted - 1) / wanted;
      for (int f = 0; f < F; f += width) sum_blocks_.push_back({static_cast<int>(r), f, std::min(F, f + width)});
    }
  }

  bool prepares_batches() const override { return options_.prepare_batches; }

  void prepare_batch(const em::PrepareBatch& batch) override { preparer().prepare(batch); }

  float* pinned_host(std::size_t floats) override { return options_.prepare_batches ? preparer().pinned_host(floats) : nullptr; }
  // The 3D back-projection (backprojection.cu), on the first device.
  bool sums_volumes() const override { return options_.volume_sums; }
  void begin_volume_sums(int classes, int n, int padding, double max_radius) override {
    if (!volume_sums_) volume_sums_ = std::make_unique<DeviceVolumeSums>(devices_.front()->id);
    volume_sums_->begin(classes, n, padding, max_radius);
  }
  void add_volume_sums(const em::VolumeSumsBatch& batch) override {
    // Grids the preparation kept on the device are read there (the host's were never written).
    const KeptGrids* grids = preparer_ ? preparer_->kept_grids(batch.unmasked.data(), batch.particles) : nullptr;
    volumes().add(batch, grids);
  }
  void end_volume_sums(const std::vector<em::BackProjector*>& into) override { volumes().end(into); }
  void fold_volume_sums() override { volumes().fold(); }
  void take_volume_totals(const std::vector<em::BackProjector*>& into) override { volumes().take_totals(into); }
  // The M-step's reconstructions and padded transforms (volume_transforms.cu), on the first device.
  em::VolumeTransforms& volume_transforms() override {
    if (!options_.volume_transforms) return em::ScoringBackend::volume_transforms();
    if (!volume_transforms_) volume_transforms_ = make_device_volume_transforms(devices_.front()->id);
    return *volume_transforms_;
  }

  em::BackendStats stats() const override {
    em::BackendStats total = cpu_->stats();
    for (const auto& s : slots_) total.flops += s->stats.flops, total.seconds += s->stats.seconds;
    return total;
  }

 private:
  bool split() const { return options_.precision == Precision::split_tf32; }

  /// Scores request q on slot s: into `out` on the host, or into `kept` on the device (rows kept_ld apart).
  void score_on_slot(const em::ScoreRequest& q, float* out, Slot& s, float* kept, int kept_ld) {
    const double flops = 2.0 * q.row_count * q.template_count * 2 * q.frequencies + 2.0 * q.particles * q.template_count * q.frequencies;
    const auto start = std::chrono::steady_clock::now();
    check(cudaSetDevice(s.device), "cudaSetDevice");
    const Templates t = templates_on_device(q, s);
    const float* norms = norms_on_device(q, s, t);
    check(cudaEventRecord(s.ready, s.stream[0]), "cudaEventRecord");
    check(cudaStreamWaitEvent(s.stream[1], s.ready, 0), "cudaStreamWaitEvent");
    score_rows_in_pieces(q, out, s, t, norms, kept, kept_ld);
    s.stats.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    s.stats.flops += flops;
  }

  KeptScoreReducer& scores_reducer() {
    if (!scores_reducer_) scores_reducer_ = std::make_unique<KeptScoreReducer>(slots_.front()->device);
    return *scores_reducer_;
  }

  struct Templates {
    const float* head = nullptr;
    const float* tail = nullptr;  // split-TF32 only
    const float* power = nullptr;
  };

  /// Copies `rows` rows of `width` floats at `stride` (the last row only up to its width).
  static void upload_rows(float* device, const float* host, int rows, int width, int stride, cudaStream_t stream) {
    const std::size_t floats = sz(rows - 1) * sz(stride) + sz(width);
    check(cudaMemcpyAsync(device, host, floats * sizeof(float), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (to GPU)");
  }

  void split_on_device(float* head, float* tail, int rows, int width, int stride, cudaStream_t stream) {
    const long long count = static_cast<long long>(rows) * width;
    split_tf32_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(head, tail, rows, width, stride);
    check(cudaGetLastError(), "split kernel");
  }

  /// The request's templates on the slot's device: resident ones looked up (uploaded on first use),
  /// others uploaded now on stream 0.
  Templates templates_on_device(const em::ScoreRequest& q, Slot& s) {
    if (q.sampled.source) return sample_on_device(q, s);
    const int K = 2 * q.frequencies, J = q.template_count;
    const std::size_t template_floats = sz(J - 1) * sz(q.template_stride) + sz(K);
    const std::size_t power_floats = sz(J - 1) * sz(q.power_stride) + sz(q.frequencies);
    const auto upload = [&](DeviceBuffer& head, DeviceBuffer& tail, DeviceBuffer& power) {
      float* h = head.reserve(template_floats, s.device);
      upload_rows(h, q.templates, J, K, q.template_stride, s.stream[0]);
      upload_rows(power.reserve(power_floats, s.device), q.power, J, q.frequencies, q.power_stride, s.stream[0]);
      if (split()) split_on_device(h, tail.reserve(template_floats, s.device), J, K, q.template_stride, s.stream[0]);
      return Templates{head.data(), split() ? tail.data() : nullptr, power.data()};
    };
    if (!q.templates_resident) return upload(s.templates_head, s.templates_tail, s.power);
    DeviceState& d = device_state(s.device);
    std::lock_guard lock(d.mutex);
    auto& entry = d.resident[q.templates];
    if (!entry) {
      entry = std::make_unique<ResidentTemplates>();
      const Templates t = upload(entry->head, entry->tail, entry->power);
      check(cudaStreamSynchronize(s.stream[0]), "cudaStreamSynchronize");  // other slots may use it next
      return t;
    }
    return Templates{entry->head.data(), split() ? entry->tail.data() : nullptr, entry->power.data()};
  }

  /// The request's templates sampled on the device from the resident references (stream 0):
  /// only the J poses cross the bus, never the J x 3F template values.
  Templates sample_on_device(const em::ScoreRequest& q, Slot& s) {
    const ResidentReferences& r = references_on_device(*q.sampled.source, s.device);
    const int2* kxy = list_on_device(*q.sampled.list, s.device);
    const int J = q.template_count, F = q.frequencies;
    if (sz(F) > frequency_count(*q.sampled.list))
      fail("GPU template sampling: {} frequencies of a list of {} (internal error)", F, frequency_count(*q.sampled.list));
    const std::size_t pose_floats = sz(J) * sizeof(TemplatePose) / sizeof(float);
    auto* host = reinterpret_cast<TemplatePose*>(s.staging_poses.reserve(pose_floats));
    template_poses(q.sampled, J, r.host, host);
    auto* poses = reinterpret_cast<TemplatePose*>(s.poses.reserve(pose_floats, s.device));
    check(cudaMemcpyAsync(poses, host, sz(J) * sizeof(TemplatePose), cudaMemcpyHostToDevice, s.stream[0]), "cudaMemcpyAsync (poses)");
    float* head = s.templates_head.reserve(sz(J) * sz(q.template_stride), s.device);
    float* power = s.power.reserve(sz(J) * sz(q.power_stride), s.device);
    sample_on_stream(head, power, r, poses, J, kxy, F, q.template_stride, q.power_stride, s.stream[0]);
    if (!split()) return Templates{head, nullptr, power};
    float* tail = s.templates_tail.reserve(sz(J) * sz(q.template_stride), s.device);
    split_on_device(head, tail, J, 2 * F, q.template_stride, s.stream[0]);
    return Templates{head, tail, power};
  }

  /// J templates at `poses` (on the device) sampled from the resident references on `stream`: rows
  /// of 2F at `stride` into head, |A|^2 at `power_stride` into power.
  static void sample_on_stream(float* head, float* power, const ResidentReferences& r, const TemplatePose* poses, int J, const int2* kxy,
                               int F, int stride, int power_stride, cudaStream_t stream) {
    if (J <= 0) return;
    const dim3 blocks(static_cast<unsigned>((F + 127) / 128), static_cast<unsigned>(std::min(J, 65535)));
    sample_templates_kernel<<<blocks, 128, 0, stream>>>(head, power, r.table.data(), poses, J, kxy, F, stride, power_stride,
                                                        r.host.dimensions, r.host.m, r.host.hm);
    check(cudaGetLastError(), "template sampling kernel");
  }

  void sample_to_host(const em::SampledTemplates& sampled, int count, int frequencies, float* out) override {
    if (count <= 0) return;
    if (!sampled.source || !sampled.list || sz(frequencies) > frequency_count(*sampled.list))
      fail("GPU template sampling to the host: {} frequencies of a shorter list (internal error)", frequencies);
    Slot& s = *slots_.front();
    check(cudaSetDevice(s.device), "cudaSetDevice");
    const ResidentReferences& refs = references_on_device(*sampled.source, s.device);
    std::vector<TemplatePose> poses(sz(count));
    template_poses(sampled, count, refs.host, poses.data());
    HostSampling& h = host_sampling_;
    auto* d_poses = reinterpret_cast<TemplatePose*>(h.poses.reserve_growing(floats_of(sz(count) * sizeof(TemplatePose)), s.device));
    float* head = h.head.reserve_growing(sz(count) * 2 * sz(frequencies), s.device);
    float* power = h.power.reserve_growing(sz(count) * sz(frequencies), s.device);
    cudaStream_t stream = s.stream[0];
    check(cudaMemcpyAsync(d_poses, poses.data(), poses.size() * sizeof(TemplatePose), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (poses)");
    sample_on_stream(head, power, refs, d_poses, count, list_on_device(*sampled.list, s.device), frequencies, 2 * frequencies, frequencies,
                     stream);
    check(cudaMemcpyAsync(out, head, sz(count) * 2 * sz(frequencies) * sizeof(float), cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (templates)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (templates to the host)");
  }

  /// The source's grids on this device: uploaded by the first caller of the E-step, then shared.
  const ResidentReferences& references_on_device(const em::TemplateSource& source, int device) {
    DeviceState& d = device_state(device);
    std::lock_guard lock(d.mutex);
    auto& entry = d.references[&source];
    if (entry) return *entry;
    auto r = std::make_unique<ResidentReferences>();
    r->host = host_references(source);
    const std::size_t cells = r->host.cells(), bytes = cells * 2 * sizeof(float), K = r->host.classes.size();
    const auto here = [&](std::size_t k) { return r->host.on_device[k] && r->host.on_device[k]->device() == device; };
    std::size_t uploads = 0;
    for (std::size_t k = 0; k < K; ++k) {
      if (r->host.on_device[k] && r->host.on_device[k]->complex_values() != cells)
        fail("GPU template sampling: a kept transform of {} values for a {}-value grid (internal error)", r->host.on_device[k]->complex_values(), cells);
      if (!here(k)) ++uploads;
    }
    float* grids = uploads ? r->grids.reserve(2 * cells * uploads, device) : nullptr;
    std::vector<const float2*> table(K);
    std::vector<float> through_host;  // a class kept on another device
    for (std::size_t k = 0, slot = 0; k < K; ++k) {
      if (here(k)) {
        table[k] = reinterpret_cast<const float2*>(r->host.on_device[k]->data());
        continue;
      }
      const void* from = r->host.classes[k];
      if (!from) {
        through_host.resize(2 * cells);
        r->host.on_device[k]->copy_to(through_host.data());
        from = through_host.data();
      }
      float* to = grids + 2 * cells * slot++;
      upload_and_wait(to, from, bytes, "cudaMemcpy (references)");
      table[k] = reinterpret_cast<const float2*>(to);
    }
    upload_and_wait(r->table.reserve(std::max<std::size_t>(1, K), device), table.data(), K * sizeof(const float2*), "cudaMemcpy (reference table)");
    entry = std::move(r);
    return *entry;
  }

  /// The list's (kx, ky) on this device, uploaded once per E-step.
  const int2* list_on_device(const em::FrequencyList& list, int device) {
    DeviceState& d = device_state(device);
    std::lock_guard lock(d.mutex);
    auto& entry = d.lists[&list];
    if (!entry) {
      const std::vector<int> pairs = frequency_pairs(list);  // (kx, ky): the layout of int2
      auto buffer = std::make_unique<DeviceBuffer>();
      float* data = buffer->reserve(std::max<std::size_t>(2, pairs.size()), device);
      upload_and_wait(data, pairs.data(), pairs.size() * sizeof(int), "cudaMemcpy (frequencies)");
      entry = std::move(buffer);
    }
    return reinterpret_cast<const int2*>(entry->data());
  }

  /// Batches are prepared on the first device (the results go back to the host).
  BatchPreparer& preparer() {
    if (!preparer_) preparer_ = std::make_unique<BatchPreparer>(devices_.front()->id);
    return *preparer_;
  }

  DeviceVolumeSums& volumes() {
    if (!volume_sums_) fail("GPU back-projection before begin_volume_sums (internal error)");
    return *volume_sums_;
  }

  Slot& sums_slot() {
    if (slots_.empty()) fail("GPU M-step sums before plan() (internal error)");
    check(cudaSetDevice(slots_.front()->device), "cudaSetDevice");
    return *slots_.front();
  }

  DeviceState& device_state(int id) {
    for (auto& d : devices_)
      if (d->id == id) return *d;
    fail("CUDA backend: device {} not planned (internal error)", id);
  }

  /// n = ctf2 . power^T in FP32 on stream 0: [particles][templates].
  const float* norms_on_device(const em::ScoreRequest& q, Slot& s, const Templates& t) {
    float* ctf2 = s.ctf2.reserve(sz(q.particles - 1) * sz(q.ctf2_stride) + sz(q.frequencies), s.device);
    upload_rows(ctf2, q.ctf2, q.particles, q.frequencies, q.ctf2_stride, s.stream[0]);
    float* norms = s.norms.reserve(sz(q.particles) * sz(q.template_count), s.device);
    gemm(s, s.stream[0], CUBLAS_COMPUTE_32F, q.template_count, q.particles, q.frequencies, t.power, q.power_stride, ctf2,
         q.ctf2_stride, 0.0f, norms);
    return norms;
  }

  /// Row-major C[m_rows][n_cols] (rows ldc apart; 0: n_cols) = beta C + A[m_rows][k] . B[n_cols][k]^T,
  /// as the column-major product C^T = B . A^T that cuBLAS computes.
  static void gemm(Slot& s, cudaStream_t stream, cublasComputeType_t compute, int n_cols, int m_rows, int k, const float* b,
                   int ldb, const float* a, int lda, float beta, float* c, int ldc = 0) {
    check(cublas_library().set_stream(s.handle, stream), "cublasSetStream");
    const float alpha = 1.0f;
    check(cublas_library().gemm_ex(s.handle, CUBLAS_OP_T, CUBLAS_OP_N, n_cols, m_rows, k, &alpha, b, CUDA_R_32F, ldb, a, CUDA_R_32F, lda,
                       &beta, c, CUDA_R_32F, ldc > 0 ? ldc : n_cols, compute, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
  }

  /// Rows in pieces, alternating between the two streams and their pinned buffers: the host copy
  /// into one piece's buffer and its transfers overlap the other piece's GEMM. With `kept`, the
  /// scores stay on the device there instead (rows kept_ld floats apart) and `out` is unused.
  void score_rows_in_pieces(const em::ScoreRequest& q, float* out, Slot& s, const Templates& t, const float* norms,
                            float* kept = nullptr, int kept_ld = 0) {
    const int K = 2 * q.frequencies, J = q.template_count;
    constexpr std::size_t kPieceFloats = std::size_t{8} << 20;  // 32 MiB of rows or scores per piece
    const int piece_rows = std::max(1, static_cast<int>(std::min(kPieceFloats / sz(q.row_stride), kPieceFloats / sz(J))));
    const int pieces = (q.row_count + piece_rows - 1) / piece_rows;
    const int held_rows = std::min(piece_rows, q.row_count);
    float* rows_head = s.rows_head.reserve(2 * sz(held_rows) * sz(q.row_stride), s.device);
    float* rows_tail = split() ? s.rows_tail.reserve(2 * sz(held_rows) * sz(q.row_stride), s.device) : nullptr;
    float* scores = kept ? nullptr : s.scores.reserve(2 * sz(held_rows) * sz(J), s.device);
    for (int i = 0; i < 2; ++i) {
      s.staging_rows[i].reserve(sz(held_rows) * sz(q.row_stride));
      if (!kept) s.staging_scores[i].reserve(sz(held_rows) * sz(J));
    }
    const int ld = kept ? kept_ld : J;
    const auto rows_of = [&](int p) { return std::min(piece_rows, q.row_count - p * piece_rows); };
    const auto drain = [&](int p) {  // piece p's scores, back on the host, into `out`
      const int i = p % 2;
      check(cudaEventSynchronize(s.done[i]), "cudaEventSynchronize");
      if (kept) return;  // only the staged rows had to be free again
      std::memcpy(out + sz(p) * sz(piece_rows) * sz(J), s.staging_scores[i].data(), sz(rows_of(p)) * sz(J) * sizeof(float));
    };
    for (int p = 0; p < pieces; ++p) {
      const int i = p % 2, first = p * piece_rows, n = rows_of(p);
      if (p >= 2) drain(p - 2);
      cudaStream_t stream = s.stream[i];
      float* staged = s.staging_rows[i].data();
      const std::size_t floats = sz(n - 1) * sz(q.row_stride) + sz(K);
      std::memcpy(staged, q.rows + sz(first) * sz(q.row_stride), floats * sizeof(float));
      float* head = rows_head + sz(i) * sz(held_rows) * sz(q.row_stride);
      float* piece_scores = kept ? kept + sz(first) * sz(kept_ld) : scores + sz(i) * sz(held_rows) * sz(J);
      upload_rows(head, staged, n, K, q.row_stride, stream);
      if (split()) {
        float* tail = rows_tail + sz(i) * sz(held_rows) * sz(q.row_stride);
        split_on_device(head, tail, n, K, q.row_stride, stream);
        // Smallest terms first: tail . head, head . tail, then head . head.
        gemm(s, stream, CUBLAS_COMPUTE_32F_FAST_TF32, J, n, K, t.head, q.template_stride, tail, q.row_stride, 0.0f, piece_scores, ld);
        gemm(s, stream, CUBLAS_COMPUTE_32F_FAST_TF32, J, n, K, t.tail, q.template_stride, head, q.row_stride, 1.0f, piece_scores, ld);
        gemm(s, stream, CUBLAS_COMPUTE_32F_FAST_TF32, J, n, K, t.head, q.template_stride, head, q.row_stride, 1.0f, piece_scores, ld);
      } else {
        const auto compute = options_.precision == Precision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        gemm(s, stream, compute, J, n, K, t.head, q.template_stride, head, q.row_stride, 0.0f, piece_scores, ld);
      }
      const long long count = static_cast<long long>(n) * J;
      combine_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(piece_scores, ld, norms, n, J, q.particles, first, q.cross_correlation);
      check(cudaGetLastError(), "combine kernel");
      if (!kept) check(cudaMemcpyAsync(s.staging_scores[i].data(), piece_scores, sz(count) * sizeof(float), cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync (from GPU)");
      check(cudaEventRecord(s.done[i], stream), "cudaEventRecord");
    }
    for (int p = std::max(0, pieces - 2); p < pieces; ++p) drain(p);
  }

  /// Whether every request is one the device scores at once: one particle, rows to build,
  /// templates to sample from one source at one list, the same F and score.
  bool many_on_device(const std::vector<em::ScoreRequest>& requests) const {
    if (requests.empty() || slots_.empty()) return false;
    const em::ScoreRequest& first = requests.front();
    if (!first.sampled.source || !first.sampled.list) return false;
    for (const em::ScoreRequest& q : requests)
      if (q.particles != 1 || q.rows || q.particle_rows.list != first.sampled.list || q.sampled.source != first.sampled.source ||
          q.sampled.list != first.sampled.list || q.frequencies != first.frequencies || q.cross_correlation != first.cross_correlation ||
          q.ctf2_stride < q.frequencies)
        return false;
    return true;
  }

  /// score_many's stages on the card, timed by events (logged per E-step: where its time goes).
  enum ManyStage { kManyUpload, kManyGather, kManyRows, kManySample, kManyNorms, kManyScores, kManyDownload, kManyStages };
  static constexpr const char* kManyStageNames[kManyStages] = {"uploads", "gather", "rows", "template sampling", "norms", "scores",
                                                               "scores back"};

  /// One group's staging on the host (page-locked), two of them: one group is staged while the
  /// other's copies and kernels run.
  struct ManyHost {
    PinnedBuffer x, ctf_isg, ctf2, rows, poses, owner, requests, tiles, scores;
    std::vector<int> kept_index;  // per request of a group: its particle in the kept batch (empty: staged)
    // Marks between the group's stages on the stream (ManyStage), read once it is finished.
    cudaEvent_t marks[kManyStages + 1] = {};
  };
  /// score_many's staging and the device's arrays (one set: the groups run in stream order).
  struct ManyBuffers {
    ManyHost host[2];
    DeviceBuffer d_x, d_ctf_isg, d_ctf2, d_rows, d_poses, d_owner, d_requests, d_tiles, d_row_values, d_head, d_power, d_norms,
        d_scores, d_kept_index, d_partial;
  };

  /// The sizes of a group of requests: rows, templates, scores, and the tiles of its scores.
  struct ManyGroup {
    int F = 0, N = 0, R = 0, NJ = 0, tiles = 0;
    long long NS = 0;
    ManyTiling tiling;
  };

  ManyGroup many_group_sizes(const std::vector<em::ScoreRequest>& requests, std::size_t begin, std::size_t end, int device) const {
    ManyGroup g;
    g.F = requests[begin].frequencies, g.N = static_cast<int>(end - begin);
    // Two waves of full-occupancy blocks (8 of 256 threads on each multiprocessor).
    const int blocks_wanted = 16 * multiprocessors(device);
    g.tiling = choose_many_tiling(requests, begin, end, 2 * g.F, blocks_wanted, options_.many_tile_rows, options_.many_split);
    for (std::size_t i = begin; i < end; ++i) {
      const em::ScoreRequest& q = requests[i];
      g.R += q.row_count, g.NJ += q.template_count, g.NS += static_cast<long long>(q.row_count) * q.template_count;
      g.tiles += many_tiles_of(q.row_count, q.template_count, g.tiling);
    }
    return g;
  }

  static int multiprocessors(int device) {
    int count = 0;
    check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    return std::max(1, count);
  }

  static std::size_t floats_of(std::size_t bytes) { return (bytes + sizeof(float) - 1) / sizeof(float); }

  /// A group of requests [begin, end) staged in host set `host` and (once enqueued) on its way
  /// through the card; `scores` (page-locked) are valid once finished.
  struct ManyInFlight {
    std::size_t begin = 0;
    int host = 0;
    ManyGroup g;
    const ResidentReferences* refs = nullptr;
    ManyStaging staged{};
    const em::ScoreRequest* first = nullptr;
    const float* scores = nullptr;
  };

  /// Requests [begin, end) staged on the host (the particles' X, C/sigma^2 and C^2/sigma^2 unless
  /// they are gathered on the card, the rows' shifts, the templates' poses, the tiles).
  ManyInFlight stage_many_group(const std::vector<em::ScoreRequest>& requests, std::size_t begin, std::size_t end, int host) {
    const auto start = std::chrono::steady_clock::now();
    Slot& s = *slots_.front();
    check(cudaSetDevice(s.device), "cudaSetDevice");
    ManyInFlight f;
    f.begin = begin, f.host = host, f.first = &requests[begin];
    const ResidentReferences& refs = *(f.refs = &references_on_device(*f.first->sampled.source, s.device));
    const auto referenced = std::chrono::steady_clock::now();
    if (sz(f.first->frequencies) > frequency_count(*f.first->sampled.list))
      fail("GPU score_many: {} frequencies of a shorter list (internal error)", f.first->frequencies);
    const ManyGroup& g = f.g = many_group_sizes(requests, begin, end, s.device);
    ManyHost& m = many_.host[host];
    // Particles of the batch prepared on this card are gathered there, not staged and sent (at a
    // refine's high resolution 16 bytes per frequency of each particle, ~9 GB per half E-step).
    const bool gathered = find_kept_particles(requests, begin, end, s.device, m.kept_index);
    const auto found = std::chrono::steady_clock::now();
    f.staged = ManyStaging{gathered ? nullptr : m.x.reserve(sz(g.N) * 2 * sz(g.F)),
                           gathered ? nullptr : m.ctf_isg.reserve(sz(g.N) * sz(g.F)),
                           gathered ? nullptr : m.ctf2.reserve(sz(g.N) * sz(g.F)),
                           reinterpret_cast<ManyRow*>(m.rows.reserve(floats_of(sz(g.R) * sizeof(ManyRow)))),
                           reinterpret_cast<TemplatePose*>(m.poses.reserve(floats_of(sz(g.NJ) * sizeof(TemplatePose)))),
                           reinterpret_cast<int*>(m.owner.reserve(sz(g.NJ))),
                           reinterpret_cast<ManyRequest*>(m.requests.reserve(floats_of(sz(g.N) * sizeof(ManyRequest)))),
                           reinterpret_cast<ManyTile*>(m.tiles.reserve(floats_of(sz(g.tiles) * sizeof(ManyTile))))};
    const auto reserved = std::chrono::steady_clock::now();
    stage_many(requests, begin, end, refs.host, g.tiling, f.staged);
    const auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    const auto done = std::chrono::steady_clock::now();
    many_time_.staging += seconds(start, done);
    many_time_.references += seconds(start, referenced), many_time_.kept += seconds(referenced, found);
    many_time_.reserving += seconds(found, reserved), many_time_.laying_out += seconds(reserved, done);
    return f;
  }

  /// A staged group up to the card, scored there and its scores on their way back (asynchronous).
  void enqueue_many_group(ManyInFlight& f) {
    Slot& s = *slots_.front();
    f.scores = score_many_on_device(f, *f.refs, *f.first->sampled.list, f.first->cross_correlation, s);
    s.stats.flops += 4.0 * f.g.F * static_cast<double>(f.g.NS) + 2.0 * f.g.F * f.g.NJ;
  }

  /// Waits until an enqueued group (the only one on the stream) is done on the card.
  void wait_for_many_group(const ManyInFlight& f) {
    Slot& s = *slots_.front();
    const auto start = std::chrono::steady_clock::now();
    check(cudaStreamSynchronize(s.stream[0]), "cudaStreamSynchronize (score_many)");
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    many_time_.device += waited, s.stats.seconds += waited;
    const ManyHost& h = many_.host[f.host];
    for (int i = 0; i < kManyStages; ++i) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, h.marks[i], h.marks[i + 1]), "cudaEventElapsedTime (score_many)");
      many_time_.stage[i] += ms / 1000;
    }
  }

  /// Copies a finished group's scores (in its host set's page-locked memory) into outs.
  void finish_many_group(const ManyInFlight& f, const std::vector<float*>& outs) {
    Slot& s = *slots_.front();
    const auto start = std::chrono::steady_clock::now();
    unstage_many_scores(f.staged.requests, f.g.N, f.scores, outs, f.begin);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    many_time_.requests += f.g.N, many_time_.groups += 1;
    many_time_.staging += seconds, many_time_.unstaging += seconds;
    s.stats.seconds += seconds;
  }

  /// Whether every request of [begin, end) is a particle of the batch last prepared on `device`
  /// (its X, C and C^2/sigma^2 where the preparation copied them, its 1/sigma^2 the values the batch
  /// was prepared with, at most the prepared frequencies); if so, their indices in that batch go
  /// into `index`. Sound because every batch of an E-step on this backend is prepared by it
  /// (prepares_batches() is the backend's, not the batch's): host arrays reused for a batch the CPU
  /// prepared never meet the card's copy of an older one.
  bool find_kept_particles(const std::vector<em::ScoreRequest>& requests, std::size_t begin, std::size_t end, int device,
                           std::vector<int>& index) const {
    index.clear();
    const bool readable = options_.gather_prepared && preparer_ && devices_.front()->id == device;
    const KeptParticles* kept = readable ? preparer_->kept_particles() : nullptr;
    if (!kept) return false;
    const auto address = [](const float* p) { return reinterpret_cast<std::uintptr_t>(p); };
    const std::size_t F = sz(kept->frequencies), count = sz(kept->count);
    std::vector<std::pair<const float*, int>> same_inv_sigma2;  // (request's array, group) found equal
    for (std::size_t i = begin; i < end; ++i) {
      const em::ScoreRequest& q = requests[i];
      const em::ParticleRows& p = q.particle_rows;
      if (!p.x || q.frequencies > kept->frequencies || address(p.x) < address(kept->host_x)) return false;
      const std::size_t offset = (address(p.x) - address(kept->host_x)) / sizeof(float);
      const std::size_t b = offset / (2 * F);
      if (offset % (2 * F) != 0 || b >= count || p.ctf != kept->host_ctf + b * F || q.ctf2 != kept->host_ctf2 + b * F) return false;
      const int group = kept->host_group[b];
      const std::pair<const float*, int> key{p.inv_sigma2, group};
      if (std::find(same_inv_sigma2.begin(), same_inv_sigma2.end(), key) == same_inv_sigma2.end()) {
        if (std::memcmp(p.inv_sigma2, kept->host_inv_sigma2.data() + sz(group) * F, sz(q.frequencies) * sizeof(float)) != 0) return false;
        same_inv_sigma2.push_back(key);
      }
      index.push_back(static_cast<int>(b));
    }
    return true;
  }

  /// A staged group up to the card, its rows built, templates sampled, norms and scores computed on
  /// slot s's first stream, and the scores on their way back to its host set's page-locked memory
  /// (returned; valid once the stream is synchronised). Nothing here waits for the card.
  const float* score_many_on_device(const ManyInFlight& f, const ResidentReferences& refs, const em::FrequencyList& list,
                                    bool cross_correlation, Slot& s) {
    ManyBuffers& m = many_;
    ManyHost& h = many_.host[f.host];
    const ManyGroup& g = f.g;
    const ManyStaging& staged = f.staged;
    cudaStream_t stream = s.stream[0];
    const auto mark = [&](int i) {
      if (!h.marks[i]) check(cudaEventCreate(&h.marks[i]), "cudaEventCreate (score_many)");
      check(cudaEventRecord(h.marks[i], stream), "cudaEventRecord (score_many)");
    };
    mark(0);
    const int F = g.F;
    const auto up = [&](DeviceBuffer& d, const void* host, std::size_t bytes) {
      float* to = d.reserve_growing(std::max<std::size_t>(1, floats_of(bytes)), s.device);
      if (bytes) check(cudaMemcpyAsync(to, host, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (score_many)");
      return to;
    };
    const float2* x = nullptr;
    const float *ctf_isg = nullptr, *ctf2 = nullptr;
    if (staged.x) {
      x = reinterpret_cast<const float2*>(up(m.d_x, staged.x, sz(g.N) * 2 * sz(F) * sizeof(float)));
      ctf_isg = up(m.d_ctf_isg, staged.ctf_isg, sz(g.N) * sz(F) * sizeof(float));
      ctf2 = up(m.d_ctf2, staged.ctf2, sz(g.N) * sz(F) * sizeof(float));
    } else {
      const auto* index = reinterpret_cast<const int*>(up(m.d_kept_index, h.kept_index.data(), sz(g.N) * sizeof(int)));
      float* gx = m.d_x.reserve_growing(std::max<std::size_t>(1, sz(g.N) * 2 * sz(F)), s.device);
      float* gw = m.d_ctf_isg.reserve_growing(std::max<std::size_t>(1, sz(g.N) * sz(F)), s.device);
      float* g2 = m.d_ctf2.reserve_growing(std::max<std::size_t>(1, sz(g.N) * sz(F)), s.device);
      mark(kManyUpload + 1);
      launch_many_gather(gx, gw, g2, *preparer_->kept_particles(), index, g.N, F, stream);
      x = reinterpret_cast<const float2*>(gx), ctf_isg = gw, ctf2 = g2;
    }
    if (staged.x) mark(kManyUpload + 1);
    const auto* rows = reinterpret_cast<const ManyRow*>(up(m.d_rows, staged.rows, sz(g.R) * sizeof(ManyRow)));
    const auto* poses = reinterpret_cast<const TemplatePose*>(up(m.d_poses, staged.poses, sz(g.NJ) * sizeof(TemplatePose)));
    const auto* owner = reinterpret_cast<const int*>(up(m.d_owner, staged.owner, sz(g.NJ) * sizeof(int)));
    const auto* table = reinterpret_cast<const ManyRequest*>(up(m.d_requests, staged.requests, sz(g.N) * sizeof(ManyRequest)));
    const auto* tiles = reinterpret_cast<const ManyTile*>(up(m.d_tiles, staged.tiles, sz(g.tiles) * sizeof(ManyTile)));
    float* row_values = m.d_row_values.reserve_growing(std::max<std::size_t>(1, sz(g.R) * 2 * sz(F)), s.device);
    float* head = m.d_head.reserve_growing(std::max<std::size_t>(1, sz(g.NJ) * 2 * sz(F)), s.device);
    float* power = m.d_power.reserve_growing(std::max<std::size_t>(1, sz(g.NJ) * sz(F)), s.device);
    float* norms = m.d_norms.reserve_growing(std::max<std::size_t>(1, sz(g.NJ)), s.device);
    float* scores = m.d_scores.reserve_growing(std::max<std::size_t>(1, static_cast<std::size_t>(g.NS)), s.device);
    const int2* kxy = list_on_device(list, s.device);
    mark(kManyGather + 1);  // (the small uploads above count with the gather)
    launch_many_rows(row_values, rows, g.R, x, ctf_isg, kxy, F, frequency_box(list), stream);
    mark(kManyRows + 1);
    sample_on_stream(head, power, refs, poses, g.NJ, kxy, F, 2 * F, F, stream);
    mark(kManySample + 1);
    launch_many_norms(norms, power, ctf2, owner, g.NJ, F, stream);
    mark(kManyNorms + 1);
    float* partial = g.tiling.split > 1 ? m.d_partial.reserve_growing(sz(g.tiling.split) * static_cast<std::size_t>(g.NS), s.device) : nullptr;
    launch_many_scores(scores, partial, g.NS, g.tiling, tiles, g.tiles, table, row_values, head, norms, F, cross_correlation, stream);
    mark(kManyScores + 1);
    float* back = h.scores.reserve(std::max<std::size_t>(1, static_cast<std::size_t>(g.NS)));
    if (g.NS > 0)
      check(cudaMemcpyAsync(back, scores, static_cast<std::size_t>(g.NS) * sizeof(float), cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync (score_many scores)");
    mark(kManyDownload + 1);
    return back;
  }

  CudaOptions options_;
  int sums_templates_ = 0, sums_frequencies_ = 0;  // the 2D M-step sums begun
  em::GroupedSumTerms grouped_;  // a batch's terms grouped by template
  std::vector<SumBlock> sum_blocks_;
  std::vector<float> sums_download_;                // end_template_sums's copy of a chunk's sums
  bool totals_begun_ = false;                       // whether fold_template_sums has zeroed the totals
  std::pair<std::size_t, std::size_t> totals_floats_{0, 0};
  std::unique_ptr<em::ScoringBackend> cpu_;  // tiny requests
  std::vector<std::unique_ptr<DeviceState>> devices_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::unique_ptr<BatchPreparer> preparer_;  // declared last: freed first
  std::unique_ptr<DeviceVolumeSums> volume_sums_;
  std::shared_ptr<em::VolumeTransforms> volume_transforms_;
  std::unique_ptr<KeptScoreReducer> scores_reducer_;
  ManyBuffers many_;  // score_many's staging and device arrays
  struct HostSampling {
    DeviceBuffer poses, head, power;
  } host_sampling_;  // sample_to_host's device arrays
  struct {
    long requests = 0, groups = 0;
    double staging = 0, device = 0;  // seconds: on the CPU (staging, copying out), waiting for the GPU
    // The staging's parts: the references found (or uploaded, the E-step's first group), the
    // particles found on the card, the host arrays reserved, the group laid out, the scores copied out.
    double references = 0, kept = 0, reserving = 0, laying_out = 0, unstaging = 0;
    double stage[kManyStages] = {};  // seconds on the card per stage (events)
  } many_time_;  // this E-step's score_many, logged at the next plan()
  float* kept_ = nullptr;  // the batch's kept scores (scores_reducer_'s)
};

}  // namespace

bool built_with_cuda() { return true; }

std::vector<DeviceInfo> devices() {
  std::vector<DeviceInfo> list;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" state
    return list;
  }
  if (count > 0 && !cublas_error().empty()) return list;  // devices, but no cuBLAS to score with
  for (int id = 0; id < count; ++id) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, id) != cudaSuccess) continue;
    DeviceInfo d;
    d.id = id, d.name = prop.name, d.memory = prop.totalGlobalMem, d.major = prop.major, d.minor = prop.minor;
    d.multiprocessors = prop.multiProcessorCount;
    std::size_t free = 0, total = 0;
    if (cudaSetDevice(id) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess) d.free_memory = free;
    list.push_back(d);
  }
  return list;
}

std::string runtime_library_problem() { return cublas_error(); }

std::string no_device_reason() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (e == cudaErrorInsufficientDriver)
      return fmt::format("no NVIDIA driver, or one too old for this build's CUDA runtime {}.{} ({})", CUDART_VERSION / 1000,
                         CUDART_VERSION % 1000 / 10, cudaGetErrorString(e));
    if (e == cudaErrorNoDevice) return "the NVIDIA driver reports no CUDA device";
    return cudaGetErrorString(e);
  }
  if (count == 0) return "the NVIDIA driver reports no CUDA device";
  return cublas_error();
}

std::unique_ptr<em::ScoringBackend> make_cuda_backend(const CudaOptions& options) { return std::make_unique<CudaBackend>(options); }

}  // namespace emcryo::gpu
