// STAR files as other programs write them (tests/data/star/, written for these tests): every one
// loads, with the blocks, columns and rows it holds, and particle tables give their summary
// even when their stacks are missing.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "emcryo/io/particles.hpp"
#include "emcryo/io/star.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

fs::path data(const std::string& name) { return fs::path(EMCRYO_SOURCE_DIR) / "tests/data/star" / name; }

io::ParticleSet particles(const std::string& name) {
  io::ParticleReadOptions options;
  options.allow_missing_stacks = true;
  options.quiet = true;
  return io::ParticleSet::read(data(name), options);
}

struct Expected {
  const char* file;
  int version;
  std::vector<std::pair<std::string, std::size_t>> blocks;  // name, rows (key-value: 1)
};

TEST(StarFiles, EveryFileLoadsWithItsBlocksAndRows) {
  const std::vector<Expected> files{
      {"relion2_particles.star", 0, {{"", 3}}},
      {"relion30_particles.star", 0, {{"", 2}}},
      {"relion31_particles.star", 30001, {{"optics", 1}, {"particles", 2}}},
      {"relion4_particles.star", 30001, {{"optics", 1}, {"particles", 2}}},
      {"relion5_particles.star", 50001, {{"optics", 1}, {"particles", 2}}},
      {"scipion_no_indices.star", 0, {{"optics", 1}, {"particles", 2}}},
      {"particles_before_optics.star", 30001, {{"particles", 2}, {"optics", 1}}},
      {"optics_zernike.star", 30001, {{"optics", 2}, {"particles", 3}}},
      {"movies_eer_tiff.star", 30001, {{"optics", 1}, {"movies", 3}}},
      {"other_block_name.star", 0, {{"images", 3}}},
      {"crlf.star", 30001, {{"optics", 1}, {"particles", 2}}},
      {"no_final_newline.star", 30001, {{"optics", 1}, {"particles", 2}}},
      {"empty_loop.star", 30001, {{"optics", 1}, {"particles", 0}}},
      {"single_row.star", 30001, {{"optics", 1}, {"particles", 1}}},
      {"model.star", 30001, {{"model_general", 1}, {"model_classes", 2}, {"model_class_1", 2}}},
      {"optimiser.star", 30001, {{"optimiser_general", 1}}},
      {"postprocess.star", 30001, {{"general", 1}, {"fsc", 3}, {"guinier", 2}}},
      {"pipeline.star", 30001,
       {{"pipeline_general", 1}, {"pipeline_processes", 3}, {"pipeline_nodes", 2}, {"pipeline_input_edges", 1},
        {"pipeline_output_edges", 1}}},
      {"job.star", 30001, {{"job", 1}, {"joboptions_values", 5}}},
      {"mtf.star", 0, {{"", 3}}},
      {"missing_stacks.star", 30001, {{"optics", 1}, {"particles", 2}}},
  };
  for (const auto& e : files) {
    SCOPED_TRACE(e.file);
    const io::StarFile star = io::read_star(data(e.file));
    EXPECT_EQ(star.version, e.version);
    ASSERT_EQ(star.blocks.size(), e.blocks.size());
    for (std::size_t b = 0; b < e.blocks.size(); ++b) {
      EXPECT_EQ(star.blocks[b].name, e.blocks[b].first);
      EXPECT_EQ(star.blocks[b].table.rows(), e.blocks[b].second) << star.blocks[b].name;
    }
  }
}

TEST(StarFiles, KeyValueBlocksAndQuotedValues) {
  const io::StarFile model = io::read_star(data("model.star"));
  const auto& general = model.require_block("model_general");
  EXPECT_FALSE(general.is_loop);
  EXPECT_DOUBLE_EQ(general.table.number(0, general.table.require("rlnCurrentResolution")), 12.345);
  const io::StarFile job = io::read_star(data("job.star"));
  const auto& values = job.require_block("joboptions_values").table;
  EXPECT_EQ(values.text(3, 1), "");  // other_args ""
  const io::StarFile movies = io::read_star(data("movies_eer_tiff.star"));
  const auto& m = movies.require_block("movies").table;
  EXPECT_EQ(m.text(0, 0), "Movies/FoilHole_1_Data_2_EER.eer");
  EXPECT_EQ(m.text(2, 0), "Movies/with space/FoilHole_2_fractions.tif");
}

