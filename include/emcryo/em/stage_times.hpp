// Where an E-step's wall time goes, stage by stage (issue 12: which CPU stage to move to a device
// next is decided by these figures, logged once per iteration by the jobs).
//
// Stages run either by the whole thread team (particle preparation, the shared coarse pass, the
// consumer's M-step sums) and are timed on the wall clock, or inside the per-particle loop, where
// each thread times its own stages; the loop's wall time is then split in proportion to the summed
// thread times, so the stages always add up to the E-step's wall time.
#pragma once
#include <array>
#include <chrono>
#include <string>

namespace emcryo::em {

struct StageTimes {
  enum Stage {
    read,              // waiting for a batch's images from disk (read ahead by another thread)
    prepare,           // mask, FFT, CTF, gather (per batch)
    coarse_templates,  // shared coarse pass: template sampling (per E-step or per chunk)
    coarse_rows,       // shared coarse pass: particle rows x coarse shifts
    coarse_score,      // shared coarse pass: the backend's score() calls
    coarse_reduce,     // shared coarse pass: scores into the reducers
    search_templates,  // per particle: template sampling (local/fixed coarse pass and fine pass)
    search_rows,       // per particle: rows x shifts
    search_score,      // per particle: the backend's score() calls
    search_reduce,     // per particle: priors, reducer, children, kept hypotheses
    consume,           // the caller's M-step sums (2D template sums, 3D back-projection, noise)
    chunk_sums,        // 3D: clearing, folding and sending each chunk's back-projector sums (mpi::Chunks)
    count
  };
  std::array<double, count> seconds{};

  StageTimes& operator+=(const StageTimes& other) {
    for (int i = 0; i < count; ++i) seconds[i] += other.seconds[i];
    return *this;
  }
  double total() const {
    double sum = 0;
    for (double s : seconds) sum += s;
    return sum;
  }
  /// "prepare 0.31 s, coarse templates 0.02 s, ..." (stages with time only).
  std::string summary() const;
};

/// Adds the time from construction to destruction to one stage's seconds.
class StageClock {
 public:
  StageClock(StageTimes& times, StageTimes::Stage stage) : into_(times.seconds[stage]), start_(std::chrono::steady_clock::now()) {}
  ~StageClock() { into_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  StageClock(const StageClock&) = delete;
  StageClock& operator=(const StageClock&) = delete;

 private:
  double& into_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace emcryo::em
