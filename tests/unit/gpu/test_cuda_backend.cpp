// The CUDA scoring backend against the CPU one on a problem of real size and structure, the
// device choice and its errors. Tests that need a GPU skip, saying why, where there is none.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <complex>
#include <cstring>
#include <random>
#include <tuple>

#include "emcryo/core/error.hpp"
#include "emcryo/core/mpi.hpp"
#include "emcryo/em/expectation.hpp"
#include "emcryo/em/posterior.hpp"
#include "emcryo/em/projector.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/em/volume_transforms.hpp"
#include "emcryo/image/ctf.hpp"
#include "emcryo/image/fourier.hpp"
#include "emcryo/gpu/backend.hpp"

using namespace emcryo;

namespace {

#define REQUIRE_GPU()                                                        \
  do {                                                                       \
    if (gpu::devices().empty()) GTEST_SKIP() << "no CUDA device: " << gpu::no_device_reason(); \
  } while (0)

/// P particles x T shifts against J templates at F frequencies, built as the E-step builds them:
/// templates are near-copies of a few views (neighbouring poses score almost alike, which is what
/// makes the best pose a close call), particles are CTF-modulated, shifted views plus unit noise.
struct Problem {
  int P = 64, T = 9, J = 640, F = 3000;
  std::vector<float> rows, ctf2, templates, power;
  em::ScoreRequest request() const {
    em::ScoreRequest q;
    q.rows = rows.data(), q.row_count = P * T, q.row_stride = 2 * F, q.particles = P;
    q.ctf2 = ctf2.data(), q.ctf2_stride = F;
    q.templates = templates.data(), q.power = power.data(), q.template_count = J, q.template_stride = 2 * F, q.power_stride = F;
    q.frequencies = F;
    return q;
  }
};

Problem make_problem(unsigned seed) {
  Problem pr;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0, 1);
  const int views = 16;
  std::vector<std::vector<em::Complex>> view(views, std::vector<em::Complex>(static_cast<std::size_t>(pr.F)));
  for (auto& v : view)
    for (int f = 0; f < pr.F; ++f) v[static_cast<std::size_t>(f)] = em::Complex(normal(rng), normal(rng)) * (2.0f / (1.0f + f / 300.0f));
  std::vector<std::vector<em::Complex>> tmpl(static_cast<std::size_t>(pr.J), std::vector<em::Complex>(static_cast<std::size_t>(pr.F)));
  pr.templates.resize(static_cast<std::size_t>(pr.J) * 2 * pr.F);
  pr.power.resize(static_cast<std::size_t>(pr.J) * pr.F);
  for (int j = 0; j < pr.J; ++j) {
    auto& t = tmpl[static_cast<std::size_t>(j)];
    for (int f = 0; f < pr.F; ++f)
      t[static_cast<std::size_t>(f)] = view[static_cast<std::size_t>(j % views)][static_cast<std::size_t>(f)] +
                                        0.15f * em::Complex(normal(rng), normal(rng)) / (1.0f + f / 300.0f);
    em::store_template_row(t.data(), pr.F, pr.templates.data() + static_cast<std::size_t>(j) * 2 * pr.F,
                           pr.power.data() + static_cast<std::size_t>(j) * pr.F);
  }
  std::vector<em::Complex> ramps(static_cast<std::size_t>(pr.T) * pr.F);
  for (auto& r : ramps) r = std::polar(1.0f, 6.2831853f * uniform(rng));
  std::vector<float> isg(static_cast<std::size_t>(pr.F), 1.0f), particle_rows(static_cast<std::size_t>(pr.T) * 2 * pr.F);
  pr.rows.resize(static_cast<std::size_t>(pr.P) * pr.T * 2 * pr.F);
  pr.ctf2.resize(static_cast<std::size_t>(pr.P) * pr.F);
  std::vector<em::Complex> x(static_cast<std::size_t>(pr.F));
  std::vector<float> ctf(static_cast<std::size_t>(pr.F));
  for (int p = 0; p < pr.P; ++p) {
    const auto& truth = tmpl[static_cast<std::size_t>(rng() % static_cast<unsigned>(pr.J))];
    const float phase = 6.28f * uniform(rng);
    const auto& ramp = ramps[static_cast<std::size_t>(rng() % static_cast<unsigned>(pr.T)) * static_cast<std::size_t>(pr.F)];
    for (int f = 0; f < pr.F; ++f) {
      const auto fi = static_cast<std::size_t>(f);
      ctf[fi] = std::sin(0.004f * f + phase);
      x[fi] = ctf[fi] * truth[fi] * std::conj((&ramp)[fi]) + em::Complex(normal(rng), normal(rng));
      pr.ctf2[static_cast<std::size_t>(p) * pr.F + fi] = ctf[fi] * ctf[fi];
    }
    em::fill_score_rows(x.data(), ctf.data(), isg.data(), ramps.data(), pr.T, pr.F, particle_rows.data());
    for (int t = 0; t < pr.T; ++t)  // shift-major: row t * P + p
      std::copy_n(particle_rows.data() + static_cast<std::size_t>(t) * 2 * pr.F, 2 * pr.F,
                  pr.rows.data() + (static_cast<std::size_t>(t) * pr.P + p) * 2 * pr.F);
  }
  return pr;
}

std::vector<float> scores(em::ScoringBackend& backend, const em::ScoreRequest& q) {
  backend.plan(1, q.particles, q.template_count);
  std::vector<float> out(static_cast<std::size_t>(q.row_count) * q.template_count, std::nanf(""));
  backend.score(q, out.data(), 0);
  return out;
}

struct Agreement {
  double max_error = 0;       // log-likelihood units
  double worst_best_loss = 0; // CPU score of the CPU's best minus CPU score of the GPU's best, per particle
  int best_differs = 0;       // particles whose best hypothesis differs
};

Agreement compare(const Problem& pr, const std::vector<float>& cpu, const std::vector<float>& gpu) {
  Agreement a;
  for (std::size_t i = 0; i < cpu.size(); ++i) a.max_error = std::max(a.max_error, static_cast<double>(std::abs(cpu[i] - gpu[i])));
  for (int p = 0; p < pr.P; ++p) {
    std::size_t best_cpu = 0, best_gpu = 0;
    bool first = true;
    for (int t = 0; t < pr.T; ++t)
      for (int j = 0; j < pr.J; ++j) {
        const std::size_t i = (static_cast<std::size_t>(t) * pr.P + p) * pr.J + j;
        if (first || cpu[i] > cpu[best_cpu]) best_cpu = i;
        if (first || gpu[i] > gpu[best_gpu]) best_gpu = i;
        first = false;
      }
    a.best_differs += best_cpu != best_gpu;
    a.worst_best_loss = std::max(a.worst_best_loss, static_cast<double>(cpu[best_cpu] - cpu[best_gpu]));
  }
  return a;
}

}  // namespace

TEST(DeviceChoice, ParsesDeviceListsAndPrecisions) {
  EXPECT_EQ(gpu::parse_device_list("0"), std::vector<int>{0});
  EXPECT_EQ(gpu::parse_device_list("1,0,3"), (std::vector<int>{1, 0, 3}));
  for (const char* bad : {"", "a", "0,", "-1", "0,0", "1.5"}) EXPECT_THROW(gpu::parse_device_list(bad), Error) << bad;
  EXPECT_EQ(gpu::parse_precision("split-tf32"), gpu::Precision::split_tf32);
  EXPECT_EQ(gpu::precision_name(gpu::parse_precision("tf32")), "tf32");
  EXPECT_THROW(gpu::parse_precision("fp16"), Error);
}

// cuBLAS is opened at run time, not linked (src/gpu/cublas_library.hpp): in a CUDA build it opens
// and every function the backend calls resolves, with or without a device.
TEST(CudaLibraries, CublasOpensAtRunTimeWithEveryFunction) {
  if (!gpu::built_with_cuda()) GTEST_SKIP() << "built without CUDA";
  EXPECT_EQ(gpu::runtime_library_problem(), "");
}

TEST(DeviceChoice, CpuWhenForcedOrWithoutDevice) {
  gpu::set_device_choice({true, {}});
  EXPECT_EQ(gpu::make_backend()->name(), "CPU (OpenBLAS)");
  gpu::set_device_choice({});
  if (gpu::devices().empty()) {
    EXPECT_FALSE(gpu::no_device_reason().empty());
    EXPECT_EQ(gpu::make_backend()->name(), "CPU (OpenBLAS)");
    gpu::set_device_choice({false, {0}});  // asked for a GPU that is not there: an error, not the CPU
    try {
      gpu::make_backend();
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
    }
  } else {
    EXPECT_NE(gpu::make_backend()->name().find("CUDA"), std::string::npos);
    gpu::set_device_choice({false, {static_cast<int>(gpu::devices().size())}});
    EXPECT_THROW(gpu::make_backend(), Error);
  }
  gpu::set_device_choice({});
}

