#include "emcryo/em/expectation.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
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

/// Per-thread scratch of the fine and local passes.
struct Scratch {
  std::vector<Complex> sample, ramps, base_ramp;
  std::vector<float> rows, templates, power, scores;
  std::vector<Euler> orientations;
  std::vector<std::pair<int, Euler>> unique_templates;  // (class, orientation)
  std::vector<int> unique_shifts;
  PosteriorReducer reducer;
};

void prepare_batch(const io::ParticleSet& set, const std::size_t* images, int count, const FrequencyList& list,
                   const std::vector<std::vector<float>>& inv_sigma2, const std::vector<float>& mask, const EStepSettings& settings,
                   std::vector<float>& pixels, Batch& batch) {
  const int n = set.box();
  const int F = static_cast<int>(list.size());
  const std::size_t area = sz(n) * sz(n), half = image::half_size(n, n);
  const double pixel = set.pixel_size();
  batch.count = count;
  for (int b = 0; b < count; ++b) set.read_image(images[b], pixels.data() + sz(b) * area);
#pragma omp parallel
  {
    std::vector<Complex> spectrum(half);
    std::vector<float> ctf_grid(half, 1.0f);
#pragma omp for schedule(static)
    for (int b = 0; b < count; ++b) {
      const std::size_t i = images[b];
      float* img = pixels.data() + sz(b) * area;
      // The unmasked transform enters the reconstruction (as RELION: masking would change the
      // data that enter the map); the masked one is scored.
      if (settings.full_grids) image::fft_forward_2d(img, batch.unmasked[sz(b)].data(), n, n);
      image::apply_mask(img, mask);
      image::fft_forward_2d(img, spectrum.data(), n, n);
      float* grid = settings.full_grids ? batch.ctf_grid[sz(b)].data() : ctf_grid.data();
      if (settings.use_ctf) image::ctf_half_grid(set.ctf(i), n, pixel, grid);
      else std::fill(grid, grid + half, 1.0f);
      const float* isg = inv_sigma2[sz(set.optics_index(i))].data();
      Complex* x = batch.x.data() + sz(b) * sz(F);
      float* c = batch.ctf.data() + sz(b) * sz(F);
      float* c2 = batch.ctf2.data() + sz(b) * sz(F);
      double norm = 0;
      for (int f = 0; f < F; ++f) {
        const auto k = static_cast<std::size_t>(list.index[sz(f)]);
        x[f] = spectrum[k];
        c[f] = grid[k];
        c2[f] = c[f] * c[f] * isg[f];
        norm += std::norm(x[f]) * isg[f] / 2;
      }
      batch.half_norm[sz(b)] = norm;
    }
  }
}

/// Coarse rows of particle b: (coarse shifts, each moved by the particle's start shift) at Fc.
void fill_coarse_rows(const Batch& batch, int b, int F, int Fc, const CoarseLayout& layout, const std::vector<Complex>& fine_ramps,
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
    float* row = const_cast<float*>(batch.coarse_rows.data()) + (sz(t) * sz(batch.count) + sz(b)) * 2 * sz(Fc);
    fill_score_rows(x, c, isg, s.ramps.data(), 1, Fc, row);
  }
}

/// The orientations a particle's coarse pass scores (per class): the grid, or its own.
const std::vector<Euler>& coarse_orientations(const SearchSpace& space, const StartPose& start, Scratch& s) {
  if (space.orientations == SearchSpace::Orientations::grid) return space.grid;
  s.orientations.clear();
  if (space.orientations == SearchSpace::Orientations::local) s.orientations = local_orientations(start.orientation, space.local_step);
  else s.orientations.push_back(start.orientation);
  return s.orientations;
}

