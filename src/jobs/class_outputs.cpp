#include "class_outputs.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "emcryo/core/files.hpp"
#include "emcryo/em/regularizer.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/cs_particles.hpp"
#include "emcryo/io/star.hpp"
#include "refine_outputs.hpp"

namespace emcryo::jobs::class_outputs {

namespace fs = std::filesystem;

std::string posterior_column(int k) { return fmt::format("rlnClassPosterior{:03}", k + 1); }

ClassMap write_class_map(const fs::path& dir, int k, const em::BackProjector& half1, const em::BackProjector& half2, const std::vector<float>& mask,
                         int n, double pixel, double radius) {
  ClassMap c;
  const auto h1 = half1.reconstruct(), h2 = half2.reconstruct();
  c.fsc = image::fsc_3d(image::masked(h1, mask), image::masked(h2, mask), n);
  for (std::size_t s = static_cast<std::size_t>(radius) + 1; s < c.fsc.size(); ++s) c.fsc[s] = 0;
  c.resolution = image::resolution_at(c.fsc, 0.143, n, pixel);
  em::BackProjector full = half1;
  full.add(half2);
  c.map = em::GlobalWiener(c.fsc, 2).reconstruct(full, em::cpu_volume_transforms());
  const std::string stem = fmt::format("class_{:03}", k + 1);
  refine_detail::write_map(dir / (stem + "_half1_unfil.mrc"), h1, n, pixel);
  refine_detail::write_map(dir / (stem + "_half2_unfil.mrc"), h2, n, pixel);
  refine_detail::write_map(dir / (stem + ".mrc"), c.map, n, pixel);
  io::write_fsc_star(dir / (stem + "_fsc.star"), c.fsc, n, pixel);
  return c;
}

void write_class_particles(const fs::path& dir, const io::ParticleSet& set, const std::vector<std::size_t>& active, const std::vector<int>& half,
                           const std::vector<em::Pose3D>& poses, int K) {
  const double pixel = set.pixel_size();
  io::StarFile out_star = set.output_star(active);
  auto& t = io::ParticleSet::particles_table(out_star);
  const int c_rot = t.add_column("rlnAngleRot"), c_tilt = t.add_column("rlnAngleTilt"), c_psi = t.add_column("rlnAnglePsi"),
            c_ox = t.add_column("rlnOriginXAngst"), c_oy = t.add_column("rlnOriginYAngst"), c_sub = t.add_column("rlnRandomSubset"),
            c_class = t.add_column("rlnClassNumber"), c_pmax = t.add_column("rlnMaxValueProbDistribution");
  std::vector<int> c_post;
  for (int k = 0; k < K; ++k) c_post.push_back(t.add_column(posterior_column(k)));
  for (std::size_t a = 0; a < active.size(); ++a) {
    const auto& p = poses[a];
    t.set_number(a, c_rot, p.rot, 4), t.set_number(a, c_tilt, p.tilt, 4), t.set_number(a, c_psi, p.psi, 4);
    // RELION's origin is the shift that re-centres the particle: minus its displacement.
    t.set_number(a, c_ox, -p.shift_x * pixel, 4), t.set_number(a, c_oy, -p.shift_y * pixel, 4);
    t.set_integer(a, c_sub, half[a]);
    t.set_integer(a, c_class, p.class_index + 1);
    t.set_number(a, c_pmax, p.class_posterior[static_cast<std::size_t>(p.class_index)], 5);
    for (int k = 0; k < K; ++k) t.set_number(a, c_post[static_cast<std::size_t>(k)], p.class_posterior[static_cast<std::size_t>(k)], 5);
  }
  io::write_star(dir / "particles.star", out_star);
  io::write_particles_cs(dir / "particles.cs", out_star);
}

void write_class_model_star(const fs::path& dir, const std::vector<ClassMap>& classes, double pixel, int n, const std::string& symmetry,
                            int iterations) {
  io::StarFile model;
  io::StarBlock general{"model_general", false, {}};
  auto& g = general.table;
  g.add_row();
  double best = 999;
  for (const auto& c : classes)
    if (!c.empty) best = std::min(best, c.resolution);
  g.set_number(0, g.add_column("rlnCurrentResolution"), best, 4);
  g.set_number(0, g.add_column("rlnPixelSize"), pixel, 4);
  g.set_integer(0, g.add_column("rlnOriginalImageSize"), n);
  g.set_integer(0, g.add_column("rlnNrClasses"), static_cast<std::int64_t>(classes.size()));
  g.set_text(0, g.add_column("rlnSymmetryGroup"), symmetry);
  g.set_integer(0, g.add_column("rlnCurrentIteration"), iterations);
  model.blocks.push_back(std::move(general));
  io::StarBlock block{"model_classes", true, {}};
  auto& t = block.table;
  const int c_ref = t.add_column("rlnReferenceImage"), c_dist = t.add_column("rlnClassDistribution"),
            c_size = t.add_column("emcryoClassParticles"), c_res = t.add_column("rlnEstimatedResolution");
  double total = 0;
  for (const auto& c : classes) total += c.size;
  for (std::size_t k = 0; k < classes.size(); ++k) {
    const std::size_t r = t.add_row();
    t.set_text(r, c_ref, classes[k].empty ? "None" : fmt::format("class_{:03}.mrc", k + 1));
    t.set_number(r, c_dist, total > 0 ? classes[k].size / total : 0, 5);
    t.set_number(r, c_size, classes[k].size, 1);
    t.set_number(r, c_res, classes[k].empty ? 999.0 : classes[k].resolution, 3);
  }
  model.blocks.push_back(std::move(block));
  io::write_star(dir / "model.star", model);
}

void add_class_sections(io::HtmlReport& report, const std::vector<ClassMap>& classes, const std::vector<em::Pose3D>& poses, int n,
                        double pixel, bool orientations) {
  double total = 0;
  for (const auto& c : classes) total += c.size;
  std::vector<std::vector<std::string>> rows;
  std::vector<io::Series> fsc_series;
  for (std::size_t k = 0; k < classes.size(); ++k) {
    const auto& c = classes[k];
    rows.push_back({std::to_string(k + 1), fmt::format("{:.1f}", c.size), fmt::format("{:.1f}", total > 0 ? 100 * c.size / total : 0.0),
                    c.empty ? "emptied (no map)" : fmt::format("{:.2f}", c.resolution)});
    if (c.empty) continue;
    io::Series s{fmt::format("class {}", k + 1), {}, {}};
    for (std::size_t i = 1; i < c.fsc.size(); ++i) s.x.push_back(static_cast<double>(i) / (n * pixel)), s.y.push_back(c.fsc[i]);
    fsc_series.push_back(std::move(s));
  }
  report.add_heading("Classes");
  report.add_table({"class", "particles (sum of posteriors)", "share (%)", "resolution, half-map FSC 0.143 (Å)"}, rows);
  report.add_raw(io::svg_line_plot("Half-map FSC per class", "spatial frequency (1/Å)", "FSC", fsc_series, {0.143, 0.5}));
  for (std::size_t k = 0; k < classes.size(); ++k) {
    if (classes[k].empty) continue;
    report.add_image_png(fmt::format("Class {}: central sections of class_{:03}.mrc", k + 1, k + 1), io::volume_sections_png(classes[k].map, n));
    if (!orientations) continue;
    std::vector<double> rots, tilts;
    for (const auto& p : poses)
      if (p.class_index == static_cast<int>(k)) rots.push_back(p.rot), tilts.push_back(p.tilt);
    report.add_raw(io::svg_orientation_plot(rots, tilts, fmt::format("Class {}: viewing directions ({} particles)", k + 1, rots.size())));
  }
}

}  // namespace emcryo::jobs::class_outputs
