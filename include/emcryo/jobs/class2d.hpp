// `emcryo class2d`: 2D classification by EM over class, in-plane angle and shift.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace emcryo::jobs {

struct Class2DOptions {
  std::string particles;
  std::string out_dir;
  int classes = 10;
  int iterations = 20;
  double mask_diameter = 0;        // Å; 0 = 90% of the box
  double max_resolution = 0;       // Å; 0 = Nyquist
  double min_align_resolution = 0; // Å; the working limit never stays below this
  double initial_resolution = 25;  // Å, working limit of the first iteration
  double psi_step = 6;             // degrees
  double offset_range = 3;         // pixels
  double offset_step = 1;          // pixels
  double tau2_fudge = 2;
  double uncertainty_factor = 2;   // initial class-posterior temperature, annealed to 1
  bool force_max_poses = false;
  bool hard_classify_last = false;
  bool no_ctf = false;
  bool exhaustive = false;         // score every hypothesis at the full limit (no coarse-to-fine search)
  int save_posteriors = 0;         // write each particle's N most probable hypotheses (posteriors.star/.cs)
  int keep_iterations = 2;         // per-iteration outputs kept: the last N ...
  int keep_every = 0;              // ... and every Nth (0: none)
  std::string cs_root;             // .cs input: the folder blob/path is relative to
  int batch = 256;
  std::uint64_t seed = 1;
};

struct Class2DResult {
  int iterations_done = 0;
  std::vector<int> class_of_particle;    // final best class (0-based) per input particle, -1 = skipped
  std::vector<double> psi_of_particle;
  std::vector<double> class_sizes;
  double gflops = 0;                     // achieved in the scoring GEMMs
  double seconds = 0;
};

Class2DResult run_class2d(const Class2DOptions& options);
/// Resumes from the last checkpoint in `out_dir` and runs the remaining iterations.
Class2DResult continue_class2d(const std::string& out_dir);

}  // namespace emcryo::jobs
