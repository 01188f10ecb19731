// The scoring seam of the engine (DESIGN §4): prepared particle rows x template rows -> log-scores.
// The E-step driver (em/expectation) talks to it only; the CPU implementation runs two SGEMMs
// through OpenBLAS; the CUDA one (src/gpu, emcryo/gpu/backend.hpp) runs them through cuBLAS and
// keeps resident templates on the device from plan() to plan() (see docs/design.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "emcryo/geometry/rotation.hpp"
#include "emcryo/image/ctf_terms.hpp"

namespace emcryo::em {

class TemplateSource;  // em/expectation.hpp
struct FrequencyList;  // em/projector2d.hpp
class BackProjector;   // em/projector.hpp
class VolumeTransforms;  // em/volume_transforms.hpp

/// Templates a device backend samples itself from the references' padded Fourier grids
/// (TemplateSource::grids()), so that they never cross the bus: template j is class poses[j].first
/// at orientation poses[j].second, sampled at the first `frequencies` entries of `list`, exactly
/// as TemplateSource::sample would.
struct SampledTemplates {
  const TemplateSource* source = nullptr;
  const std::pair<int, geometry::Euler>* poses = nullptr;
  const FrequencyList* list = nullptr;
};

/// A particle's rows as a backend that scores_many() builds them itself (set instead of
/// ScoreRequest::rows): row t is fill_score_rows's for X and C / sigma^2 at the ramp of fine shift
/// shift_ids[t] (shift_ramps's, over `list`), times the ramp of `base` where it is not zero, as the
/// E-step's own rows are. 4 floats per frequency of the particle cross the bus instead of 2 per
/// frequency of every row.
struct ParticleRows {
  const float* x = nullptr;           // (Re X, Im X) per frequency
  const float* ctf = nullptr;         // C per frequency
  const float* inv_sigma2 = nullptr;  // 1 / sigma^2 per frequency
  const std::pair<float, float>* shift_grid = nullptr;  // the fine shifts (pixels)
  const int* shift_ids = nullptr;     // per row: its shift in shift_grid
  std::pair<float, float> base{0, 0};
  const FrequencyList* list = nullptr;
};

/// One scoring call. Row r belongs to particle r % particles (rows are shift-major: all particles
/// at shift 0, then at shift 1, ...). Rows, templates, ctf2 and power may be prefixes of longer
/// rows (strides in floats), which is how a coarse pass scores at a lower frequency limit.
struct ScoreRequest {
  const float* rows = nullptr;   // (Re Y, -Im Y) per frequency
  int row_count = 0, row_stride = 0;
  int particles = 1;
  const float* ctf2 = nullptr;   // per particle: C^2 / sigma^2 per frequency
  int ctf2_stride = 0;
  const float* templates = nullptr;  // (Re A, Im A) per frequency
  const float* power = nullptr;      // |A|^2 per frequency
  int template_count = 0, template_stride = 0, power_stride = 0;
  int frequencies = 0;               // F used: the inner dimension is 2F
  bool cross_correlation = false;    // score = cross / sqrt(norm) instead of cross - norm / 2
  /// The caller promises that templates and power at these addresses stay unchanged until the
  /// next plan(): a device backend may keep them on the device (uploaded once per E-step).
  bool templates_resident = false;
  /// Set (only where samples_templates() said yes) instead of templates and power.
  SampledTemplates sampled;
  /// Set (only for score_many) instead of rows: one particle's rows, built by the backend.
  ParticleRows particle_rows;
};

/// One kept hypothesis entering the 2D M-step sums: template j (class x fine angle), particle b of
/// the batch, fine shift t, posterior weight w.
struct SumTerm {
  int j = 0, b = 0, t = 0;
  float w = 0;
};

/// A batch's sum terms grouped by template, as a device's sums kernel reads them: `rows` the
/// templates touched, in increasing order; `offsets` where each one's entries start (and the end);
/// per entry its particle, shift and weight, a template's entries in the terms' order.
struct GroupedSumTerms {
  struct Entry {
    int b, t;
    float w;
  };
  std::vector<int> rows, offsets;
  std::vector<Entry> entries;
};

/// Groups `count` terms of J templates, B particles and T shifts into `out`: a stable counting
/// sort over the CPU's threads (chunks of the terms counted and placed in parallel; the groups do
/// not depend on the thread count). Fails on a term outside J, B or T.
void group_sum_terms(const SumTerm* terms, std::size_t count, int J, int B, int T, GroupedSumTerms& out);

/// One batch of the 2D M-step sums (class2d), for a device backend:
///   data[j]   += sum over terms  w x X_b conj(ramp_t) C_b / sigma_b^2   (complex, per frequency)
///   weight[j] += sum over terms  w x C_b^2 / sigma_b^2.
/// Arrays are [particle][F] (x and ramps complex, interleaved re, im); terms are in particle order.
struct TemplateSumsBatch {
  int particles = 0, shifts = 0, frequencies = 0;
  const float* x = nullptr;        // X_b
  const float* ctf_isg = nullptr;  // C_b / sigma_b^2
  const float* ctf2 = nullptr;     // C_b^2 / sigma_b^2
  const float* ramps = nullptr;    // [t][F]: the fine shifts' phase ramps
  const SumTerm* terms = nullptr;
  std::size_t term_count = 0;
};

/// One batch of particle images to prepare as the E-step's CPU path does (em/expectation.cpp,
/// prepare_batch), for a backend that prepares_batches(): per particle, (when unmasked) the
/// transform of the raw image, the transform of the masked image (fft_forward_2d's unnormalised,
/// centred half grid), the CTF half grid (ctf_half_grid's, or ones), then at the list's frequencies
///   x = masked transform,  ctf = C,  ctf2 = C^2 / sigma^2,  half_norm = sum |x|^2 / sigma^2 / 2.
/// Outputs are [particle][F] (x complex, interleaved re, im); full grids are per-particle half grids.
struct PrepareBatch {
  int count = 0, box = 0;
  const float* pixels = nullptr;  // count x box x box raw images (fastest from pinned_host())
  const float* mask = nullptr;    // box x box, multiplied in (background 0)
  const image::CtfTerms* ctf = nullptr;  // per particle; nullptr: CTF = 1
  double pixel_size = 1;
  const int* group = nullptr;           // per particle: the row of inv_sigma2
  const float* inv_sigma2 = nullptr;    // [groups][F]
  int groups = 0;
  const int* index = nullptr;  // per frequency: the half-grid element (FrequencyList::index)
  int frequencies = 0;         // F
  float* x = nullptr;
  float* ctf_out = nullptr;
  float* ctf2 = nullptr;
  double* half_norm = nullptr;
  /// Per particle: whether its x, ctf_out and ctf2 rows come back to the host (nullptr: all). A
  /// backend keeps the whole batch on its device for score_many (its host pointers name the rows);
  /// rows no host code reads need not cross the bus (100,000 box-256 particles: ~25 GB an iteration).
  /// half_norm is always written.
  const std::uint8_t* host_rows = nullptr;
  float* const* unmasked = nullptr;  // per particle: the raw image's half grid (complex), or nullptr
  /// The full grids (unmasked, ctf_grid) stay on the device for the backend's back-projection
  /// (add_volume_sums of this batch's particles, in this order) and are not written: their host
  /// pointers only name the particles. Copied back, they were most of a refine iteration's time
  /// (100,000 box-256 particles: 40 GB each way).
  bool full_grids_on_device = false;
  float* const* ctf_grid = nullptr;  // per particle: the CTF half grid, or nullptr
};

/// The CPU's preparation (FFTW, OpenMP over particles; em/expectation.cpp): what a backend's
/// prepare_batch() computes on its device, and what the E-step runs where no backend does.
void prepare_particles(const PrepareBatch& batch);
/// One insertion of the 3D back-projection (BackProjector::insert): particle b of the batch into
/// class k's volume at the rotation whose first two rows, times the padding, are `a` (as insert
/// reads them; the symmetry operator included), its data the sum over `shifts` entries from
/// `first_shift` of the batch's VolumeShift list, its weight C^2/sigma^2 x `total`.
struct VolumeInsertion {
  double a[6] = {};  // a(0,0), a(0,1), a(0,2), a(1,0), a(1,1), a(1,2), each x padding
  int k = 0, b = 0;
  int first_shift = 0, shifts = 0;
  float total = 0;   // the shifts' weights summed
};

/// The particle shifted by (dx, dy) pixels (image::add_shifted_half_grid_2d's), weighted by w.
struct VolumeShift {
  float dx = 0, dy = 0, w = 0;
};

/// One batch of the 3D back-projection, for a device backend: per insertion, per frequency within
/// the radius begun with, data = (sum over its shifts of w x shifted X_b) x C_b / sigma^2 and
/// weight = C_b^2 / sigma^2 x total, inserted trilinearly. Per particle its unmasked full half
/// grid (n/2+1 by n complex, interleaved) and CTF grid; per optics group its 1/sigma^2 grid.
struct VolumeSumsBatch {
  int particles = 0;
  std::vector<const float*> unmasked, ctf;  // [particle]
  std::vector<int> group;                   // [particle]
  std::vector<const float*> inv_sigma2;     // [group]
  const VolumeInsertion* insertions = nullptr;
  std::size_t insertion_count = 0;
  const VolumeShift* shifts = nullptr;
  std::size_t shift_count = 0;
};

/// A shared coarse pass whose scores stay on the device (backends that reduce_scores()): the batch's
/// scores are kept there chunk by chunk (score_kept), then reduced there (reduce_kept) to what a
/// PosteriorReducer needs from them. Score (row r = t x particles + b, template j) is hypothesis
/// id t x templates + j of particle b, class j / orientations (a class's templates are consecutive).
struct KeptScores {
  int particles = 0, shifts = 0, templates = 0, orientations = 1;
};

/// How the kept scores are reduced, per particle: per class the maximum, its (first) hypothesis and
/// sum exp(s - max) over the class's hypotheses (PosteriorReducer::add_run's streaming sums); then
/// the hypotheses that can hold posterior mass, ranked by log P(k) + s - max_k - log sum_k with the
/// class posterior P(k) tempered and with priors as PosteriorReducer::finish() computes it: those
/// within `window` of their class's maximum, other than the class's best, at most `cap` of them
/// (plus those tied with the cap-th, up to 2 cap).
struct ScoreReduction {
  KeptScores scores;
  double class_temperature = 1;
  const double* log_class_prior = nullptr;  // per class, or nullptr: uniform
  bool hard_classes = false;                // only the most probable class's hypotheses are ranked
  float window = 14;
  int cap = 0;
};

/// What reduce_kept() gives back: per particle and class ([b][k]) the class's maximum, sum and best
/// hypothesis, and per particle its ranked candidates (class, id, log-score; unordered).
struct ReducedScores {
  std::vector<float> class_max;
  std::vector<double> class_sum;
  std::vector<std::int64_t> class_best;
  struct Candidate {
    int k = 0;
    float score = 0;
    std::int64_t id = 0;
  };
  std::vector<std::vector<Candidate>> candidates;  // [particle]
};

struct BackendStats {
  double flops = 0, seconds = 0;
};

class ScoringBackend {
 public:
  virtual ~ScoringBackend() = default;
  virtual std::string name() const = 0;
  /// Sizes the workspaces once per E-step: `slots` concurrent callers (threads), each scoring at
  /// most `particles` x `templates` at a time.
  virtual void plan(int slots, int particles, int templates) = 0;
  /// out[r * template_count + j]: -D^2 up to a per-particle constant (or the cross-correlation).
  /// Callers on different threads use different slots.
  virtual void score(const ScoreRequest& request, float* out, int slot) = 0;
  /// Whether score_many() scores many one-particle requests with templates of this source at once
  /// (a device backend: one upload, one sampling and one kernel for a batch's small products
  /// instead of a round trip each).
  virtual bool scores_many(const TemplateSource&) const { return false; }
  /// Each of `requests` (one particle each, its rows given as particle_rows) into outs[i], as
  /// score() would score it with the rows built; called from one thread. This default builds the
  /// rows on the host and calls score() on slot 0, one request after another.
  virtual void score_many(const std::vector<ScoreRequest>& requests, const std::vector<float*>& outs);
  /// Whether score() can take SampledTemplates of this source instead of sampled templates.
  virtual bool samples_templates(const TemplateSource&) const { return false; }
  /// Templates sampled where the backend samples them (only where samples_templates() said yes),
  /// brought to the host: `count` rows of the first `frequencies` entries of sampled.list, (Re, Im)
  /// per frequency, into out, as TemplateSource::sample gives them. For the few templates host code
  /// reads (refine's noise residuals), so that the references need not come to the host for them.
  virtual void sample_to_host(const SampledTemplates& sampled, int count, int frequencies, float* out);
  /// Whether the backend keeps the 2D M-step sums itself (begin/add/end below, from one thread).
  virtual bool sums_templates() const { return false; }
  /// Zeroes device sums of `templates` x `frequencies`.
  virtual void begin_template_sums(int templates, int frequencies);
  virtual void add_template_sums(const TemplateSumsBatch& batch);
  /// Adds the sums into data (templates x 2F floats: complex) and weight (templates x F).
  virtual void end_template_sums(float* data, float* weight);
  /// Instead of end_template_sums: adds the sums into totals kept on the device (zero before the
  /// first fold), float by float as a host fold of the chunks in this order would, so that one
  /// process brings the E-step's sums back once instead of once per chunk.
  virtual void fold_template_sums();
  /// Writes the folded totals into data and weight (as end_template_sums lays them out; nothing
  /// where no chunk was folded); the next fold starts from zero.
  virtual void take_template_totals(float* data, float* weight);
  /// Whether prepare_batch() runs (particle images masked, transformed and weighted on the device).
  virtual bool prepares_batches() const { return false; }
  virtual void prepare_batch(const PrepareBatch& batch);
  /// Host memory of `floats` that uploads fastest (page-locked), owned by the backend and reused by
  /// the next call; nullptr where the backend has none (the caller uses its own).
  virtual float* pinned_host(std::size_t /*floats*/) { return nullptr; }
  /// Whether the backend keeps the 3D back-projection itself (begin/add/end below, from one thread).
  virtual bool sums_volumes() const { return false; }
  /// Zeroes device volumes for `classes` padded half volumes of box n (BackProjector(n, padding)),
  /// inserted up to max_radius (pixels of the n grid), as BackProjector::insert's.
  virtual void begin_volume_sums(int classes, int n, int padding, double max_radius);
  virtual void add_volume_sums(const VolumeSumsBatch& batch);
  /// Adds the device volumes into into[k] (one per class), within the reach inserted.
  virtual void end_volume_sums(const std::vector<BackProjector*>& into);
  /// Instead of end_volume_sums: adds the chunk's volumes into totals kept on the device (zero
  /// before the first fold), float by float as the host adds a chunk into its totals, so that one
  /// process brings an E-step's volumes back once instead of once per chunk (at box 256, 0.8 GB a
  /// class and chunk).
  virtual void fold_volume_sums();
  /// Adds the folded totals into into[k] (as end_volume_sums does; nothing where no chunk was
  /// folded); the next fold starts from zero.
  virtual void take_volume_totals(const std::vector<BackProjector*>& into);
  /// Whether a batch's shared coarse scores of this shape can stay on the device and be reduced
  /// there (score_kept / reduce_kept, from one thread; slot 0).
  virtual bool reduces_scores(const KeptScores& /*shape*/) const { return false; }
  /// Scores request q (all the batch's rows) into columns [first_template, + template_count) of
  /// the batch's kept scores, begun anew when first_template is 0.
  virtual void score_kept(const ScoreRequest& q, const KeptScores& shape, int first_template);
  /// The kept scores reduced (every column must have been scored).
  virtual void reduce_kept(const ScoreReduction& reduction, ReducedScores& out);
  /// The M-step's reconstructions and padded transforms (the CPU's unless the backend has its own):
  /// a device backend keeps its sums and references where they are used.
  virtual VolumeTransforms& volume_transforms();
  /// Summed over slots.
  virtual BackendStats stats() const = 0;
};

/// OpenBLAS SGEMMs; inside an OpenMP parallel region they run single-threaded, outside on all cores.
std::unique_ptr<ScoringBackend> make_cpu_backend();

}  // namespace emcryo::em
