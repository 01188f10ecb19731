// The posterior reducer against a brute-force softmax on tiny problems, per hidden variable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>

#include "emcryo/em/posterior.hpp"

using namespace emcryo;
using em::PosteriorSettings;
using em::Reduce;

namespace {

struct Tiny {
  int K = 3, H = 40;
  std::vector<std::vector<float>> score;  // [k][h]
  explicit Tiny(unsigned seed, float spread = 3) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0, spread);
    score.assign(static_cast<std::size_t>(K), std::vector<float>(static_cast<std::size_t>(H)));
    for (auto& row : score)
      for (auto& v : row) v = normal(rng) - 1000;  // far from 0: the reducer must not need small scores
  }
  em::Posterior reduce(const PosteriorSettings& s, int chunk = 7) const {
    em::PosteriorReducer r;
    r.reset(s, K);
    // Chunks of hypotheses in an interleaved order, as coarse passes deliver them.
    for (int first = 0; first < H; first += chunk)
      for (int k = 0; k < K; ++k)
        for (int h = first; h < std::min(H, first + chunk); ++h) r.add(k, h, score[static_cast<std::size_t>(k)][static_cast<std::size_t>(h)]);
    return r.finish();
  }
  /// Brute force: the full joint posterior P(k, h) for marginalised classes and poses.
  std::vector<std::vector<double>> joint(double temperature, const std::vector<double>& prior) const {
    std::vector<double> evidence(static_cast<std::size_t>(K));
    for (int k = 0; k < K; ++k) {
      double s = 0;
      for (float v : score[static_cast<std::size_t>(k)]) s += std::exp(static_cast<double>(v) + 1000);
      evidence[static_cast<std::size_t>(k)] = std::log(s) - 1000;
    }
    std::vector<double> pk(static_cast<std::size_t>(K));
    for (int k = 0; k < K; ++k)
      pk[static_cast<std::size_t>(k)] = std::exp((prior.empty() ? 0 : std::log(prior[static_cast<std::size_t>(k)])) +
                                                 (evidence[static_cast<std::size_t>(k)] + 1000) / temperature);
    const double total = std::accumulate(pk.begin(), pk.end(), 0.0);
    std::vector<std::vector<double>> p(static_cast<std::size_t>(K), std::vector<double>(static_cast<std::size_t>(H)));
    for (int k = 0; k < K; ++k)
      for (int h = 0; h < H; ++h)
        p[static_cast<std::size_t>(k)][static_cast<std::size_t>(h)] =
            pk[static_cast<std::size_t>(k)] / total *
            std::exp(static_cast<double>(score[static_cast<std::size_t>(k)][static_cast<std::size_t>(h)]) - evidence[static_cast<std::size_t>(k)]);
    return p;
  }
};

PosteriorSettings keep_all() {
  PosteriorSettings s;
  s.mass = 1.0;
  s.cap = 1 << 20;
  return s;
}

}  // namespace

