// The final outputs of `emcryo refine` (private to jobs/refine).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "emcryo/em/model3d.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::jobs::refine_detail {

struct IterationRecord {
  int iteration = 0;
  double resolution = 0, step = 0;
  bool local = false;
  double changed = 0, seconds = 0;
  double regularization_seconds = 0;  // the M-step's reconstruction and filtering
};

struct FinalMaps {
  std::vector<float> half1, half2;  // unregularised half maps
  std::vector<float> full;          // both halves together, unregularised
  std::vector<float> user_mask;     // empty: automatic
  std::string job = "refine";       // the report's title: emcryo <job>
  std::vector<float> local_resolution;  // Å per voxel (nu-refine): localres.mrc, its histogram and sections
  std::vector<float> locally_filtered;  // the full map filtered voxel by voxel (nu-refine): map_locfilt.mrc
  std::vector<double> rotation_moved, shift_moved;  // per particle, degrees and Å from the input pose (local-refine)
};

struct FinalResult {
  double resolution = 0;  // Å, masked and phase-randomisation corrected FSC at 0.143
  double bfactor = 0;
};

/// Writes half maps, map_unfil.mrc, mask.mrc, the sharpened map.mrc, fsc.star/svg, particles.star
/// (poses in RELION's names), model.star, orientations.svg and report.html into dir.
FinalResult write_refine_outputs(const std::filesystem::path& dir, const io::ParticleSet& set,
                                 const std::vector<std::size_t>& active, const std::vector<int>& half,
                                 const std::vector<em::Pose3D>& poses, const FinalMaps& maps,
                                 const std::vector<std::vector<double>>& sigma2, const std::string& symmetry,
                                 const std::vector<IterationRecord>& history, const std::vector<std::string>& skipped, std::uint64_t seed);

void write_map(const std::filesystem::path& path, const std::vector<float>& map, int n, double pixel);

}  // namespace emcryo::jobs::refine_detail
