// 2D classification on small simulated sets with known truth.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <thread>

#include "emcryo/em/projector.hpp"
#include "emcryo/em/projector2d.hpp"
#include "emcryo/geometry/rotation.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

std::string exe() { return EMCRYO_EXE; }

// Commands' output goes to one log in the temp folder.
int run(const std::string& command) {
  return test::run_logged(command, fs::temp_directory_path() / "emcryo_test_class2d.log");
}

std::string output_of(const std::string& command) { return test::run_capture(command).output; }

struct Column {
  std::vector<double> values;
};

std::vector<double> column(const io::StarFile& star, const std::string& block, const std::string& label) {
  const auto& t = star.require_block(block).table;
  return t.numbers(t.require(label));
}

double adjusted_rand_index(const std::vector<int>& a, const std::vector<int>& b) {
  std::map<std::pair<int, int>, double> joint;
  std::map<int, double> ca, cb;
  for (std::size_t i = 0; i < a.size(); ++i) joint[{a[i], b[i]}] += 1, ca[a[i]] += 1, cb[b[i]] += 1;
  auto c2 = [](double x) { return x * (x - 1) / 2; };
  double s = 0, sa = 0, sb = 0;
  for (auto& [k, v] : joint) s += c2(v);
  for (auto& [k, v] : ca) sa += c2(v);
  for (auto& [k, v] : cb) sb += c2(v);
  const double expected = sa * sb / c2(static_cast<double>(a.size()));
  return (s - expected) / ((sa + sb) / 2 - expected);
}

double circular(double d) {
  d = std::fmod(d, 360.0);
  if (d > 180) d -= 360;
  if (d < -180) d += 360;
  return d;
}

/// Median in-plane angle error: per class, the offset between estimated and true psi is a
/// constant (the class average's own orientation); errors are measured around its circular median.
double median_psi_error(const std::vector<int>& cls, const std::vector<double>& est, const std::vector<double>& truth) {
  std::map<int, std::vector<double>> diffs;
  for (std::size_t i = 0; i < cls.size(); ++i) diffs[cls[i]].push_back(circular(est[i] - truth[i]));
  std::vector<double> errors;
  for (auto& [k, d] : diffs) {
    double best_offset = 0, best_cost = 1e300;
    for (double o = -180; o < 180; o += 0.5) {
      std::vector<double> e;
      for (double v : d) e.push_back(std::abs(circular(v - o)));
      std::nth_element(e.begin(), e.begin() + static_cast<long>(e.size() / 2), e.end());
      if (e[e.size() / 2] < best_cost) best_cost = e[e.size() / 2], best_offset = o;
    }
    for (double v : d) errors.push_back(std::abs(circular(v - best_offset)));
  }
  std::nth_element(errors.begin(), errors.begin() + static_cast<long>(errors.size() / 2), errors.end());
  return errors[errors.size() / 2];
}

class Class2DTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = test::make_temp_dir("class2d");
    // 8 views of the demo model, 800 particles, SNR 0.1, a small box.
    ASSERT_EQ(run(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --out {} --particles 800 --box 48 --pixel-size 3 "
                              "--snr 0.1 --orientations views --views 8 --seed 3",
                              exe(), EMCRYO_SOURCE_DIR, (dir_ / "data").string())),
              0);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path dir_;
  static std::string classify(const std::string& name, const std::string& extra, int iterations = 15) {
    const fs::path out = dir_ / name;
    const int rc = run(fmt::format("{} class2d --particles {} --classes 8 --out {} --iterations {} --mask-diameter 130 --seed 1 {}",
                                   exe(), (dir_ / "data/particles.star").string(), out.string(), iterations, extra));
    EXPECT_EQ(rc, 0);
    return out.string();
  }
};
fs::path Class2DTest::dir_;

