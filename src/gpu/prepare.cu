// Particle batches prepared on the GPU: the same arithmetic as the E-step's CPU preparation
// (em/expectation.cpp, prepare_batch), so that scores do not change with the backend:
//   - masking multiplies by the mask (apply_mask with background 0);
//   - the forward transform is unnormalised, and the image centre N/2 moves to the origin by the
//     checkerboard (-1)^(x + y) on the half grid's storage indices (image::fft_forward_2d);
//   - the CTF is image::ctf_value (ctf_terms.hpp) in double at (i, wrap(j)) / (n x pixel), cast to float;
//   - ctf2 = C x C x (1/sigma^2) and half_norm = sum |x|^2 (1/sigma^2) / 2 in double, as the CPU.
// The batch stays on the device for score_many; only the rows PrepareBatch::host_rows names come back.
// Batches go through in chunks on two streams, so one chunk's copies overlap the other's work.
#include <cuda_runtime.h>
#include <cufft.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "device_memory.cuh"
#include "emcryo/core/error.hpp"
#include "prepare.hpp"

namespace emcryo::gpu {

namespace {

void check(cudaError_t e, const char* what) { check_cuda(e, what); }
void check(cufftResult e, const char* what) {
  if (e != CUFFT_SUCCESS) fail("cuFFT: {} failed (cufftResult {})", what, static_cast<int>(e));
}

std::size_t sz(int v) { return static_cast<std::size_t>(v); }
unsigned blocks_for(long long count, int threads) { return static_cast<unsigned>((count + threads - 1) / threads); }

// A chunk holds at most this many pixels (128 MiB of images): with its masked copy, two spectra
// and a CTF grid, about 0.6 GB of device memory per stream at box 256 (512 images).
constexpr std::size_t kChunkPixels = std::size_t{32} << 20;

/// Preparation's device memory, for the error when it would not fit.
std::string preparation_memory(int, double need, double free, double) {
  return fmt::format(
      "GPU batch preparation needs {:.0f} MiB more but {:.0f} MiB are free; use a smaller --batch or box (per stream, "
      "two streams: chunk particles x (8 n^2 + 8 n (n/2+1)) bytes, 12 n (n/2+1) more with full grids (per particle of the "
      "batch where they stay on the GPU for its back-projection), 16 F bytes per particle of the batch (kept for its scoring), plus cuFFT's "
      "work area, chunks within {} Mi pixels; docs/design.md)",
      need, free, kChunkPixels >> 20);
}

template <class T>
using PrepArray = DeviceArray<T, preparation_memory>;

__device__ inline int wrap(int j, int n) { return j <= n / 2 ? j : j - n; }

__global__ void mask_kernel(float* out, const float* in, const float* mask, long long count, int area) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = mask[i % area] * in[i];
}

/// One block per particle b of the chunk: its masked spectrum at the list's frequencies.
__global__ void gather_kernel(float2* x, float* ctf, float* ctf2, double* half_norm, const float2* spectra, const int* index,
                              int frequencies, const image::CtfTerms* terms, const int* groups, const float* inv_sigma2, int n,
                              double step, int first) {
  __shared__ double partial[256];
  const int b = blockIdx.x, p = first + b, hx = n / 2 + 1;
  const float2* spectrum = spectra + static_cast<long long>(b) * n * hx;
  const float* isg = inv_sigma2 + static_cast<long long>(groups[p]) * frequencies;
  const long long row = static_cast<long long>(b) * frequencies;
  double norm = 0;
  for (int f = threadIdx.x; f < frequencies; f += blockDim.x) {
    const int k = index[f], i = k % hx, j = k / hx;
    float2 v = spectrum[k];
    if ((i + j) & 1) v.x = -v.x, v.y = -v.y;
    const float c = terms ? static_cast<float>(image::ctf_value(terms[p], i * step, wrap(j, n) * step)) : 1.0f;
    const float s = isg[f];
    x[row + f] = v;
    ctf[row + f] = c;
    ctf2[row + f] = c * c * s;
    norm += __fmul_rn(__fadd_rn(__fmul_rn(v.x, v.x), __fmul_rn(v.y, v.y)), s) / 2;
  }
  partial[threadIdx.x] = norm;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) half_norm[b] = partial[0];
}

