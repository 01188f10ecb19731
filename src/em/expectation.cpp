#include "emcryo/em/expectation.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <future>
#include <memory>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"

namespace emcryo::em {

namespace {

using Clock = std::chrono::steady_clock;
using geometry::Euler;

std::size_t sz(int v) { return static_cast<std::size_t>(v); }

/// A batch of prepared particles; allocated once per E-step and reused batch after batch.
struct Batch {
  int count = 0;
  std::vector<Complex> x;         // [b][F]
  std::vector<float> ctf, ctf2;   // [b][F]
  std::vector<double> half_norm;  // [b]
  std::vector<float> coarse_rows; // [t][b][2Fc]
  std::vector<std::vector<Complex>> unmasked;
  std::vector<std::vector<float>> ctf_grid;
};

/// What the coarse pass scores: orientations (shared or per particle) x coarse shifts.
struct CoarseLayout {
  int orientations = 0;     // per class
  int classes = 1;
  int shifts = 0;           // coarse shifts
  std::vector<int> shift_ids;  // ids into the fine shift grid
};

/// The pose prior around a particle's input pose, when the search has one.
struct PriorTerm {
  const PosePrior* prior = nullptr;
  const StartPose* centre = nullptr;
  const std::vector<Shift>* fine_shifts = nullptr;
};

/// One particle's pass over its own templates x shifts (a local coarse pass or a fine pass): what
/// it scores, its request and its scores. A thread's scratch holds one where each particle is
/// scored on its own; a batch scored at once (ScoringBackend::score_many) holds one per particle.
struct ParticlePass {
  std::vector<std::pair<int, Euler>> templates;  // (class, orientation)
  std::vector<int> template_keys;                // per template its ChildTemplates slot (empty: none)
  std::vector<int> shifts;                       // ids into the fine shift grid
  std::vector<Euler> orientations;               // a local or fixed search's own coarse orientations
  std::vector<float> rows, sampled, power, scores;
  ScoreRequest request;
  Shift base{0, 0};
  PriorTerm term;
};

/// Per-thread scratch of the fine and local passes.
struct Scratch {
  std::vector<Complex> sample, ramps, base_ramp;
  std::vector<float> prior_template, prior_shift;
  std::vector<std::pair<int, Euler>> unique_templates;  // (class, orientation)
  std::vector<int> unique_keys;                         // their ChildTemplates slots (3D grids only)
  std::vector<int> unique_shifts;
  // collect_children's marks and keys, kept between particles.
  std::vector<std::uint8_t> template_seen, shift_seen, child_marks;
  std::vector<int> seen_templates;
  std::vector<int> class_runs;  // template indices where the class changes, and the end
  ParticlePass pass;            // where particles are scored one by one
  PosteriorReducer reducer;
  StageTimes times;  // this thread's share of the per-particle loop
};

/// The fine pass's children of a shared coarse grid (slot 8 j + i: sub-cell i of grid template j),
/// sampled once per E-step and reused by every particle that keeps the same coarse template (the
/// held-out refine sets at 15°: each child was sampled ~2.3 times per half E-step). Filled on first
/// use by whichever thread needs it; a thread that finds a slot being filled samples its own copy
/// (the same values), so nobody waits and the scores do not depend on the threads.
class ChildTemplates {
 public:
  /// `slots` slots of F frequencies; off (every get() false) where `on` is false.
  void reset(bool on, std::size_t slots, int frequencies) {
    F_ = frequencies;
    slots_ = on ? slots : 0;
    state_ = std::make_unique<std::atomic<std::uint8_t>[]>(slots_);  // value-initialised: all empty
    rows_.clear();
    rows_.resize(slots_);
    held_.store(0);
  }
  /// The slot's row (2F floats) and power (F) copied out, filled by fill(row, power) first where
  /// it is empty and the budget allows; false where the caller must sample it itself.
  template <class Fill>
  bool get(int key, float* row, float* power, const Fill& fill) {
    if (key < 0 || sz(key) >= slots_) return false;
    std::atomic<std::uint8_t>& state = state_[sz(key)];
    std::uint8_t seen = state.load(std::memory_order_acquire);
    if (seen == kEmpty && held_.load(std::memory_order_relaxed) < budget_slots() &&
        state.compare_exchange_strong(seen, kFilling, std::memory_order_acq_rel)) {
      held_.fetch_add(1, std::memory_order_relaxed);
      float* slot = (rows_[sz(key)] = std::make_unique_for_overwrite<float[]>(3 * sz(F_))).get();
      fill(slot, slot + 2 * sz(F_));
      state.store(kReady, std::memory_order_release);
      seen = kReady;
    }
    if (seen != kReady) return false;
    const float* slot = rows_[sz(key)].get();
    std::copy_n(slot, 2 * sz(F_), row);
    std::copy_n(slot + 2 * sz(F_), sz(F_), power);
    return true;
  }

