// Hostile inputs (issue 16): each must end in one short emcryo::Error naming the file (and the
// line and field where there is one), never a crash, a hang or a giant allocation. Several are
// regressions found by the fuzz targets in fuzz/.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "emcryo/core/error.hpp"
#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/io/star.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

// One line, short enough to read: the message of a 10^6-character line is not 10^6 characters.
void expect_clean(const std::string& message, const std::string& must_contain) {
  EXPECT_FALSE(message.empty()) << "no error";
  EXPECT_NE(message.find(must_contain), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_LT(message.size(), 600u) << message.substr(0, 600);
}

class HostileMrc : public ::testing::Test {
 protected:
  // A header as laid out in the file, followed by `data_bytes` zero bytes.
  fs::path write(const io::MrcHeader& header, std::size_t data_bytes) {
    const fs::path path = dir_.path() / "h.mrc";
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&header), sizeof header);
    const std::string zeros(data_bytes, '\0');
    out.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
    return path;
  }
  static io::MrcHeader header(int nx, int ny, int nz, int mode = 2) {
    io::MrcHeader h;
    h.nx = nx, h.ny = ny, h.nz = nz, h.mode = mode, h.mx = nx, h.my = ny, h.mz = 1;
    h.cella[0] = h.cella[1] = static_cast<float>(nx), h.cella[2] = 1;
    return h;
  }
  std::string open_error(const fs::path& path) {
    return test::error_message([&] { io::MrcReader reader(path); });
  }
  const test::TempDir dir_{"hostile_mrc"};
};

TEST_F(HostileMrc, SizesWhoseProductOverflowsAreRefused) {
  const int big = std::numeric_limits<std::int32_t>::max();
  expect_clean(open_error(write(header(big, big, big), 64)), "h.mrc: truncated");
  expect_clean(open_error(write(header(65536, 65536, 65536, 2), 64)), "h.mrc: truncated");
}

TEST_F(HostileMrc, NegativeAndZeroSizesAreRefused) {
  for (const auto& h : {header(-8, 8, 1), header(8, 0, 1), header(8, 8, -1), header(0, 0, 0)})
    expect_clean(open_error(write(h, 256)), "h.mrc");
  io::MrcHeader h = header(8, 8, 1);
  h.nsymbt = -1024;
  expect_clean(open_error(write(h, 256)), "h.mrc");
}

TEST_F(HostileMrc, HugeNzWithAShortFileIsRefused) {
  expect_clean(open_error(write(header(8, 8, std::numeric_limits<std::int32_t>::max()), 8 * 8 * 4 * 3)),
               "truncated");
}

TEST_F(HostileMrc, NanOrInfiniteCellIsRefused) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    io::MrcHeader h = header(8, 8, 1);
    h.cella[0] = bad;
    expect_clean(open_error(write(h, 256)), "cella");
  }
}

