#include "refine_outputs.hpp"

#include "emcryo/io/cs_particles.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/report.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::jobs::refine_detail {

namespace fs = std::filesystem;

void write_map(const fs::path& path, const std::vector<float>& map, int n, double pixel) {
  io::MrcWriteOptions w;
  w.pixel_size = pixel;
  io::write_mrc(path, map, n, n, n, w);
}

namespace {

void write_fsc_star(const fs::path& path, int n, double pixel, const std::vector<double>& unmasked, const std::vector<double>& masked,
                    const std::vector<double>& corrected, const std::vector<double>& randomized) {
  io::StarFile star;
  io::StarBlock block{"fsc", true, {}};
  auto& t = block.table;
  const int c_i = t.add_column("rlnSpectralIndex"), c_r = t.add_column("rlnAngstromResolution"),
            c_u = t.add_column("rlnFourierShellCorrelationUnmaskedMaps"), c_m = t.add_column("rlnFourierShellCorrelationMaskedMaps"),
            c_c = t.add_column("rlnFourierShellCorrelationCorrected"),
            c_p = t.add_column("rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps");
  for (std::size_t s = 0; s < masked.size(); ++s) {
    const std::size_t r = t.add_row();
    t.set_integer(r, c_i, static_cast<std::int64_t>(s));
    t.set_number(r, c_r, s ? n * pixel / static_cast<double>(s) : 999.0, 3);
    t.set_number(r, c_u, unmasked[s]), t.set_number(r, c_m, masked[s]);
    t.set_number(r, c_c, corrected[s]), t.set_number(r, c_p, randomized[s]);
  }
  star.blocks.push_back(std::move(block));
  io::write_star(path, star);
}

void write_model_star(const fs::path& path, const FinalResult& result, double pixel, int n, const std::string& symmetry,
                      int iterations, const std::vector<std::vector<double>>& sigma2) {
  io::StarFile model;
  io::StarBlock general{"model_general", false, {}};
  auto& g = general.table;
  g.add_row();
  g.set_number(0, g.add_column("rlnCurrentResolution"), result.resolution, 4);
  g.set_number(0, g.add_column("rlnPixelSize"), pixel, 4);
  g.set_integer(0, g.add_column("rlnOriginalImageSize"), n);
  g.set_number(0, g.add_column("rlnBfactorUsedForSharpening"), result.bfactor, 2);
  g.set_text(0, g.add_column("rlnSymmetryGroup"), symmetry);
  g.set_integer(0, g.add_column("rlnCurrentIteration"), iterations);
  model.blocks.push_back(std::move(general));
  for (std::size_t gi = 0; gi < sigma2.size(); ++gi) {
    io::StarBlock noise{fmt::format("model_optics_group_{}", gi + 1), true, {}};
    auto& nt = noise.table;
    const int ci = nt.add_column("rlnSpectralIndex"), cs = nt.add_column("rlnSigma2Noise");
    for (std::size_t s = 0; s < sigma2[gi].size(); ++s) {
      const std::size_t r = nt.add_row();
      nt.set_integer(r, ci, static_cast<std::int64_t>(s)), nt.set_number(r, cs, sigma2[gi][s], 8);
    }
    model.blocks.push_back(std::move(noise));
  }
  io::write_star(path, model);
}

}  // namespace