/// Per true view: the best NCC of any class average with the view's CTF-free projection, after the
/// best in-plane rotation (3 degree steps) and shift (+-2 px), inside the mask, both low-passed to
/// `resolution` Å.
std::map<int, double> view_match(const fs::path& data, const fs::path& out, double mask_diameter, double resolution) {
  const auto truth = io::read_star(data / "truth.star");
  const auto true_view = column(truth, "particles", "emcryoTrueView");
  io::MrcReader classes_file(out / "classes.mrcs");
  const int n = classes_file.nx();
  const int K = classes_file.nz();
  const double pixel = classes_file.pixel_size();
  io::MrcReader truth_map(data / "truth_class001.mrc");
  const em::Projector projector(truth_map.read_all(), n);
  const auto views_rot = column(truth, "particles", "rlnAngleRot");
  const auto views_tilt = column(truth, "particles", "rlnAngleTilt");
  const auto mask = image::soft_round_mask(n, 2, mask_diameter / pixel / 2 - 3, 5);
  const double radius = n * pixel / resolution;
  const auto list = em::make_frequency_list(n, radius);
  std::map<int, std::pair<double, double>> view_angles;
  for (std::size_t i = 0; i < true_view.size(); ++i)
    view_angles[static_cast<int>(true_view[i])] = {views_rot[i], views_tilt[i]};
  // The true projections at psi = 0, low-passed to the comparison resolution.
  std::map<int, std::vector<float>> truth_images;
  std::map<int, double> best;
  for (auto& [view, angles] : view_angles) {
    std::vector<image::Complex> spectrum(image::half_size(n, n));
    projector.project(geometry::euler_to_matrix({angles.first, angles.second, 0}), spectrum.data(), n, radius);
    truth_images[view] = image::fft_inverse_2d(spectrum, n);
    image::apply_mask(truth_images[view].data(), mask);
    best[view] = -1;
  }
  // Every class average at every tried rotation and shift against every view.
  for (int k = 0; k < K; ++k) {
    const em::Projector2D rotator(classes_file.read_section(k), n);
    std::vector<image::Complex> sample(list.size());
    for (double psi_try = 0; psi_try < 360; psi_try += 3) {
      rotator.sample(psi_try, list, sample.data());
      std::vector<image::Complex> full(image::half_size(n, n));
      for (std::size_t f = 0; f < list.size(); ++f) full[static_cast<std::size_t>(list.index[f])] = sample[f];
      // Restore the kx = 0 column's negative half from Hermitian symmetry.
      for (int ky = 1; ky < n / 2; ++ky)
        full[static_cast<std::size_t>(n - ky) * (n / 2 + 1)] = std::conj(full[static_cast<std::size_t>(ky) * (n / 2 + 1)]);
      for (int sy = -2; sy <= 2; ++sy)
        for (int sx = -2; sx <= 2; ++sx) {
          auto shifted = full;
          image::shift_half_grid_2d(shifted.data(), n, sx, sy);
          auto img = image::fft_inverse_2d(shifted, n);
          image::apply_mask(img.data(), mask);
          for (auto& [view, t] : truth_images) best[view] = std::max(best[view], image::correlation(img.data(), t.data(), img.size()));
        }
    }
  }
  return best;
}

double ari_against_truth(const fs::path& data, const fs::path& out) {
  const auto true_view = column(io::read_star(data / "truth.star"), "particles", "emcryoTrueView");
  const auto cls = column(io::read_star(out / "particles.star"), "particles", "rlnClassNumber");
  EXPECT_EQ(cls.size(), true_view.size());
  return adjusted_rand_index(std::vector<int>(cls.begin(), cls.end()), std::vector<int>(true_view.begin(), true_view.end()));
}