 private:
  static constexpr std::uint8_t kEmpty = 0, kFilling = 1, kReady = 2;
  static constexpr std::size_t kBudgetBytes = std::size_t{1} << 30;
  std::size_t budget_slots() const { return kBudgetBytes / (3 * sizeof(float) * std::max<std::size_t>(1, sz(F_))); }
  int F_ = 0;
  std::size_t slots_ = 0;
  std::unique_ptr<std::atomic<std::uint8_t>[]> state_;
  std::vector<std::unique_ptr<float[]>> rows_;
  std::atomic<std::size_t> held_{0};
};

/// The images of a batch, read from disk into `pixels` (count x n x n) by up to 4 threads: on a
/// GPU, one thread's reads (and float16 conversions) of box-256 batches took longer than the search
/// of the batch before (measured on an H100 host: most of a class2d iteration's wall time).
void read_batch(const io::ParticleSet& set, const std::size_t* images, int count, float* pixels) {
  const std::size_t area = sz(set.box()) * sz(set.box());
  const auto read_range = [&](int begin, int end) {
    for (int b = begin; b < end; ++b) set.read_image(images[b], pixels + sz(b) * area);
  };
  const int readers = std::clamp(count / 32, 1, 4);
  std::vector<std::future<void>> others;
  for (int r = 1; r < readers; ++r) others.push_back(std::async(std::launch::async, read_range, count * r / readers, count * (r + 1) / readers));
  read_range(0, count / readers);
  for (auto& other : others) other.get();  // a failed read fails the batch
}

/// Coarse rows of particle b: (coarse shifts, each moved by the particle's start shift) at Fc.
void fill_coarse_rows(Batch& batch, int b, int F, int Fc, const CoarseLayout& layout, const std::vector<Complex>& fine_ramps,
                      const float* isg, const Shift& base, const FrequencyList& list, Scratch& s) {
  const Complex* x = batch.x.data() + sz(b) * sz(F);
  const float* c = batch.ctf.data() + sz(b) * sz(F);
  s.ramps.resize(sz(Fc));
  s.base_ramp.resize(sz(F));
  const bool moved = base.first != 0 || base.second != 0;
  if (moved) shift_ramps(list, {base}, 0, 0, s.base_ramp.data());
  for (int t = 0; t < layout.shifts; ++t) {
    const Complex* r = fine_ramps.data() + sz(layout.shift_ids[sz(t)]) * sz(F);
    for (int f = 0; f < Fc; ++f) s.ramps[sz(f)] = moved ? r[f] * s.base_ramp[sz(f)] : r[f];
    float* row = batch.coarse_rows.data() + (sz(t) * sz(batch.count) + sz(b)) * 2 * sz(Fc);
    fill_score_rows(x, c, isg, s.ramps.data(), 1, Fc, row);
  }
}

/// The orientations a particle's coarse pass scores (per class): the grid, or its own (into `own`).
const std::vector<Euler>& coarse_orientations(const SearchSpace& space, const StartPose& start, std::vector<Euler>& own) {
  if (space.orientations == SearchSpace::Orientations::grid) return space.grid;
  own.clear();
  if (space.orientations == SearchSpace::Orientations::local) own = local_orientations(start.orientation, space.local_spacing);
  else own.push_back(start.orientation);
  return own;
}

/// Log-priors of templates (rotation part) and shifts (shift part): they add up.
void prior_terms(const PriorTerm& term, const std::vector<std::pair<int, Euler>>& templates, const std::vector<int>& shift_ids,
                 const Shift& base, std::vector<float>& of_template, std::vector<float>& of_shift) {
  const geometry::Mat3 centre = geometry::euler_to_matrix(term.centre->orientation);
  of_template.resize(templates.size());
  for (std::size_t j = 0; j < templates.size(); ++j)
    of_template[j] = static_cast<float>(
        term.prior->log_prior(geometry::rotation_angle_between(centre, geometry::euler_to_matrix(templates[j].second)), 0));
  of_shift.resize(shift_ids.size());
  for (std::size_t t = 0; t < shift_ids.size(); ++t) {
    const Shift& g = (*term.fine_shifts)[sz(shift_ids[t])];
    const double dx = g.first + base.first - term.centre->shift.first, dy = g.second + base.second - term.centre->shift.second;
    of_shift[t] = static_cast<float>(term.prior->log_prior(0, std::sqrt(dx * dx + dy * dy)));
  }
}

/// Every in-plane template (class x fine psi, psi_r = 360 r / R) at the full list, sampled once per
/// E-step: the fine passes copy rows instead of sampling each particle's children anew.
struct InPlaneTemplates {
  int R = 0;
  std::vector<float> templates, power;  // [k R + r] x 2F, x F
  int row(int k, double psi) const { return k * R + psi_grid_index(psi, R); }
};

/// Drops the in-plane children that an earlier one already holds (neighbouring coarse angles share
/// their boundary child), keeping the first of each. Children lie on the uniform psi grid of half
/// cells (class2d's fine grid): one mark per grid point, not a search of those added (at 1,000 kept
/// coarse hypotheses, class2d's early iterations, the pairwise test was most of the E-step's CPU time).
void drop_repeated_children(std::vector<std::pair<int, Euler>>& children, int classes, double cell, Scratch& s) {
  const double half = cell / 2;
  const int steps = static_cast<int>(std::lround(360.0 / half));
  if (steps <= 0 || std::abs(steps * half - 360.0) > 1e-9) fail("E-step: in-plane cell {} does not divide 360 degrees (internal error)", cell);
  const auto mark_of = [&](const std::pair<int, Euler>& c) -> std::uint8_t& {
    return s.child_marks[sz(c.first) * sz(steps) + sz(psi_grid_index(c.second.psi, steps))];
  };
  s.child_marks.resize(sz(classes) * static_cast<std::size_t>(steps), 0);  // all 0 between particles
  std::size_t kept = 0;
  for (std::size_t i = 0; i < children.size(); ++i) {
    std::uint8_t& mark = mark_of(children[i]);
    if (mark) continue;
    mark = 1;
    children[kept++] = children[i];
  }
  children.resize(kept);
  for (const auto& c : children) mark_of(c) = 0;
}

/// The children of the kept coarse hypotheses: unique (class, orientation) in the order their
/// coarse parents come, and the unique fine shifts in increasing order.
void collect_children(const Posterior& coarse, const std::vector<Euler>& orientations, const CoarseLayout& layout,
                      const SearchSpace& space, Scratch& s) {
  s.unique_templates.clear();
  s.unique_keys.clear();
  s.unique_shifts.clear();
  const int J = layout.classes * layout.orientations;
  s.template_seen.resize(sz(J), 0);  // all 0 between particles
  s.shift_seen.assign(space.shifts.fine.size(), 0);
  s.seen_templates.clear();
  for (const auto& h : coarse.kept) {
    const int j = static_cast<int>(h.id % J), t = static_cast<int>(h.id / J);
    const int k = j / layout.orientations, o = j % layout.orientations;
    if (!s.template_seen[sz(j)]) {
      s.template_seen[sz(j)] = 1;
      s.seen_templates.push_back(j);
      const Euler& centre = orientations[sz(o)];
      if (space.in_plane) {
        for (int d = -1; d <= 1; ++d) {
          Euler e = centre;
          e.psi = std::fmod(centre.psi + d * space.cell / 2 + 360.0, 360.0);
          s.unique_templates.push_back({k, e});
        }
      } else {
        Euler sub[8];
        sub_orientations(centre, space.cell, sub);
        for (int i = 0; i < 8; ++i) s.unique_templates.push_back({k, sub[i]}), s.unique_keys.push_back(8 * j + i);
      }
    }
    for (int id : space.shifts.children[sz(t)]) s.shift_seen[sz(id)] = 1;
  }
  for (int j : s.seen_templates) s.template_seen[sz(j)] = 0;
  for (std::size_t id = 0; id < s.shift_seen.size(); ++id)
    if (s.shift_seen[id]) s.unique_shifts.push_back(static_cast<int>(id));
  if (space.in_plane) drop_repeated_children(s.unique_templates, layout.classes, space.cell, s);
}

}  // namespace

void prepare_particles(const PrepareBatch& q) {
  const int n = q.box, F = q.frequencies;
  const std::size_t area = sz(n) * sz(n), half = image::half_size(n, n);
#pragma omp parallel
  {
    std::vector<float> img(area);
    std::vector<Complex> spectrum(half);
    std::vector<float> ctf_grid(half, 1.0f);
#pragma omp for schedule(static)
    for (int b = 0; b < q.count; ++b) {
      std::copy_n(q.pixels + sz(b) * area, area, img.data());
      // The unmasked transform enters the reconstruction (as RELION: masking would change the
      // data that enter the map); the masked one is scored.
      if (q.unmasked) image::fft_forward_2d(img.data(), reinterpret_cast<Complex*>(q.unmasked[b]), n, n);
      if (q.mask)
        for (std::size_t i = 0; i < area; ++i) img[i] *= q.mask[i];  // image::apply_mask, background 0
      image::fft_forward_2d(img.data(), spectrum.data(), n, n);
      float* grid = q.ctf_grid ? q.ctf_grid[b] : ctf_grid.data();
      if (q.ctf) image::ctf_half_grid(q.ctf[b], n, q.pixel_size, grid);
      else std::fill(grid, grid + half, 1.0f);
      const float* isg = q.inv_sigma2 + sz(q.group[b]) * sz(F);
      Complex* x = reinterpret_cast<Complex*>(q.x) + sz(b) * sz(F);
      float* c = q.ctf_out + sz(b) * sz(F);
      float* c2 = q.ctf2 + sz(b) * sz(F);
      double norm = 0;
      for (int f = 0; f < F; ++f) {
        const auto k = static_cast<std::size_t>(q.index[f]);
        x[f] = spectrum[k];
        c[f] = grid[k];
        c2[f] = c[f] * c[f] * isg[f];
        norm += std::norm(x[f]) * isg[f] / 2;
      }
      q.half_norm[b] = norm;
    }
  }
}

double coarse_radius_for(double cell_degrees, double coarse_shift_step, int n, double radius) {
  double reach = 2.0 / (cell_degrees * std::numbers::pi / 180);
  if (coarse_shift_step > 0) reach = std::min(reach, n / (std::numbers::pi * coarse_shift_step));
  return std::min(radius, std::max(6.0, reach));
}

namespace detail {

/// One E-step: planned once (sizes, coarse templates, buffers), then run batch by batch.
class EStep {
 public:
  EStep(const io::ParticleSet& set, const std::vector<std::size_t>& images, const std::vector<StartPose>& start,
        const SearchSpace& space, const TemplateSource& source, const FrequencyList& list,
        const std::vector<std::vector<double>>& sigma2, const std::vector<float>& mask, const EStepSettings& settings,
        ScoringBackend& backend)
      : set_(set), images_(images), start_(start), space_(space), source_(source), list_(list), mask_(mask), settings_(settings),
        backend_(backend) {
    plan(sigma2);
  }

