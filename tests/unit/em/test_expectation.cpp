// The E-step driver and the 2D configuration on a small synthetic problem with known truth:
// coarse-to-fine finds what the exhaustive search finds; results do not depend on the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>

#include "emcryo/em/model2d.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "support/many_backend.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

using namespace emcryo;
namespace fs = std::filesystem;

namespace {

constexpr int kBox = 48, kClasses = 3, kParticles = 240;

/// Smooth random blobs inside a disc: distinct class averages.
std::vector<std::vector<float>> make_classes(unsigned seed) {
  std::vector<std::vector<float>> classes;
  const auto mask = image::soft_round_mask(kBox, 2, kBox * 0.35, 3);
  for (int k = 0; k < kClasses; ++k) {
    auto noise = test::random_values(static_cast<std::size_t>(kBox * kBox), seed + static_cast<unsigned>(k));
    auto spectrum = image::fft_forward_2d(noise, kBox);
    image::lowpass_half_grid_2d(spectrum.data(), kBox, 5, 2);
    auto img = image::fft_inverse_2d(spectrum, kBox);
    image::apply_mask(img.data(), mask);
    classes.push_back(std::move(img));
  }
  return classes;
}

struct Truth {
  int k;
  double psi;
  em::Shift shift;
};

/// Particles X = s_t A_k(psi) + noise at the given SNR, written as a stack and a STAR file
/// without CTF; the model is the engine's own (Projector2D and the shift ramps).
std::vector<Truth> write_particles(const fs::path& dir, const std::vector<std::vector<float>>& classes, double snr) {
  std::mt19937 rng(42);
  const auto psi = em::psi_grid(6);
  const auto shifts = em::make_shift_grid(3, 1).fine;
  const auto list = em::make_frequency_list(kBox, kBox / 2.0 - 1);
  std::vector<em::Projector2D> projectors;
  for (const auto& c : classes) projectors.emplace_back(c, kBox);
  std::vector<float> stack;
  std::vector<Truth> truth;
  std::vector<em::Complex> sample(list.size()), ramp(list.size());
  std::normal_distribution<float> normal(0, 1);
  for (int i = 0; i < kParticles; ++i) {
    const Truth t{static_cast<int>(rng() % kClasses), psi[rng() % psi.size()], shifts[rng() % shifts.size()]};
    truth.push_back(t);
    projectors[static_cast<std::size_t>(t.k)].sample(t.psi, list, sample.data());
    em::shift_ramps(list, {t.shift}, 0, 0, ramp.data());
    std::vector<em::Complex> spectrum(image::half_size(kBox, kBox));
    for (std::size_t f = 0; f < list.size(); ++f) {
      const auto v = sample[f] * ramp[f];
      spectrum[static_cast<std::size_t>(list.index[f])] = v;
      if (list.kx[f] == 0) spectrum[static_cast<std::size_t>(image::storage_index(-list.ky[f], kBox) * (kBox / 2 + 1))] = std::conj(v);
    }
    auto img = image::fft_inverse_2d(spectrum, kBox);
    double mean, sd;
    image::mean_stddev(img.data(), img.size(), mean, sd);
    const auto noise_sd = static_cast<float>(sd / std::sqrt(snr));
    for (auto& v : img) v += noise_sd * normal(rng);
    stack.insert(stack.end(), img.begin(), img.end());
  }
  test::write_mrc_stack(dir / "p.mrcs", stack, kBox, kBox, kParticles, 2.0);
  std::string star =
      "# version 30001\ndata_optics\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n_rlnImagePixelSize #3\n"
      "_rlnImageSize #4\n_rlnImageDimensionality #5\n1 g1 2.0 48 2\n\n# version 30001\ndata_particles\nloop_\n"
      "_rlnImageName #1\n_rlnOpticsGroup #2\n";
  for (int i = 0; i < kParticles; ++i) star += fmt::format("{:06}@p.mrcs 1\n", i + 1);
  test::write_text(dir / "p.star", star);
  return truth;
}

class TwoDEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    classes_ = make_classes(7);
    truth_ = write_particles(dir_.path(), classes_, 0.015);
    set_ = std::make_unique<io::ParticleSet>(io::ParticleSet::read(dir_.path() / "p.star"));
    for (int i = 0; i < kParticles; ++i) active_.push_back(static_cast<std::size_t>(i));
    mask_ = image::soft_round_mask(kBox, 2, kBox * 0.42, 3);
    model_.box = kBox;
    model_.classes = classes_;
    model_.priors.assign(kClasses, 1.0 / kClasses);
    model_.sigma2 = em::estimate_initial_sigma2(*set_, active_, mask_);
    model_.radius = 16;
  }
  std::vector<em::ParticleResult> iterate(const em::Class2DSettings& settings, em::Class2DModel* next = nullptr,
                                          em::Class2DStats* stats = nullptr, em::ScoringBackend* given = nullptr) {
    const auto cpu = em::make_cpu_backend();
    em::ScoringBackend* backend = given ? given : cpu.get();
    std::vector<em::ParticleResult> results(active_.size());
    em::Class2DStats local;
    auto m = em::class2d_iteration(*set_, active_, model_, em::make_class2d_search(6, 3, 1), mask_, settings, *backend, results,
                                   stats ? *stats : local);
    if (next) *next = std::move(m);
    return results;
  }
  const test::TempDir dir_{"estep2d"};
  std::vector<std::vector<float>> classes_;
  std::vector<Truth> truth_;
  std::unique_ptr<io::ParticleSet> set_;
  std::vector<std::size_t> active_;
  std::vector<float> mask_;
  em::Class2DModel model_;
};

}  // namespace

