// The E-step operands (score rows, template rows, noise residual) and the 3D E-step's helpers:
// the GEMM form of the score must equal the Gaussian log-likelihood it stands for.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <complex>
#include <random>
#include <vector>

#include "emcryo/em/projector2d.hpp"
#include "emcryo/em/model3d.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/em/scoring_backend.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "support/test_support.hpp"

namespace {

namespace em = emcryo::em;
using em::Complex;

std::vector<Complex> random_complex(std::size_t count, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<Complex> out(count);
  for (auto& v : out) v = {g(rng), g(rng)};
  return out;
}

TEST(ScoreRows, GemmScoreDifferencesEqualLogLikelihoodDifferences) {
  const auto list = em::make_frequency_list(32, 12);
  const int F = static_cast<int>(list.size());
  std::mt19937 rng(3);
  const auto x = random_complex(list.size(), rng), a1 = random_complex(list.size(), rng), a2 = random_complex(list.size(), rng);
  std::uniform_real_distribution<float> u(0.2f, 1.0f);
  std::vector<float> ctf(list.size()), inv_sigma2(list.size()), half_ctf2(list.size());
  for (std::size_t f = 0; f < list.size(); ++f) ctf[f] = u(rng) * (f % 2 ? -1.0f : 1.0f), inv_sigma2[f] = u(rng), half_ctf2[f] = ctf[f] * ctf[f] * inv_sigma2[f] / 2;
  const std::vector<em::Shift> shifts{{0, 0}, {1.5f, -0.5f}, {-2, 1}};
  const auto ramps = em::shift_ramps(list, shifts);
  std::vector<float> rows(shifts.size() * 2 * list.size());
  em::fill_score_rows(x.data(), ctf.data(), inv_sigma2.data(), ramps.data(), static_cast<int>(shifts.size()), F, rows.data());
  std::vector<float> t1(2 * list.size()), t2(2 * list.size()), p1(list.size()), p2(list.size());
  em::store_template_row(a1.data(), F, t1.data(), p1.data());
  em::store_template_row(a2.data(), F, t2.data(), p2.data());
  for (std::size_t t = 0; t < shifts.size(); ++t) {
    auto gemm_score = [&](const std::vector<float>& tr, const std::vector<float>& power) {
      double cross = 0, norm = 0;
      for (int k = 0; k < 2 * F; ++k) cross += rows[t * 2 * list.size() + static_cast<std::size_t>(k)] * tr[static_cast<std::size_t>(k)];
      for (int f = 0; f < F; ++f) norm += half_ctf2[static_cast<std::size_t>(f)] * power[static_cast<std::size_t>(f)];
      return cross - norm;
    };
    auto log_likelihood = [&](const std::vector<Complex>& a) {
      double d2 = 0;
      for (std::size_t f = 0; f < list.size(); ++f) d2 += std::norm(x[f] - ctf[f] * ramps[t * list.size() + f] * a[f]) * inv_sigma2[f] / 2;
      return -d2;
    };
    const double expected = log_likelihood(a1) - log_likelihood(a2);
    EXPECT_NEAR(gemm_score(t1, p1) - gemm_score(t2, p2), expected, 1e-3 * std::abs(expected) + 1e-3) << "shift " << t;
  }
}

TEST(ScoreRows, ShiftRampsAddTheBaseShift) {
  const auto list = em::make_frequency_list(24, 10);
  const auto combined = em::shift_ramps(list, {{0.5f, 1.0f}}, 1.0, -2.0);
  const auto direct = em::shift_ramps(list, {{1.5f, -1.0f}});
  for (std::size_t f = 0; f < list.size(); ++f) EXPECT_LT(std::abs(combined[f] - direct[f]), 1e-5f);
}

TEST(ScoreRows, NoiseResidualOfTheModelItselfIsZero) {
  const auto list = em::make_frequency_list(24, 10);
  std::mt19937 rng(5);
  const auto a = random_complex(list.size(), rng);
  std::vector<float> ctf(list.size(), 0.7f), row(2 * list.size());
  em::store_template_row(a.data(), static_cast<int>(list.size()), row.data(), nullptr);
  const auto ramp = em::shift_ramps(list, {{1.0f, 0.5f}});
  std::vector<Complex> x(list.size());
  for (std::size_t f = 0; f < list.size(); ++f) x[f] = ctf[f] * ramp[f] * a[f];
  std::vector<double> sum(13, 0.0), count(13, 0.0);
  em::add_noise_residual(list, x.data(), ctf.data(), ramp.data(), row.data(), sum.data(), count.data());
  double total_count = 0;
  for (std::size_t s = 0; s < sum.size(); ++s) {
    EXPECT_NEAR(sum[s], 0.0, 1e-8);
    total_count += count[s];
  }
  EXPECT_EQ(total_count, static_cast<double>(list.size()));
  // A residual of known power: x = model + 1 everywhere adds exactly one per frequency.
  for (auto& v : x) v += Complex(1, 0);
  std::fill(sum.begin(), sum.end(), 0.0);
  em::add_noise_residual(list, x.data(), ctf.data(), ramp.data(), row.data(), sum.data(), count.data());
  for (std::size_t s = 0; s < sum.size(); ++s) EXPECT_NEAR(sum[s], count[s] / 2, 1e-4);
}

TEST(Hypotheses, LocalOrientationsSurroundTheCentre) {
  const emcryo::geometry::Euler centre{40, 70, -20};
  const double step = 4;
  const auto candidates = em::local_orientations(centre, step / 2);
  ASSERT_EQ(candidates.size(), static_cast<std::size_t>(em::kLocalOrientations));
  const auto c = emcryo::geometry::euler_to_matrix(centre);
  double largest = 0;
  int at_centre = 0;
  for (const auto& e : candidates) {
    const double angle = emcryo::geometry::rotation_angle_between(c, emcryo::geometry::euler_to_matrix(e));
    largest = std::max(largest, angle);
    at_centre += angle < 1e-6;
  }
  EXPECT_EQ(at_centre, 1);
  EXPECT_NEAR(largest, step * std::sqrt(6.0) / 2, 1e-6);  // e.g. (2, 1, 1) spacings: the ball's rim
}

TEST(Hypotheses, NoiseSumsGiveSigma2PerRealAndImaginaryPart) {
  em::NoiseSums a(1, 4), b(1, 4);
  a.sum[0] = {0, 4, 8, 0};
  a.count[0] = {0, 1, 2, 0};
  b.sum[0] = {0, 4, 0, 0};
  b.count[0] = {0, 1, 0, 0};
  a.add(b);
  std::vector<std::vector<double>> sigma2{{1, 1, 1, 5}};
  a.update(sigma2);
  EXPECT_DOUBLE_EQ(sigma2[0][1], 2.0);  // 8 / (2 * 2)
  EXPECT_DOUBLE_EQ(sigma2[0][2], 2.0);
  EXPECT_DOUBLE_EQ(sigma2[0][3], 5.0);  // no data: kept
}

}  // namespace

