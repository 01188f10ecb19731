#pragma once
// cuBLAS opened on first use (dlopen) instead of linked: loading libcublas with libcublasLt runs
// ~0.6 s of static initialisation (measured on the 2-core CI-like VM, 2026-12-06), which every
// emcryo command of a CUDA build paid at start, GPU or not (`emcryo info`, every test's process).
#include <cublas_v2.h>

#include <string>

namespace emcryo::gpu {

using CublasGemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                        const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                                        cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

/// The cuBLAS functions the backend calls, resolved from the library of this build's major version.
struct CublasLibrary {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  CublasGemmEx gemm_ex = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

/// Why cuBLAS cannot be used here ("" where it opened and every function resolved); opens it once.
const std::string& cublas_error();
/// The opened library; fails with cublas_error() where it did not open.
const CublasLibrary& cublas_library();

}  // namespace emcryo::gpu
