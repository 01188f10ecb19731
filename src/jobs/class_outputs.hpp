// The outputs of the 3D classification jobs (hetero-refine, class3d, hetero-reconstruct), private
// to jobs: per class the half maps, FSC and filtered map; particles.star with the class, its
// per-class posterior columns and the pose; model.star with class sizes and resolutions; the
// report's per-class sections.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "emcryo/em/model3d.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/io/report.hpp"

namespace emcryo::jobs::class_outputs {

/// rlnClassPosterior001 ... : particle's posterior probability of each class (1-based, 3 digits).
std::string posterior_column(int k);

struct ClassMap {
  bool empty = false;             // emptied out: no map written
  double size = 0;                // particles: sum of the class posteriors
  double resolution = 999;        // Å, half-map FSC 0.143 inside the mask
  std::vector<double> fsc;
  std::vector<float> map;         // Wiener-filtered full map (the one written as class_NNN.mrc)
};

/// From the two half sums of class k (0-based): class_NNN_half1_unfil.mrc, _half2_unfil.mrc,
/// class_NNN.mrc (both halves, Wiener-filtered by their FSC) and class_NNN_fsc.star; the FSC is
/// taken inside `mask` and zeroed beyond `radius` (what was back-projected).
ClassMap write_class_map(const std::filesystem::path& dir, int k, const em::BackProjector& half1, const em::BackProjector& half2,
                         const std::vector<float>& mask, int n, double pixel, double radius);

/// particles.star (and .cs) of `active` particles: the pose, rlnRandomSubset, rlnClassNumber
/// (most probable class, 1-based), rlnMaxValueProbDistribution (its posterior) and one
/// posterior column per class. `poses[a].class_posterior` has K values.
void write_class_particles(const std::filesystem::path& dir, const io::ParticleSet& set, const std::vector<std::size_t>& active,
                           const std::vector<int>& half, const std::vector<em::Pose3D>& poses, int K);

/// model.star: model_general and model_classes (rlnReferenceImage, rlnClassDistribution,
/// rlnEstimatedResolution, emptied classes with distribution 0).
void write_class_model_star(const std::filesystem::path& dir, const std::vector<ClassMap>& classes, double pixel, int n,
                            const std::string& symmetry, int iterations);

/// Report sections: a table of class sizes and resolutions, the per-class FSC curves, central
/// sections and viewing directions (of the particles assigned to each class).
void add_class_sections(io::HtmlReport& report, const std::vector<ClassMap>& classes, const std::vector<em::Pose3D>& poses, int n,
                        double pixel, bool orientations);

}  // namespace emcryo::jobs::class_outputs
