#include "emcryo/jobs/refine.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include "emcryo/jobs/checkpoint_json.hpp"
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/em/expectation.hpp"
#include "emcryo/em/hypotheses.hpp"
#include "emcryo/em/model3d.hpp"
#include "emcryo/em/regularizer.hpp"
#include "emcryo/gpu/backend.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "job_folder.hpp"
#include "map_job.hpp"
#include "local_refine.hpp"
#include "posterior_output.hpp"
#include "refine_outputs.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;
using json = nlohmann::json;
using geometry::Mat3;
using refine_detail::IterationRecord;

// Checkpointed options: everything but the output folder, which --continue names.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RefineOptions, particles, reference, symmetry, mask, initial_lowpass,
                                                particle_diameter, initial_step, offset_range, offset_step, max_iterations,
                                                adaptive_marginalization, no_ctf, exhaustive, save_posteriors, cs_root, batch, seed, nonuniform,
                                                window_factor, local_refine, rotation_extent, shift_extent, fulcrum, pose_prior,
                                                prior_sigma_rotation, prior_sigma_shift, subtract)

namespace refine_detail {
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(IterationRecord, iteration, resolution, step, local, changed, seconds,
                                                regularization_seconds)
}  // namespace refine_detail

namespace {

using Clock = std::chrono::steady_clock;

/// Everything an iteration needs from the previous one; checkpointed after every iteration.
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
  std::vector<em::Pose3D> poses;    // per usable particle
  double best_resolution = 999;
  int iterations_without_gain = 0;
  std::vector<IterationRecord> history;
  bool final_next = false;          // the next iteration joins the halves and ends the run
  std::vector<std::string> half_map_files;  // this iteration's half maps, beside checkpoint.json
  std::vector<em::Pose3D> input_poses;      // local-refine: the input poses (fulcrum frame), the prior's centres
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(State, options, iteration, step, offset_step, offset_range, local, second_global,
                                                radius, sigma2, fsc, poses, best_resolution, iterations_without_gain, history,
                                                final_next, half_map_files, input_poses)

/// The half maps go to files named by the iteration and checkpoint.json, written last, names
/// them; the previous iteration's are removed only then. A kill at any moment leaves a
/// checkpoint.json whose half maps are complete and of its own iteration (with fixed names, a
/// kill between the maps and the JSON paired new maps with the old state: found by the kill
/// trials, bench/kill_trials.sh).
void write_checkpoint(const JobFolder& folder, State& state, const std::vector<std::vector<float>>& half_maps, int n, double pixel) {
  state.half_map_files = write_iteration_maps(folder.dir(), state.iteration, {"half1", "half2"}, half_maps, n, pixel);
  folder.write_checkpoint(state, "emcryo-refine-checkpoint-2");
  remove_stale_maps(folder.dir(), state.half_map_files);
}

/// The sampling schedule after an iteration: from the global stage to a second global pass at
/// half the step, then local searches whose step halves whenever the resolution and the poses
/// stop changing, until the step is finer than the resolution needs; returns true when the next
/// iteration is the last one (all particles in one map, to Nyquist).
bool advance_schedule(State& state, double resolution, double mean_pose_change, double diameter) {
  const auto& o = state.options;
  // The finest step worth searching: the angle over which the particle's rim moves by a quarter of the
  // current resolution, never below 0.9 degrees. (A tenth, as before, searched up to 5x finer than
  // the data resolve; measured on the held-out sets, bench/RESULTS.md: no better, and slower.)
  const double needed_step = std::max(0.9, 0.25 * resolution / (diameter / 2) * 180 / std::numbers::pi);
  if (!state.local && !state.second_global && state.iteration >= 3 && (state.iterations_without_gain >= 1 || state.iteration >= 6)) {
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
  } else if (state.local && state.iterations_without_gain >= 1 &&
             (mean_pose_change < state.step || state.iterations_without_gain >= 2)) {
    // Resolution and poses have stopped changing at this step (poses move by less than one
    // step on average), or the resolution has stalled twice.
    if (state.step / 2 < needed_step) {
      // Finest step reached: one more iteration at it, then the last one.
      if (state.iterations_without_gain >= 2) return true;
    } else {
      state.step /= 2;
      state.offset_step = std::max(0.125, state.offset_step / 2);
      state.offset_range = 2 * state.offset_step;
      state.iterations_without_gain = 0;
    }
  }
  return false;
}

em::LocalFilterSettings local_filter_settings(const RefineOptions& o, double pixel) {
  em::LocalFilterSettings s;
  s.pixel_size = pixel;
  s.window_factor = o.window_factor;
  return s;
}

/// The data a run reads once: particles, masks, reference.
struct Inputs : MapJobInputs {
  std::vector<float> reference;
  std::string reference_note;  // how the reference was resampled, if it was
};

Inputs read_inputs(const RefineOptions& o) {
  // local-refine --subtract aligns the particles its first run wrote with the rest of the map subtracted.
  const fs::path subtracted = fs::path(o.out_dir) / "subtracted.star";
  const std::string particles = o.local_refine && o.subtract && fs::exists(subtracted) ? subtracted.string() : o.particles;
  Inputs in{read_map_job_inputs({"refine", particles, o.cs_root, o.mask, o.no_ctf, o.particle_diameter}), {}, {}};
  in.reference = read_reference(o.reference, in.n, in.pixel, "refine", in.reference_note);
  return in;
}

RefineResult run(const JobFolder& folder, State state, bool resumed) {
  const auto& o = state.options;
  const fs::path dir(o.out_dir);
  const auto group = geometry::make_symmetry_group(o.symmetry);
  Inputs in = read_inputs(o);
  const int n = in.n;
  const double pixel = in.pixel;
  folder.open_log();
  if (!in.reference_note.empty()) log::info("{}", in.reference_note);
  if (o.local_refine && o.subtract && !resumed) {
    in.set = io::ParticleSet::read(local_refine::subtract_outside_mask(in.set, in.reference, in.user_mask, !o.no_ctf, dir).string());
  }
  select_particles(in, o.seed);
  // local-refine works on the map moved so that the fulcrum is at the origin (local_refine::Frame).
  local_refine::Frame frame;
  const std::vector<float> region_mask = in.user_mask;
  if (o.local_refine) {
    frame = local_refine::make_frame(o.fulcrum, in.user_mask, n, pixel);
    log::info("local-refine: fulcrum at ({:.1f}, {:.1f}, {:.1f}) Å from the box centre", frame.fulcrum.x * pixel, frame.fulcrum.y * pixel,
              frame.fulcrum.z * pixel);
    in.reference = frame.move(in.reference, n, -1);
    in.user_mask = frame.move(in.user_mask, n, -1);
  }
  const double nyquist = n / 2.0 - 1;
  std::vector<std::vector<float>> half_maps(2);
  if (!resumed) {
    half_maps[0] = half_maps[1] = image::lowpass_volume(in.reference, n, pixel, o.initial_lowpass);
    state.step = o.initial_step;
    state.offset_step = o.offset_step;
    state.offset_range = o.offset_range;
    state.radius = std::min(nyquist, n * pixel / o.initial_lowpass + 2);
    state.sigma2 = em::estimate_initial_sigma2(in.set, in.active, in.particle_mask);
    state.poses.assign(in.active.size(), em::Pose3D{});
    if (o.local_refine) {
      // Around the input poses from the start: a local grid spanning the rotation extent, shifts
      // spanning the shift extent; the schedule refines both as the resolution improves.
      state.input_poses = local_refine::input_poses(in.set, in.active, o.particles);
      for (auto& p : state.input_poses) p = frame.to_fulcrum(p);
      state.poses = state.input_poses;
      state.local = true;
      state.step = o.rotation_extent / 2;
      state.offset_range = o.shift_extent / pixel;
      state.offset_step = std::max(0.5, state.offset_range / 4);
    }
  } else {
    if (state.half_map_files.size() != 2)
      fail("{}: damaged checkpoint: it names {} half maps, not 2", (dir / "checkpoint.json").string(), state.half_map_files.size());
    if (state.poses.size() != in.active.size())
      fail("{}: checkpoint holds {} particles but {} are usable now: the input changed", (dir / "checkpoint.json").string(),
           state.poses.size(), in.active.size());
    for (int h = 0; h < 2; ++h)
      half_maps[static_cast<std::size_t>(h)] = io::MrcReader(dir / state.half_map_files[static_cast<std::size_t>(h)]).read_all();
    if (folder.writes()) remove_stale_maps(dir, state.half_map_files);
    log::info("refine: continuing after iteration {}", state.iteration);
  }
  log::info("refine: {} particles ({} skipped) in two half sets, box {} px, {:.3f} Å/px, symmetry {}", in.active.size(), in.skipped.size(), n,
            pixel, group.name);

  const auto backend = gpu::make_backend();
  log::info("refine: scoring on {}", backend->name());
  const std::size_t shells = static_cast<std::size_t>(n / 2 + 1);
  // Not for local-refine: its particles hold one masked body (often after subtraction), and on the
  // low-SNR body test the correction cost a little (mean FSC in the body 0.3696 -> 0.3659, pose error
  // 9.80 -> 9.93 deg; tests/integration/test_local_nu_refine.cpp): not measured further.
  const double noise_inflation = o.local_refine ? 1.0 : em::masked_noise_inflation(in.particle_mask);
  log::info("refine: likelihood's sigma^2 = {:.2f} x the power measured in masked images (the noise inside the mask)", noise_inflation);
  bool final_iteration = state.final_next;
  refine_detail::FinalMaps final_maps;
  final_maps.user_mask = in.user_mask;
  RefineResult result;

  std::vector<em::ReconstructionSums> half_sums_store = em::ReconstructionSums::for_halves(1, n);
  while (true) {
    const int it = ++state.iteration;
    const auto it_start = Clock::now();
    final_iteration = final_iteration || it >= o.max_iterations;
    const auto list = em::make_frequency_list(n, state.radius);
    em::PoseSearch search;
    search.local = state.local;
    search.step = state.step;
    if (!state.local) search.grid = em::orientation_grid(state.step, o.symmetry);
    search.shifts = em::make_shift_grid(state.offset_range, state.offset_step);
    search.coarse_to_fine = !o.exhaustive;
    // After the first global stage, shifts are searched around each particle's current shift.
    search.relative_shifts = state.local || state.second_global;
    em::ExpectationSettings settings;
    settings.use_ctf = !o.no_ctf;
    // The first iteration scores by cross-correlation: the reference need not be on the data's grey scale.
    // local-refine's reference is (a refinement of the same particles), and a local search
    // around the input poses must not be thrown off by a first pass without the likelihood's prior and extents.
    settings.cc_scoring = it == 1 && !o.local_refine;
    settings.marginalize = o.adaptive_marginalization;
    settings.batch = o.batch;
    // The last iteration inserts to Nyquist; the others a little beyond the working limit.
    settings.insert_radius = final_iteration ? nyquist : std::min(nyquist, state.radius + kInsertMargin);
    settings.keep_top = final_iteration ? o.save_posteriors : 0;
    // 0.3% of a particle's posterior per inserted orientation (0.1% in the engine's default): ~28
    // orientations a particle instead of ~38 on the held-out sets, insertions 5.1 -> 4.3 s, pose
    // errors and FSC to the truth within 0.02° and 0.01 Å (bench/RESULTS.md, fifteenth session).
    // hetero-refine keeps 0.1%: at 0.3% one class map of its bench lost a shell at FSC 0.5.
    settings.insert_weight_floor = 3e-3;

    // E-step per half against its own half map, with the M-step's sums per half.
    em::ExpectationStats stats;
    em::NoiseSums noise(state.sigma2.size(), shells);
    // Each half's totals where the E-step left them (half_sums_store, unchanged until the next
    // E-step): a copy was 0.8 GB per half at box 256.
    std::vector<const em::BackProjector*> sums;
    // The bar counts this rank's share (rank 0's is the one shown): each half's chunks (mpi::Chunks).
    std::size_t own_share = 0;
    for (int h = 1; h <= 2; ++h) own_share += mpi::Chunks(static_cast<std::size_t>(std::count(in.half.begin(), in.half.end(), h))).owned_items();
    Progress progress(fmt::format("iteration {}", it), static_cast<std::int64_t>(own_share));
    if (o.local_refine) {
      // The prior (with --pose-prior) and the extents, around each particle's input pose.
      search.prior.sigma_rotation = o.pose_prior ? o.prior_sigma_rotation : 0;
      search.prior.sigma_shift = o.pose_prior ? o.prior_sigma_shift / pixel : 0;
      search.prior.max_rotation = o.rotation_extent;
      search.prior.max_shift = o.shift_extent / pixel;
    }
    // The noise model measures sigma^2 in masked images; their likelihood needs the noise per pixel
    // inside the mask (em::masked_noise_inflation: x1.68 for the held-out sets' 140 Å mask in a 160 Å
    // box). With the measured sigma^2 the posteriors were too sharp: on the held-out sets,
    // bench/RESULTS.md, this moved FSC 0.5 to the truth from 10.25 to 10.02 Å (2XHE) and the median
    // pose error from 5.19 to 5.06 deg. The back-projection weights C / sigma^2 only scale.
    const auto likelihood_sigma2 = inflated_sigma2(state.sigma2, noise_inflation);
    // The two halves' projectors, each made once (under MPI on rank 0 and rank 1) and shared; their
    // transforms (and the M-step's reconstructions) run on the backend's device where it has one.
    em::VolumeTransforms& transforms = backend->volume_transforms();
    const auto p_start = Clock::now();
    const auto masked_half = [&](int h) {
      const auto& half_map = half_maps[static_cast<std::size_t>(h)];
      return image::masked(half_map, reference_mask(in, {&half_map}));
    };
    // On one rank each projector is the transforms' own (a GPU's stays on its card, where the
    // templates are sampled: no 0.5 GB copy to the host and back at box 256); under MPI the grids
    // cross ranks through the host.
    std::vector<em::Projector> projectors;
    if (mpi::size() == 1) {
      for (int h = 0; h < 2; ++h) projectors.push_back(transforms.projector(masked_half(h), n, 2));
    } else {
      auto grids = mpi::made_once<em::Complex>(2, [&](int h) { return transforms.padded_transform(masked_half(h), n, 2); });
      for (auto& grid : grids) projectors.emplace_back(std::move(grid), n);
    }
    const double p_seconds = std::chrono::duration<double>(Clock::now() - p_start).count();
    for (int h = 0; h < 2; ++h) {
      std::vector<std::size_t> members, images;
      std::vector<em::Pose3D> poses, centres;
      for (std::size_t a = 0; a < in.active.size(); ++a)
        if (in.half[a] == h + 1) {
          members.push_back(a), images.push_back(in.active[a]), poses.push_back(state.poses[a]);
          if (o.local_refine) centres.push_back(state.input_poses[a]);
        }
      search.prior_centres = o.local_refine ? &centres : nullptr;
      settings.fold_rank = h;  // under MPI, half 1's sums fold on rank 0 and half 2's on rank 1
      const em::Projector projector = std::move(projectors[static_cast<std::size_t>(h)]);
      // Made once for the run (10 padded volumes of a 64 px box, the lanes shared by the halves:
      // allocating them each iteration cost ~0.2 s).
      em::ReconstructionSums& half_sums = half_sums_store[static_cast<std::size_t>(h)];
      half_sums.clear_totals();
      em::expectation_3d(in.set, images, poses, {&projector}, list, likelihood_sigma2, in.particle_mask, search, group.operators, settings,
                         *backend, half_sums, noise, stats, &progress);
      for (std::size_t m = 0; m < members.size(); ++m) state.poses[members[m]] = poses[m];
      sums.push_back(&half_sums.total(0));
    }
    progress.finish();

    // M-step: each half regularised by the previous FSC (non-uniform: and then filtered voxel by
    // voxel where the halves cross-validate); the last iteration's half maps are left unregularised (as
    // their names, _unfil, say) and joined into the full map.
    const auto m_start = Clock::now();
    std::vector<std::vector<float>> unfiltered;  // non-uniform: the halves the FSC is taken from
    if (o.nonuniform && !final_iteration && !state.fsc.empty()) {
      auto filtered = em::reconstruct_nonuniform(*sums[0], *sums[1], state.fsc, local_filter_settings(o, pixel), transforms);
      half_maps[0] = std::move(filtered.half1), half_maps[1] = std::move(filtered.half2);
      unfiltered = {std::move(filtered.raw1), std::move(filtered.raw2)};
    } else {
      // Each half (and, at the end, the full map) is reconstructed once, under MPI on its own
      // rank (half 1 on rank 0, half 2 on rank 1, the full map on rank 2), and shared.
      auto made = mpi::made_once<float>(final_iteration ? 3 : 2, [&](int piece) {
        if (piece == 2) {
          em::BackProjector full = *sums[0];
          full.add(*sums[1]);
          return transforms.reconstruct(full, {});
        }
        const auto& half = *sums[static_cast<std::size_t>(piece)];
        return final_iteration ? transforms.reconstruct(half, {}) : half_map_regularizer(state.fsc, n, pixel, o.initial_lowpass).reconstruct(half, transforms);
      });
      half_maps[0] = std::move(made[0]), half_maps[1] = std::move(made[1]);
      if (final_iteration) final_maps.full = std::move(made[2]);
    }
    const double m_seconds = std::chrono::duration<double>(Clock::now() - m_start).count();
    if (!settings.cc_scoring) noise.update(state.sigma2);

    // Masks and FSC.
    // The FSC that sets tau^2 and the working limit is taken inside the particle's sphere (or the
    // user's mask), as RELION does during refinement: a tight solvent mask raises it, the half maps
    // are then under-regularised and the alignment fits their noise (measured on the held-out sets,
    // bench/RESULTS.md: 10.66 vs 11.26 Å at FSC 0.5 to the truth on 2XHE). The final, reported FSC
    // is the masked and corrected one (refine_outputs).
    const std::vector<float>& mask = !in.user_mask.empty() ? in.user_mask : in.sphere;
    const auto& fsc_maps = unfiltered.empty() ? half_maps : unfiltered;
    state.fsc = image::fsc_3d(image::masked(fsc_maps[0], mask), image::masked(fsc_maps[1], mask), n);
    // Shells beyond what was back-projected hold only interpolation leakage shared by both halves.
    for (std::size_t s = static_cast<std::size_t>(settings.insert_radius) + 1; s < state.fsc.size(); ++s) state.fsc[s] = 0;
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
    const double changed_fraction = static_cast<double>(stats.changed) / static_cast<double>(in.active.size());
    const double seconds = std::chrono::duration<double>(Clock::now() - it_start).count();
    log::info("iteration {:3}: resolution {:5.2f} Å, step {:.2f}° ({}), offsets {:.2f} px step, {:.1f}% poses changed (mean {:.2f}°), "
              "{:.1f} s (M-step regularisation {:.2f} s), projectors {:.2f} s, scoring {:.1f} GFLOP ({:.2g} coarse + {:.2g} fine hypotheses)",
              it, resolution, state.step, state.local ? "local" : (state.second_global ? "global, fine" : "global"), state.offset_step,
              100 * changed_fraction, stats.angle_change / static_cast<double>(in.active.size()), seconds, m_seconds, p_seconds, stats.flops / 1e9,
              static_cast<double>(stats.coarse_hypotheses), static_cast<double>(stats.fine_hypotheses));
    log::info("iteration {:3}: E-step stages (both halves, wall): {}", it, stats.stages.summary());
    log::info("iteration {:3}: back-projected per particle: {:.1f} poses in {:.1f} orientations", it,
              static_cast<double>(stats.inserted_hypotheses) / static_cast<double>(in.active.size()),
              static_cast<double>(stats.inserted_orientations) / static_cast<double>(in.active.size()));
    state.history.push_back({it, resolution, state.step, state.local, changed_fraction, seconds, m_seconds});
    if (final_iteration) break;
    final_iteration = advance_schedule(state, resolution, stats.angle_change / static_cast<double>(in.active.size()), in.diameter);
    state.final_next = final_iteration;
    if (folder.writes()) write_checkpoint(folder, state, half_maps, n, pixel);
  }

  // Final outputs: half maps, full map (unfiltered and sharpened), FSC curves, particles, report.
  // (Rank 0's alone under MPI; the other ranks return no figures.)
  if (!folder.writes()) return result;
  if (o.nonuniform) {
    // The local resolution of the final, unregularised half maps.
    auto local = em::local_cross_validated_filter(half_maps[0], half_maps[1], n, local_filter_settings(o, pixel));
    final_maps.local_resolution = std::move(local.local_resolution);
    final_maps.locally_filtered.resize(local.half1.size());
    for (std::size_t v = 0; v < local.half1.size(); ++v) final_maps.locally_filtered[v] = (local.half1[v] + local.half2[v]) / 2;
    final_maps.job = "nu-refine";
  }
  final_maps.half1 = std::move(half_maps[0]);
  final_maps.half2 = std::move(half_maps[1]);
  if (o.local_refine) {
    // Back from the fulcrum frame: maps, mask, poses; and how far each pose moved.
    for (auto* map : {&final_maps.half1, &final_maps.half2, &final_maps.full, &final_maps.local_resolution, &final_maps.locally_filtered})
      if (!map->empty()) *map = frame.move(*map, n, +1);
    final_maps.user_mask = region_mask;
    for (auto& p : state.poses) {
      p = frame.from_fulcrum(p);
      for (auto& h : p.top) h = frame.from_fulcrum(h);
    }
    std::vector<em::Pose3D> input = state.input_poses;
    for (auto& p : input) p = frame.from_fulcrum(p);
    local_refine::pose_movement(input, state.poses, pixel, final_maps.rotation_moved, final_maps.shift_moved);
    final_maps.job = "local-refine";
  }
  const auto final_result = refine_detail::write_refine_outputs(dir, in.set, in.active, in.half, state.poses, final_maps, state.sigma2,
                                                                group.name, state.history, in.skipped, o.seed);
  if (o.save_posteriors > 0) {
    std::vector<std::vector<em::Hypothesis>> top;
    for (auto& p : state.poses) top.push_back(std::move(p.top));
    write_top_hypotheses(dir, in.set, in.active, top, o.save_posteriors);
  }
  result.resolution = final_result.resolution;
  result.bfactor = final_result.bfactor;
  result.iterations = state.iteration;
  log::info("refine: {:.2f} Å (FSC 0.143, masked and corrected); map.mrc, half maps, fsc.star, particles.star in {}", result.resolution, o.out_dir);
  return result;
}

}  // namespace