TEST(CudaBackend, ScoresMatchTheCpuBackendAtEveryPrecision) {
  REQUIRE_GPU();
  const Problem pr = make_problem(7);
  const auto cpu = scores(*em::make_cpu_backend(), pr.request());
  for (const auto precision : {gpu::Precision::fp32, gpu::Precision::split_tf32, gpu::Precision::tf32}) {
    gpu::CudaOptions options;
    options.precision = precision;
    const auto backend = gpu::make_cuda_backend(options);
    const auto out = scores(*backend, pr.request());
    for (float v : out) ASSERT_TRUE(std::isfinite(v)) << "an unwritten or broken score";
    const Agreement a = compare(pr, cpu, out);
    std::printf("%-10s max |GPU - CPU| %.4g, best pose differs for %d of %d particles, worst loss %.4g\n",
                gpu::precision_name(precision).c_str(), a.max_error, a.best_differs, pr.P, a.worst_best_loss);
    if (precision == gpu::Precision::tf32) {
      EXPECT_LT(a.max_error, 50.0);  // TF32 alone: coarse, measured and reported, not the default
    } else {
      // FP32 and split-TF32: the same best pose, scores within a small fraction of one log unit.
      EXPECT_LT(a.max_error, 0.05);
      EXPECT_EQ(a.best_differs, 0);
    }
  }
}

TEST(CudaBackend, ResidentTemplatesStayUntilTheNextPlanAndCrossCorrelationMatches) {
  REQUIRE_GPU();
  Problem pr = make_problem(11);
  pr.T = 2, pr.rows.resize(static_cast<std::size_t>(pr.P) * pr.T * 2 * pr.F);
  const auto backend = gpu::make_cuda_backend({});
  auto q = pr.request();
  q.templates_resident = true;
  const auto first = scores(*backend, q);
  backend->plan(1, pr.P, pr.J);
  std::vector<float> again(first.size());
  backend->score(q, again.data(), 0);
  EXPECT_EQ(first, again);
  // New templates after a plan(): the backend must not use the stale copy.
  for (auto& v : pr.templates) v *= 0.5f;
  for (auto& v : pr.power) v *= 0.25f;
  const auto cpu = scores(*em::make_cpu_backend(), pr.request());
  const auto changed = scores(*backend, q);
  EXPECT_LT(compare(pr, cpu, changed).max_error, 0.05);
  q.cross_correlation = true;
  auto cq = pr.request();
  cq.cross_correlation = true;
  const auto cc_cpu = scores(*em::make_cpu_backend(), cq);
  const auto cc_gpu = scores(*backend, q);
  double worst = 0;
  for (std::size_t i = 0; i < cc_cpu.size(); ++i) worst = std::max(worst, static_cast<double>(std::abs(cc_cpu[i] - cc_gpu[i])));
  EXPECT_LT(worst, 1e-4);
}

TEST(CudaBackend, SmallRequestsGoToTheCpuAndOversizedOnesFailClearly) {
  REQUIRE_GPU();
  const Problem pr = make_problem(3);
  gpu::CudaOptions options;
  options.cpu_below_flops = 1e12;  // everything to the CPU: bit-identical to the CPU backend
  EXPECT_EQ(scores(*gpu::make_cuda_backend(options), pr.request()), scores(*em::make_cpu_backend(), pr.request()));
  // Templates that cannot fit the card: a one-line error before anything is read or allocated.
  auto q = pr.request();
  q.template_count = 1 << 26;
  const auto backend = gpu::make_cuda_backend({});
  backend->plan(1, q.particles, 1);
  std::vector<float> out(1);
  try {
    backend->score(q, out.data(), 0);
    ADD_FAILURE() << "expected an out-of-memory error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MiB are free"), std::string::npos) << e.what();
  }
}

namespace {

/// Smooth random references (a few Gaussian blobs), as 2D classes or 3D maps, behind the
/// TemplateSource seam the E-step uses.
std::vector<float> blobs(int n, int dimensions, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> where(0.3f * n, 0.7f * n);
  const std::size_t voxels = dimensions == 3 ? static_cast<std::size_t>(n) * n * n : static_cast<std::size_t>(n) * n;
  std::vector<float> v(voxels, 0.0f);
  for (int b = 0; b < 6; ++b) {
    const float cx = where(rng), cy = where(rng), cz = dimensions == 3 ? where(rng) : 0.0f;
    for (std::size_t i = 0; i < voxels; ++i) {
      const float x = static_cast<float>(i % n), y = static_cast<float>(i / n % n), z = dimensions == 3 ? static_cast<float>(i / n / n) : 0.0f;
      v[i] += std::exp(-((x - cx) * (x - cx) + (y - cy) * (y - cy) + (z - cz) * (z - cz)) / 8.0f);
    }
  }
  return v;
}

class Classes2D final : public em::TemplateSource {
 public:
  Classes2D(int n, int K) {
    for (int k = 0; k < K; ++k) p_.emplace_back(blobs(n, 2, 100 + k), n);
  }
  int classes() const override { return static_cast<int>(p_.size()); }
  void sample(int k, const geometry::Euler& o, const em::FrequencyList& list, em::Complex* out) const override {
    p_[static_cast<std::size_t>(k)].sample(o.psi, list, out);
  }
  em::ReferenceGrids grids() const override {
    em::ReferenceGrids g{2, 2, 2 * p_.front().box(), p_.front().box() + 1, {}, {}};
    for (const auto& p : p_) g.classes.push_back(p.grid().data());
    return g;
  }

 private:
  std::vector<em::Projector2D> p_;
};

class Maps3D final : public em::TemplateSource {
 public:
  Maps3D(int n, int K) {
    for (int k = 0; k < K; ++k) p_.emplace_back(blobs(n, 3, 200 + k), n);
  }
  int classes() const override { return static_cast<int>(p_.size()); }
  void sample(int k, const geometry::Euler& o, const em::FrequencyList& list, em::Complex* out) const override {
    p_[static_cast<std::size_t>(k)].sample(geometry::euler_to_matrix(o), list, out);
  }
  em::ReferenceGrids grids() const override {
    em::ReferenceGrids g{3, 2, 2 * p_.front().box(), p_.front().box() + 1, {}, {}};
    for (const auto& p : p_) g.classes.push_back(p.grid().data());
    return g;
  }

 private:
  std::vector<em::Projector> p_;
};

/// Maps3D's maps as the GPU transforms make them for refine: their transforms kept on the card
/// (Projector::held()), read there in place; the host copies only made when host code samples.
class KeptMaps3D final : public em::TemplateSource {
 public:
  KeptMaps3D(em::VolumeTransforms& device, int n, int K) {
    for (int k = 0; k < K; ++k) p_.push_back(device.projector(blobs(n, 3, 200 + k), n, 2));
  }
  int classes() const override { return static_cast<int>(p_.size()); }
  void sample(int k, const geometry::Euler& o, const em::FrequencyList& list, em::Complex* out) const override {
    p_[static_cast<std::size_t>(k)].sample(geometry::euler_to_matrix(o), list, out);
  }
  em::ReferenceGrids grids() const override {
    em::ReferenceGrids g{3, 2, 2 * p_.front().box(), p_.front().box() + 1, {}, {}};
    for (const auto& p : p_) g.classes.push_back(nullptr), g.held.push_back(p.held());
    return g;
  }
  const em::Projector& projector(int k) const { return p_[static_cast<std::size_t>(k)]; }

 private:
  std::vector<em::Projector> p_;
};

/// The largest |expected - got| relative to the largest |expected|, over every score added.
struct RelativeError {
  double worst = 0, largest = 0;
  void add(const std::vector<float>& expected, const float* got) {
    for (std::size_t i = 0; i < expected.size(); ++i) {
      EXPECT_TRUE(std::isfinite(got[i]));
      worst = std::max(worst, static_cast<double>(std::abs(expected[i] - got[i])));
      largest = std::max(largest, static_cast<double>(std::abs(expected[i])));
    }
  }
  double value() const { return largest > 0 ? worst / largest : 1.0; }
};

/// Scores of J random poses against T random rows: templates sampled on the host (the CPU
/// backend's input) versus sampled by the GPU itself; the largest difference relative to the
/// largest score.
double sampled_against_host(const em::TemplateSource& source, int n, int J, unsigned seed) {
  const auto list = em::make_frequency_list(n, n / 2.0 - 2);
  const int F = static_cast<int>(list.size()), T = 3;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> angle(0, 360);
  std::normal_distribution<float> normal;
  std::vector<std::pair<int, geometry::Euler>> poses;
  for (int j = 0; j < J; ++j) poses.push_back({j % source.classes(), geometry::Euler{angle(rng), angle(rng) / 2, angle(rng)}});
  std::vector<float> templates(static_cast<std::size_t>(J) * 2 * F), power(static_cast<std::size_t>(J) * F), rows(static_cast<std::size_t>(T) * 2 * F),
      ctf2(static_cast<std::size_t>(F));
  std::vector<em::Complex> sample(static_cast<std::size_t>(F));
  for (int j = 0; j < J; ++j) {
    source.sample(poses[static_cast<std::size_t>(j)].first, poses[static_cast<std::size_t>(j)].second, list, sample.data());
    em::store_template_row(sample.data(), F, templates.data() + static_cast<std::size_t>(j) * 2 * F, power.data() + static_cast<std::size_t>(j) * F);
  }
  for (auto& r : rows) r = normal(rng);
  for (auto& c : ctf2) c = std::abs(normal(rng));
  em::ScoreRequest q;
  q.rows = rows.data(), q.row_count = T, q.row_stride = 2 * F, q.particles = 1, q.ctf2 = ctf2.data(), q.ctf2_stride = F;
  q.template_count = J, q.template_stride = 2 * F, q.power_stride = F, q.frequencies = F;
  q.templates = templates.data(), q.power = power.data();
  const auto cpu = scores(*em::make_cpu_backend(), q);
  gpu::CudaOptions options;
  options.precision = gpu::Precision::fp32;
  const auto backend = gpu::make_cuda_backend(options);
  EXPECT_TRUE(backend->samples_templates(source));
  q.templates = nullptr, q.power = nullptr;
  q.sampled = {&source, poses.data(), &list};
  RelativeError error;
  error.add(cpu, scores(*backend, q).data());
  return error.value();
}

}  // namespace

