// MRC reading and writing: round trips, files from mrcfile and RELION, header variants, bad
// input, random access into a large sparse stack, and NaN detection.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "emcryo/core/error.hpp"
#include "emcryo/core/float16.hpp"
#include "emcryo/io/mrc.hpp"
#include "support/test_support.hpp"

namespace fs = std::filesystem;
using emcryo::io::MrcHeader;
using emcryo::io::MrcReader;
using emcryo::io::MrcStackWriter;
using emcryo::io::MrcWriteOptions;
using emcryo::io::write_mrc;
using emcryo::test::CommandResult;
using emcryo::test::quoted;

namespace {

// A fresh folder under the system temp folder, removed with everything in it at the end.
class TempDir : public emcryo::test::TempDir {
 public:
  TempDir() : emcryo::test::TempDir("test_mrc") {}
};

// The first python3 that can import mrcfile (the one on PATH may be a separate installation
// without it, so the system one is tried as well); empty when there is none.
const std::string& python_with_mrcfile() {
  static const std::string found = [] {
    for (const std::string candidate : {"python3", "/usr/bin/python3"}) {
      if (emcryo::test::run(candidate + " -c 'import mrcfile, numpy' > /dev/null 2>&1") == 0)
        return candidate;
    }
    return std::string();
  }();
  return found;
}

CommandResult run_python(const TempDir& dir, const std::string& script,
                         const std::string& arguments = "") {
  const fs::path script_path = emcryo::test::write_text(dir / "script.py", script);
  return emcryo::test::run_capture(python_with_mrcfile() + " " + quoted(script_path) + " " + arguments);
}

bool relion_available() {
  return emcryo::test::have_program("relion_image_handler") && emcryo::test::have_program("relion_project");
}

using emcryo::test::error_message;

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "message: " << (text)

// Values with a non-zero mean and a wide spread, so every mode's scaling is exercised.
std::vector<float> random_values(std::size_t count, unsigned seed, float sd = 3.0f, float mean = 0.5f) {
  return emcryo::test::random_values(count, seed, sd, mean);
}

std::vector<float> rounded_to_half(const std::vector<float>& values) {
  std::vector<std::uint16_t> halves(values.size());
  std::vector<float> rounded(values.size());
  emcryo::float_to_half(values.data(), halves.data(), values.size());
  emcryo::half_to_float(halves.data(), rounded.data(), values.size());
  return rounded;
}

// Header statistics must be those of the stored values (MRC2014 and mrcfile.validate).
void expect_statistics(const MrcHeader& header, const std::vector<float>& stored) {
  double sum = 0, sum2 = 0;
  float lo = stored[0], hi = stored[0];
  for (float v : stored) {
    sum += v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double mean = sum / static_cast<double>(stored.size());
  for (float v : stored) sum2 += (v - mean) * (v - mean);
  const double rms = std::sqrt(sum2 / static_cast<double>(stored.size()));
  EXPECT_EQ(header.dmin, lo);
  EXPECT_EQ(header.dmax, hi);
  EXPECT_NEAR(header.dmean, mean, 1e-5 * (1 + std::abs(mean)));
  EXPECT_NEAR(header.rms, rms, 1e-5 * rms);
}

void expect_common_mrc2014_header(const MrcHeader& header) {
  EXPECT_EQ(std::string(header.map, 4), "MAP ");
  EXPECT_EQ(header.machst[0], 0x44);
  EXPECT_EQ(header.machst[1], 0x44);
  EXPECT_EQ(header.machst[2], 0);
  EXPECT_EQ(header.machst[3], 0);
  EXPECT_EQ(header.nversion, 20141);
  EXPECT_EQ(header.mapc, 1);
  EXPECT_EQ(header.mapr, 2);
  EXPECT_EQ(header.maps, 3);
  for (float angle : header.cellb) EXPECT_EQ(angle, 90.0f);
  EXPECT_EQ(header.nsymbt, 0);
  EXPECT_EQ(header.nlabl, 1);
  EXPECT_EQ(std::string(header.labels[0]).rfind("emcryo 0.1.0 20", 0), 0u) << header.labels[0];
  EXPECT_EQ(header.labels[1][0], '\0');
}

// A header as a hand-written file would have it: only what the test sets, little-endian.
MrcHeader plain_header(int nx, int ny, int nz, int mode) {
  MrcHeader header;
  header.nx = nx;
  header.ny = ny;
  header.nz = nz;
  header.mode = mode;
  header.mx = nx;
  header.my = ny;
  header.mz = nz;
  return header;
}

void write_raw_file(const fs::path& path, const MrcHeader& header, const void* data,
                    std::size_t bytes, const std::string& extended = "",
                    std::size_t padding = 0) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&header), sizeof(header));
  out.write(extended.data(), static_cast<std::streamsize>(extended.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  const std::string zeros(padding, '\0');
  out.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
}

void write_bytes(const fs::path& path, const std::vector<char>& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

// ----------------------------------------------------------------------------- round trips

TEST(MrcRoundTrip, Float32Volume) {
  TempDir dir;
  const int nx = 9, ny = 7, nz = 5;
  const auto volume = random_values(static_cast<std::size_t>(nx) * ny * nz, 1, 2.0f, 100.0f);
  write_mrc(dir / "volume.mrc", volume, nx, ny, nz, {.pixel_size = 1.25});

  MrcReader reader(dir / "volume.mrc");
  EXPECT_EQ(reader.nx(), nx);
  EXPECT_EQ(reader.ny(), ny);
  EXPECT_EQ(reader.nz(), nz);
  EXPECT_FALSE(reader.byte_swapped());
  EXPECT_DOUBLE_EQ(reader.pixel_size(), 1.25);
  const MrcHeader& header = reader.header();
  expect_common_mrc2014_header(header);
  EXPECT_EQ(header.mode, 2);
  EXPECT_EQ(header.ispg, 1);
  EXPECT_EQ(header.mx, nx);
  EXPECT_EQ(header.my, ny);
  EXPECT_EQ(header.mz, nz);
  EXPECT_FLOAT_EQ(header.cella[0], nx * 1.25f);
  EXPECT_FLOAT_EQ(header.cella[1], ny * 1.25f);
  EXPECT_FLOAT_EQ(header.cella[2], nz * 1.25f);
  EXPECT_EQ(fs::file_size(dir / "volume.mrc"), 1024u + volume.size() * 4);
  EXPECT_EQ(reader.read_all(), volume);
  expect_statistics(header, volume);  // mean 100, spread 2: the shifted sums keep rms exact
}

TEST(MrcRoundTrip, Float16Volume) {
  TempDir dir;
  const int nx = 8, ny = 6, nz = 4;
  const auto volume = random_values(static_cast<std::size_t>(nx) * ny * nz, 2);
  write_mrc(dir / "volume16.mrc", volume, nx, ny, nz, {.pixel_size = 0.9, .float16 = true});

  MrcReader reader(dir / "volume16.mrc");
  EXPECT_EQ(reader.header().mode, 12);
  EXPECT_EQ(fs::file_size(dir / "volume16.mrc"), 1024u + volume.size() * 2);
  const auto stored = rounded_to_half(volume);
  EXPECT_EQ(reader.read_all(), stored);
  for (std::size_t i = 0; i < volume.size(); ++i)
    EXPECT_NEAR(stored[i], volume[i], 1e-3 * (1 + std::abs(volume[i])));
  expect_statistics(reader.header(), stored);
  EXPECT_NEAR(reader.pixel_size(), 0.9, 1e-6);
}

TEST(MrcRoundTrip, Float32AndFloat16Stacks) {
  for (bool float16 : {false, true}) {
    SCOPED_TRACE(float16 ? "float16" : "float32");
    TempDir dir;
    const int nx = 10, ny = 12, count = 6;
    const auto images = random_values(static_cast<std::size_t>(nx) * ny * count, 3);
    write_mrc(dir / "stack.mrcs", images, nx, ny, count,
              {.pixel_size = 1.5, .is_stack = true, .float16 = float16});

    MrcReader reader(dir / "stack.mrcs");
    const MrcHeader& header = reader.header();
    expect_common_mrc2014_header(header);
    EXPECT_EQ(header.mode, float16 ? 12 : 2);
    EXPECT_EQ(header.ispg, 0);
    EXPECT_EQ(header.nz, count);
    EXPECT_EQ(header.mz, 1);
    EXPECT_FLOAT_EQ(header.cella[0], nx * 1.5f);
    EXPECT_FLOAT_EQ(header.cella[1], ny * 1.5f);
    EXPECT_FLOAT_EQ(header.cella[2], 1.5f);
    EXPECT_DOUBLE_EQ(reader.pixel_size(), 1.5);
    const auto stored = float16 ? rounded_to_half(images) : images;
    expect_statistics(header, stored);

    const std::size_t image_size = static_cast<std::size_t>(nx) * ny;
    for (int i = 0; i < count; ++i) {
      const auto image = reader.read_section(i);
      EXPECT_TRUE(std::equal(image.begin(), image.end(), stored.begin() + i * image_size)) << i;
    }
    std::vector<float> middle(3 * image_size);
    reader.read_sections(2, 3, middle.data());
    EXPECT_TRUE(std::equal(middle.begin(), middle.end(), stored.begin() + 2 * image_size));
    EXPECT_CONTAINS(error_message([&] { reader.read_sections(4, 3, middle.data()); }), "nz");
    EXPECT_CONTAINS(error_message([&] { (void)reader.read_section(-1); }), "stack.mrcs");
  }
}

TEST(MrcRoundTrip, StackWriterStreamsAndAppearsOnlyAtClose) {
  for (bool float16 : {false, true}) {
    SCOPED_TRACE(float16 ? "float16" : "float32");
    TempDir dir;
    const int nx = 11, ny = 9, count = 5;
    const std::size_t image_size = static_cast<std::size_t>(nx) * ny;
    const auto images = random_values(image_size * count, 4, 1.0f, -20.0f);
    const fs::path path = dir / "streamed.mrcs";
    {
      MrcStackWriter writer(path, nx, ny, {.pixel_size = 2.5, .float16 = float16});
      for (int i = 0; i < count; ++i) writer.append(images.data() + i * image_size);
      EXPECT_EQ(writer.count(), count);
      EXPECT_FALSE(fs::exists(path));
      writer.close();
      writer.close();  // a second close does nothing
      EXPECT_CONTAINS(error_message([&] { writer.append(images.data()); }), "closed");
    }
    EXPECT_EQ(dir.names(), std::vector<std::string>{"streamed.mrcs"});  // no temporary left

    MrcReader reader(path);
    EXPECT_EQ(reader.nz(), count);
    EXPECT_EQ(reader.header().ispg, 0);
    EXPECT_EQ(reader.header().mz, 1);
    EXPECT_DOUBLE_EQ(reader.pixel_size(), 2.5);
    expect_common_mrc2014_header(reader.header());
    const auto stored = float16 ? rounded_to_half(images) : images;
    EXPECT_EQ(reader.read_all(), stored);
    expect_statistics(reader.header(), stored);
  }
}

TEST(MrcRoundTrip, StackWriterWithoutCloseLeavesNothing) {
  TempDir dir;
  const std::vector<float> image(16, 1.0f);
  {
    MrcStackWriter writer(dir / "abandoned.mrcs", 4, 4, {});
    writer.append(image.data());
    EXPECT_EQ(dir.names().size(), 1u);  // the temporary file
  }
  EXPECT_TRUE(dir.names().empty());

  MrcStackWriter empty(dir / "empty.mrcs", 4, 4, {});
  EXPECT_CONTAINS(error_message([&] { empty.close(); }), "no images");
  EXPECT_TRUE(dir.names().empty());
}

TEST(MrcRoundTrip, OverwritesAtomicallyAndReaderMoves) {
  TempDir dir;
  const fs::path path = dir / "map.mrc";
  write_mrc(path, std::vector<float>(8, 1.0f), 2, 2, 2, {});
  write_mrc(path, std::vector<float>(27, 3.0f), 3, 3, 3, {.pixel_size = 4.0});
  EXPECT_EQ(dir.names(), std::vector<std::string>{"map.mrc"});

  MrcReader first(path);
  MrcReader moved(std::move(first));
  EXPECT_EQ(moved.nx(), 3);
  EXPECT_EQ(moved.read_all(), std::vector<float>(27, 3.0f));
  EXPECT_EQ(moved.path(), path);
  // Constant data: rms 0, min = max; still valid statistics.
  EXPECT_EQ(moved.header().dmin, 3.0f);
  EXPECT_EQ(moved.header().dmax, 3.0f);
  EXPECT_EQ(moved.header().rms, 0.0f);
}

TEST(MrcRoundTrip, WriteRejectsBadArguments) {
  TempDir dir;
  const std::vector<float> data(8, 0.0f);
  EXPECT_CONTAINS(error_message([&] { write_mrc(dir / "a.mrc", data, 0, 2, 2, {}); }),
                  "non-positive");
  EXPECT_CONTAINS(
      error_message([&] { write_mrc(dir / "a.mrc", data, 2, 2, 2, {.pixel_size = -1}); }),
      "pixel size");
  EXPECT_CONTAINS(error_message([&] { write_mrc(dir / "no/such/dir/a.mrc", data, 2, 2, 2, {}); }),
                  "a.mrc");
  EXPECT_TRUE(dir.names().empty());
}

// ----------------------------------------------------------------------------- NaN detection

TEST(MrcFinite, DetectsNanAndInfAnywhere) {
  EXPECT_TRUE(emcryo::io::all_finite(nullptr, 0));
  std::vector<float> values(10000, 0.5f);
  values[1] = std::numeric_limits<float>::max();
  values[2] = -std::numeric_limits<float>::max();
  values[3] = std::numeric_limits<float>::denorm_min();
  values[4] = -0.0f;
  EXPECT_TRUE(emcryo::io::all_finite(values.data(), values.size()));
  for (std::size_t position : {std::size_t{0}, std::size_t{4095}, std::size_t{4096},
                               std::size_t{9999}}) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      auto copy = values;
      copy[position] = bad;
      EXPECT_FALSE(emcryo::io::all_finite(copy.data(), copy.size())) << position << " " << bad;
      EXPECT_TRUE(emcryo::io::all_finite(copy.data(), position));  // before the bad value
    }
  }
}

