#include "emcryo/em/model2d.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "emcryo/core/error.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/image/fourier.hpp"

namespace emcryo::em {

namespace {

std::size_t sz(int v) { return static_cast<std::size_t>(v); }

/// The class averages as templates: each rotated in plane by the hypothesis' psi.
class ClassTemplates final : public TemplateSource {
 public:
  ClassTemplates(const std::vector<std::vector<float>>& classes, int n) {
    for (const auto& c : classes) projectors_.emplace_back(c, n);
  }
  int classes() const override { return static_cast<int>(projectors_.size()); }
  void sample(int k, const geometry::Euler& o, const FrequencyList& list, Complex* out) const override {
    projectors_[sz(k)].sample(o.psi, list, out);
  }
  ReferenceGrids grids() const override {
    ReferenceGrids g;
    if (projectors_.empty()) return g;
    g.dimensions = 2, g.padding = projectors_.front().padding(), g.m = g.padding * projectors_.front().box(), g.hm = g.m / 2 + 1;
    for (const auto& p : projectors_) g.classes.push_back(p.grid().data());
    return g;
  }

 private:
  std::vector<Projector2D> projectors_;
};

/// No reference yet (the initial random assignment): one flat template.
class FlatTemplate final : public TemplateSource {
 public:
  int classes() const override { return 1; }
  void sample(int, const geometry::Euler&, const FrequencyList& list, Complex* out) const override {
    std::fill(out, out + list.size(), Complex(0, 0));
  }
};

/// M-step sums per template (class x fine angle): data = sum w X C conj(s_t) / sigma^2, weight =
/// sum w C^2 / sigma^2, at the listed frequencies.
struct TemplateSums {
  int F = 0;
  std::vector<Complex> data;
  std::vector<float> weight;
  TemplateSums(int templates, int frequencies)
      : F(frequencies), data(sz(templates) * sz(frequencies)), weight(sz(templates) * sz(frequencies)) {}
};

struct Contribution {
  int j, b, shift_id;
  float weight;
};

/// One block of particles' share of the M-step sums: the templates it uses (rows, ascending) and
/// their data (rows x 2F) and weight (rows x F) sums.
struct BlockSums {
  std::vector<int> rows;
  std::vector<float> data, weight;
};

/// Per-thread buffers of the M-step GEMMs (kept for the whole class2d iteration).
struct MStepScratch {
  std::vector<int> row_of, col_of, col_particle, col_shift;
  std::vector<float> W, V, Y, C2;
};

/// out (M x N) = A (M x K) B^T (B is N x K), in fixed blocks of 64 rows of A, one single-threaded
/// SGEMM each, spread over the threads (or in this thread, inside a parallel region): the same
/// blocks and so the same sums for any thread count (as the scoring backend's GEMMs).
void gemm_in_row_blocks(int M, int N, int K, const float* A, const float* B, float* out) {
  constexpr int kBlock = 64;
  const int blocks = (M + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < blocks; ++i) {
    const int first = i * kBlock, count = std::min(kBlock, M - first);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, count, N, K, 1.0f, A + sz(first) * sz(K), K, B, N, 0.0f,
                out + sz(first) * sz(N), N);
  }
}

/// The sums of particles [b0, b0 + pc) of a batch from their contributions [first, last), as two
/// GEMMs: data (templates x 2F) = W (templates x columns) Y (columns x 2F), where a column is a
/// (particle, shift) pair that some kept hypothesis uses, Y its transform X conj(ramp) C / sigma^2
/// and W the kept weights; weight (templates x F) = V (templates x particles) C^2 / sigma^2, V the
/// weights summed over shifts. Only the templates and columns in use enter: sharp posteriors (a
/// few hypotheses per particle) cost little, and broad ones (~10^4 per particle in early
/// iterations, where a scatter per hypothesis took most of the iteration) run at the GEMM rate.
void block_sums(const ScoredBatch& batch, const Contribution* first, const Contribution* last, int b0, int pc, int shifts, int F,
                int templates, MStepScratch& m, BlockSums& out) {
  m.row_of.assign(sz(templates), -1);
  out.rows.clear();
  m.col_of.assign(sz(pc) * sz(shifts), -1);
  for (const Contribution* c = first; c != last; ++c) {
    if (m.row_of[sz(c->j)] < 0) m.row_of[sz(c->j)] = 0, out.rows.push_back(c->j);
    m.col_of[sz(c->b - b0) * sz(shifts) + sz(c->shift_id)] = 0;
  }
  std::sort(out.rows.begin(), out.rows.end());
  for (std::size_t r = 0; r < out.rows.size(); ++r) m.row_of[sz(out.rows[r])] = static_cast<int>(r);
  m.col_particle.clear(), m.col_shift.clear();
  for (std::size_t i = 0; i < m.col_of.size(); ++i)
    if (m.col_of[i] == 0) {
      m.col_of[i] = static_cast<int>(m.col_particle.size());
      m.col_particle.push_back(b0 + static_cast<int>(i / sz(shifts)));
      m.col_shift.push_back(static_cast<int>(i % sz(shifts)));
    }
  const int R = static_cast<int>(out.rows.size()), C = static_cast<int>(m.col_particle.size());
  m.W.assign(sz(R) * sz(C), 0.0f);
  m.V.assign(sz(R) * sz(pc), 0.0f);
  for (const Contribution* c = first; c != last; ++c) {
    const int r = m.row_of[sz(c->j)];
    m.W[sz(r) * sz(C) + sz(m.col_of[sz(c->b - b0) * sz(shifts) + sz(c->shift_id)])] += c->weight;
    m.V[sz(r) * sz(pc) + sz(c->b - b0)] += c->weight;
  }
  m.Y.resize(sz(C) * 2 * sz(F));
  for (int col = 0; col < C; ++col) {
    const PreparedParticle& p = batch.particles[sz(m.col_particle[sz(col)])];
    const Complex* ramp = batch.fine_ramps + sz(m.col_shift[sz(col)]) * batch.frequencies;
    float* y = m.Y.data() + sz(col) * 2 * sz(F);
    for (int f = 0; f < F; ++f) {
      const Complex v = p.x[f] * std::conj(ramp[f]) * (p.ctf[f] * p.inv_sigma2[f]);
      y[2 * f] = v.real(), y[2 * f + 1] = v.imag();
    }
  }
  m.C2.resize(sz(pc) * sz(F));
  for (int b = 0; b < pc; ++b) std::copy_n(batch.particles[sz(b0 + b)].ctf2, F, m.C2.data() + sz(b) * sz(F));
  out.data.resize(sz(R) * 2 * sz(F));
  out.weight.resize(sz(R) * sz(F));
  gemm_in_row_blocks(R, 2 * F, C, m.W.data(), m.Y.data(), out.data.data());
  gemm_in_row_blocks(R, F, pc, m.V.data(), m.C2.data(), out.weight.data());
  for (int j : out.rows) m.row_of[sz(j)] = -1;
}

/// Adds one batch's kept hypotheses (contributions in particle order) to the sums, in blocks of 32
/// particles: the blocks' sums are computed in parallel, one block per thread, then added in block
/// order, so the sums do not depend on the thread count.
void add_batch(const ScoredBatch& batch, const std::vector<Contribution>& contributions, int shifts, TemplateSums& sums,
               std::vector<MStepScratch>& scratch, std::vector<BlockSums>& blocks) {
  constexpr int kParticles = 32;
  const int F = sums.F, J = static_cast<int>(sums.weight.size() / sz(F));
  const int bc = static_cast<int>(batch.particles.size()), count = (bc + kParticles - 1) / kParticles;
  // Each block's range of contributions.
  std::vector<std::size_t> bounds(sz(count) + 1, contributions.size());
  bounds[0] = 0;
  for (int i = 1, at = 0; i < count; ++i) {
    while (sz(at) < contributions.size() && contributions[sz(at)].b < i * kParticles) ++at;
    bounds[sz(i)] = sz(at);
  }
  blocks.resize(std::max(blocks.size(), sz(count)));
  scratch.resize(std::max<std::size_t>(scratch.size(), sz(omp_get_max_threads())));
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < count; ++i) {
    const int b0 = i * kParticles;
    blocks[sz(i)].rows.clear();
    if (bounds[sz(i)] == bounds[sz(i) + 1]) continue;
    block_sums(batch, contributions.data() + bounds[sz(i)], contributions.data() + bounds[sz(i) + 1], b0, std::min(kParticles, bc - b0), shifts, F,
               J, scratch[sz(omp_get_thread_num())], blocks[sz(i)]);
  }
  for (int i = 0; i < count; ++i) {
    const BlockSums& block = blocks[sz(i)];
    const int R = static_cast<int>(block.rows.size());
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; ++r) {
      const int j = block.rows[sz(r)];
      float* data = reinterpret_cast<float*>(sums.data.data() + sz(j) * sz(F));
      float* weight = sums.weight.data() + sz(j) * sz(F);
      const float* d = block.data.data() + sz(r) * 2 * sz(F);
      const float* w = block.weight.data() + sz(r) * sz(F);
      for (int f = 0; f < 2 * F; ++f) data[f] += d[f];
      for (int f = 0; f < F; ++f) weight[f] += w[f];
    }
  }
}

