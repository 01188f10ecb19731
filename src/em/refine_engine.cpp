#include "emcryo/em/refine_engine.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

#include "emcryo/core/error.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"

namespace emcryo::em {

namespace {
using Clock = std::chrono::steady_clock;
using geometry::Euler;
using geometry::Mat3;

/// What the scoring of one batch leaves for each particle: its data at the listed frequencies
/// (for the noise residual) and on the whole half grid (for the back-projection).
struct PreparedBatch {
  std::vector<float> y_rows;                 // [particle][shift] rows [Re Y | -Im Y]
  std::vector<float> ctf2;                   // [particle][F] C^2 / (2 sigma^2)
  std::vector<Complex> listed_x;             // [particle][F] masked transform
  std::vector<float> listed_ctf;             // [particle][F]
  std::vector<std::vector<Complex>> unmasked;  // [particle] half grid, unmasked transform
  std::vector<std::vector<float>> ctf;       // [particle] half grid CTF
};

/// One scored hypothesis: weight and index t * count + j (shift t, orientation j).
using Hypothesis = std::pair<float, int>;

/// Picks the hypotheses of one particle from scores that arrive in chunks of orientations, so
/// the whole particles x shifts x orientations score matrix never has to exist at once.
/// Maximum a posteriori by default; with marginalisation the hypotheses holding 99.9% of the
/// posterior mass (at most 64), normalised, best first. CC iterations always maximise.
class HypothesisSelector {
 public:
  void reset(bool cc, bool marginalize) {
    cc_ = cc, marginalize_ = marginalize && !cc;
    best_ = -1e30f, best_index_ = 0;
    candidates_.clear();
  }
  /// Scores of orientations [first, first + count) of `total`: cross[t * stride + j], norm[j].
  void add(const float* cross, const float* norm, int shifts, int count, int stride, int first, int total) {
    for (int t = 0; t < shifts; ++t)
      for (int j = 0; j < count; ++j) {
        const float c = cross[static_cast<std::size_t>(t) * static_cast<std::size_t>(stride) + static_cast<std::size_t>(j)];
        const float v = cc_ ? c / std::sqrt(std::max(norm[j], 1e-30f)) : c - norm[j];
        if (v > best_) best_ = v, best_index_ = t * total + first + j;
        if (marginalize_ && v > best_ - kWindow) candidates_.emplace_back(v, t * total + first + j);
      }
    // Keep the list short: drop what has fallen out of the window below the best so far.
    if (candidates_.size() > 8192) prune();
  }
  std::vector<Hypothesis> finish() {
    std::vector<Hypothesis> kept;
    if (!marginalize_) {
      kept.emplace_back(1.0f, best_index_);
      return kept;
    }
    prune();
    for (auto& c : candidates_) c.first = std::exp(c.first - best_);
    // The best comes first (weight exp(0) = 1 is the largest), so kept.front() is the MAP pose.
    std::sort(candidates_.begin(), candidates_.end(), std::greater<>());
    double total = 0;
    for (const auto& c : candidates_) total += c.first;
    double cumulative = 0;
    for (const auto& c : candidates_) {
      if (kept.size() >= 64 || cumulative >= 0.999 * total) break;
      cumulative += c.first;
      kept.push_back(c);
    }
    for (auto& k : kept) k.first = static_cast<float>(k.first / cumulative);
    return kept;
  }

