// Shared by the fuzz targets: a scratch folder per process and the rule every reader must keep,
// "bad input ends in emcryo::Error". Any other exception escapes to libFuzzer, which reports it
// as a crash: the CLI would print it as an "internal error".
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "emcryo/core/error.hpp"

namespace emcryo::fuzz {

/// A folder of this process, created once (removed at exit), in /dev/shm when there is one: the
/// targets write a file per input, and memory is several times faster than a disk.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path base =
        std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    auto path = base / ("emcryo_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(scratch_dir(), ignored);
    });
    return path;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) std::abort();  // the scratch folder itself failed: not a finding about the input
}

/// Runs `body`; emcryo::Error is the expected outcome of bad input and is swallowed.
template <typename Body>
void expect_clean_error(Body&& body) {
  try {
    body();
  } catch (const emcryo::Error&) {
  }
}

}  // namespace emcryo::fuzz
