#include "emcryo/jobs/refine.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numbers>
#include <numeric>
#include <random>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/em/class2d_engine.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/io/report.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;
using json = nlohmann::json;
using geometry::Mat3;
using image::Complex;

std::vector<EulerTriple> orientation_grid(double step, const std::string& symmetry) {
  const auto group = geometry::make_symmetry_group(symmetry);
  const double step_rad = step * std::numbers::pi / 180;
  const int directions = std::max(12, static_cast<int>(std::lround(4 * std::numbers::pi / (step_rad * step_rad))));
  const double golden = std::numbers::pi * (3 - std::sqrt(5.0));
  // A generic direction: keep the grid directions closer to it than any of their symmetry mates
  // (a Dirichlet cell of the group), which is one asymmetric unit.
  const geometry::Vec3 u{0.2673, 0.5345, 0.8018};
  const int psi_count = std::max(1, static_cast<int>(std::lround(360 / step)));
  std::vector<EulerTriple> grid;
  for (int i = 0; i < directions; ++i) {
    const double z = 1 - (2.0 * i + 1) / directions, r = std::sqrt(std::max(0.0, 1 - z * z));
    const geometry::Vec3 d{r * std::cos(golden * i), r * std::sin(golden * i), z};
    const double own = d.x * u.x + d.y * u.y + d.z * u.z;
    bool keep = true;
    for (std::size_t s = 1; s < group.operators.size() && keep; ++s) {
      const auto m = group.operators[s] * d;
      if (m.x * u.x + m.y * u.y + m.z * u.z > own + 1e-9) keep = false;
    }
    if (!keep) continue;
    const double rot = std::atan2(d.y, d.x) * 180 / std::numbers::pi, tilt = std::acos(std::clamp(d.z, -1.0, 1.0)) * 180 / std::numbers::pi;
    for (int p = 0; p < psi_count; ++p) grid.push_back({rot, tilt, 360.0 * p / psi_count - 180});
  }
  return grid;
}

