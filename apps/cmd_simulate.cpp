// `emcryo simulate`: particles with known truth.
#include <fmt/format.h>

#include "commands.hpp"
#include "emcryo/jobs/simulate.hpp"

namespace emcryo::app {

void add_simulate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("simulate", "Make a particle stack + STAR with known truth from PDB/mmCIF models or maps");
  static jobs::SimulateOptions o;
  cmd->add_option("--model", o.models, "PDB/mmCIF (.gz ok) or MRC map; repeat for several classes")->required();
  cmd->add_option("--class-fractions", o.class_fractions, "Fraction of particles per model");
  cmd->add_option("--out", o.out_dir, "Output folder")->required();
  cmd->add_option("--particles", o.particles, "Number of particles")->capture_default_str();
  cmd->add_option("--box", o.box, "Box size in pixels (even)")->capture_default_str();
  cmd->add_option("--pixel-size", o.pixel_size, "Pixel size in Å")->capture_default_str();
  cmd->add_option("--snr", o.snr, "Signal-to-noise ratio (variance ratio)")->capture_default_str();
  cmd->add_option("--orientations", o.orientations, "uniform | views | preferred")->capture_default_str();
  cmd->add_option("--views", o.views, "Number of distinct views, their directions spread as far apart as possible (with --orientations views)")->capture_default_str();
  cmd->add_option("--preferred-fraction", o.preferred_fraction, "Share of particles near the top view")->capture_default_str();
  cmd->add_option("--max-shift", o.max_shift, "Largest particle displacement in Å")->capture_default_str();
  cmd->add_option("--defocus-min", o.defocus_min, "Å")->capture_default_str();
  cmd->add_option("--defocus-max", o.defocus_max, "Å")->capture_default_str();
  cmd->add_option("--astigmatism", o.astigmatism, "Largest defocus difference U-V in Å")->capture_default_str();
  cmd->add_option("--voltage", o.voltage, "kV")->capture_default_str();
  cmd->add_option("--cs", o.cs, "Spherical aberration in mm")->capture_default_str();
  cmd->add_option("--amplitude-contrast", o.amplitude_contrast, "Fraction")->capture_default_str();
  cmd->add_option("--bfactor", o.bfactor, "CTF B-factor in Å^2")->capture_default_str();
  cmd->add_option("--sym", o.symmetry, "Point group imposed on the true maps")->capture_default_str();
  cmd->add_flag("--no-ctf", o.no_ctf, "No CTF in the images and no CTF columns");
  cmd->add_flag("--common-centre", o.common_centre,
                "Centre every atomic model on the first one's centre of mass (a sub-complex keeps the complex's frame)");
  cmd->add_flag("--float16", o.float16, "Write the stack in mode 12 (float16)");
  cmd->add_option("--seed", o.seed, "Random seed")->capture_default_str();
  cmd->add_option("--body2-chains", o.body2_chains, "Flexible domain: chains of body 2 (the rest is body 1), e.g. A,C")->delimiter(',');
  cmd->add_option("--flex-sigma", o.flex_sigma, "Body 2's turn about the hinge per particle, degrees (sd)")->capture_default_str();
  cmd->add_option("--hinge", o.hinge, "Hinge x,y,z in Å from the box centre (default: midway between the bodies' centres)")
      ->delimiter(',')->expected(3);
  cmd->add_option("--disorder-chains", o.disorder_chains, "Disordered density: chains whose density varies per particle")->delimiter(',');
  cmd->add_option("--disorder-sigma", o.disorder_sigma, "Turn of the disordered region about its centre, degrees (sd)")->capture_default_str();
  cmd->add_option("--disorder-shift", o.disorder_shift, "Displacement of the disordered region per axis, Å (sd)")->capture_default_str();
  cmd->add_option("--disorder-min-occupancy", o.disorder_min_occupancy, "Disordered region's occupancy is uniform in [this, 1]")
      ->capture_default_str();
  auto& b = o.belt;
  cmd->add_flag("--belt", b.enabled,
                "Detergent-belt-like shell: a ring of blobs around the particle, drawn anew per particle (density, place, tilt and "
                "shape vary); truth_belt.mrc is its mean, truth_ordered.mrc the particle without it");
  cmd->add_option("--belt-radius", b.radius, "Ring radius to the tube's middle, Å (0: the particle's girth + half the width)")->capture_default_str();
  cmd->add_option("--belt-height", b.height, "Tube extent along the ring's axis, Å")->capture_default_str();
  cmd->add_option("--belt-width", b.width, "Tube extent across (radially), Å")->capture_default_str();
  cmd->add_option("--belt-offset", b.offset, "Ring centre along its axis from the particle's centre of mass, Å")->capture_default_str();
  cmd->add_option("--belt-axis", b.axis, "Ring axis x,y,z in the model's frame (default: the particle's most distinct principal axis: the long axis of an elongated particle, the normal of a flat one)")
      ->delimiter(',')->expected(3);
  cmd->add_option("--belt-mass", b.mass, "Mean belt's integrated density over the particle's")->capture_default_str();
  cmd->add_option("--belt-density-sd", b.density_sd, "Per-particle relative spread of the belt's density (sd)")->capture_default_str();
  cmd->add_option("--belt-shift", b.shift, "Per-particle displacement of the ring per axis, Å (sd)")->capture_default_str();
  cmd->add_option("--belt-tilt", b.tilt, "Per-particle turn of the ring about its centre, degrees (sd)")->capture_default_str();
  cmd->add_option("--belt-squash", b.squash, "Per-particle elliptic deformation of the ring (relative radius change, sd)")->capture_default_str();
  cmd->add_option("--belt-blobs", b.blobs, "Blobs (detergent molecules) per belt, placed at random in the ring per particle")->capture_default_str();
  cmd->add_option("--belt-blob-size", b.blob_size, "Each blob's Gaussian sd, Å")->capture_default_str();
  cmd->callback([] {
    auto s = jobs::run_simulate(o);
    fmt::print("simulated {} particles ({} px, {:.3f} Å/px) in {}; class counts:", s.particles, s.box, s.pixel_size, o.out_dir);
    for (int c : s.class_counts) fmt::print(" {}", c);
    fmt::print("\n");
  });
}

}  // namespace emcryo::app
