// Device and page-locked host arrays that grow on demand, and the CUDA error check: the one home
// of the allocations of the CUDA backend's parts (scoring, batch preparation, back-projection).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>

#include <fmt/format.h>

#include "emcryo/core/error.hpp"

namespace emcryo::gpu {

/// Fails with the CUDA call's name and the driver's message.
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: {} failed: {}", what, cudaGetErrorString(e));
}

/// A non-blocking stream on the current device whose kernels the card schedules before those of
/// default-priority streams. The streams the host waits on (batch preparation, scoring, the score
/// reduction) are made so; the 3D back-projection's, which nothing waits on until the E-step ends,
/// keep the default priority: its atomics-bound kernels (2.4 s a half E-step of a 100,000-particle
/// refine at 4.5 Å) fill the card's idle time instead of holding up the next batch.
inline cudaStream_t urgent_stream(const char* what) {
  int least = 0, greatest = 0;
  check_cuda(cudaDeviceGetStreamPriorityRange(&least, &greatest), what);
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, greatest), what);
  return stream;
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

/// The time the backend's arrays spent in CUDA's allocation calls (growing: cudaFree and
/// cudaFreeHost wait for the whole card, cudaMallocHost pins page by page) and how many times they
/// grew, process-wide (several host threads may grow arrays at once): logged per E-step, so that a
/// stall there shows.
class AllocationClock {
 public:
  struct Reading {
    double seconds = 0;
    long long grown = 0;
  };
  static AllocationClock& process() {
    static AllocationClock clock;
    return clock;
  }
  void add(double seconds) {
    nanoseconds_ += static_cast<long long>(seconds * 1e9);
    grown_ += 1;
  }
  /// The reading since the last take().
  Reading take() { return Reading{static_cast<double>(nanoseconds_.exchange(0)) / 1e9, grown_.exchange(0)}; }

 private:
  std::atomic<long long> nanoseconds_{0}, grown_{0};
};

/// Times one growth into AllocationClock::process().
class AllocationTimer {
 public:
  AllocationTimer() : start_(std::chrono::steady_clock::now()) {}
  ~AllocationTimer() { AllocationClock::process().add(std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count()); }
  AllocationTimer(const AllocationTimer&) = delete;
  AllocationTimer& operator=(const AllocationTimer&) = delete;

 private:
  std::chrono::steady_clock::time_point start_;
};

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
    const AllocationTimer timer;
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
  /// reserve() for arrays whose need varies from call to call (a group's, a batch's): room for at
  /// least half as much again as held, so that a run of slowly growing needs allocates a few times
  /// rather than at every new largest one.
  /// (Exactly `count` where the larger room would not fit beside what the card holds.)
  T* reserve_growing(std::size_t count, int device = -1) {
    if (count <= capacity_) return data_;
    std::size_t room = std::max(count, capacity_ + capacity_ / 2);
    if (room > count) {
      std::size_t free = 0, total = 0;
      check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
      if ((room - capacity_) * sizeof(T) + (std::size_t{256} << 20) > free) room = count;
    }
    return reserve(room, device);
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
  /// Room for at least `count` values: half as much again as held where it grows (host memory is
  /// plentiful; each growth frees, which waits for the card, and pins anew).
  T* reserve(std::size_t count) {
    if (count <= capacity_) return data_;
    const AllocationTimer timer;
    count = std::max(count, capacity_ + capacity_ / 2);
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