namespace {

using Clock = std::chrono::steady_clock;

struct ParticlePose {
  double rot = 0, tilt = 0, psi = 0;
  double shift_x = 0, shift_y = 0;  // pixels: displacement of the particle from the centre
  double max_probability = 1;
  int significant = 1;
};

struct State {
  RefineOptions options;
  int iteration = 0;
  double step = 15;                 // degrees
  double offset_step = 1, offset_range = 3;
  bool local = false;
  bool second_global = false;       // a global pass at half the step, shifts around the current ones
  double radius = 0;                // working limit, pixels
  std::vector<std::vector<double>> sigma2;
  std::vector<double> fsc;          // half-map FSC of the last iteration (masked)
  std::vector<ParticlePose> poses;  // per active particle
  double best_resolution = 999;
  int iterations_without_gain = 0;
  std::vector<json> history;
  bool final_next = false;          // the next iteration joins the halves and ends the run
};

std::vector<float> dilate(const std::vector<float>& binary, int n, int steps) {
  std::vector<float> cur = binary;
  for (int s = 0; s < steps; ++s) {
    std::vector<float> next = cur;
    for (int z = 1; z < n - 1; ++z)
      for (int y = 1; y < n - 1; ++y)
        for (int x = 1; x < n - 1; ++x) {
          const std::size_t i = (static_cast<std::size_t>(z) * n + y) * n + x;
          if (cur[i] > 0) continue;
          const std::size_t nn = static_cast<std::size_t>(n);
          if (cur[i - 1] > 0 || cur[i + 1] > 0 || cur[i - nn] > 0 || cur[i + nn] > 0 || cur[i - nn * nn] > 0 || cur[i + nn * nn] > 0)
            next[i] = 1;
        }
    cur = std::move(next);
  }
  return cur;
}

/// Automatic solvent mask: the map low-passed to 15 Å, thresholded, dilated 3 px, soft 5 px edge.
std::vector<float> solvent_mask(const std::vector<float>& map, int n, double pixel) {
  auto smooth = image::lowpass_volume(map, n, pixel, std::max(15.0, 3 * pixel));
  const float peak = *std::max_element(smooth.begin(), smooth.end());
  std::vector<float> binary(smooth.size());
  for (std::size_t i = 0; i < smooth.size(); ++i) binary[i] = smooth[i] > 0.15f * peak ? 1.0f : 0.0f;
  auto core = dilate(binary, n, 3);
  std::vector<float> mask = core;
  const int edge = 5;
  std::vector<float> layer = core;
  for (int k = 1; k <= edge; ++k) {
    auto grown = dilate(layer, n, 1);
    const float value = static_cast<float>(0.5 * (1 + std::cos(std::numbers::pi * k / (edge + 1))));
    for (std::size_t i = 0; i < mask.size(); ++i)
      if (grown[i] > 0 && layer[i] == 0) mask[i] = value;
    layer = std::move(grown);
  }
  return mask;
}

std::vector<float> masked(std::vector<float> map, const std::vector<float>& mask) {
  for (std::size_t i = 0; i < map.size(); ++i) map[i] *= mask[i];
  return map;
}

std::vector<float> randomize_phases_beyond(const std::vector<float>& map, int n, int shell, std::uint64_t seed) {
  auto spectrum = image::fft_forward_3d(map, n);
  auto rng = item_rng(seed, 77);
  std::uniform_real_distribution<float> phase(0, 2 * static_cast<float>(std::numbers::pi));
  const auto shells = image::shell_index_3d(n);
  for (std::size_t i = 0; i < spectrum.size(); ++i)
    if (shells[i] > shell) spectrum[i] *= std::polar(1.0f, phase(rng));
  return image::fft_inverse_3d(spectrum, n);
}

double guinier_bfactor(const std::vector<float>& map, int n, double pixel, double resolution) {
  auto spectrum = image::fft_forward_3d(map, n);
  const auto shells = image::shell_index_3d(n);
  std::vector<double> amp(static_cast<std::size_t>(n / 2 + 1)), cnt(amp.size());
  for (std::size_t i = 0; i < spectrum.size(); ++i)
    if (shells[i] <= n / 2) amp[static_cast<std::size_t>(shells[i])] += std::abs(spectrum[i]), cnt[static_cast<std::size_t>(shells[i])] += 1;
  double sx = 0, sy = 0, sxx = 0, sxy = 0, m = 0;
  for (std::size_t s = 1; s < amp.size(); ++s) {
    const double res = n * pixel / static_cast<double>(s);
    if (res > 10 || res < resolution || cnt[s] == 0 || amp[s] <= 0) continue;
    const double x = 1 / (res * res), y = std::log(amp[s] / cnt[s]);
    sx += x, sy += y, sxx += x * x, sxy += x * y, m += 1;
  }
  if (m < 3) return 0;
  const double slope = (m * sxy - sx * sy) / (m * sxx - sx * sx);
  return 4 * slope;  // amplitude ~ exp(-B s^2 / 4): B = -4 slope, reported with RELION's sign (negative = sharpen)
}

void write_map(const fs::path& path, const std::vector<float>& map, int n, double pixel) {
  io::MrcWriteOptions w;
  w.pixel_size = pixel;
  io::write_mrc(path, map, n, n, n, w);
}

RefineResult run(State state, bool resumed) {
  const auto& o = state.options;
  const fs::path dir(o.out_dir);
  const auto group = geometry::make_symmetry_group(o.symmetry);
  auto set = io::ParticleSet::read(o.particles);
  const int n = set.box();
  const double pixel = set.pixel_size();
  if (!o.no_ctf && !set.has_ctf())
    fail("{}: no CTF columns (rlnDefocusU/V): add them, or pass --no-ctf to refine without CTF correction", o.particles);
  set.check_pixel_size_against_stacks();
  std::vector<float> user_mask;
  if (!o.mask.empty()) {
    io::MrcReader m(o.mask);
    if (m.nx() != n || m.ny() != n || m.nz() != n)
      fail("{}: mask is {}x{}x{}, the particles' box is {}", o.mask, m.nx(), m.ny(), m.nz(), n);
    user_mask = m.read_all();
  }
  // Reference: resampled to the particles' pixel size and box when they differ.
  io::MrcReader ref_file(o.reference);
  if (ref_file.nx() != ref_file.ny() || ref_file.ny() != ref_file.nz())
    fail("{}: the reference must be a cubic map (it is {}x{}x{})", o.reference, ref_file.nx(), ref_file.ny(), ref_file.nz());
  auto reference = ref_file.read_all();
  const double ref_pixel = ref_file.pixel_size() > 0 ? ref_file.pixel_size() : pixel;
  if (ref_file.nx() != n || std::abs(ref_pixel - pixel) > 1e-3 * pixel) {
    log::info("refine: reference {} ({} px, {:.3f} Å/px) resampled to {} px at {:.3f} Å/px", o.reference, ref_file.nx(), ref_pixel, n, pixel);
    reference = image::rescale_volume(reference, ref_file.nx(), ref_pixel, n, pixel);
  }
  const double diameter = o.particle_diameter > 0 ? o.particle_diameter : 0.9 * n * pixel;
  if (diameter > n * pixel) fail("refine: --particle-diameter {} Å is wider than the box ({:.1f} Å)", diameter, n * pixel);
  const auto particle_mask = image::soft_round_mask(n, 2, diameter / pixel / 2 - 2, 5);
  const auto sphere = image::soft_round_mask(n, 3, diameter / pixel / 2, 5);

  fs::create_directories(dir);
  log::set_file((dir / "run.log").string());
  // Usable particles and half sets.
  std::vector<std::size_t> active;
  {
    std::vector<float> img(static_cast<std::size_t>(n) * n);
    for (std::size_t i = 0; i < set.size(); ++i) {
      set.read_image(i, img.data());
      double mean, sd;
      image::mean_stddev(img.data(), img.size(), mean, sd);
      if (!io::all_finite(img.data(), img.size()) || sd == 0) {
        log::warn("skipped particle {} ({}): NaN/Inf or constant pixels", i + 1, set.image_name(i));
        continue;
      }
      active.push_back(i);
    }
  }
  const std::vector<int> half = set.half_sets(active, o.seed);
  const double nyquist = n / 2.0 - 1;
  std::vector<std::vector<float>> half_maps(2);
  if (!resumed) {
    auto start_map = image::lowpass_volume(reference, n, pixel, o.initial_lowpass);
    half_maps[0] = half_maps[1] = start_map;
    state.step = o.initial_step;
    state.offset_step = o.offset_step;
    state.offset_range = o.offset_range;
    state.radius = std::min(nyquist, n * pixel / o.initial_lowpass + 2);
    state.sigma2 = em::estimate_initial_sigma2(set, active, particle_mask);
    state.poses.assign(active.size(), ParticlePose{});
  } else {
    for (int h = 0; h < 2; ++h)
      half_maps[static_cast<std::size_t>(h)] = io::MrcReader(dir / fmt::format("checkpoint_half{}.mrc", h + 1)).read_all();
    log::info("refine: continuing after iteration {}", state.iteration);
  }
  log::info("refine: {} particles in two half sets, box {} px, {:.3f} Å/px, symmetry {}", active.size(), n, pixel, group.name);

  std::vector<Mat3> sym_t;
  for (const auto& s : group.operators) sym_t.push_back(geometry::transpose(s));
  const std::size_t pixels = static_cast<std::size_t>(n) * n;
  RefineResult result;
  bool final_iteration = state.final_next;
  std::vector<float> joined_unfiltered;  // the final map from all particles, unregularised

  while (true) {
    const int it = ++state.iteration;
    const auto it_start = Clock::now();
    final_iteration = final_iteration || it >= o.max_iterations;
    const auto list = em::make_frequency_list(n, state.radius);
    const int F = static_cast<int>(list.size());
    const double insert_radius = final_iteration ? nyquist : std::min(nyquist, state.radius + 8);
    // Global search: every grid orientation as a template, GEMM over (particle, shift) rows.
    const auto search = em::make_class2d_search(360, state.offset_range, state.offset_step);
    const int T = static_cast<int>(search.shifts.size());
    std::vector<EulerTriple> grid;
    if (!state.local) grid = orientation_grid(state.step, o.symmetry);
    const int J = static_cast<int>(grid.size());
    const bool cc_iteration = it == 1;
    // After the first global stage, shifts are searched around each particle's current shift.
    const bool relative_shifts = state.local || state.second_global;
    std::vector<em::BackProjector> accum;
    const int threads = omp_get_max_threads();
    for (int t = 0; t < 2 * threads; ++t) accum.emplace_back(n);
    std::vector<std::vector<double>> residual(state.sigma2.size(), std::vector<double>(static_cast<std::size_t>(n / 2 + 1)));
    auto residual_count = residual;
    std::vector<decltype(residual)> thread_res(static_cast<std::size_t>(threads), residual), thread_cnt(static_cast<std::size_t>(threads), residual);
    int changed = 0;
    double angle_change = 0;
    double gflop = 0, gemm_seconds = 0;
    Progress progress(fmt::format("iteration {}", it), static_cast<std::int64_t>(active.size()));
    for (int h = 0; h < 2; ++h) {
      const em::Projector projector(masked(half_maps[static_cast<std::size_t>(h)], user_mask.empty() ? sphere : user_mask), n);
      std::vector<float> templates;
      if (!state.local) {
        templates.resize(static_cast<std::size_t>(J) * 2 * F);
#pragma omp parallel
        {
          std::vector<Complex> sample(static_cast<std::size_t>(F));
#pragma omp for
          for (int j = 0; j < J; ++j) {
            const auto& e = grid[static_cast<std::size_t>(j)];
            projector.sample(geometry::euler_to_matrix({e.rot, e.tilt, e.psi}), list, sample.data());
            float* row = templates.data() + static_cast<std::size_t>(j) * 2 * F;
            for (int f = 0; f < F; ++f) row[f] = sample[static_cast<std::size_t>(f)].real(), row[F + f] = sample[static_cast<std::size_t>(f)].imag();
          }
        }
      }
      // |A|^2 of every template, for the norm term of each batch.
      std::vector<float> power(templates.size() / 2);
      for (std::size_t j = 0; j < power.size() / static_cast<std::size_t>(std::max(F, 1)); ++j)
        for (int f = 0; f < F; ++f) {
          const float* row = templates.data() + j * 2 * static_cast<std::size_t>(F);
          power[j * static_cast<std::size_t>(F) + static_cast<std::size_t>(f)] = row[f] * row[f] + row[F + f] * row[F + f];
        }
      std::vector<std::size_t> members;
      for (std::size_t a = 0; a < active.size(); ++a)
        if (half[a] == h + 1) members.push_back(a);
      const int B = std::max(1, o.batch);
      for (std::size_t first = 0; first < members.size(); first += static_cast<std::size_t>(B)) {
        const int bc = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(B), members.size() - first));
        std::vector<float> images(static_cast<std::size_t>(bc) * pixels);
        for (int b = 0; b < bc; ++b) set.read_image(active[members[first + static_cast<std::size_t>(b)]], images.data() + static_cast<std::size_t>(b) * pixels);
        std::vector<float> y_rows(static_cast<std::size_t>(bc) * T * 2 * F), ctf2(static_cast<std::size_t>(bc) * F);
        std::vector<std::vector<Complex>> spectra(static_cast<std::size_t>(bc)), unmasked_spectra(static_cast<std::size_t>(bc));
        std::vector<std::vector<float>> ctfs(static_cast<std::size_t>(bc));
#pragma omp parallel for schedule(static)
        for (int b = 0; b < bc; ++b) {
          const std::size_t a = members[first + static_cast<std::size_t>(b)], i = active[a];
          float* img = images.data() + static_cast<std::size_t>(b) * pixels;
          // Unmasked transform for the reconstruction (as RELION: masking the images would change
          // the data that enter the map); masked one for the alignment.
          auto& unmasked = unmasked_spectra[static_cast<std::size_t>(b)];
          unmasked.resize(image::half_size(n, n));
          image::fft_forward_2d(img, unmasked.data(), n, n);
          image::apply_mask(img, particle_mask);
          auto& spec = spectra[static_cast<std::size_t>(b)];
          spec.resize(image::half_size(n, n));
          image::fft_forward_2d(img, spec.data(), n, n);
          auto& c = ctfs[static_cast<std::size_t>(b)];
          c = o.no_ctf ? std::vector<float>(spec.size(), 1.0f) : image::ctf_half_grid(set.ctf(i), n, pixel);
          const auto g = static_cast<std::size_t>(set.optics_index(i));
          const ParticlePose& prev = state.poses[a];
          for (int t = 0; t < T; ++t) {
            // Local stages search shifts around the current one.
            const double sx = search.shifts[static_cast<std::size_t>(t)].first + (relative_shifts ? prev.shift_x : 0.0);
            const double sy = search.shifts[static_cast<std::size_t>(t)].second + (relative_shifts ? prev.shift_y : 0.0);
            float* row = y_rows.data() + (static_cast<std::size_t>(b) * T + t) * 2 * F;
            for (int f = 0; f < F; ++f) {
              const auto idx = static_cast<std::size_t>(list.index[static_cast<std::size_t>(f)]);
              const double ph = -2 * std::numbers::pi / n * (list.kx[static_cast<std::size_t>(f)] * sx + list.ky[static_cast<std::size_t>(f)] * sy);
              const float isg = static_cast<float>(1.0 / state.sigma2[g][static_cast<std::size_t>(list.shell[static_cast<std::size_t>(f)])]);
              const Complex y = std::conj(spec[idx]) * Complex(static_cast<float>(std::cos(ph)), static_cast<float>(std::sin(ph))) * (c[idx] * isg);
              row[f] = y.real(), row[F + f] = -y.imag();
              if (t == 0) ctf2[static_cast<std::size_t>(b) * F + f] = c[idx] * c[idx] * isg * 0.5f;
            }
          }
        }
        // Scores: global = one GEMM for the batch; local = one small GEMM per particle.
        std::vector<float> scores, norms;
        if (!state.local) {
          scores.resize(static_cast<std::size_t>(bc) * T * J);
          norms.resize(static_cast<std::size_t>(bc) * J);
          const auto g0 = Clock::now();
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bc * T, J, 2 * F, 1.0f, y_rows.data(), 2 * F, templates.data(), 2 * F, 0.0f, scores.data(), J);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bc, J, F, 1.0f, ctf2.data(), F, power.data(), F, 0.0f, norms.data(), J);
          gemm_seconds += std::chrono::duration<double>(Clock::now() - g0).count();
          gflop += (2.0 * bc * T * J * 2 * F + 2.0 * bc * J * F) / 1e9;
        }
#pragma omp parallel
        {
          const int tid = omp_get_thread_num();
          std::vector<Complex> sample(static_cast<std::size_t>(F)), data(image::half_size(n, n));
          std::vector<float> weight(image::half_size(n, n));
          std::vector<float> local_templates, local_power, local_scores;
          std::vector<EulerTriple> candidates;
#pragma omp for schedule(dynamic, 2) reduction(+ : changed, angle_change)
          for (int b = 0; b < bc; ++b) {
            const std::size_t a = members[first + static_cast<std::size_t>(b)], i = active[a];
            ParticlePose& pose = state.poses[a];
            const float* y = y_rows.data() + static_cast<std::size_t>(b) * T * 2 * F;
            const float* c2 = ctf2.data() + static_cast<std::size_t>(b) * F;
            const float* sc;
            std::vector<float> nrm_local;
            const float* nrm;
            int count;
            if (state.local) {
              // Candidates: the current pose turned by small rotations on a 5x5x5 grid of rotation vectors.
              const Mat3 current = geometry::euler_to_matrix({pose.rot, pose.tilt, pose.psi});
              candidates.clear();
              for (int u = -2; u <= 2; ++u)
                for (int v = -2; v <= 2; ++v)
                  for (int w = -2; w <= 2; ++w) {
                    const double len = std::sqrt(u * u + v * v + w * w);
                    const Mat3 turn = len > 0 ? geometry::axis_angle({static_cast<double>(u), static_cast<double>(v), static_cast<double>(w)}, state.step * len / 2) : Mat3::identity();
                    const auto e = geometry::matrix_to_euler(turn * current);
                    candidates.push_back({e.rot, e.tilt, e.psi});
                  }
              count = static_cast<int>(candidates.size());
              local_templates.resize(static_cast<std::size_t>(count) * 2 * F);
              local_power.resize(static_cast<std::size_t>(count) * F);
              nrm_local.assign(static_cast<std::size_t>(count), 0.0f);
              for (int j = 0; j < count; ++j) {
                const auto& e = candidates[static_cast<std::size_t>(j)];
                projector.sample(geometry::euler_to_matrix({e.rot, e.tilt, e.psi}), list, sample.data());
                float* row = local_templates.data() + static_cast<std::size_t>(j) * 2 * F;
                double s = 0;
                for (int f = 0; f < F; ++f) {
                  row[f] = sample[static_cast<std::size_t>(f)].real(), row[F + f] = sample[static_cast<std::size_t>(f)].imag();
                  s += std::norm(sample[static_cast<std::size_t>(f)]) * c2[f];
                }
                nrm_local[static_cast<std::size_t>(j)] = static_cast<float>(s);
              }
              local_scores.resize(static_cast<std::size_t>(T) * count);
              cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, count, 2 * F, 1.0f, y, 2 * F, local_templates.data(), 2 * F, 0.0f, local_scores.data(), count);
              sc = local_scores.data();
              nrm = nrm_local.data();
            } else {
              count = J;
              sc = scores.data() + static_cast<std::size_t>(b) * T * J;
              nrm = norms.data() + static_cast<std::size_t>(b) * J;
            }
            // Posterior over (orientation, shift): maximised by default; with adaptive
            // marginalisation the hypotheses holding 99.9% of the mass (at most 64) all contribute.
            // The first iteration scores by normalised cross-correlation, because the reference
            // is not on the data's grey scale yet (as RELION's first-iteration CC).
            float best = -1e30f;
            int best_idx = 0;
            for (int t = 0; t < T; ++t)
              for (int j = 0; j < count; ++j) {
                const float cross = sc[static_cast<std::size_t>(t) * count + j];
                const float v = cc_iteration ? cross / std::sqrt(std::max(nrm[j], 1e-30f)) : cross - nrm[j];
                if (v > best) best = v, best_idx = t * count + j;
              }
            std::vector<std::pair<float, int>> kept;
            if (o.adaptive_marginalization && !final_iteration && !cc_iteration) {
              for (int t = 0; t < T; ++t)
                for (int j = 0; j < count; ++j) {
                  const float v = sc[static_cast<std::size_t>(t) * count + j] - nrm[j] - best;
                  if (v > -12) kept.emplace_back(std::exp(v), t * count + j);
                }
              std::sort(kept.begin(), kept.end(), std::greater<>());
              double total = 0;
              for (auto& k : kept) total += k.first;
              double cum = 0;
              std::size_t keep = 0;
              while (keep < kept.size() && keep < 64 && cum < 0.999 * total) cum += kept[keep++].first;
              kept.resize(keep);
              for (auto& k : kept) k.first = static_cast<float>(k.first / cum);
            } else {
              kept.emplace_back(1.0f, best_idx);
            }
            const auto orientation_of = [&](int idx) { return state.local ? candidates[static_cast<std::size_t>(idx % count)] : grid[static_cast<std::size_t>(idx % count)]; };
            const int bt = best_idx / count;
            const auto be = orientation_of(best_idx);
            const double new_sx = search.shifts[static_cast<std::size_t>(bt)].first + (relative_shifts ? pose.shift_x : 0.0);
            const double new_sy = search.shifts[static_cast<std::size_t>(bt)].second + (relative_shifts ? pose.shift_y : 0.0);
            const double moved = geometry::rotation_angle_between(geometry::euler_to_matrix({pose.rot, pose.tilt, pose.psi}), geometry::euler_to_matrix({be.rot, be.tilt, be.psi}));
            angle_change += moved;
            changed += moved > state.step / 2;
            // Back-projection: the particle re-centred, CTF-weighted, at each kept pose.
            const auto g = static_cast<std::size_t>(set.optics_index(i));
            const auto& spec = spectra[static_cast<std::size_t>(b)];
            const auto& c = ctfs[static_cast<std::size_t>(b)];
            for (const auto& [w, idx] : kept) {
              const int t = idx / count;
              const auto e = orientation_of(idx);
              const double sx = search.shifts[static_cast<std::size_t>(t)].first + (relative_shifts ? pose.shift_x : 0.0);
              const double sy = search.shifts[static_cast<std::size_t>(t)].second + (relative_shifts ? pose.shift_y : 0.0);
              const auto& raw = unmasked_spectra[static_cast<std::size_t>(b)];
              std::copy(raw.begin(), raw.end(), data.begin());
              image::shift_half_grid_2d(data.data(), n, -sx, -sy);
              const int hx = n / 2 + 1;
              for (int row = 0; row < n; ++row) {
                const int ky = image::wrap_frequency(row, n);
                for (int kx = 0; kx < hx; ++kx) {
                  const std::size_t idx2 = static_cast<std::size_t>(row) * hx + kx;
                  const auto s = std::min<std::size_t>(static_cast<std::size_t>(std::lround(std::sqrt(kx * kx + ky * ky))), state.sigma2[g].size() - 1);
                  const float isg = static_cast<float>(1.0 / state.sigma2[g][s]) * w;
                  data[idx2] *= c[idx2] * isg;
                  weight[idx2] = c[idx2] * c[idx2] * isg;
                }
              }
              const Mat3 a_mat = geometry::euler_to_matrix({e.rot, e.tilt, e.psi});
              for (const auto& st : sym_t) accum[static_cast<std::size_t>(2 * tid + h)].insert(a_mat * st, data.data(), weight.data(), n, insert_radius);
            }
            // Noise from the residual at the best pose.
            if (!cc_iteration) {
              const float* a_row = state.local ? local_templates.data() + static_cast<std::size_t>(best_idx % count) * 2 * F
                                               : templates.data() + static_cast<std::size_t>(best_idx % count) * 2 * F;
              for (int f = 0; f < F; ++f) {
                const auto idx2 = static_cast<std::size_t>(list.index[static_cast<std::size_t>(f)]);
                const double ph = -2 * std::numbers::pi / n * (list.kx[static_cast<std::size_t>(f)] * new_sx + list.ky[static_cast<std::size_t>(f)] * new_sy);
                const Complex model = c[idx2] * Complex(static_cast<float>(std::cos(ph)), static_cast<float>(std::sin(ph))) * Complex(a_row[f], a_row[F + f]);
                const auto s = static_cast<std::size_t>(list.shell[static_cast<std::size_t>(f)]);
                thread_res[static_cast<std::size_t>(tid)][g][s] += std::norm(spec[idx2] - model);
                thread_cnt[static_cast<std::size_t>(tid)][g][s] += 1;
              }
            }
            pose.rot = be.rot, pose.tilt = be.tilt, pose.psi = be.psi;
            pose.shift_x = new_sx, pose.shift_y = new_sy;
            pose.max_probability = kept.front().first;
            pose.significant = static_cast<int>(kept.size());
          }
        }
        progress.advance(bc);
      }
    }
    progress.finish();
    for (int t = 0; t < threads; ++t)
      for (std::size_t g = 0; g < residual.size(); ++g)
        for (std::size_t s = 0; s < residual[g].size(); ++s)
          residual[g][s] += thread_res[static_cast<std::size_t>(t)][g][s], residual_count[g][s] += thread_cnt[static_cast<std::size_t>(t)][g][s];
    for (int t = 1; t < threads; ++t) {
      accum[0].add(accum[static_cast<std::size_t>(2 * t)]);
      accum[1].add(accum[static_cast<std::size_t>(2 * t + 1)]);
    }
    // M-step: each half regularised by the previous FSC (tau^2 = T sigma_ref^2 FSC / (1 - FSC)).
    for (int h = 0; h < 2; ++h) {
      const auto mean_weight = accum[static_cast<std::size_t>(h)].mean_weight_per_shell();
      std::vector<double> reg(mean_weight.size());
      for (std::size_t s = 0; s < reg.size(); ++s) {
        double f = s < state.fsc.size() ? state.fsc[s] : 0.0;
        if (state.fsc.empty()) f = static_cast<double>(s) <= n * pixel / o.initial_lowpass ? 0.9 : 0.01;
        f = std::clamp(f, 1e-3, 0.999);
        reg[s] = mean_weight[s] * (1 - f) / f;
      }
      // The last iteration's half maps are left unregularised, as their names (_unfil) say.
      half_maps[static_cast<std::size_t>(h)] = accum[static_cast<std::size_t>(h)].reconstruct(final_iteration ? std::vector<double>{} : reg);
    }
    if (final_iteration) {
      em::BackProjector joined = accum[0];
      joined.add(accum[1]);
      joined_unfiltered = joined.reconstruct();
    }
    for (std::size_t g = 0; g < state.sigma2.size(); ++g)
      for (std::size_t s = 1; s < state.sigma2[g].size(); ++s)
        if (residual_count[g][s] > 0) state.sigma2[g][s] = std::max(1e-12, residual[g][s] / (2 * residual_count[g][s]));

    // Masks and FSC.
    std::vector<float> average(half_maps[0].size());
    for (std::size_t v = 0; v < average.size(); ++v) average[v] = 0.5f * (half_maps[0][v] + half_maps[1][v]);
    const double current_res = image::resolution_at(state.fsc.empty() ? std::vector<double>{1, 0} : state.fsc, 0.143, n, pixel);
    const std::vector<float> mask = !user_mask.empty() ? user_mask : (it >= 3 && current_res < 20 ? solvent_mask(average, n, pixel) : sphere);
    state.fsc = image::fsc_3d(masked(half_maps[0], mask), masked(half_maps[1], mask), n);
    // Shells beyond what was back-projected hold only interpolation leakage shared by both halves.
    for (std::size_t s = static_cast<std::size_t>(insert_radius) + 1; s < state.fsc.size(); ++s) state.fsc[s] = 0;
    const double resolution = image::resolution_at(state.fsc, 0.143, n, pixel);
    const int res_shell = static_cast<int>(std::floor(n * pixel / resolution));
    // The first iteration's FSC is biased (both halves were aligned to the same reference), so
    // it does not count as progress.
    if (it > 1) {
      const double gain = state.best_resolution - resolution;
      if (gain > 0.02 * state.best_resolution) state.iterations_without_gain = 0;
      else ++state.iterations_without_gain;
      state.best_resolution = std::min(state.best_resolution, resolution);
    }
    state.radius = std::clamp(static_cast<double>(res_shell) + 4, 4.0, nyquist);
    const double changed_fraction = static_cast<double>(changed) / static_cast<double>(active.size());
    const double seconds = std::chrono::duration<double>(Clock::now() - it_start).count();
    log::info("iteration {:3}: resolution {:5.2f} Å, step {:.2f}° ({}), offsets {:.2f} px step, {:.1f}% poses changed (mean {:.2f}°), {:.1f} s{}",
              it, resolution, state.step, state.local ? "local" : (state.second_global ? "global, fine" : "global"), state.offset_step, 100 * changed_fraction,
              angle_change / static_cast<double>(active.size()), seconds,
              gemm_seconds > 0 ? fmt::format(", GEMM {:.0f} GFLOP/s", gflop / gemm_seconds) : "");
    state.history.push_back({{"iteration", it}, {"resolution", resolution}, {"step", state.step}, {"local", state.local},
                             {"changed", changed_fraction}, {"seconds", seconds}});

    // Sampling schedule: after the global stage, halve the step (local searches) whenever the
    // resolution stops improving; stop when the step is finer than the resolution needs.
    // The finest step worth searching: about the angle over which the particle's rim moves by a
    // quarter of the current resolution, never below 0.9°.
    const double needed_step = std::max(0.9, 0.1 * resolution / (diameter / 2) * 180 / std::numbers::pi);
    if (final_iteration) {
      result.resolution = resolution;
      break;
    }
    if (!state.local && !state.second_global && it >= 3 && (state.iterations_without_gain >= 1 || it >= 6)) {
      // One more global pass on a grid twice as fine: it settles particles that the coarse grid
      // put in a pseudo-symmetric mate of their true orientation.
      state.second_global = true;
      state.step /= 2;
      state.offset_step = 1;
      state.offset_range = 1;
      state.iterations_without_gain = 0;
    } else if (!state.local && state.second_global) {
      state.local = true;
      state.step /= 2;
      state.offset_step = std::max(0.25, o.offset_step / 4);
      state.offset_range = 2 * state.offset_step;
      state.iterations_without_gain = 0;
    } else if (state.local && state.iterations_without_gain >= 1) {
      if (state.step / 2 < needed_step) {
        // Finest step reached: one more iteration at it, then the last one, joined.
        if (state.iterations_without_gain >= 2) final_iteration = true;
      } else {
        state.step /= 2;
        state.offset_step = std::max(0.125, state.offset_step / 2);
        state.offset_range = 2 * state.offset_step;
        state.iterations_without_gain = 0;
      }
    }
    // Checkpoint: half maps and the state; the next iteration starts from exactly this.
    write_map(dir / "checkpoint_half1.mrc", half_maps[0], n, pixel);
    write_map(dir / "checkpoint_half2.mrc", half_maps[1], n, pixel);
    json j;
    j["format"] = "emcryo-refine-checkpoint-1";
    j["options"] = {{"particles", o.particles}, {"reference", o.reference}, {"symmetry", o.symmetry}, {"mask", o.mask},
                    {"initial_lowpass", o.initial_lowpass}, {"particle_diameter", o.particle_diameter}, {"initial_step", o.initial_step},
                    {"offset_range", o.offset_range}, {"offset_step", o.offset_step}, {"max_iterations", o.max_iterations},
                    {"adaptive_marginalization", o.adaptive_marginalization}, {"no_ctf", o.no_ctf}, {"batch", o.batch}, {"seed", o.seed}};
    j["iteration"] = state.iteration, j["step"] = state.step, j["offset_step"] = state.offset_step, j["offset_range"] = state.offset_range;
    j["second_global"] = state.second_global;
    j["local"] = state.local, j["radius"] = state.radius, j["sigma2"] = state.sigma2, j["fsc"] = state.fsc;
    j["best_resolution"] = state.best_resolution, j["iterations_without_gain"] = state.iterations_without_gain;
    state.final_next = final_iteration;
    j["final_next"] = final_iteration;
    json poses = json::array();
    for (const auto& p : state.poses) poses.push_back({p.rot, p.tilt, p.psi, p.shift_x, p.shift_y});
    j["poses"] = poses;
    j["history"] = state.history;
    write_text_file(dir / "checkpoint.json", j.dump(1));
  }

  // Final outputs: half maps, full map (unfiltered and sharpened), FSC curves, particles, report.
  write_map(dir / "half1_unfil.mrc", half_maps[0], n, pixel);
  write_map(dir / "half2_unfil.mrc", half_maps[1], n, pixel);
  const std::vector<float>& full = joined_unfiltered;
  write_map(dir / "map_unfil.mrc", full, n, pixel);
  const auto mask = !user_mask.empty() ? user_mask : solvent_mask(full, n, pixel);
  write_map(dir / "mask.mrc", mask, n, pixel);
  const auto fsc_unmasked = image::fsc_3d(half_maps[0], half_maps[1], n);
  const auto fsc_masked = image::fsc_3d(masked(half_maps[0], mask), masked(half_maps[1], mask), n);
  int randomize_from = 1;
  while (randomize_from + 1 < static_cast<int>(fsc_unmasked.size()) && fsc_unmasked[static_cast<std::size_t>(randomize_from)] > 0.8) ++randomize_from;
  const auto r1 = randomize_phases_beyond(half_maps[0], n, randomize_from, o.seed), r2 = randomize_phases_beyond(half_maps[1], n, randomize_from, o.seed + 1);
  const auto fsc_random = image::fsc_3d(masked(r1, mask), masked(r2, mask), n);
  std::vector<double> fsc_corrected = fsc_masked;
  for (std::size_t s = static_cast<std::size_t>(randomize_from) + 2; s < fsc_corrected.size(); ++s)
    fsc_corrected[s] = fsc_random[s] < 1 ? (fsc_masked[s] - fsc_random[s]) / (1 - fsc_random[s]) : 0;
  result.resolution = image::resolution_at(fsc_corrected, 0.143, n, pixel);
  const double resolution_unmasked = image::resolution_at(fsc_unmasked, 0.143, n, pixel);
  // Sharpened map: FSC-weighted (sqrt(2FSC/(1+FSC))), B-factor from the Guinier slope, low-passed.
  result.bfactor = guinier_bfactor(full, n, pixel, result.resolution);
  {
    auto spectrum = image::fft_forward_3d(full, n);
    const auto shells = image::shell_index_3d(n);
    for (std::size_t v = 0; v < spectrum.size(); ++v) {
      const auto s = static_cast<std::size_t>(shells[v]);
      const double f = s < fsc_corrected.size() ? std::max(0.0, fsc_corrected[s]) : 0.0;
      const double q = static_cast<double>(s) / (n * pixel);
      const double weight = std::sqrt(2 * f / (1 + f)) * std::exp(-result.bfactor * q * q / 4);
      spectrum[v] *= static_cast<float>(weight);
    }
    image::lowpass_half_grid_3d(spectrum.data(), n, n * pixel / result.resolution, 2);
    write_map(dir / "map.mrc", image::fft_inverse_3d(spectrum, n), n, pixel);
  }
  // FSC STAR with the three curves.
  {
    io::StarFile star;
    io::StarBlock block{"fsc", true, {}};
    auto& t = block.table;
    const int c_i = t.add_column("rlnSpectralIndex"), c_r = t.add_column("rlnAngstromResolution"),
              c_u = t.add_column("rlnFourierShellCorrelationUnmaskedMaps"), c_m = t.add_column("rlnFourierShellCorrelationMaskedMaps"),
              c_c = t.add_column("rlnFourierShellCorrelationCorrected"), c_p = t.add_column("rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps");
    for (std::size_t s = 0; s < fsc_masked.size(); ++s) {
      const std::size_t r = t.add_row();
      t.set_integer(r, c_i, static_cast<std::int64_t>(s));
      t.set_number(r, c_r, s ? n * pixel / static_cast<double>(s) : 999.0, 3);
      t.set_number(r, c_u, fsc_unmasked[s]), t.set_number(r, c_m, fsc_masked[s]);
      t.set_number(r, c_c, fsc_corrected[s]), t.set_number(r, c_p, fsc_random[s]);
    }
    star.blocks.push_back(std::move(block));
    io::write_star(dir / "fsc.star", star);
  }
  // particles.star with poses in RELION's names.
  io::StarFile out_star = set.output_star(active);
  auto& t = io::ParticleSet::particles_table(out_star);
  const int c_rot = t.add_column("rlnAngleRot"), c_tilt = t.add_column("rlnAngleTilt"),
            c_psi = t.add_column("rlnAnglePsi"), c_ox = t.add_column("rlnOriginXAngst"), c_oy = t.add_column("rlnOriginYAngst"),
            c_sub = t.add_column("rlnRandomSubset"), c_pmax = t.add_column("rlnMaxValueProbDistribution"),
            c_nsig = t.add_column("rlnNrOfSignificantSamples");
  std::vector<double> rots, tilts;
  for (std::size_t a = 0; a < active.size(); ++a) {
    const auto& p = state.poses[a];
    t.set_number(a, c_rot, p.rot, 4), t.set_number(a, c_tilt, p.tilt, 4), t.set_number(a, c_psi, p.psi, 4);
    t.set_number(a, c_ox, -p.shift_x * pixel, 4), t.set_number(a, c_oy, -p.shift_y * pixel, 4);
    t.set_integer(a, c_sub, half[a]);
    t.set_number(a, c_pmax, p.max_probability, 5);
    t.set_integer(a, c_nsig, p.significant);
    rots.push_back(p.rot), tilts.push_back(p.tilt);
  }
  io::write_star(dir / "particles.star", out_star);
  {
    io::StarFile model;
    io::StarBlock general{"model_general", false, {}};
    auto& g = general.table;
    g.add_row();
    g.set_number(0, g.add_column("rlnCurrentResolution"), result.resolution, 4);
    g.set_number(0, g.add_column("rlnPixelSize"), pixel, 4);
    g.set_integer(0, g.add_column("rlnOriginalImageSize"), n);
    g.set_number(0, g.add_column("rlnBfactorUsedForSharpening"), result.bfactor, 2);
    g.set_text(0, g.add_column("rlnSymmetryGroup"), group.name);
    g.set_integer(0, g.add_column("rlnCurrentIteration"), state.iteration);
    model.blocks.push_back(std::move(general));
    for (std::size_t gi = 0; gi < state.sigma2.size(); ++gi) {
      io::StarBlock noise{fmt::format("model_optics_group_{}", gi + 1), true, {}};
      auto& nt = noise.table;
      const int ci = nt.add_column("rlnSpectralIndex"), cs = nt.add_column("rlnSigma2Noise");
      for (std::size_t s = 0; s < state.sigma2[gi].size(); ++s) {
        const std::size_t r = nt.add_row();
        nt.set_integer(r, ci, static_cast<std::int64_t>(s)), nt.set_number(r, cs, state.sigma2[gi][s], 8);
      }
      model.blocks.push_back(std::move(noise));
    }
    io::write_star(dir / "model.star", model);
  }
  io::Series su{"unmasked", {}, {}}, sm{"masked", {}, {}}, scr{"masked, phase-randomization corrected", {}, {}};
  for (std::size_t s = 1; s < fsc_masked.size(); ++s) {
    const double q = static_cast<double>(s) / (n * pixel);
    su.x.push_back(q), su.y.push_back(fsc_unmasked[s]);
    sm.x.push_back(q), sm.y.push_back(fsc_masked[s]);
    scr.x.push_back(q), scr.y.push_back(fsc_corrected[s]);
  }
  const std::string plot = io::svg_line_plot("Gold-standard FSC", "spatial frequency (1/Å)", "FSC", {su, sm, scr}, {0.143, 0.5});
  write_text_file(dir / "fsc.svg", plot);
  const std::string orientations = io::svg_orientation_plot(rots, tilts, "Viewing directions");
  write_text_file(dir / "orientations.svg", orientations);
  io::HtmlReport report("emcryo refine");
  report.add_paragraph(fmt::format("{} particles, box {} px, {:.3f} Å/px, symmetry {}, {} iterations.", active.size(), n, pixel, group.name, state.iteration));
  report.add_paragraph(fmt::format("Resolution (gold-standard FSC 0.143, masked, phase-randomization corrected): {:.2f} Å (unmasked {:.2f} Å). Sharpening B-factor {:.0f} Å².",
                                   result.resolution, resolution_unmasked, result.bfactor));
  report.add_raw(plot);
  report.add_raw(orientations);
  report.add_image_png("Central sections of map.mrc (sharpened)", io::volume_sections_png(io::MrcReader(dir / "map.mrc").read_all(), n));
  std::vector<std::vector<std::string>> rows;
  for (const auto& h : state.history)
    rows.push_back({std::to_string(h.at("iteration").get<int>()), fmt::format("{:.2f}", h.at("resolution").get<double>()),
                    fmt::format("{:.2f}", h.at("step").get<double>()), h.at("local").get<bool>() ? "local" : "global",
                    fmt::format("{:.1f}", 100 * h.at("changed").get<double>()), fmt::format("{:.1f}", h.at("seconds").get<double>())});
  report.add_table({"iteration", "resolution (Å)", "angular step (°)", "search", "poses changed (%)", "seconds"}, rows);
  report.write(dir / "report.html");
  log::info("refine: {:.2f} Å (FSC 0.143, masked and corrected); map.mrc, half maps, fsc.star, particles.star in {}", result.resolution, o.out_dir);
  log::set_file("");
  result.iterations = state.iteration;
  return result;
}

}  // namespace

