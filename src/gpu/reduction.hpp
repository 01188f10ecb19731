// A batch's shared coarse scores kept on the GPU and reduced there (internal to src/gpu; the CUDA
// backend's score_kept / reduce_kept): per particle and class the streaming log-sum-exp terms of
// em::PosteriorReducer (maximum, its hypothesis, sum of exp(s - max)), and the hypotheses that can
// hold posterior mass, selected by a histogram of their posterior log-weights instead of a sort.
// Only those cross the bus: a class2d batch of 256 particles x 25 shifts x 3,600 templates is
// 92 MB of scores but ~2 MB reduced. Like prepare.hpp, no CUDA type crosses this header.
#pragma once
#include <cstddef>
#include <memory>

#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::gpu {

class KeptScoreReducer {
 public:
  explicit KeptScoreReducer(int device);
  ~KeptScoreReducer();
  KeptScoreReducer(const KeptScoreReducer&) = delete;
  KeptScoreReducer& operator=(const KeptScoreReducer&) = delete;
  /// The batch's scores on the device, rows (shift-major) x templates floats; checked against
  /// the card's free memory.
  float* scores(const em::KeptScores& shape);
  /// Reduces what scores() holds, after every stream that wrote it has finished.
  void reduce(const em::ScoreReduction& reduction, em::ReducedScores& out);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace emcryo::gpu
