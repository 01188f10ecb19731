#include "emcryo/em/class2d_engine.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numbers>
#include <numeric>

#include "emcryo/core/error.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/em/score_rows.hpp"

namespace emcryo::em {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

Class2DSearch make_class2d_search(double psi_step, double range, double step) {
  Class2DSearch s;
  const int count = std::max(1, static_cast<int>(std::lround(360.0 / psi_step)));
  for (int r = 0; r < count; ++r) s.psi.push_back(360.0 * r / count);
  const int reach = step > 0 ? static_cast<int>(std::floor(range / step)) : 0;
  for (int y = -reach; y <= reach; ++y)
    for (int x = -reach; x <= reach; ++x)
      if ((x * step) * (x * step) + (y * step) * (y * step) <= range * range + 1e-9)
        s.shifts.emplace_back(static_cast<float>(x * step), static_cast<float>(y * step));
  return s;
}

std::vector<std::vector<double>> estimate_initial_sigma2(const io::ParticleSet& set,
                                                         const std::vector<std::size_t>& active,
                                                         const std::vector<float>& mask) {
  const int n = set.box();
  const int shells = n / 2 + 1;
  const std::size_t groups = set.optics_groups().size();
  std::vector<std::vector<double>> sum(groups, std::vector<double>(static_cast<std::size_t>(shells)));
  std::vector<std::vector<double>> count = sum;
  const auto list = make_frequency_list(n, n / 2.0);
  const std::size_t use = std::min<std::size_t>(active.size(), 1000);
  std::vector<float> img(static_cast<std::size_t>(n) * n);
  std::vector<image::Complex> spectrum(image::half_size(n, n));
  for (std::size_t a = 0; a < use; ++a) {
    const std::size_t i = active[a * active.size() / use];
    set.read_image(i, img.data());
    image::apply_mask(img.data(), mask);
    image::fft_forward_2d(img.data(), spectrum.data(), n, n);
    const auto g = static_cast<std::size_t>(set.optics_index(i));
    for (std::size_t f = 0; f < list.size(); ++f) {
      const auto s = static_cast<std::size_t>(list.shell[f]);
      sum[g][s] += std::norm(spectrum[static_cast<std::size_t>(list.index[f])]);
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

Class2DModel class2d_iteration(const io::ParticleSet& set, const std::vector<std::size_t>& active,
                               const Class2DModel& model, const Class2DSearch& search,
                               const std::vector<float>& mask, const Class2DSettings& settings,
                               std::vector<ParticleResult>& results, Class2DStats& stats) {
  const auto start = Clock::now();
  const int n = model.box;
  const double pixel = set.pixel_size();
  const int K = static_cast<int>(model.classes.size());
  const int R = static_cast<int>(search.psi.size());
  const int T = static_cast<int>(search.shifts.size());
  const int J = K * R;
  const FrequencyList list = make_frequency_list(n, model.radius);
  const int F = static_cast<int>(list.size());
  const std::size_t groups = model.sigma2.size();
  const int shells = n / 2 + 1;
  if (F == 0) fail("class2d: empty frequency range (radius {:.1f} px)", model.radius);

  // Templates: every class at every angle, [Re | Im] rows, and their power for the norm term.
  std::vector<float> templates(static_cast<std::size_t>(J) * 2 * F);
  std::vector<float> template_power(static_cast<std::size_t>(J) * F);
  if (!settings.random_assignment) {
    for (int k = 0; k < K; ++k) {
      const Projector2D projector(model.classes[static_cast<std::size_t>(k)], n);
#pragma omp parallel
      {
        std::vector<image::Complex> sample(static_cast<std::size_t>(F));
#pragma omp for
        for (int r = 0; r < R; ++r) {
          projector.sample(search.psi[static_cast<std::size_t>(r)], list, sample.data());
          const std::size_t j = static_cast<std::size_t>(k * R + r);
          store_template_row(sample.data(), F, templates.data() + j * 2 * F, template_power.data() + j * F);
        }
      }
    }
  }

  // Phase ramps of the shifts at the listed frequencies.
  const std::vector<image::Complex> ramps = shift_ramps(list, search.shifts);

  // Accumulators of the M-step, filled batch by batch: S = W^T Y (J x 2F), D = Wsum^T C2 (J x F).
  std::vector<float> sum_data(static_cast<std::size_t>(J) * 2 * F, 0.0f);
  std::vector<float> sum_weight(static_cast<std::size_t>(J) * F, 0.0f);
  std::vector<double> class_mass(static_cast<std::size_t>(K), 0.0);
  std::vector<std::vector<double>> residual(groups, std::vector<double>(static_cast<std::size_t>(shells), 0.0));
  std::vector<std::vector<double>> residual_count = residual;

  const int B = std::max(1, settings.batch);
  const std::size_t pixels = static_cast<std::size_t>(n) * n;
  std::vector<float> images(static_cast<std::size_t>(B) * pixels);
  std::vector<float> y_matrix(static_cast<std::size_t>(B) * T * 2 * F);
  std::vector<float> ctf2(static_cast<std::size_t>(B) * F);  // C^2 / sigma^2
  std::vector<float> xnorm(static_cast<std::size_t>(B));
  std::vector<image::Complex> spectra(static_cast<std::size_t>(B) * F);
  std::vector<float> ctfs(static_cast<std::size_t>(B) * F);
  std::vector<float> scores(static_cast<std::size_t>(B) * T * J);  // cross term, then weights
  std::vector<float> norms(static_cast<std::size_t>(B) * J);
  std::vector<float> weight_sums(static_cast<std::size_t>(B) * J);
  std::vector<std::pair<int, int>> assigned(static_cast<std::size_t>(B));  // random assignment: (shift, template)
  std::vector<float> inv_sigma2(groups * static_cast<std::size_t>(F));
  for (std::size_t g = 0; g < groups; ++g)
    for (int f = 0; f < F; ++f)
      inv_sigma2[g * F + f] = static_cast<float>(1.0 / model.sigma2[g][static_cast<std::size_t>(list.shell[static_cast<std::size_t>(f)])]);

  Progress progress(settings.random_assignment ? "initial classes" : "E-step", static_cast<std::int64_t>(active.size()));
  const int threads = omp_get_max_threads();
  std::vector<std::vector<std::vector<double>>> thread_residual(static_cast<std::size_t>(threads), residual);
  std::vector<std::vector<std::vector<double>>> thread_residual_count(static_cast<std::size_t>(threads), residual);
  std::vector<std::vector<double>> thread_mass(static_cast<std::size_t>(threads), std::vector<double>(static_cast<std::size_t>(K), 0.0));

  for (std::size_t first = 0; first < active.size(); first += static_cast<std::size_t>(B)) {
    const int b_count = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(B), active.size() - first));
    for (int b = 0; b < b_count; ++b) set.read_image(active[first + static_cast<std::size_t>(b)], images.data() + static_cast<std::size_t>(b) * pixels);

    // Per particle: masked transform, CTF, and the rows Y_{i,t} = conj(X) C s_t / sigma^2.
#pragma omp parallel
    {
      std::vector<image::Complex> spectrum(image::half_size(n, n));
#pragma omp for schedule(static)
      for (int b = 0; b < b_count; ++b) {
        const std::size_t i = active[first + static_cast<std::size_t>(b)];
        float* img = images.data() + static_cast<std::size_t>(b) * pixels;
        image::apply_mask(img, mask);
        image::fft_forward_2d(img, spectrum.data(), n, n);
        const auto g = static_cast<std::size_t>(set.optics_index(i));
        const float* isg = inv_sigma2.data() + g * F;
        image::Complex* x = spectra.data() + static_cast<std::size_t>(b) * F;
        float* c = ctfs.data() + static_cast<std::size_t>(b) * F;
        const image::Ctf ctf(settings.use_ctf ? set.ctf(i) : image::CtfParams{});
        double norm = 0;
        for (int f = 0; f < F; ++f) {
          x[f] = spectrum[static_cast<std::size_t>(list.index[static_cast<std::size_t>(f)])];
          const double fx = list.kx[static_cast<std::size_t>(f)] / (n * pixel), fy = list.ky[static_cast<std::size_t>(f)] / (n * pixel);
          c[f] = settings.use_ctf ? static_cast<float>(ctf.value(fx, fy)) : 1.0f;
          ctf2[static_cast<std::size_t>(b) * F + f] = c[f] * c[f] * isg[f];
          norm += std::norm(x[f]) * isg[f] / 2;
        }
        xnorm[static_cast<std::size_t>(b)] = static_cast<float>(norm);
        fill_score_rows(x, c, isg, ramps.data(), T, F, y_matrix.data() + static_cast<std::size_t>(b) * T * 2 * F);
      }
    }

    const int rows = b_count * T;
    if (!settings.random_assignment) {
      const auto gemm_start = Clock::now();
      // Cross term x(i,t,j) and norm term n(i,j): the two GEMMs of the E-step.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, J, 2 * F, 1.0f, y_matrix.data(), 2 * F,
                  templates.data(), 2 * F, 0.0f, scores.data(), J);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b_count, J, F, 0.5f, ctf2.data(), F,
                  template_power.data(), F, 0.0f, norms.data(), J);
      stats.gemm_seconds += seconds_since(gemm_start);
      stats.flops += 2.0 * rows * J * 2 * F + 2.0 * b_count * J * F;
    }

    // Posteriors per particle: log-sum-exp over poses within a class, then over classes.
#pragma omp parallel
    {
      const int tid = omp_get_thread_num();
      std::vector<double> class_log(static_cast<std::size_t>(K)), class_best(static_cast<std::size_t>(K));
      std::vector<int> class_best_index(static_cast<std::size_t>(K));
      std::vector<double> class_post(static_cast<std::size_t>(K));
      std::vector<float> kept;
#pragma omp for schedule(static)
      for (int b = 0; b < b_count; ++b) {
        const std::size_t i = active[first + static_cast<std::size_t>(b)];
        ParticleResult& res = results[first + static_cast<std::size_t>(b)];
        float* w = scores.data() + static_cast<std::size_t>(b) * T * J;  // [t][j]
        float* wsum = weight_sums.data() + static_cast<std::size_t>(b) * J;
        std::fill(wsum, wsum + J, 0.0f);
        if (settings.random_assignment) {
          auto rng = item_rng(settings.seed, i);
          const int k = static_cast<int>(rng() % static_cast<std::uint64_t>(K));
          const int r = static_cast<int>(rng() % static_cast<std::uint64_t>(R));
          std::fill(w, w + static_cast<std::size_t>(T) * J, 0.0f);
          int t0 = 0;
          for (int t = 0; t < T; ++t)
            if (search.shifts[static_cast<std::size_t>(t)].first == 0 && search.shifts[static_cast<std::size_t>(t)].second == 0) t0 = t;
          w[static_cast<std::size_t>(t0) * J + k * R + r] = 1.0f;
          wsum[k * R + r] = 1.0f;
          assigned[static_cast<std::size_t>(b)] = {t0, k * R + r};
          thread_mass[static_cast<std::size_t>(tid)][static_cast<std::size_t>(k)] += 1;
          res = ParticleResult{};
          res.best_class = k;
          res.psi = search.psi[static_cast<std::size_t>(r)];
          res.max_probability = 1;
          res.class_posterior_max = 1;
          res.poses_with_weight = 1;
          res.significant_samples = 1;
          continue;
        }
        const float* nrm = norms.data() + static_cast<std::size_t>(b) * J;
        // Turn the cross term into -D^2 (up to the particle's constant |X|^2 term).
        for (int t = 0; t < T; ++t)
          for (int j = 0; j < J; ++j) {
            float& v = w[static_cast<std::size_t>(t) * J + j];
            v = v - nrm[j];
          }
        for (int k = 0; k < K; ++k) {
          double best = -std::numeric_limits<double>::infinity();
          int best_index = 0;
          for (int t = 0; t < T; ++t)
            for (int r = 0; r < R; ++r) {
              const int idx = t * J + k * R + r;
              if (w[idx] > best) best = w[idx], best_index = idx;
            }
          double sum = 0;
          if (!settings.force_max_poses)
            for (int t = 0; t < T; ++t)
              for (int r = 0; r < R; ++r) sum += std::exp(static_cast<double>(w[t * J + k * R + r]) - best);
          class_best[static_cast<std::size_t>(k)] = best;
          class_best_index[static_cast<std::size_t>(k)] = best_index;
          // Log evidence of class k (pose marginalised, or maximised), uniform prior over poses.
          class_log[static_cast<std::size_t>(k)] =
              settings.force_max_poses ? best : best + std::log(sum) - std::log(static_cast<double>(T * R));
        }
        double top = -std::numeric_limits<double>::infinity(), evidence_top = top;
        for (int k = 0; k < K; ++k) {
          const double prior = std::max(model.priors[static_cast<std::size_t>(k)], 1e-12);
          top = std::max(top, std::log(prior) + class_log[static_cast<std::size_t>(k)] / settings.class_temperature);
          evidence_top = std::max(evidence_top, std::log(prior) + class_log[static_cast<std::size_t>(k)]);
        }
        double norm = 0, evidence = 0;
        for (int k = 0; k < K; ++k) {
          const double prior = std::max(model.priors[static_cast<std::size_t>(k)], 1e-12);
          class_post[static_cast<std::size_t>(k)] =
              std::exp(std::log(prior) + class_log[static_cast<std::size_t>(k)] / settings.class_temperature - top);
          norm += class_post[static_cast<std::size_t>(k)];
          evidence += std::exp(std::log(prior) + class_log[static_cast<std::size_t>(k)] - evidence_top);
        }
        int best_class = 0;
        for (int k = 0; k < K; ++k) {
          class_post[static_cast<std::size_t>(k)] /= norm;
          if (class_post[static_cast<std::size_t>(k)] > class_post[static_cast<std::size_t>(best_class)]) best_class = k;
        }
        if (settings.hard_classes)
          for (int k = 0; k < K; ++k) class_post[static_cast<std::size_t>(k)] = k == best_class ? 1.0 : 0.0;

        // Weights w(t, j) = P(k) P(pose | k); the M-step GEMM reads them in place.
        int best_idx = 0;
        float best_w = -1;
        int nonzero = 0;
        kept.clear();
        for (int k = 0; k < K; ++k) {
          const double pk = class_post[static_cast<std::size_t>(k)];
          const double best = class_best[static_cast<std::size_t>(k)];
          double within = 0;
          if (!settings.force_max_poses)
            for (int t = 0; t < T; ++t)
              for (int r = 0; r < R; ++r) within += std::exp(static_cast<double>(w[t * J + k * R + r]) - best);
          for (int t = 0; t < T; ++t)
            for (int r = 0; r < R; ++r) {
              const int idx = t * J + k * R + r;
              double value;
              if (settings.force_max_poses) value = idx == class_best_index[static_cast<std::size_t>(k)] ? pk : 0.0;
              else value = pk * std::exp(static_cast<double>(w[idx]) - best) / within;
              if (value < 1e-8) value = 0;  // negligible: keeps the sums clean
              w[idx] = static_cast<float>(value);
              if (value > 0) {
                ++nonzero;
                kept.push_back(static_cast<float>(value));
                wsum[k * R + r] += static_cast<float>(value);
              }
              if (w[idx] > best_w) best_w = w[idx], best_idx = idx;
            }
          thread_mass[static_cast<std::size_t>(tid)][static_cast<std::size_t>(k)] += pk;
        }
        std::sort(kept.begin(), kept.end(), std::greater<>());
        double cumulative = 0, total = 0;
        for (float v : kept) total += v;
        int significant = 0;
        for (float v : kept) {
          cumulative += v;
          ++significant;
          if (cumulative >= 0.999 * total) break;
        }
        const int t_best = best_idx / J, j_best = best_idx % J;
        res.best_class = j_best / R;
        res.psi = search.psi[static_cast<std::size_t>(j_best % R)];
        res.shift_x = search.shifts[static_cast<std::size_t>(t_best)].first;
        res.shift_y = search.shifts[static_cast<std::size_t>(t_best)].second;
        res.max_probability = best_w;
        res.significant_samples = significant;
        res.class_posterior_max = class_post[static_cast<std::size_t>(best_class)];
        res.poses_with_weight = nonzero;
        res.log_likelihood = evidence_top + std::log(evidence) - xnorm[static_cast<std::size_t>(b)];

        // Noise: residual |X - C s A|^2 per shell at the best hypothesis.
        const auto g = static_cast<std::size_t>(set.optics_index(i));
        const image::Complex* x = spectra.data() + static_cast<std::size_t>(b) * F;
        const float* c = ctfs.data() + static_cast<std::size_t>(b) * F;
        const float* a = templates.data() + static_cast<std::size_t>(j_best) * 2 * F;
        const image::Complex* ramp = ramps.data() + static_cast<std::size_t>(t_best) * F;
        add_noise_residual(list, x, c, ramp, a, thread_residual[static_cast<std::size_t>(tid)][g].data(),
                           thread_residual_count[static_cast<std::size_t>(tid)][g].data());
      }
    }

    // M-step sums for this batch: S += W^T Y and D += Wsum^T (C^2 / sigma^2).
    if (settings.random_assignment) {
      // W is one-hot per particle: add each particle's row to its template's sums directly
      // rather than multiplying by a matrix of zeros.
      for (int b = 0; b < b_count; ++b) {
        const auto [t, j] = assigned[static_cast<std::size_t>(b)];
        const float* y = y_matrix.data() + (static_cast<std::size_t>(b) * T + static_cast<std::size_t>(t)) * 2 * F;
        float* sd = sum_data.data() + static_cast<std::size_t>(j) * 2 * F;
        for (int f = 0; f < 2 * F; ++f) sd[f] += y[f];
        const float* c2 = ctf2.data() + static_cast<std::size_t>(b) * F;
        float* sw = sum_weight.data() + static_cast<std::size_t>(j) * F;
        for (int f = 0; f < F; ++f) sw[f] += c2[f];
      }
    } else {
      const auto gemm_start = Clock::now();
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, J, 2 * F, rows, 1.0f, scores.data(), J, y_matrix.data(),
                  2 * F, 1.0f, sum_data.data(), 2 * F);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, J, F, b_count, 1.0f, weight_sums.data(), J, ctf2.data(), F,
                  1.0f, sum_weight.data(), F);
      stats.gemm_seconds += seconds_since(gemm_start);
      stats.flops += 2.0 * J * 2 * F * rows + 2.0 * J * F * b_count;
    }
    progress.advance(b_count);
  }
  progress.finish();

  for (int t = 0; t < threads; ++t) {
    for (int k = 0; k < K; ++k) class_mass[static_cast<std::size_t>(k)] += thread_mass[static_cast<std::size_t>(t)][static_cast<std::size_t>(k)];
    for (std::size_t g = 0; g < groups; ++g)
      for (int s = 0; s < shells; ++s) {
        residual[g][static_cast<std::size_t>(s)] += thread_residual[static_cast<std::size_t>(t)][g][static_cast<std::size_t>(s)];
        residual_count[g][static_cast<std::size_t>(s)] += thread_residual_count[static_cast<std::size_t>(t)][g][static_cast<std::size_t>(s)];
      }
  }

  // M-step: rotate each template's sums back into its class, then the regularised average.
  Class2DModel next = model;
  next.tau2.assign(static_cast<std::size_t>(K), std::vector<double>(static_cast<std::size_t>(shells), 0.0));
  next.resolution_shell.assign(static_cast<std::size_t>(K), 0);
  const double total_mass = std::max(1e-12, std::accumulate(class_mass.begin(), class_mass.end(), 0.0));
  const double pad2 = 4.0;  // padding factor squared: weights per padded-grid pixel
