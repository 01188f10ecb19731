// `emcryo align-map`: superpose a map on a reference and report their FSC.
#include <fmt/format.h>

#include "commands.hpp"
#include "emcryo/jobs/align_map.hpp"

namespace emcryo::app {

void add_align_map_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("align-map", "Superpose a map on a reference (rotation, shift and hand) and report their FSC");
  static jobs::AlignMapOptions o;
  cmd->add_option("--map", o.map, "Map to move (MRC)")->required();
  cmd->add_option("--ref", o.reference, "Reference map (MRC); the output is on its grid")->required();
  cmd->add_option("--out", o.out_map, "Write the aligned map here (MRC)");
  cmd->add_option("--fsc", o.out_fsc, "Write the FSC after alignment here (STAR)");
  cmd->add_option("--search-res", o.search_resolution, "Resolution of the search, Å")->capture_default_str();
  cmd->callback([] {
    const auto r = jobs::run_align_map(o);
    const auto e = geometry::matrix_to_euler(r.alignment.rotation);
    fmt::print("hand: {}; rotation (rot, tilt, psi) {:.1f} {:.1f} {:.1f} deg; shift {:.2f} {:.2f} {:.2f} Å; correlation {:.3f}\n",
               r.alignment.flipped ? "flipped" : "as is", e.rot, e.tilt, e.psi, r.alignment.shift.x * r.pixel_size,
               r.alignment.shift.y * r.pixel_size, r.alignment.shift.z * r.pixel_size, r.alignment.correlation);
    fmt::print("FSC 0.5: {:.2f} Å; FSC 0.143: {:.2f} Å\n", r.resolution_05, r.resolution_0143);
  });
}

}  // namespace emcryo::app