TEST(CudaBackend, TemplatesSampledOnTheGpuScoreAsTheHostSampledOnes) {
  REQUIRE_GPU();
  const Classes2D classes(48, 3);
  const Maps3D maps(32, 2);
  const double error_2d = sampled_against_host(classes, 48, 200, 5);
  const double error_3d = sampled_against_host(maps, 32, 150, 6);
  std::printf("GPU-sampled templates: max |score difference| / max |score|: 2D %.3g, 3D %.3g\n", error_2d, error_3d);
  EXPECT_LT(error_2d, 1e-4);
  EXPECT_LT(error_3d, 1e-4);
  // A source without grids (no reference yet) is sampled on the host, and the switch turns it off.
  struct NoGrids final : em::TemplateSource {
    int classes() const override { return 1; }
    void sample(int, const geometry::Euler&, const em::FrequencyList& list, em::Complex* out) const override {
      std::fill(out, out + list.size(), em::Complex{});
    }
  } none;
  EXPECT_FALSE(gpu::make_cuda_backend({})->samples_templates(none));
  EXPECT_FALSE(gpu::make_cuda_backend({})->scores_many(none));  // its passes go particle by particle
  gpu::CudaOptions off;
  off.sample_templates = false;
  EXPECT_FALSE(gpu::make_cuda_backend(off)->samples_templates(classes));
}

// refine's projectors on the GPU keep their padded transforms on the card: templates sampled
// there in place score as those sampled on the host from the copy made when the host first reads
// it, and that copy is the CPU's transform.
TEST(CudaBackend, ProjectorsKeptOnTheGpuSampleInPlaceAsTheirHostCopies) {
  REQUIRE_GPU();
  const auto backend = gpu::make_cuda_backend({});
  const KeptMaps3D kept(backend->volume_transforms(), 32, 2);
  for (int k = 0; k < 2; ++k) ASSERT_NE(kept.projector(k).held(), nullptr);
  const double error = sampled_against_host(kept, 32, 150, 7);
  std::printf("templates sampled from transforms kept on the GPU: max |score difference| / max |score| %.3g\n", error);
  EXPECT_LT(error, 1e-4);
  // A few templates brought to the host (refine's noise residuals) are the host's samples.
  const auto list = em::make_frequency_list(32, 14);
  const int F = static_cast<int>(list.size()), J = 5;
  std::vector<std::pair<int, geometry::Euler>> poses;
  for (int j = 0; j < J; ++j) poses.push_back({j % 2, geometry::Euler{37.0 * j, 11.0 + 29.0 * j, 300.0 - 41.0 * j}});
  std::vector<em::Complex> brought(static_cast<std::size_t>(J) * F), host_sample(static_cast<std::size_t>(F));
  ASSERT_TRUE(backend->samples_templates(kept));
  backend->plan(1, 1, 1);
  backend->sample_to_host({&kept, poses.data(), &list}, J, F, reinterpret_cast<float*>(brought.data()));
  double sample_worst = 0, sample_largest = 0;
  for (int j = 0; j < J; ++j) {
    kept.sample(poses[static_cast<std::size_t>(j)].first, poses[static_cast<std::size_t>(j)].second, list, host_sample.data());
    for (int f = 0; f < F; ++f) {
      sample_worst = std::max(sample_worst, static_cast<double>(std::abs(brought[static_cast<std::size_t>(j) * F + f] - host_sample[static_cast<std::size_t>(f)])));
      sample_largest = std::max(sample_largest, static_cast<double>(std::abs(host_sample[static_cast<std::size_t>(f)])));
    }
  }
  std::printf("templates sampled on the GPU to the host: max |GPU - host| %.3g of max %.3g\n", sample_worst, sample_largest);
  EXPECT_LT(sample_worst, 1e-5 * sample_largest);
  double worst = 0, largest = 0;
  const em::Projector cpu(blobs(32, 3, 201), 32, 2);
  const auto& got = kept.projector(1).grid();
  ASSERT_EQ(got.size(), cpu.grid().size());
  for (std::size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, static_cast<double>(std::abs(got[i] - cpu.grid()[i]))), largest = std::max(largest, static_cast<double>(std::abs(cpu.grid()[i])));
  EXPECT_LT(worst, 2e-6 * largest);
}

namespace {

/// Many one-particle requests as the E-step's batched stages make them (rows from the particle's
/// X, CTF and 1/sigma^2 at fine and base shifts; templates sampled from `source`), of varied sizes
/// (some larger than one tile), scored by the GPU at once against the CPU backend scoring
/// each with host-built rows and host-sampled templates. Returns the largest difference relative
/// to the largest score.
double many_against_cpu(const em::TemplateSource& source, int n, bool cross_correlation, unsigned seed, double group_floats = 0,
                        int tile_rows = 0, int split = 0) {
  const auto list = em::make_frequency_list(n, n / 2.0 - 2);
  const int F = static_cast<int>(list.size()), N = 150;
  const auto shift_grid = em::make_shift_grid(3, 1).fine;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> angle(0, 360);
  std::uniform_real_distribution<float> uniform(0, 1);
  std::normal_distribution<float> normal;
  struct Particle {
    std::vector<float> x, ctf, isg, ctf2;
    std::vector<int> shifts;
    std::vector<std::pair<int, geometry::Euler>> poses;
  };
  std::vector<Particle> particles(N);
  std::vector<em::ScoreRequest> requests;
  for (int i = 0; i < N; ++i) {
    Particle& p = particles[static_cast<std::size_t>(i)];
    for (int f = 0; f < F; ++f) {
      p.x.push_back(normal(rng)), p.x.push_back(normal(rng));
      p.ctf.push_back(2 * uniform(rng) - 1), p.isg.push_back(0.5f + uniform(rng));
      p.ctf2.push_back(p.ctf.back() * p.ctf.back() * p.isg.back());
    }
    const int T = 1 + static_cast<int>(rng() % 40), J = 1 + static_cast<int>(rng() % 70);
    for (int t = 0; t < T; ++t) p.shifts.push_back(static_cast<int>(rng() % shift_grid.size()));
    for (int j = 0; j < J; ++j) p.poses.push_back({j % source.classes(), geometry::Euler{angle(rng), angle(rng) / 2, angle(rng)}});
    em::ScoreRequest q;
    q.row_count = T, q.row_stride = 2 * F, q.particles = 1, q.ctf2 = p.ctf2.data(), q.ctf2_stride = F;
    q.template_count = J, q.template_stride = 2 * F, q.power_stride = F, q.frequencies = F, q.cross_correlation = cross_correlation;
    q.sampled = {&source, p.poses.data(), &list};
    const std::pair<float, float> base = i % 3 ? std::pair{uniform(rng) - 0.5f, 2 * uniform(rng) - 1} : std::pair{0.0f, 0.0f};
    q.particle_rows = {p.x.data(), p.ctf.data(), p.isg.data(), shift_grid.data(), p.shifts.data(), base, &list};
    requests.push_back(q);
  }
  gpu::CudaOptions options;
  options.precision = gpu::Precision::fp32;
  if (group_floats > 0) options.many_group_floats = group_floats;
  options.many_tile_rows = tile_rows, options.many_split = split;
  const auto backend = gpu::make_cuda_backend(options);
  EXPECT_TRUE(backend->scores_many(source));
  backend->plan(1, 1, 1);
  std::vector<std::vector<float>> gpu_scores(N);
  std::vector<float*> outs;
  for (int i = 0; i < N; ++i) {
    const auto& q = requests[static_cast<std::size_t>(i)];
    gpu_scores[static_cast<std::size_t>(i)].assign(static_cast<std::size_t>(q.row_count) * q.template_count, std::nanf(""));
    outs.push_back(gpu_scores[static_cast<std::size_t>(i)].data());
  }
  backend->score_many(requests, outs);
  const auto cpu = em::make_cpu_backend();
  RelativeError error;
  std::vector<em::Complex> sample(static_cast<std::size_t>(F));
  for (int i = 0; i < N; ++i) {
    em::ScoreRequest q = requests[static_cast<std::size_t>(i)];
    std::vector<float> rows(static_cast<std::size_t>(q.row_count) * 2 * F), templates(static_cast<std::size_t>(q.template_count) * 2 * F),
        power(static_cast<std::size_t>(q.template_count) * F);
    em::build_particle_rows(q.particle_rows, q.row_count, F, rows.data());
    for (int j = 0; j < q.template_count; ++j) {
      source.sample(q.sampled.poses[j].first, q.sampled.poses[j].second, list, sample.data());
      em::store_template_row(sample.data(), F, templates.data() + static_cast<std::size_t>(j) * 2 * F, power.data() + static_cast<std::size_t>(j) * F);
    }
    q.rows = rows.data(), q.templates = templates.data(), q.power = power.data(), q.sampled = {}, q.particle_rows = {};
    error.add(scores(*cpu, q), gpu_scores[static_cast<std::size_t>(i)].data());
  }
  return error.value();
}

}  // namespace