namespace {

/// Counts of `values` in `bins` equal bins from their minimum to their maximum, as a series.
io::Series histogram(const std::string& name, const std::vector<double>& values, int bins) {
  io::Series s{name, {}, {}};
  if (values.empty()) return s;
  const auto [lo_it, hi_it] = std::minmax_element(values.begin(), values.end());
  const double lo = *lo_it, width = std::max(1e-9, (*hi_it - lo) / bins);
  std::vector<double> counts(static_cast<std::size_t>(bins), 0.0);
  for (double v : values) counts[static_cast<std::size_t>(std::clamp(static_cast<int>((v - lo) / width), 0, bins - 1))] += 1;
  for (int b = 0; b < bins; ++b) s.x.push_back(lo + (b + 0.5) * width), s.y.push_back(counts[static_cast<std::size_t>(b)]);
  return s;
}

/// localres.mrc, map_locfilt.mrc, and in the report the local resolution's histogram inside the
/// mask and its central sections.
void add_local_resolution(io::HtmlReport& report, const std::filesystem::path& dir, const FinalMaps& maps, const std::vector<float>& mask, int n,
                          double pixel) {
  write_map(dir / "localres.mrc", maps.local_resolution, n, pixel);
  if (!maps.locally_filtered.empty()) write_map(dir / "map_locfilt.mrc", maps.locally_filtered, n, pixel);
  std::vector<double> inside;
  for (std::size_t v = 0; v < mask.size(); ++v)
    if (mask[v] > 0.5f) inside.push_back(maps.local_resolution[v]);
  report.add_heading("Local resolution");
  if (!inside.empty()) {
    std::vector<double> sorted = inside;
    std::sort(sorted.begin(), sorted.end());
    report.add_paragraph(fmt::format("Inside the mask: median {:.2f} Å, 10% of voxels better than {:.2f} Å, 10% worse than {:.2f} Å (localres.mrc; "
                                     "map_locfilt.mrc is the map filtered voxel by voxel to it).",
                                     sorted[sorted.size() / 2], sorted[sorted.size() / 10], sorted[sorted.size() * 9 / 10]));
    report.add_line_chart("Local resolution inside the mask", "local resolution (Å)", "voxels", {histogram("voxels", inside, 30)});
  }
  // Sections with the mask applied, so that the solvent's (lowest) resolution does not set the contrast.
  std::vector<float> shown = maps.local_resolution;
  for (std::size_t v = 0; v < shown.size(); ++v) shown[v] = mask[v] > 0.5f ? shown[v] : 0.0f;
  report.add_image_png("Central sections of localres.mrc inside the mask (brighter: lower resolution)", io::volume_sections_png(shown, n));
}

}  // namespace

