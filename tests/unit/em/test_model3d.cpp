// The 3D configuration on a small synthetic problem: coarse-to-fine global search against the
// exhaustive one, and back-projection sums that do not depend on the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "emcryo/em/model3d.hpp"
#include "emcryo/image/fourier.hpp"
#include "support/many_backend.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

using namespace emcryo;

namespace {

constexpr int kBox = 32, kParticles = 120;

class ThreeDEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    // A smooth, asymmetric volume: low-passed noise inside a sphere.
    auto noise = test::random_values(static_cast<std::size_t>(kBox) * kBox * kBox, 5);
    volume_ = image::lowpass_volume(noise, kBox, 1.0, 5.0);
    const auto sphere = image::soft_round_mask(kBox, 3, kBox * 0.35, 3);
    image::apply_mask(volume_.data(), sphere);
    projector_ = std::make_unique<em::Projector>(volume_, kBox);
    std::mt19937 rng(3);
    std::uniform_real_distribution<double> u(0, 1);
    std::normal_distribution<float> normal(0, 1);
    std::vector<float> stack;
    std::vector<em::Complex> slice(image::half_size(kBox, kBox));
    for (int i = 0; i < kParticles; ++i) {
      const geometry::Euler e{360 * u(rng), std::acos(2 * u(rng) - 1) * 180 / M_PI, 360 * u(rng) - 180};
      truth_.push_back(e);
      projector_->project(geometry::euler_to_matrix(e), slice.data(), kBox, kBox / 2.0 - 1);
      auto img = image::fft_inverse_2d(slice, kBox);
      double mean, sd;
      image::mean_stddev(img.data(), img.size(), mean, sd);
      for (auto& v : img) v += static_cast<float>(sd / std::sqrt(0.1)) * normal(rng);
      stack.insert(stack.end(), img.begin(), img.end());
    }
    test::write_mrc_stack(dir_.path() / "p.mrcs", stack, kBox, kBox, kParticles, 4.0);
    std::string star =
        "# version 30001\ndata_optics\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n_rlnImagePixelSize #3\n"
        "_rlnImageSize #4\n_rlnImageDimensionality #5\n1 g1 4.0 32 2\n\n# version 30001\ndata_particles\nloop_\n"
        "_rlnImageName #1\n_rlnOpticsGroup #2\n";
    for (int i = 0; i < kParticles; ++i) star += fmt::format("{:06}@p.mrcs 1\n", i + 1);
    test::write_text(dir_.path() / "p.star", star);
    set_ = std::make_unique<io::ParticleSet>(io::ParticleSet::read(dir_.path() / "p.star"));
    for (int i = 0; i < kParticles; ++i) images_.push_back(static_cast<std::size_t>(i));
    mask_ = image::soft_round_mask(kBox, 2, kBox * 0.42, 3);
    sigma2_ = em::estimate_initial_sigma2(*set_, images_, mask_);
  }

  struct Run {
    std::vector<em::Pose3D> poses;
    std::vector<float> map;
    double flops = 0;
    em::NoiseSums noise;
  };
  /// One iteration: a global search, or (start given) a local one around `start` with relative shifts.
  Run refine_once(bool coarse_to_fine, em::ScoringBackend* given = nullptr, const std::vector<em::Pose3D>* start = nullptr,
                  int noise_particles = 20000, double step = 15, bool share_children = true) {
    em::PoseSearch search;
    search.local = start != nullptr;
    search.relative_shifts = start != nullptr;
    search.step = step;
    search.grid = em::orientation_grid(step, "C1");
    search.shifts = em::make_shift_grid(start ? 1 : 0, 1);
    search.coarse_to_fine = coarse_to_fine;
    em::ExpectationSettings settings;
    settings.use_ctf = false;
    settings.batch = 40;
    settings.insert_radius = kBox / 2.0 - 1;
    settings.noise_particles_per_group = noise_particles;
    settings.share_children = share_children;
    Run run;
    if (start) run.poses = *start;
    else run.poses.assign(kParticles, em::Pose3D{});
    em::ReconstructionSums sums(1, kBox);
    em::NoiseSums noise(1, kBox / 2 + 1);
    em::ExpectationStats stats;
    const auto cpu = em::make_cpu_backend();
    em::ScoringBackend* backend = given ? given : cpu.get();
    em::expectation_3d(*set_, images_, run.poses, {projector_.get()}, em::make_frequency_list(kBox, 12), sigma2_, mask_, search, {geometry::Mat3::identity()},
                       settings, *backend, sums, noise, stats, nullptr);
    run.map = sums.total(0).reconstruct();
    run.flops = stats.flops;
    run.noise = noise;
    return run;
  }
  double median_error(const std::vector<em::Pose3D>& poses) const {
    std::vector<double> e;
    for (int i = 0; i < kParticles; ++i)
      e.push_back(geometry::rotation_angle_between(geometry::euler_to_matrix(truth_[static_cast<std::size_t>(i)]),
                                                   geometry::euler_to_matrix({poses[static_cast<std::size_t>(i)].rot,
                                                                              poses[static_cast<std::size_t>(i)].tilt,
                                                                              poses[static_cast<std::size_t>(i)].psi})));
    std::nth_element(e.begin(), e.begin() + kParticles / 2, e.end());
    return e[kParticles / 2];
  }

  const test::TempDir dir_{"estep3d"};
  std::vector<float> volume_, mask_;
  std::unique_ptr<em::Projector> projector_;
  std::vector<geometry::Euler> truth_;
  std::unique_ptr<io::ParticleSet> set_;
  std::vector<std::size_t> images_;
  std::vector<std::vector<double>> sigma2_;
};

}  // namespace

