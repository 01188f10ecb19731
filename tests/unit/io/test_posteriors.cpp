// posteriors.star / posteriors.cs: one row per particle and hypothesis, with RELION's and
// cryoSPARC's conventions.
#include <gtest/gtest.h>

#include "emcryo/geometry/rotation.hpp"
#include "emcryo/io/cs.hpp"
#include "emcryo/io/cs_particles.hpp"
#include "emcryo/io/posteriors.hpp"
#include "emcryo/io/star.hpp"
#include "support/test_support.hpp"

using namespace emcryo;

namespace {

const std::vector<std::string> kNames{"000001@Extract/a.mrcs", "000007@Extract/b.mrcs"};

std::vector<io::PosteriorHypothesis> hypotheses() {
  return {{0, 1, 2, 10, 20, 30, 1.5, -2.0, 0.7}, {0, 2, 1, 12, 22, 32, 0.0, 0.5, 0.3},
          {1, 1, 3, -100, 90, 45, 4.0, 4.0, 0.999}};
}

TEST(Posteriors, StarHasOneRowPerHypothesis) {
  const test::TempDir dir("posteriors");
  io::write_posteriors_star(dir / "posteriors.star", kNames, hypotheses());
  const io::StarFile star = io::read_star(dir / "posteriors.star");
  const io::StarTable& t = star.require_block("posteriors").table;
  ASSERT_EQ(t.rows(), 3u);
  EXPECT_EQ(t.text(1, t.require("rlnImageName")), "000001@Extract/a.mrcs");
  EXPECT_EQ(t.integer(1, t.require("emcryoHypothesisRank")), 2);
  EXPECT_EQ(t.integer(2, t.require("rlnClassNumber")), 3);
  EXPECT_DOUBLE_EQ(t.number(0, t.require("rlnOriginYAngst")), -2.0);
  EXPECT_DOUBLE_EQ(t.number(2, t.require("emcryoPosterior")), 0.999);
  EXPECT_DOUBLE_EQ(t.number(2, t.require("rlnAngleRot")), -100);
}

TEST(Posteriors, CsUsesCryosparcConventions) {
  const test::TempDir dir("posteriors");
  io::write_posteriors_cs(dir / "posteriors.cs", kNames, hypotheses(), 2.0);
  const io::CsTable cs = io::read_cs(dir / "posteriors.cs");
  ASSERT_EQ(cs.rows(), 3u);
  EXPECT_EQ(cs.text(2, cs.find("blob/path")), "Extract/b.mrcs");
  EXPECT_EQ(cs.integer(2, cs.find("blob/idx")), 6u);  // 0-based
  EXPECT_EQ(cs.integer(1, cs.find("posterior/rank")), 2u);
  EXPECT_EQ(cs.integer(0, cs.find("alignments3D/class")), 1u);  // 0-based
  EXPECT_FLOAT_EQ(static_cast<float>(cs.number(0, cs.find("alignments3D/shift"), 0)), 0.75f);  // pixels
  const int pose = cs.find("alignments3D/pose");
  const geometry::Euler e =
      io::euler_from_cs_pose({cs.number(2, pose, 0), cs.number(2, pose, 1), cs.number(2, pose, 2)});
  EXPECT_LT(geometry::rotation_angle_between(geometry::euler_to_matrix(e), geometry::euler_to_matrix({-100, 90, 45})),
            1e-4);
}

TEST(Posteriors, BadParticleIndexNamesTheHypothesis) {
  const test::TempDir dir("posteriors");
  auto h = hypotheses();
  h[1].particle = 5;
  const auto message = test::error_message([&] { io::write_posteriors_star(dir / "p.star", kNames, h); });
  EXPECT_NE(message.find("p.star: hypothesis 1: particle 5 has no image name"), std::string::npos) << message;
}

}  // namespace