TEST(MrcFinite, NonFiniteDataGetsUndeterminedStatistics) {
  TempDir dir;
  std::vector<float> data(8, 1.0f);
  data[5] = std::numeric_limits<float>::quiet_NaN();
  write_mrc(dir / "nan.mrc", data, 2, 2, 2, {});
  MrcReader reader(dir / "nan.mrc");
  const auto read = reader.read_all();
  EXPECT_FALSE(emcryo::io::all_finite(read.data(), read.size()));
  EXPECT_TRUE(std::isnan(read[5]));
  EXPECT_LT(reader.header().dmax, reader.header().dmin);
  EXPECT_LT(reader.header().dmean, reader.header().dmin);
  EXPECT_LT(reader.header().rms, 0.0f);
}

// ----------------------------------------------------------------------------- header variants

TEST(MrcHeaderVariants, RelionStyleStack) {
  // RELION 3.1 writes mz = nz or mz = 1, ispg 0, machst 0x44 0x41, nversion 0.
  TempDir dir;
  MrcHeader header = plain_header(4, 3, 2, 2);
  header.mz = 2;
  header.cella[0] = 4 * 1.1f;
  header.cella[1] = 3 * 1.1f;
  header.cella[2] = 2 * 1.1f;
  header.nversion = 0;
  header.machst[1] = 0x41;
  std::vector<float> data(24);
  for (int i = 0; i < 24; ++i) data[i] = static_cast<float>(i) - 5.0f;
  write_raw_file(dir / "relion.mrcs", header, data.data(), data.size() * 4);
  MrcReader reader(dir / "relion.mrcs");
  EXPECT_FALSE(reader.byte_swapped());
  EXPECT_NEAR(reader.pixel_size(), 1.1, 1e-6);
  EXPECT_EQ(reader.read_section(1), std::vector<float>(data.begin() + 12, data.end()));
}

