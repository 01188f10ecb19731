#include "emcryo/jobs/simulate.hpp"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numbers>
#include <optional>

#include <fmt/ranges.h>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/geometry/directions.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_align.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"
#include "emcryo/jobs/belt.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;
using geometry::Mat3;
using geometry::random_rotation;

namespace {

/// A part of the model that moves per particle: its own map, turned about `pivot` (px from the
/// box centre) and displaced. Body 2 of a flexible model turns about the hinge; a disordered
/// region turns about its centre, moves and changes occupancy.
/// The listed chains of a model (or, with `exclude`, all the others), on the whole model's centre.
ModelMapOptions chain_subset(const std::vector<std::string>& chains, bool exclude) {
  ModelMapOptions options;
  options.chains = chains;
  options.exclude = exclude;
  return options;
}

struct MovingPart {
  std::vector<float> map;
  geometry::Vec3 pivot;
  double sigma_degrees = 0, sigma_shift = 0, min_occupancy = 1;  // shift in px
};

/// One particle's state of a moving part.
struct PartState {
  Mat3 turn = Mat3::identity();
  double angle = 0;             // degrees
  geometry::Vec3 shift{0, 0, 0};  // px
  double occupancy = 1;
};

PartState draw_part_state(const MovingPart& part, std::mt19937_64& rng) {
  PartState st;
  std::normal_distribution<double> g(0, 1);
  std::uniform_real_distribution<double> u(0, 1);
  geometry::Vec3 axis{g(rng), g(rng), g(rng)};
  st.angle = part.sigma_degrees * g(rng);
  if (part.sigma_degrees > 0) st.turn = geometry::axis_angle(axis, st.angle);
  const geometry::Vec3 d{g(rng), g(rng), g(rng)};
  st.shift = {part.sigma_shift * d.x, part.sigma_shift * d.y, part.sigma_shift * d.z};
  st.occupancy = part.min_occupancy + (1 - part.min_occupancy) * u(rng);
  return st;
}

/// Adds the projection at rotation `a` of a part turned and moved by `st`. The moved part is
/// V'(x) = V(T^T (x - h - t) + h) = V(T^T x + d) with d = h - T^T (h + t); its projection at A is
/// the projection of V at M = A T, moved in the image by -(M d)_xy.
/// The pose of a moved part as a particle of its own: rotation M = A T and the image displacement
/// (px) added to the particle's.
std::pair<Mat3, geometry::Vec3> part_pose(const MovingPart& part, const PartState& st, const Mat3& a) {
  const Mat3 m = a * st.turn;
  const geometry::Vec3 ht{part.pivot.x + st.shift.x, part.pivot.y + st.shift.y, part.pivot.z + st.shift.z};
  const geometry::Vec3 back = geometry::transpose(st.turn) * ht;
  const geometry::Vec3 d{part.pivot.x - back.x, part.pivot.y - back.y, part.pivot.z - back.z};
  const geometry::Vec3 s = m * d;
  return {m, {-s.x, -s.y, 0}};
}

void add_part_projection(const em::Projector& projector, const MovingPart& part, const PartState& st, const Mat3& a, int n,
                         std::vector<image::Complex>& scratch, std::vector<image::Complex>& spectrum) {
  const auto [m, moved] = part_pose(part, st, a);
  projector.project(m, scratch.data(), n, n / 2.0 - 1);
  image::shift_half_grid_2d(scratch.data(), n, moved.x, moved.y);
  for (std::size_t j = 0; j < spectrum.size(); ++j) spectrum[j] += scratch[j] * static_cast<float>(st.occupancy);
}

/// Centre of mass of a map, px from the box centre.
geometry::Vec3 centre_of_mass(const std::vector<float>& map, int n) {
  double sx = 0, sy = 0, sz = 0, total = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double v = std::max(0.0f, map[(static_cast<std::size_t>(z) * n + y) * n + x]);
        sx += v * x, sy += v * y, sz += v * z, total += v;
      }
  if (total <= 0) return {0, 0, 0};
  return {sx / total - n / 2, sy / total - n / 2, sz / total - n / 2};
}

