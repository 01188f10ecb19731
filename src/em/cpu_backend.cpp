#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "emcryo/core/error.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/em/scoring_backend.hpp"
#include "emcryo/em/volume_transforms.hpp"

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
    if (q.sampled.source) fail("scoring: the CPU backend samples no templates (internal error)");
    Slot& s = slots_[static_cast<std::size_t>(slot)];
    const std::size_t need = static_cast<std::size_t>(q.particles) * static_cast<std::size_t>(q.template_count);
    if (s.norms.size() < need) s.norms.resize(need);  // a call larger than planned still works
    const auto start = std::chrono::steady_clock::now();
    const int K = 2 * q.frequencies;
    const std::size_t J = static_cast<std::size_t>(q.template_count);
    // Norm term n(b, j), then cross term x(r, j) combined into the score, in blocks of rows. Each
    // block is one single-threaded SGEMM (OpenBLAS runs single-threaded inside a parallel region),
    // and the blocks are spread over the threads: a multi-threaded SGEMM rounds differently with
    // each thread count, blocks of a fixed size do not, so results do not depend on -j.
    const auto norm_block = [&](int first, int count) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, count, q.template_count, q.frequencies, 1.0f,
                  q.ctf2 + static_cast<std::size_t>(first) * static_cast<std::size_t>(q.ctf2_stride), q.ctf2_stride, q.power,
                  q.power_stride, 0.0f, s.norms.data() + static_cast<std::size_t>(first) * J, q.template_count);
    };
    const auto score_block = [&](int first, int count) {
      float* o = out + static_cast<std::size_t>(first) * J;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, count, q.template_count, K, 1.0f,
                  q.rows + static_cast<std::size_t>(first) * static_cast<std::size_t>(q.row_stride), q.row_stride, q.templates,
                  q.template_stride, 0.0f, o, q.template_count);
      for (int r = first; r < first + count; ++r, o += J) {
        const float* nrm = s.norms.data() + static_cast<std::size_t>(r % q.particles) * J;
        if (q.cross_correlation)
          for (std::size_t j = 0; j < J; ++j) o[j] /= std::sqrt(std::max(nrm[j], 1e-30f));
        else
          for (std::size_t j = 0; j < J; ++j) o[j] -= 0.5f * nrm[j];
      }
    };
    in_blocks(q.particles, norm_block);
    in_blocks(q.row_count, score_block);
    s.stats.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    s.stats.flops += 2.0 * q.row_count * q.template_count * K + 2.0 * q.particles * q.template_count * q.frequencies;
  }

  BackendStats stats() const override {
    BackendStats total;
    for (const auto& s : slots_) total.flops += s.stats.flops, total.seconds += s.stats.seconds;
    return total;
  }

 private:
  static constexpr int kBlockRows = 64;  // enough blocks for 16 threads on a 256-particle batch
  /// Calls f(first, count) over [0, total) in blocks of kBlockRows: across the threads when not
  /// already inside a parallel region, else in this thread. Always inside a parallel region, even
  /// for one block, so that OpenBLAS never runs a multi-threaded SGEMM.
  template <class F>
  static void in_blocks(int total, const F& f) {
    const int blocks = (total + kBlockRows - 1) / kBlockRows;
    if (omp_in_parallel()) {
      for (int b = 0; b < blocks; ++b) f(b * kBlockRows, std::min(kBlockRows, total - b * kBlockRows));
      return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int b = 0; b < blocks; ++b) f(b * kBlockRows, std::min(kBlockRows, total - b * kBlockRows));
  }
  struct Slot {
    std::vector<float> norms;
    BackendStats stats;
  };
  std::vector<Slot> slots_;
};

}  // namespace

void ScoringBackend::score_many(const std::vector<ScoreRequest>& requests, const std::vector<float*>& outs) {
  std::vector<float> rows;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    ScoreRequest q = requests[i];
    if (!q.rows) {
      if (!q.particle_rows.list || q.particles != 1) fail("scoring backend {}: a request without rows (internal error)", name());
      rows.resize(static_cast<std::size_t>(q.row_count) * 2 * static_cast<std::size_t>(q.frequencies));
      build_particle_rows(q.particle_rows, q.row_count, q.frequencies, rows.data());
      q.rows = rows.data(), q.row_stride = 2 * q.frequencies;
    }
    score(q, outs[i], 0);
  }
}

// Backends without device sums never get these calls (sums_templates() is false).
void ScoringBackend::begin_template_sums(int, int) { fail("scoring backend {}: no device sums (internal error)", name()); }
void ScoringBackend::add_template_sums(const TemplateSumsBatch&) { fail("scoring backend {}: no device sums (internal error)", name()); }
void ScoringBackend::end_template_sums(float*, float*) { fail("scoring backend {}: no device sums (internal error)", name()); }
void ScoringBackend::fold_template_sums() { fail("scoring backend {}: no device sums (internal error)", name()); }
void ScoringBackend::take_template_totals(float*, float*) { fail("scoring backend {}: no device sums (internal error)", name()); }
void ScoringBackend::sample_to_host(const SampledTemplates&, int, int, float*) {
  fail("scoring backend {}: no template sampling (internal error)", name());
}
void ScoringBackend::prepare_batch(const PrepareBatch&) { fail("scoring backend {}: no device preparation (internal error)", name()); }
void ScoringBackend::begin_volume_sums(int, int, int, double) { fail("scoring backend {}: no device volumes (internal error)", name()); }
void ScoringBackend::add_volume_sums(const VolumeSumsBatch&) { fail("scoring backend {}: no device volumes (internal error)", name()); }
void ScoringBackend::end_volume_sums(const std::vector<BackProjector*>&) { fail("scoring backend {}: no device volumes (internal error)", name()); }
void ScoringBackend::fold_volume_sums() { fail("scoring backend {}: no device volumes (internal error)", name()); }
void ScoringBackend::take_volume_totals(const std::vector<BackProjector*>&) { fail("scoring backend {}: no device volumes (internal error)", name()); }
void ScoringBackend::score_kept(const ScoreRequest&, const KeptScores&, int) { fail("scoring backend {}: no kept scores (internal error)", name()); }
VolumeTransforms& ScoringBackend::volume_transforms() { return cpu_volume_transforms(); }
void ScoringBackend::reduce_kept(const ScoreReduction&, ReducedScores&) { fail("scoring backend {}: no kept scores (internal error)", name()); }

std::unique_ptr<ScoringBackend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace emcryo::em