TEST(MrcHeaderVariants, MinimalHeaderWithoutStampOrVersion) {
  // Minimal writers: sizes, mode, cell and "MAP " only; no machine stamp, nversion 0, mx 0.
  TempDir dir;
  MrcHeader header;
  std::memset(static_cast<void*>(&header), 0, sizeof(header));
  header.nx = 3;
  header.ny = 2;
  header.nz = 1;
  header.mode = 2;
  header.cella[0] = 3 * 0.7f;
  std::memcpy(header.map, "MAP ", 4);
  const std::vector<float> data = {1, 2, 3, 4, 5, 6};
  write_raw_file(dir / "minimal.mrc", header, data.data(), data.size() * 4);
  MrcReader reader(dir / "minimal.mrc");
  EXPECT_FALSE(reader.byte_swapped());
  EXPECT_NEAR(reader.pixel_size(), 0.7, 1e-6);  // cella / nx when mx is 0
  EXPECT_EQ(reader.read_all(), data);

  header.cella[0] = 0;
  write_raw_file(dir / "nocell.mrc", header, data.data(), data.size() * 4);
  EXPECT_EQ(MrcReader(dir / "nocell.mrc").pixel_size(), 0.0);
}

TEST(MrcHeaderVariants, OldFileWithoutMapStampIsReadWhenPlausible) {
  TempDir dir;
  MrcHeader header = plain_header(2, 2, 1, 1);
  std::memset(header.map, 0, 4);
  std::memset(header.machst, 0, 4);
  const std::int16_t data[4] = {-300, -1, 0, 32767};
  write_raw_file(dir / "old.mrc", header, data, sizeof(data));
  EXPECT_EQ(MrcReader(dir / "old.mrc").read_all(), (std::vector<float>{-300, -1, 0, 32767}));
}

