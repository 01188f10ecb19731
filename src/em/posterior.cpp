#include "emcryo/em/posterior.hpp"

#include <algorithm>
#include <array>
#include <functional>
#include <bit>
#include <cstdint>
#include <limits>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace emcryo::em {

namespace {

/// exp(x) for x <= 0 in float, in a form the compiler vectorises: 2^(x log2 e) split into an
/// integer power of two and exp(r) for |r| <= ln2/2 (a degree-6 Taylor polynomial, relative
/// error below 2e-7). Below -87 it returns 0 (where expf underflows too).
inline float exp_nonpositive(float x) {
  const float clamped = std::max(x, -87.0f);
  const float n = std::floor(clamped * 1.44269504f + 0.5f);
  const float r = (clamped - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 as hi + lo (Cody-Waite)
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<std::int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

}  // namespace

float fast_exp_nonpositive(float x) { return exp_nonpositive(x); }

double kth_largest(const std::vector<double>& values, std::size_t m, std::vector<double>& scratch) {
  // A histogram of the values' range, then an exact selection inside the one bin that holds the
  // m-th: two branch-free passes and a small select, where a comparison select over all of them
  // mispredicts about every other branch (the reducer's prune ranks ~10^4 keys at a time).
  const auto [low, high] = std::minmax_element(values.begin(), values.end());
  const double lo = *low, hi = *high;
  if (!(hi > lo)) return hi;
  constexpr int kBins = 1024;
  const double scale = (kBins - 1) / (hi - lo);
  const auto bin = [&](double v) { return static_cast<int>((hi - v) * scale); };  // 0 holds the largest
  std::array<std::uint32_t, kBins + 1> count{};  // + 1: the lowest value's bin, should rounding reach kBins
  for (double v : values) ++count[static_cast<std::size_t>(bin(v))];
  int b = 0;
  std::size_t above = 0;  // values in bins before b
  while (above + count[static_cast<std::size_t>(b)] < m) above += count[static_cast<std::size_t>(b++)];
  scratch.clear();
  for (double v : values)
    if (bin(v) == b) scratch.push_back(v);
  const auto nth = scratch.begin() + static_cast<std::ptrdiff_t>(m - above - 1);
  std::nth_element(scratch.begin(), nth, scratch.end(), std::greater<>());
  return *nth;
}

namespace {

/// The largest of s[0, count) (count > 0).
float run_maximum(const float* s, int count) {
  int i = 0;
  float top = -std::numeric_limits<float>::infinity();
#ifdef __AVX2__
  // GCC leaves a plain max loop (and an omp simd max reduction) scalar: 8 lanes by hand.
  __m256 lanes = _mm256_set1_ps(top);
  for (; i + 8 <= count; i += 8) lanes = _mm256_max_ps(lanes, _mm256_loadu_ps(s + i));
  alignas(32) float eight[8];
  _mm256_store_ps(eight, lanes);
  top = *std::max_element(eight, eight + 8);
#endif
  for (; i < count; ++i) top = std::max(top, s[i]);
  return top;
}

/// Bit l set where s[l] > floor, for the 8 values at s (a prefilter: most runs' values lie far below).
inline unsigned above_floor8(const float* s, float floor) {
#ifdef __AVX2__
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s), _mm256_set1_ps(floor), _CMP_GT_OQ)));
#else
  unsigned bits = 0;
  for (int l = 0; l < 8; ++l) bits |= (s[l] > floor ? 1u : 0u) << l;
  return bits;
#endif
}

}  // namespace