TEST_F(TwoDEngine, CoarseToFineFindsTheExhaustiveBestHypothesis) {
  em::Class2DSettings fine;
  fine.use_ctf = false;
  fine.batch = 64;
  em::Class2DSettings exhaustive = fine;
  exhaustive.coarse_to_fine = false;
  em::Class2DStats c2f_stats, full_stats;
  const auto a = iterate(fine, nullptr, &c2f_stats);
  const auto b = iterate(exhaustive, nullptr, &full_stats);
  int same = 0, right_class = 0;
  for (int i = 0; i < kParticles; ++i) {
    const auto& x = a[static_cast<std::size_t>(i)];
    const auto& y = b[static_cast<std::size_t>(i)];
    same += x.best_class == y.best_class && std::abs(std::remainder(x.psi - y.psi, 360.0)) < 1e-6 && x.shift_x == y.shift_x &&
            x.shift_y == y.shift_y;
    right_class += y.best_class == truth_[static_cast<std::size_t>(i)].k;
  }
  // SNR 0.015: the references are the truth, so the exhaustive search is nearly right; coarse-to-fine must
  // find its best hypothesis in >= 99% of particles with a fraction of the scoring work.
  std::printf("coarse-to-fine: %d of %d best hypotheses as exhaustive; true class %d; scoring %.3g vs %.3g FLOP\n", same, kParticles,
              right_class, c2f_stats.flops, full_stats.flops);
  EXPECT_GE(right_class, kParticles * 95 / 100);
  EXPECT_GE(same, kParticles * 99 / 100) << same << " of " << kParticles;
  EXPECT_LT(c2f_stats.flops, 0.25 * full_stats.flops) << c2f_stats.flops << " vs " << full_stats.flops;
  // The stages account for the E-step's wall time (what is left out is bookkeeping), and each of
  // the coarse-to-fine E-step's stages was timed.
  const auto& st = c2f_stats.stages;
  std::printf("E-step %.3f s, stages %.3f s: %s\n", c2f_stats.seconds, st.total(), st.summary().c_str());
  EXPECT_LE(st.total(), c2f_stats.seconds * 1.001 + 1e-4);
  EXPECT_GT(st.total(), 0.8 * c2f_stats.seconds);
  for (auto stage : {em::StageTimes::prepare, em::StageTimes::coarse_templates, em::StageTimes::coarse_score, em::StageTimes::coarse_reduce,
                     em::StageTimes::search_templates, em::StageTimes::search_rows, em::StageTimes::search_score,
                     em::StageTimes::search_reduce, em::StageTimes::consume})
    EXPECT_GT(st.seconds[stage], 0.0) << "stage " << stage;
}