// The E-step's batched stages on the GPU (score_many): rows built, templates sampled and every
// small product scored on the card give the CPU's scores, 2D and 3D, -D^2 and cross-correlation.
TEST(CudaBackend, PassesScoredManyAtOnceOnTheGpuScoreAsTheCpu) {
  REQUIRE_GPU();
  const Classes2D classes(48, 3);
  const Maps3D maps(32, 2);
  const double error_2d = many_against_cpu(classes, 48, false, 11), error_3d = many_against_cpu(maps, 32, false, 12);
  const double error_cc = many_against_cpu(maps, 32, true, 13);
  // Groups of a few requests each: staged while the one before is scored (two in flight).
  const double error_groups = many_against_cpu(maps, 32, false, 14, 200000);
  std::printf("score_many on the GPU: max |score difference| / max |score|: 2D %.3g, 3D %.3g, 3D cross-correlation %.3g, 3D in "
              "small groups %.3g\n", error_2d, error_3d, error_cc, error_groups);
  EXPECT_LT(error_2d, 1e-4);
  EXPECT_LT(error_3d, 1e-4);
  EXPECT_LT(error_cc, 1e-4);
  EXPECT_LT(error_groups, 1e-4);
}

// Each tile shape (8, 16, 32 shifts) with and without the inner dimension cut into chunks gives
// the CPU's scores (requests of 1-40 shifts and 1-70 templates: partial tiles of every kind).
TEST(CudaBackend, EveryTileShapeAndSplitOfTheManyKernelScoresAsTheCpu) {
  REQUIRE_GPU();
  const Maps3D maps(32, 2);
  for (const int rows : {8, 16, 32})
    for (const int split : {1, 3}) {
      const double error = many_against_cpu(maps, 32, rows == 16, 20 + static_cast<unsigned>(rows + split), 0, rows, split);
      std::printf("score_many, tiles of %d rows, %d chunk(s): max |score difference| / max |score| %.3g\n", rows, split, error);
      EXPECT_LT(error, 1e-4) << rows << " rows, " << split << " chunks";
    }
}

namespace {

/// Random inputs of the M-step sums: B particles' X, C/sigma^2 and C^2/sigma^2 (as 2 (C/sigma^2)^2)
/// at F frequencies, and T shift ramps.
struct SumsInputs {
  int T, F;
  std::vector<em::Complex> x, ramps;
  std::vector<float> ctf_isg, ctf2;
  SumsInputs(int B, int shifts, int frequencies, std::mt19937& rng)
      : T(shifts), F(frequencies), x(static_cast<std::size_t>(B) * F), ramps(static_cast<std::size_t>(T) * F), ctf_isg(x.size()),
        ctf2(x.size()) {
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> uniform(0, 1);
    for (auto& v : x) v = em::Complex(normal(rng), normal(rng));
    for (auto& r : ramps) r = std::polar(1.0f, 6.2831853f * uniform(rng));
    for (std::size_t i = 0; i < ctf_isg.size(); ++i) ctf_isg[i] = normal(rng), ctf2[i] = ctf_isg[i] * ctf_isg[i] * 2;
  }
  /// The terms of particles [first, first + count) as one batch with its own particle indices
  /// (kept in `own`, which must outlive the batch).
  em::TemplateSumsBatch batch(const std::vector<em::SumTerm>& terms, int first, int count, std::vector<em::SumTerm>& own) const {
    own.clear();
    for (auto t : terms)
      if (t.b >= first && t.b < first + count) t.b -= first, own.push_back(t);
    em::TemplateSumsBatch q;
    q.particles = count, q.shifts = T, q.frequencies = F;
    const std::size_t offset = static_cast<std::size_t>(first) * F;
    q.x = reinterpret_cast<const float*>(x.data() + offset), q.ctf_isg = ctf_isg.data() + offset, q.ctf2 = ctf2.data() + offset;
    q.ramps = reinterpret_cast<const float*>(ramps.data()), q.terms = own.data(), q.term_count = own.size();
    return q;
  }
};

}  // namespace

// class2d's M-step sums kept on the GPU (dense weights and a GEMM per batch) against the sums
// written out term by term, over two batches, added into what the arrays held.
TEST(CudaBackend, TemplateSumsOnTheGpuEqualTheTermByTermSums) {
  REQUIRE_GPU();
  const int B = 40, T = 5, F = 300, J = 70;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> uniform(0, 1);
  const SumsInputs in(B, T, F, rng);
  const auto &x = in.x, &ramps = in.ramps;
  const auto &ctf_isg = in.ctf_isg, &ctf2 = in.ctf2;
  std::vector<em::SumTerm> terms;
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < 30; ++i) terms.push_back({static_cast<int>(rng() % J), b, (b + i) % T, uniform(rng)});
  // Distinct (j, t) per particle, as the E-step's kept hypotheses are.
  std::sort(terms.begin(), terms.end(), [](const auto& a, const auto& c) { return std::tie(a.b, a.j, a.t) < std::tie(c.b, c.j, c.t); });
  terms.erase(std::unique(terms.begin(), terms.end(), [](const auto& a, const auto& c) { return a.b == c.b && a.j == c.j && a.t == c.t; }),
              terms.end());
  std::vector<std::complex<double>> data(static_cast<std::size_t>(J) * F, 1.0);
  std::vector<double> weight(data.size(), 1.0);
  for (const auto& t : terms)
    for (int f = 0; f < F; ++f) {
      const std::size_t at = static_cast<std::size_t>(t.b) * F + f, to = static_cast<std::size_t>(t.j) * F + f;
      data[to] += std::complex<double>(x[at] * std::conj(ramps[static_cast<std::size_t>(t.t) * F + f])) * static_cast<double>(t.w * ctf_isg[at]);
      weight[to] += static_cast<double>(t.w) * ctf2[at];
    }
  gpu::CudaOptions on;
  on.template_sums = true;
  const auto backend = gpu::make_cuda_backend(on);
  ASSERT_TRUE(backend->sums_templates());
  backend->plan(1, B, J);
  backend->begin_template_sums(J, F);
  const int split = 25;  // two batches: particles [0, 25) and [25, 40), each with its own indices
  std::vector<em::SumTerm> own;
  for (const auto& [first, count] : {std::pair{0, split}, std::pair{split, B - split}}) backend->add_template_sums(in.batch(terms, first, count, own));
  std::vector<float> gpu_data(2 * data.size(), 1.0f), gpu_weight(weight.size(), 1.0f);
  for (std::size_t i = 0; i < data.size(); ++i) gpu_data[2 * i + 1] = 0.0f;  // the arrays held 1 + 0i and 1
  backend->end_template_sums(gpu_data.data(), gpu_weight.data());
  double worst = 0, largest = 0;
  for (std::size_t i = 0; i < data.size(); ++i) {
    worst = std::max({worst, std::abs(gpu_data[2 * i] - data[i].real()), std::abs(gpu_data[2 * i + 1] - data[i].imag()),
                      std::abs(gpu_weight[i] - weight[i])});
    largest = std::max({largest, std::abs(data[i]), weight[i]});
  }
  std::printf("GPU M-step sums: %zu terms, max |GPU - reference| %.3g of max %.3g\n", terms.size(), worst, largest);
  EXPECT_LT(worst, 1e-5 * largest);
  EXPECT_TRUE(gpu::make_cuda_backend({})->sums_templates());  // on by default (see CudaOptions)
}