void PosteriorReducer::add_run(int k, std::int64_t first_id, const float* s, int count) {
  if (count <= 0) return;
  ClassSum& c = classes_[static_cast<std::size_t>(k)];
  scored_ += count;
  const float top = run_maximum(s, count);
  if (top > c.max) {
    int first = 0;  // the first of the run at its maximum, as add() would keep
    while (s[first] != top) ++first;
    raise_class_max(c, top, first_id + first);
  }
  // Maximised poses keep each class's best alone (finish() reads neither the sums nor the
  // candidates): refine's cross-correlation first iteration, ~2 x 10^8 scores on a held-out set.
  if (settings_.poses == Reduce::maximize) return;
  const float max = c.max;
  float partial = 0;
#pragma omp simd reduction(+ : partial)
  for (int j = 0; j < count; ++j) partial += exp_nonpositive(s[j] - max);
  c.sum += partial;
  // As admits(), with the class's values read once per run. Groups of 8 are screened against the
  // floor first (most values of a run lie far below it); a prune inside the loop moves the floor,
  // and the rest of its group is screened again.
  float floor = std::max(max - kWindow, c.floor);
  const std::int64_t best_at = c.best - first_id;  // the class's best inside this run, if it is (a prune keeps it)
  const auto screen = [&](int j, unsigned from_lane) {
    unsigned bits = above_floor8(s + j, floor);
    if (best_at >= j && best_at < j + 8) bits |= 1u << (best_at - j);
    return bits & ~((1u << from_lane) - 1);
  };
  const auto consider = [&](int j) {  // whether a prune moved the floor
    if (!(s[j] > floor) && j != best_at) return false;
    candidates_.push_back({s[j], k, first_id + j});
    if (candidates_.size() < kPruneAt) return false;
    prune();
    floor = std::max(max - kWindow, c.floor);
    return true;
  };
  int j = 0;
  for (; j + 8 <= count; j += 8)
    for (unsigned bits = screen(j, 0); bits != 0;) {
      const auto lane = static_cast<unsigned>(std::countr_zero(bits));
      bits = consider(j + static_cast<int>(lane)) ? (lane < 7 ? screen(j, lane + 1) : 0u) : bits & (bits - 1);
    }
  for (; j < count; ++j) consider(j);
}

void PosteriorReducer::raise_class_max(ClassSum& c, float max, std::int64_t best) {
  c.sum = c.best < 0 ? 0.0 : c.sum * std::exp(static_cast<double>(c.max) - max);
  c.max = max;
  c.best = best;
}

void PosteriorReducer::add_reduced(int k, float max, double sum, std::int64_t best, std::int64_t count) {
  if (count <= 0) return;
  ClassSum& c = classes_[static_cast<std::size_t>(k)];
  scored_ += count;
  if (c.best < 0 || max > c.max) raise_class_max(c, max, best);
  c.sum += sum * std::exp(static_cast<double>(max) - c.max);  // exactly sum where max is the class's
  candidates_.push_back({max, k, best});
}

void PosteriorReducer::sort_best_first(std::vector<WeightedHypothesis>& weighted) {
  // Best first; ties by class then id so that the order never depends on arrival. Early class2d
  // iterations keep ~10^4 hypotheses per particle, where a comparison sort of the records took a
  // fifth of the iteration: a stable LSD radix sort on the weights' bits (weights are >= 0, so
  // their bits order as they do; complemented for descending order), 3 passes of 11 bits.
  const std::size_t n = weighted.size();
  order_.resize(n), spare_.resize(n), bits_.resize(n);
  for (std::size_t i = 0; i < n; ++i) order_[i] = static_cast<std::uint32_t>(i), bits_[i] = ~std::bit_cast<std::uint32_t>(weighted[i].weight);
  constexpr int kDigit = 11;
  std::array<std::uint32_t, (1u << kDigit) + 1> count{};
  for (int shift = 0; shift < 32; shift += kDigit) {
    count.fill(0);
    for (std::size_t i = 0; i < n; ++i) ++count[((bits_[order_[i]] >> shift) & ((1u << kDigit) - 1)) + 1];
    for (std::size_t d = 1; d < count.size(); ++d) count[d] += count[d - 1];
    for (std::size_t i = 0; i < n; ++i) spare_[count[(bits_[order_[i]] >> shift) & ((1u << kDigit) - 1)]++] = order_[i];
    order_.swap(spare_);
  }
  sorted_.resize(n);
  for (std::size_t i = 0; i < n; ++i) sorted_[i] = weighted[order_[i]];
  const auto tie = [](const WeightedHypothesis& a, const WeightedHypothesis& b) { return a.k != b.k ? a.k < b.k : a.id < b.id; };
  for (std::size_t i = 0; i < n;) {
    std::size_t end = i + 1;
    while (end < n && sorted_[end].weight == sorted_[i].weight) ++end;
    if (end - i > 1) std::sort(sorted_.begin() + static_cast<std::ptrdiff_t>(i), sorted_.begin() + static_cast<std::ptrdiff_t>(end), tie);
    i = end;
  }
  weighted.swap(sorted_);
}

void PosteriorReducer::reset(const PosteriorSettings& settings, int classes) {
  settings_ = settings;
  classes_.assign(static_cast<std::size_t>(classes),
                  {-std::numeric_limits<float>::infinity(), 0.0, -1, -std::numeric_limits<float>::infinity()});
  candidates_.clear();
  scored_ = 0;
}