FinalResult write_refine_outputs(const fs::path& dir, const io::ParticleSet& set, const std::vector<std::size_t>& active,
                                 const std::vector<int>& half, const std::vector<em::Pose3D>& poses, const FinalMaps& maps,
                                 const std::vector<std::vector<double>>& sigma2, const std::string& symmetry,
                                 const std::vector<IterationRecord>& history, const std::vector<std::string>& skipped, std::uint64_t seed) {
  const int n = set.box();
  const double pixel = set.pixel_size();
  FinalResult result;
  write_map(dir / "half1_unfil.mrc", maps.half1, n, pixel);
  write_map(dir / "half2_unfil.mrc", maps.half2, n, pixel);
  write_map(dir / "map_unfil.mrc", maps.full, n, pixel);
  const auto mask = !maps.user_mask.empty() ? maps.user_mask : image::solvent_mask(maps.full, n, pixel);
  write_map(dir / "mask.mrc", mask, n, pixel);

  // FSC unmasked, masked, and masked corrected by phase randomisation beyond where the unmasked
  // FSC falls below 0.8 (the mask's own correlation is measured there and removed).
  const auto fsc_unmasked = image::fsc_3d(maps.half1, maps.half2, n);
  const auto fsc_masked = image::fsc_3d(image::masked(maps.half1, mask), image::masked(maps.half2, mask), n);
  int randomize_from = 1;
  while (randomize_from + 1 < static_cast<int>(fsc_unmasked.size()) && fsc_unmasked[static_cast<std::size_t>(randomize_from)] > 0.8) ++randomize_from;
  const auto r1 = image::randomize_phases_beyond(maps.half1, n, randomize_from, seed);
  const auto r2 = image::randomize_phases_beyond(maps.half2, n, randomize_from, seed + 1);
  const auto fsc_random = image::fsc_3d(image::masked(r1, mask), image::masked(r2, mask), n);
  std::vector<double> fsc_corrected = fsc_masked;
  for (std::size_t s = static_cast<std::size_t>(randomize_from) + 2; s < fsc_corrected.size(); ++s)
    fsc_corrected[s] = fsc_random[s] < 1 ? (fsc_masked[s] - fsc_random[s]) / (1 - fsc_random[s]) : 0;
  result.resolution = image::resolution_at(fsc_corrected, 0.143, n, pixel);
  const double resolution_unmasked = image::resolution_at(fsc_unmasked, 0.143, n, pixel);
  result.bfactor = image::guinier_bfactor(maps.full, n, pixel, result.resolution);
  write_map(dir / "map.mrc", image::sharpen_map(maps.full, n, pixel, fsc_corrected, result.bfactor, result.resolution), n, pixel);
  write_fsc_star(dir / "fsc.star", n, pixel, fsc_unmasked, fsc_masked, fsc_corrected, fsc_random);

  // particles.star with poses in RELION's names.
  io::StarFile out_star = set.output_star(active);
  auto& t = io::ParticleSet::particles_table(out_star);
  const int c_rot = t.add_column("rlnAngleRot"), c_tilt = t.add_column("rlnAngleTilt"), c_psi = t.add_column("rlnAnglePsi"),
            c_ox = t.add_column("rlnOriginXAngst"), c_oy = t.add_column("rlnOriginYAngst"), c_sub = t.add_column("rlnRandomSubset"),
            c_pmax = t.add_column("rlnMaxValueProbDistribution"), c_nsig = t.add_column("rlnNrOfSignificantSamples");
  std::vector<double> rots, tilts;
  for (std::size_t a = 0; a < active.size(); ++a) {
    const auto& p = poses[a];
    t.set_number(a, c_rot, p.rot, 4), t.set_number(a, c_tilt, p.tilt, 4), t.set_number(a, c_psi, p.psi, 4);
    // RELION's origin is the shift that re-centres the particle: minus its displacement.
    t.set_number(a, c_ox, -p.shift_x * pixel, 4), t.set_number(a, c_oy, -p.shift_y * pixel, 4);
    t.set_integer(a, c_sub, half[a]);
    t.set_number(a, c_pmax, p.max_probability, 5);
    t.set_integer(a, c_nsig, p.significant);
    rots.push_back(p.rot), tilts.push_back(p.tilt);
  }
  io::write_star(dir / "particles.star", out_star);
  io::write_particles_cs(dir / "particles.cs", out_star);
  const int iterations = history.empty() ? 0 : history.back().iteration;
  write_model_star(dir / "model.star", result, pixel, n, symmetry, iterations, sigma2);

  // Pictures and the report.
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
  io::HtmlReport report("emcryo " + maps.job);
  report.add_paragraph(fmt::format("{} particles, box {} px, {:.3f} Å/px, symmetry {}, {} iterations.", active.size(), n, pixel, symmetry,
                                   iterations));
  report.add_paragraph(fmt::format(
      "Resolution (gold-standard FSC 0.143, masked, phase-randomization corrected): {:.2f} Å (unmasked {:.2f} Å). Sharpening B-factor {:.0f} Å².",
      result.resolution, resolution_unmasked, result.bfactor));
  report.add_raw(plot);
  report.add_raw(orientations);
  report.add_image_png("Central sections of map.mrc (sharpened)", io::volume_sections_png(io::MrcReader(dir / "map.mrc").read_all(), n));
  if (!maps.local_resolution.empty()) add_local_resolution(report, dir, maps, mask, n, pixel);
  if (!maps.rotation_moved.empty()) {
    report.add_heading("How far poses moved from their input");
    report.add_line_chart("Rotation from the input pose", "degrees", "particles", {histogram("particles", maps.rotation_moved, 30)});
    report.add_line_chart("Shift from the input pose", "Å", "particles", {histogram("particles", maps.shift_moved, 30)});
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& h : history)
    rows.push_back({std::to_string(h.iteration), fmt::format("{:.2f}", h.resolution), fmt::format("{:.2f}", h.step), h.local ? "local" : "global",
                    fmt::format("{:.1f}", 100 * h.changed), fmt::format("{:.1f}", h.seconds),
                    fmt::format("{:.2f} ({:.0f}%)", h.regularization_seconds, h.seconds > 0 ? 100 * h.regularization_seconds / h.seconds : 0.0)});
  report.add_table({"iteration", "resolution (Å)", "angular step (°)", "search", "poses changed (%)", "seconds", "M-step regularisation s (share)"},
                   rows);
  report.add_heading("Skipped particles");
  if (skipped.empty()) report.add_paragraph("None.");
  for (const auto& s : skipped) report.add_paragraph(s);
  report.write(dir / "report.html");
  return result;
}

}  // namespace emcryo::jobs::refine_detail