  /// Particles [begin, end) of images_, in batches from `begin`.
  void run(int begin, int end, const Consumer& consumer, EStepStats& stats, Progress* progress) {
    const int P = end;
    const std::size_t area = sz(set_.box()) * sz(set_.box());
    // Double-buffered reading: batch i + 1 is read from disk by another thread while batch i is
    // searched; only the wait for it is on the clock ("read").
    std::future<void> next;
    int buffer = 0;
    if (begin < P) {
      const StageClock clock(times_, StageTimes::read);
      read_batch(set_, images_.data() + begin, std::min(B_, P - begin), pixels_);
    }
    for (int first = begin; first < P; first += B_) {
      const int bc = std::min(B_, P - first);
      if (next.valid()) {
        const StageClock clock(times_, StageTimes::read);
        next.get();
      }
      float* pixels = pixels_ + sz(buffer) * sz(B_) * area;
      if (const int following = first + B_; following < P)
        next = std::async(std::launch::async, read_batch, std::cref(set_), images_.data() + following, std::min(B_, P - following),
                          pixels_ + sz(1 - buffer) * sz(B_) * area);
      buffer = 1 - buffer;
      {
        const StageClock clock(times_, StageTimes::prepare);
        prepare(first, bc, pixels);
      }
      scored_.first = sz(first);
      scored_.particles.resize(sz(bc));
      scored_.outcomes.assign(sz(bc), ParticleOutcome{});
      for (int b = 0; b < bc; ++b) scored_.particles[sz(b)] = view(b);
      if (shared_ && settings_.score) coarse_pass_shared(first, bc);
      if (many_) search_batch(first, bc);
      else in_parallel(bc, [&](int b, Scratch&) { search_particle(first, b, scored_.outcomes[sz(b)]); });
      std::int64_t coarse = 0, fine = 0;
      for (const auto& outcome : scored_.outcomes) coarse += outcome.coarse_scored, fine += outcome.fine_scored;
      {
        const StageClock clock(times_, StageTimes::consume);
        consumer(scored_);
      }
      stats.coarse_hypotheses += coarse;
      stats.fine_hypotheses += fine;
      if (progress) progress->advance(bc);
    }
    stats.stages += times_;
    times_ = StageTimes{};
  }

 private:
  /// Batch [first, first + count) of images_ prepared from its pixels: on the device where the
  /// backend prepares batches (CUDA, unless EMCRYO_GPU_PREP=0), else on the CPU.
  void prepare(int first, int count, const float* pixels) {
    const std::size_t* images = images_.data() + first;
    batch_.count = count;
    ctf_terms_.resize(sz(count));
    groups_.resize(sz(count));
    for (int b = 0; b < count; ++b) {
      if (settings_.use_ctf) ctf_terms_[sz(b)] = image::Ctf(set_.ctf(images[b])).terms();
      groups_[sz(b)] = set_.optics_index(images[b]);
    }
    PrepareBatch q;
    q.count = count, q.box = set_.box(), q.pixels = pixels, q.mask = mask_.empty() ? nullptr : mask_.data();
    q.ctf = settings_.use_ctf ? ctf_terms_.data() : nullptr;
    q.pixel_size = set_.pixel_size();
    q.group = groups_.data(), q.inv_sigma2 = inv_sigma2_rows_.data(), q.groups = static_cast<int>(inv_sigma2_.size());
    q.index = list_.index.data(), q.frequencies = F_;
    q.x = reinterpret_cast<float*>(batch_.x.data()), q.ctf_out = batch_.ctf.data(), q.ctf2 = batch_.ctf2.data();
    q.half_norm = batch_.half_norm.data();
    if (settings_.full_grids) {
      unmasked_rows_.resize(sz(count));
      ctf_grid_rows_.resize(sz(count));
      for (int b = 0; b < count; ++b) {
        unmasked_rows_[sz(b)] = reinterpret_cast<float*>(batch_.unmasked[sz(b)].data());
        ctf_grid_rows_[sz(b)] = batch_.ctf_grid[sz(b)].data();
      }
      q.unmasked = unmasked_rows_.data(), q.ctf_grid = ctf_grid_rows_.data();
      q.full_grids_on_device = settings_.full_grids_on_device && device_prepare_;
    }
    // The shared coarse pass and the per-particle CPU passes read every particle's rows on the host;
    // otherwise only the consumer's (the device serves score_many from its own copy).
    if (device_prepare_ && many_ && !shared_ && settings_.host_rows) q.host_rows = settings_.host_rows->data() + first;
    if (device_prepare_) backend_.prepare_batch(q);
    else prepare_particles(q);
  }

  /// The per-particle loop's wall time, split over its stages by the threads' summed times.
  void share_loop_time(double wall) {
    StageTimes threads;
    for (const auto& s : scratch_) threads += s.times;
    const double total = threads.total();
    if (total <= 0) return;
    for (int i = 0; i < StageTimes::count; ++i) times_.seconds[sz(i)] += wall * threads.seconds[sz(i)] / total;
  }

