// `emcryo align-map`: superpose a map on a reference (rotation, shift, hand) and report the FSC
// between them; how ab-initio maps are judged against a known truth, and a user's map comparison.
#pragma once
#include <string>
#include <vector>

#include "emcryo/image/map_align.hpp"

namespace emcryo::jobs {

struct AlignMapOptions {
  std::string map, reference;
  std::string out_map;             // the aligned map (MRC); empty = not written
  std::string out_fsc;             // FSC after alignment (STAR); empty = not written
  double search_resolution = 15;   // Å
};

struct AlignMapResult {
  image::MapAlignment alignment;
  std::vector<double> fsc;         // per shell, aligned map vs reference (inside a soft sphere)
  double resolution_05 = 0, resolution_0143 = 0;  // Å
  int box = 0;
  double pixel_size = 0;
};

AlignMapResult run_align_map(const AlignMapOptions& options);

/// The same on maps in memory (n^3, one pixel size): alignment, then the FSC inside a soft sphere
/// of 90% of the box.
AlignMapResult align_and_compare(const std::vector<float>& map, const std::vector<float>& reference, int n, double pixel,
                                 double search_resolution = 15, std::vector<float>* aligned = nullptr);

}  // namespace emcryo::jobs
