// 3D jobs as configurations of the engine: K maps (one for refine) as central-slice templates,
// a global grid over the asymmetric unit, a local grid around each pose, or the fixed input pose;
// shifts absolute or around the current ones; poses maximised (or marginalised over the
// hypotheses holding the mass), the class marginalised; coarse-to-fine over orientation and
// shift. The M-step's sums are padded Fourier volumes per class, filled in a fixed number of
// lanes so that the sums do not depend on the thread count, and the noise sums per shell.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "emcryo/core/progress.hpp"
#include "emcryo/em/expectation.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::em {

struct Pose3D {
  double rot = 0, tilt = 0, psi = 0;  // RELION Euler angles, degrees
  double shift_x = 0, shift_y = 0;    // pixels: displacement of the particle from the centre
  double max_probability = 1;
  int significant = 1;                // hypotheses that entered the reconstruction
  int class_index = 0;                // most probable class (0-based)
  std::vector<double> class_posterior;  // per class (empty for one class); with known poses, read: the
                                        // weight of the particle in each class's back-projection
  std::vector<double> class_log_evidence;  // per class (empty for one class): Posterior::class_log_evidence,
                                           // what a class temperature is chosen from (not checkpointed)
  std::vector<Hypothesis> top;          // the keep_top most probable hypotheses, best first (not checkpointed)
};

/// The hypotheses of one iteration.
struct PoseSearch {
  bool local = false;                  // around each particle's pose; else the global grid
  bool fixed = false;                  // each particle's pose only (no alignment)
  double step = 15;                    // degrees: grid spacing; a local search spans about +/- 2 steps
  std::vector<geometry::Euler> grid;   // global orientations
  ShiftGrid shifts;                    // pixels: fine grid; the coarse pass uses every other point
  bool relative_shifts = false;        // shifts around each particle's current shift
  bool coarse_to_fine = true;
  /// Local refinement: a prior (and extents) around each particle's input pose; see SearchSpace.
  const std::vector<Pose3D>* prior_centres = nullptr;
  PosePrior prior;
};

struct ExpectationSettings {
  bool use_ctf = true;
  bool cc_scoring = false;     // normalised cross-correlation: the reference is not on the data's grey scale
  bool marginalize = false;    // poses: the hypotheses holding 99.9% of the mass (at most 300) enter the
                               // reconstruction, weighted by their posterior; else the best one
  bool hard_classes = false;   // class: the most probable only
  std::vector<double> class_priors;  // pi_k; empty = uniform
  double class_temperature = 1; // > 1 flattens the class posterior (class similarity, annealed to 1)
  int batch = 256;             // particles per batch (bounds memory)
  double insert_radius = 0;    // pixels: back-projection limit
  // A (class, orientation) whose hypotheses hold less than this fraction of a particle's posterior is
  // not back-projected: on the held-out 2XHE refine a particle kept ~59 orientations, 20 of them below
  // 0.1% together, and skipping those cut the insertions' time by a quarter for the same poses and
  // FSC to the truth (9.41 / 7.68 Å against 9.40 / 7.67; a floor of 1% cost 0.08 Å). Refine raises it
  // (see refine.cpp). Not applied with known_poses (the class weights are then the caller's).
  double insert_weight_floor = 1e-3;
  bool known_poses = false;    // back-project at the given poses only (reconstruction): no scoring, no noise sums;
                               // into each class k by Pose3D::class_posterior[k] when given, else into class 0
  int keep_top = 0;            // hypotheses per particle kept in Pose3D::top
  bool back_project = true;    // false: scoring only (poses, class posteriors and evidences, noise sums): `sums` is
                               // neither filled nor read (any box will do)
  int fold_rank = 0;           // MPI: the rank that folds the chunks' sums (mpi::reduce_in_chunk_order);
                               // refine's two halves fold on two ranks at once
  // The noise residual (a template sampled at each particle's best pose) from at most this many
  // particles per optics group and call, every k-th of the group's in order. A shell's estimate
  // averages particles x its pixels: 5,000 particles measure even shell 2 (~12 pixels) to ~0.4%.
  // Each costs a sample of the padded volume (0.5 GB at box 256) and, on a GPU, its prepared
  // rows back on the host (16 bytes a frequency: ~4 GB a half E-step at box 256 near Nyquist with
  // the 20,000 taken before, where the GPU refine's preparation grew from 1.4 to 6.5 s an iteration).
  int noise_particles_per_group = 5000;
  bool share_children = true;  // EStepSettings::share_children (off: for tests)
};

