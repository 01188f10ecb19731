// The 3D back-projection on the device (backprojection.hpp): the same sums as model3d's CPU
// block, BackProjector::insert of (sum over a pose's shifts of w x shifted X) x C / sigma^2 with
// weight C^2 / sigma^2 x total, per kept orientation and symmetry operator. One thread block
// row per insertion, one thread per frequency; the trilinear scatter adds atomically (the sums'
// order, hence their last bits, vary from run to run: tests compare them with a tolerance).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "backprojection.hpp"
#include "device_memory.cuh"
#include "emcryo/core/error.hpp"

namespace emcryo::gpu {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: {} failed: {} (GPU back-projection)", what, cudaGetErrorString(e));
}

__host__ __device__ inline std::size_t sz(int v) { return static_cast<std::size_t>(v); }
std::size_t aligned(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

/// Adds v at (kx, ky, kz) of a class volume: rows indexed by storage index where they span the
/// grid, else by k + reach (BackProjector::put's layout).
struct VolumeIndex {
  int reach, side, count, m;
  bool full;
  __device__ long long operator()(int kx, int ky, int kz) const {
    const int y = full ? (ky < 0 ? ky + m : ky) : ky + reach, z = full ? (kz < 0 ? kz + m : kz) : kz + reach;
    return (static_cast<long long>(z) * side + y) * count + kx;
  }
};

/// A volume cell: (Re, Im) of the data and the weight side by side (the fourth float pads), so
/// that each of a point's 8 corners is one vector atomic rather than a complex and a float one:
/// the insertions are bound by the card's atomics (~100 G/s at 4.5 Å in a 100,000-particle refine).
__device__ inline void add_cell(float4* at, float re, float im, float w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(at, make_float4(re, im, w, 0));  // one vector atomic (sm_90)
#else
  atomicAdd(&at->x, re);
  atomicAdd(&at->y, im);
  atomicAdd(&at->z, w);
#endif
}

/// Insertion blockIdx.x at the frequencies of blockIdx.y's threads.
__global__ void insert_kernel(float4* volumes, std::size_t cells, const int* freq, int frequencies, const float2* x,
                              const float* ctf, const int* group, const float* inv_sigma2, const em::VolumeInsertion* insertions,
                              const em::VolumeShift* shifts, int n, VolumeIndex index) {
  const int f = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x);
  if (f >= frequencies) return;
  const em::VolumeInsertion& r = insertions[blockIdx.x];
  const int kx = freq[3 * f], ky = freq[3 * f + 1];
  // sum_s w_s exp(-2 pi i (kx dx + ky dy) / n), the phase reduced in double (|k dx| reaches 10^4).
  float2 ramp = make_float2(0, 0);
  for (int s = 0; s < r.shifts; ++s) {
    const em::VolumeShift sh = shifts[r.first_shift + s];
    double u = -2.0 * (kx * static_cast<double>(sh.dx) + ky * static_cast<double>(sh.dy)) / n;  // phase / pi
    u -= 2.0 * rint(0.5 * u);
    float sn, cs;
    sincospif(static_cast<float>(u), &sn, &cs);
    ramp.x += sh.w * cs, ramp.y += sh.w * sn;
  }
  const std::size_t at = sz(r.b) * sz(frequencies) + sz(f);
  const float2 xv = x[at];
  const float c = ctf[at], isg = inv_sigma2[sz(group[r.b]) * sz(frequencies) + sz(f)], scale = c * isg;
  float2 v = make_float2((xv.x * ramp.x - xv.y * ramp.y) * scale, (xv.x * ramp.y + xv.y * ramp.x) * scale);
  const float w = c * c * isg * r.total;
  double px = r.a[0] * kx + r.a[3] * ky, py = r.a[1] * kx + r.a[4] * ky, pz = r.a[2] * kx + r.a[5] * ky;
  if (px < 0) px = -px, py = -py, pz = -pz, v.y = -v.y;
  const int x0 = static_cast<int>(floor(px)), y0 = static_cast<int>(floor(py)), z0 = static_cast<int>(floor(pz));
  const float fx = static_cast<float>(px - x0), fy = static_cast<float>(py - y0), fz = static_cast<float>(pz - z0);
  float4* volume = volumes + sz(r.k) * cells;
  for (int dz = 0; dz < 2; ++dz) {
    const float wz = dz ? fz : 1 - fz;
    for (int dy = 0; dy < 2; ++dy) {
      const float wzy = wz * (dy ? fy : 1 - fy);
      const long long row = index(x0, y0 + dy, z0 + dz);
      for (int dx = 0; dx < 2; ++dx) {
        const float wt = wzy * (dx ? fx : 1 - fx);
        add_cell(volume + row + dx, wt * v.x, wt * v.y, wt * w);
      }
    }
  }
}