/// The same sums as add_batch, by a backend that keeps them on its device (ScoringBackend::
/// sums_templates): the batch's arrays and its kept hypotheses go up, nothing comes back until
/// the chunk's end (end_template_sums), or the E-step's (fold_template_sums, take_template_totals).
void add_batch_on_device(const ScoredBatch& batch, const std::vector<Contribution>& contributions, int shifts, ScoringBackend& backend,
                         std::vector<float>& ctf_isg, std::vector<SumTerm>& terms) {
  const int bc = static_cast<int>(batch.particles.size()), F = static_cast<int>(batch.frequencies);
  ctf_isg.resize(sz(bc) * sz(F));
  // The E-step's batch arrays are [particle][F], one block: the device reads them as such.
  for (int b = 0; b < bc; ++b) {
    const PreparedParticle& p = batch.particles[sz(b)];
    if (p.x != batch.particles[0].x + sz(b) * sz(F) || p.ctf2 != batch.particles[0].ctf2 + sz(b) * sz(F))
      fail("class2d: device sums need the batch's particles in one block (internal error)");
  }
#pragma omp parallel for schedule(static)
  for (int b = 0; b < bc; ++b) {
    const PreparedParticle& p = batch.particles[sz(b)];
    for (int f = 0; f < F; ++f) ctf_isg[sz(b) * sz(F) + sz(f)] = p.ctf[f] * p.inv_sigma2[f];
  }
  // ~10^7 terms a batch in a broad first iteration: converted over the threads.
  terms.resize(contributions.size());
  const auto count = static_cast<std::ptrdiff_t>(contributions.size());
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t i = 0; i < count; ++i) {
    const Contribution& c = contributions[static_cast<std::size_t>(i)];
    terms[static_cast<std::size_t>(i)] = {c.j, c.b, c.shift_id, c.weight};
  }
  TemplateSumsBatch q;
  q.particles = bc, q.shifts = shifts, q.frequencies = F;
  q.x = reinterpret_cast<const float*>(batch.particles[0].x), q.ctf_isg = ctf_isg.data(), q.ctf2 = batch.particles[0].ctf2;
  q.ramps = reinterpret_cast<const float*>(batch.fine_ramps), q.terms = terms.data(), q.term_count = terms.size();
  backend.add_template_sums(q);
}

