// The M-step's 3D transforms on the device (volume_transforms.hpp). Each kernel does, per voxel,
// the arithmetic of the CPU loop it stands for (src/em/projector.cpp), in the same precision; only
// the FFT (cuFFT for FFTW) and the order of the per-shell mean's double sums differ, so maps agree
// with the CPU's to float rounding. The padded grid is transformed in place (cuFFT's padded real
// layout, rows of 2 (m/2 + 1) floats): at box 256 one 0.5 GB grid and its 0.27 GB weights on the card.
#include <cuda_runtime.h>
#include <cufft.h>

#include <algorithm>
#include <vector>

#include "device_memory.cuh"
#include "emcryo/core/error.hpp"
#include "volume_transforms.hpp"

namespace emcryo::gpu {

namespace {

void check(cufftResult e, const char* what) {
  if (e != CUFFT_SUCCESS)
    fail("cuFFT: {} failed (cufftResult {}; EMCRYO_GPU_TRANSFORMS=0 keeps the 3D transforms on the CPU)", what, static_cast<int>(e));
}

std::string transform_memory(int device, double need, double free, double total) {
  return out_of_device_memory(device, need, free, total, "the M-step's 3D transforms",
                              "the padded grid and its weights, m^2 x (m/2 + 1) x 12 bytes, m = 2 x box, the map, box^3 x 4 bytes, and "
                              "cuFFT's work area of about one grid",
                              "EMCRYO_GPU_TRANSFORMS=0 runs them on the CPU instead (docs/design.md)");
}
template <class T>
using TransformArray = DeviceArray<T, transform_memory>;

/// The padded grid's geometry: m points a side, hm = m/2 + 1 complex values a row (2 hm floats
/// as the in-place transform's real rows).
struct Grid {
  int n, pad, m, hm;
  __host__ __device__ long long complex_count() const { return static_cast<long long>(m) * m * hm; }
  __device__ int wrap(int j) const { return j <= m / 2 ? j : j - m; }
  __device__ int storage(int k) const { return k >= 0 ? k : k + m; }
};

__device__ double sinc(double x) { return fabs(x) < 1e-8 ? 1.0 : sin(x) / x; }

/// em::gridding_correction: sinc^2 per axis of the trilinear kernel on m points.
__device__ float gridding_correction(int x, int y, int z, int m) {
  const double pi = 3.14159265358979323846, c = m / 2;
  const double sx = sinc(pi * (x - c) / m), sy = sinc(pi * (y - c) / m), sz = sinc(pi * (z - c) / m);
  return static_cast<float>(sx * sx * sy * sy * sz * sz);
}

/// The shell of the n grid a padded-grid voxel falls in (BackProjector's rounding).
__device__ double padded_radius(const Grid& g, int x, int ky, int kz) {
  return sqrt(static_cast<double>(x * x + ky * ky + kz * kz)) / g.pad;
}

/// Per shell, the sum and count of the raw weights (BackProjector::mean_weight_per_shell): one
/// block per plane, the plane's sums in shared memory, then added into the totals.
__global__ void shell_weight_kernel(Grid g, const float* weight, int shells, double* sum, unsigned long long* count) {
  extern __shared__ double plane_sum[];
  auto* plane_count = reinterpret_cast<unsigned int*>(plane_sum + shells);
  for (int s = threadIdx.x; s < shells; s += blockDim.x) plane_sum[s] = 0, plane_count[s] = 0;
  __syncthreads();
  const int z = blockIdx.x, kz = g.wrap(z);
  const long long plane = static_cast<long long>(z) * g.m * g.hm;
  for (int i = threadIdx.x; i < g.m * g.hm; i += blockDim.x) {
    const int y = i / g.hm, x = i % g.hm, ky = g.wrap(y);
    const long long s = llround(padded_radius(g, x, ky, kz));
    if (s >= shells) continue;
    atomicAdd(&plane_sum[s], static_cast<double>(weight[plane + i]));
    atomicAdd(&plane_count[s], 1u);
  }
  __syncthreads();
  for (int s = threadIdx.x; s < shells; s += blockDim.x) {
    atomicAdd(&sum[s], plane_sum[s]);
    atomicAdd(&count[s], static_cast<unsigned long long>(plane_count[s]));
  }
}

/// BackProjector::enforce_hermitian: on the kx = 0 plane, (0, ky, kz) and (0, -ky, -kz) pooled,
/// each pair by the thread of its first element.
__global__ void hermitian_kernel(Grid g, float2* data, float* weight) {
  const long long r = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (r >= static_cast<long long>(g.m) * g.m) return;
  const int z = static_cast<int>(r / g.m), y = static_cast<int>(r % g.m);
  const int zm = g.storage(-g.wrap(z)), ym = g.storage(-g.wrap(y));
  const long long i = (static_cast<long long>(z) * g.m + y) * g.hm, j = (static_cast<long long>(zm) * g.m + ym) * g.hm;
  if (j < i) return;
  if (i == j) {
    data[i].y = 0;
    return;
  }
  const float2 sum = make_float2(data[i].x + data[j].x, data[i].y - data[j].y);
  const float w = weight[i] + weight[j];
  data[i] = sum, data[j] = make_float2(sum.x, -sum.y);
  weight[i] = weight[j] = w;
}

/// The data over their (regularised, floored) weights, zero beyond r_max or without weight, and
/// the checkerboard the inverse transform's centring needs (negated where x + y + z is odd).
__global__ void divide_kernel(Grid g, float2* data, const float* weight, const double* regularisation, const double* mean_weight,
                              int shells) {
  const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (idx >= g.complex_count()) return;
  const int x = static_cast<int>(idx % g.hm);
  const long long row = idx / g.hm;
  const int y = static_cast<int>(row % g.m), z = static_cast<int>(row / g.m);
  const double r = padded_radius(g, x, g.wrap(y), g.wrap(z)), r_max = g.n / 2.0 - 1.0;
  double w = 0;
  if (r <= r_max) {
    const long long s = min(llround(r), static_cast<long long>(shells - 1));
    w = weight[idx];
    if (regularisation) w += regularisation[s];
    w = fmax(w, mean_weight[s] / 1000.0);
  }
  float2 v = make_float2(0, 0);
  if (w > 0) {
    const float wf = static_cast<float>(w);
    v = make_float2(data[idx].x / wf, data[idx].y / wf);
  }
  if ((x + y + z) & 1) v = make_float2(-v.x, -v.y);
  data[idx] = v;
}

/// The n^3 box centred in the padded real grid (rows of 2 hm floats), scaled by the inverse
/// transform's 1 / m^3 and divided by the gridding correction.
__global__ void crop_kernel(Grid g, const float* padded, float* volume) {
  const long long inner = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long n = g.n;
  if (inner >= n * n * n) return;
  const int offset = g.m / 2 - g.n / 2;
  const int px = static_cast<int>(inner % n) + offset, py = static_cast<int>((inner / n) % n) + offset, pz = static_cast<int>(inner / (n * n)) + offset;
  const float scale = 1.0f / (static_cast<float>(g.m) * g.m * g.m);
  const float v = padded[(static_cast<long long>(pz) * g.m + py) * 2 * g.hm + px] * scale;
  volume[inner] = v / gridding_correction(px, py, pz, g.m);
}

/// The padded real grid (rows of 2 hm floats): the n^3 volume about the centre divided by the
/// gridding correction, zero elsewhere (and in the rows' padding).
__global__ void pad_kernel(Grid g, const float* volume, float* padded) {
  const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long row_floats = 2LL * g.hm;
  if (idx >= static_cast<long long>(g.m) * g.m * row_floats) return;
  const int px = static_cast<int>(idx % row_floats);
  const long long row = idx / row_floats;
  const int py = static_cast<int>(row % g.m), pz = static_cast<int>(row / g.m);
  const int offset = g.m / 2 - g.n / 2, x = px - offset, y = py - offset, z = pz - offset;
  float v = 0;
  if (px < g.m && x >= 0 && x < g.n && y >= 0 && y < g.n && z >= 0 && z < g.n)
    v = volume[(static_cast<long long>(z) * g.n + y) * g.n + x] / gridding_correction(px, py, pz, g.m);
  padded[idx] = v;
}

/// The forward transform's centring: negated where x + y + z is odd.
__global__ void checkerboard_kernel(Grid g, float2* data) {
  const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (idx >= g.complex_count()) return;
  const int x = static_cast<int>(idx % g.hm);
  const long long row = idx / g.hm;
  const int y = static_cast<int>(row % g.m), z = static_cast<int>(row / g.m);
  if ((x + y + z) & 1) data[idx] = make_float2(-data[idx].x, -data[idx].y);
}

unsigned blocks_for(long long count, int threads) { return static_cast<unsigned>((count + threads - 1) / threads); }

}  // namespace

struct DeviceVolumeTransforms::State {
  int device = 0;
  cudaStream_t stream = nullptr;
  int planned_m = 0;  // the plans' grid size (0: none)
  cufftHandle forward = 0, inverse = 0;
  TransformArray<float2> grid;
  TransformArray<float> weight, volume;
  TransformArray<double> regularisation, shell_sum;
  TransformArray<unsigned long long> shell_count;

