#include "emcryo/jobs/simulate.hpp"

#include <omp.h>

#include <cmath>
#include <filesystem>
#include <numbers>

#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/progress.hpp"
#include "emcryo/core/random.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/geometry/symmetry.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_align.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"

namespace emcryo::jobs {

namespace fs = std::filesystem;
using geometry::Mat3;

namespace {

Mat3 random_rotation(std::mt19937_64& rng) {
  // Uniform on SO(3) from a uniformly distributed unit quaternion.
  std::normal_distribution<double> g;
  double q[4];
  double norm = 0;
  do {
    norm = 0;
    for (double& c : q) c = g(rng), norm += c * c;
  } while (norm < 1e-12);
  norm = std::sqrt(norm);
  const double w = q[0] / norm, x = q[1] / norm, y = q[2] / norm, z = q[3] / norm;
  Mat3 r;
  r(0, 0) = 1 - 2 * (y * y + z * z), r(0, 1) = 2 * (x * y - z * w), r(0, 2) = 2 * (x * z + y * w);
  r(1, 0) = 2 * (x * y + z * w), r(1, 1) = 1 - 2 * (x * x + z * z), r(1, 2) = 2 * (y * z - x * w);
  r(2, 0) = 2 * (x * z - y * w), r(2, 1) = 2 * (y * z + x * w), r(2, 2) = 1 - 2 * (x * x + y * y);
  return r;
}

struct TruePose {
  geometry::Euler angles;
  double shift_x = 0, shift_y = 0;  // Å, displacement of the particle from the box centre
  int class_index = 0;
  int view = 0;
  image::CtfParams ctf;
};

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

SimulateSummary run_simulate(const SimulateOptions& o) {
  if (o.models.empty()) fail("simulate: give at least one --model (PDB/mmCIF or MRC map)");
  if (o.box < 16 || o.box % 2) fail("simulate: --box {} must be even and at least 16", o.box);
  if (o.pixel_size <= 0) fail("simulate: --pixel-size must be positive");
  if (o.particles < 1) fail("simulate: --particles must be at least 1");
  if (o.snr <= 0) fail("simulate: --snr must be positive");
  if (o.orientations != "uniform" && o.orientations != "views" && o.orientations != "preferred")
    fail("simulate: --orientations '{}' must be uniform, views or preferred", o.orientations);
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

  std::vector<std::vector<float>> maps;
  std::vector<em::Projector> projectors;
  std::array<double, 3> first_centre{};
  for (std::size_t k = 0; k < o.models.size(); ++k) {
    auto map = model_to_map(o.models[k], n, o.pixel_size, o.common_centre && k > 0 ? &first_centre : nullptr, k == 0 ? &first_centre : nullptr);
    map = symmetrize_map(map, n, o.symmetry);
    io::MrcWriteOptions w;
    w.pixel_size = o.pixel_size;
    io::write_mrc(out / fmt::format("truth_class{:03}.mrc", k + 1), map, n, n, n, w);
    projectors.emplace_back(map, n);
    maps.push_back(std::move(map));
  }

  // Draw every particle's truth first, serially, so the data set depends only on the seed.
  std::vector<TruePose> truth(static_cast<std::size_t>(o.particles));
  std::vector<Mat3> view_rotations;
  {
    auto rng = item_rng(o.seed, 0xfeed);
    for (int v = 0; v < o.views; ++v) view_rotations.push_back(random_rotation(rng));
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
  }

  const std::size_t pixels = static_cast<std::size_t>(n) * n;
  auto noiseless = [&](int i, std::vector<image::Complex>& spectrum, std::vector<float>& image) {
    const TruePose& t = truth[static_cast<std::size_t>(i)];
    projectors[static_cast<std::size_t>(t.class_index)].project(geometry::euler_to_matrix(t.angles),
                                                                spectrum.data(), n, n / 2.0 - 1);
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
