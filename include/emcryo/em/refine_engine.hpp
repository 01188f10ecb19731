// The 3D E-step of homogeneous refinement (DESIGN §4): every particle of one half set scored
// against central slices of its half map, with the scores as GEMMs; the chosen poses (or the
// hypotheses holding most of the posterior mass) back-projected; the residual kept for sigma^2.
// The iteration schedule, masks and the M-step's regularisation stay in jobs/refine.
#pragma once
#include <cstdint>
#include <vector>

#include "emcryo/core/progress.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::em {

struct Pose3D {
  double rot = 0, tilt = 0, psi = 0;  // RELION Euler angles, degrees
  double shift_x = 0, shift_y = 0;    // pixels: displacement of the particle from the centre
  double max_probability = 1;
  int significant = 1;                // hypotheses that entered the reconstruction
};

/// The hypotheses of one iteration.
struct PoseSearch {
  bool local = false;                  // around each particle's pose; else the global grid
  double step = 15;                    // degrees; a local search spans +/- step
  std::vector<geometry::Euler> grid;   // global orientations
  std::vector<Shift> shifts;           // pixels
  double offset_step = 1;              // pixels: spacing of `shifts` (for adaptive oversampling)
  bool relative_shifts = false;        // shifts around each particle's current shift
};

/// Local candidates: `centre` turned by rotation vectors on a 5x5x5 grid, spacing step/2.
std::vector<geometry::Euler> local_orientations(const geometry::Euler& centre, double step);

struct ExpectationSettings {
  bool use_ctf = true;
  bool cc_scoring = false;     // normalised cross-correlation: the reference is not on the data's grey scale
  bool marginalize = false;    // adaptive marginalisation: the most probable hypotheses are sampled
                               // twice as finely, and the fine ones holding 99.9% of the mass (at
                               // most 64) all enter the reconstruction, weighted by their posterior
  int batch = 256;             // particles per batch (bounds memory)
  double insert_radius = 0;    // pixels: back-projection limit
};

/// Residual power per optics group and shell, for the noise model.
struct NoiseSums {
  std::vector<std::vector<double>> sum, count;
  NoiseSums() = default;
  NoiseSums(std::size_t groups, std::size_t shells);
  void add(const NoiseSums& other);
  /// sigma^2 = sum / (2 count) (per real/imaginary part) where a shell has data.
  void update(std::vector<std::vector<double>>& sigma2) const;
};

struct ExpectationStats {
  int changed = 0;            // particles whose orientation moved by more than step/2
  double angle_change = 0;    // sum over particles, degrees
  double flops = 0, gemm_seconds = 0;
};

/// One half set's E-step and back-projection. image_index[p] is particle p's index in `set`,
/// poses[p] its pose (read for local searches and relative shifts, then replaced by the best
/// hypothesis). Slices go into thread_maps[omp thread] with every operator of `symmetry`, the
/// best hypothesis's residual into thread_noise[omp thread] (not in CC iterations). Both vectors
/// must hold omp_get_max_threads() items.
void expectation_3d(const io::ParticleSet& set, const std::vector<std::size_t>& image_index, std::vector<Pose3D>& poses,
                    const Projector& reference, const FrequencyList& list, const std::vector<std::vector<double>>& sigma2,
                    const std::vector<float>& particle_mask, const PoseSearch& search,
                    const std::vector<geometry::Mat3>& symmetry, const ExpectationSettings& settings,
                    std::vector<BackProjector>& thread_maps, std::vector<NoiseSums>& thread_noise, ExpectationStats& stats,
                    Progress* progress);

}  // namespace emcryo::em
