// `emcryo reconstruct`: maps from known poses; half maps, FSC, resolution, symmetry.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace emcryo::jobs {

struct ReconstructOptions {
  std::string particles;   // STAR or cryoSPARC .cs file
  std::string cs_root;     // .cs: folder blob paths are relative to (empty: guessed)
  std::string out_dir;
  std::string symmetry = "C1";
  bool no_ctf = false;     // ignore CTF columns
  double max_resolution = 0;  // Å; 0 = Nyquist
  int batch = 512;            // particles in memory at once
  std::uint64_t seed = 1;     // half-set split when rlnRandomSubset is absent
};

struct ReconstructResult {
  std::vector<float> map;          // regularised full map (FSC-weighted)
  std::vector<float> map_unfiltered;
  std::vector<float> half1, half2;
  std::vector<double> fsc;         // per shell, half maps
  double resolution_0143 = 0, resolution_05 = 0;  // Å
  int box = 0;
  double pixel_size = 0;
  std::size_t particles_used = 0, particles_skipped = 0;
};

ReconstructResult run_reconstruct(const ReconstructOptions& options);

}  // namespace emcryo::jobs