// The chunks' sums folded on the device (fold_template_sums, take_template_totals) are bit for bit
// what the host makes of each chunk's sums brought back (end_template_sums) and added in chunk
// order; one template holds half of all terms (a broad first iteration), so its frequencies are
// split among several blocks.
TEST(CudaBackend, ChunkSumsFoldedOnTheGpuAreTheHostFoldBitForBit) {
  REQUIRE_GPU();
  const int B = 64, T = 3, F = 1100, J = 40, crowded = 7;
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> uniform(0, 1);
  const SumsInputs in(B, T, F, rng);
  std::vector<em::SumTerm> terms;  // per particle: every shift of the crowded template, and 3 others
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) terms.push_back({crowded, b, t, uniform(rng)});
    for (int i = 0; i < 3; ++i) terms.push_back({(crowded + 1 + static_cast<int>(rng() % (J - 1))) % J, b, i % T, uniform(rng)});
  }
  gpu::CudaOptions on;
  on.template_sums = true;
  const auto backend = gpu::make_cuda_backend(on);
  backend->plan(1, B, J);
  std::vector<em::SumTerm> own;
  const auto add_chunk = [&](int first, int count) {
    backend->begin_template_sums(J, F);
    backend->add_template_sums(in.batch(terms, first, count, own));
  };
  const std::size_t nd = static_cast<std::size_t>(J) * 2 * F, nw = static_cast<std::size_t>(J) * F;
  const std::vector<std::pair<int, int>> chunks = {{0, 20}, {20, 30}, {50, 14}};
  std::vector<float> host_data(nd, 0.0f), host_weight(nw, 0.0f);
  for (const auto& [first, count] : chunks) {
    std::vector<float> d(nd, 0.0f), w(nw, 0.0f);
    add_chunk(first, count);
    backend->end_template_sums(d.data(), w.data());
    for (std::size_t i = 0; i < nd; ++i) host_data[i] += d[i];
    for (std::size_t i = 0; i < nw; ++i) host_weight[i] += w[i];
  }
  for (int round = 0; round < 2; ++round) {  // the second round checks that the totals start again from zero
    for (const auto& [first, count] : chunks) add_chunk(first, count), backend->fold_template_sums();
    std::vector<float> data(nd, -1.0f), weight(nw, -1.0f);
    backend->take_template_totals(data.data(), weight.data());
    EXPECT_EQ(0, std::memcmp(data.data(), host_data.data(), nd * sizeof(float))) << "round " << round;
    EXPECT_EQ(0, std::memcmp(weight.data(), host_weight.data(), nw * sizeof(float))) << "round " << round;
  }
  // And the crowded template's sums are right (against double precision, term by term).
  double worst = 0, largest = 0;
  for (int f = 0; f < F; ++f) {
    std::complex<double> d = 0;
    for (const auto& t : terms) {
      if (t.j != crowded) continue;
      const std::size_t at = static_cast<std::size_t>(t.b) * F + f;
      d += std::complex<double>(in.x[at] * std::conj(in.ramps[static_cast<std::size_t>(t.t) * F + f])) * static_cast<double>(t.w * in.ctf_isg[at]);
    }
    const std::size_t at = static_cast<std::size_t>(crowded) * F + f;
    worst = std::max(worst, std::abs(std::complex<double>(host_data[2 * at], host_data[2 * at + 1]) - d));
    largest = std::max(largest, std::abs(d));
  }
  std::printf("crowded template (%d of %zu terms): max |GPU - reference| %.3g of max %.3g\n", B * T, terms.size(), worst, largest);
  EXPECT_LT(worst, 1e-5 * largest);
}

namespace {

/// A batch to prepare (em::PrepareBatch) with its inputs and one set of outputs.
struct Preparation {
  int count = 0, box = 0, F = 0;
  bool full = false;
  std::vector<float> pixels, mask, inv_sigma2;
  std::vector<image::CtfTerms> ctf;
  std::vector<int> group;
  em::FrequencyList list;
  std::vector<float> x, ctf_out, ctf2;
  std::vector<double> half_norm;
  std::vector<std::vector<float>> unmasked, ctf_grid;
  std::vector<float*> unmasked_rows, ctf_grid_rows;

  em::PrepareBatch request(const float* images) {
    const std::size_t P = static_cast<std::size_t>(count), half = image::half_size(box, box);
    x.assign(P * 2 * F, 0), ctf_out.assign(P * F, 0), ctf2.assign(P * F, 0), half_norm.assign(P, 0);
    em::PrepareBatch q;
    q.count = count, q.box = box, q.pixels = images, q.mask = mask.empty() ? nullptr : mask.data();
    q.ctf = ctf.empty() ? nullptr : ctf.data(), q.pixel_size = 1.3;
    q.group = group.data(), q.inv_sigma2 = inv_sigma2.data(), q.groups = static_cast<int>(inv_sigma2.size()) / F;
    q.index = list.index.data(), q.frequencies = F;
    q.x = x.data(), q.ctf_out = ctf_out.data(), q.ctf2 = ctf2.data(), q.half_norm = half_norm.data();
    if (full) {
      unmasked.assign(P, std::vector<float>(2 * half)), ctf_grid.assign(P, std::vector<float>(half));
      unmasked_rows.clear(), ctf_grid_rows.clear();
      for (std::size_t b = 0; b < P; ++b) unmasked_rows.push_back(unmasked[b].data()), ctf_grid_rows.push_back(ctf_grid[b].data());
      q.unmasked = unmasked_rows.data(), q.ctf_grid = ctf_grid_rows.data();
    }
    return q;
  }
};

/// Noisy images with an off-centre blob (so that the centring matters), per-particle CTFs with
/// astigmatism, B-factors and phase shifts, two noise groups.
Preparation make_preparation(int count, int box, double radius, bool ctf, bool mask, bool full, unsigned seed) {
  Preparation pr;
  pr.count = count, pr.box = box, pr.full = full;
  pr.list = em::make_frequency_list(box, radius);
  pr.F = static_cast<int>(pr.list.size());
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<double> uniform(0, 1);
  const std::size_t area = static_cast<std::size_t>(box) * box;
  pr.pixels.resize(static_cast<std::size_t>(count) * area);
  for (int b = 0; b < count; ++b)
    for (int y = 0; y < box; ++y)
      for (int x = 0; x < box; ++x) {
        const double dx = x - 0.6 * box, dy = y - 0.45 * box;
        pr.pixels[static_cast<std::size_t>(b) * area + static_cast<std::size_t>(y) * box + x] =
            3.0f * static_cast<float>(std::exp(-(dx * dx + dy * dy) / (0.01 * box * box))) + normal(rng);
      }
  if (mask) pr.mask = image::soft_round_mask(box, 2, 0.4 * box, 5);
  for (int b = 0; b < count && ctf; ++b) {
    image::CtfParams p;
    p.defocus_u = 8000 + 20000 * uniform(rng), p.defocus_v = p.defocus_u - 1500 * uniform(rng), p.defocus_angle = 180 * uniform(rng);
    p.bfactor = b % 3 == 0 ? 80 * uniform(rng) : 0, p.phase_shift = b % 5 == 0 ? 90 * uniform(rng) : 0;
    pr.ctf.push_back(image::Ctf(p).terms());
  }
  const int groups = 2;
  for (int b = 0; b < count; ++b) pr.group.push_back(b % groups);
  pr.inv_sigma2.resize(static_cast<std::size_t>(groups) * pr.F);
  for (auto& v : pr.inv_sigma2) v = static_cast<float>(0.5 + uniform(rng));
  return pr;
}

/// max |a - b| / max |b|.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, largest = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i])), largest = std::max(largest, std::abs(double(b[i])));
  return worst / std::max(largest, 1e-30);
}

/// The GPU's preparation against the CPU's (em::prepare_particles) on the same batch.
void expect_gpu_preparation_matches(Preparation pr, const char* what, bool pinned) {
  gpu::CudaOptions options;
  options.prepare_batches = true;
  const auto backend = gpu::make_cuda_backend(options);
  ASSERT_TRUE(backend->prepares_batches());
  em::prepare_particles(pr.request(pr.pixels.data()));
  const Preparation cpu = pr;
  const float* images = pr.pixels.data();
  if (pinned) {
    float* host = backend->pinned_host(pr.pixels.size());
    ASSERT_NE(host, nullptr);
    std::copy(pr.pixels.begin(), pr.pixels.end(), host);
    images = host;
  }
  backend->prepare_batch(pr.request(images));
  const double x = relative_error(pr.x, cpu.x), c = relative_error(pr.ctf_out, cpu.ctf_out), c2 = relative_error(pr.ctf2, cpu.ctf2);
  double norm = 0, unmasked = 0, grid = 0;
  for (int b = 0; b < pr.count; ++b) {
    const auto i = static_cast<std::size_t>(b);
    norm = std::max(norm, std::abs(pr.half_norm[i] - cpu.half_norm[i]) / cpu.half_norm[i]);
    if (pr.full) unmasked = std::max(unmasked, relative_error(pr.unmasked[i], cpu.unmasked[i]));
    if (pr.full) grid = std::max(grid, relative_error(pr.ctf_grid[i], cpu.ctf_grid[i]));
  }
  std::printf("GPU preparation (%s: %d particles, box %d, F %d): max |GPU - CPU| / max |CPU|: x %.3g, ctf %.3g, ctf2 %.3g, "
              "half_norm %.3g, unmasked %.3g, ctf grid %.3g\n",
              what, pr.count, pr.box, pr.F, x, c, c2, norm, unmasked, grid);
  EXPECT_LT(x, 1e-5);
  EXPECT_LT(c, 1e-6);
  EXPECT_LT(c2, 1e-5);
  EXPECT_LT(norm, 1e-5);
  EXPECT_LT(unmasked, 1e-5);
  EXPECT_LT(grid, 1e-6);
}

}  // namespace

