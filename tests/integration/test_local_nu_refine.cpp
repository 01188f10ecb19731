// local-refine on a flexible domain and nu-refine on disordered density: simulated data with known
// truth, judged by FSC to the truth inside masks.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "emcryo/geometry/rotation.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/image/map_tools.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/star.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

fs::path log_file() { return fs::temp_directory_path() / "emcryo_test_local_nu.log"; }
int run(const std::string& command) { return test::run_logged(command, log_file()); }
const std::string exe = EMCRYO_EXE;
std::string model() { return fmt::format("{}/data/1tii.pdb.gz", EMCRYO_SOURCE_DIR); }

struct MaskedFsc {
  double at_half = 0, at_0143 = 0;  // Å
  double mean = 0;                  // mean FSC over the shells up to Nyquist: one figure for small differences
};

/// FSC of a map against the true map, both multiplied by the mask.
MaskedFsc masked_fsc(const fs::path& map, const fs::path& truth, const fs::path& mask) {
  io::MrcReader m(map);
  const int n = m.nx();
  const double pixel = m.pixel_size();
  const auto k = io::MrcReader(mask).read_all();
  const auto fsc = image::fsc_3d(image::masked(m.read_all(), k), image::masked(io::MrcReader(truth).read_all(), k), n);
  MaskedFsc r;
  r.at_half = image::resolution_at(fsc, 0.5, n, pixel);
  r.at_0143 = image::resolution_at(fsc, 0.143, n, pixel);
  for (int s = 1; s < n / 2; ++s) r.mean += fsc[static_cast<std::size_t>(s)] / (n / 2 - 1);
  return r;
}

/// Mean rotation (degrees) from the input poses, from a local-refine report's particles: the
/// angle between rows of two particles.star files.
double mean_rotation_between(const fs::path& a_star, const fs::path& b_star) {
  const auto a = io::read_star(a_star), b = io::read_star(b_star);
  const auto& ta = a.require_block("particles").table;
  const auto& tb = b.require_block("particles").table;
  double sum = 0;
  for (std::size_t i = 0; i < ta.rows(); ++i) {
    const auto ra = geometry::euler_to_matrix({ta.number(i, ta.require("rlnAngleRot")), ta.number(i, ta.require("rlnAngleTilt")),
                                               ta.number(i, ta.require("rlnAnglePsi"))});
    const auto rb = geometry::euler_to_matrix({tb.number(i, tb.require("rlnAngleRot")), tb.number(i, tb.require("rlnAngleTilt")),
                                               tb.number(i, tb.require("rlnAnglePsi"))});
    sum += geometry::rotation_angle_between(ra, rb);
  }
  return sum / static_cast<double>(ta.rows());
}

/// Body 2's true pose per particle (from truth.star) against refined poses: median angle, degrees.
double median_body2_error(const fs::path& truth_star, const fs::path& refined_star) {
  const auto t = io::read_star(truth_star), r = io::read_star(refined_star);
  const auto& tt = t.require_block("particles").table;
  const auto& rt = r.require_block("particles").table;
  std::vector<double> errors;
  for (std::size_t i = 0; i < tt.rows(); ++i) {
    const auto a = geometry::euler_to_matrix({tt.number(i, tt.require("emcryoBody2AngleRot")), tt.number(i, tt.require("emcryoBody2AngleTilt")),
                                              tt.number(i, tt.require("emcryoBody2AnglePsi"))});
    const auto b = geometry::euler_to_matrix({rt.number(i, rt.require("rlnAngleRot")), rt.number(i, rt.require("rlnAngleTilt")),
                                              rt.number(i, rt.require("rlnAnglePsi"))});
    errors.push_back(geometry::rotation_angle_between(a, b));
  }
  std::nth_element(errors.begin(), errors.begin() + static_cast<long>(errors.size() / 2), errors.end());
  return errors[errors.size() / 2];
}

/// Flexible-domain data in dir/data (body 2 = chain A of 1TII, a quarter of the mass, turned by 12
/// degrees (sd) about the hinge; box 40, 3 Å/px, seed 4) and its consensus in dir/cons: the
/// reconstruction at the particles' (body 1's) true poses, in which body 2 is blurred. 0 if both ran.
int make_flexible_set(const fs::path& dir, int particles, double snr) {
  if (const int rc = run(fmt::format("{} simulate --model {} --out {} --particles {} --box 40 --pixel-size 3 --snr {} --body2-chains A "
                                     "--flex-sigma 12 --seed 4",
                                     exe, model(), (dir / "data").string(), particles, snr)))
    return rc;
  return run(fmt::format("{} reconstruct --particles {} --out {}", exe, (dir / "data/particles.star").string(), (dir / "cons").string()));
}

