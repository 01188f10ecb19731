// The E-step's scoring GEMMs at real sizes on each backend and GPU precision: achieved TFLOP/s
// (wall time of score(), transfers included) and the score error against the CPU's FP32, with
// the number of particles whose best hypothesis changes (a wrong best pose is a wrong answer).
//   gpu_scoring [particles shifts templates frequencies repeats]
// Defaults: one class2d coarse chunk at box 256, K = 100 (256 particles x 9 shifts, 3640 templates, Fc = 700).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <complex>
#include <cstdlib>
#include <random>

#include "emcryo/em/score_rows.hpp"
#include "emcryo/gpu/backend.hpp"

using namespace emcryo;

namespace {

struct Problem {
  int P, T, J, F;
  std::vector<float> rows, ctf2, templates, power;
};

/// Templates: near-copies of a few views (neighbouring poses score almost alike); particles:
/// CTF-modulated, shifted templates plus unit noise, in the E-step's row layout.
Problem make_problem(int P, int T, int J, int F, unsigned seed) {
  Problem pr{P, T, J, F, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0, 1);
  const auto at = [](int a, int b) { return static_cast<std::size_t>(a) * static_cast<std::size_t>(b); };
  const int views = 64;
  std::vector<em::Complex> view(at(views, F)), tmpl(at(J, F)), x(at(1, F)), ramps(at(T, F));
  for (int f = 0; f < F; ++f)
    for (int v = 0; v < views; ++v) view[at(v, F) + static_cast<std::size_t>(f)] = em::Complex(normal(rng), normal(rng)) * (2.0f / (1.0f + f / 300.0f));
  pr.templates.resize(at(J, 2 * F));
  pr.power.resize(at(J, F));
  for (int j = 0; j < J; ++j) {
    for (int f = 0; f < F; ++f)
      tmpl[at(j, F) + static_cast<std::size_t>(f)] =
          view[at(j % views, F) + static_cast<std::size_t>(f)] + 0.15f * em::Complex(normal(rng), normal(rng)) / (1.0f + f / 300.0f);
    em::store_template_row(tmpl.data() + at(j, F), F, pr.templates.data() + at(j, 2 * F), pr.power.data() + at(j, F));
  }
  for (auto& r : ramps) r = std::polar(1.0f, 6.2831853f * uniform(rng));
  std::vector<float> isg(static_cast<std::size_t>(F), 1.0f), ctf(static_cast<std::size_t>(F)), particle_rows(at(T, 2 * F));
  pr.rows.resize(at(P * T, 2 * F));
  pr.ctf2.resize(at(P, F));
  for (int p = 0; p < P; ++p) {
    const std::size_t truth = at(static_cast<int>(rng() % static_cast<unsigned>(J)), F);
    const std::size_t ramp = at(static_cast<int>(rng() % static_cast<unsigned>(T)), F);
    const float phase = 6.28f * uniform(rng);
    for (int f = 0; f < F; ++f) {
      const auto fi = static_cast<std::size_t>(f);
      ctf[fi] = std::sin(0.004f * f + phase);
      x[fi] = ctf[fi] * tmpl[truth + fi] * std::conj(ramps[ramp + fi]) + em::Complex(normal(rng), normal(rng));
      pr.ctf2[at(p, F) + fi] = ctf[fi] * ctf[fi];
    }
    em::fill_score_rows(x.data(), ctf.data(), isg.data(), ramps.data(), T, F, particle_rows.data());
    for (int t = 0; t < T; ++t) std::copy_n(particle_rows.data() + at(t, 2 * F), 2 * F, pr.rows.data() + at(t * P + p, 2 * F));
  }
  return pr;
}

em::ScoreRequest request(const Problem& pr) {
  em::ScoreRequest q;
  q.rows = pr.rows.data(), q.row_count = pr.P * pr.T, q.row_stride = 2 * pr.F, q.particles = pr.P;
  q.ctf2 = pr.ctf2.data(), q.ctf2_stride = pr.F;
  q.templates = pr.templates.data(), q.power = pr.power.data(), q.template_count = pr.J, q.template_stride = 2 * pr.F;
  q.power_stride = pr.F, q.frequencies = pr.F, q.templates_resident = true;
  return q;
}

}  // namespace

int main(int argc, char** argv) {
  const auto arg = [&](int i, int fallback) { return argc > i ? std::atoi(argv[i]) : fallback; };
  const int P = arg(1, 256), T = arg(2, 9), J = arg(3, 3640), F = arg(4, 700), repeats = arg(5, 10);
  const Problem pr = make_problem(P, T, J, F, 5);
  const auto q = request(pr);
  const double flops = 2.0 * q.row_count * J * 2 * F + 2.0 * P * J * F;
  fmt::print("scoring {} particles x {} shifts x {} templates at {} frequencies: {:.2f} GFLOP per call\n", P, T, J, F, flops / 1e9);
  const auto time = [&](em::ScoringBackend& backend, std::vector<float>& out, int n) {
    backend.plan(1, P, J);
    backend.score(q, out.data(), 0);  // warm-up (and the resident templates' upload)
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) backend.score(q, out.data(), 0);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / n;
  };
  std::vector<float> reference(static_cast<std::size_t>(q.row_count) * J);
  const double cpu_seconds = time(*em::make_cpu_backend(), reference, 1);
  fmt::print("{:<12} {:>9.2f} ms {:>8.2f} TFLOP/s\n", "CPU fp32", 1e3 * cpu_seconds, flops / cpu_seconds / 1e12);
  if (gpu::devices().empty()) {
    fmt::print("no CUDA device: {}\n", gpu::no_device_reason());
    return 0;
  }
  fmt::print("{:<12} {:>12} {:>16} {:>14} {:>14} {:>18}\n", "GPU", "ms/call", "TFLOP/s (wall)", "max |err|", "rms err", "best pose differs");
  for (const auto precision : {gpu::Precision::fp32, gpu::Precision::split_tf32, gpu::Precision::tf32}) {
    gpu::CudaOptions options;
    options.precision = precision;
    const auto backend = gpu::make_cuda_backend(options);
    std::vector<float> out(reference.size());
    const double seconds = time(*backend, out, repeats);
    double worst = 0, sum2 = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
      const double e = std::abs(static_cast<double>(out[i]) - reference[i]);
      worst = std::max(worst, e), sum2 += e * e;
    }
    int differs = 0;
    for (int p = 0; p < P; ++p) {
      std::size_t best_ref = 0, best_out = 0;
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < J; ++j) {
          const std::size_t i = (static_cast<std::size_t>(t) * P + static_cast<std::size_t>(p)) * static_cast<std::size_t>(J) + static_cast<std::size_t>(j);
          if ((t == 0 && j == 0) || reference[i] > reference[best_ref]) best_ref = i;
          if ((t == 0 && j == 0) || out[i] > out[best_out]) best_out = i;
        }
      differs += best_ref != best_out;
    }
    fmt::print("{:<12} {:>12.3f} {:>16.1f} {:>14.4g} {:>14.4g} {:>12} of {}\n", gpu::precision_name(precision), 1e3 * seconds,
               flops / seconds / 1e12, worst, std::sqrt(sum2 / static_cast<double>(out.size())), differs, P);
  }
  return 0;
}