TEST(ReconstructionSums, HalvesShareTheirLanesButNotTheirTotals) {
  // The half sets' E-steps run one after the other and leave their lanes cleared: one set of lanes
  // serves both, while each half keeps its own totals.
  auto halves = em::ReconstructionSums::for_halves(2, 16);
  ASSERT_EQ(halves.size(), 2u);
  halves[0].provide_lanes(3);
  for (int k = 0; k < 2; ++k)
    for (int l = 0; l < 3; ++l) EXPECT_EQ(&halves[0].lane(k, l), &halves[1].lane(k, l));
  EXPECT_NE(&halves[0].total(0), &halves[1].total(0));
  std::vector<em::Complex> slice(image::half_size(16, 16), em::Complex(1.0f, 0.0f));
  const std::vector<float> weight(slice.size(), 1.0f);
  halves[0].lane(1, 2).insert(geometry::Mat3::identity(), slice.data(), weight.data(), 16, 7);
  halves[0].add_lanes_to_total(1);
  EXPECT_GT(halves[0].total(1).mean_weight_per_shell()[3], 0.0);
  for (double w : halves[1].total(1).mean_weight_per_shell()) EXPECT_EQ(w, 0.0);
  for (double w : halves[1].lane(1, 2).mean_weight_per_shell()) EXPECT_EQ(w, 0.0);  // folded and cleared
}

TEST_F(ThreeDEngine, CoarseToFineIsAsAccurateAsTheExhaustiveGridForLessWork) {
  const Run fine = refine_once(true), full = refine_once(false);
  const double e_fine = median_error(fine.poses), e_full = median_error(full.poses);
  std::printf("median pose error: coarse-to-fine %.2f deg, exhaustive 15-degree grid %.2f deg; scoring %.3g vs %.3g FLOP\n", e_fine,
              e_full, fine.flops, full.flops);
  // The sub-cells sample the grid twice as finely, so coarse-to-fine is at least as accurate.
  EXPECT_LT(e_full, 10.0);
  EXPECT_LE(e_fine, e_full + 0.5);
  EXPECT_LT(fine.flops, full.flops);
}