/// local-refine of body 2 (its true mask) from the consensus of make_flexible_set, 6 iterations, into dir/name.
int local_refine_body2(const fs::path& dir, const std::string& name, const std::string& extra) {
  return run(fmt::format("{} local-refine --particles {} --ref {} --mask {} --out {} --max-iterations 6 {}", exe,
                         (dir / "data/particles.star").string(), (dir / "cons/map_unfil.mrc").string(),
                         (dir / "data/truth_body2_mask.mrc").string(), (dir / name).string(), extra));
}

}  // namespace

// Body 2 (chain A of 1TII, a quarter of the mass) turns by 12 degrees (sd) about the hinge. The
// consensus is the reconstruction at the particles' (body 1's) true poses: body 2 is blurred in it.
// local-refine around those poses, with the rest subtracted, must sharpen body 2 and move its poses
// towards body 2's own; without --subtract the rest of the particle (three quarters of the mass,
// absent from the masked reference) must pull body 2's poses away.
TEST(LocalRefine, SharpensTheFlexibleBodyAndSubtractionHelps) {
  const test::TempDir temp("local_refine", true);
  const fs::path& dir = temp.path();
  ASSERT_EQ(make_flexible_set(dir, 600, 1.0), 0);
  const auto local = [&](const std::string& name, const std::string& extra) { return local_refine_body2(dir, name, extra); };
  ASSERT_EQ(local("loc", "--subtract"), 0);
  const fs::path truth = dir / "data/truth_body2.mrc", mask = dir / "data/truth_body2_mask.mrc";
  const auto consensus = masked_fsc(dir / "cons/map_unfil.mrc", truth, mask);
  const auto refined = masked_fsc(dir / "loc/map_unfil.mrc", truth, mask);
  const double error_in = median_body2_error(dir / "data/truth.star", dir / "data/particles.star");
  const double error_out = median_body2_error(dir / "data/truth.star", dir / "loc/particles.star");
  std::printf("body 2 FSC to truth in its mask: consensus %.2f / %.2f Å (0.5 / 0.143, mean %.3f), local-refine %.2f / %.2f Å (mean %.3f); "
              "body 2 pose error %.2f -> %.2f deg\n",
              consensus.at_half, consensus.at_0143, consensus.mean, refined.at_half, refined.at_0143, refined.mean, error_in, error_out);
  // Measured (this test, 2026-12-01): 26.71 / 8.93 Å -> 22.38 / 7.82 Å, mean FSC 0.380 -> 0.438;
  // body 2 pose error 8.28 -> 6.58 deg; without --subtract 28.68 / 10.50 Å, mean 0.266, 15.48 deg.
  EXPECT_GT(refined.mean, consensus.mean);
  EXPECT_LT(refined.at_0143, consensus.at_0143);
  EXPECT_LT(error_out, 0.9 * error_in);
  EXPECT_TRUE(fs::exists(dir / "loc/subtracted.star"));
  EXPECT_TRUE(fs::exists(dir / "loc/half1_unfil.mrc"));
  EXPECT_NE(test::read_text(dir / "loc/report.html").find("How far poses moved"), std::string::npos);

  // --subtract: without it, the same run's body-2 poses and map are much worse.
  ASSERT_EQ(local("nosub", ""), 0);
  const auto unsubtracted = masked_fsc(dir / "nosub/map_unfil.mrc", truth, mask);
  const double error_nosub = median_body2_error(dir / "data/truth.star", dir / "nosub/particles.star");
  std::printf("without --subtract: %.2f / %.2f Å (mean %.3f), body 2 pose error %.2f deg\n", unsubtracted.at_half, unsubtracted.at_0143,
              unsubtracted.mean, error_nosub);
  EXPECT_GT(refined.mean, unsubtracted.mean + 0.05);
  EXPECT_GT(error_nosub, 1.3 * error_out);

  // Maximisation back-projects one pose per particle (at this SNR the posteriors are sharp: the
  // low-SNR test below compares the two maps).
  ASSERT_EQ(local("max", "--subtract --no-marginalization --save-posteriors 1"), 0);
  const auto significant = [&](const std::string& name) {
    const auto star = io::read_star(dir / name / "particles.star");
    const auto& t = star.require_block("particles").table;
    const auto v = t.numbers(t.require("rlnNrOfSignificantSamples"));
    double sum = 0;
    for (double x : v) sum += x;
    return sum / static_cast<double>(v.size());
  };
  std::printf("hypotheses back-projected per particle: marginalised %.1f, maximised %.1f\n", significant("loc"), significant("max"));
  EXPECT_EQ(significant("max"), 1.0);
  // With one pose per particle, the saved most probable hypothesis is the pose of particles.star:
  // both are written back in the input frame (the search ran about the fulcrum).
  {
    const auto posteriors = io::read_star(dir / "max/posteriors.star"), particles = io::read_star(dir / "max/particles.star");
    const auto& h = posteriors.require_block("posteriors").table;
    const auto& p = particles.require_block("particles").table;
    const auto hx = h.numbers(h.require("rlnOriginXAngst")), hy = h.numbers(h.require("rlnOriginYAngst"));
    const auto px = p.numbers(p.require("rlnOriginXAngst")), py = p.numbers(p.require("rlnOriginYAngst"));
    ASSERT_EQ(hx.size(), px.size());
    for (std::size_t i = 0; i < hx.size(); ++i) {
      EXPECT_NEAR(hx[i], px[i], 0.01) << "particle " << i;
      EXPECT_NEAR(hy[i], py[i], 0.01) << "particle " << i;
    }
  }
  EXPECT_GT(significant("loc"), 1.5);
}