/// The full half grids of `count` particles (chunk-relative): the unmasked spectrum centred (the
/// checkerboard) and the CTF grid (ones without CTF).
__global__ void full_grids_kernel(float2* unmasked, float* ctf_grid, const image::CtfTerms* terms, int n, double step, int first,
                                  long long count) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const int hx = n / 2 + 1;
  const long long half = static_cast<long long>(n) * hx;
  const int b = static_cast<int>(i / half), k = static_cast<int>(i % half), x = k % hx, y = k / hx;
  if ((x + y) & 1) unmasked[i] = make_float2(-unmasked[i].x, -unmasked[i].y);
  ctf_grid[i] = terms ? static_cast<float>(image::ctf_value(terms[first + b], x * step, wrap(y, n) * step)) : 1.0f;
}

/// One of the two streams a batch's chunks alternate on, with its cuFFT plan and buffers.
struct ChunkStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
  cufftHandle plan = 0;
  bool planned = false;
  PrepArray<float> raw, masked, ctf_grid;
  PrepArray<float2> spectrum, unmasked;
  PrepArray<double> norm;
  PinnedArray<float> out_ctf, out_ctf2, out_ctf_grid;
  PinnedArray<float2> out_x, out_unmasked;
  PinnedArray<double> out_norm;
};

}  // namespace

struct BatchPreparer::State {
  int device = 0;
  int plan_box = 0, plan_batch = 0;  // the plans' image size and batch count
  ChunkStream streams[2];
  PrepArray<int> index, groups;
  PrepArray<float> inv_sigma2, mask;
  PrepArray<image::CtfTerms> terms;
  PinnedArray<float> pixels;
  // The last batch's full grids where they stay on the device, and its particles' host keys.
  PrepArray<float2> kept_unmasked;
  PrepArray<float> kept_ctf_grid;
  std::vector<const float*> kept_keys;
  KeptGrids kept;
  // The whole batch's prepared particles (the gather kernel writes here; the host gets a copy).
  PrepArray<float2> batch_x;
  PrepArray<float> batch_ctf, batch_ctf2;
  KeptParticles particles;

  /// Batched R2C plans of `batch` n x n images, one per stream (each has its own work area).
  void plan(int n, int batch) {
    if (n == plan_box && batch <= plan_batch) return;
    for (auto& st : streams) {
      if (st.planned) cufftDestroy(st.plan);
      st.planned = false;
      int dims[2] = {n, n};
      check(cufftPlanMany(&st.plan, 2, dims, nullptr, 1, 0, nullptr, 1, 0, CUFFT_R2C, batch), "cufftPlanMany");
      st.planned = true;
      check(cufftSetStream(st.plan, st.stream), "cufftSetStream");
    }
    plan_box = n, plan_batch = batch;
  }
};

BatchPreparer::BatchPreparer(int device) : s_(std::make_unique<State>()) {
  s_->device = device;
  check(cudaSetDevice(device), "cudaSetDevice");
  for (auto& st : s_->streams) {
    st.stream = urgent_stream("cudaStreamCreate (batch preparation)");
    check(cudaEventCreateWithFlags(&st.done, cudaEventDisableTiming), "cudaEventCreate");
  }
}

BatchPreparer::~BatchPreparer() {
  cudaSetDevice(s_->device);
  for (auto& st : s_->streams) {
    if (st.planned) cufftDestroy(st.plan);
    if (st.done) cudaEventDestroy(st.done);
    if (st.stream) cudaStreamDestroy(st.stream);
  }
}

const KeptGrids* BatchPreparer::kept_grids(const float* const* keys, int count) const {
  const State& s = *s_;
  if (!s.kept.unmasked) return nullptr;
  if (sz(count) != s.kept_keys.size() || !std::equal(keys, keys + count, s.kept_keys.begin()))
    fail("GPU back-projection: a batch other than the one prepared, whose grids are on the GPU (internal error)");
  return &s.kept;
}

const KeptParticles* BatchPreparer::kept_particles() const { return s_->particles.count > 0 ? &s_->particles : nullptr; }

float* BatchPreparer::pinned_host(std::size_t floats) {
  check(cudaSetDevice(s_->device), "cudaSetDevice");
  return s_->pixels.reserve(floats);
}

