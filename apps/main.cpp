// emcryo: single-particle cryo-EM by Expectation-Maximization. Subcommand table and error path.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <thread>

#include "commands.hpp"
#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/runtime.hpp"
#include "emcryo/gpu/backend.hpp"

namespace {

/// Threads when -j is not given: all cores for a single process; under MPI, this node's cores
/// shared by its ranks (and never more than the cores mpirun bound the rank to).
int default_threads() {
  if (emcryo::mpi::local_size() == 1) return 0;
  const int node = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, std::min(omp_get_num_procs(), node / emcryo::mpi::local_size()));
}

/// An error ends the whole job: printed by the rank that met it (naming the rank under MPI), then
/// every rank is stopped (MPI_Abort), so none waits forever for the one that failed.
int fail_job(int code, const std::string& message) {
  if (emcryo::mpi::size() > 1) {
    emcryo::log::error("rank {} of {}: {}", emcryo::mpi::rank(), emcryo::mpi::size(), message);
    emcryo::mpi::abort(code);
  }
  emcryo::log::error("{}", message);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  emcryo::runtime::ensure_fast_runtime(argc, argv);
  emcryo::mpi::init(argc, argv);
  if (!emcryo::mpi::is_root()) {
    // Rank 0 speaks for the job; the others only report their own errors.
    emcryo::log::set_level(emcryo::log::Level::error);
    emcryo::Progress::set_shown(false);
  }
  CLI::App app{"emcryo: 2D classification, 3D refinement and reconstruction for cryo-EM"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "emcryo 0.1.0");
  int threads = -1;
  app.add_option("-j,--threads", threads, "Threads (per MPI rank; default: all cores, shared by the ranks of a node)");
  std::string gpus;
  bool cpu = false;
  auto* gpu_option = app.add_option("--gpu,--device", gpus, "CUDA devices to score on, e.g. 0 or 0,1 (default: every GPU present, else the CPU)");
  app.add_flag("--cpu", cpu, "Score on the CPU even where a GPU is present")->excludes(gpu_option);
  app.footer(
      "GPU switches (environment; each stage is on by default where a GPU scores, 0 puts it back on the CPU):\n"
      "  EMCRYO_GPU_PRECISION=fp32|tf32|split-tf32   GEMM precision of the scores\n"
      "  EMCRYO_GPU_SAMPLE=0       templates sampled on the CPU\n"
      "  EMCRYO_GPU_PREP=0         particle batches masked, transformed and CTF-weighted on the CPU\n"
      "  EMCRYO_GPU_REDUCE=0       coarse scores reduced to posteriors on the CPU\n"
      "  EMCRYO_GPU_MANY=0         per-particle passes scored particle by particle\n"
      "  EMCRYO_GPU_GATHER=0       their prepared particles staged on the CPU and sent, not read on the GPU\n"
      "  EMCRYO_GPU_MANY_ROWS=8|16|32, EMCRYO_GPU_MANY_SPLIT=N  their scores kernel's tile rows and inner-dimension chunks\n"
      "                            (default: chosen per group)\n"
      "  EMCRYO_GPU_SUMS=0         class2d's M-step sums on the CPU\n"
      "  EMCRYO_GPU_BACKPROJECT=0  3D back-projection on the CPU\n"
      "  EMCRYO_GPU_TRANSFORMS=0   3D reconstructions and projectors' transforms on the CPU\n"
      "  EMCRYO_GPU_CPU_BELOW_FLOPS=N  batches below N FLOP scored on the CPU\n"
      "Memory: EMCRYO_NO_HUGE_PAGES=1  leaves glibc's malloc on 4 KB pages (by default it is asked for transparent huge pages)");
  emcryo::app::add_info_command(app);
  emcryo::app::add_simulate_command(app);
  emcryo::app::add_reconstruct_command(app);
  emcryo::app::add_class2d_command(app);
  emcryo::app::add_refine_command(app);
  emcryo::app::add_hetero_commands(app);
  emcryo::app::add_abinitio_command(app);
  emcryo::app::add_align_map_command(app);
  emcryo::app::add_nu_refine_command(app);
  emcryo::app::add_local_refine_command(app);
  emcryo::app::add_convert_command(app);
  app.parse_complete_callback([&] {
    emcryo::runtime::set_threads(threads >= 0 ? threads : default_threads());
    emcryo::gpu::set_device_choice({cpu, gpus.empty() ? std::vector<int>{} : emcryo::gpu::parse_device_list(gpus)});
  });
  int code = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    code = emcryo::mpi::is_root() ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 1);
  } catch (const emcryo::Error& e) {
    code = fail_job(1, e.what());
  } catch (const std::filesystem::filesystem_error& e) {
    // The file system refused (read-only, no permission, disk full): the user's to fix, and
    // what() names the operation, the reason and the path on one line.
    code = fail_job(1, e.what());
  } catch (const std::exception& e) {
    code = fail_job(2, std::string("internal error: ") + e.what());
  }
  emcryo::log::set_file("");  // a failed job's run.log was left open for its error line
  emcryo::mpi::finalize();
  return code;
}
