// `emcryo reconstruct` end to end, checked against known truth and against RELION 3.1
// (relion_project makes stacks from known poses and CTFs; relion_reconstruct reconstructs our
// simulated stacks). RELION tests are skipped when its programs are not installed.
//
// Note on comparing with relion_reconstruct: RELION zeroes its map outside a sphere of radius
// n/2 (soft edge), emcryo keeps the whole box. Both maps are therefore compared inside a soft
// sphere of radius n/2 - 4 that lies within RELION's untouched region; without it the noise in
// emcryo's corners alone pulls the FSC of noisy reconstructions down to ~0.8.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"
#include "support/test_support.hpp"

namespace {

namespace fs = std::filesystem;
namespace img = emcryo::image;
namespace test = emcryo::test;

using test::CommandResult;

// A fresh folder under the system temp folder, removed at the end (kept when the test failed,
// for a look at the logs and maps).
class TempDir : public test::TempDir {
 public:
  TempDir() : test::TempDir("test_reconstruct", /*keep_on_failure=*/true) {}
};

// Runs a shell command in `dir` (RELION resolves image names against the working folder); its
// output is also kept in dir/command_<n>.log.
CommandResult run(const std::string& command, const fs::path& dir) {
  static std::atomic<int> serial{0};
  return test::run_capture(command, dir, dir / fmt::format("command_{}.log", serial++));
}

#define ASSERT_RUNS(result)                                                                           \
  do {                                                                                                \
    const CommandResult& r_ = (result);                                                               \
    ASSERT_EQ(r_.exit_code, 0) << "output:\n" << r_.output.substr(r_.output.size() > 4000 ? r_.output.size() - 4000 : 0); \
  } while (0)

std::string emcryo() { return fmt::format("'{}'", EMCRYO_EXE); }
std::string model() { return fmt::format("'{}/data/1tii.pdb.gz'", EMCRYO_SOURCE_DIR); }

#define REQUIRE_RELION(...)                                                    \
  do {                                                                         \
    for (const char* p_ : {__VA_ARGS__})                                       \
      if (!test::have_program(p_)) GTEST_SKIP() << p_ << " is not installed";  \
  } while (0)

struct Map {
  std::vector<float> data;
  int n = 0;
  double pixel = 0;
};

Map read_map(const fs::path& path) {
  const emcryo::io::MrcReader reader(path);
  Map m;
  m.n = reader.nx();
  m.pixel = reader.pixel_size();
  m.data = reader.read_all();
  EXPECT_EQ(reader.ny(), m.n);
  EXPECT_EQ(reader.nz(), m.n);
  return m;
}

// FSC of two maps inside a soft sphere of radius n/2 - 4 (see the note at the top).
std::vector<double> masked_fsc(const Map& a, const Map& b) {
  EXPECT_EQ(a.n, b.n);
  const auto mask = img::soft_round_mask(a.n, 3, a.n / 2.0 - 4, 3);
  auto ma = a.data, mb = b.data;
  img::apply_mask(ma.data(), mask);
  img::apply_mask(mb.data(), mask);
  return img::fsc_3d(ma, mb, a.n);
}

// Real-space correlation inside a sphere of radius n/2 - 4.
double masked_correlation(const Map& a, const Map& b) {
  const int n = a.n;
  const double c = n / 2, r2 = (n / 2.0 - 4) * (n / 2.0 - 4);
  std::vector<float> va, vb;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        if ((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c) > r2) continue;
        const std::size_t i = (static_cast<std::size_t>(z) * n + y) * n + x;
        va.push_back(a.data[i]);
        vb.push_back(b.data[i]);
      }
  return img::correlation(va.data(), vb.data(), va.size());
}

std::string format_fsc(const std::vector<double>& fsc) {
  std::string s;
  for (std::size_t i = 0; i < fsc.size(); ++i) s += fmt::format("{}{}:{:.3f}", i ? " " : "", i, fsc[i]);
  return s;
}

// Every shell 1..last at or above `threshold`.
void expect_fsc_at_least(const std::vector<double>& fsc, int last, double threshold, const std::string& what) {
  for (int s = 1; s <= last; ++s)
    EXPECT_GE(fsc[static_cast<std::size_t>(s)], threshold) << what << ", shell " << s << "\n" << format_fsc(fsc);
}

double integrated(const std::vector<double>& fsc, int last) {
  double sum = 0;
  for (int s = 1; s <= last; ++s) sum += fsc[static_cast<std::size_t>(s)];
  return sum;
}

