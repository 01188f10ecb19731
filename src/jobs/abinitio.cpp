// `emcryo abinitio`: the job's choices (schedule, minibatches, annealing, outputs). The machinery
// is the engine's: expectation_3d marginalises poses (and classes) on global grids, SgdMap takes
// the gradient step (DESIGN: one engine).
#include "emcryo/jobs/abinitio.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numbers>
#include <numeric>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/em/hypotheses.hpp"
#include "emcryo/em/model3d.hpp"
#include "emcryo/em/sgd_map.hpp"
#include "emcryo/gpu/backend.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/cs_particles.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/io/report.hpp"
#include "emcryo/io/star.hpp"
#include "job_folder.hpp"
#include "refine_outputs.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;
using json = nlohmann::json;

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(AbinitioOptions, particles, cs_root, symmetry, classes, max_resolution,
                                                initial_resolution, particle_diameter, iterations, initial_batch, final_batch,
                                                learning_rate, momentum, class_similarity, sigma_scale, offset_range, no_ctf, batch,
                                                seed)

namespace {

using Clock = std::chrono::steady_clock;
std::size_t sz(int v) { return static_cast<std::size_t>(v); }

struct IterationRecord {
  int iteration = 0;
  double resolution = 0, step = 0;
  int batch = 0;
  double class_ess = 1, temperature = 1, seconds = 0;
  std::vector<double> class_fractions;  // of the minibatch's posterior mass
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(IterationRecord, iteration, resolution, step, batch, class_ess, temperature, seconds,
                                                class_fractions)

/// Central sections of each class at one moment of the run (PNG files beside the checkpoint).
struct Snapshot {
  int iteration = 0;
  double resolution = 0;
  std::vector<std::string> files;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Snapshot, iteration, resolution, files)

/// Everything the next iteration needs; checkpointed after every iteration.
struct State {
  AbinitioOptions options;
  int iteration = 0;                           // SGD iterations done
  int total_iterations = 0;
  std::vector<std::vector<double>> sigma2_initial;
  std::vector<std::vector<double>> noise_sum, noise_count;  // running residual sums (decayed)
  double noise_images = 0;                     // images in the running sums (decayed)
  double class_temperature = 1;
  std::vector<IterationRecord> history;
  std::vector<Snapshot> snapshots;
  std::vector<std::string> map_files, velocity_files;  // per class, beside checkpoint.json
  double seconds = 0;                          // SGD time so far (over resumptions)
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(State, options, iteration, total_iterations, sigma2_initial, noise_sum, noise_count,
                                                noise_images, class_temperature, history, snapshots, map_files, velocity_files,
                                                seconds)

// ---- Schedule (the defaults and why: bench/RESULTS.md, issue 15) ----

/// SGD iterations when not given: about two passes over the data in final-size minibatches, at
/// least 30 (the resolution ramp needs room) and at most 300. (30 iterations, 1.2 passes over
/// 5000 particles, reached 10.2-10.4 Å at FSC 0.5 to the truth on three simulated sets: RESULTS.md.)
int default_iterations(std::size_t particles, int final_batch) {
  const double passes = 2;
  return std::clamp(static_cast<int>(passes * static_cast<double>(particles) / final_batch), 30, 300);
}

/// Resolution at an iteration: 1/res linear from the initial to the maximum resolution between
/// 10% and 80% of the run, constant before and after.
double resolution_at_iteration(const AbinitioOptions& o, int it, int total) {
  const double t = std::clamp((static_cast<double>(it) / total - 0.1) / 0.7, 0.0, 1.0);
  return 1 / (1 / o.initial_resolution + t * (1 / o.max_resolution - 1 / o.initial_resolution));
}

/// Minibatch size: the initial one for the first third, then the final one.
int batch_at_iteration(const AbinitioOptions& o, int it, int total) { return it < total / 3 ? o.initial_batch : o.final_batch; }

/// Angular step of the coarse grid: the angle over which the particle's rim moves by the
/// resolution (the fine pass samples half of it), between 10 and 30 degrees.
double step_for(double resolution, double diameter) {
  return std::clamp(resolution / (diameter / 2) * 180 / std::numbers::pi, 10.0, 30.0);
}

/// The noise inflation: sigma_scale at the start, 1 from half the run on (cryoSPARC's "initial
/// sigma-scale"): early posteriors stay broad while the maps are still guesses.
double sigma_scale_at(const AbinitioOptions& o, int it, int total) {
  const double t = std::clamp(static_cast<double>(it) / (0.5 * total), 0.0, 1.0);
  return o.sigma_scale + t * (1 - o.sigma_scale);
}

/// K > 1: the class similarity, s at the start, annealed to 0 between 30% and 60% of the run.
double similarity_at(const AbinitioOptions& o, int it, int total) {
  const double t = std::clamp((static_cast<double>(it) / total - 0.3) / 0.3, 0.0, 1.0);
  return o.class_similarity * (1 - t);
}

/// The particles of minibatch `it`: consecutive slices of a per-pass random permutation, so every
/// particle is seen once per pass; a function of (seed, iteration) only, hence resumable.
std::vector<std::size_t> minibatch(const AbinitioOptions& o, int it, int total, std::size_t count) {
  std::int64_t start = 0;
  for (int i = 0; i < it; ++i) start += batch_at_iteration(o, i, total);
  const int b = std::min<int>(batch_at_iteration(o, it, total), static_cast<int>(count));
  std::vector<std::size_t> out;
  std::int64_t pass = -1;
  std::vector<std::size_t> order;
  for (std::int64_t j = start; j < start + b; ++j) {
    const std::int64_t p = j / static_cast<std::int64_t>(count);
    if (p != pass) {
      pass = p;
      order.resize(count);
      std::iota(order.begin(), order.end(), std::size_t{0});
      auto rng = item_rng(o.seed, 1000 + static_cast<std::uint64_t>(p));
      std::shuffle(order.begin(), order.end(), rng);
    }
    out.push_back(order[static_cast<std::size_t>(j % static_cast<std::int64_t>(count))]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---- Inputs ----

struct Inputs {
  io::ParticleSet set;
  int n = 0;
  double pixel = 0, diameter = 0;
  std::vector<float> particle_mask, window;
  std::vector<std::size_t> active;
  std::vector<std::string> skipped;
};

Inputs read_inputs(const AbinitioOptions& o) {
  Inputs in{io::ParticleSet::read(o.particles, {.cs_root = o.cs_root}), 0, 0, 0, {}, {}, {}, {}};
  in.n = in.set.box();
  in.pixel = in.set.pixel_size();
  if (!o.no_ctf && !in.set.has_ctf())
    fail("{}: no CTF columns (rlnDefocusU/V): add them, or pass --no-ctf to run without CTF correction", o.particles);
  in.set.check_pixel_size_against_stacks();
  in.diameter = o.particle_diameter > 0 ? o.particle_diameter : 0.9 * in.n * in.pixel;
  if (in.diameter > in.n * in.pixel) fail("abinitio: --particle-diameter {} Å is wider than the box ({:.1f} Å)", in.diameter, in.n * in.pixel);
  const double nyquist = 2 * in.pixel;
  if (o.max_resolution < nyquist)
    fail("abinitio: --max-res {} Å is beyond Nyquist ({:.2f} Å at {:.3f} Å/px)", o.max_resolution, nyquist, in.pixel);
  in.particle_mask = image::soft_round_mask(in.n, 2, in.diameter / in.pixel / 2 - 2, 5);
  in.window = image::soft_round_mask(in.n, 3, in.diameter / in.pixel / 2, 5);
  std::vector<float> img(static_cast<std::size_t>(in.n) * in.n);
  for (std::size_t i = 0; i < in.set.size(); ++i) {
    in.set.read_image(i, img.data());
    double mean, sd;
    image::mean_stddev(img.data(), img.size(), mean, sd);
    const bool finite = io::all_finite(img.data(), img.size());
    if (!finite || sd == 0) {
      in.skipped.push_back(fmt::format("particle {} ({}): {}", i + 1, in.set.image_name(i), finite ? "constant image" : "NaN or Inf pixels"));
      log::warn("skipped {}", in.skipped.back());
      continue;
    }
    in.active.push_back(i);
  }
  const auto need = static_cast<std::size_t>(std::max(10, 2 * o.classes));
  if (in.active.size() < need) fail("{}: {} usable particles; ab-initio with {} classes needs at least {}", o.particles, in.active.size(), o.classes, need);
  return in;
}

// ---- Steps ----

struct Engine {
  const Inputs& in;
  const geometry::SymmetryGroup& group;
  std::unique_ptr<em::ScoringBackend> backend = gpu::make_backend();
};

/// A random start per class: a minibatch back-projected at random orientations (a blob of the
/// data's size and grey scale), low-passed to the initial resolution.
std::vector<float> random_start(const Engine& e, const AbinitioOptions& o, int k, const std::vector<std::vector<double>>& sigma2) {
  const int n = e.in.n;
  auto rng = item_rng(o.seed, 500 + static_cast<std::uint64_t>(k));
  std::vector<std::size_t> images;
  std::vector<em::Pose3D> poses;
  std::uniform_real_distribution<double> u(0, 1);
  const std::size_t count = std::min<std::size_t>(e.in.active.size(), 200);
  for (std::size_t i = 0; i < count; ++i) {
    images.push_back(e.in.active[static_cast<std::size_t>(u(rng) * static_cast<double>(e.in.active.size())) % e.in.active.size()]);
    em::Pose3D p;
    p.rot = 360 * u(rng), p.tilt = std::acos(1 - 2 * u(rng)) * 180 / std::numbers::pi, p.psi = 360 * u(rng);
    poses.push_back(p);
  }
  const double radius = n * e.in.pixel / o.initial_resolution;
  const auto list = em::make_frequency_list(n, radius);
  const em::Projector none(std::vector<float>(static_cast<std::size_t>(n) * n * n, 0.0f), n);
  em::PoseSearch search;
  search.fixed = true;
  search.shifts = em::make_shift_grid(0, 1);
  em::ExpectationSettings settings;
  settings.use_ctf = !o.no_ctf;
  settings.known_poses = true;
  settings.insert_radius = radius;
  em::ReconstructionSums sums(1, n);
  em::NoiseSums noise(sigma2.size(), sz(n / 2 + 1));
  em::ExpectationStats stats;
  em::expectation_3d(e.in.set, images, poses, {&none}, list, sigma2, e.in.particle_mask, search, e.group.operators, settings, *e.backend, sums,
                     noise, stats, nullptr);
  em::SgdMap map(std::vector<float>(static_cast<std::size_t>(n) * n * n, 0.0f), n);
  map.step(sums.total(0), 0.05, 1, 0);
  auto start = image::lowpass_volume(map.map(), n, e.in.pixel, o.initial_resolution);
  for (std::size_t i = 0; i < start.size(); ++i) start[i] = std::max(0.0f, start[i]) * e.in.window[i];
  return start;
}

/// sigma^2 from the initial estimate and the running residuals (weighted as 500 images), inflated.
std::vector<std::vector<double>> noise_model(const State& s, double inflation) {
  const double prior_images = 500;
  auto sigma2 = s.sigma2_initial;
  for (std::size_t g = 0; g < sigma2.size(); ++g)
    for (std::size_t sh = 1; sh < sigma2[g].size(); ++sh) {
      double estimate = sigma2[g][sh];
      if (s.noise_count[g][sh] > 0) {
        const double running = s.noise_sum[g][sh] / (2 * s.noise_count[g][sh]);
        estimate = (prior_images * sigma2[g][sh] + s.noise_images * running) / (prior_images + s.noise_images);
      }
      sigma2[g][sh] = std::max(1e-12, estimate * inflation);
    }
  return sigma2;
}

/// Adds a minibatch's residuals to the running sums; older minibatches fade (x0.9 per
/// iteration) as the maps they were scored against improve.
void update_noise(State& s, const em::NoiseSums& batch, std::size_t images) {
  const double fade = 0.9;
  for (std::size_t g = 0; g < s.noise_sum.size(); ++g)
    for (std::size_t sh = 0; sh < s.noise_sum[g].size(); ++sh) {
      s.noise_sum[g][sh] = fade * s.noise_sum[g][sh] + batch.sum[g][sh];
      s.noise_count[g][sh] = fade * s.noise_count[g][sh] + batch.count[g][sh];
    }
  s.noise_images = fade * s.noise_images + static_cast<double>(images);
}

em::PoseSearch global_search(const AbinitioOptions& o, double step) {
  em::PoseSearch search;
  search.step = step;
  search.grid = em::orientation_grid(step, o.symmetry);
  search.shifts = em::make_shift_grid(o.offset_range, 1);
  return search;
}

struct StepOutcome {
  double class_ess = 1;
  std::vector<double> class_fractions;
};

/// The K maps as central-slice references for expectation_3d (which takes pointers to them).
struct SliceReferences {
  std::vector<em::Projector> projectors;
  std::vector<const em::Projector*> pointers;
  SliceReferences(const std::vector<em::SgdMap>& maps, int n) {
    for (const auto& m : maps) projectors.emplace_back(m.map(), n);
    for (const auto& p : projectors) pointers.push_back(&p);
  }
  SliceReferences(const SliceReferences&) = delete;  // the pointers point into this object
};

/// Poses and classes marginalised, back-projection up to `radius` (pixels).
em::ExpectationSettings marginal_settings(const AbinitioOptions& o, double radius) {
  em::ExpectationSettings settings;
  settings.use_ctf = !o.no_ctf;
  settings.marginalize = true;
  settings.batch = o.batch;
  settings.insert_radius = radius;
  return settings;
}

/// One SGD iteration: E-step on the minibatch against the current maps (poses and classes
/// marginalised), a gradient step per class, the constraints, the noise model, the class temperature.
StepOutcome sgd_iteration(const Engine& e, State& s, std::vector<em::SgdMap>& maps) {
  const auto& o = s.options;
  const int it = s.iteration, total = s.total_iterations, n = e.in.n, K = o.classes;
  const double resolution = resolution_at_iteration(o, it, total);
  const double radius = std::min(n / 2.0 - 1, n * e.in.pixel / resolution);
  const auto list = em::make_frequency_list(n, radius);
  const auto members = minibatch(o, it, total, e.in.active.size());
  std::vector<std::size_t> images;
  for (std::size_t m : members) images.push_back(e.in.active[m]);
  std::vector<em::Pose3D> poses(images.size());

  const SliceReferences references(maps, n);
  const auto& refs = references.pointers;
  em::ExpectationSettings settings = marginal_settings(o, radius);
  settings.class_temperature = s.class_temperature;
  em::ReconstructionSums sums(K, n);
  em::NoiseSums noise(s.sigma2_initial.size(), sz(n / 2 + 1));
  em::ExpectationStats stats;
  em::expectation_3d(e.in.set, images, poses, refs, list, noise_model(s, sigma_scale_at(o, it, total)), e.in.particle_mask,
                     global_search(o, step_for(resolution, e.in.diameter)), e.group.operators, settings, *e.backend, sums, noise, stats,
                     nullptr);
  for (int k = 0; k < K; ++k) {
    maps[sz(k)].step(sums.total(k), 0.05, o.learning_rate, o.momentum);
    maps[sz(k)].centre(1);
    maps[sz(k)].constrain(e.in.window);
  }
  update_noise(s, noise, images.size());

  StepOutcome out;
  out.class_fractions.assign(sz(K), K == 1 ? 1.0 : 0.0);
  if (K > 1) {
    double ess = 0;
    for (const auto& p : poses) {
      for (int k = 0; k < K; ++k) out.class_fractions[sz(k)] += p.class_posterior[sz(k)];
      ess += em::class_ess(p.class_posterior);
    }
    for (double& f : out.class_fractions) f /= static_cast<double>(poses.size());
    out.class_ess = ess / static_cast<double>(poses.size());
    // Class similarity: the temperature follows the target ESS (cryoSPARC's beta), multiplicatively.
    const double target = 1 + similarity_at(o, it, total) * (K - 1);
    s.class_temperature = out.class_ess < target ? s.class_temperature * 1.5 : std::max(1.0, s.class_temperature / 1.5);
  }
  return out;
}

// ---- Checkpoint, snapshots ----

std::vector<std::string> snapshot_files(const fs::path& dir, int it, const std::vector<em::SgdMap>& maps) {
  fs::create_directories(dir / "stages");
  std::vector<std::string> files;
  for (std::size_t k = 0; k < maps.size(); ++k) {
    files.push_back(fmt::format("stages/it{:04}_class{:03}.png", it, k + 1));
    io::write_binary_file(dir / files.back(), io::volume_sections_png(maps[k].map(), maps[k].box()));
  }
  return files;
}

void write_checkpoint(const JobFolder& folder, State& s, const std::vector<em::SgdMap>& maps, double pixel) {
  const fs::path& dir = folder.dir();
  std::vector<std::string> previous = s.map_files;
  previous.insert(previous.end(), s.velocity_files.begin(), s.velocity_files.end());
  s.map_files.clear(), s.velocity_files.clear();
  for (std::size_t k = 0; k < maps.size(); ++k) {
    s.map_files.push_back(fmt::format("checkpoint_it{:04}_class{:03}.mrc", s.iteration, k + 1));
    s.velocity_files.push_back(fmt::format("checkpoint_it{:04}_class{:03}_velocity.mrc", s.iteration, k + 1));
    refine_detail::write_map(dir / s.map_files.back(), maps[k].map(), maps[k].box(), pixel);
    refine_detail::write_map(dir / s.velocity_files.back(), maps[k].velocity(), maps[k].box(), pixel);
  }
  folder.write_checkpoint(s, "emcryo-abinitio-checkpoint-1");
  for (const auto& f : previous)
    if (std::find(s.map_files.begin(), s.map_files.end(), f) == s.map_files.end() &&
        std::find(s.velocity_files.begin(), s.velocity_files.end(), f) == s.velocity_files.end())
      fs::remove(dir / f);
}

// ---- The final pass and outputs ----

struct FinalPass {
  std::vector<em::Pose3D> poses;            // per usable particle
  std::vector<std::vector<float>> maps;     // per class
  std::vector<std::size_t> class_sizes;
};

/// Every particle once against the SGD maps at the maximum resolution: poses and classes for
/// particles.star, and each class reconstructed from all its particles (non-negative, windowed).
FinalPass final_pass(const Engine& e, const State& s, const std::vector<em::SgdMap>& maps) {
  const auto& o = s.options;
  const int n = e.in.n, K = o.classes;
  const double radius = std::min(n / 2.0 - 1, n * e.in.pixel / o.max_resolution);
  const SliceReferences references(maps, n);
  const auto& refs = references.pointers;
  em::ExpectationSettings settings = marginal_settings(o, radius);
  FinalPass out;
  out.poses.resize(e.in.active.size());
  em::ReconstructionSums sums(K, n);
  em::NoiseSums noise(s.sigma2_initial.size(), sz(n / 2 + 1));
  em::ExpectationStats stats;
  Progress progress("final pass", static_cast<std::int64_t>(e.in.active.size()));
  em::expectation_3d(e.in.set, e.in.active, out.poses, refs, em::make_frequency_list(n, radius), noise_model(s, 1), e.in.particle_mask,
                     global_search(o, step_for(o.max_resolution, e.in.diameter)), e.group.operators, settings, *e.backend, sums, noise,
                     stats, &progress);
  progress.finish();
  out.class_sizes.assign(sz(K), 0);
  for (const auto& p : out.poses) ++out.class_sizes[sz(p.class_index)];
  for (int k = 0; k < K; ++k) {
    em::SgdMap m(std::vector<float>(static_cast<std::size_t>(n) * n * n, 0.0f), n);
    m.step(sums.total(k), 0.05, 1, 0);
    m.constrain(e.in.window);
    out.maps.push_back(m.map());
  }
  return out;
}

void write_particles(const fs::path& dir, const Inputs& in, const FinalPass& f) {
  io::StarFile star = in.set.output_star(in.active);
  auto& t = io::ParticleSet::particles_table(star);
  const int c_rot = t.add_column("rlnAngleRot"), c_tilt = t.add_column("rlnAngleTilt"), c_psi = t.add_column("rlnAnglePsi"),
            c_ox = t.add_column("rlnOriginXAngst"), c_oy = t.add_column("rlnOriginYAngst"), c_class = t.add_column("rlnClassNumber"),
            c_pmax = t.add_column("rlnMaxValueProbDistribution"), c_nsig = t.add_column("rlnNrOfSignificantSamples");
  for (std::size_t a = 0; a < in.active.size(); ++a) {
    const auto& p = f.poses[a];
    t.set_number(a, c_rot, p.rot, 4), t.set_number(a, c_tilt, p.tilt, 4), t.set_number(a, c_psi, p.psi, 4);
    // RELION's origin is the shift that re-centres the particle: minus its displacement.
    t.set_number(a, c_ox, -p.shift_x * in.pixel, 4), t.set_number(a, c_oy, -p.shift_y * in.pixel, 4);
    t.set_integer(a, c_class, p.class_index + 1);
    t.set_number(a, c_pmax, p.max_probability, 5);
    t.set_integer(a, c_nsig, p.significant);
  }
  io::write_star(dir / "particles.star", star);
  io::write_particles_cs(dir / "particles.cs", star);
}

constexpr const char* kHandNote =
    "Projections do not reveal the hand: each map may be the mirror image of the true structure. The maps are written "
    "in the hand the run converged to (not flipped); check it against known features (e.g. alpha-helix handedness) "
    "at higher resolution.";

void write_report(const fs::path& dir, const State& s, const Inputs& in, const FinalPass& f, const std::string& symmetry) {
  const auto& o = s.options;
  io::HtmlReport report("emcryo abinitio");
  report.add_paragraph(fmt::format("{} particles ({} skipped), box {} px at {:.3f} Å/px; {} class(es), symmetry {} (imposed during the run); "
                                   "{} SGD iterations from {:.1f} to {:.1f} Å, then one pass over every particle.",
                                   in.active.size(), in.skipped.size(), in.n, in.pixel, o.classes, symmetry, s.total_iterations,
                                   o.initial_resolution, o.max_resolution));
  report.add_paragraph(kHandNote);
  report.add_heading("Classes");
  std::vector<std::vector<std::string>> rows;
  for (std::size_t k = 0; k < f.maps.size(); ++k) {
    rows.push_back({fmt::format("class_{:03}.mrc", k + 1), std::to_string(f.class_sizes[k]),
                    fmt::format("{:.1f}", 100.0 * static_cast<double>(f.class_sizes[k]) / static_cast<double>(in.active.size()))});
    report.add_image_png(fmt::format("class {} (final): central sections xy, xz, yz", k + 1), io::volume_sections_png(f.maps[k], in.n));
  }
  report.add_table({"map", "particles", "%"}, rows);
  std::vector<io::Series> res{{"resolution (Å)", {}, {}}}, ess{{"class ESS", {}, {}}};
  std::vector<io::Series> fractions(sz(o.classes));
  for (int k = 0; k < o.classes; ++k) fractions[sz(k)].name = fmt::format("class {}", k + 1);
  for (const auto& h : s.history) {
    res[0].x.push_back(h.iteration), res[0].y.push_back(h.resolution);
    ess[0].x.push_back(h.iteration), ess[0].y.push_back(h.class_ess);
    for (std::size_t k = 0; k < h.class_fractions.size() && k < fractions.size(); ++k)
      fractions[k].x.push_back(h.iteration), fractions[k].y.push_back(h.class_fractions[k]);
  }
  report.add_heading("Schedule");
  report.add_line_chart("Resolution schedule", "SGD iteration", "working resolution (Å)", res);
  if (o.classes > 1) {
    report.add_line_chart("Class share of each minibatch", "SGD iteration", "fraction", fractions);
    report.add_line_chart("Class ESS (similarity annealing)", "SGD iteration", "mean effective classes per particle", ess);
  }
  report.add_heading("Stages: central sections of each class");
  for (const auto& snap : s.snapshots)
    for (std::size_t k = 0; k < snap.files.size(); ++k) {
      const fs::path png = dir / snap.files[k];
      if (!fs::exists(png)) continue;
      std::ifstream file(png, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
      report.add_image_png(fmt::format("iteration {} ({:.1f} Å), class {}", snap.iteration, snap.resolution, k + 1), bytes);
    }
  if (!in.skipped.empty()) {
    report.add_heading("Skipped particles");
    for (const auto& line : in.skipped) report.add_paragraph(line);
  }
  report.write(dir / "report.html");
}

AbinitioResult run(const JobFolder& folder, State s, const Inputs& in, bool resumed) {
  const auto& o = s.options;
  const fs::path dir = folder.dir();
  const auto group = geometry::make_symmetry_group(o.symmetry);
  folder.open_log();
  const int n = in.n, K = o.classes;
  const Engine e{in, group};
  std::vector<em::SgdMap> maps;
  if (!resumed) {
    s.total_iterations = o.iterations > 0 ? o.iterations : default_iterations(in.active.size(), o.final_batch);
    s.sigma2_initial = em::estimate_initial_sigma2(in.set, in.active, in.particle_mask);
    s.noise_sum.assign(s.sigma2_initial.size(), std::vector<double>(sz(n / 2 + 1), 0.0));
    s.noise_count = s.noise_sum;
    for (int k = 0; k < K; ++k) maps.emplace_back(random_start(e, o, k, s.sigma2_initial), n);
    s.snapshots.push_back({0, o.initial_resolution, snapshot_files(dir, 0, maps)});
  } else {
    if (s.map_files.size() != sz(K) || s.velocity_files.size() != sz(K))
      fail("{}: damaged checkpoint: it names {} maps for {} classes", (dir / "checkpoint.json").string(), s.map_files.size(), K);
    for (int k = 0; k < K; ++k)
      maps.emplace_back(io::MrcReader(dir / s.map_files[sz(k)]).read_all(), io::MrcReader(dir / s.velocity_files[sz(k)]).read_all(), n);
    log::info("abinitio: continuing after SGD iteration {} of {}", s.iteration, s.total_iterations);
  }
  log::info("abinitio: {} particles ({} skipped), box {} px, {:.3f} Å/px, {} class(es), symmetry {}; {} SGD iterations, {:.1f} → {:.1f} Å",
            in.active.size(), in.skipped.size(), n, in.pixel, K, group.name, s.total_iterations, o.initial_resolution, o.max_resolution);
  log::info("abinitio: {}", kHandNote);
  log::info("abinitio: scoring on {}", e.backend->name());

  Progress progress("SGD", s.total_iterations);
  progress.advance(s.iteration);
  const int snapshot_every = std::max(1, s.total_iterations / 6);
  while (s.iteration < s.total_iterations) {
    const auto t0 = Clock::now();
    const int it = s.iteration;
    const double resolution = resolution_at_iteration(o, it, s.total_iterations);
    const StepOutcome step = sgd_iteration(e, s, maps);
    ++s.iteration;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    s.seconds += seconds;
    s.history.push_back({s.iteration, resolution, step_for(resolution, in.diameter), batch_at_iteration(o, it, s.total_iterations),
                         step.class_ess, s.class_temperature, seconds, step.class_fractions});
    if (s.iteration % snapshot_every == 0 || s.iteration == s.total_iterations)
      s.snapshots.push_back({s.iteration, resolution, snapshot_files(dir, s.iteration, maps)});
    if (s.iteration % 10 == 0 || s.iteration == s.total_iterations)
      log::info("SGD iteration {:4}/{}: {:5.1f} Å, step {:.1f}°, minibatch {}, class ESS {:.2f} (temperature {:.2g}), shares {}, {:.2f} s",
                s.iteration, s.total_iterations, resolution, step_for(resolution, in.diameter), batch_at_iteration(o, it, s.total_iterations),
                step.class_ess, s.class_temperature, fmt::join(step.class_fractions, " "), seconds);
    write_checkpoint(folder, s, maps, in.pixel);
    progress.advance();
  }
  progress.finish();

  const FinalPass f = final_pass(e, s, maps);
  for (int k = 0; k < K; ++k) refine_detail::write_map(dir / fmt::format("class_{:03}.mrc", k + 1), f.maps[sz(k)], n, in.pixel);
  write_particles(dir, in, f);
  write_report(dir, s, in, f, group.name);
  AbinitioResult result;
  for (auto c : f.class_sizes) result.class_fractions.push_back(static_cast<double>(c) / static_cast<double>(in.active.size()));
  result.iterations = s.total_iterations;
  result.seconds = s.seconds;
  log::info("abinitio: class sizes {}; class_NNN.mrc, particles.star, report.html in {}", fmt::join(f.class_sizes, ", "), dir.string());
  return result;
}

}  // namespace

AbinitioResult run_abinitio(const AbinitioOptions& options) {
  if (options.classes < 1) fail("abinitio: --classes must be at least 1");
  if (options.initial_resolution <= options.max_resolution)
    fail("abinitio: --init-res {} Å must be coarser (larger) than --max-res {} Å", options.initial_resolution, options.max_resolution);
  if (options.learning_rate <= 0 || options.learning_rate > 1) fail("abinitio: --learning-rate must be in (0, 1]");
  if (options.momentum < 0 || options.momentum >= 1) fail("abinitio: --momentum must be in [0, 1)");
  (void)geometry::make_symmetry_group(options.symmetry);
  State s;
  s.options = options;
  s.options.particles = absolute_path(s.options.particles);
  // Minibatches: cryoSPARC's 90 then 300 for one class; per class as many again, so each map's
  // gradient rests on about as many particles.
  if (s.options.initial_batch <= 0) s.options.initial_batch = 100 * options.classes;
  if (s.options.final_batch <= 0) s.options.final_batch = 300 * options.classes;
  // The inputs are judged before the output folder is made: a bad input leaves no empty folder.
  const Inputs in = read_inputs(s.options);
  const JobFolder folder(options.out_dir, "abinitio", JobFolder::Mode::start);
  return run(folder, std::move(s), in, false);
}

AbinitioResult continue_abinitio(const std::string& out_dir) {
  const JobFolder folder(out_dir, "abinitio", JobFolder::Mode::resume);
  State s = folder.read_checkpoint_as<State>();
  s.options.out_dir = out_dir;
  const Inputs in = read_inputs(s.options);
  return run(folder, std::move(s), in, true);
}

}  // namespace emcryo::jobs
