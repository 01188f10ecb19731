// The CLI: each subcommand lives in its own file and registers itself here. Option parsing only;
// all work happens in the library.
#pragma once
#include <CLI/CLI.hpp>

namespace emcryo::app {

void add_info_command(CLI::App& app);
void add_simulate_command(CLI::App& app);
void add_reconstruct_command(CLI::App& app);
void add_class2d_command(CLI::App& app);
void add_refine_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_hetero_commands(CLI::App& app);
void add_abinitio_command(CLI::App& app);
void add_align_map_command(CLI::App& app);

}  // namespace emcryo::app