  void plan(const std::vector<std::vector<double>>& sigma2) {
    const int n = set_.box();
    F_ = static_cast<int>(list_.size());
    // Two passes only where the coarse limit is below the full one: at a low working resolution
    // the coarse sampling already resolves everything the data hold, and its hypotheses are final.
    const int coarse_F = static_cast<int>(frequencies_within(list_, std::max(1.0, space_.coarse_radius)));
    two_pass_ = space_.coarse_to_fine && coarse_F < F_;
    Fc_ = two_pass_ ? coarse_F : F_;
    if (F_ == 0 || Fc_ == 0 || space_.shifts.fine.empty()) fail("E-step: empty search (F = {}, shifts = {})", F_, space_.shifts.fine.size());
    if (!settings_.score &&
        (space_.orientations != SearchSpace::Orientations::fixed || space_.shifts.fine.size() != 1 || !space_.relative_shifts))
      fail("E-step: an E-step without scoring needs fixed poses (internal error)");
    K_ = source_.classes();
    if (settings_.host_rows && settings_.host_rows->size() != images_.size())
      fail("E-step: {} host-row flags for {} particles (internal error)", settings_.host_rows->size(), images_.size());
    if (space_.prior_centres && (space_.orientations == SearchSpace::Orientations::grid || space_.prior_centres->size() != images_.size()))
      fail("E-step: a pose prior needs a local or fixed search and one centre per particle (internal error)");
    // Noise weights and the phase ramps of the fine shifts, once per E-step.
    inv_sigma2_.assign(sigma2.size(), std::vector<float>(sz(F_)));
    for (std::size_t g = 0; g < sigma2.size(); ++g)
      for (int f = 0; f < F_; ++f) inv_sigma2_[g][sz(f)] = static_cast<float>(1.0 / sigma2[g][sz(list_.shell[sz(f)])]);
    fine_ramps_ = shift_ramps(list_, space_.shifts.fine);
    // The coarse pass's list: the first Fc frequencies (the list is ordered by radius).
    coarse_list_ = list_;
    for (auto* v : {&coarse_list_.kx, &coarse_list_.ky, &coarse_list_.shell, &coarse_list_.index}) v->resize(sz(Fc_));
    plan_layout();
    plan_templates();
    B_ = std::max(1, settings_.batch);
    const std::size_t half = image::half_size(n, n);
    batch_.x.resize(sz(B_) * sz(F_));
    batch_.ctf.resize(sz(B_) * sz(F_));
    batch_.ctf2.resize(sz(B_) * sz(F_));
    batch_.half_norm.resize(sz(B_));
    if (shared_) batch_.coarse_rows.resize(sz(layout_.shifts) * sz(B_) * 2 * sz(Fc_));
    device_prepare_ = backend_.prepares_batches();
    if (settings_.full_grids) {
      // Grids that stay on the device are never written here: one value per particle names it
      // (0.4 GB less host memory at box 256 and --batch 1024).
      const std::size_t held = settings_.full_grids_on_device && device_prepare_ ? 1 : half;
      batch_.unmasked.assign(sz(B_), std::vector<Complex>(held));
      batch_.ctf_grid.assign(sz(B_), std::vector<float>(held));
    }
    // Two batches: one searched, the next being read; in the backend's pinned memory where it
    // prepares batches itself (uploaded straight from there).
    pixels_ = device_prepare_ ? backend_.pinned_host(2 * sz(B_) * sz(n) * sz(n)) : nullptr;
    if (!pixels_) {
      own_pixels_.resize(2 * sz(B_) * sz(n) * sz(n));
      pixels_ = own_pixels_.data();
    }
    inv_sigma2_rows_.clear();
    for (const auto& row : inv_sigma2_) inv_sigma2_rows_.insert(inv_sigma2_rows_.end(), row.begin(), row.end());
    // Where the backend reduces a batch's coarse scores itself, they never come to the host.
    device_reduce_ = shared_ && settings_.score && backend_.reduces_scores(KeptScores{B_, layout_.shifts, J_, layout_.orientations});
    scores_.resize(shared_ && !device_reduce_ ? sz(B_) * sz(layout_.shifts) * sz(chunk_) : 0);
    coarse_reducers_.resize(sz(B_));
    scored_.fine_ramps = fine_ramps_.data();
    scored_.frequencies = sz(F_);
    const int threads = omp_get_max_threads();
    scratch_.resize(sz(threads));
    backend_.plan(threads, B_, std::max(chunk_, 1));
    device_templates_ = backend_.samples_templates(source_);
    many_ = backend_.scores_many(source_) && settings_.score;
    fill_template_cache();
    plan_in_plane_templates();
    // A shared 3D grid's children are the same for every particle that keeps their coarse template;
    // kept where they are reused: with fewer than one particle per 10 grid orientations (refine's
    // 7.5° pass on 1,250 particles a half) the cache's own costs made the pass 15-20% slower, at
    // 15° it halved the children's sampling (bench/RESULTS.md).
    const bool reused = images_.size() * 10 >= sz(layout_.orientations);
    children_.reset(settings_.share_children && reused && shared_ && two_pass_ && !space_.in_plane && settings_.score && !device_templates_,
                    sz(layout_.classes) * sz(layout_.orientations) * 8, F_);
    // The coarse pass finds where the mass is: poses and classes marginalised there, with the
    // job's temperature and priors; a single pass takes the job's choices directly.
    coarse_settings_ = settings_.coarse;
    coarse_settings_.poses = coarse_settings_.classes = Reduce::marginalize;
    coarse_settings_.class_temperature = settings_.fine.class_temperature;
    coarse_settings_.log_class_prior = settings_.fine.log_class_prior;
    if (!two_pass_) coarse_settings_ = settings_.fine;
  }

  void plan_layout() {
    layout_.classes = K_;
    // One pass where the coarse limit covers the working one: over the fine grid when the space has
    // one (2D), else over the coarse grid (3D sub-cells only refine kept orientations).
    const bool fine_single = !two_pass_ && !space_.fine_grid.empty();
    grid_ = fine_single ? &space_.fine_grid : &space_.grid;
    if (space_.coarse_to_fine && !fine_single) layout_.shift_ids = space_.shifts.coarse;
    else for (std::size_t t = 0; t < space_.shifts.fine.size(); ++t) layout_.shift_ids.push_back(static_cast<int>(t));
    layout_.shifts = static_cast<int>(layout_.shift_ids.size());
    shared_ = space_.orientations == SearchSpace::Orientations::grid;
    layout_.orientations =
        shared_ ? static_cast<int>(grid_->size()) : (space_.orientations == SearchSpace::Orientations::local ? kLocalOrientations : 1);
    J_ = K_ * layout_.orientations;
  }

  /// Shared coarse templates in chunks: held whole when they fit the cache budget, else
  /// recomputed per batch (sampling costs a few percent of the GEMM it feeds).
  void plan_templates() {
    if (!shared_) return;
    constexpr std::size_t kTemplateCacheBytes = std::size_t{192} << 20, kChunkBytes = std::size_t{32} << 20;
    const std::size_t row_bytes = sz(3 * Fc_) * sizeof(float);
    const int B = std::max(1, settings_.batch);
    cache_ = sz(J_) * row_bytes <= kTemplateCacheBytes;
    chunk_ = std::min<int>(J_, std::max<int>(256, static_cast<int>(kChunkBytes / (sz(B) * sz(layout_.shifts) * sizeof(float)))));
    if (!cache_) chunk_ = std::min<int>(chunk_, std::max<int>(256, static_cast<int>(kChunkBytes / row_bytes)));
    const std::size_t held = sz(cache_ ? J_ : chunk_);
    templates_.resize(held * 2 * sz(Fc_));
    power_.resize(held * sz(Fc_));
  }

  /// The shared coarse templates computed once for the E-step where they are held whole (after the
  /// backend's plan: a backend that samples templates samples them).
  void fill_template_cache() {
    if (!shared_ || !cache_ || J_ <= 0 || !settings_.score) return;
    const StageClock clock(times_, StageTimes::coarse_templates);
    compute_templates(0, J_);
  }

