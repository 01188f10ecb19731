// 3D classification: `emcryo hetero-refine` (K maps, poses searched per class and maximised, the
// class marginalised), `emcryo class3d` (the input poses kept, the class marginalised with an
// annealed class similarity) and `emcryo hetero-reconstruct` (the maps of K classes from given
// poses and class posteriors). All are configurations of the 3D engine (em/model3d).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace emcryo::jobs {

struct HeteroOptions {
  bool align = true;                  // true: hetero-refine (poses searched); false: class3d (input poses kept)
  std::string particles, out_dir;
  std::vector<std::string> references;  // one per class, or one (then `classes` starts are made from it)
  int classes = 0;                    // 0: one per reference
  std::string symmetry = "C1";
  std::string mask;                   // hetero-refine: solvent mask; class3d: focus mask (only its region is compared)
  double initial_lowpass = 30;        // Å: the starts are low-passed to this
  double particle_diameter = 0;       // Å; 0 = 90% of the box
  double initial_step = 15;           // degrees, global search
  double offset_range = 3, offset_step = 1;  // pixels
  int global_iterations = 6;          // hetero-refine: global searches at initial_step, then one at half of it, then local
  int max_iterations = 0;             // 0: 12 for hetero-refine, 15 for class3d
  bool force_hard = false;            // each particle in its most probable class only
  bool marginalize_poses = false;     // every probable pose per class weighted by its posterior (else the best one)
  double class_similarity = -1;       // initial, annealed to 0 by similarity_end; < 0: 0.5 for class3d, 0 for hetero-refine
  int similarity_end = 10;            // iteration by which the class similarity reaches 0
  int cross_half_iterations = 10;     // iterations whose particles are scored against the other half's class maps
  double target_resolution = 0;       // Å: the working limit of the class comparison (0: from the best class FSC)
  bool no_ctf = false;
  std::string cs_root;                // .cs input: the folder blob/path is relative to
  int batch = 256;
  std::uint64_t seed = 1;
};

struct HeteroResult {
  int iterations = 0;
  std::vector<double> class_sizes;          // particles per class (sum of posteriors); 0 for emptied classes
  std::vector<double> resolutions;          // Å per class, half-map FSC 0.143 (999 for emptied classes)
  std::vector<int> class_of_particle;       // per input particle, 0-based; -1 = skipped
};

HeteroResult run_hetero(const HeteroOptions& options);
HeteroResult continue_hetero(const std::string& out_dir);

struct HeteroReconstructOptions {
  std::string particles, cs_root, out_dir;
  std::string symmetry = "C1";
  std::string mask;                  // FSC inside this mask (default: a soft sphere)
  bool force_hard = false;           // each particle in its most probable class only
  bool no_ctf = false;
  double max_resolution = 0;         // Å; 0 = Nyquist
  int batch = 512;
  std::uint64_t seed = 1;            // half-set split when rlnRandomSubset is absent
};

HeteroResult run_hetero_reconstruct(const HeteroReconstructOptions& options);

}  // namespace emcryo::jobs
