// Start-up of the numeric runtime: BLAS core selection, thread counts.
#pragma once
#include <string>

namespace emcryo::runtime {

/// OpenBLAS picks its kernels when the library loads, from CPUID; under some hypervisors it
/// misdetects an AVX-512 CPU as an old core ("Prescott") and runs sgemm 4-5x slower. Call this
/// first thing in main(): when the detected core is weaker than what the CPU supports and the
/// user has not set OPENBLAS_CORETYPE, it sets the right one and re-executes the program, so
/// the library loads again with the right kernels. Returns normally otherwise.
void ensure_fast_blas(int argc, char** argv);

/// The core name OpenBLAS is using ("SkylakeX", "Haswell", ...).
std::string blas_core_name();
/// Best OpenBLAS core for this CPU from the instruction set, or empty when none is better.
std::string preferred_blas_core();

/// OpenMP threads (0 = all cores); OpenBLAS always runs single-threaded (the engine parallelises
/// over blocks of GEMM rows itself).
void set_threads(int threads);
int threads();

}  // namespace emcryo::runtime