  /// The fine pass's in-plane templates sampled once (InPlaneTemplates) where the fine grid is the
  /// uniform psi grid, they fit 512 MiB and the CPU samples templates: on a class2d iteration of
  /// 8,000 particles, K = 100, the per-particle sampling was a third of the E-step's CPU time.
  void plan_in_plane_templates() {
    in_plane_ = InPlaneTemplates{};
    const int R = static_cast<int>(space_.fine_grid.size());
    if (!two_pass_ || !space_.in_plane || R == 0 || device_templates_ || !settings_.score) return;
    for (int r = 0; r < R; ++r)
      if (std::abs(space_.fine_grid[sz(r)].psi - 360.0 * r / R) > 1e-9) return;
    constexpr std::size_t kBudgetBytes = std::size_t{512} << 20;
    if (sz(K_) * sz(R) * 3 * sz(F_) * sizeof(float) > kBudgetBytes) return;
    const StageClock clock(times_, StageTimes::search_templates);
    in_plane_.templates.resize(sz(K_) * sz(R) * 2 * sz(F_));
    in_plane_.power.resize(sz(K_) * sz(R) * sz(F_));
#pragma omp parallel
    {
      std::vector<Complex> sample(sz(F_));
#pragma omp for schedule(static)
      for (int i = 0; i < K_ * R; ++i) {
        source_.sample(i / R, space_.fine_grid[sz(i % R)], list_, sample.data());
        store_template_row(sample.data(), F_, in_plane_.templates.data() + sz(i) * 2 * sz(F_), in_plane_.power.data() + sz(i) * sz(F_));
      }
    }
    in_plane_.R = R;
  }

  void compute_templates(int first, int count) {
    if (device_templates_) {  // sampled where the references are (a GPU's stay on the card)
      sampled_poses_.resize(sz(count));
      for (int j = 0; j < count; ++j)
        sampled_poses_[sz(j)] = {(first + j) / layout_.orientations, (*grid_)[sz((first + j) % layout_.orientations)]};
      sampled_rows_.resize(sz(count) * sz(Fc_));
      backend_.sample_to_host({&source_, sampled_poses_.data(), &coarse_list_}, count, Fc_, reinterpret_cast<float*>(sampled_rows_.data()));
#pragma omp parallel for schedule(static)
      for (int j = 0; j < count; ++j) {
        const std::size_t row = sz(cache_ ? first + j : j);
        store_template_row(sampled_rows_.data() + sz(j) * sz(Fc_), Fc_, templates_.data() + row * 2 * sz(Fc_), power_.data() + row * sz(Fc_));
      }
      return;
    }
#pragma omp parallel
    {
      std::vector<Complex> sample(sz(Fc_));
#pragma omp for
      for (int j = 0; j < count; ++j) {
        const int g = first + j;
        const std::size_t row = sz(cache_ ? g : j);
        source_.sample(g / layout_.orientations, (*grid_)[sz(g % layout_.orientations)], coarse_list_, sample.data());
        store_template_row(sample.data(), Fc_, templates_.data() + row * 2 * sz(Fc_), power_.data() + row * sz(Fc_));
      }
    }
  }

  PreparedParticle view(int b) const {
    PreparedParticle p;
    p.image = images_[scored_.first + sz(b)];
    p.group = set_.optics_index(p.image);
    p.x = batch_.x.data() + sz(b) * sz(F_);
    p.ctf = batch_.ctf.data() + sz(b) * sz(F_);
    p.ctf2 = batch_.ctf2.data() + sz(b) * sz(F_);
    p.inv_sigma2 = inv_sigma2_[sz(p.group)].data();
    p.half_norm = batch_.half_norm[sz(b)];
    if (settings_.full_grids) p.unmasked = batch_.unmasked[sz(b)].data(), p.ctf_grid = batch_.ctf_grid[sz(b)].data();
    return p;
  }

  Shift base_shift(int first, int b) const {
    return space_.relative_shifts && !start_.empty() ? start_[sz(first + b)].shift : Shift{0, 0};
  }

  /// All particles x coarse shifts against all coarse templates, chunk by chunk, into each
  /// particle's coarse reducer.
  void coarse_pass_shared(int first, int bc) {
    for (int b = 0; b < bc; ++b) coarse_reducers_[sz(b)].reset(coarse_settings_, K_);
    {
      const StageClock clock(times_, StageTimes::coarse_rows);
#pragma omp parallel for schedule(static)
      for (int b = 0; b < bc; ++b)
        fill_coarse_rows(batch_, b, F_, Fc_, layout_, fine_ramps_, scored_.particles[sz(b)].inv_sigma2, base_shift(first, b), list_,
                         scratch_[sz(omp_get_thread_num())]);
    }
    const KeptScores kept{bc, layout_.shifts, J_, layout_.orientations};
    const bool on_device = device_reduce_ && backend_.reduces_scores(kept);
    for (int first_j = 0; first_j < J_; first_j += chunk_) {
      const int jc = std::min(chunk_, J_ - first_j);
      if (!cache_) {
        const StageClock clock(times_, StageTimes::coarse_templates);
        compute_templates(first_j, jc);
      }
      const std::size_t offset = cache_ ? sz(first_j) : 0;
      ScoreRequest q;
      q.rows = batch_.coarse_rows.data(), q.row_count = bc * layout_.shifts, q.row_stride = 2 * Fc_, q.particles = bc;
      q.ctf2 = batch_.ctf2.data(), q.ctf2_stride = F_;
      q.templates = templates_.data() + offset * 2 * sz(Fc_), q.power = power_.data() + offset * sz(Fc_);
      q.template_count = jc, q.template_stride = 2 * Fc_, q.power_stride = Fc_, q.frequencies = Fc_;
      q.cross_correlation = settings_.cross_correlation;
      q.templates_resident = cache_;  // computed once in plan(), unchanged until the next E-step
      if (on_device) {
        const StageClock clock(times_, StageTimes::coarse_score);
        backend_.score_kept(q, kept, first_j);
        continue;
      }
      {
        const StageClock clock(times_, StageTimes::coarse_score);
        backend_.score(q, scores_.data(), 0);
      }
      const StageClock clock(times_, StageTimes::coarse_reduce);
      const int O = layout_.orientations;
#pragma omp parallel for schedule(static)
      for (int b = 0; b < bc; ++b)
        for (int t = 0; t < layout_.shifts; ++t) {
          const float* row = scores_.data() + (sz(t) * sz(bc) + sz(b)) * sz(jc);
          // In runs of one class (the templates of a class are consecutive).
          for (int j = 0; j < jc;) {
            const int k = (first_j + j) / O, end = std::min(jc, (k + 1) * O - first_j);
            coarse_reducers_[sz(b)].add_run(k, static_cast<std::int64_t>(t) * J_ + first_j + j, row + j, end - j);
            j = end;
          }
        }
    }
    if (on_device) reduce_on_device(kept);
  }