struct TruePose {
  geometry::Euler angles;
  PartState body2, disorder;
  BeltState belt;
  double shift_x = 0, shift_y = 0;  // Å, displacement of the particle from the box centre
  int class_index = 0;
  int view = 0;
  image::CtfParams ctf;
};

/// The belt of the truth: the mean over (up to) 500 particles' belts, and its mask.
template <class Write>
void write_mean_belt(const Belt& belt, const std::vector<TruePose>& truth, int n, Write&& write, double pixel_size) {
  std::vector<float> mean(static_cast<std::size_t>(n) * n * n, 0.0f);
  const std::size_t count = std::min<std::size_t>(truth.size(), 500);
  for (std::size_t i = 0; i < count; ++i) add_belt_density(belt, belt_blobs(belt, truth[i].belt), truth[i].belt.density, n, mean);
  for (auto& v : mean) v /= static_cast<float>(count);
  write("truth_belt.mrc", mean);
  write("truth_belt_mask.mrc", image::solvent_mask(mean, n, pixel_size));
}

}  // namespace

std::vector<float> symmetrize_map(const std::vector<float>& map, int n, const std::string& symmetry) {
  const auto group = geometry::make_symmetry_group(symmetry);
  if (group.operators.size() <= 1) return map;
  std::vector<float> out(map.size(), 0.0f);
  const double c = n / 2;
  for (const Mat3& r : group.operators) {
#pragma omp parallel for
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x) {
          const geometry::Vec3 p = r * geometry::Vec3{x - c, y - c, z - c};
          out[(static_cast<std::size_t>(z) * n + y) * n + x] +=
              static_cast<float>(image::sample_trilinear(map, n, p.x + c, p.y + c, p.z + c));
        }
  }
  const float inv = 1.0f / static_cast<float>(group.operators.size());
  for (auto& v : out) v *= inv;
  return out;
}

namespace {

/// Adds the truth columns `names` (or reuses them) and fills them row by row with values(row),
/// one value per name, 4 decimals.
template <std::size_t N, class Values>
void add_truth_columns(io::StarTable& table, const std::array<const char*, N>& names, int particles, Values values) {
  std::array<int, N> columns{};
  for (std::size_t c = 0; c < N; ++c) columns[c] = table.add_column(names[c]);
  for (int i = 0; i < particles; ++i) {
    const auto row = static_cast<std::size_t>(i);
    const std::array<double, N> v = values(row);
    for (std::size_t c = 0; c < N; ++c) table.set_number(row, columns[c], v[c], 4);
  }
}

/// How different the two most alike views look: over pairs of directions, the smallest squared
/// difference of their CTF-free projections (to n/6 px, 1/3 of Nyquist), after the best in-plane
/// rotation (5 degree steps), relative to the mean power of the two.
double most_alike_views_difference(const em::Projector& projector, const std::vector<geometry::Vec3>& directions, int n) {
  const int m = n / 2, angles = 72;
  const std::size_t size = image::half_size(m, m), views = directions.size();
  std::vector<std::vector<image::Complex>> spectra(views * angles, std::vector<image::Complex>(size));
#pragma omp parallel for schedule(dynamic)
  for (std::size_t j = 0; j < spectra.size(); ++j) {
    auto e = geometry::direction_to_euler(directions[j / angles]);
    e.psi = 360.0 * static_cast<double>(j % angles) / angles;
    projector.project(geometry::euler_to_matrix(e), spectra[j].data(), m, n / 6.0);
  }
  const auto power = [&](std::size_t j) {
    double s = 0;
    for (const auto& c : spectra[j]) s += std::norm(c);
    return s;
  };
  double smallest = std::numeric_limits<double>::infinity();
#pragma omp parallel for schedule(dynamic) reduction(min : smallest)
  for (std::size_t a = 0; a < views; ++a)
    for (std::size_t b = a + 1; b < views; ++b) {
      const auto& first = spectra[a * angles];
      const double mean_power = 0.5 * (power(a * angles) + power(b * angles));
      for (std::size_t r = 0; r < static_cast<std::size_t>(angles); ++r) {
        const auto& second = spectra[b * angles + r];
        double d = 0;
        for (std::size_t f = 0; f < size; ++f) d += std::norm(first[f] - second[f]);
        smallest = std::min(smallest, d / std::max(mean_power, 1e-30));
      }
    }
  return smallest;
}

}  // namespace

