// `emcryo convert IN OUT`: particle metadata between RELION STAR and cryoSPARC .cs.
#include <fmt/format.h>

#include "commands.hpp"
#include "emcryo/io/cs_particles.hpp"

namespace emcryo::app {

void add_convert_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Particles between RELION STAR and cryoSPARC .cs (formats from the extensions)");
  static std::string in, out, cs_root;
  cmd->add_option("in", in, "Input: particles.star or particles.cs")->required();
  cmd->add_option("out", out, "Output: particles.cs or particles.star")->required();
  cmd->add_option("--cs-root", cs_root, "Folder that .cs blob paths are relative to (the cryoSPARC project)");
  cmd->callback([] {
    const std::size_t n = io::convert_particles(in, out, cs_root);
    fmt::print("{} particles: {} -> {}\n", n, in, out);
  });
}

}  // namespace emcryo::app
