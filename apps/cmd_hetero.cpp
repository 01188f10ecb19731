// `emcryo hetero-refine`, `emcryo class3d`, `emcryo hetero-reconstruct`: 3D classification.
#include <fmt/format.h>

#include "commands.hpp"
#include "emcryo/jobs/hetero.hpp"

namespace emcryo::app {

namespace {

void print_result(const char* job, const jobs::HeteroResult& r) {
  fmt::print("{}:", job);
  for (std::size_t k = 0; k < r.class_sizes.size(); ++k) {
    if (r.resolutions[k] >= 999) fmt::print(" class {} empty;", k + 1);
    else fmt::print(" class {} {:.0f} particles {:.2f} Å;", k + 1, r.class_sizes[k], r.resolutions[k]);
  }
  fmt::print("\n");
}

/// The switches hetero-refine and class3d share.
void add_common(CLI::App* cmd, jobs::HeteroOptions& o, std::string& continue_dir) {
  cmd->add_option("--particles", o.particles, "Particles STAR (or cryoSPARC .cs) file");
  cmd->add_option("--out", o.out_dir, "Output folder");
  cmd->add_option("--continue", continue_dir, "Resume the run in this folder from its last checkpoint");
  cmd->add_option("--classes", o.classes, "Number of classes K (default: one per --ref)");
  cmd->add_option("--sym", o.symmetry, "Point group: C1, Cn, Dn, T, O, I")->capture_default_str();
  cmd->add_option("--ini-high", o.initial_lowpass, "Low-pass of the starting maps, Å")->capture_default_str();
  cmd->add_option("--particle-diameter", o.particle_diameter, "Mask diameter in Å (default 90% of the box)");
  cmd->add_flag("--force-hard", o.force_hard,
                "Each particle enters its most probable class only (default: every class, weighted by its posterior)");
  cmd->add_option("--class-similarity-end", o.similarity_end, "Iteration by which the class similarity has fallen to 0")->capture_default_str();
  cmd->add_option("--cross-half-iterations", o.cross_half_iterations,
                  "For this many iterations each half's particles are compared with the other half's class maps (not with "
                  "maps holding their own noise); 0: never")
      ->capture_default_str();
  cmd->add_option("--target-resolution", o.target_resolution,
                  "Compare classes up to this resolution, Å (default: where the best class's half-map FSC falls to 0.143)");
  cmd->add_flag("--no-ctf", o.no_ctf, "Without CTF correction");
  cmd->add_option("--cs-root", o.cs_root, "For a .cs input: the cryoSPARC project folder its blob paths are relative to");
  cmd->add_option("--batch", o.batch, "Particles per batch (bounds memory)")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Random seed (half sets, starts)")->capture_default_str();
}

void run_or_continue(const char* job, const jobs::HeteroOptions& o, const std::string& continue_dir) {
  jobs::HeteroResult r;
  if (!continue_dir.empty()) r = jobs::continue_hetero(continue_dir);
  else {
    if (o.particles.empty() || o.out_dir.empty()) throw CLI::RequiredError("--particles and --out (or --continue DIR)");
    r = jobs::run_hetero(o);
  }
  print_result(job, r);
}

}  // namespace

void add_hetero_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("hetero-refine",
                                   "3D classification with alignment: K maps, each particle's pose searched against every class (the best "
                                   "pose per class kept), the class marginalised");
    static jobs::HeteroOptions o;
    static std::string continue_dir;
    add_common(cmd, o, continue_dir);
    cmd->add_option("--ref", o.references,
                    "Starting map (MRC), one per class; or one with --classes K: then K copies of it low-passed to --ini-high, "
                    "each with independent noise at that low-pass (a fifth of the map's standard deviation) to break the symmetry");
    cmd->add_option("--mask", o.mask, "Solvent mask (MRC); default: a soft sphere of the particle diameter");
    cmd->add_option("--class-similarity", o.class_similarity,
                    "Initial class similarity s in [0, 1], annealed to 0: each iteration's class posteriors are tempered until their mean effective number of classes is 1 + s (K - 1) (1: as scored; K: flat); costs a scoring pass per iteration while on")
        ->check(CLI::Range(0.0, 1.0))
        ->default_str("0");
    cmd->add_flag("--marginalize-poses", o.marginalize_poses,
                  "Weight every probable pose of each class by its posterior in every iteration (default: the best pose per class, and only the final iteration's maps weigh the poses of its local search); class maps at low SNR measured at 0.89-1.02 of the true-pose map's FSC 0.5 against 0.85-1.00 by default, at 1.5x the time");
    cmd->add_option("--initial-step", o.initial_step, "Angular step of the global search, degrees")->capture_default_str();
    cmd->add_option("--offset-range", o.offset_range, "Translation search range, pixels")->capture_default_str();
    cmd->add_option("--offset-step", o.offset_step, "Translation search step, pixels")->capture_default_str();
    cmd->add_option("--global-iterations", o.global_iterations, "Global searches at --initial-step before the finer ones")->capture_default_str();
    cmd->add_option("--max-iterations", o.max_iterations,
                    "Iterations: --global-iterations global at --initial-step, 1 global at half of it, then local at a quarter (default 12)");
    cmd->callback([] {
      o.align = true;
      run_or_continue("hetero-refine", o, continue_dir);
    });
  }
  {
    auto* cmd = app.add_subcommand("class3d",
                                   "3D classification without alignment: the input poses kept, the class marginalised, with an annealed "
                                   "class similarity");
    static jobs::HeteroOptions o;
    static std::string continue_dir;
    add_common(cmd, o, continue_dir);
    cmd->add_option("--ref", o.references,
                    "Starting maps (MRC), one per class (default: K reconstructions of random particle subsets at their input poses, "
                    "low-passed to --ini-high)");
    cmd->add_option("--mask", o.mask, "Focus mask (MRC): only the masked region of the maps is compared with the particles");
    cmd->add_option("--class-similarity", o.class_similarity,
                    "Initial class similarity s in [0, 1], annealed to 0: each iteration's class posteriors are tempered until their mean effective number of classes is 1 + s (K - 1) (1: as scored; K: flat); costs a scoring pass per iteration while on")
        ->check(CLI::Range(0.0, 1.0))
        ->default_str("0.5");
    cmd->add_option("--max-iterations", o.max_iterations, "Iterations (default 15)");
    cmd->callback([] {
      o.align = false;
      run_or_continue("class3d", o, continue_dir);
    });
  }
  {
    auto* cmd = app.add_subcommand("hetero-reconstruct",
                                   "The map of each class from poses and class posteriors (rlnClassPosterior001...) or the class alone "
                                   "(rlnClassNumber, e.g. RELION's Class3D output)");
    static jobs::HeteroReconstructOptions o;
    cmd->add_option("--particles", o.particles, "Particles STAR (or cryoSPARC .cs) file with poses and classes")->required();
    cmd->add_option("--out", o.out_dir, "Output folder")->required();
    cmd->add_option("--sym", o.symmetry, "Point group: C1, Cn, Dn, T, O, I")->capture_default_str();
    cmd->add_option("--mask", o.mask, "Mask (MRC) for the half-map FSC; default: a soft sphere");
    cmd->add_flag("--force-hard", o.force_hard, "Each particle in its most probable class only");
    cmd->add_flag("--no-ctf", o.no_ctf, "Without CTF correction");
    cmd->add_option("--max-res", o.max_resolution, "Highest resolution back-projected, Å (default Nyquist)");
    cmd->add_option("--cs-root", o.cs_root, "For a .cs input: the cryoSPARC project folder its blob paths are relative to");
    cmd->add_option("--batch", o.batch, "Particles in memory at once")->capture_default_str();
    cmd->add_option("--seed", o.seed, "Half-set split when rlnRandomSubset is absent")->capture_default_str();
    cmd->callback([] { print_result("hetero-reconstruct", jobs::run_hetero_reconstruct(o)); });
  }
}

}  // namespace emcryo::app
