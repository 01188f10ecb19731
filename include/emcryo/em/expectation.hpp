// The E-step of every job (DESIGN §3-4): particles of a batch are prepared once (masked, FFT'd,
// cropped to the working frequencies, CTF and noise weighted), scored against templates through
// the scoring backend, and reduced to posteriors. With coarse-to-fine search, every coarse
// hypothesis is scored at a lower frequency limit first, and only the children of the hypotheses
// holding the posterior mass are scored at the full limit. What the kept hypotheses mean to the
// M-step (2D sums per template, 3D back-projection, noise sums) is the caller's: a consumer gets
// each particle with its kept hypotheses.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "emcryo/core/mpi.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/em/hypotheses.hpp"
#include "emcryo/em/posterior.hpp"
#include "emcryo/em/projector2d.hpp"
#include "emcryo/em/scoring_backend.hpp"
#include "emcryo/em/stage_times.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::em {

class HeldGrid;  // em/projector.hpp

/// The padded Fourier grids that templates are interpolated from (bilinearly in 2D as
/// Projector2D::sample, trilinearly in 3D as Projector::sample): what a device backend uploads
/// to sample templates itself. dimensions 0: no grids (the backend cannot sample).
struct ReferenceGrids {
  int dimensions = 0;  // 2: in-plane rotations of 2D classes; 3: central slices of 3D maps
  int padding = 2, m = 0, hm = 0;       // padded box and its half (m / 2 + 1)
  std::vector<const Complex*> classes;  // per class: m^(dimensions - 1) x hm values (nullptr where held)
  std::vector<std::shared_ptr<const HeldGrid>> held;  // per class (or none): the values held outside host memory, or nullptr
};

/// Templates of K references at any orientation: in-plane rotated 2D classes (only psi is read)
/// or central slices of 3D maps.
class TemplateSource {
 public:
  virtual ~TemplateSource() = default;
  virtual int classes() const = 0;
  virtual void sample(int k, const geometry::Euler& orientation, const FrequencyList& list, Complex* out) const = 0;
  virtual ReferenceGrids grids() const { return {}; }
};

/// Where a particle starts: read by local searches, relative shifts and fixed poses.
struct StartPose {
  geometry::Euler orientation;
  Shift shift{0, 0};
};

/// The hypotheses of one E-step.
struct SearchSpace {
  enum class Orientations { grid, local, fixed };
  Orientations orientations = Orientations::grid;
  std::vector<geometry::Euler> grid;  // global coarse orientations, the same for every class
  std::vector<geometry::Euler> fine_grid;  // optional: the fine orientations, searched in one pass where
                                           // the coarse limit already covers the working one
  double local_spacing = 0;           // local: 5^3 rotations this many degrees apart around the start pose
  ShiftGrid shifts;                   // coarse and fine shifts
  bool relative_shifts = false;       // around each particle's start shift
  /// Coarse-to-fine: coarse orientations x coarse shifts at coarse_radius, then the children of
  /// the kept ones (in-plane: psi -/0/+ half the coarse step; 3D: the 8 sub-cells of `cell`
  /// degrees) x the fine shifts of their cells, at the full radius. Off: the coarse orientations
  /// and every fine shift at the full radius, once.
  bool coarse_to_fine = true;
  double coarse_radius = 0;           // pixels
  bool in_plane = false;              // 2D: children are in-plane angles
  double cell = 0;                    // degrees: spacing of the coarse orientations
  /// Local refinement: every hypothesis's log-score gains prior.log_prior of its distance from the
  /// particle's input pose, prior_centres[p] (which stays put while the search centre, the start
  /// pose, follows the particle). Local and fixed searches only.
  const std::vector<StartPose>* prior_centres = nullptr;
  PosePrior prior;
};

struct EStepSettings {
  bool use_ctf = true;
  bool cross_correlation = false;  // scores are normalised cross-correlations (reference not on the data's scale)
  bool full_grids = false;         // keep each particle's unmasked transform and CTF on the half grid
  bool full_grids_on_device = false;  // ... read only by the backend's own back-projection (sums_volumes):
                                      // a backend that prepares batches keeps them on its device, and
                                      // PreparedParticle::unmasked / ctf_grid then only name the particle
  bool score = true;               // false: poses are known (fixed orientation, one shift): nothing is
                                   // scored and each particle's one hypothesis has weight 1
  int batch = 256;
  /// Positions in `images` whose prepared rows (PreparedParticle x, ctf, ctf2) the consumer reads;
  /// nullptr: all. Where the E-step itself reads none on the host (the backend prepares batches and
  /// scores whole passes, and no coarse pass is shared) only these are copied back from the device.
  const std::vector<std::uint8_t>* host_rows = nullptr;
  /// A shared 3D grid's fine-pass children sampled once per E-step and reused by every particle that
  /// keeps the same coarse template, where the particles are enough to reuse them (the same scores;
  /// off: each particle samples its own, for tests).
  bool share_children = true;
  PosteriorSettings coarse;        // mass and cap of the coarse pass (poses always marginalised there)
  PosteriorSettings fine;          // the job's choices per hidden variable
};

