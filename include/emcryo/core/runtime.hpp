// Start-up of the numeric runtime: BLAS core selection, thread counts.
#pragma once
#include <string>

namespace emcryo::runtime {

/// The process's runtime settings that only take effect when the program loads; call this first
/// thing in main(). Where one is missing it sets it and re-executes the program once (so the
/// libraries load again with it); returns normally otherwise. Settings the user made are kept.
/// - OpenBLAS picks its kernels from CPUID when the library loads; under some hypervisors it
///   misdetects an AVX-512 CPU as an old core ("Prescott") and runs sgemm 4-5x slower: the right
///   OPENBLAS_CORETYPE is set where the detected core is weaker than the CPU (EMCRYO_NO_BLAS_REEXEC
///   then marks it as ours).
/// - glibc's malloc is told to use transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)
///   where the kernel gives them on request; EMCRYO_NO_HUGE_PAGES=1 leaves it off.
void ensure_fast_runtime(int argc, char** argv);

/// The core name OpenBLAS is using ("SkylakeX", "Haswell", ...).
std::string blas_core_name();
/// Best OpenBLAS core for this CPU from the instruction set, or empty when none is better.
std::string preferred_blas_core();

/// OpenMP threads (0 = all cores); OpenBLAS always runs single-threaded (the engine parallelises
/// over blocks of GEMM rows itself).
void set_threads(int threads);
int threads();

}  // namespace emcryo::runtime
