// STAR reader/writer speed on a RELION-like particles file (default 1,000,000 rows x 25 columns).
// Usage: bench_star [rows]
// Target (one core, Release): read < 3 s and write < 3 s for 1 M rows.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "emcryo/core/error.hpp"
#include "emcryo/io/star.hpp"

namespace {

using emcryo::io::StarBlock;
using emcryo::io::StarFile;
using emcryo::io::StarTable;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void add_optics(StarFile& star) {
  StarBlock& optics = star.blocks.emplace_back();
  optics.name = "optics";
  optics.is_loop = true;
  StarTable& t = optics.table;
  const std::size_t row = t.add_row();
  t.set_text(row, t.add_column("rlnOpticsGroupName"), "opticsGroup1");
  t.set_integer(row, t.add_column("rlnOpticsGroup"), 1);
  t.set_number(row, t.add_column("rlnMicrographOriginalPixelSize"), 0.885);
  t.set_number(row, t.add_column("rlnVoltage"), 300);
  t.set_number(row, t.add_column("rlnSphericalAberration"), 2.7);
  t.set_number(row, t.add_column("rlnAmplitudeContrast"), 0.1);
  t.set_number(row, t.add_column("rlnImagePixelSize"), 1.77);
  t.set_integer(row, t.add_column("rlnImageSize"), 128);
  t.set_integer(row, t.add_column("rlnImageDimensionality"), 2);
}

// 25 columns as written by RELION 3.1 Refine3D: names, CTF, pose, statistics.
void add_particles(StarFile& star, std::size_t rows) {
  StarBlock& particles = star.blocks.emplace_back();
  particles.name = "particles";
  particles.is_loop = true;
  StarTable& t = particles.table;
  const int x = t.add_column("rlnCoordinateX");
  const int y = t.add_column("rlnCoordinateY");
  const int image = t.add_column("rlnImageName");
  const int micrograph = t.add_column("rlnMicrographName");
  const int optics_group = t.add_column("rlnOpticsGroup");
  const int defocus_u = t.add_column("rlnDefocusU");
  const int defocus_v = t.add_column("rlnDefocusV");
  const int defocus_angle = t.add_column("rlnDefocusAngle");
  const int bfactor = t.add_column("rlnCtfBfactor");
  const int scale = t.add_column("rlnCtfScalefactor");
  const int phase = t.add_column("rlnPhaseShift");
  const int fom = t.add_column("rlnCtfFigureOfMerit");
  const int max_resolution = t.add_column("rlnCtfMaxResolution");
  const int rot = t.add_column("rlnAngleRot");
  const int tilt = t.add_column("rlnAngleTilt");
  const int psi = t.add_column("rlnAnglePsi");
  const int origin_x = t.add_column("rlnOriginXAngst");
  const int origin_y = t.add_column("rlnOriginYAngst");
  const int class_number = t.add_column("rlnClassNumber");
  const int group = t.add_column("rlnGroupNumber");
  const int subset = t.add_column("rlnRandomSubset");
  const int norm = t.add_column("rlnNormCorrection");
  const int log_likelihood = t.add_column("rlnLogLikeliContribution");
  const int pmax = t.add_column("rlnMaxValueProbDistribution");
  const int significant = t.add_column("rlnNrOfSignificantSamples");

  std::mt19937_64 random(42);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  constexpr std::size_t kParticlesPerMicrograph = 200;
  char name[128];
  for (std::size_t i = 0; i < rows; ++i) {
    const std::size_t row = t.add_row();
    const std::size_t mic = i / kParticlesPerMicrograph + 1;
    t.set_number(row, x, 4096 * unit(random));
    t.set_number(row, y, 4096 * unit(random));
    std::snprintf(name, sizeof name, "%06zu@Extract/job007/Movies/mic%05zu.mrcs",
                  i % kParticlesPerMicrograph + 1, mic);
    t.set_text(row, image, name);
    std::snprintf(name, sizeof name, "MotionCorr/job002/Movies/mic%05zu.mrc", mic);
    t.set_text(row, micrograph, name);
    t.set_integer(row, optics_group, 1);
    const double defocus = 8000 + 20000 * unit(random);
    t.set_number(row, defocus_u, defocus + 300 * unit(random));
    t.set_number(row, defocus_v, defocus - 300 * unit(random));
    t.set_number(row, defocus_angle, 360 * unit(random) - 180);
    t.set_number(row, bfactor, 0);
    t.set_number(row, scale, 1);
    t.set_number(row, phase, 0);
    t.set_number(row, fom, unit(random) * 0.3);
    t.set_number(row, max_resolution, 2.5 + 5 * unit(random));
    t.set_number(row, rot, 360 * unit(random) - 180);
    t.set_number(row, tilt, 180 * unit(random));
    t.set_number(row, psi, 360 * unit(random) - 180);
    t.set_number(row, origin_x, 10 * unit(random) - 5);
    t.set_number(row, origin_y, 10 * unit(random) - 5);
    t.set_integer(row, class_number, static_cast<std::int64_t>(i % 4) + 1);
    t.set_integer(row, group, static_cast<std::int64_t>(mic));
    t.set_integer(row, subset, static_cast<std::int64_t>(i % 2) + 1);
    t.set_number(row, norm, 0.8 + 0.4 * unit(random));
    t.set_number(row, log_likelihood, 1.0e5 + 1.0e4 * unit(random));
    t.set_number(row, pmax, unit(random));
    t.set_integer(row, significant, static_cast<std::int64_t>(1 + 500 * unit(random)));
  }
}

int run(std::size_t rows) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("emcryo_bench_star_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path generated_path = dir / "generated.star";
  const fs::path rewritten_path = dir / "rewritten.star";

  auto start = std::chrono::steady_clock::now();
  double write_seconds = 0;
  {
    StarFile star;
    add_optics(star);
    add_particles(star, rows);
    const double generate_seconds = seconds_since(start);
    std::printf("generate in memory (set_text/set_number, %zu cells): %.2f s\n", rows * 25, generate_seconds);

    // format_star alone separates our formatting from the kernel's page-cache copy in write().
    start = std::chrono::steady_clock::now();
    const std::size_t formatted_bytes = emcryo::io::format_star(star).size();
    std::printf("format_star in memory (all cells edited): %.2f s  (%zu bytes)\n", seconds_since(start),
                formatted_bytes);

    start = std::chrono::steady_clock::now();
    emcryo::io::write_star(generated_path, star);
    write_seconds = seconds_since(start);
  }
  const double megabytes = static_cast<double>(fs::file_size(generated_path)) / 1e6;
  std::printf("write_star (all cells edited): %.2f s  (%.1f MB, %.0f MB/s)\n", write_seconds, megabytes,
              megabytes / write_seconds);

  start = std::chrono::steady_clock::now();
  StarFile star = emcryo::io::read_star(generated_path);
  const double read_seconds = seconds_since(start);
  StarTable& particles = star.find_block("particles")->table;
  std::printf("read_star: %.2f s  (%zu rows x %zu columns, %.0f MB/s)\n", read_seconds, particles.rows(),
              particles.columns(), megabytes / read_seconds);
  if (particles.rows() != rows || particles.columns() != 25) {
    std::fprintf(stderr, "bench_star: read back %zu rows x %zu columns, expected %zu x 25\n",
                 particles.rows(), particles.columns(), rows);
    return 1;
  }

  start = std::chrono::steady_clock::now();
  std::size_t numeric_columns = 0;
  double checksum = 0;
  for (int column = 0; column < static_cast<int>(particles.columns()); ++column) {
    const std::string& label = particles.column_names()[static_cast<std::size_t>(column)];
    if (label == "rlnImageName" || label == "rlnMicrographName") continue;
    const std::vector<double> values = particles.numbers(column);
    checksum += values.front() + values.back();
    ++numeric_columns;
  }
  const double parse_seconds = seconds_since(start);
  std::printf("numbers() on %zu numeric columns: %.2f s  (%.0f M values/s; checksum %.3f)\n", numeric_columns,
              parse_seconds, static_cast<double>(numeric_columns * rows) / parse_seconds / 1e6, checksum);

  // A refinement iteration's update: new pose for every particle, then write.
  start = std::chrono::steady_clock::now();
  const int pose_columns[] = {particles.require("rlnAngleRot"), particles.require("rlnAngleTilt"),
                              particles.require("rlnAnglePsi"), particles.require("rlnOriginXAngst"),
                              particles.require("rlnOriginYAngst")};
  for (const int column : pose_columns)
    for (std::size_t row = 0; row < rows; ++row)
      particles.set_number(row, column, static_cast<double>(row % 3600) * 0.1 - 180.0);
  const double update_seconds = seconds_since(start);
  std::printf("set_number on 5 pose columns: %.2f s\n", update_seconds);

  start = std::chrono::steady_clock::now();
  emcryo::io::write_star(rewritten_path, star);
  const double rewrite_seconds = seconds_since(start);
  std::printf("write_star (read file, 5 columns edited): %.2f s\n", rewrite_seconds);

  std::error_code ignored;
  fs::remove_all(dir, ignored);
  const bool fast_enough = read_seconds < 3.0 && write_seconds < 3.0 && rewrite_seconds < 3.0;
  std::printf("target read < 3 s, write < 3 s: %s\n", fast_enough ? "met" : "NOT met");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t rows = 1000000;
  if (argc > 1) {
    char* end = nullptr;
    const unsigned long long parsed = std::strtoull(argv[1], &end, 10);
    if (end == argv[1] || *end != '\0' || parsed == 0) {
      std::fprintf(stderr, "usage: %s [rows]\n", argv[0]);
      return 2;
    }
    rows = static_cast<std::size_t>(parsed);
  }
  std::printf("STAR benchmark: data_optics + data_particles with %zu rows x 25 columns\n", rows);
  try {
    return run(rows);
  } catch (const emcryo::Error& error) {
    std::fprintf(stderr, "bench_star: %s\n", error.what());
    return 1;
  }
}