TEST_F(ThreeDEngine, PosesAndMapsDoNotDependOnTheThreadCount) {
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const Run a = refine_once(true);
  omp_set_num_threads(2);
  const Run b = refine_once(true);
  omp_set_num_threads(threads);
  for (int i = 0; i < kParticles; ++i) {
    EXPECT_EQ(a.poses[static_cast<std::size_t>(i)].rot, b.poses[static_cast<std::size_t>(i)].rot);
    EXPECT_EQ(a.poses[static_cast<std::size_t>(i)].psi, b.poses[static_cast<std::size_t>(i)].psi);
  }
  EXPECT_EQ(test::max_abs_diff(a.map, b.map), 0.0);
}

// A 30-degree grid has ~600 orientations, few enough for 120 particles to share their fine-pass
// children (sampled once, reused by every particle that keeps the same coarse template): the same
// poses and map as each particle sampling its own, with one thread or two filling the shared ones.
TEST_F(ThreeDEngine, SharedChildrenGiveTheSameAnswerAsEachParticleSamplingItsOwn) {
  ASSERT_GE(kParticles * 10, static_cast<int>(em::orientation_grid(30, "C1").size()));  // shared here
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  const Run own = refine_once(true, nullptr, nullptr, 20000, 30, false), shared = refine_once(true, nullptr, nullptr, 20000, 30, true);
  omp_set_num_threads(1);
  const Run one_thread = refine_once(true, nullptr, nullptr, 20000, 30, true);
  omp_set_num_threads(threads);
  for (const Run* run : {&shared, &one_thread})
    for (int i = 0; i < kParticles; ++i) {
      const auto p = static_cast<std::size_t>(i);
      EXPECT_EQ(own.poses[p].rot, run->poses[p].rot) << i;
      EXPECT_EQ(own.poses[p].tilt, run->poses[p].tilt) << i;
      EXPECT_EQ(own.poses[p].psi, run->poses[p].psi) << i;
      EXPECT_EQ(own.poses[p].shift_x, run->poses[p].shift_x) << i;
    }
  EXPECT_EQ(test::max_abs_diff(own.map, shared.map), 0.0);
  EXPECT_EQ(test::max_abs_diff(own.map, one_thread.map), 0.0);
  EXPECT_LT(median_error(shared.poses), 12.0);
}

// The noise residual from every third particle (at most 40 of the 120) measures the same sigma^2 as
// from all of them, within what 40 particles' pixels resolve; the poses and map do not change.
TEST_F(ThreeDEngine, NoiseFromASubsetOfParticlesMeasuresTheSameSigma2) {
  const Run all = refine_once(true), some = refine_once(true, nullptr, nullptr, 40);
  std::vector<std::vector<double>> s_all = sigma2_, s_some = sigma2_;
  all.noise.update(s_all);
  some.noise.update(s_some);
  double counted_all = 0, counted_some = 0;
  for (std::size_t s = 1; s < all.noise.count[0].size(); ++s) counted_all += all.noise.count[0][s], counted_some += some.noise.count[0][s];
  EXPECT_NEAR(counted_some / counted_all, 40.0 / 120.0, 1e-9);  // particles 0, 3, 6, ...
  for (std::size_t s = 5; s <= 12; ++s)  // ~1,300 values per shell: a few percent apart
    EXPECT_NEAR(s_some[0][s] / s_all[0][s], 1.0, 0.15) << "shell " << s;
  EXPECT_EQ(test::max_abs_diff(all.map, some.map), 0.0);
  for (int i = 0; i < kParticles; ++i) EXPECT_EQ(all.poses[static_cast<std::size_t>(i)].psi, some.poses[static_cast<std::size_t>(i)].psi);
}

