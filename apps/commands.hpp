// The CLI: each subcommand lives in its own file and registers itself here. Option parsing only;
// all work happens in the library.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "emcryo/jobs/refine.hpp"

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
void add_nu_refine_command(CLI::App& app);
void add_local_refine_command(CLI::App& app);

/// Options shared by the refine family (cmd_refine.cpp); global_search adds refine's search and
/// symmetry options.
void add_refine_options(CLI::App* cmd, jobs::RefineOptions& o, std::string& continue_dir, bool global_search);
void run_refine_job(const char* name, const jobs::RefineOptions& o, const std::string& continue_dir);

}  // namespace emcryo::app