TEST(Posterior, MarginalisedWeightsSumToOneAndMatchBruteForce) {
  for (unsigned seed = 1; seed <= 5; ++seed) {
    const Tiny t(seed, 1.0f);
    const auto p = t.reduce(keep_all());
    const auto truth = t.joint(1, {});
    double sum = 0;
    for (const auto& w : p.kept) {
      sum += w.weight;
      EXPECT_NEAR(w.weight, truth[static_cast<std::size_t>(w.k)][static_cast<std::size_t>(w.id)], 1e-5);
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
    EXPECT_EQ(p.kept.size(), static_cast<std::size_t>(t.K * t.H));
    EXPECT_NEAR(std::accumulate(p.class_posterior.begin(), p.class_posterior.end(), 0.0), 1.0, 1e-9);
    EXPECT_EQ(p.scored, t.K * t.H);
  }
}

TEST(Posterior, ClassPriorAndTemperatureEnterAsInTheBruteForce) {
  const Tiny t(11, 0.5f);
  PosteriorSettings s = keep_all();
  s.class_temperature = 3;
  const std::vector<double> prior{0.6, 0.3, 0.1};
  for (double v : prior) s.log_class_prior.push_back(std::log(v));
  const auto p = t.reduce(s);
  const auto truth = t.joint(3, prior);
  for (int k = 0; k < t.K; ++k) {
    const double expected = std::accumulate(truth[static_cast<std::size_t>(k)].begin(), truth[static_cast<std::size_t>(k)].end(), 0.0);
    EXPECT_NEAR(p.class_posterior[static_cast<std::size_t>(k)], expected, 1e-6);
  }
  // A higher temperature flattens the class posterior.
  s.class_temperature = 1;
  const auto sharp = t.reduce(s);
  const auto spread = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  EXPECT_GE(spread(sharp.class_posterior), spread(p.class_posterior));
}

TEST(Posterior, MaximisedPosesKeepEachClassBestAndHardClassesKeepOne) {
  const Tiny t(3);
  PosteriorSettings s = keep_all();
  s.poses = Reduce::maximize;
  const auto p = t.reduce(s);
  ASSERT_EQ(p.kept.size(), static_cast<std::size_t>(t.K));
  for (const auto& w : p.kept) {
    const auto& row = t.score[static_cast<std::size_t>(w.k)];
    EXPECT_EQ(w.id, std::max_element(row.begin(), row.end()) - row.begin());
  }
  // Maximised poses: the class evidence is the best score, not the sum.
  for (int k = 0; k < t.K; ++k)
    EXPECT_FLOAT_EQ(static_cast<float>(p.class_log_evidence[static_cast<std::size_t>(k)]),
                    *std::max_element(t.score[static_cast<std::size_t>(k)].begin(), t.score[static_cast<std::size_t>(k)].end()));
  s.classes = Reduce::maximize;
  const auto hard = t.reduce(s);
  ASSERT_EQ(hard.kept.size(), 1u);
  EXPECT_EQ(hard.kept.front().k, hard.best_class);
  EXPECT_FLOAT_EQ(hard.kept.front().weight, 1.0f);
  EXPECT_DOUBLE_EQ(hard.class_posterior[static_cast<std::size_t>(hard.best_class)], 1.0);
  // The hard class is the one the marginal posterior prefers.
  PosteriorSettings marginal = keep_all();
  marginal.poses = Reduce::maximize;
  EXPECT_EQ(hard.best_class, t.reduce(marginal).best_class);
}

TEST(Posterior, TheMassCutKeepsTheMostProbableUpToTheCap) {
  const Tiny t(5, 4.0f);
  PosteriorSettings s;
  s.mass = 0.9;
  s.cap = 1000;
  s.class_floor = 2;  // no class kept for its own sake
  const auto p = t.reduce(s);
  const auto all = t.reduce(keep_all());
  // The kept ones are the top of the full list, and hold >= 90% of the mass before renormalising.
  double held = 0;
  for (std::size_t i = 0; i < p.kept.size(); ++i) {
    EXPECT_EQ(p.kept[i].id, all.kept[i].id);
    EXPECT_EQ(p.kept[i].k, all.kept[i].k);
    held += all.kept[i].weight;
  }
  EXPECT_GE(held, 0.9 - 1e-6);
  EXPECT_LT(held - all.kept[p.kept.size() - 1].weight, 0.9);  // one fewer would not do
  double sum = 0;
  for (const auto& w : p.kept) sum += w.weight;
  EXPECT_NEAR(sum, 1.0, 1e-5);
  s.cap = 2;
  EXPECT_EQ(t.reduce(s).kept.size(), 2u);
}

TEST(Posterior, ManyFlatHypothesesStayBoundedAndExact) {
  // More hypotheses than the candidate list holds at once: the pruning must not lose the best ones.
  em::PosteriorReducer r;
  PosteriorSettings s;
  s.cap = 10;
  s.mass = 1.0;
  r.reset(s, 1);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> v(100000);
  for (auto& x : v) x = u(rng);
  for (std::size_t h = 0; h < v.size(); ++h) r.add(0, static_cast<std::int64_t>(h), v[h]);
  const auto p = r.finish();
  std::vector<std::size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + 10, order.end(), [&](std::size_t a, std::size_t b) { return v[a] > v[b]; });
  ASSERT_EQ(p.kept.size(), 10u);
  for (std::size_t i = 0; i < 10; ++i) EXPECT_EQ(p.kept[i].id, static_cast<std::int64_t>(order[i]));
  double log_sum = 0;
  for (float x : v) log_sum += std::exp(static_cast<double>(x));
  EXPECT_NEAR(p.log_evidence, std::log(log_sum), 1e-4);
}

