#include "emcryo/core/runtime.hpp"

#include <omp.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string_view>

extern "C" {
char* openblas_get_corename(void);
void openblas_set_num_threads(int);
}

namespace emcryo::runtime {

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

namespace {
int core_rank(std::string_view name) {
  // Rough order of capability of OpenBLAS x86-64 kernels for single precision GEMM.
  static constexpr std::array<std::pair<std::string_view, int>, 10> ranks{{
      {"sapphirerapids", 5}, {"cooperlake", 5}, {"skylakex", 5}, {"zen", 3}, {"haswell", 3},
      {"excavator", 2}, {"sandybridge", 2}, {"bulldozer", 2}, {"piledriver", 2}, {"steamroller", 2}}};
  std::string lower(name);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto& [n, r] : ranks)
    if (lower == n) return r;
  return 0;  // Prescott, Core2, Nehalem, Atom, Barcelona, ...: SSE-only kernels
}
}  // namespace

std::string preferred_blas_core() {
  __builtin_cpu_init();
  std::string current = blas_core_name();
  int have = core_rank(current);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && have < 5)
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && have < 3) return "Haswell";
  return "";
}

namespace {
/// Whether the kernel backs memory with transparent huge pages only where a program asks for them.
bool huge_pages_on_request() {
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string text;
  std::getline(mode, text);
  return text.find("[madvise]") != std::string::npos;
}
}  // namespace

void ensure_fast_runtime(int argc, char** argv) {
  (void)argc;
  if (std::getenv("EMCRYO_REEXECUTED")) return;
  bool changed = false;
  if (!std::getenv("OPENBLAS_CORETYPE") && !std::getenv("EMCRYO_NO_BLAS_REEXEC")) {
    if (const std::string better = preferred_blas_core(); !better.empty()) {
      setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
      setenv("EMCRYO_NO_BLAS_REEXEC", "1", 1);  // marks the core as ours, not the user's
      changed = true;
    }
  }
  // glibc's malloc asks for transparent huge pages for its heap and large blocks: a job's arrays
  // (volumes, scores, templates) then fault in 2 MB at a time instead of 4 KB. Each E-step plans
  // new buffers, and on the VMs we measure on a page fault costs ~7 us: hetero-refine's bench set
  // took 250,000 faults and 9.7 s, with huge pages 113,000 and 8.9 s (bench/RESULTS.md).
  if (!std::getenv("GLIBC_TUNABLES") && !std::getenv("EMCRYO_NO_HUGE_PAGES") && huge_pages_on_request()) {
    setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 1);
    changed = true;
  }
  if (!changed) return;
  setenv("EMCRYO_REEXECUTED", "1", 1);  // once: guards against a loop
  execv("/proc/self/exe", argv);
  // execv failed: carry on with the settings the program started with rather than stop.
}

void set_threads(int threads) {
  const int team = threads > 0 ? threads : omp_get_max_threads();
  // Every SGEMM runs single-threaded; the engine spreads blocks of them over OpenMP's threads. A
  // multi-threaded OpenBLAS call rounds differently for each thread count, and some OpenBLAS
  // builds start their own threads inside our parallel regions (measured on the 16-core host:
  // class2d 2.5x slower with 16 threads than with 4).
  openblas_set_num_threads(1);
  // The OpenMP build of OpenBLAS (Debian's libopenblas0-openmp) sets OpenMP's team size in
  // openblas_set_num_threads as well: set after it, or every parallel region runs on one thread
  // (issue 9: class2d took its CPU time in wall time on 2 cores). OpenBLAS stays single-threaded:
  // its own count is kept apart from OpenMP's.
  omp_set_num_threads(team);
}

int threads() { return omp_get_max_threads(); }

}  // namespace emcryo::runtime
