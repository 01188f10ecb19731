// 2D classification as a configuration of the engine: K in-plane-rotated class averages as
// templates, class marginalised (tempered, or hard), in-plane angle and shift marginalised (or
// maximised), coarse-to-fine over angle and shift; the M-step's sums per template (class x fine
// angle), rotated back into each class once; the SSNR (tau^2) regulariser.
#pragma once
#include <cstdint>
#include <vector>

#include "emcryo/em/expectation.hpp"
#include "emcryo/em/projector2d.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::em {

struct Class2DModel {
  int box = 0;
  std::vector<std::vector<float>> classes;     // real space, box x box
  std::vector<double> priors;                  // pi_k
  std::vector<std::vector<double>> sigma2;     // [optics group][shell] noise per real/imag part
  std::vector<std::vector<double>> tau2;       // [class][shell] signal prior; empty = none
  std::vector<int> resolution_shell;           // per class, from the SSNR
  double radius = 0;                           // current frequency limit in pixels of the box
};

/// The fine sampling the user asks for; the coarse pass uses twice the steps.
struct Class2DSearch {
  std::vector<double> psi;   // fine angles, degrees
  ShiftGrid shifts;
};
Class2DSearch make_class2d_search(double psi_step, double range, double step);

struct Class2DSettings {
  bool use_ctf = true;
  bool force_max_poses = false;   // each particle at its best pose/shift per class
  bool hard_classes = false;      // each particle in its best class only
  double class_temperature = 1;   // > 1 broadens class posteriors (initial uncertainty)
  double tau2_fudge = 2;          // T in V = sum(w c X)/(sum(w c^2) + 1/(T tau^2))
  int batch = 256;                // particles per E-step batch (bounds memory)
  bool coarse_to_fine = true;     // off: every hypothesis at the full frequency limit
  int max_significant = 100000;   // hypotheses per particle entering the M-step (RELION's --maxsig)
  bool random_assignment = false; // initial M-step: random class and angle, no E-step
  int keep_top = 0;               // hypotheses per particle kept in ParticleResult::top
  std::uint64_t seed = 1;
};

struct ParticleResult {
  int best_class = 0;              // 0-based
  double psi = 0;                  // degrees
  double shift_x = 0, shift_y = 0; // pixels, displacement of the particle from the centre
  double max_probability = 0;
  int significant_samples = 0;     // hypotheses that entered the M-step
  double log_likelihood = 0;
  double class_posterior_max = 0;  // largest class posterior
  std::vector<Hypothesis> top;     // the keep_top most probable hypotheses (class, pose, weight), best first
};

struct Class2DStats {
  double flops = 0;       // scoring GEMM floating point operations
  double gemm_seconds = 0;
  double seconds = 0;
  std::int64_t coarse_hypotheses = 0, fine_hypotheses = 0;
  StageSeconds stages;
};

/// One EM iteration over the particles `active` (indices into the set). Returns the updated model
/// (M-step) and fills per-particle results.
Class2DModel class2d_iteration(const io::ParticleSet& set, const std::vector<std::size_t>& active,
                               const Class2DModel& model, const Class2DSearch& search,
                               const std::vector<float>& particle_mask, const Class2DSettings& settings,
                               ScoringBackend& backend, std::vector<ParticleResult>& results, Class2DStats& stats);

/// The working frequency limit (pixels) for the next iteration: the SSNR resolution reached by the
/// class that holds the median particle (classes weighted by their share of the particles), plus 3
/// shells of margin, within [lowest, highest]. Not the best class: a limit set by the largest class
/// lets it win particles at frequencies only it resolves. Not the median over classes: empty and
/// nearly empty classes (many of them at large K) have no resolution and dragged the limit to its floor.
double class2d_working_radius(const Class2DModel& model, double lowest, double highest);

}  // namespace emcryo::em
