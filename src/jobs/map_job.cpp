#include "map_job.hpp"

#include <algorithm>
#include <cmath>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/mrc.hpp"
#include "refine_outputs.hpp"

namespace emcryo::em {
void to_json(nlohmann::json& j, const Pose3D& p) { j = {p.rot, p.tilt, p.psi, p.shift_x, p.shift_y}; }
void from_json(const nlohmann::json& j, Pose3D& p) {
  p = Pose3D{};
  p.rot = j.at(0), p.tilt = j.at(1), p.psi = j.at(2), p.shift_x = j.at(3), p.shift_y = j.at(4);
}
}  // namespace emcryo::em

namespace emcryo::jobs {

namespace fs = std::filesystem;

MapJobInputs read_map_job_inputs(const MapJobInputOptions& o) {
  MapJobInputs in{io::ParticleSet::read(o.particles, {.cs_root = o.cs_root}), 0, 0, {}, {}, {}, 0, {}, {}, {}};
  auto& set = in.set;
  const int n = in.n = set.box();
  const double pixel = in.pixel = set.pixel_size();
  if (!o.no_ctf && !set.has_ctf())
    fail("{}: no CTF columns (rlnDefocusU/V): add them, or pass --no-ctf to {} without CTF correction", o.particles, o.job);
  set.check_pixel_size_against_stacks();
  if (!o.mask.empty()) {
    io::MrcReader m(o.mask);
    if (m.nx() != n || m.ny() != n || m.nz() != n) fail("{}: mask is {}x{}x{}, the particles' box is {}", o.mask, m.nx(), m.ny(), m.nz(), n);
    in.user_mask = m.read_all();
  }
  in.diameter = o.particle_diameter > 0 ? o.particle_diameter : 0.9 * n * pixel;
  if (in.diameter > n * pixel) fail("{}: --particle-diameter {} Å is wider than the box ({:.1f} Å)", o.job, in.diameter, n * pixel);
  in.particle_mask = image::soft_round_mask(n, 2, in.diameter / pixel / 2 - 2, 5);
  in.sphere = image::soft_round_mask(n, 3, in.diameter / pixel / 2, 5);
  return in;
}

std::vector<std::string> check_particles(const io::ParticleSet& set, std::vector<std::size_t>& active) {
  enum Verdict : std::int64_t { usable = 0, not_finite = 1, constant = 2 };
  const mpi::Chunks chunks(set.size());
  std::vector<std::int64_t> verdict(set.size(), usable);  // zero where another rank checks
  Progress progress("checking particles", static_cast<std::int64_t>(chunks.owned_items()));
  std::vector<float> img(static_cast<std::size_t>(set.box()) * static_cast<std::size_t>(set.box()));
  for (int c = 0; c < chunks.count(); ++c) {
    if (chunks.owner(c) != mpi::rank()) continue;
    for (std::size_t i = chunks.begin(c); i < chunks.end(c); ++i) {
      set.read_image(i, img.data());
      double mean, sd;
      if (!io::all_finite(img.data(), img.size()))
        verdict[i] = not_finite;
      else if (image::mean_stddev(img.data(), img.size(), mean, sd), sd == 0)
        verdict[i] = constant;
    }
    progress.advance(static_cast<std::int64_t>(chunks.end(c) - chunks.begin(c)));
  }
  progress.finish();
  mpi::sum(verdict);
  std::vector<std::string> notes;
  active.clear();
  for (std::size_t i = 0; i < set.size(); ++i) {
    if (verdict[i] == usable)
      active.push_back(i);
    else
      notes.push_back(fmt::format("particle {} ({}): {}", i + 1, set.image_name(i), verdict[i] == constant ? "constant image" : "NaN or Inf pixels"));
  }
  return notes;
}

void select_particles(MapJobInputs& in, std::uint64_t seed) {
  in.skipped = check_particles(in.set, in.active);
  for (const auto& s : in.skipped) log::warn("skipped {}", s);
  in.half = in.set.half_sets(in.active, seed);
}

std::vector<float> reference_mask(const MapJobInputs& in, const std::vector<const std::vector<float>*>& maps) {
  if (!in.user_mask.empty()) return in.user_mask;
  std::vector<float> mask(in.sphere.size(), 0.0f);
  for (const auto* map : maps) {
    const auto own = image::solvent_mask(*map, in.n, in.pixel);
    for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = std::max(mask[i], own[i]);
  }
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] *= in.sphere[i];
  return mask;
}

std::vector<std::vector<double>> inflated_sigma2(std::vector<std::vector<double>> sigma2, double inflation) {
  for (auto& group : sigma2)
    for (auto& v : group) v *= inflation;
  return sigma2;
}