  /// The batch's kept coarse scores reduced by the backend, fed to the particles' coarse reducers.
  void reduce_on_device(const KeptScores& kept) {
    const StageClock clock(times_, StageTimes::coarse_reduce);
    ScoreReduction r;
    r.scores = kept;
    r.class_temperature = coarse_settings_.class_temperature;
    r.log_class_prior = coarse_settings_.log_class_prior.empty() ? nullptr : coarse_settings_.log_class_prior.data();
    r.hard_classes = coarse_settings_.classes == Reduce::maximize;
    r.window = PosteriorReducer::kWindow;
    // Maximised poses keep only each class's best, which the class sums carry.
    r.cap = coarse_settings_.poses == Reduce::marginalize ? coarse_settings_.cap : 0;
    backend_.reduce_kept(r, reduced_);
    const std::int64_t per_class = static_cast<std::int64_t>(kept.shifts) * kept.orientations;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < kept.particles; ++b) {
      PosteriorReducer& reducer = coarse_reducers_[sz(b)];
      for (int k = 0; k < K_; ++k) {
        const std::size_t at = sz(b) * sz(K_) + sz(k);
        reducer.add_reduced(k, reduced_.class_max[at], reduced_.class_sum[at], reduced_.class_best[at], per_class);
      }
      for (const auto& c : reduced_.candidates[sz(b)]) reducer.add_candidate(c.k, c.id, c.score);
    }
  }

  PriorTerm prior_term(int first, int b) const {
    // A prior weighs log-likelihoods; cross-correlation scores are on another scale.
    if (!space_.prior_centres || settings_.cross_correlation) return {};
    return {&space_.prior, &(*space_.prior_centres)[sz(first + b)], &space_.shifts.fine};
  }

  /// The pass's request over its templates x shifts at the first F frequencies of `list` (the
  /// full list, or the coarse prefix): templates sampled here unless the backend samples them,
  /// rows built here unless the batch is scored at once (the backend builds them from the particle).
  void request_pass(const PreparedParticle& p, const FrequencyList& list, const InPlaneTemplates* cached, ParticlePass& w, Scratch& s) {
    const int J = static_cast<int>(w.templates.size()), T = static_cast<int>(w.shifts.size());
    const int F = static_cast<int>(list.size());
    ScoreRequest& q = w.request;
    q = ScoreRequest{};
    if (device_templates_) {
      q.sampled = {&source_, w.templates.data(), &list};
    } else {
      const StageClock clock(s.times, StageTimes::search_templates);
      sample_templates(list, cached, w, s);
      q.templates = w.sampled.data(), q.power = w.power.data();
    }
    if (many_) {
      q.particle_rows = {reinterpret_cast<const float*>(p.x), p.ctf, p.inv_sigma2, space_.shifts.fine.data(), w.shifts.data(), w.base, &list};
    } else {
      const StageClock clock(s.times, StageTimes::search_rows);
      fill_pass_rows(p, list, w, s);
      q.rows = w.rows.data();
    }
    w.scores.resize(sz(T) * sz(J));
    q.row_count = T, q.row_stride = 2 * F, q.particles = 1;
    q.ctf2 = p.ctf2, q.ctf2_stride = F;
    q.template_count = J, q.template_stride = 2 * F, q.power_stride = F;
    q.frequencies = F, q.cross_correlation = settings_.cross_correlation;
  }

  /// The pass's templates on the host: copied from the in-plane cache or the shared grid's children,
  /// or sampled.
  void sample_templates(const FrequencyList& list, const InPlaneTemplates* cached, ParticlePass& w, Scratch& s) const {
    const int J = static_cast<int>(w.templates.size()), F = static_cast<int>(list.size());
    s.sample.resize(sz(F));
    w.sampled.resize(sz(J) * 2 * sz(F));
    w.power.resize(sz(J) * sz(F));
    for (int j = 0; j < J; ++j) {
      float* row = w.sampled.data() + sz(j) * 2 * sz(F);
      float* power = w.power.data() + sz(j) * sz(F);
      const int k = w.templates[sz(j)].first;  // (no structured binding: lambdas below capture these)
      const Euler& e = w.templates[sz(j)].second;
      if (cached) {
        const auto at = sz(cached->row(k, e.psi));
        std::copy_n(cached->templates.data() + at * 2 * sz(F), 2 * sz(F), row);
        std::copy_n(cached->power.data() + at * sz(F), sz(F), power);
        continue;
      }
      const auto sample = [&](float* to_row, float* to_power) {
        source_.sample(k, e, list, s.sample.data());
        store_template_row(s.sample.data(), F, to_row, to_power);
      };
      if (!w.template_keys.empty() && F == F_ && children_.get(w.template_keys[sz(j)], row, power, sample)) continue;
      sample(row, power);
    }
  }

  /// The pass's rows: one per shift, at the fine shift's ramp (times the base shift's).
  void fill_pass_rows(const PreparedParticle& p, const FrequencyList& list, ParticlePass& w, Scratch& s) const {
    const int T = static_cast<int>(w.shifts.size()), F = static_cast<int>(list.size());
    w.rows.resize(sz(T) * 2 * sz(F));
    s.ramps.resize(sz(F));
    s.base_ramp.resize(sz(F));
    const bool moved = w.base.first != 0 || w.base.second != 0;
    if (moved) shift_ramps(list, {w.base}, 0, 0, s.base_ramp.data());
    for (int t = 0; t < T; ++t) {
      const Complex* r = fine_ramps_.data() + sz(w.shifts[sz(t)]) * sz(F_);
      for (int f = 0; f < F; ++f) s.ramps[sz(f)] = moved ? r[f] * s.base_ramp[sz(f)] : r[f];
      fill_score_rows(p.x, p.ctf, p.inv_sigma2, s.ramps.data(), 1, F, w.rows.data() + sz(t) * 2 * sz(F));
    }
  }

  /// The pass's scores (with the pose prior, if any) into the thread's reducer, in runs of one class.
  void reduce_pass(ParticlePass& w, Scratch& s) const {
    const int J = static_cast<int>(w.templates.size()), T = static_cast<int>(w.shifts.size());
    if (w.term.prior) {
      prior_terms(w.term, w.templates, w.shifts, w.base, s.prior_template, s.prior_shift);
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < J; ++j) w.scores[sz(t) * sz(J) + sz(j)] += s.prior_template[sz(j)] + s.prior_shift[sz(t)];
    }
    s.class_runs.clear();
    for (int j = 0; j < J; ++j)
      if (j == 0 || w.templates[sz(j)].first != w.templates[sz(j - 1)].first) s.class_runs.push_back(j);
    s.class_runs.push_back(J);
    for (int t = 0; t < T; ++t)
      for (std::size_t r = 0; r + 1 < s.class_runs.size(); ++r) {
        const int j0 = s.class_runs[r], j1 = s.class_runs[r + 1];
        s.reducer.add_run(w.templates[sz(j0)].first, static_cast<std::int64_t>(t) * J + j0, w.scores.data() + sz(t) * sz(J) + sz(j0), j1 - j0);
      }
  }