/// A batch's particle values at the layout's frequencies from its full grids kept on the device
/// (pack_volume_batch's, on the device): one block per particle.
__global__ void gather_grids_kernel(float2* x, float* ctf, const float2* unmasked, const float* ctf_grid, std::size_t half, const int* freq,
                                    int frequencies) {
  const std::size_t b = blockIdx.x;
  for (int f = threadIdx.x; f < frequencies; f += blockDim.x) {
    const std::size_t i = sz(freq[3 * f + 2]), at = b * sz(frequencies) + sz(f);
    x[at] = unmasked[b * half + i];
    ctf[at] = ctf_grid[b * half + i];
  }
}

/// The back-projection's device memory, for the error when it would not fit (each volume array is
/// checked against the card's free memory as it grows: DeviceArray).
std::string volume_memory(int device, double need, double free, double total) {
  return out_of_device_memory(device, need, free, total, "the 3D back-projection's volumes",
                              "and, where one process folds the chunks on the GPU, as much again for their totals: classes x (2R + 1)^2 "
                              "x (R + 1) x 16 bytes each, R = ceil(2 x insert radius) + 1 < 2 x box",
                              "EMCRYO_GPU_BACKPROJECT=0 back-projects on the CPU instead (docs/design.md)");
}
template <class T>
using VolumeArray = DeviceArray<T, volume_memory>;

/// Offsets of one batch's arrays in the staging buffer and its device copy.
struct BatchLayout {
  std::size_t x = 0, ctf = 0, isg = 0, group = 0, insertions = 0, shifts = 0, total = 0;
  BatchLayout(std::size_t particles, std::size_t groups, std::size_t frequencies, std::size_t insertion_count, std::size_t shift_count) {
    ctf = aligned(particles * frequencies * 8);
    isg = ctf + aligned(particles * frequencies * 4);
    group = isg + aligned(groups * frequencies * 4);
    insertions = group + aligned(particles * 4);
    shifts = insertions + aligned(insertion_count * sizeof(em::VolumeInsertion));
    total = shifts + aligned(shift_count * sizeof(em::VolumeShift));
  }
};

}  // namespace

struct DeviceVolumeSums::State {
  int device = 0;
  // Two streams, so that a batch's upload and gather need not wait for the previous batch's
  // insertion: `feed` copies batch b into buffer b % 2 once the insertion of batch b - 2 (same
  // buffer) has run, and gathers its kept grids; `stream` inserts each batch once it is fed. The
  // host waits only for the feed of its own batch (the next preparation overwrites the kept grids).
  cudaStream_t stream = nullptr, feed = nullptr;
  cudaEvent_t copied[2] = {nullptr, nullptr};    // staging[i] uploaded: free to refill
  cudaEvent_t fed[2] = {nullptr, nullptr};       // batch[i] uploaded and gathered
  cudaEvent_t inserted[2] = {nullptr, nullptr};  // batch[i]'s insertion run: free to refill
  int next = 0;  // the staging and device buffers the next batch fills
  VolumeLayout layout;
  std::vector<char> touched;  // per class: inserted into this chunk
  VolumeArray<float4> cells;  // the classes' volumes within the reach: (Re, Im, weight, 0) per cell
  // The folded totals (fold / take_totals): the volumes of every chunk folded so far.
  bool totals_begun = false;
  std::size_t total_cells = 0;  // per class, as the chunks' layout
  std::vector<char> total_touched;
  VolumeArray<float4> total_cells_sums;
  DeviceArray<int> freq;
  DeviceArray<char> batch[2];
  PinnedArray<char> staging[2];
  PinnedArray<float> download;  // add_volumes_into's host copy of a class's volume
  // Where the time goes (timing()): each batch's gather and insertion kernels between two events,
  // and the host's waits for the stream.
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> kernel_events;
  VolumeSumsTiming timing;
};

