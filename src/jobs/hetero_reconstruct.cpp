// `emcryo hetero-reconstruct`: the map of each class from fixed poses and fixed class
// probabilities: the per-class posterior columns (rlnClassPosterior001...) that hetero-refine and
// class3d write, or the hard rlnClassNumber alone (RELION's Class3D output). Back-projection at the
// known poses through the engine, each particle into each class by its posterior.
#include <algorithm>
#include <filesystem>

#include "class_outputs.hpp"
#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/gpu/backend.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/report.hpp"
#include "emcryo/jobs/hetero.hpp"
#include "map_job.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;

namespace {

std::size_t sz(int v) { return static_cast<std::size_t>(v); }

/// Per particle, its weight in each class: the posterior columns when present (normalised), else
/// one-hot from rlnClassNumber; with `hard`, one-hot at the most probable class.
std::vector<std::vector<double>> class_weights(const io::ParticleSet& set, const std::string& path, bool hard) {
  const auto& t = set.table();
  std::vector<int> columns;
  for (int k = 0; t.has(class_outputs::posterior_column(k)); ++k) columns.push_back(t.find(class_outputs::posterior_column(k)));
  const bool has_class = t.has("rlnClassNumber");
  if (columns.empty() && !has_class)
    fail("{}: neither rlnClassNumber nor per-class posterior columns ({}...): hetero-reconstruct needs the classes", path,
         class_outputs::posterior_column(0));
  int K = static_cast<int>(columns.size());
  if (columns.empty())
    for (std::size_t i = 0; i < set.size(); ++i) {
      const int c = set.class_number(i);
      if (c < 1) fail("{}: data_particles line {}: rlnClassNumber {} is not a class (1, 2, ...)", path, t.line_of(i), c);
      K = std::max(K, c);
    }
  if (K < 1) fail("{}: no classes", path);
  std::vector<std::vector<double>> weights(set.size(), std::vector<double>(sz(K), 0.0));
  for (std::size_t i = 0; i < set.size(); ++i) {
    auto& w = weights[i];
    if (columns.empty()) {
      w[sz(set.class_number(i) - 1)] = 1;
      continue;
    }
    double total = 0;
    for (int k = 0; k < K; ++k) {
      const double p = t.number(i, columns[sz(k)]);
      if (!(p >= 0 && p <= 1.0001))
        fail("{}: data_particles line {}: {} is {}, not a probability", path, t.line_of(i), class_outputs::posterior_column(k), p);
      w[sz(k)] = p, total += p;
    }
    if (total <= 0) fail("{}: data_particles line {}: the class posteriors sum to zero", path, t.line_of(i));
    for (auto& p : w) p /= total;
    if (hard) {
      const auto best = std::max_element(w.begin(), w.end()) - w.begin();
      std::fill(w.begin(), w.end(), 0.0);
      w[static_cast<std::size_t>(best)] = 1;
    }
  }
  return weights;
}

}  // namespace

HeteroResult run_hetero_reconstruct(const HeteroReconstructOptions& o) {
  const auto group = geometry::make_symmetry_group(o.symmetry);  // fails early on a bad name
  MapJobInputs in = read_map_job_inputs({"hetero-reconstruct", o.particles, o.cs_root, o.mask, o.no_ctf, 0});
  if (!in.set.has_poses()) fail("{}: no rlnAngleRot/rlnAngleTilt/rlnAnglePsi columns: hetero-reconstruct needs poses", o.particles);
  const auto weights = class_weights(in.set, o.particles, o.force_hard);
  const int K = static_cast<int>(weights.front().size());
  fs::create_directories(o.out_dir);
  const fs::path out(o.out_dir);
  log::set_file((out / "run.log").string());
  const int n = in.n;
  const double pixel = in.pixel;
  double radius = n / 2.0 - 1;
  if (o.max_resolution > 0) radius = std::min(radius, n * pixel / o.max_resolution);
  select_particles(in, o.seed);
  log::info("hetero-reconstruct: {} particles ({} skipped), {} classes ({}), box {}, {:.3f} Å/px, symmetry {}", in.active.size(),
            in.skipped.size(), K, o.force_hard ? "hard" : "weighted by the class posteriors", n, pixel, group.name);

  std::vector<std::vector<std::size_t>> images(2);
  std::vector<std::vector<em::Pose3D>> poses(2);
  std::vector<em::Pose3D> all_poses;
  for (std::size_t a = 0; a < in.active.size(); ++a) {
    const std::size_t i = in.active[a];
    em::Pose3D p = input_pose(in.set, i);
    p.class_posterior = weights[i];
    p.class_index = static_cast<int>(std::max_element(weights[i].begin(), weights[i].end()) - weights[i].begin());
    images[sz(in.half[a] - 1)].push_back(i);
    poses[sz(in.half[a] - 1)].push_back(p);
    all_poses.push_back(p);
  }
  Progress progress("hetero-reconstruct", static_cast<std::int64_t>(in.active.size()));
  const auto backend = gpu::make_backend();
  log::info("hetero-reconstruct: back-projecting on {}", backend->name());
  auto sums = back_project_classes(in.set, images, poses, K, group.operators, !o.no_ctf, radius, o.batch, *backend, &progress);
  progress.finish();

  // FSC inside the user's mask, else a soft sphere that keeps the particle and drops the corners.
  const auto mask = !in.user_mask.empty() ? in.user_mask : image::soft_round_mask(n, 3, n / 2.0 - 6, 5);
  std::vector<class_outputs::ClassMap> classes;
  HeteroResult result;
  result.iterations = 0;
  for (int k = 0; k < K; ++k) {
    class_outputs::ClassMap c;
    for (const auto& w : all_poses) c.size += w.class_posterior[sz(k)];
    if (c.size < 1) {
      c.empty = true;
      log::warn("hetero-reconstruct: class {} has no particles: no map", k + 1);
    } else {
      const double size = c.size;
      c = class_outputs::write_class_map(out, k, sums[0][sz(k)], sums[1][sz(k)], mask, n, pixel, radius);
      c.size = size;
    }
    result.class_sizes.push_back(c.size);
    result.resolutions.push_back(c.empty ? 999.0 : c.resolution);
    classes.push_back(std::move(c));
  }
  result.class_of_particle.assign(in.set.size(), -1);
  for (std::size_t a = 0; a < in.active.size(); ++a) result.class_of_particle[in.active[a]] = all_poses[a].class_index;
  class_outputs::write_class_model_star(out, classes, pixel, n, group.name, 0);
  io::HtmlReport report("emcryo hetero-reconstruct");
  report.add_paragraph(fmt::format("{} particles ({} skipped), {} classes {}, box {} px, {:.3f} Å/px, symmetry {}.", in.active.size(),
                                   in.skipped.size(), K, o.force_hard ? "(hard: most probable class)" : "weighted by their posteriors", n,
                                   pixel, group.name));
  class_outputs::add_class_sections(report, classes, all_poses, n, pixel, true);
  report.write(out / "report.html");
  std::string summary;
  for (int k = 0; k < K; ++k)
    summary += fmt::format("{}class {}: {:.0f} particles, {}", k ? "; " : "", k + 1, classes[sz(k)].size,
                           classes[sz(k)].empty ? "empty" : fmt::format("{:.2f} Å", classes[sz(k)].resolution));
  log::info("hetero-reconstruct: {}; maps in {}", summary, o.out_dir);
  log::set_file("");
  return result;
}

}  // namespace emcryo::jobs