TEST(MrcHeaderVariants, ExtendedHeaderPaddingAndSignedBytes) {
  TempDir dir;
  MrcHeader header = plain_header(4, 2, 1, 0);
  header.nsymbt = 96;
  std::memcpy(header.exttyp, "CCP4", 4);
  const unsigned char data[8] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x90};
  write_raw_file(dir / "int8.mrc", header, data, sizeof(data), std::string(96, 'x'),
                 /*padding=*/512);  // longer than needed: accepted
  MrcReader reader(dir / "int8.mrc");
  EXPECT_EQ(reader.read_all(), (std::vector<float>{0, 1, 127, -128, -1, -2, 16, -112}));
}

TEST(MrcHeaderVariants, BigEndianFileWithStampAndWithout) {
  TempDir dir;
  MrcHeader header = plain_header(3, 2, 2, 2);
  header.cella[0] = 6.0f;
  std::memcpy(header.exttyp, "MRCO", 4);
  header.machst[0] = header.machst[1] = 0x11;
  std::vector<float> values(12);
  for (int i = 0; i < 12; ++i) values[i] = 0.5f * static_cast<float>(i) - 2.0f;
  // Swap every numeric header word and every data word by hand.
  std::vector<char> bytes(1024 + 48);
  std::memcpy(bytes.data(), &header, 1024);
  std::memcpy(bytes.data() + 1024, values.data(), 48);
  auto swap_word = [&](std::size_t at) {
    std::swap(bytes[at], bytes[at + 3]);
    std::swap(bytes[at + 1], bytes[at + 2]);
  };
  for (int word = 0; word < 56; ++word)
    if (word != 26 && word != 52 && word != 53) swap_word(4 * word);
  for (int i = 0; i < 12; ++i) swap_word(1024 + 4 * i);
  write_bytes(dir / "big.mrc", bytes);

  MrcReader stamped(dir / "big.mrc");
  EXPECT_TRUE(stamped.byte_swapped());
  EXPECT_EQ(stamped.nx(), 3);
  EXPECT_EQ(stamped.nz(), 2);
  EXPECT_DOUBLE_EQ(stamped.pixel_size(), 2.0);
  EXPECT_EQ(std::string(stamped.header().exttyp, 4), "MRCO");  // text is not swapped
  EXPECT_EQ(stamped.read_all(), values);

  std::memset(bytes.data() + 212, 0, 4);  // no machine stamp: the sizes give the order away
  write_bytes(dir / "big_unstamped.mrc", bytes);
  MrcReader unstamped(dir / "big_unstamped.mrc");
  EXPECT_TRUE(unstamped.byte_swapped());
  EXPECT_EQ(unstamped.read_all(), values);

  bytes[212] = bytes[213] = 0x44;  // a wrong stamp loses against an absurd header too
  write_bytes(dir / "big_misstamped.mrc", bytes);
  EXPECT_EQ(MrcReader(dir / "big_misstamped.mrc").read_all(), values);
}

