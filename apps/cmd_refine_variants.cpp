// `emcryo nu-refine` and `emcryo local-refine`: configurations of refine (jobs/refine).
#include <fmt/format.h>

#include "commands.hpp"

namespace emcryo::app {

void add_nu_refine_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("nu-refine",
                                 "Non-uniform refinement: refine with a local, cross-validated filter per voxel in the M-step, and a "
                                 "local-resolution map");
  static jobs::RefineOptions o = [] {
    jobs::RefineOptions d;
    d.nonuniform = true;
    return d;
  }();
  static std::string continue_dir;
  add_refine_options(cmd, o, continue_dir, true);
  cmd->add_flag("--nu-off{false}", o.nonuniform, "One global filter as in refine (to compare); the local-resolution map is not written");
  cmd->add_option("--window-factor", o.window_factor, "Adaptive window factor: the local window's diameter over the local resolution")
      ->capture_default_str();
  cmd->callback([] { run_refine_job("nu-refine", o, continue_dir); });
}

void add_local_refine_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("local-refine", "Local refinement of a masked region around each particle's input pose");
  static jobs::RefineOptions o = [] {
    jobs::RefineOptions d;
    d.local_refine = true;
    d.initial_lowpass = 12;
    return d;
  }();
  static std::string continue_dir;
  static double rotation_extent = -1;
  add_refine_options(cmd, o, continue_dir, false);
  cmd->add_option("--mask", o.mask, "The region to refine (MRC, the particles' box)");
  cmd->add_option("--rotation-extent", rotation_extent, "Largest rotation from the input pose, degrees (default 20; 3x --prior-sigma-rot with --pose-prior)");
  cmd->add_option("--shift-extent", o.shift_extent, "Largest shift from the input pose, Å")->capture_default_str();
  cmd->add_option("--fulcrum", o.fulcrum, "Centre of the rotations x,y,z in Å from the box centre (default: the mask's centre of mass)")
      ->delimiter(',')->expected(3);
  cmd->add_flag("--no-marginalization{false}", o.adaptive_marginalization,
                "Each particle enters the map at its most probable local pose only (default: marginalised over the probable ones)");
  cmd->add_flag("--pose-prior", o.pose_prior, "Gaussian prior on the rotation and shift from the input pose, multiplied into the posterior");
  cmd->add_option("--prior-sigma-rot", o.prior_sigma_rotation, "Prior's standard deviation of the rotation, degrees")->capture_default_str();
  cmd->add_option("--prior-sigma-shift", o.prior_sigma_shift, "Prior's standard deviation of the shift, Å")->capture_default_str();
  cmd->add_flag("--subtract", o.subtract,
                "Subtract from each particle the projection (CTF-modulated, at its input pose) of the map outside the mask before aligning");
  cmd->add_flag("--nu", o.nonuniform, "Non-uniform regularisation of the region (as nu-refine)");
  cmd->callback([] {
    o.rotation_extent = rotation_extent > 0 ? rotation_extent : (o.pose_prior ? 3 * o.prior_sigma_rotation : 20.0);
    if (continue_dir.empty() && o.mask.empty()) throw CLI::RequiredError("--mask");
    run_refine_job("local-refine", o, continue_dir);
  });
}

}  // namespace emcryo::app
