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
  // Non-uniform refinement (`emcryo nu-refine`): the M-step filters each voxel, on top of refine's
  // global filter, by the cut-off that cross-validates best between the half maps
  // (em::reconstruct_nonuniform), and a local-resolution
  // map is written.
  bool nonuniform = false;
  double window_factor = 3;           // adaptive window factor: window diameter / local resolution
  // Local refinement (`emcryo local-refine`): a masked region, searched only near each particle's
  // input pose, rotations about a fulcrum.
  bool local_refine = false;
  double rotation_extent = 20;        // degrees from the input orientation
  double shift_extent = 10;           // Å from the input shift
  std::vector<double> fulcrum;        // Å from the box centre; empty: the mask's centre of mass
  bool pose_prior = false;            // Gaussian prior around the input pose (rotation extent 3 sigma)
  double prior_sigma_rotation = 15;   // degrees
  double prior_sigma_shift = 7;       // Å
  bool subtract = false;              // subtract the projection of the map outside the mask first
};

struct RefineResult {
  double resolution = 0;              // Å, FSC 0.143 (masked, corrected)
  int iterations = 0;
  double bfactor = 0;
};

RefineResult run_refine(const RefineOptions& options);
RefineResult continue_refine(const std::string& out_dir);

}  // namespace emcryo::jobs