#pragma omp parallel for schedule(dynamic, 1)
  for (int k = 0; k < K; ++k) {
    BackProjector2D bp(n);
    std::vector<image::Complex> data(static_cast<std::size_t>(F));
    for (int r = 0; r < R; ++r) {
      const std::size_t j = static_cast<std::size_t>(k * R + r);
      const float* s = sum_data.data() + j * 2 * F;
      for (int f = 0; f < F; ++f) data[static_cast<std::size_t>(f)] = {s[f], s[F + f]};
      bp.insert(search.psi[static_cast<std::size_t>(r)], list, data.data(), sum_weight.data() + j * F);
    }
    std::vector<double> regularisation(static_cast<std::size_t>(shells), 0.0);
    const auto& tau2 = model.tau2.empty() ? std::vector<double>() : model.tau2[static_cast<std::size_t>(k)];
    for (int s = 0; s < shells; ++s)
      if (!tau2.empty() && tau2[static_cast<std::size_t>(s)] > 0)
        regularisation[static_cast<std::size_t>(s)] = 1.0 / (settings.tau2_fudge * tau2[static_cast<std::size_t>(s)] * pad2);
    auto average = bp.reconstruct(regularisation);
    image::apply_mask(average.data(), mask);
    // Signal prior for the next iteration from this average's power, and the SSNR resolution.
    const auto spectrum = image::fft_forward_2d(average, n);
    const auto full = make_frequency_list(n, n / 2.0 - 1);
    std::vector<double> power(static_cast<std::size_t>(shells), 0.0), count(power.size(), 0.0);
    for (std::size_t f = 0; f < full.size(); ++f) {
      power[static_cast<std::size_t>(full.shell[f])] += std::norm(spectrum[static_cast<std::size_t>(full.index[f])]);
      count[static_cast<std::size_t>(full.shell[f])] += 1;
    }
    const auto mean_weight = bp.mean_weight_per_shell();
    int resolution = 1;
    for (int s = 1; s < shells; ++s) {
      auto& t2 = next.tau2[static_cast<std::size_t>(k)][static_cast<std::size_t>(s)];
      t2 = count[static_cast<std::size_t>(s)] > 0 ? power[static_cast<std::size_t>(s)] / (2 * count[static_cast<std::size_t>(s)]) : 0;
      const double ssnr = t2 * mean_weight[static_cast<std::size_t>(s)] * pad2;
      if (s <= static_cast<int>(model.radius) && ssnr >= 1 && resolution == s - 1) resolution = s;
    }
    next.resolution_shell[static_cast<std::size_t>(k)] = resolution;
    next.classes[static_cast<std::size_t>(k)] = std::move(average);
    next.priors[static_cast<std::size_t>(k)] = class_mass[static_cast<std::size_t>(k)] / total_mass;
  }
  // Noise per shell: only the shells seen this iteration change.
  for (std::size_t g = 0; g < groups; ++g)
    for (int s = 1; s < shells; ++s)
      if (residual_count[g][static_cast<std::size_t>(s)] > 0)
        next.sigma2[g][static_cast<std::size_t>(s)] =
            std::max(1e-12, residual[g][static_cast<std::size_t>(s)] / (2 * residual_count[g][static_cast<std::size_t>(s)]));
  stats.seconds += seconds_since(start);
  return next;
}

}  // namespace emcryo::em
