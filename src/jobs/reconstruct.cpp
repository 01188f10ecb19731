#include "emcryo/jobs/reconstruct.hpp"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
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

ReconstructResult run_reconstruct(const ReconstructOptions& o) {
  const auto group = geometry::make_symmetry_group(o.symmetry);  // fails early on a bad name
  auto set = io::ParticleSet::read(o.particles, {.cs_root = o.cs_root});
  if (!set.has_poses()) fail("{}: no rlnAngleRot/rlnAngleTilt/rlnAnglePsi columns: reconstruct needs poses", o.particles);
  const bool use_ctf = !o.no_ctf;
  if (use_ctf && !set.has_ctf())
    fail("{}: no CTF columns (rlnDefocusU/V); pass --no-ctf to reconstruct without CTF correction", o.particles);
  fs::create_directories(o.out_dir);
  const fs::path out(o.out_dir);
  log::set_file((out / "run.log").string());
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

  const int threads = omp_get_max_threads();
  std::vector<em::BackProjector> accum;
  for (int t = 0; t < 2 * threads; ++t) accum.emplace_back(n);
  std::vector<geometry::Mat3> sym_t;
  for (const auto& s : group.operators) sym_t.push_back(geometry::transpose(s));

  ReconstructResult result;
  std::vector<char> skipped(count, 0);
  Progress progress("reconstruct", static_cast<std::int64_t>(count));
  const std::size_t pixels = static_cast<std::size_t>(n) * n;
  for (std::size_t first = 0; first < count; first += static_cast<std::size_t>(o.batch)) {
    const std::size_t batch = std::min<std::size_t>(static_cast<std::size_t>(o.batch), count - first);
    std::vector<float> images(batch * pixels);
    for (std::size_t b = 0; b < batch; ++b) set.read_image(first + b, images.data() + b * pixels);
#pragma omp parallel
    {
      const int tid = omp_get_thread_num();
      std::vector<image::Complex> spectrum(image::half_size(n, n));
      std::vector<float> weight(image::half_size(n, n), 1.0f);
#pragma omp for schedule(dynamic, 4)
      for (std::size_t b = 0; b < batch; ++b) {
        const std::size_t i = first + b;
        const float* img = images.data() + b * pixels;
        if (!io::all_finite(img, pixels)) {
          skipped[i] = 1;
          continue;
        }
        image::fft_forward_2d(img, spectrum.data(), n, n);
        const io::Pose pose = set.pose(i);
        image::shift_half_grid_2d(spectrum.data(), n, pose.origin_x / pixel, pose.origin_y / pixel);
        if (use_ctf) {
          image::ctf_half_grid(set.ctf(i), n, pixel, weight.data());
          for (std::size_t j = 0; j < spectrum.size(); ++j) {
            spectrum[j] *= weight[j];
            weight[j] *= weight[j];
          }
        }
        const auto a = geometry::euler_to_matrix({pose.rot, pose.tilt, pose.psi});
        auto& bp = accum[static_cast<std::size_t>(2 * tid + (half[i] - 1))];
        for (const auto& s : sym_t) bp.insert(a * s, spectrum.data(), weight.data(), n, r_max);
      }
    }
    progress.advance(static_cast<std::int64_t>(batch));
  }
  progress.finish();
  for (int t = 1; t < threads; ++t) {
    accum[0].add(accum[static_cast<std::size_t>(2 * t)]);
    accum[1].add(accum[static_cast<std::size_t>(2 * t + 1)]);
  }
  for (std::size_t i = 0; i < count; ++i) {
    if (skipped[i]) {
      log::warn("{}: particle {} ({}) has NaN/Inf pixels: skipped", o.particles, i + 1, set.image_name(i));
      ++result.particles_skipped;
    }
  }
  result.particles_used = count - result.particles_skipped;

  result.half1 = accum[0].reconstruct();
  result.half2 = accum[1].reconstruct();
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
  result.map_unfiltered = full.reconstruct();
  // Wiener filter from the half-map FSC: the full set's SSNR is 2 FSC / (1 - FSC), and the
  // regularisation sigma^2/tau^2 per shell is the mean weight divided by that SSNR.
  const auto mean_weight = full.mean_weight_per_shell();
  std::vector<double> regularisation(mean_weight.size());
  for (std::size_t s = 0; s < regularisation.size(); ++s) {
    const double f = std::clamp(s < result.fsc.size() ? result.fsc[s] : 0.0, 1e-3, 0.999);
    regularisation[s] = mean_weight[s] * (1 - f) / (2 * f);
  }
  result.map = full.reconstruct(regularisation);
  result.box = n;
  result.pixel_size = pixel;

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
