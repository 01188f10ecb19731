// Large sums that start at zero and are mostly never written: memory straight from the kernel.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <new>
#include <utility>
#include <vector>

namespace emcryo {

/// An allocator for large arrays that start at zero (a 3D reconstruction's sums): each allocation is
/// its own anonymous mapping, whose pages the kernel hands out zeroed when first touched. A vector
/// made with n values is therefore not written at all, and pages that are never reached (a
/// back-projection lane filled only to the working resolution reaches a ball of frequencies, not
/// its whole padded cube) cost no page fault and no memory: on the hetero-refine bench the lanes,
/// copied into place and then inserted into, took about a third of the run's page faults, which
/// cost ~7 us each on the VMs we measure on.
/// Only for trivially copyable element types whose all-zero bytes are the value zero.
template <class T>
struct ZeroPagesAllocator {
  using value_type = T;
  ZeroPagesAllocator() = default;
  template <class U>
  ZeroPagesAllocator(const ZeroPagesAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n == 0) return nullptr;
    void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (p) munmap(p, n * sizeof(T));
  }
  /// Value-initialisation writes nothing (the pages are zero); any other construction is as usual.
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) > 0) ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <class U>
  bool operator==(const ZeroPagesAllocator<U>&) const noexcept { return true; }
};

/// A zero-initialised array whose untouched pages cost nothing (see ZeroPagesAllocator).
template <class T>
using ZeroPagesVector = std::vector<T, ZeroPagesAllocator<T>>;

}  // namespace emcryo
