// Device and page-locked host arrays that grow on demand, and the CUDA error check: the one home
// of the allocations of the CUDA backend's parts (scoring, batch preparation, back-projection).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <string>

#include <fmt/format.h>

#include "emcryo/core/error.hpp"

namespace emcryo::gpu {

/// Fails with the CUDA call's name and the driver's message.
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: {} failed: {}", what, cudaGetErrorString(e));
}

/// A host-to-device copy that has landed when this returns. cudaMemcpy from pageable memory may return
/// once the data are staged, the DMA still running on the default stream, which the backend's
/// non-blocking streams do not wait for: a kernel there could read the buffer before it is filled.
/// (A suspect in a 100,000-particle refine's illegal memory access that CUDA_LAUNCH_BLOCKING=1 hid;
/// bench/RESULTS.md, ninth session.)
inline void upload_and_wait(void* to, const void* from, std::size_t bytes, const char* what) {
  check_cuda(cudaMemcpy(to, from, bytes, cudaMemcpyHostToDevice), what);
  check_cuda(cudaStreamSynchronize(nullptr), what);
}

/// total[i] += part[i] on `stream`: a chunk's sums folded into an E-step's totals, float by float as
/// the host would add them (cuda_backend.cu).
void add_on_device(float* total, const float* part, long long count, cudaStream_t stream);

inline double mib(std::size_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

/// The one-line error for a device allocation that would not fit: what needs the memory, its
/// formula and what to change, given the device and the MiB needed, free and in total.
using MemoryMessage = std::string (*)(int device, double need_mib, double free_mib, double total_mib);

/// A MemoryMessage's common form: "GPU d: <what> need N MiB more but F of T MiB are free (<formula>);
/// <instead>".
inline std::string out_of_device_memory(int device, double need, double free, double total, const char* what, const char* formula,
                                        const char* instead) {
  return fmt::format("GPU {}: {} need {:.0f} MiB more but {:.0f} of {:.0f} MiB are free ({}); {}", device, what, need, free, total, formula,
                     instead);
}

/// A device array that grows on demand (its contents are not kept when it grows). With a message,
/// every allocation is first checked against the card's free memory, 64 MiB kept spare, and
/// refused with that message rather than failing inside cudaMalloc.
template <class T, MemoryMessage Message = nullptr>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { release(); }
  /// Room for `count` values; `device` only names the card in the message (-1: the current one).
  T* reserve(std::size_t count, int device = -1) {
    if (count <= capacity_) return data_;
    release();
    const std::size_t bytes = std::max<std::size_t>(1, count) * sizeof(T);
    if constexpr (Message != nullptr) {
      std::size_t free = 0, total = 0;
      check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
      if (device < 0) check_cuda(cudaGetDevice(&device), "cudaGetDevice");
      if (bytes + (std::size_t{64} << 20) > free) fail("{}", Message(device, mib(bytes), mib(free), mib(total)));
    }
    check_cuda(cudaMalloc(&data_, bytes), "cudaMalloc");
    capacity_ = count;
    return data_;
  }
  T* data() const { return data_; }
  std::size_t capacity() const { return capacity_; }
  void release() {
    if (data_) cudaFree(data_);
    data_ = nullptr, capacity_ = 0;
  }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

/// Page-locked host memory: copies to and from it run asynchronously at full bus speed.
template <class T>
class PinnedArray {
 public:
  PinnedArray() = default;
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() {
    if (data_) cudaFreeHost(data_);
  }
  T* reserve(std::size_t count) {
    if (count <= capacity_) return data_;
    if (data_) cudaFreeHost(data_);
    data_ = nullptr, capacity_ = 0;
    check_cuda(cudaMallocHost(&data_, std::max<std::size_t>(1, count) * sizeof(T)), "cudaMallocHost");
    capacity_ = count;
    return data_;
  }
  T* data() const { return data_; }
  std::size_t capacity() const { return capacity_; }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace emcryo::gpu
