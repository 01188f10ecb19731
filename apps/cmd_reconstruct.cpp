// `emcryo reconstruct`: maps from known poses.
#include <fmt/format.h>

#include "commands.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/jobs/reconstruct.hpp"

namespace emcryo::app {

void add_reconstruct_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("reconstruct", "Half maps, full map and FSC from particles with known poses");
  static jobs::ReconstructOptions o;
  cmd->add_option("--particles", o.particles, "Particles STAR or cryoSPARC .cs file with poses")->required();
  cmd->add_option("--cs-root", o.cs_root, "Folder that .cs blob paths are relative to (the cryoSPARC project)");
  cmd->add_option("--out", o.out_dir, "Output folder")->required();
  cmd->add_option("--sym", o.symmetry, "Point group: C1, Cn, Dn, T, O, I")->capture_default_str();
  cmd->add_flag("--no-ctf", o.no_ctf, "Do not correct for the CTF");
  cmd->add_option("--max-res", o.max_resolution, "Highest resolution used, in Å (0 = Nyquist)");
  cmd->add_option("--batch", o.batch, "Particles held in memory at once")->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of the half-set split when rlnRandomSubset is absent")->capture_default_str();
  cmd->callback([] {
    auto r = jobs::run_reconstruct(o);
    if (mpi::is_root())
      fmt::print("resolution {:.2f} Å (FSC 0.143), {:.2f} Å (FSC 0.5); {}/map.mrc\n", r.resolution_0143, r.resolution_05,
               o.out_dir);
  });
}

}  // namespace emcryo::app