TEST(Class2D, RecoversTwelveViewsAtSnr005) {
  // The set (bench/class2d_vs_relion.sh): 12 distinct views of 1TII, 3000 particles, 64 px,
  // 2 Å/px, SNR 0.05. Views are spread at least 60 degrees apart, so the true projections
  // themselves put 2998 of 3000 particles in their own view (ARI 0.999, bench/class2d_ceiling).
  const fs::path dir = test::make_temp_dir("class2d12");
  ASSERT_EQ(run(fmt::format("{} simulate --model {}/data/1tii.pdb.gz --out {} --particles 3000 --box 64 --pixel-size 2 "
                            "--snr 0.05 --orientations views --views 12 --seed 7",
                            exe(), EMCRYO_SOURCE_DIR, (dir / "data").string())),
            0);
  const fs::path out = dir / "c2d";
  ASSERT_EQ(run(fmt::format("{} class2d --particles {} --classes 12 --out {} --iterations 15 --psi-step 5 --offset-range 5 "
                            "--mask-diameter 120",
                            exe(),
                            (dir / "data/particles.star").string(), out.string())),
            0);
  const double ari = ari_against_truth(dir / "data", out);
  std::printf("adjusted Rand index %.4f\n", ari);
  // Measured 0.999 (seed 1). Seeds 1-5 (bench/RESULTS.md, 2026-12-06): 0.997-0.999 for four; seed 4
  // still ends in the split-and-merge local optimum (0.892).
  EXPECT_GE(ari, 0.99);
  // Every true view is matched by a class average: NCC >= 0.8 at 12 Å.
  for (const auto& [view, ncc] : view_match(dir / "data", out, 120, 12)) {
    std::printf("view %d: best NCC %.3f\n", view, ncc);
    EXPECT_GE(ncc, 0.8) << "view " << view;
  }
  fs::remove_all(dir);
}

TEST_F(Class2DTest, RecoversKnownViews) {
  const fs::path out = classify("full", "");
  const auto truth = io::read_star(dir_ / "data/truth.star");
  const auto result = io::read_star(out / "particles.star");
  const auto true_view = column(truth, "particles", "emcryoTrueView");
  const auto true_psi = column(truth, "particles", "rlnAnglePsi");
  const auto cls = column(result, "particles", "rlnClassNumber");
  const auto psi = column(result, "particles", "rlnAnglePsi");
  ASSERT_EQ(cls.size(), true_view.size());
  std::vector<int> a(cls.begin(), cls.end()), b(true_view.begin(), true_view.end());
  const double ari = adjusted_rand_index(a, b);
  const double psi_error = median_psi_error(a, psi, true_psi);
  std::printf("adjusted Rand index %.3f, median in-plane error %.2f deg\n", ari, psi_error);
  // 8 views at SNR 0.1 in a 48 px box.
  EXPECT_GE(ari, 0.9);
  EXPECT_LE(psi_error, 5.0);
  for (const auto& [view, ncc] : view_match(dir_ / "data", out, 130, 12)) {
    std::printf("view %d: best NCC %.3f\n", view, ncc);
    EXPECT_GE(ncc, 0.8) << "view " << view;
  }
}

TEST_F(Class2DTest, SwitchesDoWhatTheySay) {
  const fs::path out = classify("switches", "--force-max-poses --hard-classify-last --keep-iterations 4", 4);
  // With --force-max-poses each particle has one pose per class with weight; classes still spread.
  const auto mid = io::read_star(out / "posteriors_it002.star");
  const auto hyp_mid = column(mid, "posteriors", "emcryoHypothesesWithWeight");
  const auto cls_mid = column(mid, "posteriors", "emcryoClassPosteriorMax");
  int spread = 0;
  for (std::size_t i = 0; i < hyp_mid.size(); ++i) {
    EXPECT_LE(hyp_mid[i], 8) << "particle " << i;
    EXPECT_GE(hyp_mid[i], 1);
    spread += cls_mid[i] < 0.999;
  }
  EXPECT_GT(spread, 0) << "class posteriors should still be spread before the last iteration";
  // With --hard-classify-last the final iteration puts each particle in exactly one class (and
  // with forced max poses, at exactly one pose).
  const auto last = io::read_star(out / "posteriors_it004.star");
  const auto hyp = column(last, "posteriors", "emcryoHypothesesWithWeight");
  const auto cls = column(last, "posteriors", "emcryoClassPosteriorMax");
  for (std::size_t i = 0; i < hyp.size(); ++i) {
    EXPECT_EQ(hyp[i], 1) << "particle " << i;
    EXPECT_DOUBLE_EQ(cls[i], 1.0) << "particle " << i;
  }
  // Default run: pose marginalised, so many hypotheses carry weight in early iterations.
  const fs::path marg = classify("marginal", "", 2);
  const auto first = io::read_star(marg / "posteriors_it001.star");
  const auto hyp_first = column(first, "posteriors", "emcryoHypothesesWithWeight");
  double mean = 0;
  for (double h : hyp_first) mean += h / static_cast<double>(hyp_first.size());
  EXPECT_GT(mean, 8);
}