TEST(CudaBackend, BatchesPreparedOnTheGpuMatchTheCpuPreparation) {
  // The reference's conventions, checked with or without a device: the transform of a delta at
  // the centre pixel N/2 is real and constant (unnormalised, centred).
  Preparation delta = make_preparation(1, 32, 15, true, false, true, 3);
  std::fill(delta.pixels.begin(), delta.pixels.end(), 0.0f);
  delta.pixels[16 * 32 + 16] = 2.0f;
  em::prepare_particles(delta.request(delta.pixels.data()));
  for (int f = 0; f < delta.F; ++f) {
    EXPECT_FLOAT_EQ(delta.x[2 * static_cast<std::size_t>(f)], 2.0f);
    EXPECT_FLOAT_EQ(delta.x[2 * static_cast<std::size_t>(f) + 1], 0.0f);
  }
  REQUIRE_GPU();
  // Box 256 over three chunks of the GPU's pipeline (512 images each), with CTF, mask and full grids.
  expect_gpu_preparation_matches(make_preparation(1100, 256, 100, true, true, true, 1), "CTF, mask, full grids", true);
  expect_gpu_preparation_matches(make_preparation(37, 64, 31, false, false, false, 2), "no CTF, no mask", false);
}

// Only the rows PrepareBatch::host_rows names come back (runs of one and of several particles, over
// the chunk boundary at 512); the others are not written, and every half_norm is.
TEST(CudaBackend, PreparedRowsComeBackOnlyWhereTheHostReadsThem) {
  REQUIRE_GPU();
  Preparation pr = make_preparation(1100, 256, 60, true, true, false, 4);
  em::prepare_particles(pr.request(pr.pixels.data()));
  const Preparation cpu = pr;
  std::vector<std::uint8_t> wanted(static_cast<std::size_t>(pr.count), 0);
  for (int b = 0; b < pr.count; ++b) wanted[static_cast<std::size_t>(b)] = b % 7 == 0 || (b >= 505 && b < 530);
  gpu::CudaOptions options;
  options.prepare_batches = true;
  const auto backend = gpu::make_cuda_backend(options);
  em::PrepareBatch q = pr.request(pr.pixels.data());
  q.host_rows = wanted.data();
  backend->prepare_batch(q);
  const std::size_t F = static_cast<std::size_t>(pr.F);
  int back = 0, untouched = 0;
  double worst = 0;
  for (int b = 0; b < pr.count; ++b) {
    const auto i = static_cast<std::size_t>(b);
    const std::vector<float> x(pr.x.begin() + i * 2 * F, pr.x.begin() + (i + 1) * 2 * F);
    const std::vector<float> cx(cpu.x.begin() + i * 2 * F, cpu.x.begin() + (i + 1) * 2 * F);
    const std::vector<float> c2(pr.ctf2.begin() + i * F, pr.ctf2.begin() + (i + 1) * F);
    const std::vector<float> cc2(cpu.ctf2.begin() + i * F, cpu.ctf2.begin() + (i + 1) * F);
    const std::vector<float> c(pr.ctf_out.begin() + i * F, pr.ctf_out.begin() + (i + 1) * F);
    const bool zero = std::all_of(x.begin(), x.end(), [](float v) { return v == 0; }) &&
                      std::all_of(c.begin(), c.end(), [](float v) { return v == 0; }) &&
                      std::all_of(c2.begin(), c2.end(), [](float v) { return v == 0; });
    if (wanted[i]) {
      ++back;
      worst = std::max({worst, relative_error(x, cx), relative_error(c2, cc2)});
    } else {
      untouched += zero;
    }
    EXPECT_NEAR(pr.half_norm[i], cpu.half_norm[i], 1e-5 * cpu.half_norm[i]) << "particle " << b;
  }
  std::printf("host rows: %d of %d particles came back (max relative error %.3g), %d of %d others untouched\n", back, pr.count,
              worst, untouched, pr.count - back);
  EXPECT_LT(worst, 1e-5);
  EXPECT_EQ(untouched, pr.count - back);
}

namespace {

/// BackProjector's sums within their reach, as put() sends them.
struct ReachedSums {
  int reach = -1;
  std::vector<em::Complex> data;
  std::vector<float> weight;
};
ReachedSums reached_sums(const em::BackProjector& bp) {
  mpi::Message m;
  bp.put(m);
  ReachedSums r;
  r.reach = m.get<int>(), r.data = m.get_vector<em::Complex>(), r.weight = m.get_vector<float>();
  return r;
}

}  // namespace

// The 3D back-projection on the GPU against model3d's CPU block on random data: particles of two
// optics groups, poses with one to three shifts each, two symmetry operators, two classes, over two
// batches, added into volumes that already hold a slice, either as one chunk or as two chunks folded
// on the device. Both the cropped layout (rows within the reach) and the whole grid (padding 1,
// where the reach spans it) are checked.
TEST(CudaBackend, BackProjectionOnTheGpuEqualsBackProjectorInsert) {
  REQUIRE_GPU();
  for (const auto& [n, padding, radius] : {std::tuple{32, 2, 11.5}, std::tuple{24, 1, 40.0}}) {
    const int B = 7, K = 2, groups = 2, h = n / 2 + 1;
    const std::size_t half = static_cast<std::size_t>(h) * n;
    std::mt19937 rng(static_cast<unsigned>(n));
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<double> uniform(0, 1);
    std::vector<std::vector<em::Complex>> x(B, std::vector<em::Complex>(half));
    std::vector<std::vector<float>> ctf(B, std::vector<float>(half)), isg(groups, std::vector<float>(half));
    std::vector<int> group(B);
    for (int b = 0; b < B; ++b) {
      for (auto& v : x[static_cast<std::size_t>(b)]) v = em::Complex(normal(rng), normal(rng));
      for (auto& c : ctf[static_cast<std::size_t>(b)]) c = normal(rng);
      group[static_cast<std::size_t>(b)] = b % groups;
    }
    for (auto& g : isg)
      for (auto& v : g) v = static_cast<float>(0.5 + uniform(rng));
    const std::vector<geometry::Mat3> symmetry{geometry::Mat3::identity(), geometry::euler_to_matrix({180, 0, 0})};
    struct Pose {
      int k, b;
      geometry::Mat3 a;
      std::vector<em::VolumeShift> shifts;
    };
    std::vector<Pose> poses;
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < 4; ++i) {
        Pose p{static_cast<int>(rng() % K), b, geometry::euler_to_matrix({360 * uniform(rng), 180 * uniform(rng), 360 * uniform(rng)}), {}};
        for (int s = 0, count = 1 + static_cast<int>(rng() % 3); s < count; ++s)
          p.shifts.push_back({static_cast<float>(6 * uniform(rng) - 3), static_cast<float>(6 * uniform(rng) - 3), static_cast<float>(uniform(rng))});
        poses.push_back(p);
      }
    // Both start with one slice already in class 0: the device sums are added to what is there.
    std::vector<em::BackProjector> cpu(K, em::BackProjector(n, padding));
    cpu[0].insert(geometry::euler_to_matrix({10, 20, 30}), x[0].data(), ctf[0].data(), n, radius);
    // The reference: model3d's CPU block, insertion by insertion.
    std::vector<em::Complex> data(half);
    std::vector<float> weight(half);
    for (const Pose& p : poses) {
      const auto b = static_cast<std::size_t>(p.b);
      const auto& is = isg[static_cast<std::size_t>(group[b])];
      std::fill(data.begin(), data.end(), em::Complex{});
      float total = 0;
      for (const auto& s : p.shifts) image::add_shifted_half_grid_2d(x[b].data(), n, s.dx, s.dy, s.w, radius + 1, data.data()), total += s.w;
      for (std::size_t k = 0; k < half; ++k) data[k] *= ctf[b][k] * is[k], weight[k] = ctf[b][k] * ctf[b][k] * is[k] * total;
      for (const auto& st : symmetry) cpu[static_cast<std::size_t>(p.k)].insert(p.a * st, data.data(), weight.data(), n, radius);
    }
    // The device: the same poses in two batches (particles [0, 4) and [4, B)), each with its own indices;
    // the batches either in one chunk (end_volume_sums) or each its own chunk folded on the device.
    for (const bool fold_on_device : {false, true}) {
      std::vector<em::BackProjector> gpu_sums(K, em::BackProjector(n, padding));
      gpu_sums[0].insert(geometry::euler_to_matrix({10, 20, 30}), x[0].data(), ctf[0].data(), n, radius);
      gpu::CudaOptions on;
      on.volume_sums = true;
      const auto backend = gpu::make_cuda_backend(on);
      ASSERT_TRUE(backend->sums_volumes());
      backend->plan(1, B, 1);
      if (!fold_on_device) backend->begin_volume_sums(K, n, padding, radius);
      for (const auto& [first, end] : {std::pair{0, 4}, std::pair{4, B}}) {
        if (fold_on_device) backend->begin_volume_sums(K, n, padding, radius);
        em::VolumeSumsBatch q;
        q.particles = end - first;
        for (const auto& g : isg) q.inv_sigma2.push_back(g.data());
        for (int b = first; b < end; ++b) {
          const auto bi = static_cast<std::size_t>(b);
          q.unmasked.push_back(reinterpret_cast<const float*>(x[bi].data())), q.ctf.push_back(ctf[bi].data()), q.group.push_back(group[bi]);
        }
        std::vector<em::VolumeInsertion> insertions;
        std::vector<em::VolumeShift> shifts;
        for (const Pose& p : poses) {
          if (p.b < first || p.b >= end) continue;
          em::VolumeInsertion r;
          r.k = p.k, r.b = p.b - first, r.first_shift = static_cast<int>(shifts.size()), r.shifts = static_cast<int>(p.shifts.size());
          for (const auto& s : p.shifts) shifts.push_back(s), r.total += s.w;
          for (const auto& st : symmetry) {
            const geometry::Mat3 as = p.a * st;
            for (int j = 0; j < 3; ++j) r.a[j] = as(0, j) * padding, r.a[3 + j] = as(1, j) * padding;
            insertions.push_back(r);
          }
        }
        q.insertions = insertions.data(), q.insertion_count = insertions.size(), q.shifts = shifts.data(), q.shift_count = shifts.size();
        backend->add_volume_sums(q);
        if (fold_on_device) backend->fold_volume_sums();
      }
      if (fold_on_device) backend->take_volume_totals({&gpu_sums[0], &gpu_sums[1]});
      else backend->end_volume_sums({&gpu_sums[0], &gpu_sums[1]});
      for (int k = 0; k < K; ++k) {
        const ReachedSums want = reached_sums(cpu[static_cast<std::size_t>(k)]), got = reached_sums(gpu_sums[static_cast<std::size_t>(k)]);
        ASSERT_EQ(got.reach, want.reach);
        ASSERT_EQ(got.data.size(), want.data.size());
        double worst = 0, largest = 0;
        for (std::size_t i = 0; i < want.data.size(); ++i) {
          worst = std::max({worst, static_cast<double>(std::abs(got.data[i] - want.data[i])), std::abs(static_cast<double>(got.weight[i]) - want.weight[i])});
          largest = std::max({largest, static_cast<double>(std::abs(want.data[i])), static_cast<double>(want.weight[i])});
        }
        std::printf("GPU back-projection, box %d, padding %d, class %d, %s: max |GPU - insert()| %.3g of max %.3g (%zu voxels)\n", n, padding, k,
                    fold_on_device ? "two chunks folded on the GPU" : "one chunk", worst, largest, want.data.size());
        EXPECT_GT(largest, 0);
        EXPECT_LT(worst, 1e-5 * largest);
      }
    }
  }
  // On by default since this test and GpuJobs passed on an H100 (CudaOptions); the option turns it off.
  EXPECT_TRUE(gpu::make_cuda_backend({})->sums_volumes());
  gpu::CudaOptions cpu_volumes;
  cpu_volumes.volume_sums = false;
  EXPECT_FALSE(gpu::make_cuda_backend(cpu_volumes)->sums_volumes());
}

