// Which scoring backend a job runs on (CPU or CUDA GPUs), the GPUs this machine has, and the
// CUDA backend itself (src/gpu). Jobs ask make_backend(); the CLI sets the choice once
// (--gpu LIST, --cpu). Built without CUDA (EMCRYO_CUDA off), the device list is empty and the
// CUDA backend cannot be made: the CPU backend is used, and an explicit --gpu is an error.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::gpu {

struct DeviceInfo {
  int id = 0;
  std::string name;
  std::size_t memory = 0, free_memory = 0;  // bytes
  int major = 0, minor = 0;                 // compute capability
  int multiprocessors = 0;
};

/// Whether this build holds the CUDA backend.
bool built_with_cuda();
/// The CUDA devices present (empty without CUDA, driver or device; never throws).
std::vector<DeviceInfo> devices();
/// Why devices() is empty ("built without CUDA", the driver's message, ...); empty when it is not.
std::string no_device_reason();
/// Why the CUDA libraries opened at run time (cuBLAS) cannot be used here; "" where they can (it
/// does not need a device). devices() lists none while this is not "".
std::string runtime_library_problem();

/// How the cross term x = rows . templates^T is computed on the GPU. fp32: cuBLAS SGEMM.
/// tf32: one TF32 tensor-core GEMM (10-bit mantissas). split_tf32: each operand split into a
/// TF32 head and a TF32 tail, three TF32 GEMMs (head.head + head.tail + tail.head) that recover
/// close to FP32 accuracy at tensor-core speed. The norm term is always FP32.
enum class Precision { fp32, tf32, split_tf32 };
Precision parse_precision(const std::string& text);  // "fp32", "tf32", "split-tf32"
std::string precision_name(Precision p);

struct CudaOptions {
  std::vector<int> devices{0};    // the calling threads' slots are spread over these
  Precision precision = Precision::split_tf32;
  /// Requests of fewer FLOPs than this are scored on the CPU: a GPU round trip (~20 us) costs
  /// more than the arithmetic of a tiny per-particle fine pass. 0: everything on the GPU.
  double cpu_below_flops = 0;
  /// Per-particle templates (fine passes, local searches) sampled on the GPU from the references'
  /// padded Fourier grids, resident there for the E-step, instead of on the CPU and sent over the
  /// bus. EMCRYO_GPU_SAMPLE=0 turns it off (to compare).
  bool sample_templates = true;
  /// class2d's M-step sums kept on the GPU (one GEMM per batch from the kept hypotheses) instead
  /// of summed on the CPU. On by default: test_gpu and the GpuJobs tests passed with it on an H100 (2026-12-06);
  /// EMCRYO_GPU_SUMS=0 sums on the CPU instead.
  bool template_sums = true;
  /// Particle batches prepared on the GPU (masked, batched cuFFT, CTF and 1/sigma^2 weights by
  /// kernels; src/gpu/prepare.cu) instead of on the CPU with FFTW. On by default: test_gpu and the
  /// GpuJobs tests passed with it on an H100 (2026-12-06, third session); EMCRYO_GPU_PREP=0 prepares
  /// on the CPU instead.
  bool prepare_batches = true;
  /// The 3D back-projection (refine's and every 3D job's M-step sums) on the GPU: per-class padded
  /// volumes on the card for a chunk, filled by atomic trilinear scatter. On by default: test_gpu and
  /// the GpuJobs tests passed with it on an H100 (2026-12-06, third session).
  /// EMCRYO_GPU_BACKPROJECT=0 keeps the CPU's (bitwise reproducible) block; the atomics' sums vary
  /// in their last bits from run to run.
  bool volume_sums = true;
  /// The shared coarse pass's posterior reduction on the GPU: a batch's coarse scores stay on the
  /// card and only per-class sums and the hypotheses that can hold mass come back
  /// (src/gpu/reduction.cu). EMCRYO_GPU_REDUCE=0 copies the scores back and reduces on the CPU.
  bool reduce_scores = true;
  /// A batch's per-particle passes (fine passes, local searches) scored at once: the particles'
  /// X and C/sigma^2 go up once, the rows are built, the templates sampled and every small product
  /// scored by one kernel each (src/gpu/many.cu), instead of a round trip per particle from each CPU
  /// thread. EMCRYO_GPU_MANY=0 scores particle by particle.
  bool score_many = true;
  /// The M-step's reconstructions and the projectors' padded transforms (512^3 FFTs at box 256) by
  /// cuFFT and kernels (src/gpu/volume_transforms.cu) instead of FFTW and the CPU's loops.
  /// On by default: test_gpu and GpuJobs passed with it on an H100 (2026-12-07, eighth session);
  /// EMCRYO_GPU_TRANSFORMS=0 keeps them on the CPU.
  bool volume_transforms = true;
  /// score_many reads the particles of the batch the GPU prepared from the card (gathered there)
  /// instead of staging them on the host and sending them (validated on an H100, 2026-12-07).
  /// EMCRYO_GPU_GATHER=0 stages them.
  bool gather_prepared = true;
  /// score_many's groups: at most this many floats of rows, templates and scores on the card each
  /// (512 MB); one group is staged on the CPU while the card scores the one before.
  double many_group_floats = 128.0 * (1 << 20);
  /// score_many's tiles: 0 picks per group the shape (8, 16 or 32 shifts by 1024 / that
  /// templates) with the least padding; EMCRYO_GPU_MANY_ROWS forces one.
  int many_tile_rows = 0;
  /// score_many's products cut along the inner dimension into this many chunks (0: as many as
  /// fill the card, each at least 512 floats; 1: none); EMCRYO_GPU_MANY_SPLIT.
  int many_split = 0;
};

/// The CUDA backend; fails (emcryo::Error) when built without CUDA or a device is missing.
std::unique_ptr<em::ScoringBackend> make_cuda_backend(const CudaOptions& options);

/// The process-wide choice the CLI makes. Default: the GPUs when any is present, else the CPU.
struct DeviceChoice {
  bool force_cpu = false;
  std::vector<int> gpus;  // empty: every GPU present
};
void set_device_choice(const DeviceChoice& choice);
DeviceChoice device_choice();
/// "0,1" -> {0, 1}; fails with a one-line message on anything else.
std::vector<int> parse_device_list(const std::string& text);

/// The backend a job runs on, per the choice (logged once per call). The GEMM precision, the
/// CPU threshold, GPU template sampling, GPU M-step sums, GPU batch preparation and the GPU
/// back-projection and the coarse reduction can be overridden by EMCRYO_GPU_PRECISION,
/// EMCRYO_GPU_CPU_BELOW_FLOPS, EMCRYO_GPU_SAMPLE, EMCRYO_GPU_SUMS, EMCRYO_GPU_PREP,
/// EMCRYO_GPU_BACKPROJECT and EMCRYO_GPU_REDUCE (0: off; PREP=1 on).
std::unique_ptr<em::ScoringBackend> make_backend();

}  // namespace emcryo::gpu