TEST_F(Class2DTest, ContinueAfterKillEqualsUninterruptedRun) {
  const fs::path straight = classify("straight", "", 6);
  const fs::path killed = dir_ / "killed";
  const fs::path pid_file = dir_ / "pid";
  ASSERT_EQ(test::run(fmt::format("{} class2d --particles {} --classes 8 --out {} --iterations 6 --mask-diameter 130 "
                                  "--seed 1 >/dev/null 2>&1 & echo $! > {}",
                                  exe(), (dir_ / "data/particles.star").string(), killed.string(), pid_file.string())),
            0);
  // Kill -9 as soon as iteration 2 is checkpointed.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool seen = false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(killed / "particles_it002.star")) {
      seen = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::string pid = test::read_text(pid_file);
  test::run(fmt::format("kill -9 {} 2>/dev/null", pid.substr(0, pid.find('\n'))));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(seen);
  EXPECT_FALSE(fs::exists(killed / "classes.mrcs")) << "the run finished before it could be killed";
  ASSERT_EQ(run(fmt::format("{} class2d --continue {}", exe(), killed.string())), 0);
  EXPECT_EQ(test::read_text(killed / "classes.mrcs").substr(1024), test::read_text(straight / "classes.mrcs").substr(1024));
  const auto a = io::read_star(killed / "particles.star");
  const auto b = io::read_star(straight / "particles.star");
  for (const char* label : {"rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnLogLikeliContribution"})
    EXPECT_EQ(column(a, "particles", label), column(b, "particles", label)) << label;
  // A second start into the same folder must not overwrite it.
  EXPECT_NE(run(fmt::format("{} class2d --particles {} --classes 8 --out {}", exe(), (dir_ / "data/particles.star").string(),
                            killed.string())),
            0);
}

TEST_F(Class2DTest, ResultsDoNotDependOnTheThreadCount) {
  // Each run as `emcryo -j N class2d ...`: the same classes and poses with 1 and 2 threads.
  const auto run_with = [&](int threads) {
    const fs::path out = dir_ / fmt::format("threads{}", threads);
    EXPECT_EQ(run(fmt::format("{} -j {} class2d --particles {} --classes 8 --out {} --iterations 4 --mask-diameter 130 --seed 1", exe(),
                              threads, (dir_ / "data/particles.star").string(), out.string())),
              0);
    return io::read_star(out / "particles.star");
  };
  const auto one = run_with(1), two = run_with(2);
  const auto& a = one.require_block("particles").table;
  const auto& b = two.require_block("particles").table;
  ASSERT_EQ(a.rows(), b.rows());
  for (const char* label : {"rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnMaxValueProbDistribution"})
    for (std::size_t r = 0; r < a.rows(); ++r) ASSERT_EQ(a.text(r, a.find(label)), b.text(r, b.find(label))) << label << " row " << r;
}

TEST_F(Class2DTest, RelionReadsOutputs) {
  if (!test::have_program("relion_refine")) GTEST_SKIP() << "RELION not installed";
  const fs::path out = classify("for_relion", "", 3);
  const fs::path rel = dir_ / "relion";
  fs::create_directories(rel);
  ASSERT_EQ(run(fmt::format("relion_star_handler --i {} --o {}", (out / "particles.star").string(), (rel / "copy.star").string())), 0);
  const auto copy = io::read_star(rel / "copy.star");
  EXPECT_EQ(column(copy, "particles", "rlnClassNumber").size(), 800u);
  // One relion_refine Class2D iteration started from our averages and particles.
  ASSERT_EQ(run(fmt::format("cd {} && relion_refine --i {} --ref {} --o {} --iter 1 --K 8 --particle_diameter 130 --ctf "
                            "--psi_step 12 --offset_range 2 --offset_step 2 --tau2_fudge 2 --j 2 --zero_mask --dont_combine_weights_via_disc",
                            rel.string(), (out / "particles.star").string(), (out / "classes.mrcs").string(), (rel / "run").string())),
            0);
  EXPECT_TRUE(fs::exists(rel / "run_it001_classes.mrcs"));
  EXPECT_TRUE(fs::exists(rel / "run_it001_data.star"));
}

