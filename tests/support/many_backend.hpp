// A CPU backend that takes the E-step's batched path (ScoringBackend::scores_many) without a GPU:
// score_many is the seam's default (each particle's rows built on the host from its ParticleRows,
// then scored one request after another), so its answers must be the per-particle path's, bit for bit.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::test {

class ManyAtOnceBackend final : public em::ScoringBackend {
 public:
  std::string name() const override { return "CPU, passes scored many at once"; }
  void plan(int slots, int particles, int templates) override { cpu_->plan(slots, particles, templates); }
  void score(const em::ScoreRequest& request, float* out, int slot) override { cpu_->score(request, out, slot); }
  bool scores_many(const em::TemplateSource&) const override { return true; }
  void score_many(const std::vector<em::ScoreRequest>& requests, const std::vector<float*>& outs) override {
    batches_ += 1, requests_ += static_cast<long>(requests.size());
    ScoringBackend::score_many(requests, outs);
  }
  em::BackendStats stats() const override { return cpu_->stats(); }
  long batches() const { return batches_; }
  long requests() const { return requests_; }

 private:
  std::unique_ptr<em::ScoringBackend> cpu_ = em::make_cpu_backend();
  long batches_ = 0, requests_ = 0;
};

}  // namespace emcryo::test