TEST_F(TwoDEngine, MaximisedPosesAndHardClassesKeepOneHypothesis) {
  em::Class2DSettings s;
  s.use_ctf = false;
  s.force_max_poses = true;
  s.hard_classes = true;
  for (const auto& r : iterate(s)) {
    EXPECT_EQ(r.significant_samples, 1);
    EXPECT_DOUBLE_EQ(r.class_posterior_max, 1.0);
  }
  s.force_max_poses = s.hard_classes = false;
  int spread = 0;
  for (const auto& r : iterate(s)) spread += r.significant_samples > 1;
  EXPECT_GT(spread, kParticles / 2);  // at SNR 0.05 most posteriors are not single spikes
}

TEST_F(TwoDEngine, ResultsDoNotDependOnTheThreadCount) {
  em::Class2DSettings s;
  s.use_ctf = false;
  s.batch = 50;  // several batches, the last one partial
  const int threads = omp_get_max_threads();
  em::Class2DModel one, two;
  omp_set_num_threads(1);
  const auto a = iterate(s, &one);
  omp_set_num_threads(2);
  const auto b = iterate(s, &two);
  omp_set_num_threads(threads);
  for (int i = 0; i < kParticles; ++i) {
    EXPECT_EQ(a[static_cast<std::size_t>(i)].best_class, b[static_cast<std::size_t>(i)].best_class);
    EXPECT_EQ(a[static_cast<std::size_t>(i)].psi, b[static_cast<std::size_t>(i)].psi);
    EXPECT_EQ(a[static_cast<std::size_t>(i)].significant_samples, b[static_cast<std::size_t>(i)].significant_samples);
  }
  for (int k = 0; k < kClasses; ++k)
    EXPECT_EQ(test::max_abs_diff(one.classes[static_cast<std::size_t>(k)], two.classes[static_cast<std::size_t>(k)]), 0.0);
  EXPECT_EQ(one.priors, two.priors);
}

// A backend that scores a batch's fine passes at once (the GPU's way) goes through the E-step's
// batched stages: the same hypotheses reduced in the same order, so the same answers, bit for bit.
TEST_F(TwoDEngine, PassesScoredManyAtOnceGiveTheSameAnswers) {
  em::Class2DSettings s;
  s.use_ctf = false;
  s.batch = 50;
  em::Class2DModel one, many;
  const auto a = iterate(s, &one);
  test::ManyAtOnceBackend backend;
  const auto b = iterate(s, &many, nullptr, &backend);
  EXPECT_GE(backend.batches(), kParticles / s.batch);  // one fine stage per batch (the coarse pass is shared)
  EXPECT_EQ(backend.requests(), kParticles);
  for (int i = 0; i < kParticles; ++i) {
    const auto& x = a[static_cast<std::size_t>(i)];
    const auto& y = b[static_cast<std::size_t>(i)];
    EXPECT_EQ(x.best_class, y.best_class);
    EXPECT_EQ(x.psi, y.psi);
    EXPECT_EQ(x.shift_x, y.shift_x);
    EXPECT_EQ(x.shift_y, y.shift_y);
    EXPECT_EQ(x.log_likelihood, y.log_likelihood);
    EXPECT_EQ(x.significant_samples, y.significant_samples);
  }
  for (int k = 0; k < kClasses; ++k)
    EXPECT_EQ(test::max_abs_diff(one.classes[static_cast<std::size_t>(k)], many.classes[static_cast<std::size_t>(k)]), 0.0);
}

// Masked white noise keeps mean(m^2) of its power per Fourier coefficient: the inflation that
// restores the noise per pixel inside the mask is its inverse, to within the sampling error.
TEST(MaskedNoiseInflation, RestoresTheNoisePowerOfMaskedWhiteNoise) {
  EXPECT_DOUBLE_EQ(em::masked_noise_inflation({}), 1.0);
  EXPECT_DOUBLE_EQ(em::masked_noise_inflation(std::vector<float>(16, 1.0f)), 1.0);
  constexpr int n = 64;
  const auto mask = image::soft_round_mask(n, 2, 26, 5);
  const double inflation = em::masked_noise_inflation(mask);
  EXPECT_GT(inflation, 1.5);
  EXPECT_LT(inflation, 2.0);
  std::mt19937 rng(3);
  std::normal_distribution<float> gauss(0, 1);
  double plain = 0, masked = 0;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> noise(static_cast<std::size_t>(n * n));
    for (auto& v : noise) v = gauss(rng);
    for (const auto& c : image::fft_forward_2d(noise, n)) plain += std::norm(c);
    image::apply_mask(noise.data(), mask);
    for (const auto& c : image::fft_forward_2d(noise, n)) masked += std::norm(c);
  }
  EXPECT_NEAR(plain / masked, inflation, 0.03 * inflation);
}

