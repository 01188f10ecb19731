// hetero-refine and class3d: one loop, two configurations of the 3D engine. Both keep K classes
// with gold-standard half maps per class; each iteration scores every particle of a half against
// that half's K maps (hetero-refine: over a global, then local, pose search, the best pose per
// class kept; class3d: at the input pose only), reduces the class posterior over K (tempered by
// the class similarity, with the class priors; hard with --force-hard), back-projects each class
// weighted by its posterior, re-estimates the noise and the class priors, and sets the working
// limit from the best FSC over the classes (every class compared at the same frequencies).
#include "emcryo/jobs/hetero.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "class_outputs.hpp"
#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/em/expectation.hpp"
#include "emcryo/em/hypotheses.hpp"
#include "emcryo/em/model3d.hpp"
#include "emcryo/gpu/backend.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/report.hpp"
#include "job_folder.hpp"
#include "map_job.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;
using json = nlohmann::json;

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(HeteroOptions, align, particles, references, classes, symmetry, mask, initial_lowpass,
                                                particle_diameter, initial_step, offset_range, offset_step, global_iterations, max_iterations, force_hard, marginalize_poses,
                                                class_similarity, similarity_end, cross_half_iterations, target_resolution, no_ctf, cs_root, batch, seed)

namespace {

using Clock = std::chrono::steady_clock;
std::size_t sz(int v) { return static_cast<std::size_t>(v); }

struct IterationRecord {
  int iteration = 0;
  std::vector<double> sizes, resolutions;  // per class
  double similarity = 0, changed = 0, seconds = 0;
  std::string search;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(IterationRecord, iteration, sizes, resolutions, similarity, changed, seconds, search)

/// Everything an iteration needs from the previous one; checkpointed after every iteration.
struct State {
  HeteroOptions options;
  int K = 0;
  int iteration = 0;
  double radius = 0;                                  // working limit, pixels
  std::vector<std::vector<double>> sigma2;
  std::vector<std::vector<double>> fsc;               // per class: half-map FSC of the last iteration
  std::vector<em::Pose3D> poses;                      // per usable particle
  std::vector<std::vector<double>> class_posteriors;  // per usable particle, K values
  std::vector<double> class_priors;                   // K
  std::vector<int> emptied_at;                        // per class: the iteration it emptied out; 0 = in use
  std::vector<IterationRecord> history;
  bool final_next = false;
  std::vector<std::string> map_files;                 // class k half h at 2k+h, beside checkpoint.json
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(State, options, K, iteration, radius, sigma2, fsc, poses, class_posteriors, class_priors,
                                                emptied_at, history, final_next, map_files)

const char* job_name(const HeteroOptions& o) { return o.align ? "hetero-refine" : "class3d"; }
int iteration_count(const HeteroOptions& o) { return o.max_iterations > 0 ? o.max_iterations : (o.align ? 12 : 15); }

/// The class similarity of iteration `it`: the initial value at iteration 1, falling linearly to 0
/// at `similarity_end` (cryoSPARC's annealing).
double class_similarity_at(const HeteroOptions& o, int it) {
  const double start = o.class_similarity >= 0 ? o.class_similarity : (o.align ? 0.0 : 0.5);
  if (o.similarity_end <= 1) return 0;
  return start * std::clamp(static_cast<double>(o.similarity_end - it) / (o.similarity_end - 1), 0.0, 1.0);
}

/// The pose hypotheses of iteration `it`. hetero-refine: `global_iterations` global iterations at the
/// initial step with absolute shifts, one at half the step around the current shifts, then local
/// searches at a quarter of it, with shifts of a quarter pixel around the current ones (as refine's
/// last passes: half-pixel shifts left the class maps ~0.3 shell further from the truth on the
/// 1TII test); class3d: the input pose only. Six global iterations by default: the
/// classes sort themselves out over the first five or so, and a particle's pose in the class it
/// moves to must still be free to jump then (measured, 1000 particles, 12 iterations: 1TII against
/// itself without chain H, accuracy 0.947 with three, 0.981 with six; without chain A, 0.981 and
/// 0.993). A global iteration costs about what a local one does at this size.
em::PoseSearch pose_search(const HeteroOptions& o, int it, std::string& label) {
  em::PoseSearch s;
  if (!o.align) {
    s.fixed = true;
    s.shifts = em::make_shift_grid(0, 1);
    s.relative_shifts = true;
    s.coarse_to_fine = false;
    label = "fixed poses";
    return s;
  }
  if (it <= o.global_iterations) {
    s.step = o.initial_step;
    s.shifts = em::make_shift_grid(o.offset_range, o.offset_step);
    label = "global";
  } else if (it == o.global_iterations + 1) {
    s.step = o.initial_step / 2;
    s.shifts = em::make_shift_grid(1, 1);
    s.relative_shifts = true;
    label = "global, fine";
  } else {
    s.local = true;
    s.step = o.initial_step / 4;
    s.shifts = em::make_shift_grid(0.5, 0.25);
    s.relative_shifts = true;
    label = "local";
  }
  if (!s.local) s.grid = em::orientation_grid(s.step, o.symmetry);
  return s;
}

/// Standard deviation of `map` weighted by `mask`.
double masked_stddev(const std::vector<float>& map, const std::vector<float>& mask) {
  double w = 0, sum = 0, sum2 = 0;
  for (std::size_t i = 0; i < map.size(); ++i) w += mask[i], sum += mask[i] * map[i], sum2 += mask[i] * map[i] * map[i];
  const double mean = sum / std::max(w, 1e-12);
  return std::sqrt(std::max(0.0, sum2 / std::max(w, 1e-12) - mean * mean));
}

/// K starts from one low-passed reference: copies with independent noise at the same low-pass,
/// of a fifth of the reference's standard deviation inside the particle's sphere.
std::vector<std::vector<float>> perturbed_copies(const std::vector<float>& start, int K, const MapJobInputs& in, double lowpass,
                                                 std::uint64_t seed) {
  const double level = 0.2 * masked_stddev(start, in.sphere);
  std::vector<std::vector<float>> maps;
  for (int k = 0; k < K; ++k) {
    auto rng = item_rng(seed, 1000 + static_cast<std::uint64_t>(k));
    std::normal_distribution<float> normal(0, 1);
    std::vector<float> noise(start.size());
    for (auto& v : noise) v = normal(rng);
    noise = image::masked(image::lowpass_volume(noise, in.n, in.pixel, lowpass), in.sphere);
    const double scale = level / std::max(1e-12, masked_stddev(noise, in.sphere));
    std::vector<float> map = start;
    for (std::size_t i = 0; i < map.size(); ++i) map[i] += static_cast<float>(scale * noise[i]);
    maps.push_back(std::move(map));
  }
  return maps;
}

/// The particles of half h+1: their indices (into the usable list) and images.
void half_members(const MapJobInputs& in, int h, std::vector<std::size_t>& members, std::vector<std::size_t>& images) {
  members.clear(), images.clear();
  for (std::size_t a = 0; a < in.active.size(); ++a)
    if (in.half[a] == h + 1) members.push_back(a), images.push_back(in.active[a]);
}

/// K starts per half from random particle subsets reconstructed at their input poses and
/// low-passed (cryoSPARC's "simple" initialisation).
std::vector<std::vector<std::vector<float>>> random_subset_starts(const MapJobInputs& in, int K, const State& state, em::ScoringBackend& backend,
                                                                  const std::vector<geometry::Mat3>& symmetry) {
  const auto& o = state.options;
  std::vector<std::vector<std::size_t>> images(2);
  std::vector<std::vector<em::Pose3D>> poses(2);
  for (int h = 0; h < 2; ++h) {
    std::vector<std::size_t> members;
    half_members(in, h, members, images[sz(h)]);
    for (std::size_t a : members) {
      em::Pose3D p = state.poses[a];
      auto rng = item_rng(o.seed, a);
      p.class_posterior.assign(sz(K), 0.0);
      p.class_posterior[std::uniform_int_distribution<std::size_t>(0, sz(K) - 1)(rng)] = 1;
      poses[sz(h)].push_back(p);
    }
  }
  const double radius = std::min(in.n / 2.0 - 1, in.n * in.pixel / o.initial_lowpass + 2);
  Progress progress("random-subset starts", static_cast<std::int64_t>(in.active.size()));
  auto sums = back_project_classes(in.set, images, poses, K, symmetry, !o.no_ctf, radius, o.batch, backend, &progress);
  progress.finish();
  // Both halves start from the same maps (the subsets of both halves together), so that class k
  // means the same in each half.
  std::vector<std::vector<float>> maps;
  for (int k = 0; k < K; ++k) {
    sums[0][sz(k)].add(sums[1][sz(k)]);
    maps.push_back(image::lowpass_volume(sums[0][sz(k)].reconstruct(), in.n, in.pixel, o.initial_lowpass));
  }
  return {maps, maps};
}

/// The first iteration's maps[h][k] and the number of classes.
std::vector<std::vector<std::vector<float>>> make_starts(const MapJobInputs& in, State& state, const std::vector<geometry::Mat3>& symmetry,
                                                        em::ScoringBackend& backend) {
  const auto& o = state.options;
  const int R = static_cast<int>(o.references.size());
  if (R > 1 && o.classes > 0 && o.classes != R) fail("{}: {} references for --classes {}: give one per class, or one", job_name(o), R, o.classes);
  const int K = state.K = R > 1 ? R : o.classes;
  if (K < 2) fail("{}: needs at least two classes (--classes K or one --ref per class)", job_name(o));
  if (R == 0) {
    if (o.align) fail("{}: needs --ref (one per class, or one with --classes K)", job_name(o));
    log::info("class3d: starts from {} random particle subsets at their input poses, low-passed to {} Å", K, o.initial_lowpass);
    return random_subset_starts(in, K, state, backend, symmetry);
  }
  std::vector<std::vector<float>> starts;
  for (const auto& path : o.references) {
    std::string note;
    starts.push_back(image::lowpass_volume(read_reference(path, in.n, in.pixel, job_name(o), note), in.n, in.pixel, o.initial_lowpass));
    if (!note.empty()) log::info("{}", note);
  }
  if (R == 1) {
    log::info("{}: {} starts from {}: copies with independent noise at {} Å", job_name(o), K, o.references.front(), o.initial_lowpass);
    starts = perturbed_copies(starts.front(), K, in, o.initial_lowpass, o.seed);
  }
  return {starts, starts};
}

void write_checkpoint(const JobFolder& folder, State& state, const std::vector<std::vector<std::vector<float>>>& maps, int n, double pixel) {
  std::vector<std::string> labels;
  std::vector<std::vector<float>> flat;
  for (int k = 0; k < state.K; ++k)
    for (int h = 0; h < 2; ++h) labels.push_back(fmt::format("class{:03}_half{}", k + 1, h + 1)), flat.push_back(maps[sz(h)][sz(k)]);
  state.map_files = write_iteration_maps(folder.dir(), state.iteration, labels, flat, n, pixel);
  folder.write_checkpoint(state, "emcryo-hetero-checkpoint-1");
  remove_stale_maps(folder.dir(), state.map_files);
}

/// Per shell, the best FSC over the classes in use.
std::vector<double> best_fsc(const State& state) {
  std::vector<double> best;
  for (int k = 0; k < state.K; ++k) {
    if (state.emptied_at[sz(k)] || state.fsc[sz(k)].empty()) continue;
    const auto& f = state.fsc[sz(k)];
    if (best.empty()) best.assign(f.size(), -1.0);
    for (std::size_t s = 0; s < f.size(); ++s) best[s] = std::max(best[s], f[s]);
  }
  return best;
}

/// Correlation of two maps inside a mask.
double masked_correlation(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& mask) {
  double w = 0, sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double m = mask[i];
    w += m, sa += m * a[i], sb += m * b[i], saa += m * a[i] * a[i], sbb += m * b[i] * b[i], sab += m * a[i] * b[i];
  }
  const double va = saa - sa * sa / w, vb = sbb - sb * sb / w;
  return va > 0 && vb > 0 ? (sab - sa * sb / w) / std::sqrt(va * vb) : 0;
}

/// The two halves classify independently, so their labels can swap (measured: class3d from random
/// subsets ended with class 1 of one half holding the other half's class 2; every FSC then
/// compares different structures). After each M-step the classes of half 2 are renamed to match
/// half 1's most correlated maps (greedy, pair by pair), and its particles' posteriors with them.
/// Returns the renaming: half 2's class `from[k]` becomes class k.
std::vector<int> match_half_labels(const std::vector<std::vector<std::vector<float>>>& maps, const std::vector<int>& live,
                                   const std::vector<float>& mask) {
  const std::size_t L = live.size();
  std::vector<std::vector<double>> c(L, std::vector<double>(L));
  for (std::size_t i = 0; i < L; ++i)
    for (std::size_t j = 0; j < L; ++j) c[i][j] = masked_correlation(maps[0][sz(live[i])], maps[1][sz(live[j])], mask);
  std::vector<int> from(maps[0].size());
  std::iota(from.begin(), from.end(), 0);
  std::vector<bool> used_i(L, false), used_j(L, false);
  for (std::size_t round = 0; round < L; ++round) {
    std::size_t bi = 0, bj = 0;
    double best = -2;
    for (std::size_t i = 0; i < L; ++i)
      for (std::size_t j = 0; j < L; ++j)
        if (!used_i[i] && !used_j[j] && c[i][j] > best) best = c[i][j], bi = i, bj = j;
    used_i[bi] = used_j[bj] = true;
    from[sz(live[bi])] = live[bj];
  }
  return from;
}

int most_probable(const std::vector<double>& posterior) {
  return static_cast<int>(std::max_element(posterior.begin(), posterior.end()) - posterior.begin());
}

void write_report(const fs::path& dir, const State& state, const MapJobInputs& in, const std::vector<class_outputs::ClassMap>& classes,
                  const std::vector<em::Pose3D>& poses, const std::string& symmetry) {
  const auto& o = state.options;
  io::HtmlReport report(fmt::format("emcryo {}", job_name(o)));
  report.add_paragraph(fmt::format("{} particles, {} classes, box {} px, {:.3f} Å/px, symmetry {}, {} iterations; {}.", in.active.size(),
                                   state.K, in.n, in.pixel, symmetry, state.iteration,
                                   o.align ? "poses searched per class (maximised), class marginalised" : "input poses kept, class marginalised"));
  if (o.force_hard) report.add_paragraph("--force-hard: each particle entered its most probable class only.");
  std::vector<io::Series> sizes;
  for (int k = 0; k < state.K; ++k) {
    io::Series s{fmt::format("class {}", k + 1), {}, {}};
    for (const auto& h : state.history) s.x.push_back(h.iteration), s.y.push_back(h.sizes[sz(k)]);
    sizes.push_back(std::move(s));
  }
  report.add_raw(io::svg_line_plot("Class sizes per iteration", "iteration", "particles", sizes));
  std::vector<std::vector<std::string>> rows;
  for (const auto& h : state.history) {
    std::string size_text, res_text;
    for (int k = 0; k < state.K; ++k) {
      size_text += fmt::format("{}{:.0f}", k ? " / " : "", h.sizes[sz(k)]);
      res_text += fmt::format("{}{:.1f}", k ? " / " : "", h.resolutions[sz(k)]);
    }
    rows.push_back({std::to_string(h.iteration), size_text, res_text, fmt::format("{:.2f}", h.similarity), h.search,
                    fmt::format("{:.1f}", 100 * h.changed), fmt::format("{:.1f}", h.seconds)});
  }
  report.add_table({"iteration", "class sizes", "resolutions (Å)", "class similarity", "search", "poses changed (%)", "seconds"}, rows);
  for (int k = 0; k < state.K; ++k)
    if (state.emptied_at[sz(k)])
      report.add_paragraph(fmt::format("Class {} emptied out at iteration {} and was dropped: no map is written for it.", k + 1,
                                       state.emptied_at[sz(k)]));
  class_outputs::add_class_sections(report, classes, poses, in.n, in.pixel, true);
  report.add_heading("Skipped particles");
  if (in.skipped.empty()) report.add_paragraph("None.");
  for (const auto& s : in.skipped) report.add_paragraph(s);
  report.write(dir / "report.html");
}

HeteroResult run(const JobFolder& folder, State state, bool resumed) {
  const auto& o = state.options;
  const std::string job = job_name(o);
  const auto group = geometry::make_symmetry_group(o.symmetry);
  MapJobInputs in = read_map_job_inputs({job, o.particles, o.cs_root, o.mask, o.no_ctf, o.particle_diameter});
  if (!o.align && !in.set.has_poses()) fail("{}: no rlnAngleRot/rlnAngleTilt/rlnAnglePsi columns: class3d keeps the input poses", o.particles);
  const int n = in.n;
  const double pixel = in.pixel;
  folder.open_log();
  select_particles(in, o.seed);
  const std::size_t N = in.active.size();
  const double nyquist = n / 2.0 - 1;
  const auto backend = gpu::make_backend();  // one for the starts and every iteration
  log::info("{}: scoring on {}", job, backend->name());
  std::vector<std::vector<std::vector<float>>> maps;  // [half][class]
  if (!resumed) {
    state.poses.clear();
    for (std::size_t i : in.active) state.poses.push_back(o.align ? em::Pose3D{} : input_pose(in.set, i));
    maps = make_starts(in, state, group.operators, *backend);
    state.radius = std::min(nyquist, n * pixel / o.initial_lowpass + 2);
    state.sigma2 = em::estimate_initial_sigma2(in.set, in.active, in.particle_mask);
    state.fsc.assign(sz(state.K), {});
    state.class_priors.assign(sz(state.K), 1.0 / state.K);
    state.emptied_at.assign(sz(state.K), 0);
    state.class_posteriors.assign(N, std::vector<double>(sz(state.K), 1.0 / state.K));
  } else {
    const fs::path checkpoint = folder.dir() / "checkpoint.json";
    if (state.K < 2 || state.map_files.size() != sz(2 * state.K) || state.fsc.size() != sz(state.K) || state.emptied_at.size() != sz(state.K) ||
        state.class_priors.size() != sz(state.K))
      fail("{}: damaged checkpoint: its class lists do not match {} classes", checkpoint.string(), state.K);
    if (state.poses.size() != N || state.class_posteriors.size() != N)
      fail("{}: checkpoint holds {} particles but {} are usable now: the input changed", checkpoint.string(), state.poses.size(), N);
    maps.assign(2, std::vector<std::vector<float>>(sz(state.K)));
    for (int k = 0; k < state.K; ++k)
      for (int h = 0; h < 2; ++h) maps[sz(h)][sz(k)] = io::MrcReader(folder.dir() / state.map_files[sz(2 * k + h)]).read_all();
    if (folder.writes()) remove_stale_maps(folder.dir(), state.map_files);
    log::info("{}: continuing after iteration {}", job, state.iteration);
  }
  const int K = state.K;
  log::info("{}: {} particles ({} skipped) in two half sets, {} classes, box {} px, {:.3f} Å/px, symmetry {}", job, N, in.skipped.size(), K, n,
            pixel, group.name);

  const std::size_t shells = sz(n / 2 + 1);
  const std::vector<float>& mask = !in.user_mask.empty() ? in.user_mask : in.sphere;
  // class3d keeps the measured sigma^2: its poses are fixed, and its class-similarity case (a hard
  // start that merges classes, tests/integration/test_hetero.cpp) was measured with it.
  const double noise_inflation = o.align ? em::masked_noise_inflation(in.particle_mask) : 1.0;
  const bool cc_first = !(o.references.empty() && !o.align);  // references are not on the data's grey scale
  bool final_iteration = state.final_next;
  // [half][class]: the last iteration's sums, where its E-step left them (half_sums_store's totals; no
  // copy of every class volume per iteration); null for classes that were not live.
  std::vector<std::vector<const em::BackProjector*>> sums;
  // Each half's E-step sums, made once while the number of live classes stays (allocating and
  // zeroing their lanes every half and iteration was a quarter of hetero-refine's time).
  std::vector<em::ReconstructionSums> half_sums_store;
  double insert_radius = 0;

  while (true) {
    const int it = ++state.iteration;
    const auto it_start = Clock::now();
    final_iteration = final_iteration || it >= iteration_count(o);
    std::vector<int> live;
    for (int k = 0; k < K; ++k)
      if (!state.emptied_at[sz(k)]) live.push_back(k);
    const int L = static_cast<int>(live.size());
    std::string search_label;
    const em::PoseSearch search = pose_search(o, it, search_label);
    const double similarity = class_similarity_at(o, it);
    em::ExpectationSettings settings;
    settings.use_ctf = !o.no_ctf;
    settings.cc_scoring = it == 1 && cc_first;
    // The final maps marginalise over the last local search even with the best pose per class (the
    // pose written is still the best): class maps at 85-100% of the true-pose map's FSC 0.5 where the
    // best pose alone reached 77-82% for the 1TII complex (bench/hetero_class_maps.sh; RESULTS.md).
    settings.marginalize = o.marginalize_poses || final_iteration;
    settings.hard_classes = o.force_hard;
    for (int k : live) settings.class_priors.push_back(state.class_priors[sz(k)]);
    settings.batch = o.batch;
    // Twice refine's kInsertMargin: with refine's, one of bench/hetero_class_maps.sh's five sets
    // (2XHE seed 12, --marginalize-poses) lost its split (accuracy 0.998 -> 0.950).
    insert_radius = settings.insert_radius = final_iteration ? nyquist : std::min(nyquist, state.radius + 2 * kInsertMargin);
    const auto list = em::make_frequency_list(n, state.radius);
    // hetero-refine: the likelihood's noise per pixel inside the particle mask, as refine's
    // (em::masked_noise_inflation): with the measured sigma^2 the posteriors were too sharp
    // (bench/hetero_class_maps.sh's five sets, --marginalize-poses: class maps 0.85-0.98 -> 0.89-1.02
    // of the true-pose map's FSC 0.5; accuracy 0.963-0.999 -> 0.984-1.000).
    const auto likelihood_sigma2 = inflated_sigma2(state.sigma2, noise_inflation);

    // The mask each half's class maps are projected through, once per iteration (the class-similarity
    // pass scores against the same maps). The first iteration's split comes from the starts'
    // independent noise, which fills the whole sphere: cut to the solvent mask it split 2XHE from its
    // chain A by noise (accuracy 0.72, bench/hetero_vs_relion.sh; 0.997 from the second iteration on).
    std::vector<std::vector<float>> projection_masks(2, mask);
    if (o.align && it > 1)
      for (int h = 0; h < 2; ++h) {
        std::vector<const std::vector<float>*> live_maps;
        for (int k : live) live_maps.push_back(&maps[sz(h)][sz(k)]);
        projection_masks[sz(h)] = reference_mask(in, live_maps);
      }

    // One half's E-step against the live classes' maps (and its back-projection unless
    // settings.back_project is off); `poses` receives the half's particles' outcomes.
    const auto e_step = [&](int h, const em::ExpectationSettings& es, std::vector<std::size_t>& members, std::vector<em::Pose3D>& poses,
                            em::ReconstructionSums& half_sums, em::NoiseSums& noise, em::ExpectationStats& stats, Progress* progress) {
      std::vector<std::size_t> images;
      half_members(in, h, members, images);
      poses.clear();
      for (std::size_t a : members) poses.push_back(state.poses[a]);
      std::vector<em::Projector> projectors;
      projectors.reserve(sz(L));
      // Early on, a half's particles are scored against the other half's class maps: a particle's
      // own noise in the map of its class draws it back to that class, and with ~150 particles per
      // class and half that pull holds whatever split the random starts made (measured: class3d,
      // three 2XHE structures, 900 particles: 0.69 accuracy, two structures mixed in two classes
      // with posteriors of 0 or 1; scored across halves: 0.977). Later iterations return to each
      // half's own maps, so the final maps and their FSC are gold-standard again.
      const int scored_against = it <= o.cross_half_iterations ? 1 - h : h;
      for (int k : live)
        projectors.push_back(
            backend->volume_transforms().projector(image::masked(maps[sz(scored_against)][sz(k)], projection_masks[sz(scored_against)]), n, 2));
      std::vector<const em::Projector*> references;
      for (const auto& p : projectors) references.push_back(&p);
      em::expectation_3d(in.set, images, poses, references, list, likelihood_sigma2, in.particle_mask, search, group.operators, es, *backend,
                         half_sums, noise, stats, progress);
    };
    if (similarity > 0 && L > 1 && !settings.hard_classes && !settings.cc_scoring) {
      // Class similarity (cryoSPARC's): the class temperature at which the particles' mean class
      // ESS is 1 + s (K - 1), found from this iteration's scores by a scoring pass over both
      // halves first. A fixed temperature such as 1 / (1 - s) leaves the posteriors hard: with
      // true poses a particle's class log-likelihoods differ by hundreds (measured: class3d, 0.5 on
      // and off gave the same accuracy on every set tried).
      em::ExpectationSettings scoring = settings;
      scoring.back_project = false;
      std::vector<std::vector<double>> evidence;
      for (int h = 0; h < 2; ++h) {
        std::vector<std::size_t> members;
        std::vector<em::Pose3D> poses;
        em::ReconstructionSums unused(L, 2);  // scoring only: never filled, so a minimal box
        em::NoiseSums unused_noise(state.sigma2.size(), shells);
        em::ExpectationStats unused_stats;
        e_step(h, scoring, members, poses, unused, unused_noise, unused_stats, nullptr);
        for (auto& p : poses) evidence.push_back(std::move(p.class_log_evidence));
      }
      std::vector<double> log_prior;
      for (double p : settings.class_priors) log_prior.push_back(std::log(std::max(p, 1e-12)));
      settings.class_temperature = em::temperature_for_class_ess(evidence, log_prior, 1 + similarity * (L - 1));
    }

    em::ExpectationStats stats;
    em::NoiseSums noise(state.sigma2.size(), shells);
    sums.assign(2, std::vector<const em::BackProjector*>(sz(K), nullptr));
    Progress progress(fmt::format("iteration {}", it), static_cast<std::int64_t>(N));
    for (int h = 0; h < 2; ++h) {
      std::vector<std::size_t> members;
      std::vector<em::Pose3D> poses;
      if (half_sums_store.size() != 2 || half_sums_store.front().classes() != L) half_sums_store = em::ReconstructionSums::for_halves(L, n);
      em::ReconstructionSums& half_sums = half_sums_store[sz(h)];
      half_sums.clear_totals();
      e_step(h, settings, members, poses, half_sums, noise, stats, &progress);
      for (std::size_t m = 0; m < members.size(); ++m) {
        auto& posterior = state.class_posteriors[members[m]];
        std::fill(posterior.begin(), posterior.end(), 0.0);
        for (int l = 0; l < L; ++l) posterior[sz(live[sz(l)])] = L > 1 ? poses[m].class_posterior[sz(l)] : 1.0;
        state.poses[members[m]] = poses[m];
        state.poses[members[m]].class_index = live[sz(L > 1 ? poses[m].class_index : 0)];
        state.poses[members[m]].class_posterior.clear();
        state.poses[members[m]].class_log_evidence.clear();
      }
      for (int l = 0; l < L; ++l) sums[sz(h)][sz(live[sz(l)])] = &half_sums.total(l);
    }
    progress.finish();

    // M-step: every class's half maps regularised by the best FSC over the classes of the previous
    // iteration (cryoSPARC's "max FSC over classes"): with each class's own FSC, the class that
    // happens to be sharper scores higher for every particle and draws them in (measured: 2XHE
    // full vs chain A, 1000 particles, SNR 0.05: 0.79 accuracy). The last iteration's half maps
    // are left unregularised; the outputs filter them.
    const auto regularizer = half_map_regularizer(best_fsc(state), n, pixel, o.initial_lowpass);
    em::VolumeTransforms& transforms = backend->volume_transforms();
    for (int k : live)
      for (int h = 0; h < 2; ++h)
        maps[sz(h)][sz(k)] = final_iteration ? transforms.reconstruct(*sums[sz(h)][sz(k)], {}) : regularizer.reconstruct(*sums[sz(h)][sz(k)], transforms);
    if (!settings.cc_scoring) noise.update(state.sigma2);
    if (L > 1) {
      const std::vector<int> from = match_half_labels(maps, live, mask);
      if (!std::is_sorted(from.begin(), from.end())) {
        log::info("{}: half 2's classes renamed to match half 1's", job);
        // `from` is a permutation of the classes: each map is moved once, each sum's pointer re-aimed.
        std::vector<std::vector<float>> renamed_maps(sz(K));
        std::vector<const em::BackProjector*> renamed_sums(sz(K));
        for (int k = 0; k < K; ++k) renamed_maps[sz(k)] = std::move(maps[1][sz(from[sz(k)])]), renamed_sums[sz(k)] = sums[1][sz(from[sz(k)])];
        maps[1] = std::move(renamed_maps);
        sums[1] = std::move(renamed_sums);
        for (std::size_t a = 0; a < N; ++a) {
          if (in.half[a] != 2) continue;
          const auto old_posterior = state.class_posteriors[a];
          for (int k = 0; k < K; ++k) state.class_posteriors[a][sz(k)] = old_posterior[sz(from[sz(k)])];
        }
      }
    }

    // Class sizes and priors; classes that emptied out leave the hypothesis space.
    std::vector<double> size(sz(K), 0.0);
    for (const auto& posterior : state.class_posteriors)
      for (int k = 0; k < K; ++k) size[sz(k)] += posterior[sz(k)];
    for (int k = 0; k < K; ++k) state.class_priors[sz(k)] = size[sz(k)] / static_cast<double>(N);
    std::vector<double> resolutions(sz(K), 999.0);
    for (int k : live) {
      state.fsc[sz(k)] = image::fsc_3d(image::masked(maps[0][sz(k)], mask), image::masked(maps[1][sz(k)], mask), n);
      for (std::size_t s = static_cast<std::size_t>(insert_radius) + 1; s < state.fsc[sz(k)].size(); ++s) state.fsc[sz(k)][s] = 0;
      resolutions[sz(k)] = image::resolution_at(state.fsc[sz(k)], 0.143, n, pixel);
      if (L > 1 && size[sz(k)] < std::max(2.0, 0.02 * static_cast<double>(N) / K)) {
        state.emptied_at[sz(k)] = it;
        log::warn("{}: class {} emptied out at iteration {} ({:.1f} particles): it is dropped", job, k + 1, it, size[sz(k)]);
      }
    }
    // The working limit: where the best class's FSC falls to 0.143 (or the target resolution).
    const double resolution = image::resolution_at(best_fsc(state), 0.143, n, pixel);
    const double target_shell = o.target_resolution > 0 ? n * pixel / o.target_resolution : std::floor(n * pixel / resolution) + 4;
    state.radius = std::clamp(target_shell, 4.0, nyquist);
    std::string size_text;
    for (int k = 0; k < K; ++k) size_text += fmt::format("{}{:.0f} ({:.1f} Å)", k ? ", " : "", size[sz(k)], resolutions[sz(k)]);
    const double changed = static_cast<double>(stats.changed) / static_cast<double>(N);
    const double seconds = std::chrono::duration<double>(Clock::now() - it_start).count();
    double ess = 0;
    for (const auto& posterior : state.class_posteriors) ess += em::class_ess(posterior);
    log::info("iteration {:3}: classes {}; class similarity {:.2f} (temperature {:.3g}, mean class ESS {:.2f}); {}; {:.1f}% poses changed; {:.1f} s",
              it, size_text, similarity, settings.class_temperature, ess / static_cast<double>(N), search_label, 100 * changed, seconds);
    log::info("iteration {:3}: E-step stages (both halves, wall): {}", it, stats.stages.summary());
    state.history.push_back({it, size, resolutions, similarity, changed, seconds, search_label});
    if (final_iteration) break;
    state.final_next = it + 1 >= iteration_count(o);
    write_checkpoint(folder, state, maps, n, pixel);
  }

  // Final outputs: per class maps, particles with classes and posteriors, model.star, report.
  const fs::path dir = folder.dir();
  std::vector<class_outputs::ClassMap> classes(sz(K));
  for (int k = 0; k < K; ++k) {
    if (state.emptied_at[sz(k)]) {
      classes[sz(k)].empty = true;
      continue;
    }
    classes[sz(k)] = class_outputs::write_class_map(dir, k, *sums[0][sz(k)], *sums[1][sz(k)], mask, n, pixel, insert_radius);
  }
  HeteroResult result;
  result.iterations = state.iteration;
  result.class_of_particle.assign(in.set.size(), -1);
  std::vector<em::Pose3D> poses = state.poses;
  for (std::size_t a = 0; a < N; ++a) {
    poses[a].class_posterior = state.class_posteriors[a];
    poses[a].class_index = most_probable(poses[a].class_posterior);
    result.class_of_particle[in.active[a]] = poses[a].class_index;
  }
  for (int k = 0; k < K; ++k) {
    for (const auto& posterior : state.class_posteriors) classes[sz(k)].size += posterior[sz(k)];
    result.class_sizes.push_back(classes[sz(k)].size);
    result.resolutions.push_back(classes[sz(k)].empty ? 999.0 : classes[sz(k)].resolution);
  }
  class_outputs::write_class_particles(dir, in.set, in.active, in.half, poses, K);
  class_outputs::write_class_model_star(dir, classes, pixel, n, group.name, state.iteration);
  write_report(dir, state, in, classes, poses, group.name);
  std::string summary;
  for (int k = 0; k < K; ++k)
    summary += fmt::format("{}class {}: {:.0f} particles, {}", k ? "; " : "", k + 1, classes[sz(k)].size,
                           classes[sz(k)].empty ? "emptied" : fmt::format("{:.2f} Å", classes[sz(k)].resolution));
  log::info("{}: {}; class maps, particles.star, model.star, report.html in {}", job, summary, dir.string());
  return result;
}

}  // namespace

HeteroResult run_hetero(const HeteroOptions& options) {
  const JobFolder folder(options.out_dir, job_name(options), JobFolder::Mode::start);
  (void)geometry::make_symmetry_group(options.symmetry);  // an unknown name fails before any work
  State state;
  state.options = options;
  for (std::string* path : {&state.options.particles, &state.options.mask}) *path = absolute_path(*path);
  for (auto& path : state.options.references) path = absolute_path(path);
  return run(folder, std::move(state), false);
}

HeteroResult continue_hetero(const std::string& out_dir) {
  const JobFolder folder(out_dir, "3D classification", JobFolder::Mode::resume);
  State state = folder.read_checkpoint_as<State>();
  state.options.out_dir = out_dir;
  return run(folder, std::move(state), true);
}

}  // namespace emcryo::jobs