TEST(Posterior, FlatClassesDoNotPushOutTheClassThatHoldsTheMass) {
  // Empty class averages score every pose alike: thousands of ties per class, far below the class
  // that holds the mass. Pruning the candidate list must keep that class's hypotheses, so the
  // kept weights stay finite and follow the brute-force posterior (a regression: class2d with
  // K = 100 went NaN once classes emptied).
  const int flat_classes = 20, flat_poses = 2000, poses = 200;
  std::vector<float> informative(poses);
  for (int h = 0; h < poses; ++h) informative[static_cast<std::size_t>(h)] = -0.05f * static_cast<float>(h);
  PosteriorSettings s;
  s.mass = 0.99;
  s.cap = 1000;
  em::PosteriorReducer r;
  r.reset(s, 1 + flat_classes);
  for (int h = 0; h < poses; ++h) r.add(0, h, informative[static_cast<std::size_t>(h)]);
  for (int k = 1; k <= flat_classes; ++k)
    for (int h = 0; h < flat_poses; ++h) r.add(k, h, -30.0f);
  const auto p = r.finish();
  ASSERT_FALSE(p.kept.empty());
  EXPECT_EQ(p.kept.front().k, 0);
  EXPECT_EQ(p.kept.front().id, 0);
  double total = 0;
  for (const auto& w : p.kept) {
    ASSERT_TRUE(std::isfinite(w.weight));
    EXPECT_EQ(w.k, 0);
    total += w.weight;
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
  // Brute force: 99% of exp(-0.05 h) lies in the first ~92 poses.
  double z = 0, cumulative = 0;
  for (float v : informative) z += std::exp(static_cast<double>(v));
  std::size_t needed = 0;
  while (cumulative < 0.99 * z) cumulative += std::exp(static_cast<double>(informative[needed++]));
  EXPECT_EQ(p.kept.size(), needed);
}

TEST(Posterior, TheFastExpMatchesExpOverTheWindow) {
  // The reducer sums exp(score - max) with its own vectorised exp: it must match the library's.
  double worst = 0;
  for (float x = 0; x > -87; x -= 0.00731f) {
    const double truth = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(em::fast_exp_nonpositive(x) - truth) / truth);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(em::fast_exp_nonpositive(-100.0f), 0.0f);
  EXPECT_FLOAT_EQ(em::fast_exp_nonpositive(0.0f), 1.0f);
}

TEST(Posterior, RunsOfOneClassGiveWhatSingleAddsGive) {
  // add_run streams a row of scores of one class at once (vectorised): the posterior, the kept
  // hypotheses and the class evidences are those of adding them one by one.
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(-500, 4);
  const int K = 4, runs = 300, length = 37;
  std::vector<float> scores(static_cast<std::size_t>(runs * length));
  for (auto& v : scores) v = normal(rng);
  PosteriorSettings s;
  s.mass = 0.999;
  s.cap = 5000;
  em::PosteriorReducer one, many;
  one.reset(s, K), many.reset(s, K);
  for (int r = 0; r < runs; ++r) {
    const int k = (r * 7) % K;
    const float* row = scores.data() + static_cast<std::size_t>(r * length);
    many.add_run(k, static_cast<std::int64_t>(r) * length, row, length);
    for (int i = 0; i < length; ++i) one.add(k, static_cast<std::int64_t>(r) * length + i, row[i]);
  }
  const auto a = one.finish(), b = many.finish();
  EXPECT_EQ(b.scored, a.scored);
  EXPECT_EQ(b.best_id, a.best_id);
  EXPECT_NEAR(b.log_evidence, a.log_evidence, 1e-5);
  for (int k = 0; k < K; ++k) EXPECT_NEAR(b.class_posterior[static_cast<std::size_t>(k)], a.class_posterior[static_cast<std::size_t>(k)], 1e-5);
  ASSERT_EQ(b.kept.size(), a.kept.size());
  for (std::size_t i = 0; i < a.kept.size(); ++i) {
    EXPECT_EQ(b.kept[i].id, a.kept[i].id);
    EXPECT_NEAR(b.kept[i].weight, a.kept[i].weight, 1e-5);
  }
}

TEST(Posterior, ClassesReducedElsewhereGiveWhatRunsGive) {
  // A device reduces each class's scores to (max, best, sum) in two pieces and ranks the
  // hypotheses within the window: fed through add_reduced / add_candidate, the reducer's posterior
  // and kept hypotheses are those of streaming every score through add_run.
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(-700, 3);
  const int K = 5, H = 400;
  std::vector<float> scores(static_cast<std::size_t>(K * H));
  for (auto& v : scores) v = normal(rng);
  PosteriorSettings s;
  s.mass = 0.999;
  s.cap = 300;
  s.class_temperature = 1.5;
  s.log_class_prior = {-1.0, -2.0, -1.5, -1.2, -1.8};
  em::PosteriorReducer streamed, reduced;
  streamed.reset(s, K), reduced.reset(s, K);
  for (int k = 0; k < K; ++k) {
    const float* row = scores.data() + static_cast<std::size_t>(k * H);
    streamed.add_run(k, static_cast<std::int64_t>(k) * H, row, H);
    const float top = *std::max_element(row, row + H);
    std::vector<bool> piece_best(static_cast<std::size_t>(H), false);  // entered by add_reduced
    for (int half = 0; half < 2; ++half) {  // two pieces: the second merges into the first
      const int first = half * H / 2, end = first + H / 2;
      float m = row[first];
      std::int64_t b = first;
      for (int h = first; h < end; ++h)
        if (row[h] > m) m = row[h], b = h;
      double sum = 0;
      for (int h = first; h < end; ++h) sum += std::exp(static_cast<double>(row[h]) - m);
      reduced.add_reduced(k, m, sum, static_cast<std::int64_t>(k) * H + b, end - first);
      piece_best[static_cast<std::size_t>(b)] = true;
    }
    for (int h = 0; h < H; ++h)
      if (!piece_best[static_cast<std::size_t>(h)] && row[h] > top - 14) reduced.add_candidate(k, static_cast<std::int64_t>(k) * H + h, row[h]);
  }
  const auto a = streamed.finish(), b = reduced.finish();
  EXPECT_EQ(b.scored, a.scored);
  EXPECT_EQ(b.best_id, a.best_id);
  EXPECT_NEAR(b.log_evidence, a.log_evidence, 1e-4);
  for (int k = 0; k < K; ++k) EXPECT_NEAR(b.class_posterior[static_cast<std::size_t>(k)], a.class_posterior[static_cast<std::size_t>(k)], 1e-5);
  ASSERT_GT(a.kept.size(), 20u);
  ASSERT_EQ(b.kept.size(), a.kept.size());
  for (std::size_t i = 0; i < a.kept.size(); ++i) {
    EXPECT_EQ(b.kept[i].id, a.kept[i].id);
    EXPECT_NEAR(b.kept[i].weight, a.kept[i].weight, 1e-5);
  }
}

TEST(Posterior, KthLargestMatchesASort) {
  // The prune's selection: any rank, with ties (flat classes score many poses alike) and wide ranges.
  std::mt19937 rng(12);
  std::normal_distribution<double> normal(-300, 5);
  std::vector<double> scratch;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> v(static_cast<std::size_t>(1 + trial * 997));
    for (auto& x : v) x = trial % 3 == 0 ? std::round(normal(rng)) : normal(rng);  // every third: many ties
    if (trial % 4 == 1) v.front() = -1e6;                                          // one far outlier
    auto sorted = v;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    for (std::size_t m : {std::size_t{1}, v.size() / 4 + 1, v.size() / 2 + 1, v.size()})
      EXPECT_EQ(em::kth_largest(v, m, scratch), sorted[m - 1]) << "trial " << trial << ", m " << m;
  }
  std::vector<double> same(100, 2.5);
  EXPECT_EQ(em::kth_largest(same, 40, scratch), 2.5);
}