std::string simulate_command(const std::string& out, int particles, int box, double pixel, double snr,
                             const std::string& extra = "") {
  return fmt::format("{} simulate --model {} --particles {} --box {} --pixel-size {} --snr {} --out {} {}", emcryo(),
                     model(), particles, box, pixel, snr, out, extra);
}

// ---------------------------------------------------------------------------------------------
// a. relion_project makes a stack from known angles, origins and CTFs; emcryo and
//    relion_reconstruct must give the same map.

void write_angles_star(const fs::path& path, int count, int box, double pixel, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::ofstream f(path);
  f << "# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
       "_rlnAmplitudeContrast #3\n_rlnSphericalAberration #4\n_rlnVoltage #5\n_rlnImagePixelSize #6\n"
       "_rlnImageSize #7\n_rlnImageDimensionality #8\n";
  f << fmt::format("1 opticsGroup1 0.1 2.7 300 {} {} 2\n\n", pixel, box);
  f << "# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n"
       "_rlnOpticsGroup #3\n_rlnAngleRot #4\n_rlnAngleTilt #5\n_rlnAnglePsi #6\n_rlnOriginXAngst #7\n"
       "_rlnOriginYAngst #8\n_rlnDefocusU #9\n_rlnDefocusV #10\n_rlnDefocusAngle #11\n";
  for (int i = 0; i < count; ++i) {
    const double rot = 360 * u(rng) - 180, tilt = std::acos(2 * u(rng) - 1) * 180 / std::numbers::pi,
                 psi = 360 * u(rng) - 180;
    const double ox = 12 * u(rng) - 6, oy = 12 * u(rng) - 6;  // Å
    const double defocus = 8000 + 17000 * u(rng), astig = 400 * u(rng), angle = 180 * u(rng);
    f << fmt::format("{:06}@unused.mrcs mic{:03}.mrc 1 {:.3f} {:.3f} {:.3f} {:.3f} {:.3f} {:.2f} {:.2f} {:.2f}\n", i + 1,
                     i / 100, rot, tilt, psi, ox, oy, defocus + astig / 2, defocus - astig / 2, angle);
  }
}

TEST(Reconstruct, RelionProjectStackMatchesRelionReconstruct) {
  REQUIRE_RELION("relion_project", "relion_reconstruct");
  TempDir dir;
  const int n = 48;
  const double pixel = 3.0;
  ASSERT_RUNS(run(simulate_command("sim", 10, n, pixel, 1), dir.path()));
  const Map truth = read_map(dir / "sim/truth_class001.mrc");
  ASSERT_EQ(truth.n, n);
  // White noise at about the level of the projections' own standard deviation (SNR ~1).
  std::vector<float> projection(static_cast<std::size_t>(n) * n, 0.0f);
  for (int z = 0; z < n; ++z)
    for (std::size_t p = 0; p < projection.size(); ++p) projection[p] += truth.data[static_cast<std::size_t>(z) * n * n + p];
  double mean, sd;
  img::mean_stddev(projection.data(), projection.size(), mean, sd);
  ASSERT_GT(sd, 0);

  write_angles_star(dir / "angles.star", 1500, n, pixel, 42);
  ASSERT_RUNS(run(fmt::format("relion_project --i sim/truth_class001.mrc --o proj --ang angles.star --ctf "
                              "--add_noise --white_noise {:.4f}",
                              sd),
                  dir.path()));
  ASSERT_TRUE(fs::exists(dir / "proj.mrcs"));
  ASSERT_TRUE(fs::exists(dir / "proj.star"));
  ASSERT_RUNS(run(fmt::format("{} reconstruct --particles proj.star --out rec", emcryo()), dir.path()));
  ASSERT_RUNS(run("relion_reconstruct --i proj.star --o relion.mrc --ctf", dir.path()));

  const Map ours = read_map(dir / "rec/map_unfil.mrc");
  const Map theirs = read_map(dir / "relion.mrc");
  EXPECT_NEAR(ours.pixel, pixel, 1e-3);
  const int last = n / 3;  // 2/3 of Nyquist (n/2)
  const auto fsc = masked_fsc(ours, theirs);
  expect_fsc_at_least(fsc, last, 0.9, "FSC(emcryo, relion_reconstruct)");
  // Same quality against the truth, shell by shell.
  const auto f_ours = masked_fsc(ours, truth), f_theirs = masked_fsc(theirs, truth);
  for (int s = 1; s <= last; ++s)
    EXPECT_GE(f_ours[static_cast<std::size_t>(s)], f_theirs[static_cast<std::size_t>(s)] - 0.03)
        << "shell " << s << "\nemcryo: " << format_fsc(f_ours) << "\nrelion: " << format_fsc(f_theirs);
  // Same grey scale (both divide by the summed CTF^2).
  double m1, s1, m2, s2;
  const auto mask = img::soft_round_mask(n, 3, n / 2.0 - 4, 3);
  auto a = ours.data, b = theirs.data;
  img::apply_mask(a.data(), mask);
  img::apply_mask(b.data(), mask);
  img::mean_stddev(a.data(), a.size(), m1, s1);
  img::mean_stddev(b.data(), b.size(), m2, s2);
  EXPECT_NEAR(s1 / s2, 1.0, 0.1);
}

