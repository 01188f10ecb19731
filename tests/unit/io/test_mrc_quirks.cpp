// MRC files as found in the wild, from hand-made headers: cell 0, space group 1 on a stack,
// zeroed stamps, extended headers and permuted axes are all read, and notes() says so.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "support/test_mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using namespace emcryo;

namespace {

// Rewrites the header of an MRC file in place, leaving the data where it is.
template <typename Edit>
void edit_header(const fs::path& path, Edit edit) {
  io::MrcHeader h;
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.read(reinterpret_cast<char*>(&h), sizeof(h));
  edit(h);
  f.seekp(0);
  f.write(reinterpret_cast<const char*>(&h), sizeof(h));
}

// A file with an extended header: the library's stack with `extra` bytes inserted after the header.
void insert_extended_header(const fs::path& path, int extra) {
  std::string bytes = test::read_text(path);
  io::MrcHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  h.nsymbt = extra;
  std::memcpy(h.exttyp, "FEI1", 4);
  std::memcpy(bytes.data(), &h, sizeof(h));
  bytes.insert(1024, std::string(static_cast<std::size_t>(extra), '\x7f'));
  test::write_text(path, bytes);
}

bool has_note(const io::MrcReader& r, const std::string& part) {
  for (const auto& n : r.notes())
    if (n.find(part) != std::string::npos) return true;
  return false;
}

class MrcQuirks : public ::testing::Test {
 protected:
  void SetUp() override {
    values_ = test::random_values(8 * 8 * 3, 5);
    test::write_mrc_stack(dir_ / "s.mrcs", values_, 8, 8, 3, 1.5);
  }
  const test::TempDir dir_{"mrc_quirks"};
  std::vector<float> values_;
};

TEST_F(MrcQuirks, PlainFileHasNoNotes) { EXPECT_TRUE(io::MrcReader(dir_ / "s.mrcs").notes().empty()); }

TEST_F(MrcQuirks, CellZeroTakesThePixelSizeFromTheStar) {
  edit_header(dir_ / "s.mrcs", [](io::MrcHeader& h) { h.cella[0] = h.cella[1] = h.cella[2] = 0; });
  const io::MrcReader r(dir_ / "s.mrcs");
  EXPECT_EQ(r.pixel_size(), 0);
  EXPECT_TRUE(has_note(r, "cell dimensions are 0"));
  test::write_text(dir_ / "p.star",
                   "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 2.5\n"
                   "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n000002@s.mrcs 1\n");
  const auto set = io::ParticleSet::read(dir_ / "p.star");
  EXPECT_DOUBLE_EQ(set.pixel_size(), 2.5);
  EXPECT_NO_THROW(set.check_pixel_size_against_stacks());
  EXPECT_EQ(set.read_image(0), std::vector<float>(values_.begin() + 64, values_.begin() + 128));
}

TEST_F(MrcQuirks, SpaceGroupOneOnAStackReadsAsAStack) {
  edit_header(dir_ / "s.mrcs", [](io::MrcHeader& h) { h.ispg = 1; h.mz = 3; });
  const io::MrcReader r(dir_ / "s.mrcs");
  EXPECT_TRUE(has_note(r, "space group 1"));
  EXPECT_EQ(r.read_section(2), std::vector<float>(values_.begin() + 128, values_.end()));
}

TEST_F(MrcQuirks, ZeroedStampsAreRead) {
  edit_header(dir_ / "s.mrcs", [](io::MrcHeader& h) {
    std::memset(h.map, 0, 4);
    std::memset(h.machst, 0, 4);
    h.nversion = 0;
  });
  const io::MrcReader r(dir_ / "s.mrcs");
  EXPECT_FALSE(r.byte_swapped());
  EXPECT_TRUE(has_note(r, "no 'MAP ' stamp"));
  EXPECT_TRUE(has_note(r, "machine stamp is zero"));
  EXPECT_EQ(r.read_section(1), std::vector<float>(values_.begin() + 64, values_.begin() + 128));
}

TEST_F(MrcQuirks, ExtendedHeaderIsSkipped) {
  insert_extended_header(dir_ / "s.mrcs", 131072);
  const io::MrcReader r(dir_ / "s.mrcs");
  EXPECT_TRUE(has_note(r, "extended header of 131072 bytes (FEI1)"));
  EXPECT_EQ(r.read_section(0), std::vector<float>(values_.begin(), values_.begin() + 64));
}

TEST_F(MrcQuirks, PermutedAxesAreReorderedToXFastest) {
  // Stored: 4 columns along z, 5 rows along x, 6 sections along y (MAPC/MAPR/MAPS = 3/1/2).
  const auto stored = test::random_values(4 * 5 * 6, 9);
  test::write_mrc_volume(dir_ / "m.mrc", stored, 4, 5, 6, 1.0);
  edit_header(dir_ / "m.mrc", [](io::MrcHeader& h) {
    h.mapc = 3;
    h.mapr = 1;
    h.maps = 2;
  });
  const io::MrcReader r(dir_ / "m.mrc");
  EXPECT_TRUE(r.axes_permuted());
  EXPECT_TRUE(has_note(r, "axis order MAPC/MAPR/MAPS = 3/1/2"));
  EXPECT_EQ(r.map_size(), (std::array<int, 3>{5, 6, 4}));
  const auto map = r.read_all();
  for (int z = 0; z < 4; ++z)
    for (int y = 0; y < 6; ++y)
      for (int x = 0; x < 5; ++x) {
        const std::size_t file_index = static_cast<std::size_t>(z + 4 * (x + 5 * y));  // c = z, r = x, s = y
        ASSERT_EQ(map[static_cast<std::size_t>(x + 5 * (y + 6 * z))], stored[file_index]) << x << " " << y << " " << z;
      }
  // Zeroed axis fields are read as 1/2/3.
  edit_header(dir_ / "m.mrc", [](io::MrcHeader& h) { h.mapc = h.mapr = h.maps = 0; });
  const io::MrcReader zeroed(dir_ / "m.mrc");
  EXPECT_FALSE(zeroed.axes_permuted());
  EXPECT_EQ(zeroed.read_all(), stored);
}

}  // namespace