std::vector<float> read_reference(const std::string& path, int n, double pixel, const std::string& job, std::string& note) {
  io::MrcReader ref_file(path);
  if (ref_file.nx() != ref_file.ny() || ref_file.ny() != ref_file.nz())
    fail("{}: the reference must be a cubic map (it is {}x{}x{})", path, ref_file.nx(), ref_file.ny(), ref_file.nz());
  auto map = ref_file.read_all();
  const double ref_pixel = ref_file.pixel_size() > 0 ? ref_file.pixel_size() : pixel;
  if (ref_file.nx() != n || std::abs(ref_pixel - pixel) > 1e-3 * pixel) {
    note = fmt::format("{}: reference {} ({} px, {:.3f} Å/px) resampled to {} px at {:.3f} Å/px", job, path, ref_file.nx(), ref_pixel, n, pixel);
    map = image::rescale_volume(map, ref_file.nx(), ref_pixel, n, pixel);
  }
  return map;
}

em::GlobalWiener half_map_regularizer(const std::vector<double>& fsc, int n, double pixel, double initial_lowpass) {
  if (!fsc.empty()) return em::GlobalWiener(fsc, 1);
  std::vector<double> start(static_cast<std::size_t>(n / 2 + 1));
  for (std::size_t s = 0; s < start.size(); ++s) start[s] = static_cast<double>(s) <= n * pixel / initial_lowpass ? 0.9 : 0.01;
  return em::GlobalWiener(start, 1);
}

std::vector<std::string> write_iteration_maps(const fs::path& dir, int iteration, const std::vector<std::string>& labels,
                                              const std::vector<std::vector<float>>& maps, int n, double pixel) {
  std::vector<std::string> names;
  for (std::size_t m = 0; m < maps.size(); ++m) {
    names.push_back(fmt::format("checkpoint_it{:03}_{}.mrc", iteration, labels[m]));
    refine_detail::write_map(dir / names.back(), maps[m], n, pixel);
  }
  return names;
}

void remove_stale_maps(const fs::path& dir, const std::vector<std::string>& current) {
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name.starts_with("checkpoint_it") && name.ends_with(".mrc") &&
        std::find(current.begin(), current.end(), name) == current.end())
      stale.push_back(entry.path());
  }
  for (const auto& file : stale) fs::remove(file);
}

}  // namespace emcryo::jobs

namespace emcryo::jobs {

std::vector<std::vector<em::BackProjector>> back_project_classes(const io::ParticleSet& set, const std::vector<std::vector<std::size_t>>& images,
                                                                 std::vector<std::vector<em::Pose3D>>& poses, int K,
                                                                 const std::vector<geometry::Mat3>& symmetry, bool use_ctf, double radius,
                                                                 int batch, em::ScoringBackend& backend, Progress* progress) {
  const int n = set.box();
  const std::vector<std::vector<double>> flat_noise(set.optics_groups().size(), std::vector<double>(static_cast<std::size_t>(n / 2 + 1), 1.0));
  const std::vector<float> no_mask(static_cast<std::size_t>(n) * n, 1.0f);
  const auto list = em::make_frequency_list(n, std::max(1.0, radius));
  em::ExpectationSettings settings;
  settings.use_ctf = use_ctf;
  settings.known_poses = true;
  settings.batch = batch;
  settings.insert_radius = radius;
  const std::vector<const em::Projector*> no_references(static_cast<std::size_t>(K), nullptr);
  std::vector<std::vector<em::BackProjector>> out;
  for (std::size_t h = 0; h < images.size(); ++h) {
    em::ReconstructionSums sums(K, n);
    em::NoiseSums noise(flat_noise.size(), flat_noise.front().size());
    em::ExpectationStats stats;
    if (!images[h].empty())
      em::expectation_3d(set, images[h], poses[h], no_references, list, flat_noise, no_mask, em::PoseSearch{}, symmetry, settings, backend,
                         sums, noise, stats, progress);
    out.emplace_back();
    for (int k = 0; k < K; ++k) out.back().push_back(std::move(sums.total(k)));
  }
  return out;
}

em::Pose3D input_pose(const io::ParticleSet& set, std::size_t i) {
  const io::Pose pose = set.pose(i);
  em::Pose3D p;
  p.rot = pose.rot, p.tilt = pose.tilt, p.psi = pose.psi;
  p.shift_x = -pose.origin_x / set.pixel_size(), p.shift_y = -pose.origin_y / set.pixel_size();
  return p;
}

}  // namespace emcryo::jobs