// ---------------------------------------------------------------------------------------------
// b. emcryo simulate's stack and STAR reconstruct in relion_reconstruct to the true map: angles,
//    origins, CTF and pixel size follow RELION. emcryo's own map reaches the same bound.

TEST(Reconstruct, SimulatedStackReconstructsToTruthInRelionAndEmcryo) {
  REQUIRE_RELION("relion_reconstruct");
  TempDir dir;
  const int n = 48;
  ASSERT_RUNS(run(simulate_command("sim", 3000, n, 3.0, 10), dir.path()));
  ASSERT_RUNS(run("relion_reconstruct --i particles.star --o relion.mrc --ctf", dir / "sim"));
  ASSERT_RUNS(run(fmt::format("{} reconstruct --particles sim/particles.star --out rec", emcryo()), dir.path()));
  const Map truth = read_map(dir / "sim/truth_class001.mrc");
  const Map relion = read_map(dir / "sim/relion.mrc");
  const Map ours = read_map(dir / "rec/map_unfil.mrc");
  const int last = n / 3;
  expect_fsc_at_least(masked_fsc(relion, truth), last, 0.9, "FSC(relion_reconstruct, truth)");
  expect_fsc_at_least(masked_fsc(ours, truth), last, 0.9, "FSC(emcryo, truth)");
  expect_fsc_at_least(masked_fsc(ours, relion), last, 0.9, "FSC(emcryo, relion_reconstruct)");
  // The FSC-weighted (Wiener-filtered) map correlates at least as well with the truth in real
  // space as the unfiltered one (its per-shell FSC at the highest shells may dip a little: the
  // filter optimises the map as a whole, not each shell).
  const Map filtered = read_map(dir / "rec/map.mrc");
  EXPECT_GE(masked_correlation(filtered, truth), masked_correlation(ours, truth));
  EXPECT_GT(masked_correlation(ours, truth), 0.99);
}

// ---------------------------------------------------------------------------------------------
// c. More particles, better map: 500, 2000, 8000 particles at SNR 0.05.

TEST(Reconstruct, ResolutionImprovesWithParticleCount) {
  TempDir dir;
  const int n = 32;
  const double pixel = 4.5;
  std::vector<double> resolution, score;
  for (int count : {500, 2000, 8000}) {
    const std::string name = fmt::format("p{}", count);
    ASSERT_RUNS(run(simulate_command(name, count, n, pixel, 0.05), dir.path()));
    ASSERT_RUNS(run(fmt::format("{} reconstruct --particles {}/particles.star --out {}/rec", emcryo(), name, name), dir.path()));
    // The half-map FSC written by the job, and its 0.143 resolution.
    const auto star = emcryo::io::read_star(dir / name / "rec/fsc.star");
    const auto& t = star.require_block("fsc").table;
    const auto fsc = t.numbers(t.require("rlnFourierShellCorrelation"));
    ASSERT_EQ(fsc.size(), static_cast<std::size_t>(n / 2 + 1));
    resolution.push_back(img::resolution_at(fsc, 0.143, n, pixel));
    const Map truth = read_map(dir / name / "truth_class001.mrc");
    const Map map = read_map(dir / name / "rec/map_unfil.mrc");
    score.push_back(integrated(masked_fsc(map, truth), n / 2 - 1));
  }
  EXPECT_GT(resolution[0], resolution[1]) << "500 vs 2000 particles";
  EXPECT_GT(resolution[1], resolution[2]) << "2000 vs 8000 particles";
  EXPECT_LT(score[0], score[1]) << "500 vs 2000 particles";
  EXPECT_LT(score[1], score[2]) << "2000 vs 8000 particles";
  // Sanity: the resolutions are between Nyquist and the box.
  for (double r : resolution) {
    EXPECT_GE(r, 2 * pixel);
    EXPECT_LT(r, n * pixel / 2);
  }
}

