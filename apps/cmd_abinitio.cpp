// `emcryo abinitio`: K maps from particles alone (SGD, poses marginalised).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.hpp"
#include "emcryo/jobs/abinitio.hpp"

namespace emcryo::app {

void add_abinitio_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("abinitio", "Initial 3D map(s) from particles alone: stochastic gradient descent from random starts");
  static jobs::AbinitioOptions o;
  static std::string continue_dir;
  cmd->add_option("--particles", o.particles, "Particles STAR (or cryoSPARC .cs) file");
  cmd->add_option("--out", o.out_dir, "Output folder");
  cmd->add_option("--continue", continue_dir, "Resume the run in this folder from its last checkpoint");
  cmd->add_option("--classes", o.classes, "Number of maps (classes)")->capture_default_str();
  cmd->add_option("--sym", o.symmetry, "Point group, imposed during the run: C1, Cn, Dn, T, O, I")->capture_default_str();
  cmd->add_option("--max-res", o.max_resolution, "Final working resolution, Å")->capture_default_str();
  cmd->add_option("--init-res", o.initial_resolution, "Initial working resolution, Å")->capture_default_str();
  cmd->add_option("--particle-diameter", o.particle_diameter, "Window diameter in Å (default 90% of the box)");
  cmd->add_option("--iterations", o.iterations, "SGD iterations (default: about two passes over the data, 30 to 300)");
  cmd->add_option("--initial-batch", o.initial_batch, "Particles per minibatch for the first third (default 100 per class)");
  cmd->add_option("--final-batch", o.final_batch, "Particles per minibatch afterwards (default 300 per class)");
  cmd->add_option("--learning-rate", o.learning_rate, "Step along the preconditioned gradient")->capture_default_str();
  cmd->add_option("--momentum", o.momentum, "SGD momentum")->capture_default_str();
  cmd->add_option("--class-similarity", o.class_similarity, "Initial class similarity (K > 1), annealed to 0")->capture_default_str();
  cmd->add_option("--sigma-scale", o.sigma_scale, "Initial noise inflation, annealed to 1")->capture_default_str();
  cmd->add_option("--offset-range", o.offset_range, "Translation search range, pixels")->capture_default_str();
  cmd->add_flag("--no-ctf", o.no_ctf, "Run without CTF correction");
  cmd->add_option("--cs-root", o.cs_root, "For a .cs input: the cryoSPARC project folder its blob paths are relative to");
  cmd->add_option("--batch", o.batch, "Particles per E-step batch (bounds memory)")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Random seed (starts and minibatches)")->capture_default_str();
  cmd->callback([] {
    jobs::AbinitioResult r;
    if (!continue_dir.empty()) r = jobs::continue_abinitio(continue_dir);
    else {
      if (o.particles.empty() || o.out_dir.empty()) throw CLI::RequiredError("--particles and --out (or --continue DIR)");
      r = jobs::run_abinitio(o);
    }
    fmt::print("abinitio: {} SGD iterations in {:.1f} s; class fractions {:.3f}\n", r.iterations, r.seconds, fmt::join(r.class_fractions, " "));
  });
}

}  // namespace emcryo::app