// The switches at low SNR (0.15): marginalisation over the local poses must give a better body-2
// map than maximisation, and a pose prior of about the true spread (8 degrees; the flexing is 12)
// must keep body 2's poses nearer the truth and the map at least as good, both with the same
// 20-degree extent.
TEST(LocalRefine, AtLowSnrMarginalisationAndThePosePriorHelp) {
  const test::TempDir temp("local_refine_low_snr", true);
  const fs::path& dir = temp.path();
  ASSERT_EQ(make_flexible_set(dir, 800, 0.15), 0);
  const auto local = [&](const std::string& name, const std::string& extra) {
    return local_refine_body2(dir, name, "--subtract --rotation-extent 20 " + extra);
  };
  ASSERT_EQ(local("marg", ""), 0);
  ASSERT_EQ(local("max", "--no-marginalization"), 0);
  ASSERT_EQ(local("prior", "--pose-prior --prior-sigma-rot 8 --prior-sigma-shift 3"), 0);
  const fs::path truth = dir / "data/truth_body2.mrc", mask = dir / "data/truth_body2_mask.mrc";
  const auto marginalised = masked_fsc(dir / "marg/map_unfil.mrc", truth, mask);
  const auto maximised = masked_fsc(dir / "max/map_unfil.mrc", truth, mask);
  const auto prior = masked_fsc(dir / "prior/map_unfil.mrc", truth, mask);
  const double error_marg = median_body2_error(dir / "data/truth.star", dir / "marg/particles.star");
  const double error_max = median_body2_error(dir / "data/truth.star", dir / "max/particles.star");
  const double error_prior = median_body2_error(dir / "data/truth.star", dir / "prior/particles.star");
  std::printf("body 2 in its mask (0.5 / 0.143 Å, mean FSC; median pose error): marginalised %.2f / %.2f, %.4f, %.2f deg; maximised "
              "%.2f / %.2f, %.4f, %.2f deg; prior %.2f / %.2f, %.4f, %.2f deg\n",
              marginalised.at_half, marginalised.at_0143, marginalised.mean, error_marg, maximised.at_half, maximised.at_0143, maximised.mean,
              error_max, prior.at_half, prior.at_0143, prior.mean, error_prior);
  // Measured (2026-12-01; the consensus is 30.0 / 10.0 Å, mean 0.348, input pose error 8.36 deg):
  // marginalised 23.01 / 9.26 Å, mean 0.3696, 9.80 deg; maximised 23.27 / 9.78 Å, 0.3611, 10.27 deg;
  // prior 23.20 / 9.05 Å, 0.3728, 8.65 deg (seed 5: see bench/RESULTS.md).
  EXPECT_GT(marginalised.mean, maximised.mean + 0.004);
  EXPECT_LT(error_prior, 0.95 * error_marg);
  EXPECT_GT(prior.mean, marginalised.mean - 0.002);
  // And the prior keeps the poses nearer their input.
  const double moved = mean_rotation_between(dir / "data/particles.star", dir / "marg/particles.star");
  const double moved_prior = mean_rotation_between(dir / "data/particles.star", dir / "prior/particles.star");
  std::printf("mean rotation from the input: %.2f deg, with the prior %.2f deg\n", moved, moved_prior);
  EXPECT_LT(moved_prior, moved);
}

