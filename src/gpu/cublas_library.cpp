#include "cublas_library.hpp"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include "emcryo/core/error.hpp"

namespace emcryo::gpu {

namespace {

// The pointer type must be one of cublasGemmEx's overloads (C++ adds one taking cudaDataType).
static_assert(std::is_same_v<decltype(static_cast<CublasGemmEx>(cublasGemmEx)), CublasGemmEx>);

/// The library's handle, or nullptr with `why` set: by name (the loader's search path and this
/// program's run path), then next to the CUDA runtime this program loaded, then in the toolkit's
/// directory found at configure time.
void* open_library(std::string& why) {
  const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  std::vector<std::string> tried = {name};
  Dl_info runtime{};
  if (dladdr(reinterpret_cast<const void*>(&cudaGetDeviceCount), &runtime) && runtime.dli_fname)
    tried.push_back((std::filesystem::path(runtime.dli_fname).parent_path() / name).string());
#ifdef EMCRYO_CUDA_LIBRARY_DIR
  tried.push_back((std::filesystem::path(EMCRYO_CUDA_LIBRARY_DIR) / name).string());
#endif
  for (const auto& path : tried)
    if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return handle;
  const char* error = dlerror();
  why = "cannot open " + name + (error ? std::string(": ") + error : std::string());
  return nullptr;
}

struct Opened {
  CublasLibrary library;
  std::string error;
};

Opened open() {
  Opened opened;
  void* handle = open_library(opened.error);
  if (!handle) return opened;
  const auto resolve = [&](auto& function, const char* symbol) {
    void* address = dlsym(handle, symbol);
    if (!address && opened.error.empty()) opened.error = std::string("cuBLAS has no ") + symbol;
    function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(address);
  };
  CublasLibrary& l = opened.library;
  resolve(l.create, "cublasCreate_v2");
  resolve(l.destroy, "cublasDestroy_v2");
  resolve(l.set_stream, "cublasSetStream_v2");
  resolve(l.gemm_ex, "cublasGemmEx");
  resolve(l.status_string, "cublasGetStatusString");
  return opened;
}

const Opened& opened() {
  static const Opened once = open();
  return once;
}

}  // namespace

const std::string& cublas_error() { return opened().error; }

const CublasLibrary& cublas_library() {
  if (!cublas_error().empty()) fail("CUDA: {}", cublas_error());
  return opened().library;
}

}  // namespace emcryo::gpu
