// `emcryo refine`: 3D homogeneous refinement with gold-standard half sets.
#pragma once
#include <cstdint>
#include <string>
#include <vector>


namespace emcryo::jobs {

struct RefineOptions {
  std::string particles, reference, out_dir;
  std::string symmetry = "C1";
  std::string mask;                   // user's mask (MRC), else automatic
  double initial_lowpass = 30;        // Å
  double particle_diameter = 0;       // Å; 0 = 90% of the box
  double initial_step = 15;           // degrees, global search
  double offset_range = 3, offset_step = 1;  // pixels
  int max_iterations = 25;
  bool adaptive_marginalization = true;   // false: each particle at its best pose only
  bool no_ctf = false;
  bool exhaustive = false;            // every hypothesis at the full limit (no coarse-to-fine search)
  int save_posteriors = 0;            // write each particle's N most probable poses (posteriors.star/.cs)
  std::string cs_root;                // .cs input: the folder blob/path is relative to
  int batch = 256;
  std::uint64_t seed = 1;
};

struct RefineResult {
  double resolution = 0;              // Å, FSC 0.143 (masked, corrected)
  int iterations = 0;
  double bfactor = 0;
};

RefineResult run_refine(const RefineOptions& options);
RefineResult continue_refine(const std::string& out_dir);

}  // namespace emcryo::jobs