TEST(Posterior, ABroadPosteriorKeepsExactlyTheBestOnes) {
  // 10^5 hypotheses of one class, all within the window: the candidate list fills and is pruned
  // again and again. Each prune keeps the best quarter and sets the admission floor, so what
  // reaches finish() is exactly the N best hypotheses seen (N bounded by the list), none below.
  em::PosteriorReducer r;
  PosteriorSettings s;
  s.mass = 1.0;
  s.cap = 1 << 20;
  r.reset(s, 1);
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> u(-10, 0);
  std::vector<float> v(100000);
  for (auto& x : v) x = u(rng);
  for (std::size_t first = 0; first < v.size(); first += 72)
    r.add_run(0, static_cast<std::int64_t>(first), v.data() + first, static_cast<int>(std::min<std::size_t>(72, v.size() - first)));
  const auto p = r.finish();
  ASSERT_GE(p.kept.size(), 4096u);
  ASSERT_LT(p.kept.size(), 16384u);
  std::vector<std::size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return v[a] > v[b]; });
  std::vector<std::int64_t> best(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(p.kept.size())), kept;
  for (const auto& w : p.kept) kept.push_back(w.id);
  std::sort(best.begin(), best.end());
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(kept, best);
  EXPECT_EQ(p.kept.front().id, static_cast<std::int64_t>(order[0]));
}