void BatchPreparer::prepare(const em::PrepareBatch& q) {
  State& s = *s_;
  if (q.count <= 0) return;
  if (q.box <= 0 || q.box % 2) fail("GPU batch preparation: box {} must be even", q.box);
  check(cudaSetDevice(s.device), "cudaSetDevice");
  const int n = q.box, F = q.frequencies, hx = n / 2 + 1;
  const std::size_t area = sz(n) * sz(n), half = sz(n) * sz(hx);
  const bool full = q.unmasked != nullptr, keep = full && q.full_grids_on_device;
  const double step = 1.0 / (n * q.pixel_size);  // as image::ctf_half_grid
  s.plan(n, std::max(1, std::min(q.count, static_cast<int>(kChunkPixels / area))));
  const int C = s.plan_batch;
  // The batch's small inputs, once (synchronous, landed before the streams below read them: they are
  // tiny next to the images).
  const auto up = [](auto& array, const auto* host, std::size_t count) {
    auto* d = array.reserve(count);
    upload_and_wait(d, host, count * sizeof(*host), "cudaMemcpy (batch preparation)");
    return d;
  };
  const int* index = up(s.index, q.index, sz(F));
  const int* groups = up(s.groups, q.group, sz(q.count));
  const float* inv_sigma2 = up(s.inv_sigma2, q.inv_sigma2, sz(q.groups) * sz(F));
  const float* mask = q.mask ? up(s.mask, q.mask, area) : nullptr;
  const image::CtfTerms* terms = q.ctf ? up(s.terms, q.ctf, sz(q.count)) : nullptr;
  for (auto& st : s.streams) {
    st.raw.reserve(sz(C) * area);
    if (mask) st.masked.reserve(sz(C) * area);
    st.spectrum.reserve(sz(C) * half);
    st.norm.reserve(sz(C));
    st.out_x.reserve(sz(C) * sz(F)), st.out_ctf.reserve(sz(C) * sz(F)), st.out_ctf2.reserve(sz(C) * sz(F)), st.out_norm.reserve(sz(C));
    if (full && !keep) {
      st.unmasked.reserve(sz(C) * half), st.ctf_grid.reserve(sz(C) * half);
      st.out_unmasked.reserve(sz(C) * half), st.out_ctf_grid.reserve(sz(C) * half);
    }
  }
  // The batch's prepared particles, kept for score_many (KeptParticles), and its kept grids, in
  // whole chunks (the plan transforms C images at a time).
  s.particles = KeptParticles{};
  float2* batch_x = s.batch_x.reserve_growing(sz(q.count) * sz(F));
  float* batch_ctf = s.batch_ctf.reserve_growing(sz(q.count) * sz(F));
  float* batch_ctf2 = s.batch_ctf2.reserve_growing(sz(q.count) * sz(F));
  s.kept = KeptGrids{}, s.kept_keys.clear();
  if (keep) {
    const std::size_t room = sz((q.count + C - 1) / C * C) * half;
    s.kept_unmasked.reserve(room), s.kept_ctf_grid.reserve(room);
  }
  const int chunks = (q.count + C - 1) / C;
  const auto count_of = [&](int c) { return std::min(C, q.count - c * C); };
  // Chunk c's runs of consecutive particles whose rows come back (first, count; chunk-relative):
  // one run of the whole chunk where all do.
  const auto host_runs = [&](int c) {
    std::vector<std::pair<int, int>> runs;
    const int first = c * C, m = count_of(c);
    for (int b = 0; b < m; ++b) {
      if (q.host_rows && !q.host_rows[first + b]) continue;
      if (!runs.empty() && runs.back().first + runs.back().second == b) ++runs.back().second;
      else runs.emplace_back(b, 1);
    }
    return runs;
  };
  // Chunk c's results, back on the host, into the caller's arrays.
  const auto drain = [&](int c) {
    ChunkStream& st = s.streams[c % 2];
    check(cudaEventSynchronize(st.done), "cudaEventSynchronize (batch preparation)");
    const std::size_t first = sz(c) * sz(C), m = sz(count_of(c));
    for (const auto& [b, run] : host_runs(c)) {
      const std::size_t at = first + sz(b), rows = sz(run) * sz(F), from = sz(b) * sz(F);
      std::memcpy(q.x + at * 2 * sz(F), st.out_x.data() + from, rows * sizeof(float2));
      std::memcpy(q.ctf_out + at * sz(F), st.out_ctf.data() + from, rows * sizeof(float));
      std::memcpy(q.ctf2 + at * sz(F), st.out_ctf2.data() + from, rows * sizeof(float));
    }
    std::memcpy(q.half_norm + first, st.out_norm.data(), m * sizeof(double));
    if (!full || keep) return;
    for (std::size_t b = 0; b < m; ++b) {
      std::memcpy(q.unmasked[first + b], st.out_unmasked.data() + b * half, half * sizeof(float2));
      std::memcpy(q.ctf_grid[first + b], st.out_ctf_grid.data() + b * half, half * sizeof(float));
    }
  };
  for (int c = 0; c < chunks; ++c) {
    if (c >= 2) drain(c - 2);
    ChunkStream& st = s.streams[c % 2];
    const int first = c * C, m = count_of(c);
    const long long pixels = static_cast<long long>(m) * static_cast<long long>(area);
    check(cudaMemcpyAsync(st.raw.data(), q.pixels + sz(first) * area, sz(m) * area * sizeof(float), cudaMemcpyHostToDevice, st.stream),
          "cudaMemcpyAsync (images)");
    // The plan transforms C images; past the chunk's m they are stale and their spectra unread.
    if (mask) mask_kernel<<<blocks_for(pixels, 256), 256, 0, st.stream>>>(st.masked.data(), st.raw.data(), mask, pixels, static_cast<int>(area));
    check(cudaGetLastError(), "mask kernel");
    float2* unmasked = keep ? s.kept_unmasked.data() + sz(first) * half : st.unmasked.data();
    float* ctf_grid = keep ? s.kept_ctf_grid.data() + sz(first) * half : st.ctf_grid.data();
    if (full) check(cufftExecR2C(st.plan, st.raw.data(), reinterpret_cast<cufftComplex*>(unmasked)), "cufftExecR2C (unmasked)");
    check(cufftExecR2C(st.plan, mask ? st.masked.data() : st.raw.data(), reinterpret_cast<cufftComplex*>(st.spectrum.data())),
          "cufftExecR2C");
    float2* x = batch_x + sz(first) * sz(F);
    float *ctf = batch_ctf + sz(first) * sz(F), *ctf2 = batch_ctf2 + sz(first) * sz(F);
    gather_kernel<<<static_cast<unsigned>(m), 256, 0, st.stream>>>(x, ctf, ctf2, st.norm.data(), st.spectrum.data(), index, F, terms, groups,
                                                                   inv_sigma2, n, step, first);
    check(cudaGetLastError(), "gather kernel");
    const auto down = [&](auto* host, const auto* device, std::size_t count) {
      check(cudaMemcpyAsync(host, device, count * sizeof(*device), cudaMemcpyDeviceToHost, st.stream), "cudaMemcpyAsync (prepared)");
    };
    for (const auto& [b, run] : host_runs(c)) {
      const std::size_t from = sz(b) * sz(F), rows = sz(run) * sz(F);
      down(st.out_x.data() + from, x + from, rows);
      down(st.out_ctf.data() + from, ctf + from, rows);
      down(st.out_ctf2.data() + from, ctf2 + from, rows);
    }
    down(st.out_norm.data(), st.norm.data(), sz(m));
    if (full) {
      const long long cells = static_cast<long long>(m) * static_cast<long long>(half);
      full_grids_kernel<<<blocks_for(cells, 256), 256, 0, st.stream>>>(unmasked, ctf_grid, terms, n, step, first, cells);
      check(cudaGetLastError(), "full grids kernel");
      if (!keep) down(st.out_unmasked.data(), st.unmasked.data(), sz(m) * half);
      if (!keep) down(st.out_ctf_grid.data(), st.ctf_grid.data(), sz(m) * half);
    }
    check(cudaEventRecord(st.done, st.stream), "cudaEventRecord");
  }
  for (int c = std::max(0, chunks - 2); c < chunks; ++c) drain(c);
  KeptParticles& kp = s.particles;
  kp.x = reinterpret_cast<const float*>(batch_x), kp.ctf = batch_ctf, kp.ctf2 = batch_ctf2;
  kp.group = groups, kp.inv_sigma2 = inv_sigma2, kp.count = q.count, kp.frequencies = F;
  kp.host_x = q.x, kp.host_ctf = q.ctf_out, kp.host_ctf2 = q.ctf2;
  kp.host_group.assign(q.group, q.group + q.count);
  kp.host_inv_sigma2.assign(q.inv_sigma2, q.inv_sigma2 + sz(q.groups) * sz(F));
  if (keep) {
    s.kept = KeptGrids{reinterpret_cast<const float*>(s.kept_unmasked.data()), s.kept_ctf_grid.data(), half};
    s.kept_keys.assign(q.unmasked, q.unmasked + q.count);
  }
}

}  // namespace emcryo::gpu