  /// A particle's search, stage 1: the request of its own coarse pass (local or fixed orientations);
  /// false where the coarse pass is shared (or nothing is scored).
  bool request_own_coarse(int first, int b, ParticlePass& w, Scratch& s) {
    if (shared_ || !settings_.score) return false;
    const StartPose sp = start_.empty() ? StartPose{} : start_[sz(first + b)];
    coarse_orientations(space_, sp, w.orientations);
    w.templates.clear();
    w.template_keys.clear();
    for (int k = 0; k < K_; ++k)
      for (const auto& e : w.orientations) w.templates.push_back({k, e});
    w.shifts = layout_.shift_ids;
    w.base = base_shift(first, b), w.term = prior_term(first, b);
    request_pass(scored_.particles[sz(b)], coarse_list_, nullptr, w, s);
    return true;
  }

  /// Stage 2: the particle's coarse posterior (its share of the shared pass, or its own pass's
  /// scores), then the request of its fine pass over the children of the kept hypotheses; false
  /// where there is no fine pass (the outcome is then final).
  bool request_fine(int first, int b, ParticlePass& w, ParticleOutcome& outcome, Scratch& s) {
    const Shift base = base_shift(first, b);
    if (!settings_.score) {
      const StartPose sp = start_.empty() ? StartPose{} : start_[sz(first + b)];
      outcome.kept.push_back({1.0f, 0, sp.orientation, base, 0});
      outcome.posterior.class_posterior.assign(sz(K_), 0.0);
      outcome.posterior.class_posterior[0] = 1;
      return false;
    }
    Posterior coarse;
    {
      const StageClock clock(s.times, StageTimes::search_reduce);
      if (shared_) {
        coarse = coarse_reducers_[sz(b)].finish();
      } else {
        s.reducer.reset(coarse_settings_, K_);
        reduce_pass(w, s);
        coarse = s.reducer.finish();
      }
    }
    const std::vector<Euler>& orientations = shared_ ? *grid_ : w.orientations;
    outcome.coarse_scored = coarse.scored;
    if (!two_pass_) {
      for (const auto& h : coarse.kept) {
        const int j = static_cast<int>(h.id % J_), id = layout_.shift_ids[sz(h.id / J_)];
        outcome.kept.push_back({h.weight, h.k, orientations[sz(j % layout_.orientations)], shifted(id, base), id});
      }
      outcome.posterior = std::move(coarse);
      return false;
    }
    {
      const StageClock clock(s.times, StageTimes::search_reduce);
      collect_children(coarse, orientations, layout_, space_, s);
    }
    // The children change places with the pass's last templates: no copy per particle.
    w.templates.swap(s.unique_templates);
    w.template_keys.swap(s.unique_keys);
    w.shifts.swap(s.unique_shifts);
    w.base = base, w.term = prior_term(first, b);
    request_pass(scored_.particles[sz(b)], list_, in_plane_.R > 0 ? &in_plane_ : nullptr, w, s);
    return true;
  }

  /// Stage 3: the fine pass's scores into the particle's posterior and kept hypotheses.
  void finish_fine(ParticlePass& w, ParticleOutcome& outcome, Scratch& s) const {
    const StageClock clock(s.times, StageTimes::search_reduce);
    s.reducer.reset(settings_.fine, K_);
    reduce_pass(w, s);
    outcome.posterior = s.reducer.finish();
    outcome.fine_scored = outcome.posterior.scored;
    const int U = static_cast<int>(w.templates.size());
    for (const auto& h : outcome.posterior.kept) {
      const int id = w.shifts[sz(h.id / U)];
      outcome.kept.push_back({h.weight, h.k, w.templates[sz(h.id % U)].second, shifted(id, w.base), id});
    }
  }

  Shift shifted(int fine_id, const Shift& base) const {
    const Shift& g = space_.shifts.fine[sz(fine_id)];
    return Shift{g.first + base.first, g.second + base.second};
  }

  /// One particle, on its own: its coarse posterior (shared pass, or its own local/fixed grid),
  /// then the fine pass over the children of the kept hypotheses.
  void search_particle(int first, int b, ParticleOutcome& outcome) {
    const int tid = omp_get_thread_num();
    Scratch& s = scratch_[sz(tid)];
    ParticlePass& w = s.pass;
    const auto score = [&] {
      const StageClock clock(s.times, StageTimes::search_score);
      backend_.score(w.request, w.scores.data(), tid);
    };
    if (request_own_coarse(first, b, w, s)) score();
    if (!request_fine(first, b, w, outcome, s)) return;
    score();
    finish_fine(w, outcome, s);
  }

  /// The batch's particles stage by stage, each stage's passes scored at once by the backend
  /// (score_many): the same stages and reductions as search_particle.
  void search_batch(int first, int bc) {
    passes_.resize(std::max(passes_.size(), sz(bc)));
    pass_active_.assign(sz(bc), 0);
    if (!shared_ && settings_.score) {
      in_parallel(bc, [&](int b, Scratch& s) { pass_active_[sz(b)] = request_own_coarse(first, b, passes_[sz(b)], s); });
      score_passes(bc);
    }
    in_parallel(bc, [&](int b, Scratch& s) { pass_active_[sz(b)] = request_fine(first, b, passes_[sz(b)], scored_.outcomes[sz(b)], s); });
    score_passes(bc);
    in_parallel(bc, [&](int b, Scratch& s) {
      if (pass_active_[sz(b)]) finish_fine(passes_[sz(b)], scored_.outcomes[sz(b)], s);
    });
  }

  /// f(b, thread's scratch) for every particle of the batch, over the threads; the loop's wall time
  /// shared over its stages.
  template <typename Body>
  void in_parallel(int bc, const Body& f) {
    for (auto& s : scratch_) s.times = StageTimes{};
    const auto start = Clock::now();
#pragma omp parallel for schedule(dynamic, 2)
    for (int b = 0; b < bc; ++b) f(b, scratch_[sz(omp_get_thread_num())]);
    share_loop_time(std::chrono::duration<double>(Clock::now() - start).count());
  }

  void score_passes(int bc) {
    const StageClock clock(times_, StageTimes::search_score);
    many_requests_.clear(), many_outs_.clear();
    for (int b = 0; b < bc; ++b)
      if (pass_active_[sz(b)]) many_requests_.push_back(passes_[sz(b)].request), many_outs_.push_back(passes_[sz(b)].scores.data());
    if (!many_requests_.empty()) backend_.score_many(many_requests_, many_outs_);
  }