TEST_F(HostileMrc, EmptyFileAndBinaryJunkAreNotMrc) {
  expect_clean(open_error(test::write_text(dir_.path() / "e.mrc", "")), "e.mrc: not an MRC file");
  std::string junk(3000, '\0');
  for (std::size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>((i * 7919 + 13) % 251);
  expect_clean(open_error(test::write_text(dir_.path() / "j.mrc", junk)), "j.mrc");
}

// ------------------------------------------------------------------------------- STAR

std::string parse_error(const std::string& text) {
  return test::error_message([&] { (void)io::parse_star(text, "t.star"); });
}

TEST(HostileStar, AMillionCharacterLineGivesAShortMessage) {
  expect_clean(parse_error(std::string(1'000'000, 'x') + "\n"), "t.star:1: 'xxxx");
  const auto star = io::parse_star("data_a\nloop_\n_rlnX\n" + std::string(1'000'000, '7') + "z\n", "t.star");
  expect_clean(test::error_message([&] { (void)star.blocks[0].table.numbers(0); }), "is not a number");
}

TEST(HostileStar, BinaryJunkIsShownWithoutControlCharacters) {
  const std::string message = parse_error(std::string("\x01\x1b[31m\x7f junk\n", 11));
  expect_clean(message, "outside a data_ block");
  EXPECT_EQ(message.find('\x1b'), std::string::npos) << message;
}

TEST(HostileStar, DuplicateAndMissingLabels) {
  expect_clean(parse_error("data_p\nloop_\n_rlnA\n_rlnB\n_rlnA\n1 2 3\n"), "t.star:5: data_p: duplicate column rlnA");
  expect_clean(parse_error("data_p\n_rlnA 1\n_rlnA 2\n"), "duplicate key rlnA");
  expect_clean(parse_error("data_p\nloop_\n1 2\n"), "loop_ without labels");
}

TEST(HostileStar, CrlfLineEndsReadAsLf) {
  const auto star = io::parse_star("data_p\r\nloop_\r\n_rlnA\r\n_rlnB\r\n1 2\r\n3 4\r\n", "t.star");
  ASSERT_EQ(star.blocks.size(), 1u);
  EXPECT_EQ(star.blocks[0].table.rows(), 2u);
  EXPECT_EQ(star.blocks[0].table.text(1, 1), "4");
}

// Found by fuzz_particles: such a value was read, then a job failed writing its particles.star.
TEST(HostileStar, ValueThatCannotBeWrittenBackIsRefusedOnRead) {
  expect_clean(parse_error("data_p\nloop_\n_rlnA\n_rlnB\n'a\rb' 2\n"), "t.star:5: column rlnA: quoted value");
  expect_clean(parse_error("data_p\n_rlnA \"x\ry\"\n"), "holds a carriage return");
  EXPECT_EQ(parse_error("data_p\r\nloop_\r\n_rlnA\r\n'it is'\r\n\"it's\"\r\n"), "");  // CRLF after quotes is fine
}

TEST(HostileStar, EmptyFileIsNotAStarFile) { expect_clean(parse_error(""), "no data_ block"); }

// Found by reasoning about fuzz_star: many labels once made the duplicate check quadratic (a hang)
// and many lines after them a reservation of labels x lines cells (a giant allocation).
TEST(HostileStar, ManyLabelsAndManyLinesStayLinear) {
  std::string text = "data_p\nloop_\n";
  for (int i = 0; i < 100'000; ++i) text += "_l" + std::to_string(i) + "\n";
  text += "1\n" + std::string(1'000'000, '\n');
  expect_clean(parse_error(text), "row has 1 values, expected 100000");
}

// ------------------------------------------------------------------------------- particles

class HostileParticles : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_.path() / "Extract");
    test::write_mrc_stack(dir_.path() / "Extract/s.mrcs", test::random_values(3 * 16 * 16, 5), 16, 16, 3, 1.5);
  }
  // A RELION 3.1 particles file whose rows are `rows` (rlnImageName rlnAngleRot rlnDefocusU rlnDefocusV).
  std::string error_for_rows(const std::string& rows, const std::string& pixel_size = "1.5") {
    const auto path = test::write_text(
        dir_.path() / "p.star",
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 " + pixel_size +
            "\n\ndata_particles\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnDefocusU\n_rlnDefocusV\n" + rows);
    return test::error_message([&] { (void)io::ParticleSet::read(path); });
  }
  const test::TempDir dir_{"hostile_particles"};
};

TEST_F(HostileParticles, GoodRowsRead) { EXPECT_EQ(error_for_rows("1@Extract/s.mrcs 0 1000 1000\n"), ""); }

TEST_F(HostileParticles, ImageIndexZeroOrBeyondTheStack) {
  expect_clean(error_for_rows("0@Extract/s.mrcs 0 1000 1000\n"), "p.star:13: column rlnImageName: '0@Extract/s.mrcs'");
  expect_clean(error_for_rows("4@Extract/s.mrcs 0 1000 1000\n"), "image 4 is beyond the end");
  expect_clean(error_for_rows("99999999999999999999999@Extract/s.mrcs 0 1000 1000\n"), "no valid image number");
}

TEST_F(HostileParticles, ImageNumberWithoutAPath) {
  expect_clean(error_for_rows("1@ 0 1000 1000\n"), "p.star:13: column rlnImageName: '1@' names no stack file");
}

// A path that climbs out of the project is a legitimate relative path: it is resolved and opened
// like any other (here it reaches /etc/passwd, which is not an MRC file).
TEST_F(HostileParticles, PathClimbingOutOfTheProjectIsJustAPath) {
  std::string climb;
  for (auto it = dir_.path().begin(); it != dir_.path().end(); ++it) climb += "../";
  const std::string message = error_for_rows("1@" + climb + "etc/passwd 0 1000 1000\n");
  expect_clean(message, "p.star:13: column rlnImageName:");
  EXPECT_NE(message.find("etc/passwd: not an MRC file"), std::string::npos) << message;
}