TEST_F(Class2DTest, BadInputFailsBeforeWork) {
  const std::string star = (dir_ / "data/particles.star").string();
  auto message = output_of(fmt::format("{} class2d --particles {} --classes 900 --out {}", exe(), star, (dir_ / "bad1").string()));
  EXPECT_NE(message.find("larger than the number of particles"), std::string::npos) << message;
  message = output_of(fmt::format("{} class2d --particles {} --classes 4 --mask-diameter 400 --out {}", exe(), star, (dir_ / "bad2").string()));
  EXPECT_NE(message.find("wider than the box"), std::string::npos) << message;
  // A STAR without CTF columns needs --no-ctf.
  io::StarFile stripped = io::read_star(star);
  {
    auto& t = stripped.find_block("particles")->table;
    io::StarTable copy;
    copy.source_file = t.source_file;
    for (std::size_t r = 0; r < t.rows(); ++r) copy.add_row();
    for (const auto& name : t.column_names()) {
      if (name.rfind("rlnDefocus", 0) == 0 || name == "rlnCtfBfactor") continue;
      const int src = t.find(name), dst = copy.add_column(name);
      for (std::size_t r = 0; r < t.rows(); ++r) copy.set_text(r, dst, t.text(r, src));
    }
    t = copy;
  }
  io::write_star(dir_ / "data/no_ctf.star", stripped);
  message = output_of(fmt::format("{} class2d --particles {} --classes 4 --out {}", exe(), (dir_ / "data/no_ctf.star").string(), (dir_ / "bad3").string()));
  EXPECT_NE(message.find("--no-ctf"), std::string::npos) << message;
  // Pixel size in the STAR disagreeing with the stack header.
  std::string text = test::read_text(star);
  const auto pos = text.find(" 3.000000 48 2");
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, 9, " 2.500000");
  test::write_text(dir_ / "data/wrong_pixel.star", text);
  message = output_of(fmt::format("{} class2d --particles {} --classes 4 --out {}", exe(), (dir_ / "data/wrong_pixel.star").string(), (dir_ / "bad4").string()));
  EXPECT_NE(message.find("disagrees"), std::string::npos) << message;
  // A job refused for bad input leaves no output folder behind (it created them, and wrote nothing).
  for (const char* refused : {"bad1", "bad2", "bad3", "bad4"}) EXPECT_FALSE(fs::exists(dir_ / refused)) << refused;
}

TEST_F(Class2DTest, BadParticlesAreSkippedAndListed) {
  // A copy of the data set whose 6th image has a NaN pixel and whose 10th is constant.
  test::copy_with_bad_images(dir_ / "data", dir_ / "badpix", 3);
  const fs::path out = dir_ / "badpix_out";
  ASSERT_EQ(run(fmt::format("{} class2d --particles {} --classes 4 --out {} --iterations 2 --mask-diameter 130", exe(),
                            (dir_ / "badpix/particles.star").string(), out.string())),
            0);
  const std::string log = test::read_text(out / "run.log");
  EXPECT_NE(log.find("000006@particles.mrcs): NaN or Inf"), std::string::npos) << log;
  EXPECT_NE(log.find("000010@particles.mrcs): constant image"), std::string::npos) << log;
  const std::string report = test::read_text(out / "report.html");
  EXPECT_NE(report.find("NaN or Inf"), std::string::npos);
  EXPECT_EQ(column(io::read_star(out / "particles.star"), "particles", "rlnClassNumber").size(), 798u);
}

}  // namespace