 private:
  static constexpr float kWindow = 12;  // log-posterior below the best that can still matter (e^-12)
  void prune() {
    const float floor = best_ - kWindow;
    std::erase_if(candidates_, [floor](const Hypothesis& c) { return c.first <= floor; });
  }
  bool cc_ = false, marginalize_ = false;
  float best_ = -1e30f;
  int best_index_ = 0;
  std::vector<Hypothesis> candidates_;  // (log-posterior, index), later (weight, index)
};

/// A hypothesis that enters the reconstruction with its normalised posterior weight.
struct PoseHypothesis {
  float weight;
  Euler orientation;
  Shift shift;
};

struct OversampleScratch {
  std::vector<Complex> sample, ramps;
  std::vector<float> rows, templates, norms, scores;
  std::vector<std::pair<double, PoseHypothesis>> fine;
};

/// Adaptive oversampling (marginalisation mode): each of the (at most 16) most probable coarse
/// hypotheses is split into 8 orientations (rotation vectors (+-1, +-1, +-1) x cell/4 around it,
/// the centres of its sub-cells) times 4 shifts (+-offset_step/4 in x and y), every fine
/// hypothesis is scored exactly, and those holding 99.9% of the fine posterior mass (at most
/// 64) are kept, normalised, best first.
template <class OrientationOf, class ShiftOf>
std::vector<PoseHypothesis> oversample(const std::vector<Hypothesis>& coarse, OrientationOf orientation_of, ShiftOf shift_of,
                                       double cell, double offset_step, const Projector& reference, const FrequencyList& list,
                                       const Complex* x, const float* ctf, const float* inv_sigma2, const float* half_ctf2,
                                       OversampleScratch& s) {
  const int F = static_cast<int>(list.size());
  constexpr int kOrientations = 8, kShifts = 4;
  s.sample.resize(static_cast<std::size_t>(F));
  s.ramps.resize(static_cast<std::size_t>(kShifts) * F);
  s.rows.resize(static_cast<std::size_t>(kShifts) * 2 * F);
  s.templates.resize(static_cast<std::size_t>(kOrientations) * 2 * F);
  s.norms.resize(kOrientations);
  s.scores.resize(kShifts * kOrientations);
  s.fine.clear();
  const double quarter = cell / 4, shift_quarter = offset_step / 4;
  for (std::size_t c = 0; c < coarse.size() && c < 16; ++c) {
    const Mat3 centre = geometry::euler_to_matrix(orientation_of(coarse[c].second));
    const Shift centre_shift = shift_of(coarse[c].second);
    Euler fine_orientations[kOrientations];
    for (int o = 0; o < kOrientations; ++o) {
      const geometry::Vec3 axis{o & 1 ? 1.0 : -1.0, o & 2 ? 1.0 : -1.0, o & 4 ? 1.0 : -1.0};
      fine_orientations[o] = geometry::matrix_to_euler(geometry::axis_angle(axis, quarter * std::sqrt(3.0)) * centre);
      reference.sample(geometry::euler_to_matrix(fine_orientations[o]), list, s.sample.data());
      store_template_row(s.sample.data(), F, s.templates.data() + static_cast<std::size_t>(o) * 2 * F, nullptr);
      double norm = 0;
      for (int f = 0; f < F; ++f) norm += std::norm(s.sample[static_cast<std::size_t>(f)]) * half_ctf2[f];
      s.norms[static_cast<std::size_t>(o)] = static_cast<float>(norm);
    }
    std::vector<Shift> fine_shifts;
    for (int t = 0; t < kShifts; ++t)
      fine_shifts.push_back({static_cast<float>(centre_shift.first + (t & 1 ? shift_quarter : -shift_quarter)),
                             static_cast<float>(centre_shift.second + (t & 2 ? shift_quarter : -shift_quarter))});
    shift_ramps(list, fine_shifts, 0, 0, s.ramps.data());
    fill_score_rows(x, ctf, inv_sigma2, s.ramps.data(), kShifts, F, s.rows.data());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kShifts, kOrientations, 2 * F, 1.0f, s.rows.data(), 2 * F, s.templates.data(),
                2 * F, 0.0f, s.scores.data(), kOrientations);
    for (int t = 0; t < kShifts; ++t)
      for (int o = 0; o < kOrientations; ++o)
        s.fine.push_back({static_cast<double>(s.scores[static_cast<std::size_t>(t * kOrientations + o)]) - s.norms[static_cast<std::size_t>(o)],
                          PoseHypothesis{0, fine_orientations[o], fine_shifts[static_cast<std::size_t>(t)]}});
  }
  std::sort(s.fine.begin(), s.fine.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  const double best = s.fine.front().first;
  double total = 0;
  for (auto& f : s.fine) total += std::exp(f.first - best);
  std::vector<PoseHypothesis> kept;
  double cumulative = 0;
  for (const auto& f : s.fine) {
    if (kept.size() >= 64 || cumulative >= 0.999 * total) break;
    const double w = std::exp(f.first - best);
    cumulative += w;
    kept.push_back(f.second);
    kept.back().weight = static_cast<float>(w);
  }
  for (auto& k : kept) k.weight = static_cast<float>(k.weight / cumulative);
  return kept;
}

}  // namespace

std::vector<Euler> local_orientations(const Euler& centre, double step) {
  const Mat3 current = geometry::euler_to_matrix(centre);
  std::vector<Euler> out;
  out.reserve(125);
  for (int u = -2; u <= 2; ++u)
    for (int v = -2; v <= 2; ++v)
      for (int w = -2; w <= 2; ++w) {
        const double length = std::sqrt(u * u + v * v + w * w);
        const Mat3 turn = length > 0 ? geometry::axis_angle({static_cast<double>(u), static_cast<double>(v), static_cast<double>(w)},
                                                            step * length / 2)
                                     : Mat3::identity();
        out.push_back(geometry::matrix_to_euler(turn * current));
      }
  return out;
}

NoiseSums::NoiseSums(std::size_t groups, std::size_t shells)
    : sum(groups, std::vector<double>(shells, 0.0)), count(groups, std::vector<double>(shells, 0.0)) {}

void NoiseSums::add(const NoiseSums& other) {
  for (std::size_t g = 0; g < sum.size(); ++g)
    for (std::size_t s = 0; s < sum[g].size(); ++s) sum[g][s] += other.sum[g][s], count[g][s] += other.count[g][s];
}

void NoiseSums::update(std::vector<std::vector<double>>& sigma2) const {
  for (std::size_t g = 0; g < sigma2.size() && g < sum.size(); ++g)
    for (std::size_t s = 1; s < sigma2[g].size() && s < sum[g].size(); ++s)
      if (count[g][s] > 0) sigma2[g][s] = std::max(1e-12, sum[g][s] / (2 * count[g][s]));
}

void expectation_3d(const io::ParticleSet& set, const std::vector<std::size_t>& image_index, std::vector<Pose3D>& poses,
                    const Projector& reference, const FrequencyList& list, const std::vector<std::vector<double>>& sigma2,
                    const std::vector<float>& particle_mask, const PoseSearch& search,
                    const std::vector<Mat3>& symmetry, const ExpectationSettings& settings,
                    std::vector<BackProjector>& thread_maps, std::vector<NoiseSums>& thread_noise, ExpectationStats& stats,
                    Progress* progress) {
  const int n = set.box();
  const double pixel = set.pixel_size();
  const int F = static_cast<int>(list.size());
  const int T = static_cast<int>(search.shifts.size());
  if (F == 0 || T == 0) fail("refine: empty search (F = {}, shifts = {})", F, T);
  if (thread_maps.size() < static_cast<std::size_t>(omp_get_max_threads()) || thread_noise.size() < thread_maps.size())
    fail("refine: internal error: {} per-thread accumulators for {} threads", thread_maps.size(), omp_get_max_threads());
  const std::size_t pixels = static_cast<std::size_t>(n) * n, half = image::half_size(n, n);
  const auto shells = image::shell_index_2d(n);
  std::vector<Mat3> symmetry_t;
  for (const auto& s : symmetry) symmetry_t.push_back(geometry::transpose(s));
  std::vector<std::vector<float>> inv_sigma2(sigma2.size(), std::vector<float>(static_cast<std::size_t>(F)));
  std::vector<std::vector<float>> inv_sigma2_grid(sigma2.size(), std::vector<float>(half));
  for (std::size_t g = 0; g < sigma2.size(); ++g) {
    for (int f = 0; f < F; ++f)
      inv_sigma2[g][static_cast<std::size_t>(f)] = static_cast<float>(1.0 / sigma2[g][static_cast<std::size_t>(list.shell[static_cast<std::size_t>(f)])]);
    for (std::size_t k = 0; k < half; ++k)
      inv_sigma2_grid[g][k] = static_cast<float>(1.0 / sigma2[g][std::min(static_cast<std::size_t>(shells[k]), sigma2[g].size() - 1)]);
  }

  // Global search: grid orientations as template rows, scored batch by batch by GEMMs over chunks
  // of orientations, so neither the score matrix nor (for large boxes and fine grids) the
  // templates have to be held whole. Templates are computed once when they fit in the cache
  // budget, else chunk by chunk for each batch: sampling costs a few percent of the GEMM it feeds.
  constexpr std::size_t kTemplateCacheBytes = std::size_t{192} << 20, kChunkBytes = std::size_t{32} << 20;
  const int J = search.local ? 0 : static_cast<int>(search.grid.size());
  const int B = std::max(1, settings.batch);
  const std::size_t row_bytes = static_cast<std::size_t>(3 * F) * sizeof(float);  // [Re | Im] row and |A|^2
  const bool cache_templates = static_cast<std::size_t>(J) * row_bytes <= kTemplateCacheBytes;
  int chunk = std::min<int>(J, std::max<int>(256, static_cast<int>(kChunkBytes / (static_cast<std::size_t>(B) * T * sizeof(float)))));
  if (!cache_templates) chunk = std::min<int>(chunk, std::max<int>(256, static_cast<int>(kChunkBytes / row_bytes)));
  const std::size_t held = static_cast<std::size_t>(cache_templates ? J : chunk);
  std::vector<float> templates(held * 2 * F), power(held * F);
  const auto compute_templates = [&](int first, int count) {
#pragma omp parallel
    {
      std::vector<Complex> sample(static_cast<std::size_t>(F));
#pragma omp for
      for (int j = 0; j < count; ++j) {
        const std::size_t row = static_cast<std::size_t>(cache_templates ? first + j : j);
        reference.sample(geometry::euler_to_matrix(search.grid[static_cast<std::size_t>(first + j)]), list, sample.data());
        store_template_row(sample.data(), F, templates.data() + row * 2 * F, power.data() + row * F);
      }
    }
  };
  if (cache_templates && J > 0) compute_templates(0, J);
  const std::vector<Complex> absolute_ramps = shift_ramps(list, search.shifts);

  const int P = static_cast<int>(image_index.size());
  std::vector<float> images(static_cast<std::size_t>(B) * pixels);
  PreparedBatch batch;
  batch.y_rows.resize(static_cast<std::size_t>(B) * T * 2 * F);
  batch.ctf2.resize(static_cast<std::size_t>(B) * F);
  batch.listed_x.resize(static_cast<std::size_t>(B) * F);
  batch.listed_ctf.resize(static_cast<std::size_t>(B) * F);
  batch.unmasked.assign(static_cast<std::size_t>(B), std::vector<Complex>(half));
  batch.ctf.assign(static_cast<std::size_t>(B), std::vector<float>(half, 1.0f));
  std::vector<float> scores, norms;
  if (J > 0) scores.resize(static_cast<std::size_t>(B) * T * chunk), norms.resize(static_cast<std::size_t>(B) * chunk);
  std::vector<HypothesisSelector> selectors(static_cast<std::size_t>(B));
  int changed = 0;
  double angle_change = 0;

  for (int first = 0; first < P; first += B) {
    const int bc = std::min(B, P - first);
    for (int b = 0; b < bc; ++b) set.read_image(image_index[static_cast<std::size_t>(first + b)], images.data() + static_cast<std::size_t>(b) * pixels);

    // Per particle: the unmasked transform for the reconstruction (as RELION: masking would
    // change the data that enter the map), the masked one on the listed frequencies for the
    // scores, the CTF, and the score rows at every searched shift.
#pragma omp parallel
    {
      std::vector<Complex> masked_spectrum(half), ramps;
#pragma omp for schedule(static)
      for (int b = 0; b < bc; ++b) {
        const std::size_t p = static_cast<std::size_t>(first + b), i = image_index[p];
        const auto bs = static_cast<std::size_t>(b);
        float* img = images.data() + bs * pixels;
        image::fft_forward_2d(img, batch.unmasked[bs].data(), n, n);
        image::apply_mask(img, particle_mask);
        image::fft_forward_2d(img, masked_spectrum.data(), n, n);
        if (settings.use_ctf) image::ctf_half_grid(set.ctf(i), n, pixel, batch.ctf[bs].data());
        const auto g = static_cast<std::size_t>(set.optics_index(i));
        const float* isg = inv_sigma2[g].data();
        Complex* x = batch.listed_x.data() + bs * F;
        float* c = batch.listed_ctf.data() + bs * F;
        float* c2 = batch.ctf2.data() + bs * F;
        for (int f = 0; f < F; ++f) {
          const auto k = static_cast<std::size_t>(list.index[static_cast<std::size_t>(f)]);
          x[f] = masked_spectrum[k];
          c[f] = batch.ctf[bs][k];
          c2[f] = c[f] * c[f] * isg[f] * 0.5f;
        }
        const Complex* r = absolute_ramps.data();
        if (search.relative_shifts) {
          ramps.resize(absolute_ramps.size());
          shift_ramps(list, search.shifts, poses[p].shift_x, poses[p].shift_y, ramps.data());
          r = ramps.data();
        }
        fill_score_rows(x, c, isg, r, T, F, batch.y_rows.data() + bs * T * 2 * F);
      }
    }
    for (int b = 0; b < bc; ++b) selectors[static_cast<std::size_t>(b)].reset(settings.cc_scoring, settings.marginalize);
    for (int first_j = 0; first_j < J; first_j += chunk) {
      const int jc = std::min(chunk, J - first_j);
      if (!cache_templates) compute_templates(first_j, jc);
      const std::size_t offset = cache_templates ? static_cast<std::size_t>(first_j) : 0;
      const auto g0 = Clock::now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bc * T, jc, 2 * F, 1.0f, batch.y_rows.data(), 2 * F,
                  templates.data() + offset * 2 * F, 2 * F, 0.0f, scores.data(), jc);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bc, jc, F, 1.0f, batch.ctf2.data(), F, power.data() + offset * F, F, 0.0f,
                  norms.data(), jc);
      stats.gemm_seconds += std::chrono::duration<double>(Clock::now() - g0).count();
      stats.flops += 2.0 * bc * T * jc * 2 * F + 2.0 * bc * jc * F;
#pragma omp parallel for schedule(static)
      for (int b = 0; b < bc; ++b)
        selectors[static_cast<std::size_t>(b)].add(scores.data() + static_cast<std::size_t>(b) * T * jc, norms.data() + static_cast<std::size_t>(b) * jc,
                                                   T, jc, jc, first_j, J);
    }

#pragma omp parallel
    {
      const int tid = omp_get_thread_num();
      std::vector<Complex> sample(static_cast<std::size_t>(F)), data(half), ramp(static_cast<std::size_t>(F));
      std::vector<float> weight(half), local_templates, local_scores, local_norms, best_row(static_cast<std::size_t>(2 * F));
      std::vector<Euler> candidates;
      OversampleScratch scratch;
      HypothesisSelector local_selector;
#pragma omp for schedule(dynamic, 2) reduction(+ : changed, angle_change)
      for (int b = 0; b < bc; ++b) {
        const std::size_t p = static_cast<std::size_t>(first + b), i = image_index[p];
        const auto bs = static_cast<std::size_t>(b);
        Pose3D& pose = poses[p];
        const float* y = batch.y_rows.data() + bs * T * 2 * F;
        const float* c2 = batch.ctf2.data() + bs * F;
        const std::vector<Euler>* orientations;
        int count;
        std::vector<Hypothesis> coarse;
        if (search.local) {
          candidates = local_orientations({pose.rot, pose.tilt, pose.psi}, search.step);
          count = static_cast<int>(candidates.size());
          local_templates.resize(static_cast<std::size_t>(count) * 2 * F);
          local_norms.assign(static_cast<std::size_t>(count), 0.0f);
          for (int j = 0; j < count; ++j) {
            reference.sample(geometry::euler_to_matrix(candidates[static_cast<std::size_t>(j)]), list, sample.data());
            store_template_row(sample.data(), F, local_templates.data() + static_cast<std::size_t>(j) * 2 * F, nullptr);
            double s = 0;
            for (int f = 0; f < F; ++f) s += std::norm(sample[static_cast<std::size_t>(f)]) * c2[f];
            local_norms[static_cast<std::size_t>(j)] = static_cast<float>(s);
          }
          local_scores.resize(static_cast<std::size_t>(T) * count);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, count, 2 * F, 1.0f, y, 2 * F, local_templates.data(), 2 * F, 0.0f,
                      local_scores.data(), count);
          local_selector.reset(settings.cc_scoring, settings.marginalize);
          local_selector.add(local_scores.data(), local_norms.data(), T, count, count, 0, count);
          coarse = local_selector.finish();
          orientations = &candidates;
        } else {
          count = J;
          coarse = selectors[bs].finish();
          orientations = &search.grid;
        }
        const auto shift_of = [&](int index) {
          const auto& s = search.shifts[static_cast<std::size_t>(index / count)];
          return Shift{static_cast<float>(s.first + (search.relative_shifts ? pose.shift_x : 0.0)),
                       static_cast<float>(s.second + (search.relative_shifts ? pose.shift_y : 0.0))};
        };
        std::vector<PoseHypothesis> kept;
        if (settings.marginalize && !settings.cc_scoring) {
          kept = oversample(coarse, [&](int index) { return (*orientations)[static_cast<std::size_t>(index % count)]; }, shift_of,
                            search.local ? search.step / 2 : search.step, search.offset_step, reference, list,
                            batch.listed_x.data() + bs * F, batch.listed_ctf.data() + bs * F,
                            inv_sigma2[static_cast<std::size_t>(set.optics_index(i))].data(), c2, scratch);
        } else {
          for (const auto& [w, index] : coarse) kept.push_back({w, (*orientations)[static_cast<std::size_t>(index % count)], shift_of(index)});
        }
        const Euler best_orientation = kept.front().orientation;
        const Shift best_shift = kept.front().shift;
        const double moved = geometry::rotation_angle_between(geometry::euler_to_matrix({pose.rot, pose.tilt, pose.psi}),
                                                              geometry::euler_to_matrix(best_orientation));
        angle_change += moved;
        changed += moved > search.step / 2;

        // Back-projection: the unmasked particle re-centred, weighted by w C / sigma^2, at each kept pose.
        const auto g = static_cast<std::size_t>(set.optics_index(i));
        const auto& isg = inv_sigma2_grid[g];
        const auto& ctf = batch.ctf[bs];
        for (const auto& h : kept) {
          std::copy(batch.unmasked[bs].begin(), batch.unmasked[bs].end(), data.begin());
          image::shift_half_grid_2d(data.data(), n, -h.shift.first, -h.shift.second);
          for (std::size_t k = 0; k < half; ++k) {
            const float scale = isg[k] * h.weight;
            data[k] *= ctf[k] * scale;
            weight[k] = ctf[k] * ctf[k] * scale;
          }
          const Mat3 a = geometry::euler_to_matrix(h.orientation);
          for (const auto& st : symmetry_t) thread_maps[static_cast<std::size_t>(tid)].insert(a * st, data.data(), weight.data(), n, settings.insert_radius);
        }
        // Noise: the residual at the best pose (the CC iteration's scale is not the data's).
        if (!settings.cc_scoring) {
          reference.sample(geometry::euler_to_matrix(best_orientation), list, sample.data());
          store_template_row(sample.data(), F, best_row.data(), nullptr);
          shift_ramps(list, {best_shift}, 0, 0, ramp.data());
          auto& noise = thread_noise[static_cast<std::size_t>(tid)];
          add_noise_residual(list, batch.listed_x.data() + bs * F, batch.listed_ctf.data() + bs * F, ramp.data(), best_row.data(),
                             noise.sum[g].data(), noise.count[g].data());
        }
        pose.rot = best_orientation.rot, pose.tilt = best_orientation.tilt, pose.psi = best_orientation.psi;
        pose.shift_x = best_shift.first, pose.shift_y = best_shift.second;
        pose.max_probability = kept.front().weight;
        pose.significant = static_cast<int>(kept.size());
      }
    }
    if (progress) progress->advance(bc);
  }
  stats.changed += changed;
  stats.angle_change += angle_change;
}

}  // namespace emcryo::em
