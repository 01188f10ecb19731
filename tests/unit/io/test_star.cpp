#include <gtest/gtest.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "emcryo/core/error.hpp"
#include "emcryo/io/star.hpp"
#include "support/test_support.hpp"

namespace emcryo::io {
namespace {

namespace fs = std::filesystem;

// Substring check that prints both strings on failure (gmock is not linked here).
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

// A fresh folder per test, removed afterwards.
class StarTest : public ::testing::Test {
 protected:
  fs::path write_file(const std::string& name, const std::string& text) const { return test::write_text(dir_ / name, text); }
  const test::TempDir dir_{"star"};
};

using test::error_message;

const char* const kRelion31 = R"(
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
opticsGroup1            1     0.885000   300.000000     2.700000     0.100000     1.770000          128            2


# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnOpticsGroup #5
_rlnDefocusU #6
_rlnDefocusV #7
_rlnDefocusAngle #8
_rlnAngleRot #9
_rlnMyOwnLabel #10
  1614.217280  1230.580000 000001@Extract/job007/Movies/mic001.mrcs MotionCorr/job002/Movies/mic001.mrc            1 10864.146484 10575.793945    77.995003   -12.50000 keep_me
   977.000000   427.000000 000002@Extract/job007/Movies/mic001.mrcs MotionCorr/job002/Movies/mic001.mrc            1 10864.146484 10575.793945    77.995003   100.00000 and_me
)";

TEST_F(StarTest, ParsesRelion31OpticsAndParticles) {
  const StarFile star = read_star(write_file("p.star", kRelion31));
  EXPECT_EQ(star.version, 30001);
  ASSERT_EQ(star.blocks.size(), 2u);
  const StarBlock& optics = star.require_block("optics");
  EXPECT_TRUE(optics.is_loop);
  EXPECT_EQ(optics.table.rows(), 1u);
  EXPECT_EQ(optics.table.columns(), 9u);
  EXPECT_EQ(optics.table.text(0, optics.table.require("rlnOpticsGroupName")), "opticsGroup1");
  EXPECT_DOUBLE_EQ(optics.table.number(0, optics.table.require("rlnImagePixelSize")), 1.77);
  EXPECT_EQ(optics.table.integer(0, optics.table.require("rlnImageSize")), 128);

  const StarTable& particles = star.require_block("particles").table;
  EXPECT_EQ(particles.rows(), 2u);
  EXPECT_EQ(particles.columns(), 10u);
  EXPECT_EQ(particles.text(1, particles.require("rlnImageName")), "000002@Extract/job007/Movies/mic001.mrcs");
  EXPECT_DOUBLE_EQ(particles.number(0, particles.require("_rlnAngleRot")), -12.5);
  EXPECT_EQ(particles.text(1, particles.require("rlnMyOwnLabel")), "and_me");
  EXPECT_EQ(particles.source_file, (dir_ / "p.star").string());
  EXPECT_EQ(particles.block_name, "particles");
  EXPECT_EQ(particles.line_of(0), 34u);
  EXPECT_EQ(star.find_block("micrographs"), nullptr);
}

TEST_F(StarTest, ParsesRelion30SingleUnnamedBlock) {
  const StarFile star = parse_star(
      "data_\n"
      "loop_\n"
      "_rlnImageName #1\n"
      "_rlnOriginX #2\n"
      "_rlnVoltage #3\n"
      "1@stack.mrcs 1.5 300\n"
      "2@stack.mrcs -2.25 300\n",
      "old.star");
  EXPECT_EQ(star.version, 0);
  ASSERT_EQ(star.blocks.size(), 1u);
  EXPECT_EQ(star.blocks[0].name, "");
  const StarTable& table = star.require_block("").table;
  EXPECT_EQ(table.rows(), 2u);
  EXPECT_EQ(table.numbers(table.require("rlnOriginX")), (std::vector<double>{1.5, -2.25}));
}

TEST_F(StarTest, ParsesKeyValueBlock) {
  const StarFile star = parse_star(
      "data_model_general\n"
      "\n"
      "_rlnReferenceDimensionality        3\n"
      "_rlnCurrentResolution   4.250000   # a trailing comment\n"
      "_rlnTau2FudgeFactor '1.0'\n"
      "\n"
      "data_model_classes\n"
      "loop_\n"
      "_rlnReferenceImage\n"
      "_rlnClassDistribution\n"
      "run_it025_class001.mrc 1.000000\n",
      "model.star");
  const StarBlock& general = star.require_block("model_general");
  EXPECT_FALSE(general.is_loop);
  EXPECT_EQ(general.table.rows(), 1u);
  EXPECT_EQ(general.table.columns(), 3u);
  EXPECT_EQ(general.table.integer(0, general.table.require("rlnReferenceDimensionality")), 3);
  EXPECT_DOUBLE_EQ(general.table.number(0, general.table.require("rlnCurrentResolution")), 4.25);
  EXPECT_EQ(general.table.text(0, general.table.require("rlnTau2FudgeFactor")), "1.0");
  EXPECT_TRUE(star.require_block("model_classes").is_loop);

  // Written back as "_key value" lines, read back the same.
  const std::string text = format_star(star);
  EXPECT_TRUE(Contains(text, "\n_rlnCurrentResolution 4.250000\n"));
  const StarFile again = parse_star(text, "again.star");
  EXPECT_EQ(again.require_block("model_general").table.text(0, 1), "4.250000");
}

TEST_F(StarTest, CommentsBlankLinesAndQuotes) {
  const StarFile star = parse_star(
      "# a header comment\n"
      "\n"
      "data_particles   # trailing comment\n"
      "# comment before loop\n"
      "loop_\n"
      "# comment between labels\n"
      "_rlnMicrographName #1\n"
      "\n"
      "_rlnGroupName #2\n"
      "_rlnDefocusU #3\n"
      "\r\n"
      "'with space.mrc' \"group 1\" 100.5\r\n"
      "# a comment between rows\n"
      "\n"
      "plain.mrc 'it's fine' 200  # trailing\n"
      "\"\" g#1 3e2\n",
      "c.star");
  const StarTable& table = star.require_block("particles").table;
  ASSERT_EQ(table.rows(), 3u);
  EXPECT_EQ(table.text(0, 0), "with space.mrc");
  EXPECT_EQ(table.text(0, 1), "group 1");
  EXPECT_EQ(table.text(1, 1), "it's fine");
  EXPECT_EQ(table.text(2, 0), "");
  EXPECT_EQ(table.text(2, 1), "g#1");
  EXPECT_EQ(table.numbers(2), (std::vector<double>{100.5, 200, 300}));
  EXPECT_EQ(table.line_of(1), 15u);

  // Quotes come back where needed, and the file reads back the same.
  const std::string text = format_star(star);
  EXPECT_TRUE(Contains(text, "\"with space.mrc\" \"group 1\" 100.5\n"));
  EXPECT_TRUE(Contains(text, "plain.mrc \"it's fine\" 200\n"));
  EXPECT_TRUE(Contains(text, "\n\"\" g#1 3e2\n"));
  const StarFile reread = parse_star(text, "again.star");
  const StarTable& again = reread.require_block("particles").table;
  for (std::size_t row = 0; row < 3; ++row)
    for (int column = 0; column < 3; ++column) EXPECT_EQ(again.text(row, column), table.text(row, column));
}

TEST_F(StarTest, SkipsByteOrderMark) {
  const StarFile star = parse_star("\xEF\xBB\xBF# version 30001\ndata_x\n_rlnA 1\n", "bom.star");
  EXPECT_EQ(star.version, 30001);
  EXPECT_EQ(star.blocks.at(0).table.text(0, 0), "1");
}

TEST_F(StarTest, ColumnOrderDoesNotMatter) {
  const StarTable a = parse_star("data_p\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n10 20\n", "a").blocks[0].table;
  const StarTable b = parse_star("data_p\nloop_\n_rlnAngleTilt\n_rlnAngleRot\n20 10\n", "b").blocks[0].table;
  for (const StarTable* t : {&a, &b}) {
    EXPECT_DOUBLE_EQ(t->number(0, t->require("rlnAngleRot")), 10);
    EXPECT_DOUBLE_EQ(t->number(0, t->require("rlnAngleTilt")), 20);
  }
}

TEST_F(StarTest, RoundTripKeepsUnknownColumnsAndTextExactly) {
  const fs::path in = write_file("in.star", kRelion31);
  const StarFile star = read_star(in);
  const fs::path out = dir_ / "out.star";
  write_star(out, star);
  const std::string written = test::read_text(out);
  EXPECT_EQ(written.rfind("# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n", 0), 0u);
  EXPECT_TRUE(Contains(written, "\n\n# version 30001\n\ndata_particles\n"));
  EXPECT_TRUE(Contains(written, "_rlnMyOwnLabel #10\n"));
  // Original number text is copied, not reformatted.
  EXPECT_TRUE(Contains(written, " 1 10864.146484 10575.793945 77.995003 -12.50000 keep_me\n"));

  const StarFile again = read_star(out);
  ASSERT_EQ(again.blocks.size(), star.blocks.size());
  for (std::size_t b = 0; b < star.blocks.size(); ++b) {
    const StarTable& x = star.blocks[b].table;
    const StarTable& y = again.blocks[b].table;
    EXPECT_EQ(x.column_names(), y.column_names());
    ASSERT_EQ(x.rows(), y.rows());
    for (std::size_t row = 0; row < x.rows(); ++row)
      for (int column = 0; column < static_cast<int>(x.columns()); ++column)
        EXPECT_EQ(x.text(row, column), y.text(row, column));
  }
  // Writing the re-read file gives the same bytes: the format is stable.
  EXPECT_EQ(format_star(again), written);
}

TEST_F(StarTest, NumbersFastPathParsesWholeColumn) {
  std::string text = "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnClassNumber\n";
  for (int i = 0; i < 1000; ++i)
    text += "x@s.mrcs " + std::to_string(10000 + i) + ".5 " + std::to_string(i % 7 + 1) + "\n";
  const StarFile star = parse_star(text, "n.star");
  const StarTable& table = star.blocks[0].table;
  const std::vector<double> defocus = table.numbers(table.require("rlnDefocusU"));
  ASSERT_EQ(defocus.size(), 1000u);
  EXPECT_DOUBLE_EQ(defocus[0], 10000.5);
  EXPECT_DOUBLE_EQ(defocus[999], 10999.5);
  EXPECT_EQ(table.integer(13, table.require("rlnClassNumber")), 13 % 7 + 1);
  // Exponents, signs, nan; integers written as floats by other tools.
  const StarFile odd_star = parse_star("data_\nloop_\n_a\n1.5e+04\n+2\n-0.25\nnan\n3.000000\n", "o");
  const StarTable& odd = odd_star.blocks[0].table;
  const std::vector<double> values = odd.numbers(0);
  EXPECT_DOUBLE_EQ(values[0], 15000);
  EXPECT_DOUBLE_EQ(values[1], 2);
  EXPECT_DOUBLE_EQ(values[2], -0.25);
  EXPECT_TRUE(std::isnan(values[3]));
  EXPECT_EQ(odd.integer(4, 0), 3);
  EXPECT_EQ(odd.integer(1, 0), 2);
}

TEST_F(StarTest, NumbersAreBitIdenticalToFromChars) {
  // numbers() takes a shortcut for plain decimals; it must round exactly like std::from_chars.
  std::mt19937_64 random(7);
  std::uniform_real_distribution<double> magnitude(-12.0, 12.0);
  std::vector<std::string> texts;
  char buffer[64];
  for (int i = 0; i < 20000; ++i) {
    const double value = (i % 2 != 0 ? -1.0 : 1.0) * std::pow(10.0, magnitude(random));
    const int precision = i % 17;
    std::snprintf(buffer, sizeof buffer, i % 3 == 0 ? "%.*f" : (i % 3 == 1 ? "%.*e" : "%.*g"), precision,
                  value);
    texts.emplace_back(buffer);
  }
  for (const char* edge : {"0", "-0", "0.0", "5.", ".5", "-.5", "999999999999999", "9999999999999999",
                           "0.000000000000001", "123456789.012345", "1234567890.123456789"})
    texts.emplace_back(edge);
  std::string text = "data_\nloop_\n_rlnValue\n";
  for (const std::string& t : texts) text += t + "\n";
  const StarFile star = parse_star(text, "bits.star");
  const std::vector<double> parsed = star.blocks[0].table.numbers(0);
  ASSERT_EQ(parsed.size(), texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    double expected = 0;
    std::from_chars(texts[i].data(), texts[i].data() + texts[i].size(), expected);
    EXPECT_EQ(std::memcmp(&parsed[i], &expected, sizeof expected), 0) << texts[i];
  }
}

TEST_F(StarTest, ErrorMissingRequiredColumnAndBlock) {
  const StarFile star = read_star(write_file("p.star", kRelion31));
  const std::string file = (dir_ / "p.star").string();
  EXPECT_EQ(error_message([&] { star.require_block("particles").table.require("rlnClassNumber"); }),
            file + ": data_particles: missing required column rlnClassNumber");
  EXPECT_EQ(error_message([&] { star.require_block("micrographs"); }), file + ": no data_micrographs block");
}

TEST_F(StarTest, ErrorShortAndLongRows) {
  const std::string text = "data_particles\nloop_\n_rlnA #1\n_rlnB #2\n_rlnC #3\n1 2 3\n1 2\n";
  EXPECT_EQ(error_message([&] { parse_star(text, "s.star"); }),
            "s.star:7: data_particles: row has 2 values, expected 3");
  EXPECT_EQ(error_message([&] { parse_star("data_x\nloop_\n_rlnA\n1 2\n", "l.star"); }),
            "l.star:4: data_x: row has 2 values, expected 1");
}

TEST_F(StarTest, ErrorNotANumberNamesFileLineAndColumn) {
  const StarFile star =
      read_star(write_file("bad.star", "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\na 100\nb abc\n"));
  const StarTable& table = star.blocks[0].table;
  const std::string expected = (dir_ / "bad.star").string() + ":6: column rlnDefocusU: 'abc' is not a number";
  EXPECT_EQ(error_message([&] { table.numbers(1); }), expected);
  EXPECT_EQ(error_message([&] { table.number(1, 1); }), expected);
  EXPECT_TRUE(
      Contains(error_message([&] { table.integer(1, 1); }), ":6: column rlnDefocusU: 'abc' is not a number"));
  EXPECT_TRUE(
      Contains(error_message([&] { table.integer(0, 0); }), ":5: column rlnImageName: 'a' is not a number"));
  // Key-value blocks report the key's own line.
  const StarFile kv = parse_star("data_g\n_rlnA 1\n_rlnB 1.5\n", "kv.star");
  EXPECT_EQ(error_message([&] { kv.blocks[0].table.integer(0, 1); }),
            "kv.star:3: column rlnB: '1.5' is not an integer");
}

TEST_F(StarTest, ErrorUnterminatedQuote) {
  EXPECT_EQ(error_message([&] { parse_star("data_p\nloop_\n_rlnA\n_rlnB\n1 'abc def\n", "q.star"); }),
            "q.star:5: column rlnB: unterminated quote");
  EXPECT_EQ(error_message([&] { parse_star("data_p\n_rlnA \"x\n", "k.star"); }),
            "k.star:2: column rlnA: unterminated quote");
}

TEST_F(StarTest, ErrorMissingFileEmptyFileAndStrayText) {
  const fs::path missing = dir_ / "nope.star";
  EXPECT_TRUE(Contains(error_message([&] { read_star(missing); }), missing.string() + ": cannot open"));
  const fs::path empty = write_file("empty.star", "");
  EXPECT_TRUE(Contains(error_message([&] { read_star(empty); }), empty.string() + ": no data_ block"));
  EXPECT_TRUE(
      Contains(error_message([&] { parse_star("# only a comment\n\n", "c.star"); }), "c.star: no data_ block"));
  EXPECT_EQ(error_message([&] { parse_star("hello\ndata_\n", "h.star"); }),
            "h.star:1: 'hello' outside a data_ block");
  EXPECT_TRUE(Contains(error_message([&] { parse_star("data_a\n_rlnA\n", "v.star"); }),
                       "v.star:2: data_a: rlnA has no value"));
  EXPECT_TRUE(Contains(error_message([&] { parse_star("data_a\nloop_\n_rlnA\n_rlnA\n", "d.star"); }),
                       "d.star:4: data_a: duplicate column rlnA"));
}

TEST_F(StarTest, EditsAddColumnSelectRows) {
  StarFile star = parse_star(kRelion31, "p.star");
  StarTable& table = star.find_block("particles")->table;
  const int rot = table.require("rlnAngleRot");
  table.set_number(0, rot, 45.123456789);
  table.set_number(1, rot, -0.0);
  table.set_integer(1, table.require("rlnOpticsGroup"), 2);
  table.set_text(1, table.require("rlnMicrographName"), "new name.mrc");
  EXPECT_EQ(table.text(0, rot), "45.123457");
  EXPECT_EQ(table.text(1, rot), "0.000000");
  table.set_number(0, rot, 1.5e-7, 3);
  EXPECT_EQ(table.text(0, rot), "1.500e-07");

  const int klass = table.add_column("rlnClassNumber", "1");
  EXPECT_EQ(klass, 10);
  EXPECT_EQ(table.add_column("_rlnClassNumber"), klass);  // existing: same index
  table.set_integer(1, klass, 3);
  EXPECT_EQ(table.integer(0, klass), 1);
  EXPECT_EQ(table.integer(1, klass), 3);
  EXPECT_EQ(table.text(0, table.require("rlnMyOwnLabel")), "keep_me");  // old cells survive

  const std::size_t added = table.add_row();
  EXPECT_EQ(added, 2u);
  EXPECT_EQ(table.line_of(added), 0u);
  // An unset cell is a bug in the caller: writing says which one.
  EXPECT_TRUE(Contains(error_message([&] { format_star(star); }),
                       "data_particles: row 3: column rlnCoordinateX was never set"));
  for (int column = 0; column < static_cast<int>(table.columns()); ++column)
    table.set_text(added, column, "7");

  table.select_rows({2, 1, 0, 0});  // reorder, drop nothing, duplicate one
  ASSERT_EQ(table.rows(), 4u);
  EXPECT_EQ(table.text(0, rot), "7");
  EXPECT_EQ(table.text(1, rot), "0.000000");
  EXPECT_EQ(table.text(2, rot), "1.500e-07");
  EXPECT_EQ(table.text(3, table.require("rlnMyOwnLabel")), "keep_me");
  EXPECT_EQ(table.line_of(1), 35u);
  EXPECT_TRUE(Contains(error_message([&] { table.select_rows({5}); }), "row 5 is out of range"));
  EXPECT_TRUE(Contains(error_message([&] { table.text(0, -1); }), "out of range"));

  const StarFile again = parse_star(format_star(star), "again.star");
  const StarTable& reread = again.require_block("particles").table;
  EXPECT_EQ(reread.text(1, reread.require("rlnMicrographName")), "new name.mrc");
  EXPECT_EQ(reread.integer(1, reread.require("rlnClassNumber")), 3);
  EXPECT_EQ(reread.integer(3, reread.require("rlnClassNumber")), 1);
  EXPECT_EQ(reread.rows(), 4u);
}

TEST_F(StarTest, ManyEditsStayCompact) {
  // Edits append their text; after enough of them the table compacts its storage. Cells that
  // were never edited (still pointing into the file text) and edited ones must both survive.
  std::string text = "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n";
  for (int row = 0; row < 20000; ++row) text += std::to_string(row + 1) + "@stack.mrcs 1.0\n";
  StarFile star = parse_star(text, "edits.star");
  StarTable& table = star.blocks[0].table;
  const int defocus = table.require("rlnDefocusU");
  for (int pass = 0; pass < 100; ++pass)  // about 28 MB of edits, past the 16 MB slack
    for (std::size_t row = 0; row < table.rows(); ++row)
      table.set_number(row, defocus, static_cast<double>(pass * 100000 + row) + 0.5);
  EXPECT_EQ(table.text(12345, defocus), "9912345.500000");
  EXPECT_DOUBLE_EQ(table.numbers(defocus)[7], 9900007.5);
  EXPECT_EQ(table.text(0, 0), "1@stack.mrcs");
  EXPECT_EQ(table.text(19999, 0), "20000@stack.mrcs");
  EXPECT_EQ(table.line_of(19999), 20004u);
  // Selecting a few rows also compacts; the text must stay right.
  table.select_rows({19999, 5});
  EXPECT_EQ(table.text(0, 0), "20000@stack.mrcs");
  EXPECT_EQ(table.text(1, defocus), "9900005.500000");
  table.set_text(1, 0, "x@y.mrcs");
  EXPECT_EQ(format_star(star).substr(format_star(star).find("#2\n") + 3),
            "20000@stack.mrcs 9919999.500000\nx@y.mrcs 9900005.500000\n\n");
}

TEST_F(StarTest, BuildInMemoryAndWrite) {
  StarFile star;
  StarBlock& general = star.blocks.emplace_back();
  general.name = "model_general";
  general.table.add_row();
  general.table.set_number(0, general.table.add_column("rlnCurrentResolution"), 3.5, 2);
  StarBlock& loop = star.blocks.emplace_back();
  loop.name = "model_classes";
  loop.is_loop = true;
  const int image = loop.table.add_column("rlnReferenceImage");
  const std::size_t row = loop.table.add_row();
  loop.table.set_text(row, image, "class001.mrc");
  EXPECT_EQ(format_star(star),
            "# version 30001\n\ndata_model_general\n\n_rlnCurrentResolution 3.50\n\n"
            "# version 30001\n\ndata_model_classes\n\nloop_\n_rlnReferenceImage #1\nclass001.mrc\n\n");
}

// RELION itself reads what we write, and we read what RELION writes back.
TEST_F(StarTest, InteropRelionStarHandlerReadsOurFile) {
  const char* const handler = "/usr/bin/relion_star_handler";
  if (!fs::exists(handler)) GTEST_SKIP() << "relion_star_handler not installed";
  StarFile star = parse_star(kRelion31, "p.star");
  StarTable& particles = star.find_block("particles")->table;
  particles.set_number(0, particles.require("rlnDefocusU"), 12345.5);
  particles.set_number(1, particles.require("rlnCoordinateX"), 2.5e9);  // written as 2.500000e+09
  particles.set_text(1, particles.require("rlnMyOwnLabel"), "quoted value");
  const fs::path in = dir_ / "in.star";
  const fs::path out = dir_ / "out.star";
  write_star(in, star);
  const std::string command = std::string(handler) + " --i '" + in.string() + "' --o '" + out.string() +
                              "' > '" + (dir_ / "log.txt").string() + "' 2>&1";
  ASSERT_EQ(test::run(command), 0) << test::read_text(dir_ / "log.txt");

  const StarFile relion = read_star(out);
  EXPECT_EQ(relion.version, 30001);
  const StarTable& ours = star.require_block("particles").table;
  const StarTable& theirs = relion.require_block("particles").table;
  ASSERT_EQ(theirs.rows(), ours.rows());
  for (const char* label :
       {"rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot"}) {
    for (std::size_t row = 0; row < ours.rows(); ++row)
      EXPECT_NEAR(theirs.number(row, theirs.require(label)), ours.number(row, ours.require(label)),
                  1e-5 * std::max(1.0, std::fabs(ours.number(row, ours.require(label)))))
          << label;
  }
  for (std::size_t row = 0; row < ours.rows(); ++row) {
    EXPECT_EQ(theirs.text(row, theirs.require("rlnImageName")), ours.text(row, ours.require("rlnImageName")));
    EXPECT_EQ(theirs.integer(row, theirs.require("rlnOpticsGroup")), 1);
  }
  // RELION keeps unknown columns and quoted values with spaces.
  EXPECT_EQ(theirs.text(1, theirs.require("rlnMyOwnLabel")), "quoted value");
  EXPECT_EQ(theirs.text(0, theirs.require("rlnMyOwnLabel")), "keep_me");
  const StarTable& optics = relion.require_block("optics").table;
  EXPECT_DOUBLE_EQ(optics.number(0, optics.require("rlnImagePixelSize")), 1.77);
}

}  // namespace
}  // namespace emcryo::io