// The M-step sum terms grouped by template for a device (em::group_sum_terms) against a plain
// serial grouping: the same templates, offsets and entries in the terms' order, with one thread or
// several, and a clear failure for a term outside the batch.
TEST(SumTerms, GroupedByTemplateStablyWhateverTheThreads) {
  constexpr int J = 700, B = 300, T = 9;
  std::mt19937 rng(5);
  std::vector<em::SumTerm> terms(400000);
  for (auto& t : terms)  // a few crowded templates, many sparse ones, some untouched
    t = {static_cast<int>(rng() % 4 == 0 ? rng() % 5 : rng() % (J - 50)), static_cast<int>(rng() % B), static_cast<int>(rng() % T),
         static_cast<float>(rng() % 1000) / 1000.0f};
  em::GroupedSumTerms expected;
  std::vector<std::vector<em::GroupedSumTerms::Entry>> per_template(J);
  for (const auto& t : terms) per_template[static_cast<std::size_t>(t.j)].push_back({t.b, t.t, t.w});
  for (int j = 0; j < J; ++j) {
    if (per_template[static_cast<std::size_t>(j)].empty()) continue;
    expected.rows.push_back(j), expected.offsets.push_back(static_cast<int>(expected.entries.size()));
    for (const auto& e : per_template[static_cast<std::size_t>(j)]) expected.entries.push_back(e);
  }
  expected.offsets.push_back(static_cast<int>(expected.entries.size()));
  const int threads = omp_get_max_threads();
  for (int n : {1, 2, 3}) {
    omp_set_num_threads(n);
    em::GroupedSumTerms got;
    em::group_sum_terms(terms.data(), terms.size(), J, B, T, got);
    EXPECT_EQ(got.rows, expected.rows) << n << " threads";
    EXPECT_EQ(got.offsets, expected.offsets) << n << " threads";
    ASSERT_EQ(got.entries.size(), expected.entries.size());
    for (std::size_t i = 0; i < got.entries.size(); ++i) {
      ASSERT_EQ(got.entries[i].b, expected.entries[i].b) << i;
      ASSERT_EQ(got.entries[i].t, expected.entries[i].t) << i;
      ASSERT_EQ(got.entries[i].w, expected.entries[i].w) << i;
    }
  }
  omp_set_num_threads(threads);
  terms[123456].t = T;  // a shift outside the batch
  em::GroupedSumTerms got;
  EXPECT_NE(emcryo::test::error_message([&] { em::group_sum_terms(terms.data(), terms.size(), J, B, T, got); }).find("outside the batch"),
            std::string::npos);
}