  TransformArray<char> work;  // cuFFT's work area, one for both plans (they never run at once)

  /// In-place R2C and C2R plans of an m^3 grid, made once per size, sharing one work area that is
  /// allocated (and checked against the free memory) here rather than by cuFFT.
  void plan(int m) {
    if (m == planned_m) return;
    if (planned_m) cufftDestroy(forward), cufftDestroy(inverse);
    planned_m = 0;
    std::size_t forward_work = 0, inverse_work = 0;
    check(cufftCreate(&forward), "cufftCreate");
    check(cufftCreate(&inverse), "cufftCreate");
    check(cufftSetAutoAllocation(forward, 0), "cufftSetAutoAllocation");
    check(cufftSetAutoAllocation(inverse, 0), "cufftSetAutoAllocation");
    check(cufftMakePlan3d(forward, m, m, m, CUFFT_R2C, &forward_work), "cufftMakePlan3d (R2C)");
    check(cufftMakePlan3d(inverse, m, m, m, CUFFT_C2R, &inverse_work), "cufftMakePlan3d (C2R)");
    char* area = work.reserve(std::max(forward_work, inverse_work), device);
    check(cufftSetWorkArea(forward, area), "cufftSetWorkArea");
    check(cufftSetWorkArea(inverse, area), "cufftSetWorkArea");
    check(cufftSetStream(forward, stream), "cufftSetStream");
    check(cufftSetStream(inverse, stream), "cufftSetStream");
    planned_m = m;
  }
};

DeviceVolumeTransforms::DeviceVolumeTransforms(int device) : state_(std::make_unique<State>()) {
  state_->device = device;
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  check_cuda(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
}

DeviceVolumeTransforms::~DeviceVolumeTransforms() {
  cudaSetDevice(state_->device);
  if (state_->planned_m) cufftDestroy(state_->forward), cufftDestroy(state_->inverse);
  if (state_->stream) cudaStreamDestroy(state_->stream);
}

void DeviceVolumeTransforms::reconstruct(int n, int padding, const float* data, const float* weight, const double* regularisation,
                                         int shells_given, float* out) {
  State& s = *state_;
  check_cuda(cudaSetDevice(s.device), "cudaSetDevice");
  const Grid g{n, padding, n * padding, n * padding / 2 + 1};
  const auto cells = static_cast<std::size_t>(g.complex_count());
  const int shells = n / 2 + 1;
  s.plan(g.m);
  float2* d_data = s.grid.reserve(cells, s.device);
  float* d_weight = s.weight.reserve(cells, s.device);
  double* d_sum = s.shell_sum.reserve(static_cast<std::size_t>(shells), s.device);
  unsigned long long* d_count = s.shell_count.reserve(static_cast<std::size_t>(shells), s.device);
  float* d_volume = s.volume.reserve(static_cast<std::size_t>(n) * n * n, s.device);
  double* d_regularisation = nullptr;
  if (regularisation) {
    d_regularisation = s.regularisation.reserve(static_cast<std::size_t>(shells_given), s.device);
    check_cuda(cudaMemcpyAsync(d_regularisation, regularisation, static_cast<std::size_t>(shells_given) * sizeof(double), cudaMemcpyHostToDevice,
                               s.stream),
               "cudaMemcpyAsync (regularisation)");
  }
  check_cuda(cudaMemcpyAsync(d_data, data, cells * sizeof(float2), cudaMemcpyHostToDevice, s.stream), "cudaMemcpyAsync (sums)");
  check_cuda(cudaMemcpyAsync(d_weight, weight, cells * sizeof(float), cudaMemcpyHostToDevice, s.stream), "cudaMemcpyAsync (weights)");
  // The shell means read the raw weights, before the Hermitian pooling (as on the CPU).
  check_cuda(cudaMemsetAsync(d_sum, 0, static_cast<std::size_t>(shells) * sizeof(double), s.stream), "cudaMemsetAsync");
  check_cuda(cudaMemsetAsync(d_count, 0, static_cast<std::size_t>(shells) * sizeof(unsigned long long), s.stream), "cudaMemsetAsync");
  const std::size_t shared = static_cast<std::size_t>(shells) * (sizeof(double) + sizeof(unsigned int));
  shell_weight_kernel<<<g.m, 256, shared, s.stream>>>(g, d_weight, shells, d_sum, d_count);
  check_cuda(cudaGetLastError(), "shell weight kernel");
  std::vector<double> sum(static_cast<std::size_t>(shells));
  std::vector<unsigned long long> count(sum.size());
  check_cuda(cudaMemcpyAsync(sum.data(), d_sum, sum.size() * sizeof(double), cudaMemcpyDeviceToHost, s.stream), "cudaMemcpyAsync (shell sums)");
  check_cuda(cudaMemcpyAsync(count.data(), d_count, count.size() * sizeof(unsigned long long), cudaMemcpyDeviceToHost, s.stream),
             "cudaMemcpyAsync (shell counts)");
  check_cuda(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  for (std::size_t i = 0; i < sum.size(); ++i) sum[i] = count[i] > 0 ? sum[i] / static_cast<double>(count[i]) : 0;
  check_cuda(cudaMemcpyAsync(d_sum, sum.data(), sum.size() * sizeof(double), cudaMemcpyHostToDevice, s.stream), "cudaMemcpyAsync (shell means)");

  hermitian_kernel<<<blocks_for(static_cast<long long>(g.m) * g.m, 256), 256, 0, s.stream>>>(g, d_data, d_weight);
  divide_kernel<<<blocks_for(g.complex_count(), 256), 256, 0, s.stream>>>(g, d_data, d_weight, d_regularisation, d_sum, shells);
  check_cuda(cudaGetLastError(), "reconstruction kernels");
  check(cufftExecC2R(s.inverse, reinterpret_cast<cufftComplex*>(d_data), reinterpret_cast<cufftReal*>(d_data)), "cufftExecC2R");
  crop_kernel<<<blocks_for(static_cast<long long>(n) * n * n, 256), 256, 0, s.stream>>>(g, reinterpret_cast<const float*>(d_data), d_volume);
  check_cuda(cudaGetLastError(), "crop kernel");
  check_cuda(cudaMemcpyAsync(out, d_volume, static_cast<std::size_t>(n) * n * n * sizeof(float), cudaMemcpyDeviceToHost, s.stream),
             "cudaMemcpyAsync (map)");
  check_cuda(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
}

struct DeviceGrid::Storage {
  TransformArray<float2> values;
};

DeviceGrid::DeviceGrid(int device, std::size_t complex_values)
    : device_(device), values_(complex_values), storage_(std::make_unique<Storage>()) {
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  data_ = reinterpret_cast<float*>(storage_->values.reserve(complex_values, device));
}

DeviceGrid::~DeviceGrid() {
  cudaSetDevice(device_);
  storage_.reset();
}

void DeviceGrid::copy_to(float* out) const {
  check_cuda(cudaSetDevice(device_), "cudaSetDevice");
  check_cuda(cudaMemcpy(out, data_, values_ * 2 * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy (padded transform)");
}

std::shared_ptr<DeviceGrid> DeviceVolumeTransforms::padded_transform_kept(const float* volume, int n, int padding) {
  State& s = *state_;
  check_cuda(cudaSetDevice(s.device), "cudaSetDevice");
  const Grid g{n, padding, n * padding, n * padding / 2 + 1};
  s.plan(g.m);
  // Transformed in place in the grid it is kept in (the in-place plan's padded real rows fill it).
  auto kept = std::make_shared<DeviceGrid>(s.device, static_cast<std::size_t>(g.complex_count()));
  auto* d_grid = reinterpret_cast<float2*>(kept->data());
  float* d_volume = s.volume.reserve(static_cast<std::size_t>(n) * n * n, s.device);
  check_cuda(cudaMemcpyAsync(d_volume, volume, static_cast<std::size_t>(n) * n * n * sizeof(float), cudaMemcpyHostToDevice, s.stream),
             "cudaMemcpyAsync (map)");
  pad_kernel<<<blocks_for(2 * g.complex_count(), 256), 256, 0, s.stream>>>(g, d_volume, reinterpret_cast<float*>(d_grid));
  check_cuda(cudaGetLastError(), "pad kernel");
  check(cufftExecR2C(s.forward, reinterpret_cast<cufftReal*>(d_grid), reinterpret_cast<cufftComplex*>(d_grid)), "cufftExecR2C");
  checkerboard_kernel<<<blocks_for(g.complex_count(), 256), 256, 0, s.stream>>>(g, d_grid);
  check_cuda(cudaGetLastError(), "checkerboard kernel");
  check_cuda(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  return kept;
}

}  // namespace emcryo::gpu