// ----------------------------------------------------------------------------- bad input

TEST(MrcErrors, MissingShortAndNotMrc) {
  TempDir dir;
  const fs::path missing = dir / "missing.mrc";
  std::string message = error_message([&] { MrcReader reader(missing); });
  EXPECT_CONTAINS(message, missing.string());
  EXPECT_CONTAINS(message, "no such file");

  emcryo::test::write_text(dir / "short.mrc", "MAP too short");
  message = error_message([&] { MrcReader reader(dir / "short.mrc"); });
  EXPECT_CONTAINS(message, (dir / "short.mrc").string());
  EXPECT_CONTAINS(message, "not an MRC file: shorter than the 1024-byte header");

  std::string notes;
  for (int i = 0; i < 200; ++i) notes += "these are notes, not a map\n";
  emcryo::test::write_text(dir / "notes.txt", notes);
  message = error_message([&] { MrcReader reader(dir / "notes.txt"); });
  EXPECT_CONTAINS(message, (dir / "notes.txt").string());
  EXPECT_CONTAINS(message, "not an MRC file");

  fs::create_directory(dir / "folder.mrc");
  EXPECT_CONTAINS(error_message([&] { MrcReader reader(dir / "folder.mrc"); }), "not an MRC file");
}

TEST(MrcErrors, UnsupportedModes) {
  TempDir dir;
  for (int mode : {3, 4, 5, 99, 101, -1}) {
    MrcHeader header = plain_header(2, 2, 1, mode);
    const std::vector<char> data(64, 0);
    const fs::path path = dir / fmt::format("mode{}.mrc", mode);
    write_raw_file(path, header, data.data(), data.size());
    const std::string message = error_message([&] { MrcReader reader(path); });
    EXPECT_CONTAINS(message, path.string());
    EXPECT_CONTAINS(message, fmt::format("unsupported MRC mode {}", mode));
  }
}

TEST(MrcErrors, NonPositiveSizes) {
  TempDir dir;
  for (auto [nx, ny, nz] : {std::tuple{0, 4, 1}, std::tuple{4, -3, 1}, std::tuple{4, 4, 0},
                            std::tuple{-1, -1, -1}}) {
    const fs::path path = dir / fmt::format("size_{}_{}_{}.mrc", nx, ny, nz);
    const std::vector<char> data(64, 0);
    write_raw_file(path, plain_header(nx, ny, nz, 2), data.data(), data.size());
    const std::string message = error_message([&] { MrcReader reader(path); });
    EXPECT_CONTAINS(message, path.string());
    EXPECT_CONTAINS(message, fmt::format("non-positive MRC size nx={} ny={} nz={}", nx, ny, nz));
  }
}