/// Adds -log(1 - p_k) per class, p_k the untempered class posterior from the class evidences and
/// log priors (empty: uniform); 1 - p_k is floored at 1e-8 (a class the particle cannot do without).
void add_removal_cost(const Posterior& posterior, const std::vector<double>& log_prior, std::vector<double>& cost) {
  const auto& evidence = posterior.class_log_evidence;
  std::vector<double> log_p(evidence.size(), -std::numeric_limits<double>::infinity());
  double top = -std::numeric_limits<double>::infinity();
  for (std::size_t k = 0; k < evidence.size(); ++k)
    if (std::isfinite(evidence[k])) top = std::max(top, log_p[k] = evidence[k] + (log_prior.empty() ? 0.0 : log_prior[k]));
  if (!std::isfinite(top)) return;
  double sum = 0;
  for (double v : log_p) sum += std::exp(v - top);
  for (std::size_t k = 0; k < evidence.size(); ++k) {
    const double p = std::exp(log_p[k] - top) / sum;
    cost[k] -= std::log(std::max(1 - p, 1e-8));
  }
}

/// A particle's results through a chunk's message.
void put_result(mpi::Message& m, const ParticleResult& r) {
  m.put(r.best_class), m.put(r.psi), m.put(r.shift_x), m.put(r.shift_y), m.put(r.max_probability);
  m.put(r.significant_samples), m.put(r.log_likelihood), m.put(r.class_posterior_max);
  put_hypotheses(m, r.top);
}