SimulateSummary run_simulate(const SimulateOptions& o) {
  if (o.models.empty()) fail("simulate: give at least one --model (PDB/mmCIF or MRC map)");
  if (o.box < 16 || o.box % 2) fail("simulate: --box {} must be even and at least 16", o.box);
  if (o.pixel_size <= 0) fail("simulate: --pixel-size must be positive");
  if (o.particles < 1) fail("simulate: --particles must be at least 1");
  if (o.snr <= 0) fail("simulate: --snr must be positive");
  if (o.orientations != "uniform" && o.orientations != "views" && o.orientations != "preferred")
    fail("simulate: --orientations '{}' must be uniform, views or preferred", o.orientations);
  if (o.orientations == "views" && o.views < 1) fail("simulate: --views must be at least 1");
  if (o.defocus_min <= 0 || o.defocus_max < o.defocus_min)
    fail("simulate: defocus range {}..{} Å is invalid", o.defocus_min, o.defocus_max);
  std::vector<double> fractions = o.class_fractions;
  if (fractions.empty()) fractions.assign(o.models.size(), 1.0 / static_cast<double>(o.models.size()));
  if (fractions.size() != o.models.size())
    fail("simulate: {} class fractions for {} models", fractions.size(), o.models.size());
  double fraction_sum = 0;
  for (double f : fractions) {
    if (f < 0) fail("simulate: class fractions must not be negative");
    fraction_sum += f;
  }
  if (fraction_sum <= 0) fail("simulate: class fractions sum to zero");

  fs::create_directories(o.out_dir);
  const int n = o.box;
  const fs::path out(o.out_dir);

  const bool flexible = !o.body2_chains.empty(), disordered = !o.disorder_chains.empty();
  if ((flexible || disordered) && o.models.size() != 1)
    fail("simulate: --body2-chains and --disorder-chains take one --model (an atomic model split by chains)");
  if ((flexible || disordered) && o.symmetry != "C1") fail("simulate: moving parts need --sym C1");
  if (!o.hinge.empty() && o.hinge.size() != 3) fail("simulate: --hinge takes x,y,z in Å (3 numbers, not {})", o.hinge.size());
  if (o.flex_sigma < 0 || o.disorder_sigma < 0 || o.disorder_shift < 0) fail("simulate: --flex-sigma, --disorder-sigma and --disorder-shift must not be negative");
  if (o.disorder_min_occupancy < 0 || o.disorder_min_occupancy > 1) fail("simulate: --disorder-min-occupancy must lie in [0, 1]");
  for (const auto& c : o.body2_chains)
    if (std::find(o.disorder_chains.begin(), o.disorder_chains.end(), c) != o.disorder_chains.end())
      fail("simulate: chain '{}' is in both --body2-chains and --disorder-chains", excerpt(c));
  io::MrcWriteOptions map_options;
  map_options.pixel_size = o.pixel_size;
  const auto write_truth = [&](const std::string& name, const std::vector<float>& map) { io::write_mrc(out / name, map, n, n, n, map_options); };

  std::vector<std::vector<float>> maps;
  std::vector<em::Projector> projectors;
  std::array<double, 3> first_centre{};
  for (std::size_t k = 0; k < o.models.size(); ++k) {
    auto map = model_to_map(o.models[k], n, o.pixel_size, {.chains = {}, .exclude = false, .centre = o.common_centre && k > 0 ? &first_centre : nullptr, .centre_used = k == 0 ? &first_centre : nullptr});
    map = symmetrize_map(map, n, o.symmetry);
    write_truth(fmt::format("truth_class{:03}.mrc", k + 1), map);
    if (!flexible && !disordered) projectors.emplace_back(map, n);
    maps.push_back(std::move(map));
  }
  // Moving parts: the static rest of the model is projected as class 1, each part on its own.
  std::vector<MovingPart> parts;  // [0] body 2 if flexible, then the disordered region
  std::vector<em::Projector> part_projectors;
  if (flexible || disordered) {
    std::vector<std::string> moving = o.body2_chains;
    moving.insert(moving.end(), o.disorder_chains.begin(), o.disorder_chains.end());
    const auto rest = model_to_map(o.models[0], n, o.pixel_size, chain_subset(moving, true));
    projectors.emplace_back(rest, n);
    if (flexible) {
      MovingPart body;
      body.map = model_to_map(o.models[0], n, o.pixel_size, chain_subset(o.body2_chains, false));
      const auto body1 = model_to_map(o.models[0], n, o.pixel_size, chain_subset(o.body2_chains, true));
      const auto c1 = centre_of_mass(body1, n), c2 = centre_of_mass(body.map, n);
      body.pivot = o.hinge.empty() ? geometry::Vec3{(c1.x + c2.x) / 2, (c1.y + c2.y) / 2, (c1.z + c2.z) / 2}
                                   : geometry::Vec3{o.hinge[0] / o.pixel_size, o.hinge[1] / o.pixel_size, o.hinge[2] / o.pixel_size};
      body.sigma_degrees = o.flex_sigma;
      write_truth("truth_body1.mrc", body1);
      write_truth("truth_body2.mrc", body.map);
      write_truth("truth_body2_mask.mrc", image::solvent_mask(body.map, n, o.pixel_size));
      log::info("simulate: body 2 (chains {}) turns about the hinge at ({:.1f}, {:.1f}, {:.1f}) Å by {}° (sd)", fmt::join(o.body2_chains, ","),
                body.pivot.x * o.pixel_size, body.pivot.y * o.pixel_size, body.pivot.z * o.pixel_size, o.flex_sigma);
      parts.push_back(std::move(body));
    }
    if (disordered) {
      MovingPart region;
      region.map = model_to_map(o.models[0], n, o.pixel_size, chain_subset(o.disorder_chains, false));
      region.pivot = centre_of_mass(region.map, n);
      region.sigma_degrees = o.disorder_sigma;
      region.sigma_shift = o.disorder_shift / o.pixel_size;
      region.min_occupancy = o.disorder_min_occupancy;
      const auto ordered = model_to_map(o.models[0], n, o.pixel_size, chain_subset(o.disorder_chains, true));
      write_truth("truth_ordered.mrc", ordered);
      write_truth("truth_disordered.mrc", region.map);
      write_truth("truth_ordered_mask.mrc", image::solvent_mask(ordered, n, o.pixel_size));
      write_truth("truth_disordered_mask.mrc", image::solvent_mask(region.map, n, o.pixel_size));
      parts.push_back(std::move(region));
    }
    for (const auto& p : parts) part_projectors.emplace_back(p.map, n);
  }
  // The belt wraps the first model (without its disordered chains: the ordered part is what it hides).
  std::optional<Belt> belt;
  if (o.belt.enabled) {
    const auto ordered = disordered ? model_to_map(o.models[0], n, o.pixel_size, chain_subset(o.disorder_chains, true)) : maps[0];
    belt = make_belt(o.belt, ordered, n, o.pixel_size);
    if (!disordered) {
      write_truth("truth_ordered.mrc", ordered);
      write_truth("truth_ordered_mask.mrc", image::solvent_mask(ordered, n, o.pixel_size));
    }
  }

  // Draw every particle's truth first, serially, so the data set depends only on the seed.
  std::vector<TruePose> truth(static_cast<std::size_t>(o.particles));
  std::vector<Mat3> view_rotations;
  if (o.orientations == "views") {
    // Distinct views: directions as far apart as they can be (independent random draws put two of
    // 12 views 7 degrees apart on seed 7, inseparable at SNR 0.05), and of several turns of that
    // set, the one whose two most alike projections differ most (an angle alone does not make
    // views look different: 1TII's B pentamer is nearly 5-fold symmetric).
    const int turns = o.views <= 30 ? 16 : 4;
    std::vector<geometry::Vec3> directions;
    double best = -1;
    for (int c = 0; c < turns; ++c) {
      auto candidate = geometry::spread_directions(o.views, splitmix64(o.seed + static_cast<std::uint64_t>(c)));
      const double difference = most_alike_views_difference(projectors.front(), candidate, n);
      if (difference > best) best = difference, directions = std::move(candidate);
    }
    for (const auto& d : directions) view_rotations.push_back(geometry::euler_to_matrix(geometry::direction_to_euler(d)));
    double closest = 180;
    for (std::size_t a = 0; a < directions.size(); ++a)
      for (std::size_t b = a + 1; b < directions.size(); ++b) closest = std::min(closest, geometry::angle_between(directions[a], directions[b]));
    if (directions.size() > 1)
      log::info("simulate: {} views, the closest two {:.1f}° apart; the two most alike projections differ by {:.0f}% of their power",
                directions.size(), closest, 100 * best);
  }
  for (int i = 0; i < o.particles; ++i) {
    auto rng = item_rng(o.seed, static_cast<std::uint64_t>(i));
    std::uniform_real_distribution<double> u(0, 1);
    TruePose& t = truth[static_cast<std::size_t>(i)];
    double pick = u(rng) * fraction_sum;
    t.class_index = 0;
    while (t.class_index + 1 < static_cast<int>(fractions.size()) && pick >= fractions[static_cast<std::size_t>(t.class_index)])
      pick -= fractions[static_cast<std::size_t>(t.class_index)], ++t.class_index;
    Mat3 r;
    if (o.orientations == "views") {
      t.view = static_cast<int>(u(rng) * o.views) % o.views;
      auto e = geometry::matrix_to_euler(view_rotations[static_cast<std::size_t>(t.view)]);
      e.psi = 360 * u(rng) - 180;  // each view appears at a random in-plane angle
      r = geometry::euler_to_matrix(e);
    } else if (o.orientations == "preferred" && u(rng) < o.preferred_fraction) {
      std::normal_distribution<double> g(0, o.preferred_spread);
      r = geometry::euler_to_matrix({360 * u(rng), std::abs(g(rng)), 360 * u(rng)});
    } else {
      r = random_rotation(rng);
    }
    t.angles = geometry::matrix_to_euler(r);
    if (flexible) t.body2 = draw_part_state(parts.front(), rng);
    if (disordered) t.disorder = draw_part_state(parts.back(), rng);
    const double radius = o.max_shift * std::sqrt(u(rng)), phi = 2 * std::numbers::pi * u(rng);
    t.shift_x = radius * std::cos(phi);
    t.shift_y = radius * std::sin(phi);
    const double defocus = o.defocus_min + (o.defocus_max - o.defocus_min) * u(rng);
    const double astig = o.astigmatism * u(rng);
    t.ctf.defocus_u = defocus + astig / 2;
    t.ctf.defocus_v = defocus - astig / 2;
    t.ctf.defocus_angle = 180 * u(rng);
    t.ctf.voltage = o.voltage;
    t.ctf.cs = o.cs;
    t.ctf.amplitude_contrast = o.amplitude_contrast;
    t.ctf.bfactor = o.bfactor;
    // The belt from its own stream: the same seed gives the same poses with or without a belt.
    if (belt) {
      auto belt_rng = item_rng(o.seed ^ 0xbe17be17ULL, static_cast<std::uint64_t>(i));
      t.belt = draw_belt_state(*belt, belt_rng);
    }
  }
  if (belt) write_mean_belt(*belt, truth, n, [&](const std::string& name, const std::vector<float>& map) { write_truth(name, map); }, o.pixel_size);

  const std::size_t pixels = static_cast<std::size_t>(n) * n;
  auto noiseless = [&](int i, std::vector<image::Complex>& spectrum, std::vector<float>& image) {
    const TruePose& t = truth[static_cast<std::size_t>(i)];
    const Mat3 a = geometry::euler_to_matrix(t.angles);
    projectors[static_cast<std::size_t>(t.class_index)].project(a, spectrum.data(), n, n / 2.0 - 1);
    if (!parts.empty()) {
      std::vector<image::Complex> scratch(spectrum.size());
      if (flexible) add_part_projection(part_projectors.front(), parts.front(), t.body2, a, n, scratch, spectrum);
      if (disordered) add_part_projection(part_projectors.back(), parts.back(), t.disorder, a, n, scratch, spectrum);
    }
    if (belt) {
      // Blobs project to 2D Gaussians: drawn in real space, added to the spectrum before the CTF.
      std::fill(image.begin(), image.end(), 0.0f);
      add_belt_projection(*belt, belt_blobs(*belt, t.belt), t.belt.density, a, n, image.data());
      std::vector<image::Complex> belt_spectrum(spectrum.size());
      image::fft_forward_2d(image.data(), belt_spectrum.data(), n, n);
      for (std::size_t j = 0; j < spectrum.size(); ++j) spectrum[j] += belt_spectrum[j];
    }
    if (!o.no_ctf) {
      const auto ctf = image::ctf_half_grid(t.ctf, n, o.pixel_size);
      for (std::size_t j = 0; j < spectrum.size(); ++j) spectrum[j] *= ctf[j];
    }
    image::shift_half_grid_2d(spectrum.data(), n, t.shift_x / o.pixel_size, t.shift_y / o.pixel_size);
    image::fft_inverse_2d(spectrum.data(), image.data(), n, n);
  };

  // Noise level from the mean signal variance of (up to) 200 particles.
  double signal_variance = 0;
  const int probe = std::min(o.particles, 200);
  {
    std::vector<image::Complex> spectrum(image::half_size(n, n));
    std::vector<float> img(pixels);
    for (int i = 0; i < probe; ++i) {
      noiseless(i, spectrum, img);
      double mean, sd;
      image::mean_stddev(img.data(), pixels, mean, sd);
      signal_variance += sd * sd;
    }
    signal_variance /= probe;
  }
  if (signal_variance <= 0) fail("simulate: the model projects to an empty image (is it inside the box?)");
  const double noise_sigma = std::sqrt(signal_variance / o.snr);
  log::info("simulate: {} particles, box {} px, {:.3f} Å/px, SNR {}, {} class(es)", o.particles, n, o.pixel_size,
            o.snr, o.models.size());

  io::MrcWriteOptions stack_options;
  stack_options.pixel_size = o.pixel_size;
  stack_options.is_stack = true;
  stack_options.float16 = o.float16;
  io::MrcStackWriter stack(out / "particles.mrcs", n, n, stack_options);
  Progress progress("simulate", o.particles);
  constexpr int batch = 256;
  std::vector<float> images(static_cast<std::size_t>(batch) * pixels);
  for (int first = 0; first < o.particles; first += batch) {
    const int count = std::min(batch, o.particles - first);
#pragma omp parallel
    {
      std::vector<image::Complex> spectrum(image::half_size(n, n));
      std::vector<float> img(pixels);
#pragma omp for schedule(dynamic, 8)
      for (int b = 0; b < count; ++b) {
        const int i = first + b;
        noiseless(i, spectrum, img);
        auto rng = item_rng(o.seed ^ 0x5eed5eedULL, static_cast<std::uint64_t>(i));
        std::normal_distribution<float> noise(0.0f, 1.0f);
        float* dst = images.data() + static_cast<std::size_t>(b) * pixels;
        for (std::size_t p = 0; p < pixels; ++p) dst[p] = static_cast<float>(img[p] / noise_sigma) + noise(rng);
      }
    }
    for (int b = 0; b < count; ++b) stack.append(images.data() + static_cast<std::size_t>(b) * pixels);
    progress.advance(count);
  }
  stack.close();
  progress.finish();

  // particles.star (what a user would have: poses, CTF) and truth.star (plus class and view).
  io::StarFile star;
  io::StarBlock optics;
  optics.name = "optics";
  optics.is_loop = true;
  {
    auto& t = optics.table;
    t.add_row();
    t.set_integer(0, t.add_column("rlnOpticsGroup"), 1);
    t.set_text(0, t.add_column("rlnOpticsGroupName"), "opticsGroup1");
    t.set_number(0, t.add_column("rlnAmplitudeContrast"), o.amplitude_contrast);
    t.set_number(0, t.add_column("rlnSphericalAberration"), o.cs);
    t.set_number(0, t.add_column("rlnVoltage"), o.voltage);
    t.set_number(0, t.add_column("rlnImagePixelSize"), o.pixel_size);
    t.set_integer(0, t.add_column("rlnImageSize"), n);
    t.set_integer(0, t.add_column("rlnImageDimensionality"), 2);
  }
  star.blocks.push_back(optics);
  io::StarBlock particles;
  particles.name = "particles";
  particles.is_loop = true;
  auto& t = particles.table;
  const int c_name = t.add_column("rlnImageName"), c_mic = t.add_column("rlnMicrographName");
  int c_du = -1, c_dv = -1, c_da = -1, c_bf = -1;
  if (!o.no_ctf) {
    c_du = t.add_column("rlnDefocusU");
    c_dv = t.add_column("rlnDefocusV");
    c_da = t.add_column("rlnDefocusAngle");
    c_bf = t.add_column("rlnCtfBfactor");
  }
  const int c_group = t.add_column("rlnOpticsGroup");
  const int c_rot = t.add_column("rlnAngleRot"), c_tilt = t.add_column("rlnAngleTilt"),
            c_psi = t.add_column("rlnAnglePsi");
  const int c_ox = t.add_column("rlnOriginXAngst"), c_oy = t.add_column("rlnOriginYAngst");
  for (int i = 0; i < o.particles; ++i) {
    const TruePose& p = truth[static_cast<std::size_t>(i)];
    const std::size_t r = t.add_row();
    t.set_text(r, c_name, fmt::format("{:06}@particles.mrcs", i + 1));
    t.set_text(r, c_mic, fmt::format("simulated/mic{:04}.mrc", i / 100 + 1));
    if (!o.no_ctf) {
      t.set_number(r, c_du, p.ctf.defocus_u, 2);
      t.set_number(r, c_dv, p.ctf.defocus_v, 2);
      t.set_number(r, c_da, p.ctf.defocus_angle, 3);
      t.set_number(r, c_bf, p.ctf.bfactor, 2);
    }
    t.set_integer(r, c_group, 1);
    t.set_number(r, c_rot, p.angles.rot, 4);
    t.set_number(r, c_tilt, p.angles.tilt, 4);
    t.set_number(r, c_psi, p.angles.psi, 4);
    // RELION's origin is the shift that re-centres the particle: minus its displacement.
    t.set_number(r, c_ox, -p.shift_x, 4);
    t.set_number(r, c_oy, -p.shift_y, 4);
  }
  star.blocks.push_back(particles);
  io::write_star(out / "particles.star", star);

  auto& truth_table = star.blocks.back().table;
  const int c_class = truth_table.add_column("rlnClassNumber");
  const int c_view = truth_table.add_column("emcryoTrueView");
  if (flexible) {
    const int c_rot2 = truth_table.add_column("emcryoBody2Rot"), c_tilt2 = truth_table.add_column("emcryoBody2Tilt"),
              c_psi2 = truth_table.add_column("emcryoBody2Psi"), c_angle2 = truth_table.add_column("emcryoBody2Angle");
    // Body 2's own pose, as a particle of it alone would have (RELION's names with a prefix).
    const int c_brot = truth_table.add_column("emcryoBody2AngleRot"), c_btilt = truth_table.add_column("emcryoBody2AngleTilt"),
              c_bpsi = truth_table.add_column("emcryoBody2AnglePsi"), c_box = truth_table.add_column("emcryoBody2OriginXAngst"),
              c_boy = truth_table.add_column("emcryoBody2OriginYAngst");
    for (int i = 0; i < o.particles; ++i) {
      const TruePose& tp = truth[static_cast<std::size_t>(i)];
      const auto& b = tp.body2;
      const auto e = geometry::matrix_to_euler(b.turn);
      const auto r = static_cast<std::size_t>(i);
      truth_table.set_number(r, c_rot2, e.rot, 4), truth_table.set_number(r, c_tilt2, e.tilt, 4);
      truth_table.set_number(r, c_psi2, e.psi, 4), truth_table.set_number(r, c_angle2, std::abs(b.angle), 4);
      const auto [m, moved] = part_pose(parts.front(), b, geometry::euler_to_matrix(tp.angles));
      const auto pose = geometry::matrix_to_euler(m);
      truth_table.set_number(r, c_brot, pose.rot, 4), truth_table.set_number(r, c_btilt, pose.tilt, 4);
      truth_table.set_number(r, c_bpsi, pose.psi, 4);
      truth_table.set_number(r, c_box, -(tp.shift_x + moved.x * o.pixel_size), 4);
      truth_table.set_number(r, c_boy, -(tp.shift_y + moved.y * o.pixel_size), 4);
    }
  }
  if (disordered)
    add_truth_columns<5>(truth_table,
                         {"emcryoDisorderAngle", "emcryoDisorderShiftX", "emcryoDisorderShiftY", "emcryoDisorderShiftZ", "emcryoDisorderOccupancy"},
                         o.particles, [&](std::size_t i) {
                           const auto& d = truth[i].disorder;
                           return std::array<double, 5>{std::abs(d.angle), d.shift.x * o.pixel_size, d.shift.y * o.pixel_size,
                                                        d.shift.z * o.pixel_size, d.occupancy};
                         });
  if (belt)
    add_truth_columns<6>(truth_table,
                         {"emcryoBeltTilt", "emcryoBeltShiftX", "emcryoBeltShiftY", "emcryoBeltShiftZ", "emcryoBeltSquash", "emcryoBeltDensity"},
                         o.particles, [&](std::size_t i) {
                           const auto& b = truth[i].belt;
                           return std::array<double, 6>{std::abs(b.tilt), b.shift.x * o.pixel_size, b.shift.y * o.pixel_size,
                                                        b.shift.z * o.pixel_size, b.squash, b.density};
                         });
  SimulateSummary summary;
  summary.class_counts.assign(o.models.size(), 0);
  for (int i = 0; i < o.particles; ++i) {
    truth_table.set_integer(static_cast<std::size_t>(i), c_class, truth[static_cast<std::size_t>(i)].class_index + 1);
    truth_table.set_integer(static_cast<std::size_t>(i), c_view, truth[static_cast<std::size_t>(i)].view + 1);
    summary.class_counts[static_cast<std::size_t>(truth[static_cast<std::size_t>(i)].class_index)]++;
  }
  io::write_star(out / "truth.star", star);

  summary.particles = o.particles;
  summary.box = n;
  summary.pixel_size = o.pixel_size;
  summary.noise_sigma = noise_sigma;
  log::info("simulate: wrote {}/particles.mrcs, particles.star, truth.star and {} true map(s)", o.out_dir,
            o.models.size());
  return summary;
}

}  // namespace emcryo::jobs