TEST(MrcErrors, TruncatedOrSizesDisagreeingWithLength) {
  TempDir dir;
  const fs::path path = dir / "volume.mrc";
  write_mrc(path, std::vector<float>(8 * 8 * 4, 1.0f), 8, 8, 4, {});
  fs::resize_file(path, 1948);  // 2048 expected
  std::string message = error_message([&] { MrcReader reader(path); });
  EXPECT_CONTAINS(message, path.string());
  EXPECT_CONTAINS(message, "truncated");
  EXPECT_CONTAINS(message, "needs 2048 bytes, the file has 1948 bytes");

  // Header claims more sections than the data hold.
  const std::vector<float> data(16, 0.0f);
  write_raw_file(dir / "claims.mrcs", plain_header(4, 4, 10, 2), data.data(), data.size() * 4);
  message = error_message([&] { MrcReader reader(dir / "claims.mrcs"); });
  EXPECT_CONTAINS(message, "4x4x10 in mode 2");
  EXPECT_CONTAINS(message, "needs 1664 bytes, the file has 1088 bytes");

  // Sizes whose product overflows 64 bits.
  const fs::path huge = dir / "huge.mrc";
  write_raw_file(huge, plain_header(100000, 100000, 2000000000, 2), data.data(), 64);
  EXPECT_CONTAINS(error_message([&] { MrcReader reader(huge); }), "the file has 1088 bytes");

  // A negative extended header size.
  MrcHeader negative = plain_header(2, 2, 1, 2);
  negative.nsymbt = -8;
  write_raw_file(dir / "nsymbt.mrc", negative, data.data(), 16);
  EXPECT_CONTAINS(error_message([&] { MrcReader reader(dir / "nsymbt.mrc"); }), "nsymbt=-8");
}

// ----------------------------------------------------------------------------- random access

TEST(MrcRandomAccess, LastImageOfHugeSparseStackReadsFast) {
  // 100,000 images of 128x128 float32: 6.5 GB, past the 4 GiB of 32-bit offsets. Only the header
  // and the last image are written; everything else is a hole, so reading anything but the
  // requested image would show up as time (and would need gigabytes of memory).
  TempDir dir;
  const int side = 128, count = 100000;
  const std::size_t image_values = static_cast<std::size_t>(side) * side;
  const std::int64_t image_bytes = static_cast<std::int64_t>(image_values) * 4;
  const fs::path path = dir / "huge.mrcs";
  MrcHeader header = plain_header(side, side, count, 2);
  header.mz = 1;
  header.cella[0] = header.cella[1] = side * 1.3f;
  std::vector<float> last(image_values);
  for (std::size_t i = 0; i < image_values; ++i) last[i] = static_cast<float>(i % 1000) - 3.5f;
  {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    const std::int64_t total = 1024 + image_bytes * count;
    if (::ftruncate(fd, static_cast<off_t>(total)) != 0) {
      ::close(fd);
      GTEST_SKIP() << "the temp file system cannot hold a sparse file of " << total << " bytes";
    }
    ASSERT_EQ(::pwrite(fd, &header, 1024, 0), 1024);
    ASSERT_EQ(::pwrite(fd, last.data(), static_cast<std::size_t>(image_bytes),
                       static_cast<off_t>(1024 + image_bytes * (count - 1))),
              image_bytes);
    ::close(fd);
  }
  const auto start = std::chrono::steady_clock::now();
  MrcReader reader(path);
  EXPECT_EQ(reader.read_section(count - 1), last);
  EXPECT_EQ(reader.read_section(90000), std::vector<float>(image_values, 0.0f));  // a hole
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 0.5);
  EXPECT_NEAR(reader.pixel_size(), 1.3, 1e-6);
}

// ----------------------------------------------------------------------------- mrcfile

namespace {
// Values the python script below writes for each mode, with i the flat index (x fastest).
float mrcfile_pattern(const std::string& kind, int i) {
  if (kind == "i1") return static_cast<float>((i * 7) % 256 - 128);
  if (kind == "i2") return static_cast<float>((i * 1237) % 65536 - 32768);
  if (kind == "u2") return static_cast<float>((i * 1237) % 65536);
  if (kind == "f2") return static_cast<float>((i * 3) % 2048) * 0.5f - 400.0f;
  return static_cast<float>(i) * 0.25f - 3.5f;  // f4 and the big-endian kinds
}

constexpr const char* kWriteWithMrcfile = R"(
import sys, numpy as np, mrcfile
out = sys.argv[1]
i = np.arange(3 * 4 * 5, dtype=np.int64)
patterns = {
    'i1': ((i * 7) % 256 - 128).astype(np.int8),
    'i2': ((i * 1237) % 65536 - 32768).astype(np.int16),
    'f4': (i * 0.25 - 3.5).astype(np.float32),
    'u2': ((i * 1237) % 65536).astype(np.uint16),
    'f2': (((i * 3) % 2048) * 0.5 - 400).astype(np.float16),
    'be_f4': (i * 0.25 - 3.5).astype('>f4'),
    'be_i2': (i * 0.25 - 3.5).astype('>f4').astype('>i2'),
}
for name, values in patterns.items():
    with mrcfile.new(f'{out}/{name}.mrc', overwrite=True) as m:
        m.set_data(values.reshape(3, 4, 5))
        m.voxel_size = 1.75
with mrcfile.new(f'{out}/stack.mrcs', overwrite=True) as m:
    m.set_data(np.arange(7 * 4 * 5, dtype=np.float32).reshape(7, 4, 5) * 0.5)
    m.set_image_stack()
    m.voxel_size = 0.8
print('written')
)";