RefineResult run_refine(const RefineOptions& options) {
  if (options.window_factor <= 0) fail("nu-refine: --window-factor must be positive");
  if (options.local_refine) {
    if (options.mask.empty()) fail("local-refine: --mask (the region to refine) is required");
    if (options.rotation_extent <= 0 || options.shift_extent <= 0) fail("local-refine: --rotation-extent and --shift-extent must be positive");
    if (options.pose_prior && (options.prior_sigma_rotation <= 0 || options.prior_sigma_shift <= 0))
      fail("local-refine: --prior-sigma-rot and --prior-sigma-shift must be positive");
    if (!options.fulcrum.empty() && options.fulcrum.size() != 3) fail("local-refine: --fulcrum takes x,y,z in Å");
  }
  const JobFolder folder(options.out_dir, "refine", JobFolder::Mode::start);
  (void)geometry::make_symmetry_group(options.symmetry);  // an unknown name fails before any work
  State state;
  state.options = options;
  for (std::string* path : {&state.options.particles, &state.options.reference, &state.options.mask}) *path = absolute_path(*path);
  return run(folder, std::move(state), false);
}

RefineResult continue_refine(const std::string& out_dir) {
  const JobFolder folder(out_dir, "refine", JobFolder::Mode::resume);
  State state = folder.read_checkpoint_as<State>();
  state.options.out_dir = out_dir;
  return run(folder, std::move(state), true);
}

}  // namespace emcryo::jobs