ParticleResult get_result(mpi::Message& m) {
  ParticleResult r;
  r.best_class = m.get<int>(), r.psi = m.get<double>(), r.shift_x = m.get<double>(), r.shift_y = m.get<double>();
  r.max_probability = m.get<double>(), r.significant_samples = m.get<int>(), r.log_likelihood = m.get<double>();
  r.class_posterior_max = m.get<double>();
  r.top = get_hypotheses(m);
  return r;
}

}  // namespace

Class2DSearch make_class2d_search(double psi_step, double range, double step) {
  return {psi_grid(psi_step), make_shift_grid(range, step)};
}

Class2DModel class2d_iteration(const io::ParticleSet& set, const std::vector<std::size_t>& active, const Class2DModel& model,
                               const Class2DSearch& search, const std::vector<float>& mask, const Class2DSettings& settings,
                               ScoringBackend& backend, std::vector<ParticleResult>& results, Class2DStats& stats) {
  const int n = model.box;
  const int K = static_cast<int>(model.classes.size());
  const int R = static_cast<int>(search.psi.size());
  const FrequencyList list = make_frequency_list(n, model.radius);
  const int F = static_cast<int>(list.size());
  const std::size_t groups = model.sigma2.size();
  const int shells = n / 2 + 1;
  if (F == 0) fail("class2d: empty frequency range (radius {:.1f} px)", model.radius);

  // The hypothesis space: coarse angles are every other fine one, coarse shifts every other.
  SearchSpace space;
  space.in_plane = true;
  space.cell = 2 * 360.0 / R;
  space.shifts = search.shifts;
  space.coarse_to_fine = settings.coarse_to_fine && !settings.random_assignment;
  space.coarse_radius = coarse_radius_for(space.cell, 2 * search.shifts.step, n, model.radius);
  for (int r = 0; r < R; r += space.coarse_to_fine ? 2 : 1) space.grid.push_back({0, 0, search.psi[sz(r)]});
  for (int r = 0; r < R; ++r) space.fine_grid.push_back({0, 0, search.psi[sz(r)]});
  std::vector<StartPose> start;
  std::vector<int> assigned_class;
  if (settings.random_assignment) {
    // Initial classes: each particle in a random class at a random angle, centred (seeded per particle).
    space.orientations = SearchSpace::Orientations::fixed;
    space.shifts = make_shift_grid(0, 1);
    for (std::size_t i : active) {
      auto rng = item_rng(settings.seed, i);
      assigned_class.push_back(static_cast<int>(rng() % static_cast<std::uint64_t>(K)));
      start.push_back({{0, 0, search.psi[rng() % static_cast<std::uint64_t>(R)]}, {0, 0}});
    }
  }

  EStepSettings es;
  es.use_ctf = settings.use_ctf;
  es.batch = settings.batch;
  es.fine.classes = settings.hard_classes ? Reduce::maximize : Reduce::marginalize;
  es.fine.poses = settings.force_max_poses ? Reduce::maximize : Reduce::marginalize;
  es.fine.class_temperature = settings.class_temperature;
  for (double p : model.priors) es.fine.log_class_prior.push_back(std::log(std::max(p, 1e-12)));
  // 2D posteriors are broad for many iterations (random starts, class temperature), and cutting
  // them short costs class recovery (measured on the 8-view test set: ARI 0.72 with at most 300
  // hypotheses per particle, 0.93 keeping 99.999% of the mass), so the mass cut is loose and the
  // coarse pass, not a cap, bounds the work.
  es.fine.cap = settings.max_significant;
  es.fine.mass = es.coarse.mass = 0.99999;
  es.coarse.cap = 1000;
  if (settings.random_assignment) es.fine.log_class_prior.clear();

  // A device backend keeps the M-step sums on the card (the sums of wide early posteriors are most
  // of an iteration's CPU time).
  const bool device_sums = backend.sums_templates();
  // One process folds each chunk as it computes it: the chunk's template sums (templates x 3F
  // floats, hundreds of MB at box 256 and K = 100) are added from where they are instead of
  // being copied into the message and out again, in the same order, so the totals are the same.
  const bool fold_in_place = mpi::folds_where_computed();
  // ... and where the sums are on a device, it folds them there and brings them back once.
  const bool fold_on_device = fold_in_place && device_sums;
  // Sums of the whole set (every rank's, folded in chunk order) and of the chunk being computed
  // (none on the host where the device folds: 1.7 GB at box 256 and K = 100).
  TemplateSums sums(K * R, F), part(fold_on_device ? 0 : K * R, F);
  std::vector<std::vector<double>> residual(groups, std::vector<double>(sz(shells), 0.0)), residual_count = residual;
  auto part_residual = residual, part_residual_count = residual;
  std::vector<double> class_mass(sz(K), 0.0), part_class_mass = class_mass;
  std::vector<double> removal_cost(sz(K), 0.0), part_removal_cost = removal_cost;
  const ClassTemplates class_templates(settings.random_assignment ? std::vector<std::vector<float>>{} : model.classes, n);
  const FlatTemplate flat;
  const TemplateSource& source = settings.random_assignment ? static_cast<const TemplateSource&>(flat) : class_templates;

  std::vector<float> ctf_isg;
  std::vector<SumTerm> terms;
  std::vector<MStepScratch> mstep_scratch;
  std::vector<BlockSums> block_sums;
  std::vector<Contribution> contributions;  // a batch's kept hypotheses in particle order
  std::vector<std::size_t> offsets;         // where each particle's start
  const auto consumer = [&](const ScoredBatch& batch) {
    const int bc = static_cast<int>(batch.particles.size());
    offsets.assign(sz(bc) + 1, 0);
    for (int b = 0; b < bc; ++b) offsets[sz(b) + 1] = offsets[sz(b)] + batch.outcomes[sz(b)].kept.size();
    contributions.resize(offsets.back());
    std::vector<std::vector<double>> noise(sz(bc)), noise_count(sz(bc));
#pragma omp parallel
    {
      std::vector<Complex> sample(sz(F));  // per thread: the best template, for the noise residual
      std::vector<float> row(2 * sz(F));
#pragma omp for schedule(static)
    for (int b = 0; b < bc; ++b) {
      const std::size_t a = batch.first + sz(b);
      const ParticleOutcome& out = batch.outcomes[sz(b)];
      // Each particle's contributions in their own slots: built in parallel, in one thread's order.
      Contribution* c = contributions.data() + offsets[sz(b)];
      for (const auto& h : out.kept) {
        const int k = settings.random_assignment ? assigned_class[a] : h.k;
        *c++ = {k * R + psi_grid_index(h.orientation.psi, R), b, h.shift_id, h.weight};
      }
      ParticleResult& res = results[a];
      res = ParticleResult{};
      const Hypothesis& best = out.kept.front();
      res.best_class = settings.random_assignment ? assigned_class[a] : best.k;
      res.psi = best.orientation.psi;
      res.shift_x = best.shift.first, res.shift_y = best.shift.second;
      res.max_probability = best.weight;
      res.significant_samples = static_cast<int>(out.kept.size());
      res.class_posterior_max = settings.random_assignment ? 1.0 : out.posterior.class_posterior[sz(out.posterior.best_class)];
      res.log_likelihood = out.posterior.log_evidence - batch.particles[sz(b)].half_norm;
      res.top.assign(out.kept.begin(), out.kept.begin() + std::min<std::ptrdiff_t>(settings.keep_top, static_cast<std::ptrdiff_t>(out.kept.size())));
      if (settings.random_assignment) continue;
      // Noise: residual |X - C s A|^2 per shell at the best hypothesis.
      const PreparedParticle& p = batch.particles[sz(b)];
      source.sample(best.k, best.orientation, list, sample.data());
      store_template_row(sample.data(), F, row.data(), nullptr);
      noise[sz(b)].assign(sz(shells), 0.0), noise_count[sz(b)].assign(sz(shells), 0.0);
      add_noise_residual(list, p.x, p.ctf, batch.fine_ramps + sz(best.shift_id) * batch.frequencies, row.data(), noise[sz(b)].data(),
                         noise_count[sz(b)].data());
    }
    }
    for (const Contribution& c : contributions) part_class_mass[sz(c.j / R)] += c.weight;
    for (int b = 0; b < bc; ++b) {
      if (!settings.random_assignment) add_removal_cost(batch.outcomes[sz(b)].posterior, es.fine.log_class_prior, part_removal_cost);
      if (noise[sz(b)].empty()) continue;
      const auto g = sz(batch.particles[sz(b)].group);
      for (int s = 0; s < shells; ++s)
        part_residual[g][sz(s)] += noise[sz(b)][sz(s)], part_residual_count[g][sz(s)] += noise_count[sz(b)][sz(s)];
    }
    if (device_sums) add_batch_on_device(batch, contributions, static_cast<int>(space.shifts.fine.size()), backend, ctf_isg, terms);
    else add_batch(batch, contributions, static_cast<int>(space.shifts.fine.size()), part, mstep_scratch, block_sums);
  };

  // The E-step chunk by chunk (each on its rank), every chunk's sums from zero, folded in chunk
  // order on rank 0 and shared from there: the same sums with any number of ranks and threads.
  const mpi::Chunks chunks(active.size());
  EStepStats es_stats;
  Progress progress(settings.random_assignment ? "initial classes" : "E-step", static_cast<std::int64_t>(chunks.owned_items()));
  ExpectationRun estep(set, active, start, space, source, list, model.sigma2, mask, es, backend);
  const auto add_in_parallel = [](auto& into, const auto& from) {
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < into.size(); ++i) into[i] += from[i];
  };
  const auto compute = [&](int c, mpi::Message& message) {
    if (!fold_on_device) {
#pragma omp parallel for schedule(static)
      for (std::size_t i = 0; i < part.data.size(); ++i) part.data[i] = Complex(0, 0);
#pragma omp parallel for schedule(static)
      for (std::size_t i = 0; i < part.weight.size(); ++i) part.weight[i] = 0.0f;
    }
    for (std::size_t g = 0; g < groups; ++g)
      std::fill(part_residual[g].begin(), part_residual[g].end(), 0.0), std::fill(part_residual_count[g].begin(), part_residual_count[g].end(), 0.0);
    std::fill(part_class_mass.begin(), part_class_mass.end(), 0.0);
    std::fill(part_removal_cost.begin(), part_removal_cost.end(), 0.0);
    EStepStats chunk_stats;
    if (device_sums) backend.begin_template_sums(K * R, F);
    estep.run(chunks.begin(c), chunks.end(c), consumer, chunk_stats, &progress);
    if (fold_on_device) backend.fold_template_sums();
    else if (device_sums) backend.end_template_sums(reinterpret_cast<float*>(part.data.data()), part.weight.data());
    for (std::size_t a = chunks.begin(c); a < chunks.end(c); ++a) put_result(message, results[a]);
    if (!fold_in_place) message.put(part.data), message.put(part.weight);
    message.put(part_class_mass), message.put(part_removal_cost);
    for (std::size_t g = 0; g < groups; ++g) message.put(part_residual[g]), message.put(part_residual_count[g]);
    put_stats(message, chunk_stats);
  };
  const auto fold = [&](int c, mpi::Message& message) {
    for (std::size_t a = chunks.begin(c); a < chunks.end(c); ++a) results[a] = get_result(message);
    if (!fold_in_place) message.add_into(sums.data), message.add_into(sums.weight);
    else if (!fold_on_device) add_in_parallel(sums.data, part.data), add_in_parallel(sums.weight, part.weight);
    // (else fold_template_sums has folded them on the device)
    message.add_into(class_mass), message.add_into(removal_cost);
    for (std::size_t g = 0; g < groups; ++g) message.add_into(residual[g]), message.add_into(residual_count[g]);
    add_stats(message, es_stats);
  };
  // What every rank needs next: every particle's result (convergence figures, next E-step) and the totals.
  const auto share = [&](mpi::Message& message) {
    for (const auto& r : results) put_result(message, r);
    message.put(sums.data), message.put(sums.weight), message.put(class_mass), message.put(removal_cost);
    for (std::size_t g = 0; g < groups; ++g) message.put(residual[g]), message.put(residual_count[g]);
    message.put(es_stats);
  };
  const auto take = [&](mpi::Message& message) {
    for (auto& r : results) r = get_result(message);
    message.get_into(sums.data), message.get_into(sums.weight), message.get_into(class_mass), message.get_into(removal_cost);
    for (std::size_t g = 0; g < groups; ++g) message.get_into(residual[g]), message.get_into(residual_count[g]);
    es_stats = message.get<EStepStats>();
  };
  mpi::reduce_in_chunk_order(chunks, {compute, fold, share, take});
  if (fold_on_device) backend.take_template_totals(reinterpret_cast<float*>(sums.data.data()), sums.weight.data());
  progress.finish();
  stats.flops += es_stats.flops;
  stats.gemm_seconds += es_stats.gemm_seconds;
  stats.seconds += es_stats.seconds;
  stats.coarse_hypotheses += es_stats.coarse_hypotheses;
  stats.fine_hypotheses += es_stats.fine_hypotheses;
  stats.stages += es_stats.stages;
  stats.removal_cost = removal_cost;

  // M-step: rotate each template's sums back into its class, then the regularised average.
  const auto m_start = std::chrono::steady_clock::now();
  Class2DModel next = model;
  next.tau2.assign(sz(K), std::vector<double>(sz(shells), 0.0));
  next.resolution_shell.assign(sz(K), 0);
  const double total_mass = std::max(1e-12, std::accumulate(class_mass.begin(), class_mass.end(), 0.0));
  const double pad2 = 4.0;  // padding factor squared: weights per padded-grid pixel