namespace {

/// Particle b's posterior from scores on the host (shift-major rows, J = K x O templates), streamed
/// through add_run as the E-step's coarse pass streams them.
em::Posterior host_posterior(const std::vector<float>& scores, int b, int P, int T, int J, int O, const em::PosteriorSettings& settings) {
  em::PosteriorReducer r;
  r.reset(settings, J / O);
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < J / O; ++k)
      r.add_run(k, static_cast<std::int64_t>(t) * J + k * O, scores.data() + (static_cast<std::size_t>(t) * P + b) * J + k * O, O);
  return r.finish();
}

/// The posterior mass two kept lists share: sum over common hypotheses of the smaller weight.
double shared_mass(const em::Posterior& a, const em::Posterior& b) {
  double shared = 0;
  for (const auto& x : a.kept)
    for (const auto& y : b.kept)
      if (x.id == y.id && x.k == y.k) shared += std::min(x.weight, y.weight);
  return shared;
}

}  // namespace

TEST(CudaBackend, CoarseScoresReducedOnTheGpuGiveTheHostPosterior) {
  // The coarse pass's scores kept on the GPU chunk by chunk and reduced there (class sums and the
  // candidates a histogram of posterior log-weights selects) give the posterior that streaming
  // the same scores through the host's reducer gives: peaked scores (log-likelihoods) and flat ones
  // (cross-correlations: every hypothesis within the window, the cap decides), with a temperature,
  // class priors and hard classes.
  REQUIRE_GPU();
  const Problem pr = make_problem(5);
  const int K = 4, O = pr.J / K;
  const auto backend = gpu::make_cuda_backend({});
  for (const bool cross_correlation : {false, true})
    for (const bool hard : {false, true}) {
      auto q = pr.request();
      q.cross_correlation = cross_correlation;
      const auto host_scores = scores(*backend, q);
      em::PosteriorSettings settings;
      settings.mass = 0.99999, settings.cap = 100, settings.class_temperature = 1.3;
      settings.log_class_prior = {-1.2, -1.5, -1.3, -1.6};
      if (hard) settings.classes = em::Reduce::maximize;
      const em::KeptScores shape{pr.P, pr.T, pr.J, O};
      ASSERT_TRUE(backend->reduces_scores(shape));
      for (int first = 0; first < pr.J; first += 256) {  // in chunks, as the E-step scores them
        auto chunk = q;
        chunk.template_count = std::min(256, pr.J - first);
        chunk.templates = q.templates + static_cast<std::size_t>(first) * q.template_stride;
        chunk.power = q.power + static_cast<std::size_t>(first) * q.power_stride;
        backend->score_kept(chunk, shape, first);
      }
      em::ScoreReduction r;
      r.scores = shape, r.class_temperature = settings.class_temperature, r.log_class_prior = settings.log_class_prior.data();
      r.hard_classes = hard, r.window = em::PosteriorReducer::kWindow, r.cap = settings.cap;
      em::ReducedScores reduced;
      backend->reduce_kept(r, reduced);
      double worst_class = 0, least_shared = 1, worst_best_loss = 0;
      std::size_t most_kept = 0;
      for (int b = 0; b < pr.P; ++b) {
        const em::Posterior want = host_posterior(host_scores, b, pr.P, pr.T, pr.J, O, settings);
        em::PosteriorReducer device;
        device.reset(settings, K);
        for (int k = 0; k < K; ++k) {
          const std::size_t at = static_cast<std::size_t>(b) * K + k;
          device.add_reduced(k, reduced.class_max[at], reduced.class_sum[at], reduced.class_best[at], static_cast<std::int64_t>(pr.T) * O);
        }
        ASSERT_LE(reduced.candidates[static_cast<std::size_t>(b)].size(), static_cast<std::size_t>(2 * settings.cap));
        for (const auto& c : reduced.candidates[static_cast<std::size_t>(b)]) device.add_candidate(c.k, c.id, c.score);
        const em::Posterior got = device.finish();
        EXPECT_EQ(got.scored, want.scored);
        for (int k = 0; k < K; ++k)
          worst_class = std::max(worst_class, std::abs(got.class_posterior[static_cast<std::size_t>(k)] - want.class_posterior[static_cast<std::size_t>(k)]));
        // The GPU's best scored on the host against the host's best (the two paths' GEMMs differ in their last bits).
        const std::int64_t t = got.best_id / pr.J, j = got.best_id % pr.J;
        worst_best_loss = std::max(worst_best_loss,
                                   static_cast<double>(want.best_score - host_scores[(static_cast<std::size_t>(t) * pr.P + b) * pr.J + j]));
        least_shared = std::min(least_shared, shared_mass(got, want));
        most_kept = std::max(most_kept, want.kept.size());
      }
      std::printf("GPU coarse reduction (%s, %s classes): class posterior max |GPU - host| %.3g, best's worst loss %.3g, "
                  "least shared kept mass %.4f, up to %zu kept\n",
                  cross_correlation ? "cross-correlation" : "log-likelihood", hard ? "hard" : "soft", worst_class, worst_best_loss,
                  least_shared, most_kept);
      EXPECT_LT(worst_class, 1e-3);
      EXPECT_LT(worst_best_loss, cross_correlation ? 1e-5 : 1e-2);
      // Flat posteriors: the cap cuts among near-equal weights (the histogram's bins are 0.02 log units).
      EXPECT_GT(least_shared, cross_correlation ? 0.9 : 0.999);
      if (cross_correlation) {
        EXPECT_EQ(most_kept, static_cast<std::size_t>(settings.cap));
      }
    }
}

