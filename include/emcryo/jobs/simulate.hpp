// `emcryo simulate`: particle images with known truth from atomic models or maps.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "emcryo/jobs/belt.hpp"

namespace emcryo::jobs {

struct SimulateOptions {
  std::vector<std::string> models;       // PDB/mmCIF (optionally .gz) or MRC maps; >1 = heterogeneity
  std::vector<double> class_fractions;   // one per model; default equal
  std::string out_dir;
  int particles = 1000;
  int box = 64;
  double pixel_size = 2.0;               // Å
  double snr = 0.1;                      // signal variance / noise variance inside the box
  std::string orientations = "uniform";  // uniform | views | preferred
  int views = 8;                         // for orientations = views
  double preferred_fraction = 0.7;       // for preferred: share of particles near the top view
  double preferred_spread = 15;          // degrees
  double max_shift = 4;                  // Å, uniform in a disc
  double defocus_min = 8000, defocus_max = 25000, astigmatism = 300;  // Å
  double voltage = 300, cs = 2.7, amplitude_contrast = 0.1, bfactor = 0;
  std::string symmetry = "C1";           // imposed on the true map (for symmetric test sets)
  bool no_ctf = false;                   // images without CTF, STAR without CTF columns
  bool common_centre = false;            // atomic models all centred on the first one's centre of mass
                                         // (a sub-complex keeps the complex's frame)
  bool float16 = false;
  std::uint64_t seed = 1;
  // A flexible domain: the chains of body 2 (the rest of the model is body 1) turned per particle
  // about a hinge by a Gaussian angle (random axis); truth.star keeps each particle's turn.
  std::vector<std::string> body2_chains;
  double flex_sigma = 5;                 // degrees
  std::vector<double> hinge;             // Å from the box centre; default: midway between the bodies' centres
  // Disordered density: the chains of a region turned about its own centre, displaced and scaled
  // per particle, so that its average density is blurred while the rest stays sharp.
  std::vector<std::string> disorder_chains;
  double disorder_sigma = 10;            // degrees
  double disorder_shift = 3;             // Å, standard deviation per axis
  double disorder_min_occupancy = 0.3;   // occupancy uniform in [min, 1]
  // A detergent-belt-like shell around every particle, drawn anew per particle (belt.hpp).
  BeltOptions belt;
};

struct SimulateSummary {
  int particles = 0;
  int box = 0;
  double pixel_size = 0;
  double noise_sigma = 0;
  std::vector<int> class_counts;
};

SimulateSummary run_simulate(const SimulateOptions& options);

/// Which atoms of an atomic model make a map, and where the map's centre goes.
struct ModelMapOptions {
  std::vector<std::string> chains;  // empty: every chain
  bool exclude = false;             // the listed chains are left out instead of kept
  /// Å in the model's coordinates; default: the whole model's centre of mass (all chains, so that
  /// the parts of a split model add up to the whole).
  const std::array<double, 3>* centre = nullptr;
  std::array<double, 3>* centre_used = nullptr;  // receives the centre applied
};

/// A density map of an atomic model (Gaussian atoms weighted by atomic number), centred on the
/// model's centre of mass (or on `centre`), box n, pixel size in Å. Maps are read as they are.
std::vector<float> model_to_map(const std::string& model_path, int n, double pixel_size, const ModelMapOptions& options = {});
/// Imposes a point-group symmetry on a map (average of rotated copies).
std::vector<float> symmetrize_map(const std::vector<float>& map, int n, const std::string& symmetry);

}  // namespace emcryo::jobs