/// One particle as the consumer sees it. Arrays are at the listed frequencies.
struct PreparedParticle {
  std::size_t image = 0;  // index in the particle set
  int group = 0;          // optics group index
  const Complex* x = nullptr;           // masked transform
  const float* ctf = nullptr;
  const float* inv_sigma2 = nullptr;
  const float* ctf2 = nullptr;          // C^2 / sigma^2
  double half_norm = 0;                 // sum |X|^2 / (2 sigma^2)
  const Complex* unmasked = nullptr;    // full half grid (full_grids only)
  const float* ctf_grid = nullptr;      // full half grid (full_grids only)
};

struct Hypothesis {
  float weight = 1;
  int k = 0;
  geometry::Euler orientation;
  Shift shift{0, 0};  // absolute (the start shift included)
  int shift_id = 0;   // in the fine shift grid (relative to the start shift when those are relative)
};

struct ParticleOutcome {
  Posterior posterior;            // of the last pass
  std::vector<Hypothesis> kept;   // best first, weights sum to 1
  std::int64_t coarse_scored = 0, fine_scored = 0;
};

struct EStepStats {
  double flops = 0, gemm_seconds = 0, seconds = 0;
  std::int64_t coarse_hypotheses = 0, fine_hypotheses = 0;
  StageTimes stages;  // wall time per stage (the consumer's sums included)
};

/// A chunk's hypotheses and E-step figures to every rank (mpi::reduce_in_chunk_order).
void put_hypotheses(mpi::Message& message, const std::vector<Hypothesis>& hypotheses);
std::vector<Hypothesis> get_hypotheses(mpi::Message& message);
void put_stats(mpi::Message& message, const EStepStats& stats);
void add_stats(mpi::Message& message, EStepStats& stats);

/// One scored batch, handed to the caller's M-step sums. Calls come in particle order and one at
/// a time, so sums that follow the batch order do not depend on the thread count.
struct ScoredBatch {
  std::size_t first = 0;                       // index (into `images`) of particles[0]
  std::vector<PreparedParticle> particles;
  std::vector<ParticleOutcome> outcomes;
  const Complex* fine_ramps = nullptr;         // [fine shift id][F]: phase ramps of the fine shifts
  std::size_t frequencies = 0;                 // F
};
using Consumer = std::function<void(const ScoredBatch&)>;

namespace detail {
class EStep;
}

/// The E-step over `images` (indices into `set`; start[p] is read as described above), planned
/// once (sizes, coarse templates, buffers) and run over any ranges of `images` — the chunks of an
/// MPI job (mpi::Chunks) — in batches from the range's start. ScoredBatch::first counts from the
/// start of `images`. The references must outlive the object.
class ExpectationRun {
 public:
  ExpectationRun(const io::ParticleSet& set, const std::vector<std::size_t>& images, const std::vector<StartPose>& start,
                 const SearchSpace& space, const TemplateSource& templates, const FrequencyList& list,
                 const std::vector<std::vector<double>>& sigma2, const std::vector<float>& particle_mask,
                 const EStepSettings& settings, ScoringBackend& backend);
  ~ExpectationRun();
  void run(std::size_t begin, std::size_t end, const Consumer& consumer, EStepStats& stats, Progress* progress);

 private:
  ScoringBackend& backend_;
  std::unique_ptr<detail::EStep> step_;
  EStepStats plan_stats_;  // template sampling at planning: counted with the first run
};

/// The E-step over all of `images` at once.
void run_expectation(const io::ParticleSet& set, const std::vector<std::size_t>& images, const std::vector<StartPose>& start,
                     const SearchSpace& space, const TemplateSource& templates, const FrequencyList& list,
                     const std::vector<std::vector<double>>& sigma2, const std::vector<float>& particle_mask,
                     const EStepSettings& settings, ScoringBackend& backend, const Consumer& consumer, EStepStats& stats,
                     Progress* progress);

/// Initial noise model: half the mean power per shell of (masked) particle transforms.
std::vector<std::vector<double>> estimate_initial_sigma2(const io::ParticleSet& set, const std::vector<std::size_t>& active,
                                                         const std::vector<float>& particle_mask);

/// How much larger the noise power per pixel inside a soft mask is than the power per Fourier
/// coefficient measured in masked images (the noise model's sigma^2): 1 / mean(m^2) over the box
/// (1 for an empty mask). Masking keeps mean(m^2) of the noise power but spreads it over
/// coefficients that the mask correlates, so a likelihood that treats the coefficients of masked
/// images as independent with the measured sigma^2 counts each pixel inside the mask about
/// 1 / mean(m^2) times: posteriors too sharp. The likelihood of the masked pixels needs this much
/// larger sigma^2.
double masked_noise_inflation(const std::vector<float>& mask);

/// The coarse pass's frequency limit for orientations `cell` degrees apart and shifts
/// `coarse_shift_step` px apart in an n-px box: where neighbouring orientations move a frequency by
/// about two samples and neighbouring shifts turn its phase by about one radian, never above
/// `radius` nor below 6 px.
double coarse_radius_for(double cell_degrees, double coarse_shift_step, int n, double radius);

}  // namespace emcryo::em