DeviceVolumeSums::DeviceVolumeSums(int device) : state_(std::make_unique<State>()) {
  state_->device = device;
  check(cudaSetDevice(device), "cudaSetDevice");
  // The insertions run at the default priority, behind the streams the host waits on; the feed,
  // which the host waits for before the next batch's preparation, is one of those.
  check(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  state_->feed = urgent_stream("cudaStreamCreate (back-projection feed)");
  for (auto* events : {state_->copied, state_->fed, state_->inserted})
    for (int i = 0; i < 2; ++i) check(cudaEventCreateWithFlags(&events[i], cudaEventDisableTiming), "cudaEventCreate");
}

DeviceVolumeSums::~DeviceVolumeSums() {
  cudaSetDevice(state_->device);
  for (cudaStream_t st : {state_->feed, state_->stream})
    if (st) cudaStreamSynchronize(st), cudaStreamDestroy(st);
  for (auto* events : {state_->copied, state_->fed, state_->inserted})
    for (int i = 0; i < 2; ++i)
      if (events[i]) cudaEventDestroy(events[i]);
  for (auto& [start, end] : state_->kernel_events) cudaEventDestroy(start), cudaEventDestroy(end);
}

void DeviceVolumeSums::begin(int classes, int n, int padding, double max_radius) {
  State& s = *state_;
  check(cudaSetDevice(s.device), "cudaSetDevice");
  check(cudaStreamSynchronize(s.feed), "cudaStreamSynchronize");
  check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  VolumeLayout layout = volume_layout(classes, n, padding, max_radius);
  const std::size_t cells = layout.cells() * sz(classes);
  check(cudaMemsetAsync(s.cells.reserve(cells, s.device), 0, cells * sizeof(float4), s.stream), "cudaMemsetAsync");
  const std::size_t list_bytes = layout.frequencies.size() * sizeof(int);
  check(cudaMemcpyAsync(s.freq.reserve(layout.frequencies.size()), layout.frequencies.data(), list_bytes,
                        cudaMemcpyHostToDevice, s.stream),
        "cudaMemcpyAsync (frequencies)");
  check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");  // the list's host copy goes with `layout`
  s.layout = std::move(layout);
  s.touched.assign(sz(classes), 0);
}

void DeviceVolumeSums::add(const em::VolumeSumsBatch& q, const KeptGrids* grids) {
  State& s = *state_;
  const VolumeLayout& l = s.layout;
  const int F = l.frequency_count();
  if (q.insertion_count == 0 || F == 0) return;
  check(cudaSetDevice(s.device), "cudaSetDevice");
  const BatchLayout b(sz(q.particles), q.inv_sigma2.size(), sz(F), q.insertion_count, q.shift_count);
  // The staging buffer is refilled only once its previous batch has reached the device.
  const int slot = s.next;
  PinnedArray<char>& host = s.staging[slot];
  const auto waited_from = std::chrono::steady_clock::now();
  check(cudaEventSynchronize(s.copied[slot]), "cudaEventSynchronize");
  s.timing.host_wait += std::chrono::duration<double>(std::chrono::steady_clock::now() - waited_from).count();
  auto* h = host.reserve(b.total);
  pack_volume_batch(q, l, grids ? nullptr : reinterpret_cast<float*>(h + b.x), grids ? nullptr : reinterpret_cast<float*>(h + b.ctf),
                    reinterpret_cast<float*>(h + b.isg));
  std::memcpy(h + b.group, q.group.data(), q.group.size() * sizeof(int));
  std::memcpy(h + b.insertions, q.insertions, q.insertion_count * sizeof(em::VolumeInsertion));
  std::memcpy(h + b.shifts, q.shifts, q.shift_count * sizeof(em::VolumeShift));
  for (std::size_t i = 0; i < q.insertion_count; ++i) {
    const em::VolumeInsertion& r = q.insertions[i];
    if (r.k < 0 || r.k >= l.classes || r.b < 0 || r.b >= q.particles || r.first_shift < 0 ||
        sz(r.first_shift) + sz(r.shifts) > q.shift_count || sz(q.group[sz(r.b)]) >= q.inv_sigma2.size())
      fail("GPU back-projection: insertion {} outside the batch (internal error)", i);
    s.touched[sz(r.k)] = 1;
  }
  // Device buffer `slot` is refilled once the insertion two batches back (which read it) has run.
  check(cudaStreamWaitEvent(s.feed, s.inserted[slot], 0), "cudaStreamWaitEvent");
  // Growing it frees the old buffer from the host while that insertion may still read it on `stream`
  // (cudaFree is not documented to wait for other streams' work): the host waits for it first.
  if (b.total > s.batch[slot].capacity()) {
    const auto waited_from_growth = std::chrono::steady_clock::now();
    check(cudaEventSynchronize(s.inserted[slot]), "cudaEventSynchronize (growing a batch buffer)");
    s.timing.host_wait += std::chrono::duration<double>(std::chrono::steady_clock::now() - waited_from_growth).count();
  }
  auto* d = s.batch[slot].reserve_growing(b.total);
  const std::size_t from = grids ? b.isg : 0;  // kept grids: x and ctf are gathered on the device
  check(cudaMemcpyAsync(d + from, h + from, b.total - from, cudaMemcpyHostToDevice, s.feed), "cudaMemcpyAsync (back-projection batch)");
  check(cudaEventRecord(s.copied[slot], s.feed), "cudaEventRecord");
  if (grids) {
    gather_grids_kernel<<<static_cast<unsigned>(q.particles), 256, 0, s.feed>>>(
        reinterpret_cast<float2*>(d + b.x), reinterpret_cast<float*>(d + b.ctf), reinterpret_cast<const float2*>(grids->unmasked),
        grids->ctf_grid, grids->half, s.freq.data(), F);
    check(cudaGetLastError(), "back-projection gather kernel");
  }
  check(cudaEventRecord(s.fed[slot], s.feed), "cudaEventRecord");
  check(cudaStreamWaitEvent(s.stream, s.fed[slot], 0), "cudaStreamWaitEvent");
  s.next = 1 - slot;
  std::pair<cudaEvent_t, cudaEvent_t> events{nullptr, nullptr};
  check(cudaEventCreate(&events.first), "cudaEventCreate");
  check(cudaEventCreate(&events.second), "cudaEventCreate");
  s.kernel_events.push_back(events);
  check(cudaEventRecord(events.first, s.stream), "cudaEventRecord");
  s.timing.insertions += static_cast<long long>(q.insertion_count), s.timing.batches += 1;
  constexpr int kThreads = 128;
  const VolumeIndex index{l.reach, l.side, l.count, l.m, l.full};
  for (std::size_t first = 0; first < q.insertion_count; first += 1u << 30) {  // grid x holds < 2^31 blocks
    const auto count = static_cast<unsigned>(std::min<std::size_t>(q.insertion_count - first, 1u << 30));
    const dim3 blocks(count, static_cast<unsigned>((F + kThreads - 1) / kThreads));
    insert_kernel<<<blocks, kThreads, 0, s.stream>>>(
        s.cells.data(), l.cells(), s.freq.data(), F,
        reinterpret_cast<const float2*>(d + b.x), reinterpret_cast<const float*>(d + b.ctf), reinterpret_cast<const int*>(d + b.group),
        reinterpret_cast<const float*>(d + b.isg), reinterpret_cast<const em::VolumeInsertion*>(d + b.insertions) + first,
        reinterpret_cast<const em::VolumeShift*>(d + b.shifts), l.n, index);
    check(cudaGetLastError(), "back-projection kernel");
  }
  check(cudaEventRecord(events.second, s.stream), "cudaEventRecord");
  check(cudaEventRecord(s.inserted[slot], s.stream), "cudaEventRecord");
  if (grids) {
    const auto from = std::chrono::steady_clock::now();
    check(cudaEventSynchronize(s.fed[slot]), "cudaEventSynchronize (kept grids)");
    s.timing.host_wait += std::chrono::duration<double>(std::chrono::steady_clock::now() - from).count();
  }
}

VolumeSumsTiming DeviceVolumeSums::take_timing() {
  State& s = *state_;
  check(cudaSetDevice(s.device), "cudaSetDevice");
  check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  for (auto& [start, end] : s.kernel_events) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, end), "cudaEventElapsedTime");
    s.timing.kernels += ms / 1000.0;
    cudaEventDestroy(start), cudaEventDestroy(end);
  }
  s.kernel_events.clear();
  const VolumeSumsTiming t = s.timing;
  s.timing = {};
  return t;
}

