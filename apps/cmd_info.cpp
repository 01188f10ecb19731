// `emcryo info FILE`: what a STAR, .cs or MRC file holds; `emcryo info --devices`: the GPUs.
#include <fmt/format.h>

#include <filesystem>

#include "commands.hpp"
#include "emcryo/core/error.hpp"
#include "emcryo/gpu/backend.hpp"
#include "emcryo/io/cs.hpp"
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
  fmt::print("  axis order    {} {} {} (columns, rows, sections)\n", h.mapc, h.mapr, h.maps);
  fmt::print("  min/max/mean  {:.4g} / {:.4g} / {:.4g}, rms {:.4g}\n", h.dmin, h.dmax, h.dmean, h.rms);
  fmt::print("  origin        {:.2f} {:.2f} {:.2f} Å\n", h.origin[0], h.origin[1], h.origin[2]);
  fmt::print("  version       {}, byte order {}, extended header {} bytes\n", h.nversion,
             mrc.byte_swapped() ? "swapped" : "native", h.nsymbt);
  for (int i = 0; i < h.nlabl && i < 10; ++i)
    fmt::print("  label {}       {}\n", i, std::string(h.labels[i], strnlen(h.labels[i], 80)));
  for (const auto& note : mrc.notes()) fmt::print("  note          {}\n", note);
}

io::ParticleReadOptions summary_options(const std::string& cs_root) {
  io::ParticleReadOptions options;
  options.cs_root = cs_root;
  options.allow_missing_stacks = true;  // a summary needs no images; missing stacks are listed
  options.quiet = true;
  return options;
}

void print_particles(const io::ParticleSet& set) {
  fmt::print("  particles     {}\n", set.size());
  fmt::print("  box           {}\n", set.box() > 0 ? fmt::format("{} px", set.box()) : "unknown (no stack found)");
  fmt::print("  pixel size    {:.4f} Å\n", set.pixel_size());
  fmt::print("  stacks        {}\n", set.stack_count());
  if (!set.missing_stacks().empty()) {
    fmt::print("  WARNING       {} of {} stacks not found; the summary is from the metadata only:\n",
               set.missing_stacks().size(), set.stack_count());
    for (const auto& s : set.missing_stacks()) fmt::print("                  {}\n", s.string());
  }
  fmt::print("  optics groups {}\n", set.optics_groups().size());
  for (const auto& g : set.optics_groups())
    fmt::print("    {} {}: {:.4f} Å/px, {} px, {} kV, Cs {} mm, Q0 {}\n", g.number, g.name, g.pixel_size, g.image_size,
               g.voltage, g.cs, g.amplitude_contrast);
  fmt::print("  CTF           {}\n", set.has_ctf() ? "yes" : "no");
  fmt::print("  poses         {}{}\n", set.has_poses() ? "angles" : "no angles", set.has_origins() ? " + origins" : "");
}

bool is_particle_table(const io::StarBlock& b) { return b.is_loop && b.table.has("rlnImageName"); }

void print_star(const std::string& path) {
  io::StarFile star = io::read_star(path);
  fmt::print("{}: STAR file (version {}), {} block{}\n", path, star.version ? std::to_string(star.version) : "not stated",
             star.blocks.size(), star.blocks.size() == 1 ? "" : "s");
  bool particles = false;
  for (const auto& b : star.blocks) {
    const auto& t = b.table;
    if (b.is_loop) fmt::print("  data_{}: loop, {} row{}, {} columns\n", b.name, t.rows(), t.rows() == 1 ? "" : "s", t.columns());
    else fmt::print("  data_{}: key-value pairs, {} keys\n", b.name, t.columns());
    for (int c = 0; c < static_cast<int>(t.columns()); ++c) {
      if (b.is_loop) fmt::print("    {}\n", t.column_names()[static_cast<std::size_t>(c)]);
      else fmt::print("    {:<40} {}\n", t.column_names()[static_cast<std::size_t>(c)], t.text(0, c));
    }
    particles = particles || (is_particle_table(b) && t.rows() > 0);
  }
  if (particles) {
    fmt::print("particle summary:\n");
    print_particles(io::ParticleSet::from_star(std::move(star), summary_options("")));  // parsed once
  }
}

void print_cs(const std::string& path, const std::string& cs_root) {
  const io::CsTable cs = io::read_cs(path);
  fmt::print("{}: cryoSPARC .cs file, {} records of {} bytes, {} fields\n", path, cs.rows(), cs.record_bytes(),
             cs.fields().size());
  for (const auto& f : cs.fields()) {
    std::string shape;
    for (int d : f.shape) shape += fmt::format("{}{}", shape.empty() ? " x" : "x", d);
    fmt::print("    {:<32} {}{}\n", f.name, f.dtype(), shape);
  }
  if (cs.has("blob/path") && cs.rows() > 0) {
    fmt::print("particle summary:\n");
    print_particles(io::ParticleSet::read(path, summary_options(cs_root)));
  }
}
void print_devices() {
  const auto list = gpu::devices();
  if (list.empty()) {
    fmt::print("no CUDA device: {}\nscoring runs on the CPU\n", gpu::no_device_reason());
    return;
  }
  for (const auto& d : list)
    fmt::print("GPU {}: {}, {:.1f} GiB ({:.1f} GiB free), compute capability {}.{}, {} multiprocessors\n", d.id, d.name,
               static_cast<double>(d.memory) / (1u << 30), static_cast<double>(d.free_memory) / (1u << 30), d.major, d.minor,
               d.multiprocessors);
}
}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Summarise a STAR file (any), a cryoSPARC .cs file or an MRC map/stack");
  static std::string file, cs_root;
  static bool list_devices = false;
  cmd->add_option("file", file, "STAR, .cs or MRC/MRCS file");
  cmd->add_option("--cs-root", cs_root, "Folder that .cs blob paths are relative to (the cryoSPARC project)");
  cmd->add_flag("--devices", list_devices, "List the CUDA devices (name, memory, compute capability)");
  cmd->callback([] {
    if (list_devices) return print_devices();
    if (file.empty()) fail("info: name a file (STAR, .cs or MRC), or ask for --devices");
    const auto ext = std::filesystem::path(file).extension().string();
    if (ext == ".star") print_star(file);
    else if (ext == ".cs" || ext == ".npy") print_cs(file, cs_root);
    else print_mrc(file);
  });
}

}  // namespace emcryo::app