TEST(StarFiles, CrlfAndMissingFinalNewlineGiveTheSameCells) {
  const io::StarFile plain = io::read_star(data("relion31_particles.star"));
  for (const char* name : {"crlf.star", "no_final_newline.star"}) {
    SCOPED_TRACE(name);
    const io::StarFile other = io::read_star(data(name));
    const auto& a = plain.require_block("particles").table;
    const auto& b = other.require_block("particles").table;
    ASSERT_EQ(a.rows(), b.rows());
    for (std::size_t r = 0; r < a.rows(); ++r)
      for (int c = 0; c < static_cast<int>(a.columns()); ++c) EXPECT_EQ(a.text(r, c), b.text(r, c));
  }
}

TEST(StarFiles, ParticleSummariesFromEveryRelionVersion) {
  // RELION 2.x: pixel size from detector pixel (µm) and magnification; origins in pixels.
  const auto r2 = particles("relion2_particles.star");
  EXPECT_EQ(r2.size(), 3u);
  EXPECT_NEAR(r2.pixel_size(), 1.4, 1e-12);
  EXPECT_NEAR(r2.pose(0).origin_x, 1.5 * 1.4, 1e-12);
  EXPECT_EQ(r2.missing_stacks().size(), 2u);
  EXPECT_EQ(r2.box(), 0);  // no stack, no rlnImageSize: unknown
  const auto r30 = particles("relion30_particles.star");
  EXPECT_DOUBLE_EQ(r30.pixel_size(), 1.4);
  EXPECT_EQ(r30.class_number(1), 2);
  for (const char* name : {"relion31_particles.star", "relion4_particles.star", "relion5_particles.star",
                           "particles_before_optics.star", "crlf.star", "no_final_newline.star"}) {
    SCOPED_TRACE(name);
    const auto set = particles(name);
    EXPECT_EQ(set.size(), 2u);
    EXPECT_EQ(set.box(), 64);  // from rlnImageSize
    EXPECT_DOUBLE_EQ(set.pixel_size(), 1.77);
    EXPECT_DOUBLE_EQ(set.ctf(0).voltage, 200);
    EXPECT_TRUE(set.has_poses());
    EXPECT_DOUBLE_EQ(set.pose(1).origin_y, 3.035);
    EXPECT_EQ(set.random_subset(1), 2);
  }
  const auto scipion = particles("scipion_no_indices.star");
  EXPECT_DOUBLE_EQ(scipion.ctf(1).defocus_u, 15100);
  const auto zernike = particles("optics_zernike.star");
  ASSERT_EQ(zernike.optics_groups().size(), 2u);
  EXPECT_EQ(zernike.optics_index(2), 1);
  EXPECT_EQ(zernike.stack_count(), 2u);
  const auto other = particles("other_block_name.star");
  EXPECT_EQ(other.size(), 3u);
  EXPECT_EQ(particles("single_row.star").size(), 1u);
}

TEST(StarFiles, MissingStacksAreNamedOrRefused) {
  const auto set = particles("missing_stacks.star");
  ASSERT_EQ(set.missing_stacks().size(), 2u);
  EXPECT_NE(set.missing_stacks()[1].string().find("20170629_00022_frameImage.mrcs"), std::string::npos);
  const auto message = test::error_message([] { (void)io::ParticleSet::read(data("missing_stacks.star")); });
  EXPECT_NE(message.find("missing_stacks.star:"), std::string::npos) << message;
  EXPECT_NE(message.find("not found"), std::string::npos) << message;
  const auto empty = test::error_message([] { (void)particles("empty_loop.star"); });
  EXPECT_NE(empty.find("no particles"), std::string::npos) << empty;
}

TEST(StarFiles, ImagesReadWhenTheStacksExist) {
  const test::TempDir dir("star_files");
  fs::copy_file(data("relion5_particles.star"), dir / "p.star");
  fs::create_directories(dir / "Extract/job012/Movies");
  test::write_mrc_stack(dir / "Extract/job012/Movies/20170629_00021_frameImage.mrcs",
                        test::random_values(2 * 64 * 64, 3), 64, 64, 2, 1.77);
  const auto set = io::ParticleSet::read(dir / "p.star");
  EXPECT_TRUE(set.missing_stacks().empty());
  EXPECT_EQ(set.read_image(1).size(), 64u * 64u);
}

}  // namespace
