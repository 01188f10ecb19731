// Test helpers that write MRC files with the library's own writer (tests of io and above only).
#pragma once
#include <algorithm>
#include <filesystem>
#include <limits>
#include <vector>

#include "emcryo/io/mrc.hpp"

namespace emcryo::test {

namespace fs = std::filesystem;

/// Writes a float32 volume of nx*ny*nz values (x fastest) with the library's own MRC writer.
inline void write_mrc_volume(const fs::path& path, const std::vector<float>& data, int nx, int ny, int nz,
                             double pixel_size = 1.0) {
  io::MrcWriteOptions options;
  options.pixel_size = pixel_size;
  io::write_mrc(path, data, nx, ny, nz, options);
}

/// Writes a float32 stack of `count` images of nx*ny values with the library's own MRC writer.
inline void write_mrc_stack(const fs::path& path, const std::vector<float>& images, int nx, int ny, int count,
                            double pixel_size = 1.0) {
  io::MrcWriteOptions options;
  options.pixel_size = pixel_size;
  options.is_stack = true;
  io::write_mrc(path, images, nx, ny, count, options);
}

/// Copies a simulated data folder's particles.mrcs and particles.star into `to`, with a NaN pixel
/// in the 6th image and the 10th image constant: what the jobs must skip and report.
inline void copy_with_bad_images(const fs::path& from, const fs::path& to, double pixel_size) {
  io::MrcReader reader(from / "particles.mrcs");
  auto all = reader.read_all();
  const std::size_t pixels = static_cast<std::size_t>(reader.nx()) * static_cast<std::size_t>(reader.ny());
  all[5 * pixels + 17] = std::numeric_limits<float>::quiet_NaN();
  std::fill(all.begin() + static_cast<long>(9 * pixels), all.begin() + static_cast<long>(10 * pixels), 0.5f);
  fs::create_directories(to);
  write_mrc_stack(to / "particles.mrcs", all, reader.nx(), reader.ny(), reader.nz(), pixel_size);
  fs::copy_file(from / "particles.star", to / "particles.star", fs::copy_options::overwrite_existing);
}

}  // namespace emcryo::test
