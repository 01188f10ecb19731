// The posterior over one particle's hidden variables, reduced from log-scores that arrive in
// chunks (DESIGN §3): per class a streaming log-sum-exp over its poses (or their maximum), the
// class posterior from those evidences (tempered, with priors, or hard), and the hypotheses that
// hold the posterior mass. The same code serves 2D and 3D, coarse and fine passes.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace emcryo::em {

/// What a hidden variable contributes: every hypothesis weighted by its posterior, or only the best.
enum class Reduce { marginalize, maximize };

struct PosteriorSettings {
  Reduce classes = Reduce::marginalize;  // maximize = hard classification
  Reduce poses = Reduce::marginalize;    // orientation and shift within a class
  double class_temperature = 1;          // > 1 flattens the class posterior (annealing)
  std::vector<double> log_class_prior;   // log pi_k; empty = uniform
  double mass = 0.999;                   // the kept hypotheses hold this fraction of the posterior
  int cap = 64;                          // and are at most this many
  /// Classes whose (tempered) posterior reaches this keep at least their best hypothesis, so a
  /// later pass can still weigh them.
  double class_floor = 1e-4;
};

/// A hypothesis: its class and an index that the caller maps back to its pose.
struct WeightedHypothesis {
  float weight = 0;  // normalised posterior (kept hypotheses sum to 1), or the log-score before finish
  int k = 0;
  std::int64_t id = 0;
};

struct Posterior {
  std::vector<WeightedHypothesis> kept;  // best first
  std::vector<double> class_posterior;   // per class, sums to 1
  std::vector<double> class_log_evidence;  // per class: log-sum-exp (or max) of its scores; -inf if none
  int best_class = 0;
  std::int64_t best_id = 0;              // the single most probable hypothesis
  float best_score = 0;
  double log_evidence = 0;               // log sum_k pi_k exp(evidence_k), untempered
  std::int64_t scored = 0;               // hypotheses seen
};

/// Streams the scores of one particle. Reuse one reducer per thread (reset per particle): it
/// allocates only while its candidate list grows.
class PosteriorReducer {
 public:
  static constexpr float kWindow = 14;  // log-score below the class best that can still matter (e^-14)
  void reset(const PosteriorSettings& settings, int classes);
  /// One hypothesis of class k with log-score -D^2 (up to a per-particle constant).
  void add(int k, std::int64_t id, float log_score) {
    ClassSum& c = classes_[static_cast<std::size_t>(k)];
    ++scored_;
    if (log_score > c.max) {
      c.sum = c.sum * std::exp(c.max - log_score) + 1.0;
      c.max = log_score;
      c.best = id;
    } else {
      c.sum += std::exp(log_score - c.max);
    }
    if (admits(k, id, log_score)) {
      candidates_.push_back({log_score, k, id});
      if (candidates_.size() >= kPruneAt) prune();
    }
  }
  /// Hypotheses first_id, first_id + 1, ... of class k with these log-scores: the same as add()
  /// for each, in one vectorised pass (the class's maximum first, then the sum of exponentials).
  void add_run(int k, std::int64_t first_id, const float* log_scores, int count);
  /// `count` hypotheses of class k reduced elsewhere (a device: ScoringBackend::reduce_kept): their
  /// maximum, its hypothesis and sum exp(s - max), merged as add_run() merges a run; the best enters
  /// the candidates as add_run() would enter it.
  void add_reduced(int k, float max, double sum, std::int64_t best, std::int64_t count);
  /// A hypothesis that the same reduction ranked among those that can hold mass: a candidate for
  /// finish(), the class sums untouched (add_reduced() holds them).
  void add_candidate(int k, std::int64_t id, float log_score) { candidates_.push_back({log_score, k, id}); }
  Posterior finish();

 private:
  struct ClassSum {
    float max;
    double sum;
    std::int64_t best;
    /// The log-score a hypothesis of this class needed to rank among those kept by the last
    /// ranking prune (prune()): one below it would have been dropped then, so it is not admitted
    /// now. Broad posteriors (10^5 hypotheses per particle within the window) otherwise fill and
    /// prune the list again and again.
    float floor;
  };
  static constexpr std::size_t kPruneAt = 16384;
  /// Whether a hypothesis enters the candidate list: within the window below its class's best,
  /// and above the class's admission floor (or the class's best so far, which is always kept).
  bool admits(int k, std::int64_t id, float log_score) const {
    const ClassSum& c = classes_[static_cast<std::size_t>(k)];
    return log_score > c.max - kWindow && (log_score > c.floor || id == c.best);
  }
  /// A new maximum `max` (hypothesis `best`) for class c: its sum of exponentials rescaled to it.
  static void raise_class_max(ClassSum& c, float max, std::int64_t best);
  void prune();
  void sort_best_first(std::vector<WeightedHypothesis>& weighted);
  PosteriorSettings settings_;
  std::vector<ClassSum> classes_;
  std::vector<WeightedHypothesis> candidates_;  // weight holds the log-score until finish()
  std::int64_t scored_ = 0;
  std::vector<std::uint32_t> order_, spare_, bits_;  // finish()'s scratch, kept between particles
  std::vector<double> keys_, ranked_;                // prune()'s scratch
  std::vector<WeightedHypothesis> sorted_;
};

/// A class posterior's effective number of classes, 1 / sum_k p_k^2: 1 for a hard assignment, K
/// for a flat one. Class similarity (cryoSPARC's "class ESS") is stated as a target for its mean.
double class_ess(const std::vector<double>& posterior);

/// The class temperature T >= 1 at which the posteriors p_k ~ pi_k exp(L_k / T) of the particles'
/// class log-evidences L (one row per particle, as Posterior::class_log_evidence; -inf: not
/// scored) and log priors (empty: uniform), tempered as PosteriorReducer tempers them, have a mean
/// class ESS of `target`: found by bisection over log T (the ESS grows with T). 1 where the
/// untempered posteriors already reach the target; `max_temperature` where even it does not.
double temperature_for_class_ess(const std::vector<std::vector<double>>& log_evidence, const std::vector<double>& log_prior,
                                 double target, double max_temperature = 1e9);

/// The reducer's exp for x <= 0 (float, vectorisable; relative error below 3e-7). For its test.
float fast_exp_nonpositive(float x);

/// The m-th largest of `values` (1 <= m <= size; `scratch` is reused): the reducer's prune ranks
/// with it. For its test.
double kth_largest(const std::vector<double>& values, std::size_t m, std::vector<double>& scratch);

}  // namespace emcryo::em
