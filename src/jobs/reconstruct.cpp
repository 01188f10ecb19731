#include "emcryo/jobs/reconstruct.hpp"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/em/model3d.hpp"
#include "emcryo/em/regularizer.hpp"
#include "emcryo/gpu/backend.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/io/report.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;

ReconstructResult run_reconstruct(const ReconstructOptions& o) {
  const auto group = geometry::make_symmetry_group(o.symmetry);  // fails early on a bad name
  auto set = io::ParticleSet::read(o.particles, {.cs_root = o.cs_root});
  if (!set.has_poses()) fail("{}: no rlnAngleRot/rlnAngleTilt/rlnAnglePsi columns: reconstruct needs poses", o.particles);
  const bool use_ctf = !o.no_ctf;
  if (use_ctf && !set.has_ctf())
    fail("{}: no CTF columns (rlnDefocusU/V); pass --no-ctf to reconstruct without CTF correction", o.particles);
  fs::create_directories(o.out_dir);
  const fs::path out(o.out_dir);
  if (mpi::is_root()) log::set_file((out / "run.log").string());
  const int n = set.box();
  const double pixel = set.pixel_size();
  double r_max = n / 2.0 - 1;
  if (o.max_resolution > 0) r_max = std::min(r_max, n * pixel / o.max_resolution);
  log::info("reconstruct: {} particles, box {}, {:.3f} Å/px, symmetry {} ({} operators), CTF {}", set.size(), n,
            pixel, group.name, group.operators.size(), use_ctf ? "corrected" : "ignored");

  const std::size_t count = set.size();
  std::vector<std::size_t> all(count);
  std::iota(all.begin(), all.end(), 0);
  const std::vector<int> half = set.half_sets(all, o.seed);

  // Back-projection at the known poses through the engine's 3D configuration: no scoring, flat
  // noise (the CTF alone weights the data), sums in lanes that do not depend on the thread count.
  ReconstructResult result;
  std::vector<std::size_t> usable;
  {
    std::vector<float> img(static_cast<std::size_t>(n) * n);
    for (std::size_t i = 0; i < count; ++i) {
      set.read_image(i, img.data());
      if (io::all_finite(img.data(), img.size())) {
        usable.push_back(i);
      } else {
        log::warn("{}: particle {} ({}) has NaN/Inf pixels: skipped", o.particles, i + 1, set.image_name(i));
        ++result.particles_skipped;
      }
    }
  }
  result.particles_used = usable.size();
  const std::vector<std::vector<double>> flat_noise(set.optics_groups().size(), std::vector<double>(static_cast<std::size_t>(n / 2 + 1), 1.0));
  const std::vector<float> no_mask(static_cast<std::size_t>(n) * n, 1.0f);
  const auto list = em::make_frequency_list(n, std::max(1.0, r_max));
  em::ExpectationSettings settings;
  settings.use_ctf = use_ctf;
  settings.known_poses = true;
  settings.batch = o.batch;
  settings.insert_radius = r_max;
  const auto backend = gpu::make_backend();
  log::info("reconstruct: back-projecting on {}", backend->name());
  std::vector<em::BackProjector> accum;
  // The bar counts this rank's share of each half set (all of it in one process).
  std::size_t own_share = 0;
  for (int h = 1; h <= 2; ++h)
    own_share += mpi::Chunks(static_cast<std::size_t>(std::count_if(usable.begin(), usable.end(), [&](std::size_t i) { return half[i] == h; })))
                     .owned_items();
  Progress progress("reconstruct", static_cast<std::int64_t>(own_share));
  for (int h = 1; h <= 2; ++h) {
    std::vector<std::size_t> images;
    std::vector<em::Pose3D> poses;
    for (std::size_t i : usable) {
      if (half[i] != h) continue;
      const io::Pose pose = set.pose(i);
      em::Pose3D p;
      p.rot = pose.rot, p.tilt = pose.tilt, p.psi = pose.psi;
      // RELION's origin re-centres the particle: the displacement is minus the origin.
      p.shift_x = -pose.origin_x / pixel, p.shift_y = -pose.origin_y / pixel;
      images.push_back(i);
      poses.push_back(p);
    }
    em::ReconstructionSums sums(1, n);
    em::NoiseSums noise(flat_noise.size(), flat_noise.front().size());
    em::ExpectationStats stats;
    if (!images.empty())
      em::expectation_3d(set, images, poses, {nullptr}, list, flat_noise, no_mask, em::PoseSearch{}, group.operators, settings, *backend,
                         sums, noise, stats, &progress);
    accum.push_back(std::move(sums.total(0)));
  }
  progress.finish();

  em::VolumeTransforms& transforms = backend->volume_transforms();  // on the GPU where it back-projected
  result.half1 = transforms.reconstruct(accum[0], {});
  result.half2 = transforms.reconstruct(accum[1], {});
  // FSC inside a soft sphere that keeps the particle and drops the noisy corners.
  const auto sphere = image::soft_round_mask(n, 3, n / 2.0 - 6, 5);
  auto m1 = result.half1, m2 = result.half2;
  image::apply_mask(m1.data(), sphere);
  image::apply_mask(m2.data(), sphere);
  result.fsc = image::fsc_3d(m1, m2, n);
  for (std::size_t s = static_cast<std::size_t>(r_max) + 1; s < result.fsc.size(); ++s) result.fsc[s] = 0;
  result.resolution_0143 = image::resolution_at(result.fsc, 0.143, n, pixel);
  result.resolution_05 = image::resolution_at(result.fsc, 0.5, n, pixel);

  em::BackProjector full = accum[0];
  full.add(accum[1]);
  result.map_unfiltered = transforms.reconstruct(full, {});
  // Wiener filter from the half-map FSC (the full set: two halves).
  result.map = em::GlobalWiener(result.fsc, 2).reconstruct(full, transforms);
  result.box = n;
  result.pixel_size = pixel;

  // Under MPI every rank holds the same maps; rank 0 writes them.
  if (!mpi::is_root()) return result;
  io::MrcWriteOptions w;
  w.pixel_size = pixel;
  io::write_mrc(out / "half1_unfil.mrc", result.half1, n, n, n, w);
  io::write_mrc(out / "half2_unfil.mrc", result.half2, n, n, n, w);
  io::write_mrc(out / "map_unfil.mrc", result.map_unfiltered, n, n, n, w);
  io::write_mrc(out / "map.mrc", result.map, n, n, n, w);
  io::write_fsc_star(out / "fsc.star", result.fsc, n, pixel);
  const std::string plot = io::svg_fsc_plot(result.fsc, n, pixel, "Half-map FSC");
  write_text_file(out / "fsc.svg", plot);
  io::HtmlReport report("emcryo reconstruct");
  report.add_paragraph(fmt::format("{} particles ({} skipped), box {} px, {:.3f} Å/px, symmetry {}.",
                                   result.particles_used, result.particles_skipped, n, pixel, group.name));
  report.add_paragraph(fmt::format("Resolution (FSC 0.143): {:.2f} Å; FSC 0.5: {:.2f} Å.", result.resolution_0143,
                                   result.resolution_05));
  report.add_raw(plot);
  report.add_image_png("Central sections of map.mrc", io::volume_sections_png(result.map, n));
  report.write(out / "report.html");
  log::info("reconstruct: resolution {:.2f} Å at FSC 0.143 ({:.2f} Å at 0.5); maps in {}", result.resolution_0143,
            result.resolution_05, o.out_dir);
  log::set_file("");
  return result;
}

}  // namespace emcryo::jobs