// The CPU preparation (the reference a device backend's prepare_batch() is tested against) is the
// image library's transforms, gathered: the masked image's fft_forward_2d, the raw image's, the
// CTF's ctf_half_grid, and the 1/sigma^2 weights of each particle's group.
TEST(PrepareParticles, GathersTheMaskedTransformTheCtfAndTheNoiseWeights) {
  const int n = 48, count = 5, groups = 2;
  const auto list = em::make_frequency_list(n, 20);
  const int F = static_cast<int>(list.size());
  const std::size_t area = std::size_t{n} * n, half = image::half_size(n, n);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> pixels(count * area), inv_sigma2(std::size_t{groups} * F);
  for (auto& v : pixels) v = normal(rng);
  for (auto& v : inv_sigma2) v = 1.0f + 0.5f * std::abs(normal(rng));
  const auto mask = image::soft_round_mask(n, 2, 18, 4);
  std::vector<image::CtfParams> params(count);
  std::vector<image::CtfTerms> terms;
  std::vector<int> group;
  for (int b = 0; b < count; ++b) {
    params[b].defocus_u = 12000 + 3000 * b, params[b].defocus_v = 11000 + 2500 * b, params[b].defocus_angle = 30 * b;
    params[b].bfactor = 20 * b, params[b].phase_shift = 10 * b;
    terms.push_back(image::Ctf(params[b]).terms());
    group.push_back(b % groups);
  }
  std::vector<float> x(count * 2 * static_cast<std::size_t>(F)), ctf(count * static_cast<std::size_t>(F)), ctf2(ctf.size());
  std::vector<double> half_norm(count);
  std::vector<std::vector<float>> unmasked(count, std::vector<float>(2 * half)), grid(count, std::vector<float>(half));
  std::vector<float*> unmasked_rows, grid_rows;
  for (int b = 0; b < count; ++b) unmasked_rows.push_back(unmasked[b].data()), grid_rows.push_back(grid[b].data());
  em::PrepareBatch q;
  q.count = count, q.box = n, q.pixels = pixels.data(), q.mask = mask.data(), q.ctf = terms.data(), q.pixel_size = 1.7;
  q.group = group.data(), q.inv_sigma2 = inv_sigma2.data(), q.groups = groups, q.index = list.index.data(), q.frequencies = F;
  q.x = x.data(), q.ctf_out = ctf.data(), q.ctf2 = ctf2.data(), q.half_norm = half_norm.data();
  q.unmasked = unmasked_rows.data(), q.ctf_grid = grid_rows.data();
  em::prepare_particles(q);
  for (int b = 0; b < count; ++b) {
    std::vector<float> image(pixels.begin() + b * area, pixels.begin() + (b + 1) * area);
    const auto raw = image::fft_forward_2d(image, n);
    image::apply_mask(image.data(), mask);
    const auto masked = image::fft_forward_2d(image, n);
    const auto expected_grid = image::ctf_half_grid(params[b], n, 1.7);
    EXPECT_EQ(grid[b], expected_grid);
    for (std::size_t k = 0; k < half; ++k) ASSERT_EQ(em::Complex(unmasked[b][2 * k], unmasked[b][2 * k + 1]), raw[k]);
    double norm = 0;
    for (int f = 0; f < F; ++f) {
      const std::size_t at = static_cast<std::size_t>(b) * F + f, k = list.index[f];
      const float isg = inv_sigma2[static_cast<std::size_t>(b % groups) * F + f];
      ASSERT_EQ(em::Complex(x[2 * at], x[2 * at + 1]), masked[k]);
      ASSERT_EQ(ctf[at], expected_grid[k]);
      ASSERT_EQ(ctf2[at], expected_grid[k] * expected_grid[k] * isg);
      norm += std::norm(masked[k]) * isg / 2;
    }
    EXPECT_NEAR(half_norm[b], norm, 1e-7 * norm);  // the same float terms, within their rounding
  }
}
