// emcryo: single-particle cryo-EM by Expectation-Maximization. Subcommand table and error path.
#include <cstdio>
#include <exception>
#include <filesystem>

#include "commands.hpp"
#include "emcryo/core/error.hpp"
#include "emcryo/core/log.hpp"
#include "emcryo/core/runtime.hpp"

int main(int argc, char** argv) {
  emcryo::runtime::ensure_fast_blas(argc, argv);
  CLI::App app{"emcryo: 2D classification, 3D refinement and reconstruction for cryo-EM"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "emcryo 0.1.0");
  int threads = 0;
  app.add_option("-j,--threads", threads, "Threads (default: all cores)");
  emcryo::app::add_info_command(app);
  emcryo::app::add_simulate_command(app);
  emcryo::app::add_reconstruct_command(app);
  emcryo::app::add_class2d_command(app);
  emcryo::app::add_refine_command(app);
  emcryo::app::add_nu_refine_command(app);
  emcryo::app::add_local_refine_command(app);
  emcryo::app::add_convert_command(app);
  app.parse_complete_callback([&] { emcryo::runtime::set_threads(threads); });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const emcryo::Error& e) {
    emcryo::log::error("{}", e.what());
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // The file system refused (read-only, no permission, disk full): the user's to fix, and
    // what() names the operation, the reason and the path on one line.
    emcryo::log::error("{}", e.what());
    return 1;
  } catch (const std::exception& e) {
    emcryo::log::error("internal error: {}", e.what());
    return 2;
  }
  return 0;
}
