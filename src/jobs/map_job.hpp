// What the 3D map jobs (refine, hetero-refine, class3d) share: reading the particles, masks and
// references once; choosing the usable particles and their half sets; the half-map regulariser;
// per-iteration maps beside the checkpoint; poses in the checkpoint (private to jobs).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "emcryo/em/model3d.hpp"
#include "emcryo/em/regularizer.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/jobs/checkpoint_json.hpp"

namespace emcryo::em {
// Poses are checkpointed as [rot, tilt, psi, shift_x, shift_y].
void to_json(nlohmann::json& j, const Pose3D& p);
void from_json(const nlohmann::json& j, Pose3D& p);
}  // namespace emcryo::em

namespace emcryo::jobs {

/// The data a 3D job reads once.
struct MapJobInputs {
  io::ParticleSet set;
  int n = 0;
  double pixel = 0;
  std::vector<float> user_mask, particle_mask, sphere;
  double diameter = 0;               // Å
  std::vector<std::size_t> active;   // usable particles (indices into set)
  std::vector<int> half;             // 1 or 2 per usable particle
  std::vector<std::string> skipped;  // bad particles, for the log and the report
};

struct MapJobInputOptions {
  std::string job;           // for messages: "refine", "hetero-refine"...
  std::string particles, cs_root, mask;
  bool no_ctf = false;
  double particle_diameter = 0;  // Å; 0 = 90% of the box
};

/// Reads the particles and the mask; checks CTF columns, pixel sizes and the mask's box.
MapJobInputs read_map_job_inputs(const MapJobInputOptions& o);

/// Every particle of `set` read and checked, the work spread over the ranks of an MPI job (each
/// reads its chunks, mpi::Chunks; the verdicts are summed): usable ones into `active`, in order,
/// and a note ("particle 3 (1@stack.mrcs): NaN or Inf pixels") for each bad one, on every rank.
std::vector<std::string> check_particles(const io::ParticleSet& set, std::vector<std::size_t>& active);
/// Usable particles (bad ones skipped, logged and kept for the report) and their half sets.
void select_particles(MapJobInputs& in, std::uint64_t seed);

/// A cubic reference map resampled to the particles' box and pixel size when they differ (`note`
/// then says how, for the log).
std::vector<float> read_reference(const std::string& path, int n, double pixel, const std::string& job, std::string& note);

/// How many shells beyond an iteration's working limit its particles are back-projected (the last
/// iteration's go to Nyquist): the next FSC needs data past the limit to show a gain, and the limit
/// already lies 4 shells past the last FSC's resolution. 8 cost 13-17% more refine time on the
/// held-out sets for the same poses and maps (bench/RESULTS.md, tenth session). hetero-refine
/// uses twice this (see there).
constexpr double kInsertMargin = 4;

/// The regulariser of a half map: Wiener from the previous half-map FSC; before any FSC exists,
/// one that keeps what the initial low-pass kept.
em::GlobalWiener half_map_regularizer(const std::vector<double>& fsc, int n, double pixel, double initial_lowpass);

/// The mask a half's references are projected through in the E-step: the user's mask where given;
/// else the union of the maps' own solvent masks (image::solvent_mask) inside the particle's sphere.
/// Made from one half's maps only, so the halves stay independent. Why not the sphere alone: the
/// solvent around the particle in a half map is noise, and projecting it into every template blurs
/// the poses (measured: refine of 1TII, 500 particles, SNR 0.05, 64 px: median pose error 5.58 ->
/// 4.21 deg, FSC 0.5 to the truth at shell 11.35 -> 12.30 of the true-pose map's 12.66).
std::vector<float> reference_mask(const MapJobInputs& in, const std::vector<const std::vector<float>*>& maps);

/// sigma^2 per optics group and shell times `inflation` (em::masked_noise_inflation): the noise the
/// likelihood of masked images needs.
std::vector<std::vector<double>> inflated_sigma2(std::vector<std::vector<double>> sigma2, double inflation);

/// Writes `maps` as checkpoint_itNNN_<label>.mrc in dir and returns the names (for the
/// checkpoint, written after them).
std::vector<std::string> write_iteration_maps(const std::filesystem::path& dir, int iteration, const std::vector<std::string>& labels,
                                              const std::vector<std::vector<float>>& maps, int n, double pixel);
/// Removes every checkpoint_it*.mrc in dir that `current` (the checkpoint's own maps) does not name:
/// after each new checkpoint, and on resuming (a run killed between its checkpoint and this sweep
/// left the iteration before's maps behind; bench/kill_trials.sh).
void remove_stale_maps(const std::filesystem::path& dir, const std::vector<std::string>& current);

}  // namespace emcryo::jobs

namespace emcryo::jobs {

/// Back-projection at known poses into K classes, each particle weighted by its
/// Pose3D::class_posterior (flat noise: the CTF alone weights the data): sums[h][k] for the particles
/// of half h+1 (images[h], poses[h]), on the job's backend (a GPU's back-projects there).
std::vector<std::vector<em::BackProjector>> back_project_classes(const io::ParticleSet& set, const std::vector<std::vector<std::size_t>>& images,
                                                                 std::vector<std::vector<em::Pose3D>>& poses, int K,
                                                                 const std::vector<geometry::Mat3>& symmetry, bool use_ctf, double radius,
                                                                 int batch, em::ScoringBackend& backend, Progress* progress);

/// Particle i's pose as the STAR gives it (the displacement is minus RELION's origin).
em::Pose3D input_pose(const io::ParticleSet& set, std::size_t i);

}  // namespace emcryo::jobs