void PosteriorReducer::prune() {
  // Drop what has fallen out of the window below its class's best so far.
  std::erase_if(candidates_, [this](const WeightedHypothesis& c) {
    return c.weight <= classes_[static_cast<std::size_t>(c.k)].max - kWindow;
  });
  if (candidates_.size() < kPruneAt / 2) return;
  // A flat posterior: keep the most probable quarter, ranked by their share of the whole
  // posterior as it stands. Ranking within each class alone fails where some classes are flat (an
  // empty class average scores every pose alike): their thousands of ties would push out the
  // hypotheses of the class that holds the mass. Each class's best stays whatever its rank: the
  // class posterior and the mass cut need it.
  std::vector<double> class_key(classes_.size());
  for (std::size_t k = 0; k < classes_.size(); ++k) {
    const ClassSum& c = classes_[k];
    const double prior = settings_.log_class_prior.empty() ? 0.0 : settings_.log_class_prior[k];
    const double evidence = c.max + std::log(std::max(c.sum, 1.0));
    class_key[k] = (prior + evidence) / settings_.class_temperature - evidence;
  }
  const auto is_best = [this](const WeightedHypothesis& c) { return c.id == classes_[static_cast<std::size_t>(c.k)].best; };
  const auto bests = static_cast<std::size_t>(std::partition(candidates_.begin(), candidates_.end(), is_best) - candidates_.begin());
  const std::size_t keep = std::max(bests, kPruneAt / 4);
  if (keep >= candidates_.size()) return;
  // The keys of the rest on a plain array, ranked there (a selection whose comparator looked the
  // class keys up made this prune the reducer's largest cost): the m-th largest key is the bar;
  // the rest above it stay, and of those at it the first in the list, m in all.
  const std::size_t m = keep - bests, n = candidates_.size() - bests;
  keys_.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const WeightedHypothesis& c = candidates_[bests + i];
    keys_[i] = class_key[static_cast<std::size_t>(c.k)] + c.weight;
  }
  const double bar = kth_largest(keys_, std::max<std::size_t>(m, 1), ranked_);
  std::size_t ties = m - static_cast<std::size_t>(std::count_if(keys_.begin(), keys_.end(), [bar](double key) { return key > bar; }));
  std::size_t kept = bests;
  for (std::size_t i = 0; i < n; ++i) {
    // Branch-free: every candidate is copied, and the next slot advances past the kept ones.
    const bool tie = keys_[i] == bar && ties > 0;
    ties -= tie;
    candidates_[kept] = candidates_[bests + i];
    kept += keys_[i] > bar || tie;
  }
  candidates_.resize(kept);
  // The bar sets each class's floor: a later hypothesis that ranks no better would have been
  // dropped by this prune, and is not admitted. What changes is which far-tail hypotheses reach
  // finish() (those that came after the last prune and rank below its kept quarter), not the
  // class sums nor the best hypotheses. At class temperature 1 the key of a hypothesis never
  // changes; above 1 the floor holds the keys as this prune saw them.
  for (std::size_t k = 0; k < classes_.size(); ++k) classes_[k].floor = static_cast<float>(bar - class_key[k]);
}

double class_ess(const std::vector<double>& posterior) {
  double sq = 0;
  for (double p : posterior) sq += p * p;
  return sq > 0 ? 1 / sq : 0;
}

namespace {

/// Mean class ESS of the rows of `log_evidence` tempered at T (priors untempered, as finish()).
double mean_tempered_ess(const std::vector<std::vector<double>>& log_evidence, const std::vector<double>& log_prior, double T,
                         std::vector<double>& scratch) {
  double total = 0;
  for (const auto& row : log_evidence) {
    scratch.assign(row.size(), 0.0);
    double top = -std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < row.size(); ++k) {
      scratch[k] = (log_prior.empty() ? 0.0 : log_prior[k]) + row[k] / T;
      top = std::max(top, scratch[k]);
    }
    double norm = 0;
    for (double& v : scratch) norm += v = std::isfinite(v) ? std::exp(v - top) : 0.0;
    for (double& v : scratch) v /= norm;
    total += class_ess(scratch);
  }
  return log_evidence.empty() ? 0 : total / static_cast<double>(log_evidence.size());
}

}  // namespace

double temperature_for_class_ess(const std::vector<std::vector<double>>& log_evidence, const std::vector<double>& log_prior,
                                 double target, double max_temperature) {
  std::vector<double> scratch;
  if (mean_tempered_ess(log_evidence, log_prior, 1, scratch) >= target) return 1;
  if (mean_tempered_ess(log_evidence, log_prior, max_temperature, scratch) < target) return max_temperature;
  double lo = 0, hi = std::log(max_temperature);  // log T: the ESS is below the target at lo, at or above it at hi
  for (int i = 0; i < 60 && hi - lo > 1e-6; ++i) {
    const double mid = 0.5 * (lo + hi);
    (mean_tempered_ess(log_evidence, log_prior, std::exp(mid), scratch) < target ? lo : hi) = mid;
  }
  return std::exp(hi);
}

