// The particle dataset: STAR joined with optics groups and stacks; errors name file, line, column.
#include <gtest/gtest.h>

#include <filesystem>

#include "emcryo/core/error.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

class ParticleSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "Extract");
    std::vector<float> stack(3 * 16 * 16);
    for (std::size_t i = 0; i < stack.size(); ++i) stack[i] = static_cast<float>(i % 97) * 0.01f + static_cast<float>(i / 256);
    test::write_mrc_stack(dir_ / "Extract/stack.mrcs", stack, 16, 16, 3, 1.5);
  }

  std::string write_star(const std::string& text) { return test::write_text(dir_ / "p.star", text).string(); }
  static std::string message_of(const std::string& path) {
    return test::error_message([&] { (void)io::ParticleSet::read(path); });
  }
  const test::TempDir dir_{"particles"};
};

const char* kOptics =
    "# version 30001\ndata_optics\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n_rlnImagePixelSize #3\n"
    "_rlnVoltage #4\n_rlnSphericalAberration #5\n_rlnAmplitudeContrast #6\n"
    "1 groupA 1.5 300 2.7 0.1\n2 groupB 1.5 200 2.0 0.07\n\n";

TEST_F(ParticleSetTest, Relion31JoinsOpticsAndResolvesImagesFromTheStarFolder) {
  const auto path = write_star(std::string(kOptics) +
                               "# version 30001\ndata_particles\nloop_\n_rlnAnglePsi #1\n_rlnImageName #2\n_rlnOpticsGroup #3\n"
                               "_rlnDefocusU #4\n_rlnDefocusV #5\n_rlnDefocusAngle #6\n_rlnAngleRot #7\n_rlnAngleTilt #8\n"
                               "_rlnOriginXAngst #9\n_rlnOriginYAngst #10\n_rlnMyUnknownLabel #11\n"
                               "10 000001@Extract/stack.mrcs 1 10000 9000 30 5 6 1.5 -3 x\n"
                               "20 000003@Extract/stack.mrcs 2 20000 21000 40 7 8 0 0 y\n");
  const auto set = io::ParticleSet::read(path);
  ASSERT_EQ(set.size(), 2u);
  EXPECT_EQ(set.box(), 16);
  EXPECT_DOUBLE_EQ(set.pixel_size(), 1.5);
  EXPECT_EQ(set.optics_groups().size(), 2u);
  EXPECT_TRUE(set.has_ctf());
  EXPECT_TRUE(set.has_poses());
  // Optics values reach their particles; particle values win over optics ones.
  EXPECT_DOUBLE_EQ(set.ctf(0).voltage, 300);
  EXPECT_DOUBLE_EQ(set.ctf(1).voltage, 200);
  EXPECT_DOUBLE_EQ(set.ctf(1).amplitude_contrast, 0.07);
  EXPECT_DOUBLE_EQ(set.ctf(1).defocus_v, 21000);
  const auto pose = set.pose(0);
  EXPECT_DOUBLE_EQ(pose.rot, 5);
  EXPECT_DOUBLE_EQ(pose.psi, 10);
  EXPECT_DOUBLE_EQ(pose.origin_x, 1.5);
  // Image 3 of the stack, read lazily.
  const auto image = set.read_image(1);
  io::MrcReader reader(dir_ / "Extract/stack.mrcs");
  EXPECT_EQ(image, reader.read_section(2));
  EXPECT_NE(set.portable_image_name(1).find("000003@"), std::string::npos);
}

TEST_F(ParticleSetTest, Relion30SingleBlockWithPixelOrigins) {
  const auto path = write_star(
      "data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnVoltage\n_rlnOriginX\n_rlnOriginY\n_rlnDetectorPixelSize\n_rlnMagnification\n"
      "2@Extract/stack.mrcs 15000 15000 300 2 -1 15 100000\n");
  const auto set = io::ParticleSet::read(path);
  EXPECT_EQ(set.size(), 1u);
  EXPECT_DOUBLE_EQ(set.pixel_size(), 1.5);
  EXPECT_DOUBLE_EQ(set.pose(0).origin_x, 3.0);  // 2 px at 1.5 Å/px
}

TEST_F(ParticleSetTest, ErrorsNameFileLineAndColumn) {
  std::string base = std::string(kOptics) + "# version 30001\ndata_particles\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n_rlnDefocusV #4\n";
  auto msg = message_of(write_star(base + "000001@Extract/stack.mrcs 1 1000 1000\n000009@Extract/stack.mrcs 1 1000 1000\n"));
  EXPECT_NE(msg.find("p.star:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rlnImageName"), std::string::npos) << msg;
  EXPECT_NE(msg.find("beyond the end"), std::string::npos) << msg;
  msg = message_of(write_star(base + "000001@Extract/missing.mrcs 1 1000 1000\n"));
  EXPECT_NE(msg.find("missing.mrcs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
  msg = message_of(write_star(base + "000001@Extract/stack.mrcs 1 abc 1000\n"));
  EXPECT_NE(msg.find("rlnDefocusU"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a number"), std::string::npos) << msg;
  msg = message_of(write_star(base + "000001@Extract/stack.mrcs 7 1000 1000\n"));
  EXPECT_NE(msg.find("rlnOpticsGroup"), std::string::npos) << msg;
  msg = message_of(write_star(base + "Extract/stack.mrcs 1 1000 1000\n"));
  EXPECT_NE(msg.find("N@stack.mrcs"), std::string::npos) << msg;
  msg = message_of(write_star(std::string(kOptics)));
  EXPECT_NE(msg.find("no particles table"), std::string::npos) << msg;
}

TEST_F(ParticleSetTest, PixelSizeDisagreementIsReported) {
  const auto path = write_star(
      "# version 30001\ndata_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 2.5\n\n# version 30001\ndata_particles\nloop_\n"
      "_rlnImageName\n_rlnOpticsGroup\n000001@Extract/stack.mrcs 1\n");
  const auto set = io::ParticleSet::read(path);
  try {
    set.check_pixel_size_against_stacks();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("disagrees"), std::string::npos) << e.what();
  }
}

}  // namespace
