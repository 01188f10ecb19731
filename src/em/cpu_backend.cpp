#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "emcryo/core/error.hpp"
#include "emcryo/em/scoring_backend.hpp"

namespace emcryo::em {

namespace {

class CpuBackend final : public ScoringBackend {
 public:
  std::string name() const override { return "CPU (OpenBLAS)"; }

  void plan(int slots, int particles, int templates) override {
    slots_.resize(static_cast<std::size_t>(std::max(1, slots)));
    for (auto& s : slots_) s.norms.resize(static_cast<std::size_t>(std::max(1, particles)) * static_cast<std::size_t>(std::max(1, templates)));
  }

  void score(const ScoreRequest& q, float* out, int slot) override {
    if (slot < 0 || static_cast<std::size_t>(slot) >= slots_.size()) fail("scoring: slot {} outside the plan ({} slots)", slot, slots_.size());
    Slot& s = slots_[static_cast<std::size_t>(slot)];
    const std::size_t need = static_cast<std::size_t>(q.particles) * static_cast<std::size_t>(q.template_count);
    if (s.norms.size() < need) s.norms.resize(need);  // a call larger than planned still works
    const auto start = std::chrono::steady_clock::now();
    const int K = 2 * q.frequencies;
    // Cross term x(r, j) and norm term n(b, j): the two GEMMs of the E-step.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, q.row_count, q.template_count, K, 1.0f, q.rows, q.row_stride,
                q.templates, q.template_stride, 0.0f, out, q.template_count);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, q.particles, q.template_count, q.frequencies, 1.0f, q.ctf2,
                q.ctf2_stride, q.power, q.power_stride, 0.0f, s.norms.data(), q.template_count);
    const std::size_t J = static_cast<std::size_t>(q.template_count);
    for (int r = 0; r < q.row_count; ++r) {
      float* o = out + static_cast<std::size_t>(r) * J;
      const float* nrm = s.norms.data() + static_cast<std::size_t>(r % q.particles) * J;
      if (q.cross_correlation)
        for (std::size_t j = 0; j < J; ++j) o[j] /= std::sqrt(std::max(nrm[j], 1e-30f));
      else
        for (std::size_t j = 0; j < J; ++j) o[j] -= 0.5f * nrm[j];
    }
    s.stats.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    s.stats.flops += 2.0 * q.row_count * q.template_count * K + 2.0 * q.particles * q.template_count * q.frequencies;
  }

  BackendStats stats() const override {
    BackendStats total;
    for (const auto& s : slots_) total.flops += s.stats.flops, total.seconds += s.stats.seconds;
    return total;
  }

 private:
  struct Slot {
    std::vector<float> norms;
    BackendStats stats;
  };
  std::vector<Slot> slots_;
};

}  // namespace

std::unique_ptr<ScoringBackend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace emcryo::em