namespace {
/// Median of a map over the voxels where `where` holds.
double median_where(const std::vector<float>& map, const std::vector<bool>& where) {
  std::vector<double> v;
  for (std::size_t i = 0; i < map.size(); ++i)
    if (where[i]) v.push_back(map[i]);
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

/// Voxels where a true map is above `fraction` of its peak.
std::vector<bool> above(const std::vector<float>& map, double fraction) {
  const float peak = *std::max_element(map.begin(), map.end());
  std::vector<bool> out(map.size());
  for (std::size_t i = 0; i < map.size(); ++i) out[i] = map[i] > fraction * peak;
  return out;
}

/// refine and nu-refine at the same settings (from dir/data's true map low-passed to 30 Å, at most
/// 10 iterations) into dir/refine and dir/nu; 0 if both ran.
int refine_and_nu_refine(const fs::path& dir) {
  for (const auto& [command, name] : {std::pair{"refine", "refine"}, std::pair{"nu-refine", "nu"}})
    if (const int rc = run(fmt::format("{} {} --particles {} --ref {} --ini-high 30 --max-iterations 10 --out {}", exe, command,
                                       (dir / "data/particles.star").string(), (dir / "data/truth_class001.mrc").string(), (dir / name).string())))
      return rc;
  return 0;
}

struct RefineAndNu {
  MaskedFsc global, local;  // refine, nu-refine
};

/// Both maps' FSC to `truth` inside `mask`, printed with a label.
RefineAndNu compare(const fs::path& dir, const fs::path& truth, const fs::path& mask, const char* label) {
  const RefineAndNu r{masked_fsc(dir / "refine/map_unfil.mrc", truth, mask), masked_fsc(dir / "nu/map_unfil.mrc", truth, mask)};
  std::printf("%s, FSC to truth in its mask: refine %.2f / %.2f Å (0.5 / 0.143, mean %.4f), nu-refine %.2f / %.2f Å (mean %.4f)\n", label,
              r.global.at_half, r.global.at_0143, r.global.mean, r.local.at_half, r.local.at_0143, r.local.mean);
  return r;
}

/// nu-refine's median local resolution (Å) in the ordered core (ordered density above 15% of its
/// peak, away from the disordered density) and in the disordered region's own voxels.
std::pair<double, double> core_and_disorder_resolution(const fs::path& localres, const fs::path& ordered_truth, const fs::path& disordered_truth) {
  const auto resolution = io::MrcReader(localres).read_all();
  const auto ordered_map = io::MrcReader(ordered_truth).read_all(), disordered_map = io::MrcReader(disordered_truth).read_all();
  const auto ordered = above(ordered_map, 0.15), disordered = above(disordered_map, 0.15);
  const auto near_ordered = above(ordered_map, 0.02), near_disordered = above(disordered_map, 0.02);
  std::vector<bool> core(resolution.size()), region(resolution.size());
  for (std::size_t i = 0; i < core.size(); ++i) core[i] = ordered[i] && !near_disordered[i], region[i] = disordered[i] && !near_ordered[i];
  const std::pair r{median_where(resolution, core), median_where(resolution, region)};
  std::printf("local resolution (median): ordered core %.2f Å, disordered region %.2f Å\n", r.first, r.second);
  return r;
}
}  // namespace

// Chains A, D and E of 1TII (more than half its mass: a large, flexible region, like a detergent
// belt or a floppy domain around an ordered core) turned by 20 degrees, moved by 5 Å (sd) and
// scaled (occupancy 0.3-1) per particle, SNR 2: the disordered density's variation and the
// alignment errors it causes limit the map. One global filter, set by the FSC of the whole
// particle, leaves the disordered region's noise in the reference; the local filter on top of it
// smooths that region. nu-refine must give a clearly better map of the ordered part and see the
// difference in its local-resolution map.
TEST(NuRefine, BetterOrderedPartOnDisorderedDataAndItsLocalResolutionSeesTheDisorder) {
  const test::TempDir temp("nu_refine", true);
  const fs::path& dir = temp.path();
  ASSERT_EQ(run(fmt::format("{} simulate --model {} --out {} --particles 800 --box 40 --pixel-size 3 --snr 2 --disorder-chains A,D,E "
                            "--disorder-sigma 20 --disorder-shift 5 --seed 3",
                            exe, model(), (dir / "data").string())),
            0);
  ASSERT_EQ(refine_and_nu_refine(dir), 0);
  const auto [global, local] = compare(dir, dir / "data/truth_ordered.mrc", dir / "data/truth_ordered_mask.mrc", "ordered part");
  // Measured (2026-12-06, second session, nu-refine's local filter on top of refine's global one):
  // mean FSC refine 0.4717, nu-refine 0.4886 (bench/masked_fsc.py; --seed 5: 0.4869 -> 0.4982).
  // With the local filter alone (2026-12-01) the margin was larger here (0.4998) but nu-refine tied
  // or lost on the belt and uniform sets below. Since refine scores with the noise inside the mask
  // (masked_noise_inflation) both improved and the margin narrowed: refine 10.77 / 7.95 Å, mean
  // 0.4919; nu-refine 10.60 / 7.76 Å, 0.5012 (+0.009; clean-clone CI run, 2026-12-06).
  // With the references through their own solvent mask (2026-12-07): refine 9.31 / 7.51 Å, 0.5710;
  // nu-refine 9.28 / 7.40 Å, 0.5784 (+0.007).
  EXPECT_GT(local.mean, global.mean + 0.005);
  EXPECT_LE(local.at_0143, global.at_0143);
  EXPECT_LE(local.at_half, global.at_half);
  const auto [core, region] = core_and_disorder_resolution(dir / "nu/localres.mrc", dir / "data/truth_ordered.mrc", dir / "data/truth_disordered.mrc");
  EXPECT_LT(core, region);  // measured: 11.96 vs 14.18 Å
  EXPECT_NE(test::read_text(dir / "nu/report.html").find("Local resolution"), std::string::npos);
}

// A detergent-belt-like shell (simulate --belt): a ring of random blobs round 1TII's waist, drawn
// anew for every particle (its mass, place, tilt and shape vary), 0.3 times the particle's mass.
// nu-refine's local-resolution map must see the belt: clearly coarser there than in the ordered
// core; and its map of the particle without the belt must be no worse than refine's (the belt
// leaves little room: at the true poses the mean FSC is 0.684, refine reaches 0.602; a heavier
// belt, 0.5, takes over the alignment of both: pose errors 16-21 deg, bench/RESULTS.md).
TEST(NuRefine, NoWorseInsideADisorderedBeltAndItsLocalResolutionSeesTheBelt) {
  const test::TempDir temp("nu_refine_belt", true);
  const fs::path& dir = temp.path();
  ASSERT_EQ(run(fmt::format("{} simulate --model {} --out {} --particles 800 --box 40 --pixel-size 3 --snr 1 --belt --seed 1",  // the defaults: 24 x 14 Å, mass 0.3
                            exe, model(), (dir / "data").string())),
            0);
  ASSERT_EQ(refine_and_nu_refine(dir), 0);
  const auto [global, local] = compare(dir, dir / "data/truth_ordered.mrc", dir / "data/truth_ordered_mask.mrc", "particle without its belt");
  // Measured (2026-12-06, second session, bench/masked_fsc.py, seeds 1 / 2): refine mean FSC
  // 0.6023, 0.6192; nu-refine 0.6104, 0.6260 (pose error 4.54 -> 4.39, 4.54 -> 4.29 deg); seed 3
  // only 0.6288 -> 0.6302: the margin is small and this asserts it for seed 1. The local filter
  // alone tied (0.6024, 0.6163). With refine's scoring noise taken inside the mask: refine 9.37 /
  // 7.61 Å, mean 0.6096; nu-refine 9.28 / 7.57 Å, 0.6135 (+0.004; clean-clone CI run, 2026-12-06).
  // Since both project their references through the half map's own solvent mask
  // (jobs::reference_mask, 2026-12-07), which leaves the weak, smeared belt out of the references as
  // the local filter did: refine 9.14 / 7.41 Å, mean 0.6292; nu-refine 9.13 / 7.43 Å, 0.6280. The
  // local filter's gain here went to refine itself; nu-refine must not lose it.
  EXPECT_GT(local.mean, global.mean - 0.003);
  EXPECT_LE(local.at_0143, global.at_0143 + 0.1);
  EXPECT_LE(local.at_half, global.at_half + 0.1);
  const auto [core, belt] = core_and_disorder_resolution(dir / "nu/localres.mrc", dir / "data/truth_ordered.mrc", dir / "data/truth_belt.mrc");
  EXPECT_LT(core, belt - 2.0);
}

// Uniform 1TII (no disorder): the local filter must cost nothing against refine's global one.
TEST(NuRefine, NoWorseOnUniformData) {
  const test::TempDir temp("nu_refine_uniform", true);
  const fs::path& dir = temp.path();
  ASSERT_EQ(run(fmt::format("{} simulate --model {} --out {} --particles 800 --box 40 --pixel-size 3 --snr 0.5 --seed 1", exe, model(),
                            (dir / "data").string())),
            0);
  ASSERT_EQ(refine_and_nu_refine(dir), 0);
  const auto [global, local] = compare(dir, dir / "data/truth_class001.mrc", dir / "refine/mask.mrc", "uniform 1TII");
  // Measured (2026-12-06, second session, bench/local_nu_refine.sh unismall, masked_fsc.py, seeds
  // 1 / 2): refine mean 0.6562, 0.6479; nu-refine 0.6589, 0.6499, the same 0.143 shell (the local
  // filter alone: 0.6540, 0.6467). Allowed: no loss beyond 0.002 in mean FSC, none at 0.143.
  EXPECT_GT(local.mean, global.mean - 0.002);
  EXPECT_LE(local.at_0143, global.at_0143 + 0.05);
}

// simulate --belt: the truth records each particle's belt, the mean belt carries the mass asked
// for, and the belt draws from its own stream (the same seed gives the same poses without it).
TEST(Simulate, BeltIsRecordedAndLeavesThePosesAlone) {
  const test::TempDir temp("simulate_belt", true);
  const fs::path& dir = temp.path();
  const auto simulate = [&](const std::string& name, const std::string& extra) {
    return run(fmt::format("{} simulate --model {} --out {} --particles 200 --box 40 --pixel-size 3 --snr 1 --seed 2 {}", exe, model(),
                           (dir / name).string(), extra));
  };
  ASSERT_EQ(simulate("belt", "--belt --belt-height 24 --belt-width 14 --belt-mass 0.3 --belt-density-sd 0.25"), 0);
  ASSERT_EQ(simulate("plain", ""), 0);
  const auto belt_truth = io::read_star(dir / "belt/truth.star"), plain_truth = io::read_star(dir / "plain/truth.star");
  const auto& bt = belt_truth.require_block("particles").table;
  const auto& pt = plain_truth.require_block("particles").table;
  for (const char* column : {"rlnAngleRot", "rlnAngleTilt", "rlnOriginXAngst", "rlnDefocusU"})
    EXPECT_EQ(bt.numbers(bt.require(column)), pt.numbers(pt.require(column))) << column;
  const auto density = bt.numbers(bt.require("emcryoBeltDensity")), tilt = bt.numbers(bt.require("emcryoBeltTilt"));
  double mean_density = 0, spread = 0;
  for (double d : density) mean_density += d / static_cast<double>(density.size());
  for (double d : density) spread += (d - mean_density) * (d - mean_density) / static_cast<double>(density.size());
  EXPECT_NEAR(mean_density, 1.0, 0.06);
  EXPECT_NEAR(std::sqrt(spread), 0.25, 0.05);
  EXPECT_GT(*std::max_element(tilt.begin(), tilt.end()), 8.0);  // 8 degrees sd by default
  // The mean belt weighs 0.3 x the particle (x its particles' mean density).
  const auto sum = [](const fs::path& path) {
    const auto map = io::MrcReader(path).read_all();
    double s = 0;
    for (float v : map) s += std::max(0.0f, v);
    return s;
  };
  EXPECT_NEAR(sum(dir / "belt/truth_belt.mrc") / sum(dir / "belt/truth_ordered.mrc"), 0.3 * mean_density, 0.01);
  EXPECT_TRUE(fs::exists(dir / "belt/truth_belt_mask.mrc"));
  EXPECT_TRUE(fs::exists(dir / "belt/truth_ordered_mask.mrc"));
}