/// Scores every pair of `orientations` (per class) x `shift_ids` for one particle at the first F
/// frequencies, into the reducer with ids u_t * J + j (j = class * orientations + o).
void score_particle(const PreparedParticle& p, const std::vector<std::pair<int, Euler>>& templates, const std::vector<int>& shift_ids,
                    const std::vector<Complex>& fine_ramps, const Shift& base, const FrequencyList& list, int F, int Ffull,
                    const TemplateSource& source, bool cc, ScoringBackend& backend, int slot, Scratch& s) {
  const int J = static_cast<int>(templates.size()), T = static_cast<int>(shift_ids.size());
  s.sample.resize(sz(F));
  s.templates.resize(sz(J) * 2 * sz(F));
  s.power.resize(sz(J) * sz(F));
  FrequencyList prefix;  // the first F frequencies of the list (sampling reads kx, ky only)
  const FrequencyList* use = &list;
  if (F != static_cast<int>(list.size())) {
    prefix.n = list.n;
    prefix.radius = list.radius;
    prefix.kx.assign(list.kx.begin(), list.kx.begin() + F);
    prefix.ky.assign(list.ky.begin(), list.ky.begin() + F);
    prefix.shell.assign(list.shell.begin(), list.shell.begin() + F);
    prefix.index.assign(list.index.begin(), list.index.begin() + F);
    use = &prefix;
  }
  for (int j = 0; j < J; ++j) {
    source.sample(templates[sz(j)].first, templates[sz(j)].second, *use, s.sample.data());
    store_template_row(s.sample.data(), F, s.templates.data() + sz(j) * 2 * sz(F), s.power.data() + sz(j) * sz(F));
  }
  s.rows.resize(sz(T) * 2 * sz(F));
  s.ramps.resize(sz(F));
  s.base_ramp.resize(sz(F));
  const bool moved = base.first != 0 || base.second != 0;
  if (moved) shift_ramps(list, {base}, 0, 0, s.base_ramp.data());
  for (int t = 0; t < T; ++t) {
    const Complex* r = fine_ramps.data() + sz(shift_ids[sz(t)]) * sz(Ffull);
    for (int f = 0; f < F; ++f) s.ramps[sz(f)] = moved ? r[f] * s.base_ramp[sz(f)] : r[f];
    fill_score_rows(p.x, p.ctf, p.inv_sigma2, s.ramps.data(), 1, F, s.rows.data() + sz(t) * 2 * sz(F));
  }
  s.scores.resize(sz(T) * sz(J));
  ScoreRequest q;
  q.rows = s.rows.data(), q.row_count = T, q.row_stride = 2 * F, q.particles = 1;
  q.ctf2 = p.ctf2, q.ctf2_stride = F;
  q.templates = s.templates.data(), q.power = s.power.data(), q.template_count = J, q.template_stride = 2 * F, q.power_stride = F;
  q.frequencies = F, q.cross_correlation = cc;
  backend.score(q, s.scores.data(), slot);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < J; ++j)
      s.reducer.add(templates[sz(j)].first, static_cast<std::int64_t>(t) * J + j, s.scores[sz(t) * sz(J) + sz(j)]);
}

/// The children of the kept coarse hypotheses: unique (class, orientation) and unique fine shifts.
void collect_children(const Posterior& coarse, const std::vector<Euler>& orientations, const CoarseLayout& layout,
                      const SearchSpace& space, Scratch& s) {
  s.unique_templates.clear();
  s.unique_shifts.clear();
  const int J = layout.classes * layout.orientations;
  std::vector<std::int64_t> seen_templates;
  for (const auto& h : coarse.kept) {
    const int j = static_cast<int>(h.id % J), t = static_cast<int>(h.id / J);
    const int k = j / layout.orientations, o = j % layout.orientations;
    if (std::find(seen_templates.begin(), seen_templates.end(), j) == seen_templates.end()) {
      seen_templates.push_back(j);
      const Euler& centre = orientations[sz(o)];
      if (space.in_plane) {
        for (int d = -1; d <= 1; ++d) {
          Euler e = centre;
          e.psi = std::fmod(centre.psi + d * space.cell / 2 + 360.0, 360.0);
          // Neighbouring coarse angles share their boundary child: add it once.
          const bool dup = std::any_of(s.unique_templates.begin(), s.unique_templates.end(), [&](const auto& u) {
            return u.first == k && std::abs(std::remainder(u.second.psi - e.psi, 360.0)) < 1e-6;
          });
          if (!dup) s.unique_templates.push_back({k, e});
        }
      } else {
        Euler sub[8];
        sub_orientations(centre, space.cell, sub);
        for (const auto& e : sub) s.unique_templates.push_back({k, e});
      }
    }
    for (int id : space.shifts.children[sz(t)])
      if (std::find(s.unique_shifts.begin(), s.unique_shifts.end(), id) == s.unique_shifts.end()) s.unique_shifts.push_back(id);
  }
  std::sort(s.unique_shifts.begin(), s.unique_shifts.end());
}

}  // namespace