/// Residual power per optics group and shell, for the noise model.
struct NoiseSums {
  std::vector<std::vector<double>> sum, count;
  NoiseSums() = default;
  NoiseSums(std::size_t groups, std::size_t shells);
  void add(const NoiseSums& other);
  void add(std::size_t group, const std::vector<double>& residual, const std::vector<double>& counts);
  /// sigma^2 = sum / (2 count) (per real/imaginary part) where a shell has data.
  void update(std::vector<std::vector<double>>& sigma2) const;
};

/// Back-projection sums of K classes. expectation_3d splits the particles into chunks (mpi::Chunks,
/// spread over the ranks); within a chunk, particle p (of the call) goes to lane p % lanes, lanes fill in
/// parallel and are summed in order; chunks are added into the totals in chunk order. So the sums
/// depend neither on the thread count nor on the rank count. The lane count depends on the box
/// only (memory).
class ReconstructionSums {
 public:
  ReconstructionSums(int classes, int n);
  // Not copied: a copy would share the lanes (and copying volumes is never what a job wants).
  ReconstructionSums(const ReconstructionSums&) = delete;
  ReconstructionSums& operator=(const ReconstructionSums&) = delete;
  ReconstructionSums(ReconstructionSums&&) = default;
  ReconstructionSums& operator=(ReconstructionSums&&) = default;
  /// The two half sets' sums of a gold-standard job. They share one set of lanes: the halves' E-steps
  /// run one after the other and each leaves its lanes cleared, so the second set of lanes (8
  /// padded volumes a class) was memory touched for nothing.
  static std::vector<ReconstructionSums> for_halves(int classes, int n);
  int classes() const { return static_cast<int>(totals_.size()); }
  /// The most lanes a chunk may use (about 1 GB of them at most); lane 0 always exists, the others
  /// are made by provide_lanes when a chunk first needs them (small sets never do).
  int lanes() const { return max_lanes_; }
  /// Makes lanes 0 .. count - 1 of every class (not thread-safe: before the inserts).
  void provide_lanes(int count);
  BackProjector& lane(int k, int l) { return (*lanes_)[static_cast<std::size_t>(k)][static_cast<std::size_t>(l)]; }
  /// Lane 0 of class k after adding the others into it, in order (a chunk's sums); clears the others.
  BackProjector& fold_lanes(int k);
  void clear_lanes();
  /// Adds the lanes of class k (summed in lane order, as fold_lanes) into its total and clears
  /// them, in one pass: a chunk folded where it was computed.
  void add_lanes_to_total(int k) { totals_[static_cast<std::size_t>(k)].add_and_clear((*lanes_)[static_cast<std::size_t>(k)]); }
  /// Everything added to class k: the chunks' sums, in chunk order.
  BackProjector& total(int k) { return totals_[static_cast<std::size_t>(k)]; }
  /// Empties every class's total, for sums kept from one E-step to the next.
  void clear_totals() {
    for (auto& total : totals_) total.clear();
  }

 private:
  using Lanes = std::vector<std::vector<BackProjector>>;  // [class][lane], cleared between E-steps
  int n_, max_lanes_;
  std::shared_ptr<Lanes> lanes_;
  std::vector<BackProjector> totals_;
};

struct ExpectationStats {
  int changed = 0;            // particles whose orientation moved by more than step/2
  double angle_change = 0;    // sum over particles, degrees
  double flops = 0, gemm_seconds = 0;
  std::int64_t coarse_hypotheses = 0, fine_hypotheses = 0;
  std::int64_t inserted_hypotheses = 0, inserted_orientations = 0;  // back-projected: kept poses, and the slices they make
  StageTimes stages;          // the E-step's wall time per stage (back-projection in "M-step sums")
};

/// One half set's (or the whole set's) E-step and back-projection, spread over the ranks of an
/// MPI job (mpi::Chunks); on return every rank holds every particle's pose and the same sums. image_index[p] is particle p's
/// index in `set`, poses[p] its pose (read for local searches, relative shifts and fixed poses,
/// then replaced by the best hypothesis). Slices go into `sums` with every operator of
/// `symmetry`, the best hypothesis's residual into `noise` (not in CC iterations).
void expectation_3d(const io::ParticleSet& set, const std::vector<std::size_t>& image_index, std::vector<Pose3D>& poses,
                    const std::vector<const Projector*>& references, const FrequencyList& list,
                    const std::vector<std::vector<double>>& sigma2, const std::vector<float>& particle_mask, const PoseSearch& search,
                    const std::vector<geometry::Mat3>& symmetry, const ExpectationSettings& settings, ScoringBackend& backend,
                    ReconstructionSums& sums, NoiseSums& noise, ExpectationStats& stats, Progress* progress);

}  // namespace emcryo::em
