// `emcryo info FILE`: what a STAR or MRC file holds.
#include <fmt/format.h>

#include <filesystem>

#include "commands.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::app {

namespace {
void print_mrc(const std::string& path) {
  io::MrcReader mrc(path);
  const auto& h = mrc.header();
  fmt::print("{}: MRC file\n", path);
  fmt::print("  size          {} x {} x {}\n", h.nx, h.ny, h.nz);
  fmt::print("  mode          {}\n", h.mode);
  fmt::print("  pixel size    {:.4f} Å (cell {:.2f} {:.2f} {:.2f}, sampling {} {} {})\n", mrc.pixel_size(), h.cella[0],
             h.cella[1], h.cella[2], h.mx, h.my, h.mz);
  fmt::print("  space group   {} ({})\n", h.ispg, h.ispg == 0 && h.nz > 1 ? "image stack" : h.ispg == 1 ? "volume" : "-");
  fmt::print("  min/max/mean  {:.4g} / {:.4g} / {:.4g}, rms {:.4g}\n", h.dmin, h.dmax, h.dmean, h.rms);
  fmt::print("  origin        {:.2f} {:.2f} {:.2f} Å\n", h.origin[0], h.origin[1], h.origin[2]);
  fmt::print("  version       {}, byte order {}, extended header {} bytes\n", h.nversion,
             mrc.byte_swapped() ? "swapped" : "native", h.nsymbt);
  for (int i = 0; i < h.nlabl && i < 10; ++i)
    fmt::print("  label {}       {}\n", i, std::string(h.labels[i], strnlen(h.labels[i], 80)));
}

void print_star(const std::string& path) {
  auto set = io::ParticleSet::read(path);
  fmt::print("{}: particle STAR file (version {})\n", path, set.star().version);
  fmt::print("  particles     {}\n", set.size());
  fmt::print("  box           {} px\n", set.box());
  fmt::print("  pixel size    {:.4f} Å\n", set.pixel_size());
  fmt::print("  stacks        {}\n", set.stack_count());
  fmt::print("  optics groups {}\n", set.optics_groups().size());
  for (const auto& g : set.optics_groups())
    fmt::print("    {} {}: {:.4f} Å/px, {} px, {} kV, Cs {} mm, Q0 {}\n", g.number, g.name, g.pixel_size, g.image_size,
               g.voltage, g.cs, g.amplitude_contrast);
  fmt::print("  CTF           {}\n", set.has_ctf() ? "yes" : "no");
  fmt::print("  poses         {}{}\n", set.has_poses() ? "angles" : "no angles", set.has_origins() ? " + origins" : "");
  fmt::print("  metadata      ");
  for (const auto& c : set.metadata_present()) fmt::print("{} ", c);
  fmt::print("\n");
}
}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Summarise a particles STAR file or an MRC map/stack");
  static std::string file;
  cmd->add_option("file", file, "STAR or MRC/MRCS file")->required();
  cmd->callback([] {
    const auto ext = std::filesystem::path(file).extension().string();
    if (ext == ".star") print_star(file);
    else print_mrc(file);
  });
}

}  // namespace emcryo::app
