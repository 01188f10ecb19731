// An M-step by stochastic gradient descent (ab-initio, Punjani et al. 2017): a minibatch's
// back-projection sums give V_b = sum(w C X) / (sum(w C^2) + lambda), and V_b - V is the
// gradient of the minibatch's negative log-posterior preconditioned by its curvature. The map
// steps along it with momentum, then is held non-negative inside a soft window.
#pragma once
#include <vector>

#include "emcryo/em/projector.hpp"

namespace emcryo::em {

class SgdMap {
 public:
  SgdMap() = default;
  SgdMap(std::vector<float> map, int n) : n_(n), map_(std::move(map)), velocity_(map_.size(), 0.0f) {}
  SgdMap(std::vector<float> map, std::vector<float> velocity, int n) : n_(n), map_(std::move(map)), velocity_(std::move(velocity)) {}

  /// One step: velocity = momentum * velocity + rate * (V_b - V); V += velocity. `ridge` is
  /// lambda relative to the batch's mean weight per shell (it keeps sparsely sampled voxels
  /// finite); V_b is zero beyond what the batch inserted, so the map decays there.
  void step(const BackProjector& batch, double ridge, double rate, double momentum);
  /// Non-negativity (density is positive) and a soft window: V = max(V, 0) * window.
  void constrain(const std::vector<float>& window);
  /// Moves the map (and its velocity) so that its centre of mass is at the box centre, when it
  /// is more than `tolerance` voxels away; a map drifting off centre would leave the window.
  void centre(double tolerance);

  const std::vector<float>& map() const { return map_; }
  const std::vector<float>& velocity() const { return velocity_; }
  int box() const { return n_; }

 private:
  int n_ = 0;
  std::vector<float> map_, velocity_;
};

}  // namespace emcryo::em
