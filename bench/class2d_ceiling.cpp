// The best 2D classification a simulated views set allows: every particle scored by class2d's own
// E-step against the *true* projections of all views (CTF-free, on the particles' scale), hard
// classes, pose marginalised over the usual in-plane and shift grid. Views whose projections the
// noise confuses lower this ceiling; no classifier that only sees the images does better on average.
//
// Usage: class2d_ceiling SIM_DIR OUT.star [MASK_DIAMETER_A=120] [PSI_STEP=5] [OFFSET_RANGE=5] [OFFSET_STEP=1] [exhaustive]
//   exhaustive: every hypothesis at the full limit (no coarse-to-fine search).
//   SIM_DIR: an `emcryo simulate --orientations views` folder (truth.star, truth_class001.mrc).
//   OUT.star: the particles with rlnClassNumber = the view they score best under (emcryoTrueView's
//   numbering, 1..V); score it with bench/eval_class2d.py --truth SIM_DIR/truth.star.
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "emcryo/core/error.hpp"
#include "emcryo/em/model2d.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/gpu/backend.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/io/star.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

/// The projection at these angles (psi included), full resolution, as a half-grid spectrum.
std::vector<image::Complex> projection(const em::Projector& projector, double rot, double tilt, double psi, int n) {
  std::vector<image::Complex> spectrum(image::half_size(n, n));
  projector.project(geometry::euler_to_matrix({rot, tilt, psi}), spectrum.data(), n, n / 2.0 - 1);
  return spectrum;
}

/// Least-squares scale of the projections in the particles (the simulator divides by its noise
/// sigma): sum Re(X conj(T)) / sum |T|^2 over particles at their true poses, T = CTF x shifted projection.
double particle_scale(const io::ParticleSet& set, const em::Projector& projector, int count) {
  const int n = set.box();
  const double pixel = set.pixel_size();
  double cross = 0, power = 0;
  std::vector<image::Complex> x(image::half_size(n, n));
  for (int i = 0; i < count && static_cast<std::size_t>(i) < set.size(); ++i) {
    const auto pose = set.pose(static_cast<std::size_t>(i));
    auto t = projection(projector, pose.rot, pose.tilt, pose.psi, n);
    const auto ctf = image::ctf_half_grid(set.ctf(static_cast<std::size_t>(i)), n, pixel);
    for (std::size_t j = 0; j < t.size(); ++j) t[j] *= ctf[j];
    // RELION's origin re-centres the particle: the particle is displaced by -origin.
    image::shift_half_grid_2d(t.data(), n, -pose.origin_x / pixel, -pose.origin_y / pixel);
    const auto image = set.read_image(static_cast<std::size_t>(i));
    image::fft_forward_2d(image.data(), x.data(), n, n);
    for (std::size_t j = 0; j < t.size(); ++j) cross += (x[j] * std::conj(t[j])).real(), power += std::norm(t[j]);
  }
  if (power <= 0) fail("class2d_ceiling: the projections are empty");
  return cross / power;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SIM_DIR OUT.star [MASK_DIAMETER_A] [PSI_STEP] [OFFSET_RANGE] [OFFSET_STEP] [exhaustive]\n", argv[0]);
    return 2;
  }
  try {
    const fs::path dir = argv[1];
    const double mask_diameter = argc > 3 ? std::stod(argv[3]) : 120;
    const double psi_step = argc > 4 ? std::stod(argv[4]) : 5, range = argc > 5 ? std::stod(argv[5]) : 5,
                 step = argc > 6 ? std::stod(argv[6]) : 1;
    const auto set = io::ParticleSet::read(dir / "truth.star");
    const int n = set.box();
    const double pixel = set.pixel_size();
    const auto& table = set.table();
    const auto views = table.numbers(table.require("emcryoTrueView"));
    std::map<int, io::Pose> view_pose;  // any member's rot and tilt: a view's particles differ only in psi
    for (std::size_t i = 0; i < views.size(); ++i) view_pose.emplace(static_cast<int>(views[i]), set.pose(i));
    if (view_pose.empty() || view_pose.begin()->first != 1 || view_pose.rbegin()->first != static_cast<int>(view_pose.size()))
      fail("{}: emcryoTrueView should number the views 1..V", (dir / "truth.star").string());

    io::MrcReader map_file(dir / "truth_class001.mrc");
    const em::Projector projector(map_file.read_all(), n);
    const double scale = particle_scale(set, projector, 400);
    const double mask_radius = mask_diameter / pixel / 2;
    const auto mask = image::soft_round_mask(n, 2, std::max(1.0, mask_radius - 3), 5);

    em::Class2DModel model;
    model.box = n;
    for (const auto& [view, pose] : view_pose) {
      auto spectrum = projection(projector, pose.rot, pose.tilt, 0, n);
      for (auto& c : spectrum) c *= static_cast<float>(scale);
      auto image = image::fft_inverse_2d(spectrum, n);
      image::apply_mask(image.data(), mask);
      model.classes.push_back(std::move(image));
    }
    const std::size_t K = model.classes.size();
    model.priors.assign(K, 1.0 / static_cast<double>(K));
    std::vector<std::size_t> active(set.size());
    for (std::size_t i = 0; i < active.size(); ++i) active[i] = i;
    model.sigma2 = em::estimate_initial_sigma2(set, active, mask);
    model.radius = n / 2.0 - 1;

    em::Class2DSettings settings;
    settings.hard_classes = true;
    settings.coarse_to_fine = !(argc > 7 && std::string(argv[7]) == "exhaustive");
    const auto backend = gpu::make_backend();
    std::vector<em::ParticleResult> results(active.size());
    em::Class2DStats stats;
    // Twice: the first pass's noise estimate holds the signal too (from the images); the second
    // uses the residuals at the first pass's best hypotheses, as class2d's later iterations do.
    for (int pass = 0; pass < 2; ++pass)
      model.sigma2 = em::class2d_iteration(set, active, model, em::make_class2d_search(psi_step, range, step), mask, settings, *backend,
                                           results, stats)
                         .sigma2;

    io::StarFile star = set.output_star(active);
    auto& t = io::ParticleSet::particles_table(star);
    const int c_class = t.add_column("rlnClassNumber");
    std::size_t right = 0;
    for (std::size_t a = 0; a < active.size(); ++a) {
      t.set_integer(a, c_class, results[a].best_class + 1);
      right += results[a].best_class + 1 == static_cast<int>(views[a]);
    }
    io::write_star(argv[2], star);
    std::printf("%zu views, scale %.4g, %zu of %zu particles (%.2f%%) score best under their own view\n", K, scale, right,
                active.size(), 100.0 * static_cast<double>(right) / static_cast<double>(active.size()));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "class2d_ceiling: %s\n", e.what());
    return 1;
  }
  return 0;
}
