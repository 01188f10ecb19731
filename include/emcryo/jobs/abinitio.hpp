// `emcryo abinitio`: K maps from particles alone, by minibatch stochastic gradient descent with
// poses marginalised on global grids, the resolution raised over the run (after Punjani et al.
// 2017, cryoSPARC's ab-initio reconstruction).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace emcryo::jobs {

struct AbinitioOptions {
  std::string particles, out_dir, cs_root;
  std::string symmetry = "C1";        // imposed during the run
  int classes = 1;
  double max_resolution = 12;         // Å, reached at 80% of the SGD iterations
  double initial_resolution = 35;     // Å
  double particle_diameter = 0;       // Å; 0 = 90% of the box
  int iterations = 0;                 // SGD iterations; 0 = from the particle count (see abinitio.cpp)
  int initial_batch = 0, final_batch = 0;  // particles per minibatch; 0 = from the class count
  double learning_rate = 0.4;         // of the preconditioned gradient step
  double momentum = 0.5;
  double class_similarity = 0.3;      // K > 1: target class ESS 1 + s (K - 1) at the start, annealed to 0
  double sigma_scale = 3;             // initial inflation of the noise model, annealed to 1
  double offset_range = 3;            // pixels, around the box centre
  bool no_ctf = false;
  int batch = 256;                    // particles per E-step batch (bounds memory)
  std::uint64_t seed = 1;
};

struct AbinitioResult {
  std::vector<double> class_fractions;
  int iterations = 0;
  double seconds = 0;
};

AbinitioResult run_abinitio(const AbinitioOptions& options);
AbinitioResult continue_abinitio(const std::string& out_dir);

}  // namespace emcryo::jobs