#pragma omp parallel for schedule(dynamic, 1)
  for (int k = 0; k < K; ++k) {
    BackProjector2D bp(n);
    for (int r = 0; r < R; ++r) {
      const std::size_t j = sz(k * R + r);
      bp.insert(search.psi[sz(r)], list, sums.data.data() + j * sz(F), sums.weight.data() + j * sz(F));
    }
    std::vector<double> regularisation(sz(shells), 0.0);
    const auto& tau2 = model.tau2.empty() ? std::vector<double>() : model.tau2[sz(k)];
    for (int s = 0; s < shells; ++s)
      if (!tau2.empty() && tau2[sz(s)] > 0) regularisation[sz(s)] = 1.0 / (settings.tau2_fudge * tau2[sz(s)] * pad2);
    auto average = bp.reconstruct(regularisation);
    image::apply_mask(average.data(), mask);
    // Signal prior for the next iteration from this average's power, and the SSNR resolution.
    const auto spectrum = image::fft_forward_2d(average, n);
    const auto full = make_frequency_list(n, n / 2.0 - 1);
    std::vector<double> power(sz(shells), 0.0), count(power.size(), 0.0);
    for (std::size_t f = 0; f < full.size(); ++f) {
      power[sz(full.shell[f])] += std::norm(spectrum[sz(full.index[f])]);
      count[sz(full.shell[f])] += 1;
    }
    const auto mean_weight = bp.mean_weight_per_shell();
    int resolution = 1;
    for (int s = 1; s < shells; ++s) {
      auto& t2 = next.tau2[sz(k)][sz(s)];
      t2 = count[sz(s)] > 0 ? power[sz(s)] / (2 * count[sz(s)]) : 0;
      const double ssnr = t2 * mean_weight[sz(s)] * pad2;
      if (s <= static_cast<int>(model.radius) && ssnr >= 1 && resolution == s - 1) resolution = s;
    }
    next.resolution_shell[sz(k)] = resolution;
    next.classes[sz(k)] = std::move(average);
    next.priors[sz(k)] = class_mass[sz(k)] / total_mass;
  }
  // Noise per shell: only the shells seen this iteration change.
  for (std::size_t g = 0; g < groups; ++g)
    for (int s = 1; s < shells; ++s)
      if (residual_count[g][sz(s)] > 0) next.sigma2[g][sz(s)] = std::max(1e-12, residual[g][sz(s)] / (2 * residual_count[g][sz(s)]));
  stats.m_step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - m_start).count();
  return next;
}