RefineResult run_refine(const RefineOptions& options) {
  if (fs::exists(fs::path(options.out_dir) / "checkpoint.json"))
    fail("{}: already holds a refine run; use --continue {} to resume it, or choose another --out", options.out_dir, options.out_dir);
  (void)geometry::make_symmetry_group(options.symmetry);  // an unknown name fails before any work
  State state;
  state.options = options;
  return run(std::move(state), false);
}

RefineResult continue_refine(const std::string& out_dir) {
  const fs::path path = fs::path(out_dir) / "checkpoint.json";
  if (!fs::exists(path)) fail("{}: no checkpoint.json: nothing to continue", out_dir);
  State state;
  try {
    const json j = json::parse(read_text_file(path));
    const auto& o = j.at("options");
    auto& r = state.options;
    r.particles = o.at("particles"), r.reference = o.at("reference"), r.symmetry = o.at("symmetry"), r.mask = o.at("mask");
    r.initial_lowpass = o.at("initial_lowpass"), r.particle_diameter = o.at("particle_diameter"), r.initial_step = o.at("initial_step");
    r.offset_range = o.at("offset_range"), r.offset_step = o.at("offset_step"), r.max_iterations = o.at("max_iterations");
    r.adaptive_marginalization = o.at("adaptive_marginalization"), r.no_ctf = o.at("no_ctf"), r.batch = o.at("batch"), r.seed = o.at("seed");
    r.out_dir = out_dir;
    state.iteration = j.at("iteration"), state.step = j.at("step"), state.offset_step = j.at("offset_step");
    state.offset_range = j.at("offset_range"), state.local = j.at("local"), state.radius = j.at("radius");
    state.second_global = j.at("second_global");
    state.sigma2 = j.at("sigma2").get<std::vector<std::vector<double>>>();
    state.fsc = j.at("fsc").get<std::vector<double>>();
    state.best_resolution = j.at("best_resolution"), state.iterations_without_gain = j.at("iterations_without_gain");
    state.final_next = j.at("final_next");
    for (const auto& p : j.at("poses")) state.poses.push_back({p[0], p[1], p[2], p[3], p[4], 1, 1});
    for (const auto& h : j.at("history")) state.history.push_back(h);
  } catch (const json::exception& e) {
    fail("{}: damaged checkpoint: {}", path.string(), e.what());
  }
  return run(std::move(state), true);
}

}  // namespace emcryo::jobs