TEST(Reconstruct, ThreadCountDoesNotChangeTheMap) {
  // Per-thread accumulators are summed at the end: only the order of float additions differs.
  TempDir dir;
  const int n = 32;
  ASSERT_RUNS(run(simulate_command("sim", 1000, n, 4.5, 0.2), dir.path()));
  ASSERT_RUNS(run(fmt::format("{} -j 1 reconstruct --particles sim/particles.star --out j1", emcryo()), dir.path()));
  ASSERT_RUNS(run(fmt::format("{} -j 2 reconstruct --particles sim/particles.star --out j2", emcryo()), dir.path()));
  for (const char* name : {"map_unfil.mrc", "map.mrc", "half1_unfil.mrc"}) {
    const Map a = read_map(dir / "j1" / name), b = read_map(dir / "j2" / name);
    double m, sd, diff = 0;
    img::mean_stddev(a.data.data(), a.data.size(), m, sd);
    for (std::size_t i = 0; i < a.data.size(); ++i) diff = std::max(diff, static_cast<double>(std::abs(a.data[i] - b.data[i])));
    EXPECT_LT(diff, 1e-3 * sd) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// d. C5: a C5-symmetric truth reconstructed with C1 and with C5.

TEST(Reconstruct, SymmetryC5AgreesWithC1AndHelps) {
  TempDir dir;
  const int n = 32;
  ASSERT_RUNS(run(simulate_command("sim", 3000, n, 4.5, 0.5, "--sym C5"), dir.path()));
  ASSERT_RUNS(run(fmt::format("{} reconstruct --particles sim/particles.star --out c1 --sym C1", emcryo()), dir.path()));
  ASSERT_RUNS(run(fmt::format("{} reconstruct --particles sim/particles.star --out c5 --sym C5", emcryo()), dir.path()));
  const Map truth = read_map(dir / "sim/truth_class001.mrc");
  const Map c1 = read_map(dir / "c1/map_unfil.mrc");
  const Map c5 = read_map(dir / "c5/map_unfil.mrc");
  expect_fsc_at_least(masked_fsc(c1, c5), n / 4, 0.9, "FSC(C1 map, C5 map)");
  const int last = n / 3;
  const double score_c1 = integrated(masked_fsc(c1, truth), last), score_c5 = integrated(masked_fsc(c5, truth), last);
  EXPECT_GE(score_c5, score_c1) << "C5: " << format_fsc(masked_fsc(c5, truth)) << "\nC1: " << format_fsc(masked_fsc(c1, truth));

  // RELION with --sym C5 gives the same map (same symmetry axes).
  if (!test::have_program("relion_reconstruct")) GTEST_SKIP() << "relion_reconstruct is not installed";
  ASSERT_RUNS(run("relion_reconstruct --i particles.star --o relion_c5.mrc --ctf --sym C5", dir / "sim"));
  expect_fsc_at_least(masked_fsc(c5, read_map(dir / "sim/relion_c5.mrc")), last, 0.9, "FSC(emcryo C5, relion C5)");
}

// ---------------------------------------------------------------------------------------------
// e. Bad input fails with a message that says what is wrong.

TEST(Reconstruct, MissingStackIsNamed) {
  TempDir dir;
  ASSERT_RUNS(run(simulate_command("sim", 10, 32, 4.5, 1), dir.path()));
  // The simulated STAR with its stack renamed to one that does not exist.
  std::string star = test::read_text(dir / "sim/particles.star");
  for (std::size_t at = 0; (at = star.find("@particles.mrcs", at)) != std::string::npos;)
    star.replace(at, 15, "@no_such_stack.mrcs");
  test::write_text(dir / "sim/missing.star", star);
  const auto r = run(fmt::format("{} reconstruct --particles sim/missing.star --out rec", emcryo()), dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no_such_stack.mrcs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("missing.star"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "rec/map.mrc"));
}

TEST(Reconstruct, UnknownSymmetryIsRefused) {
  TempDir dir;
  ASSERT_RUNS(run(simulate_command("sim", 10, 32, 4.5, 1), dir.path()));
  const auto r = run(fmt::format("{} reconstruct --particles sim/particles.star --out rec --sym X9", emcryo()), dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("X9"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("symmetry"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "rec/map.mrc"));
}

TEST(Reconstruct, MissingParticlesFileIsNamed) {
  TempDir dir;
  const auto r = run(fmt::format("{} reconstruct --particles nowhere.star --out rec", emcryo()), dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("nowhere.star"), std::string::npos) << r.output;
}

}  // namespace
