// Single-precision GEMM speed of the linked OpenBLAS, and the kernel it runs with.
// Usage: bench_blas [min_seconds_per_case]   (default 1.0)
//
// Calls emcryo::runtime::ensure_fast_runtime() first, like emcryo itself, so the figures are those
// the program gets. To see the other paths:
//   OPENBLAS_CORETYPE=Prescott bench_blas                       # forced SSE3 kernels (slow path)
//   env -u OPENBLAS_CORETYPE EMCRYO_NO_BLAS_REEXEC=1 bench_blas  # OpenBLAS's own choice
//
// Cases: square 512/1024/2048 (NoTrans x NoTrans), and the class2d E-step shape
// (row-major Y[M x K] * A[N x K]^T, M = 256 particles x 29 shifts, N = 600 class-rotations,
// K = 2 x 600 frequencies) plus the M-step shape that uses the same matrices transposed
// (W[M x N]^T * Y[M x K]). Each case runs with 1 and 2 threads; the best of repeated calls
// is reported (the machine may be shared).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "emcryo/core/runtime.hpp"

extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
char* openblas_get_config(void);
}

namespace {

using Clock = std::chrono::steady_clock;

struct Case {
  const char* name;
  CBLAS_TRANSPOSE ta, tb;
  int m, n, k;
};

// Nominal clock from /proc/cpuinfo ("cpu MHz"); under a hypervisor this is the TSC/base
// frequency reported to the guest, not the boost clock the core may actually run at.
double nominal_mhz() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("cpu MHz", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return std::atof(line.c_str() + colon + 1);
    }
  return 0;
}

std::string cpuinfo_field(const char* key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  const std::string k(key);
  while (std::getline(in, line))
    if (line.rfind(k, 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string v = line.substr(colon + 1);
        v.erase(0, v.find_first_not_of(" \t"));
        return v;
      }
    }
  return "";
}

double run_case(const Case& c, int threads, double min_seconds) {
  openblas_set_num_threads(threads);
  const std::size_t a_rows = c.ta == CblasNoTrans ? c.m : c.k, a_cols = c.ta == CblasNoTrans ? c.k : c.m;
  const std::size_t b_rows = c.tb == CblasNoTrans ? c.k : c.n, b_cols = c.tb == CblasNoTrans ? c.n : c.k;
  std::vector<float> a(a_rows * a_cols), b(b_rows * b_cols), out(static_cast<std::size_t>(c.m) * c.n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : a) v = u(rng);
  for (auto& v : b) v = u(rng);
  const auto call = [&] {
    cblas_sgemm(CblasRowMajor, c.ta, c.tb, c.m, c.n, c.k, 1.0f, a.data(), static_cast<int>(a_cols), b.data(),
                static_cast<int>(b_cols), 0.0f, out.data(), c.n);
  };
  call();  // warm-up: thread pool start, page faults, caches
  double best = 1e30, total = 0;
  int reps = 0;
  while (total < min_seconds || reps < 3) {
    const auto start = Clock::now();
    call();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  return 2.0 * c.m * c.n * c.k / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  emcryo::runtime::ensure_fast_runtime(argc, argv);
  const double min_seconds = argc > 1 ? std::atof(argv[1]) : 1.0;

  const char* env_core = std::getenv("OPENBLAS_CORETYPE");
  std::printf("OpenBLAS core:      %s\n", emcryo::runtime::blas_core_name().c_str());
  std::printf("OpenBLAS config:    %s\n", openblas_get_config());
  std::printf("OPENBLAS_CORETYPE:  %s\n", env_core ? env_core : "(unset)");
  const std::string preferred = emcryo::runtime::preferred_blas_core();
  std::printf("preferred core:     %s\n", preferred.empty() ? "(current is fine)" : preferred.c_str());

  const double mhz = nominal_mhz();
  const int cores = 2;
  // Peak as 2 cores x 2 FMA units x 16 floats (512-bit) x 2 flops x clock.
  const double peak_512 = cores * 2.0 * 16 * 2 * mhz / 1e3;
  std::printf("CPU:                %s, %d cores, nominal clock %.0f MHz (/proc/cpuinfo \"cpu MHz\")\n",
              cpuinfo_field("model name").c_str(), cores, mhz);
  std::printf("peak (2 cores x 2 FMA x 16 floats x 2 flops x nominal clock): %.1f GFLOP/s (1 core: %.1f)\n",
              peak_512, peak_512 / cores);
  // AMD family 25 (0x19) with AVX-512 is Zen 4: two 256-bit FMA pipes, a 512-bit FMA runs as two
  // halves, so the real limit is 2 x 8 floats x 2 flops = 32 flop/cycle/core, half the formula.
  const bool zen4 = cpuinfo_field("vendor_id") == "AuthenticAMD" && cpuinfo_field("cpu family") == "25" &&
                    __builtin_cpu_supports("avx512f");
  if (zen4)
    std::printf("note: AMD family 25 with AVX-512 = Zen 4: two 256-bit FMA pipes, a 512-bit FMA issues as two\n"
                "      halves, so the real limit is 32 flop/cycle/core: %.1f GFLOP/s at nominal clock (1 core: %.1f);\n"
                "      a 1-core figure above %.1f means the core is boosting above the nominal clock\n",
                peak_512 / 2, peak_512 / 2 / cores, peak_512 / 2 / cores);

  const Case cases[] = {
      {"square 512", CblasNoTrans, CblasNoTrans, 512, 512, 512},
      {"square 1024", CblasNoTrans, CblasNoTrans, 1024, 1024, 1024},
      {"square 2048", CblasNoTrans, CblasNoTrans, 2048, 2048, 2048},
      {"class2d E-step NT 7424x600x1200", CblasNoTrans, CblasTrans, 256 * 29, 600, 2 * 600},
      {"class2d M-step TN 600x1200x7424", CblasTrans, CblasNoTrans, 600, 2 * 600, 256 * 29},
  };
  std::printf("\n%-34s %10s %10s %9s %9s\n", "case (M x N x K)", "1 thread", "2 threads", "%peak 1t", "%peak 2t");
  for (const Case& c : cases) {
    const double g1 = run_case(c, 1, min_seconds);
    const double g2 = run_case(c, 2, min_seconds);
    std::printf("%-34s %10.1f %10.1f %8.0f%% %8.0f%%\n", c.name, g1, g2, 100 * g1 / (peak_512 / cores),
                100 * g2 / peak_512);
    std::fflush(stdout);
  }
  std::printf("(GFLOP/s = 2 M N K / best time; %%peak against the 512-bit formula above)\n");
  return 0;
}