Posterior PosteriorReducer::finish() {
  const std::size_t K = classes_.size();
  Posterior out;
  out.scored = scored_;
  out.class_log_evidence.assign(K, -std::numeric_limits<double>::infinity());
  out.class_posterior.assign(K, 0.0);
  const bool marginal_poses = settings_.poses == Reduce::marginalize;
  double top = -std::numeric_limits<double>::infinity(), top_raw = top;
  std::vector<double> tempered(K, top);
  for (std::size_t k = 0; k < K; ++k) {
    const ClassSum& c = classes_[k];
    if (c.best < 0) continue;
    out.class_log_evidence[k] = marginal_poses ? c.max + std::log(c.sum) : c.max;
    const double prior = settings_.log_class_prior.empty() ? 0.0 : settings_.log_class_prior[k];
    tempered[k] = prior + out.class_log_evidence[k] / settings_.class_temperature;
    top = std::max(top, tempered[k]);
    top_raw = std::max(top_raw, prior + out.class_log_evidence[k]);
  }
  double norm = 0, evidence = 0;
  for (std::size_t k = 0; k < K; ++k) {
    if (classes_[k].best < 0) continue;
    out.class_posterior[k] = std::exp(tempered[k] - top);
    norm += out.class_posterior[k];
    const double prior = settings_.log_class_prior.empty() ? 0.0 : settings_.log_class_prior[k];
    evidence += std::exp(prior + out.class_log_evidence[k] - top_raw);
  }
  out.log_evidence = top_raw + std::log(evidence);
  for (std::size_t k = 0; k < K; ++k) {
    out.class_posterior[k] /= norm;
    if (out.class_posterior[k] > out.class_posterior[static_cast<std::size_t>(out.best_class)]) out.best_class = static_cast<int>(k);
  }
  if (settings_.classes == Reduce::maximize)
    for (std::size_t k = 0; k < K; ++k) out.class_posterior[k] = static_cast<int>(k) == out.best_class ? 1.0 : 0.0;

  // Weights: P(k) P(pose | k). Maximised poses keep only each class's best.
  std::vector<WeightedHypothesis> weighted;
  if (marginal_poses) {
    weighted.reserve(candidates_.size());
    for (const auto& c : candidates_) {
      const ClassSum& s = classes_[static_cast<std::size_t>(c.k)];
      const double w = out.class_posterior[static_cast<std::size_t>(c.k)] * std::exp(static_cast<double>(c.weight) - s.max) / s.sum;
      weighted.push_back({static_cast<float>(w), c.k, c.id});
    }
  } else {
    for (std::size_t k = 0; k < K; ++k)
      if (classes_[k].best >= 0) weighted.push_back({static_cast<float>(out.class_posterior[k]), static_cast<int>(k), classes_[k].best});
  }
  sort_best_first(weighted);
  const auto best_class = static_cast<std::size_t>(out.best_class);
  out.best_id = classes_[best_class].best;
  out.best_score = classes_[best_class].max;

  // The mass cut: the most probable hypotheses holding `mass` of the posterior, at most `cap`,
  // plus the best of each class that still matters.
  double cumulative = 0;
  std::vector<bool> class_seen(K, false);
  for (const auto& w : weighted) {
    const bool needed = cumulative < settings_.mass && static_cast<int>(out.kept.size()) < settings_.cap;
    const bool class_best = !class_seen[static_cast<std::size_t>(w.k)] && w.id == classes_[static_cast<std::size_t>(w.k)].best &&
                            out.class_posterior[static_cast<std::size_t>(w.k)] >= settings_.class_floor;
    if (!needed && !class_best) continue;
    if (w.weight <= 0) continue;
    cumulative += w.weight;
    class_seen[static_cast<std::size_t>(w.k)] = true;
    out.kept.push_back(w);
  }
  if (out.kept.empty() && !weighted.empty()) {
    // Every weight underflowed in float: the most probable hypothesis alone carries the particle.
    out.kept.push_back(weighted.front());
    out.kept.front().weight = 1;
    cumulative = 1;
  }
  for (auto& w : out.kept) w.weight = static_cast<float>(w.weight / cumulative);
  return out;
}

}  // namespace emcryo::em