constexpr const char* kValidateWithMrcfile = R"(
import sys, mrcfile
for path in sys.argv[1:]:
    valid = mrcfile.validate(path, print_file=sys.stderr)
    with mrcfile.open(path) as m:
        print('RESULT', path.rsplit('/', 1)[-1], int(valid), int(m.is_image_stack()),
              int(m.is_volume()), float(m.voxel_size.x), float(m.voxel_size.z),
              m.data.shape[0], repr(float(m.data.astype('f8').sum())))
)";
}  // namespace

TEST(MrcInterop, ReadsFilesWrittenByMrcfile) {
  if (python_with_mrcfile().empty()) GTEST_SKIP() << "no python3 with mrcfile";
  TempDir dir;
  const CommandResult written = run_python(dir, kWriteWithMrcfile, quoted(dir.path()));
  ASSERT_EQ(written.exit_code, 0) << written.output;

  const std::map<std::string, int> modes = {{"i1", 0}, {"i2", 1}, {"f4", 2}, {"u2", 6},
                                            {"f2", 12}, {"be_f4", 2}, {"be_i2", 1}};
  for (const auto& [kind, mode] : modes) {
    SCOPED_TRACE(kind);
    MrcReader reader(dir / (kind + ".mrc"));
    EXPECT_EQ(reader.header().mode, mode);
    EXPECT_EQ(reader.byte_swapped(), kind.rfind("be_", 0) == 0);
    EXPECT_EQ(reader.nx(), 5);
    EXPECT_EQ(reader.ny(), 4);
    EXPECT_EQ(reader.nz(), 3);
    EXPECT_DOUBLE_EQ(reader.pixel_size(), 1.75);
    const auto values = reader.read_all();
    for (int i = 0; i < 60; ++i) {
      const float expected = kind == "be_i2" ? std::trunc(mrcfile_pattern(kind, i))
                                             : mrcfile_pattern(kind, i);
      ASSERT_EQ(values[i], expected) << "value " << i;
    }
  }

  MrcReader stack(dir / "stack.mrcs");
  EXPECT_EQ(stack.nz(), 7);
  EXPECT_EQ(stack.header().ispg, 0);
  EXPECT_EQ(stack.header().mz, 1);
  EXPECT_NEAR(stack.pixel_size(), 0.8, 1e-6);
  const auto sixth = stack.read_section(6);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sixth[i], static_cast<float>(6 * 20 + i) * 0.5f);
}

TEST(MrcInterop, MrcfileValidatesWhatWeWrite) {
  if (python_with_mrcfile().empty()) GTEST_SKIP() << "no python3 with mrcfile";
  TempDir dir;
  const auto volume = random_values(10 * 8 * 6, 5);
  const auto images = random_values(10 * 8 * 4, 6);
  write_mrc(dir / "volume.mrc", volume, 10, 8, 6, {.pixel_size = 1.2});
  write_mrc(dir / "volume16.mrc", volume, 10, 8, 6, {.pixel_size = 1.2, .float16 = true});
  write_mrc(dir / "stack.mrcs", images, 10, 8, 4, {.pixel_size = 0.6, .is_stack = true});
  write_mrc(dir / "stack16.mrcs", images, 10, 8, 4,
            {.pixel_size = 0.6, .is_stack = true, .float16 = true});
  {
    MrcStackWriter writer(dir / "streamed16.mrcs", 10, 8, {.pixel_size = 0.6, .float16 = true});
    for (int i = 0; i < 4; ++i) writer.append(images.data() + i * 80);
    writer.close();
  }
  std::string arguments;
  for (const auto* name :
       {"volume.mrc", "volume16.mrc", "stack.mrcs", "stack16.mrcs", "streamed16.mrcs"})
    arguments += fmt::format(" {}", quoted(dir / name));
  const CommandResult checked = run_python(dir, kValidateWithMrcfile, arguments);
  ASSERT_EQ(checked.exit_code, 0) << checked.output;

  std::istringstream lines(checked.output);
  std::string line;
  int results = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("RESULT ", 0) != 0) continue;
    ++results;
    std::istringstream fields(line.substr(7));
    std::string name;
    int valid = 0, is_stack = 0, is_volume = 0, sections = 0;
    double voxel_x = 0, voxel_z = 0, sum = 0;
    fields >> name >> valid >> is_stack >> is_volume >> voxel_x >> voxel_z >> sections >> sum;
    SCOPED_TRACE(name);
    EXPECT_EQ(valid, 1) << checked.output;
    const bool stack = name.find(".mrcs") != std::string::npos;
    EXPECT_EQ(is_stack, stack ? 1 : 0);
    EXPECT_EQ(is_volume, stack ? 0 : 1);
    EXPECT_NEAR(voxel_x, stack ? 0.6 : 1.2, 1e-6);
    EXPECT_NEAR(voxel_z, stack ? 0.6 : 1.2, 1e-6);
    EXPECT_EQ(sections, stack ? 4 : 6);
    const auto ours = MrcReader(dir / name).read_all();
    double our_sum = 0;
    for (float v : ours) our_sum += v;
    EXPECT_NEAR(sum, our_sum, 1e-9 * (1 + std::abs(our_sum)));
  }
  EXPECT_EQ(results, 5) << checked.output;
}