std::vector<double> class2d_removal_costs(const Class2DModel& model, const Class2DStats& stats, double particles) {
  std::vector<double> cost(std::min(stats.removal_cost.size(), model.priors.size()), 0.0);
  for (std::size_t k = 0; k < cost.size(); ++k) {
    const double prior = std::min(model.priors[k], 1 - 1e-12);
    cost[k] = (stats.removal_cost[k] + particles * std::log1p(-prior)) / std::max(prior * particles, 1.0);
  }
  return cost;
}

int class2d_redundant_class(const Class2DModel& model, const Class2DStats& stats, double particles, const RedundancyRule& rule,
                            const std::vector<bool>& skip) {
  const auto cost = class2d_removal_costs(model, stats, particles);
  if (cost.empty()) return -1;
  auto sorted = cost;
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(sorted.size() / 2), sorted.end());
  int chosen = -1;
  double lowest = std::max(rule.nats, rule.fraction_of_median * sorted[sorted.size() / 2]);
  for (std::size_t k = 0; k < cost.size(); ++k)
    if (!(k < skip.size() && skip[k]) && cost[k] < lowest) lowest = cost[k], chosen = static_cast<int>(k);
  return chosen;
}

double class2d_working_radius(const Class2DModel& model, double lowest, double highest) {
  const std::size_t K = model.resolution_shell.size();
  if (K == 0) return std::clamp(model.radius, lowest, highest);
  std::vector<std::size_t> order(K);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return model.resolution_shell[a] < model.resolution_shell[b]; });
  const double total = std::accumulate(model.priors.begin(), model.priors.end(), 0.0);
  double below = 0;
  int median_shell = model.resolution_shell[order.back()];
  for (std::size_t k : order) {
    below += model.priors[k];
    if (below >= 0.5 * total) {
      median_shell = model.resolution_shell[k];
      break;
    }
  }
  return std::clamp(static_cast<double>(median_shell) + 3, lowest, highest);
}

}  // namespace emcryo::em