void EStepStats::add(const EStepStats& o) {
  flops += o.flops, gemm_seconds += o.gemm_seconds, seconds += o.seconds;
  coarse_hypotheses += o.coarse_hypotheses, fine_hypotheses += o.fine_hypotheses;
}

double coarse_radius_for(double cell_degrees, double coarse_shift_step, int n, double radius) {
  double reach = 2.0 / (cell_degrees * std::numbers::pi / 180);
  if (coarse_shift_step > 0) reach = std::min(reach, n / (std::numbers::pi * coarse_shift_step));
  return std::min(radius, std::max(6.0, reach));
}

void run_expectation(const io::ParticleSet& set, const std::vector<std::size_t>& images, const std::vector<StartPose>& start,
                     const SearchSpace& space, const TemplateSource& source, const FrequencyList& list,
                     const std::vector<std::vector<double>>& sigma2, const std::vector<float>& mask, const EStepSettings& settings,
                     ScoringBackend& backend, const Consumer& consumer, EStepStats& stats, Progress* progress) {
  const auto t0 = Clock::now();
  const auto backend_before = backend.stats();
  const int n = set.box();
  const int F = static_cast<int>(list.size());
  const bool c2f = space.coarse_to_fine;
  const int Fc = c2f ? static_cast<int>(frequencies_within(list, std::max(1.0, space.coarse_radius))) : F;
  if (F == 0 || Fc == 0 || space.shifts.fine.empty()) fail("E-step: empty search (F = {}, shifts = {})", F, space.shifts.fine.size());
  if (!settings.score && (space.orientations != SearchSpace::Orientations::fixed || space.shifts.fine.size() != 1 || !space.relative_shifts))
    fail("E-step: an E-step without scoring needs fixed poses (internal error)");
  const int K = source.classes();
  const std::size_t half = image::half_size(n, n);
  const int threads = omp_get_max_threads();

  // Noise weights and the phase ramps of the fine shifts, once per E-step.
  std::vector<std::vector<float>> inv_sigma2(sigma2.size(), std::vector<float>(sz(F)));
  for (std::size_t g = 0; g < sigma2.size(); ++g)
    for (int f = 0; f < F; ++f) inv_sigma2[g][sz(f)] = static_cast<float>(1.0 / sigma2[g][sz(list.shell[sz(f)])]);
  const std::vector<Complex> fine_ramps = shift_ramps(list, space.shifts.fine);

  CoarseLayout layout;
  layout.classes = K;
  if (c2f) layout.shift_ids = space.shifts.coarse;
  else for (std::size_t t = 0; t < space.shifts.fine.size(); ++t) layout.shift_ids.push_back(static_cast<int>(t));
  layout.shifts = static_cast<int>(layout.shift_ids.size());
  const bool shared = space.orientations == SearchSpace::Orientations::grid;
  layout.orientations = shared ? static_cast<int>(space.grid.size()) : (space.orientations == SearchSpace::Orientations::local ? 125 : 1);
  const int J = K * layout.orientations;

  // Shared coarse templates, in chunks: held whole when they fit the cache budget, else
  // recomputed per batch (sampling costs a few percent of the GEMM it feeds).
  constexpr std::size_t kTemplateCacheBytes = std::size_t{192} << 20, kChunkBytes = std::size_t{32} << 20;
  const int B = std::max(1, settings.batch);
  const std::size_t row_bytes = sz(3 * Fc) * sizeof(float);
  const bool cache = shared && sz(J) * row_bytes <= kTemplateCacheBytes;
  int chunk = shared ? std::min<int>(J, std::max<int>(256, static_cast<int>(kChunkBytes / (sz(B) * sz(layout.shifts) * sizeof(float))))) : 0;
  if (shared && !cache) chunk = std::min<int>(chunk, std::max<int>(256, static_cast<int>(kChunkBytes / row_bytes)));
  const std::size_t held = shared ? sz(cache ? J : chunk) : 0;
  std::vector<float> templates(held * 2 * sz(Fc)), power(held * sz(Fc));
  FrequencyList coarse_list = list;
  coarse_list.kx.resize(sz(Fc)), coarse_list.ky.resize(sz(Fc)), coarse_list.shell.resize(sz(Fc)), coarse_list.index.resize(sz(Fc));
  const auto compute_templates = [&](int first, int count) {
#pragma omp parallel
    {
      std::vector<Complex> sample(sz(Fc));
#pragma omp for
      for (int j = 0; j < count; ++j) {
        const int g = first + j;
        const std::size_t row = sz(cache ? g : j);
        source.sample(g / layout.orientations, space.grid[sz(g % layout.orientations)], coarse_list, sample.data());
        store_template_row(sample.data(), Fc, templates.data() + row * 2 * sz(Fc), power.data() + row * sz(Fc));
      }
    }
  };
  if (cache && J > 0) compute_templates(0, J);

  Batch batch;
  batch.x.resize(sz(B) * sz(F));
  batch.ctf.resize(sz(B) * sz(F));
  batch.ctf2.resize(sz(B) * sz(F));
  batch.half_norm.resize(sz(B));
  if (shared) batch.coarse_rows.resize(sz(layout.shifts) * sz(B) * 2 * sz(Fc));
  if (settings.full_grids) {
    batch.unmasked.assign(sz(B), std::vector<Complex>(half));
    batch.ctf_grid.assign(sz(B), std::vector<float>(half));
  }
  std::vector<float> pixels(sz(B) * sz(n) * sz(n));
  std::vector<float> scores(shared ? sz(B) * sz(layout.shifts) * sz(chunk) : 0);
  std::vector<PosteriorReducer> coarse_reducers(sz(B));
  ScoredBatch scored;
  scored.fine_ramps = fine_ramps.data();
  scored.frequencies = sz(F);
  std::vector<Scratch> scratch(sz(threads));
  backend.plan(threads, B, std::max(chunk, 1));
  PosteriorSettings coarse_settings = settings.coarse;
  coarse_settings.poses = Reduce::marginalize;  // the coarse pass finds where the mass is
  coarse_settings.classes = Reduce::marginalize;
  coarse_settings.class_temperature = settings.fine.class_temperature;
  coarse_settings.log_class_prior = settings.fine.log_class_prior;
  if (!c2f) coarse_settings = settings.fine;
  std::int64_t coarse_count = 0, fine_count = 0;

  const int P = static_cast<int>(images.size());
  for (int first = 0; first < P; first += B) {
    const int bc = std::min(B, P - first);
    prepare_batch(set, images.data() + first, bc, list, inv_sigma2, mask, settings, pixels, batch);
    const auto view = [&](int b) {
      PreparedParticle p;
      p.image = images[sz(first + b)];
      p.group = set.optics_index(p.image);
      p.x = batch.x.data() + sz(b) * sz(F);
      p.ctf = batch.ctf.data() + sz(b) * sz(F);
      p.ctf2 = batch.ctf2.data() + sz(b) * sz(F);
      p.inv_sigma2 = inv_sigma2[sz(p.group)].data();
      p.half_norm = batch.half_norm[sz(b)];
      if (settings.full_grids) p.unmasked = batch.unmasked[sz(b)].data(), p.ctf_grid = batch.ctf_grid[sz(b)].data();
      return p;
    };
    for (int b = 0; b < bc; ++b) coarse_reducers[sz(b)].reset(coarse_settings, K);
    scored.first = sz(first);
    scored.particles.resize(sz(bc));
    scored.outcomes.assign(sz(bc), ParticleOutcome{});

    if (shared) {
      // Coarse pass: all particles x coarse shifts against all coarse templates, by chunks.
#pragma omp parallel for schedule(static)
      for (int b = 0; b < bc; ++b) {
        const PreparedParticle p = view(b);
        fill_coarse_rows(batch, b, F, Fc, layout, fine_ramps, p.inv_sigma2,
                         space.relative_shifts ? start[sz(first + b)].shift : Shift{0, 0}, list, scratch[sz(omp_get_thread_num())]);
      }
      // fill_coarse_rows wrote rows for a batch of bc particles: [t][b] with stride bc.
      for (int first_j = 0; first_j < J; first_j += chunk) {
        const int jc = std::min(chunk, J - first_j);
        if (!cache) compute_templates(first_j, jc);
        const std::size_t offset = cache ? sz(first_j) : 0;
        ScoreRequest q;
        q.rows = batch.coarse_rows.data(), q.row_count = bc * layout.shifts, q.row_stride = 2 * Fc, q.particles = bc;
        q.ctf2 = batch.ctf2.data(), q.ctf2_stride = F;
        q.templates = templates.data() + offset * 2 * sz(Fc), q.power = power.data() + offset * sz(Fc);
        q.template_count = jc, q.template_stride = 2 * Fc, q.power_stride = Fc, q.frequencies = Fc;
        q.cross_correlation = settings.cross_correlation;
        backend.score(q, scores.data(), 0);
#pragma omp parallel for schedule(static)
        for (int b = 0; b < bc; ++b) {
          auto& reducer = coarse_reducers[sz(b)];
          for (int t = 0; t < layout.shifts; ++t) {
            const float* row = scores.data() + (sz(t) * sz(bc) + sz(b)) * sz(jc);
            for (int j = 0; j < jc; ++j) {
              const int g = first_j + j;
              reducer.add(g / layout.orientations, static_cast<std::int64_t>(t) * J + g, row[j]);
            }
          }
        }
      }
    }

    // Per particle: the coarse pass of local and fixed searches, the fine pass, the consumer.
    std::int64_t batch_coarse = 0, batch_fine = 0;
#pragma omp parallel for schedule(dynamic, 2) reduction(+ : batch_coarse, batch_fine)
    for (int b = 0; b < bc; ++b) {
      const int tid = omp_get_thread_num();
      Scratch& s = scratch[sz(tid)];
      const PreparedParticle p = scored.particles[sz(b)] = view(b);
      const StartPose& sp = start.empty() ? StartPose{} : start[sz(first + b)];
      const Shift base = space.relative_shifts ? sp.shift : Shift{0, 0};
      const std::vector<Euler>& orientations = coarse_orientations(space, sp, s);
      ParticleOutcome& outcome = scored.outcomes[sz(b)];
      if (!settings.score) {
        outcome.kept.push_back({1.0f, 0, sp.orientation, base, 0});
        outcome.posterior.class_posterior.assign(sz(K), 0.0);
        outcome.posterior.class_posterior[0] = 1;
        continue;
      }
      Posterior coarse;
      if (shared) {
        coarse = coarse_reducers[sz(b)].finish();
      } else {
        std::vector<std::pair<int, Euler>> own;
        for (int k = 0; k < K; ++k)
          for (const auto& e : orientations) own.push_back({k, e});
        s.reducer.reset(coarse_settings, K);
        score_particle(p, own, layout.shift_ids, fine_ramps, base, list, Fc, F, source, settings.cross_correlation, backend, tid, s);
        coarse = s.reducer.finish();
      }
      outcome.coarse_scored = coarse.scored;
      const auto shift_of = [&](int fine_id) {
        const Shift& g = space.shifts.fine[sz(fine_id)];
        return Shift{g.first + base.first, g.second + base.second};
      };
      if (!c2f) {
        for (const auto& h : coarse.kept) {
          const int j = static_cast<int>(h.id % J), t = static_cast<int>(h.id / J);
          const int id = layout.shift_ids[sz(t)];
          outcome.kept.push_back({h.weight, h.k, orientations[sz(j % layout.orientations)], shift_of(id), id});
        }
        outcome.posterior = std::move(coarse);
      } else {
        collect_children(coarse, orientations, layout, space, s);
        const auto children = s.unique_templates;
        const auto shifts = s.unique_shifts;
        s.reducer.reset(settings.fine, K);
        score_particle(p, children, shifts, fine_ramps, base, list, F, F, source, settings.cross_correlation, backend, tid, s);
        outcome.posterior = s.reducer.finish();
        outcome.fine_scored = outcome.posterior.scored;
        const int U = static_cast<int>(children.size());
        for (const auto& h : outcome.posterior.kept) {
          const int j = static_cast<int>(h.id % U), t = static_cast<int>(h.id / U);
          outcome.kept.push_back({h.weight, h.k, children[sz(j)].second, shift_of(shifts[sz(t)]), shifts[sz(t)]});
        }
      }
      batch_coarse += outcome.coarse_scored;
      batch_fine += outcome.fine_scored;
    }
    consumer(scored);
    coarse_count += batch_coarse;
    fine_count += batch_fine;
    if (progress) progress->advance(bc);
  }
  const auto after = backend.stats();
  stats.flops += after.flops - backend_before.flops;
  stats.gemm_seconds += after.seconds - backend_before.seconds;
  stats.coarse_hypotheses += coarse_count;
  stats.fine_hypotheses += fine_count;
  stats.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
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

}  // namespace emcryo::em