// ----------------------------------------------------------------------------- RELION

TEST(MrcInterop, RelionReadsOursAndWeReadRelions) {
  if (!relion_available()) GTEST_SKIP() << "RELION (relion_image_handler, relion_project) absent";
  TempDir dir;
  const int n = 16;
  std::vector<float> volume(static_cast<std::size_t>(n) * n * n);
  double volume_sum = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double r2 = (x - 7.5) * (x - 7.5) + (y - 6.0) * (y - 6.0) + (z - 8.0) * (z - 8.0);
        const auto v = static_cast<float>(std::exp(-r2 / 8.0));
        volume[(static_cast<std::size_t>(z) * n + y) * n + x] = v;
        volume_sum += v;
      }
  write_mrc(dir / "vol.mrc", volume, n, n, n, {.pixel_size = 2.0});

  // A map: RELION reads ours, we read RELION's.
  const CommandResult doubled = emcryo::test::run_capture(
      "cd " + quoted(dir.path()) + " && relion_image_handler --i vol.mrc --o twice.mrc " +
      "--multiply_constant 2");
  ASSERT_EQ(doubled.exit_code, 0) << doubled.output;
  MrcReader twice(dir / "twice.mrc");
  EXPECT_EQ(twice.nx(), n);
  EXPECT_EQ(twice.nz(), n);
  EXPECT_DOUBLE_EQ(twice.pixel_size(), 2.0);
  const auto twice_values = twice.read_all();
  for (std::size_t i = 0; i < volume.size(); ++i)
    ASSERT_NEAR(twice_values[i], 2 * volume[i], 1e-6) << i;

  // A stack of our making, through RELION and back.
  std::vector<float> images(volume.begin(), volume.begin() + 3 * n * n);
  write_mrc(dir / "stack.mrcs", images, n, n, 3, {.pixel_size = 2.0, .is_stack = true});
  const CommandResult stack_doubled = emcryo::test::run_capture(
      "cd " + quoted(dir.path()) + " && relion_image_handler --i stack.mrcs --o stack2.mrcs " +
      "--multiply_constant 2");
  ASSERT_EQ(stack_doubled.exit_code, 0) << stack_doubled.output;
  MrcReader stack2(dir / "stack2.mrcs");
  EXPECT_EQ(stack2.nz(), 3);
  const auto stack2_values = stack2.read_all();
  for (std::size_t i = 0; i < images.size(); ++i)
    ASSERT_NEAR(stack2_values[i], 2 * images[i], 1e-6) << i;

  // Projections: a stack written by RELION. Every projection's sum is the volume's zero
  // frequency, so the three agree with each other and roughly with the volume's sum.
  const CommandResult projected = emcryo::test::run_capture("cd " + quoted(dir.path()) +
                                              " && relion_project --i vol.mrc --o proj "
                                              "--nr_uniform 3");
  ASSERT_EQ(projected.exit_code, 0) << projected.output;
  MrcReader projections(dir / "proj.mrcs");
  EXPECT_EQ(projections.nx(), n);
  EXPECT_EQ(projections.ny(), n);
  EXPECT_EQ(projections.nz(), 3);
  EXPECT_DOUBLE_EQ(projections.pixel_size(), 2.0);
  std::vector<double> sums;
  for (int i = 0; i < 3; ++i) {
    const auto image = projections.read_section(i);
    EXPECT_TRUE(emcryo::io::all_finite(image.data(), image.size()));
    double sum = 0;
    for (float v : image) sum += v;
    sums.push_back(sum);
  }
  EXPECT_NEAR(sums[1], sums[0], 1e-4 * std::abs(sums[0]));
  EXPECT_NEAR(sums[2], sums[0], 1e-4 * std::abs(sums[0]));
  EXPECT_NEAR(sums[0], volume_sum, 0.1 * volume_sum);
}
