// `emcryo class2d`: 2D classification.
#include <fmt/format.h>

#include "commands.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/jobs/class2d.hpp"

namespace emcryo::app {

void add_class2d_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("class2d", "2D classification (EM over class, in-plane angle and shift)");
  static jobs::Class2DOptions o;
  static std::string continue_dir;
  cmd->add_option("--particles", o.particles, "Particles STAR file");
  cmd->add_option("--out", o.out_dir, "Output folder");
  cmd->add_option("--continue", continue_dir, "Resume the run in this folder from its last checkpoint");
  cmd->add_option("-K,--classes", o.classes, "Number of classes")->capture_default_str();
  cmd->add_option("--iterations", o.iterations, "EM iterations")->capture_default_str();
  cmd->add_option("--mask-diameter", o.mask_diameter, "Soft circular mask diameter in Å (default 90% of the box)");
  cmd->add_option("--max-res", o.max_resolution, "Highest resolution used, Å (default Nyquist)");
  cmd->add_option("--min-align-res", o.min_align_resolution, "The working resolution is never worse than this, Å");
  cmd->add_option("--initial-res", o.initial_resolution, "Working resolution of the first iteration, Å")->capture_default_str();
  cmd->add_option("--psi-step", o.psi_step, "In-plane angular step, degrees")->capture_default_str();
  cmd->add_option("--offset-range", o.offset_range, "Translation search range, pixels")->capture_default_str();
  cmd->add_option("--offset-step", o.offset_step, "Translation search step, pixels")->capture_default_str();
  cmd->add_option("--tau2-fudge", o.tau2_fudge, "Regularisation T (higher = trust data more)")->capture_default_str();
  cmd->add_option("--uncertainty-factor", o.uncertainty_factor, "Initial classification uncertainty (>= 1), annealed to 1")->capture_default_str();
  cmd->add_flag("--force-max-poses", o.force_max_poses, "Each particle contributes only at its best pose and shift");
  cmd->add_flag("--hard-classify-last", o.hard_classify_last, "The final iteration puts each particle in its best class only");
  cmd->add_flag("--no-ctf", o.no_ctf, "Classify without CTF correction");
  cmd->add_option("--save-posteriors", o.save_posteriors,
                  "Write each particle's N most probable hypotheses (class, pose, shift, weight) to posteriors.star and .cs");
  cmd->add_option("--keep-iterations", o.keep_iterations, "Per-iteration outputs kept: the last N")->capture_default_str();
  cmd->add_option("--keep-every", o.keep_every, "... and every Nth iteration's (0: none)")->capture_default_str();
  cmd->add_option("--cs-root", o.cs_root, "For a .cs input: the cryoSPARC project folder its blob paths are relative to");
  cmd->add_flag("--exhaustive", o.exhaustive,
                "Score every hypothesis at the full frequency limit (default: a coarse pass at twice the angle and "
                "shift steps and a lower limit, then the fine hypotheses around those holding the posterior mass)");
  cmd->add_option("--batch", o.batch, "Particles per E-step batch (bounds memory)")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Random seed")->capture_default_str();
  cmd->callback([] {
    jobs::Class2DResult r;
    if (!continue_dir.empty()) {
      r = jobs::continue_class2d(continue_dir);
    } else {
      if (o.particles.empty() || o.out_dir.empty()) throw CLI::RequiredError("--particles and --out (or --continue DIR)");
      r = jobs::run_class2d(o);
    }
    if (mpi::is_root())
      fmt::print("class2d finished {} iterations in {:.1f} s; open {}/report.html\n", r.iterations_done, r.seconds,
               continue_dir.empty() ? o.out_dir : continue_dir);
  });
}

}  // namespace emcryo::app