// The M-step's reconstructions and the projectors' padded transforms by cuFFT and kernels against
// the CPU's (BackProjector::reconstruct, Projector's constructor), with and without a per-shell
// regularisation, at both paddings.
TEST(CudaBackend, ReconstructionsAndPaddedTransformsOnTheGpuMatchTheCpu) {
  REQUIRE_GPU();
  const auto backend = gpu::make_cuda_backend({});
  em::VolumeTransforms& device = backend->volume_transforms();
  ASSERT_NE(&device, &em::cpu_volume_transforms());
  for (const auto& [n, padding] : {std::pair{32, 2}, std::pair{24, 1}, std::pair{48, 2}}) {
    // Slices of a blob map inserted at random orientations (with a CTF-like weight), so that the
    // sums have the structure, the uneven weights and the Hermitian pairs of a real reconstruction.
    const std::vector<float> map = blobs(n, 3, 300 + static_cast<unsigned>(n));
    const em::Projector truth(map, n, 2);
    std::mt19937 rng(static_cast<unsigned>(n + padding));
    std::uniform_real_distribution<double> uniform(0, 1);
    em::BackProjector sums(n, padding);
    const std::size_t half = static_cast<std::size_t>(n / 2 + 1) * n;
    std::vector<em::Complex> slice(half);
    std::vector<float> weight(half);
    for (int i = 0; i < 300; ++i) {
      const geometry::Mat3 a = geometry::euler_to_matrix({360 * uniform(rng), 180 * uniform(rng), 360 * uniform(rng)});
      truth.project(a, slice.data(), n, n / 2.0);
      const double scale = 0.5 + uniform(rng);
      for (std::size_t k = 0; k < half; ++k) weight[k] = static_cast<float>(scale * (0.2 + uniform(rng)));
      for (std::size_t k = 0; k < half; ++k) slice[k] *= weight[k];
      sums.insert(a, slice.data(), weight.data(), n, n / 2.0);
    }
    std::vector<double> regularisation(static_cast<std::size_t>(n / 2 + 1));
    for (std::size_t s = 0; s < regularisation.size(); ++s) regularisation[s] = 0.05 * static_cast<double>(s * s) + 0.5;
    for (const bool regularised : {false, true}) {
      const std::vector<double> given = regularised ? regularisation : std::vector<double>{};
      const auto want = sums.reconstruct(given), got = device.reconstruct(sums, given);
      ASSERT_EQ(got.size(), want.size());
      const double error = relative_error(got, want);
      std::printf("GPU reconstruction, box %d, padding %d, %s: max |GPU - CPU| / max |CPU| %.3g\n", n, padding,
                  regularised ? "regularised" : "unregularised", error);
      EXPECT_LT(error, 2e-5);
    }
    const std::vector<em::Complex> want = em::Projector(map, n, padding).grid(), got = device.padded_transform(map, n, padding);
    ASSERT_EQ(got.size(), want.size());
    double worst = 0, largest = 0;
    for (std::size_t i = 0; i < want.size(); ++i)
      worst = std::max(worst, static_cast<double>(std::abs(got[i] - want[i]))), largest = std::max(largest, static_cast<double>(std::abs(want[i])));
    std::printf("GPU padded transform, box %d, padding %d: max |GPU - CPU| %.3g of max %.3g\n", n, padding, worst, largest);
    EXPECT_LT(worst, 2e-6 * largest);
  }
  // EMCRYO_GPU_TRANSFORMS=0's option puts them back on the CPU.
  gpu::CudaOptions cpu_transforms;
  cpu_transforms.volume_transforms = false;
  EXPECT_EQ(&gpu::make_cuda_backend(cpu_transforms)->volume_transforms(), &em::cpu_volume_transforms());
}

namespace {

/// Per-particle passes over the particles of a prepared batch (x, ctf, ctf2 and one 1/sigma^2 row
/// per group as given), `frequencies` of the list each, scored by score_many; each request's scores.
std::vector<std::vector<float>> passes_over(em::ScoringBackend& backend, const em::TemplateSource& source, const em::FrequencyList& list,
                                            int count, int frequencies, int F, const float* x, const float* ctf, const float* ctf2,
                                            const std::vector<std::vector<float>>& inv_sigma2_rows, const std::vector<int>& group,
                                            unsigned seed) {
  const auto shift_grid = em::make_shift_grid(3, 1).fine;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> angle(0, 360);
  std::vector<std::vector<int>> shifts(static_cast<std::size_t>(count));
  std::vector<std::vector<std::pair<int, geometry::Euler>>> poses(static_cast<std::size_t>(count));
  std::vector<em::ScoreRequest> requests;
  for (int b = 0; b < count; ++b) {
    const auto i = static_cast<std::size_t>(b), at = i * static_cast<std::size_t>(F);
    const int T = 1 + static_cast<int>(rng() % 20), J = 1 + static_cast<int>(rng() % 40);
    for (int t = 0; t < T; ++t) shifts[i].push_back(static_cast<int>(rng() % shift_grid.size()));
    for (int j = 0; j < J; ++j) poses[i].push_back({j % source.classes(), geometry::Euler{angle(rng), angle(rng) / 2, angle(rng)}});
    em::ScoreRequest q;
    q.row_count = T, q.row_stride = 2 * frequencies, q.particles = 1, q.ctf2 = ctf2 + at, q.ctf2_stride = F;
    q.template_count = J, q.template_stride = 2 * frequencies, q.power_stride = frequencies, q.frequencies = frequencies;
    q.sampled = {&source, poses[i].data(), &list};
    q.particle_rows = {x + 2 * at, ctf + at, inv_sigma2_rows[static_cast<std::size_t>(group[i])].data(), shift_grid.data(), shifts[i].data(),
                       b % 2 ? std::pair{0.3f, -0.7f} : std::pair{0.0f, 0.0f}, &list};
    requests.push_back(q);
  }
  std::vector<std::vector<float>> out(static_cast<std::size_t>(count));
  std::vector<float*> outs;
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i].assign(static_cast<std::size_t>(requests[i].row_count) * requests[i].template_count, std::nanf(""));
    outs.push_back(out[i].data());
  }
  backend.score_many(requests, outs);
  return out;
}

}  // namespace

// Per-particle passes over particles the GPU prepared read them from the card (gathered there, not
// staged and sent): the same scores, bit for bit, as the same values staged from copies on the
// host, at the full list and at a prefix; a request whose 1/sigma^2 differs from the preparation's
// is staged instead.
TEST(CudaBackend, PassesOverPreparedParticlesGatherThemOnTheGpu) {
  REQUIRE_GPU();
  const Maps3D maps(48, 2);
  Preparation pr = make_preparation(300, 48, 20, true, true, false, 5);
  gpu::CudaOptions options;
  options.precision = gpu::Precision::fp32;
  const auto backend = gpu::make_cuda_backend(options);
  ASSERT_TRUE(backend->prepares_batches());
  ASSERT_TRUE(backend->scores_many(maps));
  backend->plan(1, 1, 1);
  backend->prepare_batch(pr.request(pr.pixels.data()));
  const int F = pr.F, groups = 2;
  std::vector<std::vector<float>> rows, scaled;  // 1/sigma^2 per group as prepared, and changed
  for (int g = 0; g < groups; ++g) {
    const auto first = pr.inv_sigma2.begin() + g * F;
    rows.emplace_back(first, first + F);
    scaled.push_back(rows.back());
    for (auto& v : scaled.back()) v *= 1.5f;
  }
  // Copies of the prepared values elsewhere on the host: not the batch's, so staged.
  const std::vector<float> x = pr.x, ctf = pr.ctf_out, ctf2 = pr.ctf2;
  for (const int frequencies : {F, F - 37}) {
    const auto unsigned_f = static_cast<unsigned>(frequencies);
    const auto gathered = passes_over(*backend, maps, pr.list, pr.count, frequencies, F, pr.x.data(), pr.ctf_out.data(), pr.ctf2.data(), rows,
                                      pr.group, unsigned_f);
    const auto staged = passes_over(*backend, maps, pr.list, pr.count, frequencies, F, x.data(), ctf.data(), ctf2.data(), rows, pr.group, unsigned_f);
    for (std::size_t i = 0; i < staged.size(); ++i) ASSERT_EQ(0, std::memcmp(gathered[i].data(), staged[i].data(), staged[i].size() * sizeof(float)));
    // The card's copy is what they read: the host's arrays overwritten after the preparation change nothing.
    std::vector<float> saved = pr.x;
    std::fill(pr.x.begin(), pr.x.end(), 0.0f);
    const auto again = passes_over(*backend, maps, pr.list, pr.count, frequencies, F, pr.x.data(), pr.ctf_out.data(), pr.ctf2.data(), rows,
                                   pr.group, unsigned_f);
    pr.x = saved;
    for (std::size_t i = 0; i < staged.size(); ++i) ASSERT_EQ(0, std::memcmp(again[i].data(), staged[i].data(), staged[i].size() * sizeof(float)));
    // Another 1/sigma^2 than the preparation's: staged with it, as its copies are.
    const auto other = passes_over(*backend, maps, pr.list, pr.count, frequencies, F, pr.x.data(), pr.ctf_out.data(), pr.ctf2.data(), scaled,
                                   pr.group, unsigned_f);
    const auto other_staged = passes_over(*backend, maps, pr.list, pr.count, frequencies, F, x.data(), ctf.data(), ctf2.data(), scaled, pr.group,
                                          unsigned_f);
    double moved = 0;
    for (std::size_t i = 0; i < staged.size(); ++i) {
      ASSERT_EQ(0, std::memcmp(other[i].data(), other_staged[i].data(), staged[i].size() * sizeof(float)));
      for (std::size_t k = 0; k < staged[i].size(); ++k) moved = std::max(moved, static_cast<double>(std::abs(other[i][k] - staged[i][k])));
    }
    EXPECT_GT(moved, 0);
  }
}