namespace {
/// Adds the classes' device volumes (cells per class) into into[k] where touched[k]. `download`
/// holds a class's volume on the host on its way (page-locked, kept for the next call: 1 GB a class
/// at box 256).
void add_volumes_into(const std::vector<em::BackProjector*>& into, const VolumeLayout& l, const float4* volumes, const std::vector<char>& touched,
                      PinnedArray<float>& download, cudaStream_t stream) {
  if (into.size() != sz(l.classes)) fail("GPU back-projection: {} volumes for {} classes (internal error)", into.size(), l.classes);
  const std::size_t cells = l.cells();
  float* const host_cells = download.reserve(4 * cells);
  for (int k = 0; k < l.classes; ++k) {
    if (!touched[sz(k)]) continue;  // as on the CPU: a class nothing entered keeps its reach
    check(cudaMemcpyAsync(host_cells, volumes + sz(k) * cells, cells * sizeof(float4), cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (back-projection volumes)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (back-projection)");
    add_device_volume(*into[sz(k)], l, host_cells);
  }
}
}  // namespace

void DeviceVolumeSums::end(const std::vector<em::BackProjector*>& into) {
  State& s = *state_;
  check(cudaSetDevice(s.device), "cudaSetDevice");
  add_volumes_into(into, s.layout, s.cells.data(), s.touched, s.download, s.stream);
  std::fill(s.touched.begin(), s.touched.end(), 0);
}

void DeviceVolumeSums::fold() {
  State& s = *state_;
  const VolumeLayout& l = s.layout;
  check(cudaSetDevice(s.device), "cudaSetDevice");
  const std::size_t cells = l.cells() * sz(l.classes);
  if (!s.totals_begun) {
    check(cudaMemsetAsync(s.total_cells_sums.reserve(cells, s.device), 0, cells * sizeof(float4), s.stream), "cudaMemsetAsync");
    s.totals_begun = true, s.total_cells = l.cells();
    s.total_touched.assign(sz(l.classes), 0);
  }
  if (s.total_cells != l.cells() || s.total_touched.size() != sz(l.classes))
    fail("GPU back-projection totals: chunks of different layouts (internal error)");
  // The stream orders the adds after the chunk's last insertion kernel.
  add_on_device(reinterpret_cast<float*>(s.total_cells_sums.data()), reinterpret_cast<const float*>(s.cells.data()),
                static_cast<long long>(4 * cells), s.stream);
  for (std::size_t k = 0; k < s.touched.size(); ++k) s.total_touched[k] |= s.touched[k];
  std::fill(s.touched.begin(), s.touched.end(), 0);
}

void DeviceVolumeSums::take_totals(const std::vector<em::BackProjector*>& into) {
  State& s = *state_;
  if (!s.totals_begun) return;  // no chunk folded: nothing to add
  check(cudaSetDevice(s.device), "cudaSetDevice");
  add_volumes_into(into, s.layout, s.total_cells_sums.data(), s.total_touched, s.download, s.stream);
  s.totals_begun = false;
}

}  // namespace emcryo::gpu
