// `emcryo refine`: 3D homogeneous refinement, gold-standard.
#include <fmt/format.h>

#include "commands.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/jobs/refine.hpp"

namespace emcryo::app {

/// The options refine shares with nu-refine (and, for the common ones, local-refine).
void add_refine_options(CLI::App* cmd, jobs::RefineOptions& o, std::string& continue_dir, bool global_search) {
  cmd->add_option("--particles", o.particles, global_search ? "Particles STAR file" : "Particles STAR file with poses (rlnAngle*, rlnOrigin*Angst)");
  cmd->add_option("--ref", o.reference, "Initial reference map (MRC)");
  cmd->add_option("--out", o.out_dir, "Output folder");
  cmd->add_option("--continue", continue_dir, "Resume the run in this folder from its last checkpoint");
  cmd->add_option("--ini-high", o.initial_lowpass, "Low-pass of the initial reference, Å")->capture_default_str();
  cmd->add_option("--particle-diameter", o.particle_diameter, "Mask diameter in Å (default 90% of the box)");
  cmd->add_option("--max-iterations", o.max_iterations, "Upper bound on iterations (the job stops by itself)")->capture_default_str();
  cmd->add_flag("--no-ctf", o.no_ctf, "Refine without CTF correction");
  cmd->add_option("--save-posteriors", o.save_posteriors,
                  "Write each particle's N most probable poses (with their posterior weights) to posteriors.star and .cs");
  cmd->add_option("--cs-root", o.cs_root, "For a .cs input: the cryoSPARC project folder its blob paths are relative to");
  cmd->add_flag("--exhaustive", o.exhaustive,
                "Score every hypothesis at the full frequency limit (default: a coarse pass at a lower limit, then the "
                "sub-cells of the orientations and shifts holding the posterior mass)");
  cmd->add_option("--batch", o.batch, "Particles per batch (bounds memory)")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Random seed (half-set split)")->capture_default_str();
  if (!global_search) return;
  cmd->add_option("--sym", o.symmetry, "Point group: C1, Cn, Dn, T, O, I")->capture_default_str();
  cmd->add_option("--mask", o.mask, "Solvent mask (MRC); default: automatic from the map");
  cmd->add_option("--initial-step", o.initial_step, "Angular step of the global search, degrees")->capture_default_str();
  cmd->add_option("--offset-range", o.offset_range, "Translation search range, pixels")->capture_default_str();
  cmd->add_option("--offset-step", o.offset_step, "Translation search step, pixels")->capture_default_str();
  cmd->add_flag("--adaptive-marginalization", o.adaptive_marginalization,
                "Weight every probable pose and shift by its posterior: the fine hypotheses holding 99.9% of the mass, at most "
                "300 (the default)");
  cmd->add_flag("--max-poses{false}", o.adaptive_marginalization,
                "Each particle enters the map at its most probable pose only (faster; less accurate at low SNR)");
}

/// Runs (or continues) a refine-family job and prints its resolution.
void run_refine_job(const char* name, const jobs::RefineOptions& o, const std::string& continue_dir) {
  jobs::RefineResult r;
  if (!continue_dir.empty()) r = jobs::continue_refine(continue_dir);
  else {
    if (o.particles.empty() || o.reference.empty() || o.out_dir.empty()) throw CLI::RequiredError("--particles, --ref and --out (or --continue DIR)");
    r = jobs::run_refine(o);
  }
  if (mpi::is_root()) fmt::print("{}: {:.2f} Å after {} iterations\n", name, r.resolution, r.iterations);
}

void add_refine_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("refine", "3D homogeneous refinement with gold-standard half sets");
  static jobs::RefineOptions o;
  static std::string continue_dir;
  add_refine_options(cmd, o, continue_dir, true);
  cmd->callback([] { run_refine_job("refine", o, continue_dir); });
}

}  // namespace emcryo::app