  const io::ParticleSet& set_;
  const std::vector<std::size_t>& images_;
  const std::vector<StartPose>& start_;
  const SearchSpace& space_;
  const TemplateSource& source_;
  const FrequencyList& list_;
  const std::vector<float>& mask_;
  const EStepSettings& settings_;
  ScoringBackend& backend_;
  int F_ = 0, Fc_ = 0, K_ = 1, J_ = 0, B_ = 1, chunk_ = 0;
  bool two_pass_ = false, shared_ = false, cache_ = false;
  bool device_templates_ = false;  // the backend samples the per-particle templates itself
  bool device_reduce_ = false;     // the backend keeps and reduces the shared coarse scores
  bool many_ = false;              // the backend scores a batch's per-particle passes at once
  std::vector<ParticlePass> passes_;  // many_: one per particle of the batch
  std::vector<std::uint8_t> pass_active_;
  std::vector<ScoreRequest> many_requests_;
  std::vector<float*> many_outs_;
  InPlaneTemplates in_plane_;      // R = 0: none (the fine pass samples its children)
  mutable ChildTemplates children_;  // a shared 3D grid's children, filled as the particles need them
  ReducedScores reduced_;
  StageTimes times_;               // this run's wall time per stage (planning counts with the first run)
  const std::vector<Euler>* grid_ = nullptr;  // the shared orientations of the (first) pass
  std::vector<std::vector<float>> inv_sigma2_;
  std::vector<Complex> fine_ramps_;
  CoarseLayout layout_;
  FrequencyList coarse_list_;
  std::vector<float> templates_, power_, own_pixels_, scores_;
  std::vector<std::pair<int, Euler>> sampled_poses_;  // compute_templates's, where the backend samples
  std::vector<Complex> sampled_rows_;
  float* pixels_ = nullptr;  // 2 x B_ images: own_pixels_ or the backend's pinned memory
  bool device_prepare_ = false;
  std::vector<float> inv_sigma2_rows_;  // inv_sigma2_ as one [group][F] array
  std::vector<image::CtfTerms> ctf_terms_;
  std::vector<int> groups_;
  std::vector<float*> unmasked_rows_, ctf_grid_rows_;
  Batch batch_;
  std::vector<PosteriorReducer> coarse_reducers_;
  std::vector<Scratch> scratch_;
  PosteriorSettings coarse_settings_;
  ScoredBatch scored_;
};

}  // namespace detail

ExpectationRun::ExpectationRun(const io::ParticleSet& set, const std::vector<std::size_t>& images, const std::vector<StartPose>& start,
                               const SearchSpace& space, const TemplateSource& source, const FrequencyList& list,
                               const std::vector<std::vector<double>>& sigma2, const std::vector<float>& mask,
                               const EStepSettings& settings, ScoringBackend& backend)
    : backend_(backend) {
  const auto t0 = Clock::now();
  const auto before = backend.stats();
  step_ = std::make_unique<detail::EStep>(set, images, start, space, source, list, sigma2, mask, settings, backend);
  const auto after = backend.stats();
  plan_stats_.flops = after.flops - before.flops;
  plan_stats_.gemm_seconds = after.seconds - before.seconds;
  plan_stats_.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
}

ExpectationRun::~ExpectationRun() = default;

void ExpectationRun::run(std::size_t begin, std::size_t end, const Consumer& consumer, EStepStats& stats, Progress* progress) {
  const auto t0 = Clock::now();
  const auto before = backend_.stats();
  step_->run(static_cast<int>(begin), static_cast<int>(end), consumer, stats, progress);
  const auto after = backend_.stats();
  stats.flops += after.flops - before.flops + plan_stats_.flops;
  stats.gemm_seconds += after.seconds - before.seconds + plan_stats_.gemm_seconds;
  stats.seconds += std::chrono::duration<double>(Clock::now() - t0).count() + plan_stats_.seconds;
  plan_stats_ = EStepStats{};  // the planning counts once, with the first run
}

void run_expectation(const io::ParticleSet& set, const std::vector<std::size_t>& images, const std::vector<StartPose>& start,
                     const SearchSpace& space, const TemplateSource& source, const FrequencyList& list,
                     const std::vector<std::vector<double>>& sigma2, const std::vector<float>& mask, const EStepSettings& settings,
                     ScoringBackend& backend, const Consumer& consumer, EStepStats& stats, Progress* progress) {
  ExpectationRun(set, images, start, space, source, list, sigma2, mask, settings, backend).run(0, images.size(), consumer, stats, progress);
}

double masked_noise_inflation(const std::vector<float>& mask) {
  if (mask.empty()) return 1;
  double sum = 0;
  for (float m : mask) sum += static_cast<double>(m) * m;
  return sum > 0 ? static_cast<double>(mask.size()) / sum : 1;
}

std::vector<std::vector<double>> estimate_initial_sigma2(const io::ParticleSet& set, const std::vector<std::size_t>& active,
                                                         const std::vector<float>& mask) {
  const int n = set.box();
  const int shells = n / 2 + 1;
  const std::size_t groups = set.optics_groups().size();
  std::vector<std::vector<double>> sum(groups, std::vector<double>(sz(shells)));
  std::vector<std::vector<double>> count = sum;
  const auto list = make_frequency_list(n, n / 2.0);
  const std::size_t use = std::min<std::size_t>(active.size(), 1000);
  std::vector<float> img(sz(n) * sz(n));
  std::vector<Complex> spectrum(image::half_size(n, n));
  for (std::size_t a = 0; a < use; ++a) {
    const std::size_t i = active[a * active.size() / use];
    set.read_image(i, img.data());
    image::apply_mask(img.data(), mask);
    image::fft_forward_2d(img.data(), spectrum.data(), n, n);
    const auto g = sz(set.optics_index(i));
    for (std::size_t f = 0; f < list.size(); ++f) {
      const auto s = sz(list.shell[f]);
      sum[g][s] += std::norm(spectrum[sz(list.index[f])]);
      count[g][s] += 1;
    }
  }
  for (std::size_t g = 0; g < groups; ++g) {
    for (std::size_t s = 0; s < sum[g].size(); ++s) sum[g][s] = count[g][s] > 0 ? sum[g][s] / (2 * count[g][s]) : 0;
    // Shells without data (or an unused group) borrow their neighbour's value; never zero.
    for (std::size_t s = 1; s < sum[g].size(); ++s)
      if (sum[g][s] <= 0) sum[g][s] = sum[g][s - 1];
    for (std::size_t s = sum[g].size(); s-- > 1;)
      if (sum[g][s - 1] <= 0) sum[g][s - 1] = sum[g][s];
    if (sum[g][0] <= 0) sum[g][0] = 1;
  }
  return sum;
}

void put_hypotheses(mpi::Message& message, const std::vector<Hypothesis>& hypotheses) {
  message.put(hypotheses.size());
  for (const auto& h : hypotheses) {
    message.put(h.weight), message.put(h.k), message.put(h.orientation);
    message.put(h.shift.first), message.put(h.shift.second), message.put(h.shift_id);
  }
}

std::vector<Hypothesis> get_hypotheses(mpi::Message& message) {
  std::vector<Hypothesis> hypotheses(message.get<std::size_t>());
  for (auto& h : hypotheses) {
    h.weight = message.get<float>(), h.k = message.get<int>(), h.orientation = message.get<geometry::Euler>();
    h.shift.first = message.get<float>(), h.shift.second = message.get<float>(), h.shift_id = message.get<int>();
  }
  return hypotheses;
}

void put_stats(mpi::Message& message, const EStepStats& stats) {
  message.put(stats.flops), message.put(stats.gemm_seconds), message.put(stats.seconds);
  message.put(stats.coarse_hypotheses), message.put(stats.fine_hypotheses);
  message.put(stats.stages.seconds.data(), stats.stages.seconds.size());
}

void add_stats(mpi::Message& message, EStepStats& stats) {
  stats.flops += message.get<double>(), stats.gemm_seconds += message.get<double>(), stats.seconds += message.get<double>();
  stats.coarse_hypotheses += message.get<std::int64_t>(), stats.fine_hypotheses += message.get<std::int64_t>();
  message.add_into(stats.stages.seconds.data(), stats.stages.seconds.size());
}

}  // namespace emcryo::em