TEST_F(HostileParticles, StackNameLongerThanTheFileSystemAllows) {
  expect_clean(error_for_rows("1@" + std::string(5000, 'a') + ".mrcs 0 1000 1000\n"), "not found");
}

TEST_F(HostileParticles, NonFiniteValuesAreRefusedWithTheirLine) {
  expect_clean(error_for_rows("1@Extract/s.mrcs nan 1000 1000\n"), "p.star:13: column rlnAngleRot: 'nan' is not a finite");
  expect_clean(error_for_rows("1@Extract/s.mrcs 0 1e999 1000\n"), "column rlnDefocusU: '1e999' is not a finite");
  expect_clean(error_for_rows("1@Extract/s.mrcs 0 1000 1000\n", "inf"), "column rlnImagePixelSize: 'inf'");
  expect_clean(error_for_rows("1@Extract/s.mrcs 0 1000 1000\n", "nan"), "column rlnImagePixelSize: 'nan'");
}

TEST_F(HostileParticles, OddOrTinyBoxIsRefused) {
  test::write_mrc_stack(dir_.path() / "Extract/s.mrcs", test::random_values(3 * 15 * 15, 5), 15, 15, 3, 1.5);
  expect_clean(error_for_rows("1@Extract/s.mrcs 0 1000 1000\n"), "an even box of at least 8 px");
}

// Found by fuzz_particles: with two RELION 3.0 loops, read() took the last and output_star() the
// first, so a job failed at its very end ("select_rows: row 0 is out of range").
TEST_F(HostileParticles, TwoRelion30LoopsReadAndWriteTheSameTable) {
  const auto path = test::write_text(dir_.path() / "two.star",
                                     "data_a\nloop_\n_rlnImageName\n1@Extract/s.mrcs\n\n"
                                     "data_b\nloop_\n_rlnImageName\n2@Extract/s.mrcs\n3@Extract/s.mrcs\n");
  const auto set = io::ParticleSet::read(path);
  EXPECT_EQ(set.size(), 1u);
  auto out = set.output_star({0});
  EXPECT_EQ(io::ParticleSet::particles_table(out).rows(), 1u);
}

// An input stack that disappears mid-run (NFS hiccup, a user's rm): the open descriptor keeps
// the images readable; one cut short while open gives a clear error naming it, never garbage.
TEST_F(HostileParticles, StackRemovedOrTruncatedWhileAJobReadsIt) {
  fs::copy_file(dir_.path() / "Extract/s.mrcs", dir_.path() / "Extract/t.mrcs");
  const auto path = test::write_text(dir_.path() / "p.star", "data_\nloop_\n_rlnImageName\n1@Extract/s.mrcs\n3@Extract/s.mrcs\n");
  const auto set = io::ParticleSet::read(path);
  const auto before = set.read_image(1);
  fs::remove(dir_.path() / "Extract/s.mrcs");
  EXPECT_EQ(set.read_image(1), before);

  const auto again = io::ParticleSet::read(
      test::write_text(dir_.path() / "q.star", "data_\nloop_\n_rlnImageName\n1@Extract/t.mrcs\n3@Extract/t.mrcs\n"));
  fs::resize_file(dir_.path() / "Extract/t.mrcs", 1024 + 16 * 16 * 4);  // only the first image left
  EXPECT_EQ(again.read_image(0).size(), 256u);
  expect_clean(test::error_message([&] { (void)again.read_image(1); }), "t.mrcs: file ended at byte");
}

TEST_F(HostileParticles, MissingImageColumnAndEmptyFile) {
  const auto path = test::write_text(dir_.path() / "q.star", "data_particles\nloop_\n_rlnAngleRot\n1\n");
  expect_clean(test::error_message([&] { (void)io::ParticleSet::read(path); }), "q.star: data_particles: missing required column rlnImageName");
  const auto empty = test::write_text(dir_.path() / "e.star", "");
  expect_clean(test::error_message([&] { (void)io::ParticleSet::read(empty); }), "e.star: no data_ block");
}

}  // namespace