// A backend that scores a batch's per-particle passes at once (the GPU's way) goes through the
// E-step's batched stages, global (fine passes) and local (own coarse passes, then fine passes):
// the same poses and maps, bit for bit.
TEST_F(ThreeDEngine, PassesScoredManyAtOnceGiveTheSameAnswers) {
  test::ManyAtOnceBackend global_backend, local_backend;
  const Run a = refine_once(true), b = refine_once(true, &global_backend);
  EXPECT_EQ(global_backend.requests(), kParticles);
  std::vector<em::Pose3D> start = a.poses;
  for (auto& p : start) p.shift_x += 0.5, p.shift_y -= 0.5;  // off the shift grid's points: a base shift for the local search
  const Run c = refine_once(true, nullptr, &start), d = refine_once(true, &local_backend, &start);
  EXPECT_EQ(local_backend.requests(), 2 * kParticles);
  for (const auto& [x, y] : {std::pair{&a, &b}, std::pair{&c, &d}}) {
    for (int i = 0; i < kParticles; ++i) {
      const auto& p = x->poses[static_cast<std::size_t>(i)];
      const auto& q = y->poses[static_cast<std::size_t>(i)];
      EXPECT_EQ(p.rot, q.rot);
      EXPECT_EQ(p.tilt, q.tilt);
      EXPECT_EQ(p.psi, q.psi);
      EXPECT_EQ(p.shift_x, q.shift_x);
      EXPECT_EQ(p.shift_y, q.shift_y);
    }
    EXPECT_EQ(test::max_abs_diff(x->map, y->map), 0.0);
  }
}

namespace {
/// A CPU backend that asks the template source for its grids before the E-step, as the GPU's does
/// to decide whether it samples the templates itself.
class GridAskingBackend final : public em::ScoringBackend {
 public:
  std::string name() const override { return "CPU, asking for the references' grids"; }
  void plan(int slots, int particles, int templates) override { cpu_->plan(slots, particles, templates); }
  void score(const em::ScoreRequest& request, float* out, int slot) override { cpu_->score(request, out, slot); }
  bool samples_templates(const em::TemplateSource& source) const override {
    asked_dimensions = source.grids().dimensions;
    return false;
  }
  em::BackendStats stats() const override { return cpu_->stats(); }
  mutable int asked_dimensions = -1;  // -1: never asked

 private:
  std::unique_ptr<em::ScoringBackend> cpu_ = em::make_cpu_backend();
};
}  // namespace

// Known-pose reconstructions (reconstruct, hetero-reconstruct) give the engine no maps: asked for
// its grids, the template source says it has none (it read the first, null, map before), and the
// particles are back-projected at their poses.
TEST_F(ThreeDEngine, KnownPosesWithoutMapsOfferNoGridsAndBackProjectAtThePoses) {
  std::vector<em::Pose3D> poses(kParticles);
  for (int i = 0; i < kParticles; ++i) {
    const auto& e = truth_[static_cast<std::size_t>(i)];
    poses[static_cast<std::size_t>(i)].rot = e.rot, poses[static_cast<std::size_t>(i)].tilt = e.tilt, poses[static_cast<std::size_t>(i)].psi = e.psi;
  }
  em::ExpectationSettings settings;
  settings.use_ctf = false;
  settings.known_poses = true;
  settings.insert_radius = kBox / 2.0 - 1;
  em::ReconstructionSums sums(1, kBox);
  em::NoiseSums noise(1, kBox / 2 + 1);
  em::ExpectationStats stats;
  GridAskingBackend backend;
  em::expectation_3d(*set_, images_, poses, {nullptr}, em::make_frequency_list(kBox, kBox / 2.0 - 1), sigma2_, mask_, em::PoseSearch{},
                     {geometry::Mat3::identity()}, settings, backend, sums, noise, stats, nullptr);
  EXPECT_EQ(backend.asked_dimensions, 0);
  const auto fsc = image::fsc_3d(sums.total(0).reconstruct(), volume_, kBox);
  EXPECT_GT(fsc[6], 0.8) << "the true-pose map at shell 6 (0.87 measured; random poses give ~0)";
}