// The temperature found for a target class ESS gives that mean ESS when the reducer tempers the
// same evidences with it (class log-likelihoods hundreds apart, as with true poses, and priors).
TEST(Posterior, TheTemperatureForAClassEssMeetsItInTheReducer) {
  std::mt19937 rng(5);
  std::normal_distribution<double> spread(0, 300);
  const int K = 3;
  std::vector<std::vector<double>> evidence(500, std::vector<double>(K));
  for (auto& row : evidence)
    for (double& v : row) v = -5000 + spread(rng);
  const std::vector<double> prior = {std::log(0.5), std::log(0.3), std::log(0.2)};
  const auto reduced_ess = [&](double T) {
    em::PosteriorReducer r;
    PosteriorSettings s;
    s.poses = Reduce::maximize;
    s.class_temperature = T;
    s.log_class_prior = prior;
    double total = 0;
    for (const auto& row : evidence) {
      r.reset(s, K);
      for (int k = 0; k < K; ++k) r.add(k, k, static_cast<float>(row[static_cast<std::size_t>(k)] + 5000));
      total += em::class_ess(r.finish().class_posterior);
    }
    return total / static_cast<double>(evidence.size());
  };
  EXPECT_LT(reduced_ess(2), 1.05);  // 1 / (1 - 0.5): practically hard
  for (double target : {1.5, 2.0, 2.5}) {
    const double T = em::temperature_for_class_ess(evidence, prior, target);
    EXPECT_GT(T, 10);
    EXPECT_NEAR(reduced_ess(T), target, 0.01) << "T " << T;
  }
  EXPECT_EQ(em::temperature_for_class_ess(evidence, prior, 1.0), 1);
  EXPECT_EQ(em::temperature_for_class_ess(evidence, prior, 3.5, 1e6), 1e6);  // beyond K: never met
  EXPECT_DOUBLE_EQ(em::class_ess({0.5, 0.5, 0}), 2);
}
