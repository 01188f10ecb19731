// MRC2014 maps and image stacks: read modes 0, 1, 2, 6, 12; write 2 and 12. Images of a stack are
// read one by one or in batches with pread, never the whole file.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace emcryo::io {

enum class MrcMode : std::int32_t { int8 = 0, int16 = 1, float32 = 2, uint16 = 6, float16 = 12 };

/// The 1024-byte header, as laid out in the file (native byte order after reading).
struct MrcHeader {
  std::int32_t nx = 0, ny = 0, nz = 0;
  std::int32_t mode = 2;
  std::int32_t nxstart = 0, nystart = 0, nzstart = 0;
  std::int32_t mx = 0, my = 0, mz = 0;
  float cella[3] = {0, 0, 0};
  float cellb[3] = {90, 90, 90};
  std::int32_t mapc = 1, mapr = 2, maps = 3;
  float dmin = 0, dmax = -1, dmean = -2;
  std::int32_t ispg = 0;
  std::int32_t nsymbt = 0;
  std::int32_t extra1[2] = {0, 0};
  char exttyp[4] = {0, 0, 0, 0};
  std::int32_t nversion = 20141;
  std::int32_t extra2[21] = {};
  float origin[3] = {0, 0, 0};
  char map[4] = {'M', 'A', 'P', ' '};
  unsigned char machst[4] = {0x44, 0x44, 0, 0};
  float rms = -1;
  std::int32_t nlabl = 0;
  char labels[10][80] = {};
};
static_assert(sizeof(MrcHeader) == 1024, "MRC header must be 1024 bytes");

/// An open MRC file: header checked against the file length; sections read on demand with
/// pread at 64-bit offsets, so one reader may serve several threads at once. Byte order comes
/// from the machine stamp (or, without one, from which order gives a sensible header).
class MrcReader {
 public:
  /// Fails with "<file>: <problem>" for: missing file, not an MRC file, truncated, unknown mode,
  /// non-positive sizes, sizes that disagree with the file length. Longer files are accepted.
  explicit MrcReader(const std::filesystem::path& path);
  ~MrcReader();
  MrcReader(const MrcReader&) = delete;
  MrcReader& operator=(const MrcReader&) = delete;
  MrcReader(MrcReader&&) noexcept;

  const MrcHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return path_; }
  int nx() const { return header_.nx; }
  int ny() const { return header_.ny; }
  int nz() const { return header_.nz; }
  /// Å per pixel from the cell (cella.x / mx, or / nx when mx is 0); 0 when the header does not
  /// say.
  double pixel_size() const;
  bool byte_swapped() const { return swapped_; }

  /// Reads sections [first, first+count) as float32 into out (count*nx*ny values).
  void read_sections(std::int64_t first, std::int64_t count, float* out) const;
  std::vector<float> read_section(std::int64_t index) const;
  /// The whole file (a volume) as float32, x fastest: a map stored with another axis order
  /// (MAPC/MAPR/MAPS a permutation other than 1/2/3) is reordered, with map_size() as its size.
  std::vector<float> read_all() const;
  /// Size along x, y, z of what read_all() returns (nx, ny, nz unless the axes are permuted).
  std::array<int, 3> map_size() const;
  /// True when MAPC/MAPR/MAPS is a permutation other than 1/2/3.
  bool axes_permuted() const;
  /// What is unusual in this header and how it was read (cell 0, extended header, permuted axes,
  /// zeroed stamps, space group 1 on a stack...), one sentence each; empty for a plain file.
  std::vector<std::string> notes() const;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  MrcHeader header_;
  bool swapped_ = false;
  std::int64_t data_offset_ = 1024;
  int bytes_per_voxel_ = 4;
};

struct MrcWriteOptions {
  double pixel_size = 1.0;
  bool is_stack = false;   // image stack (ispg 0, mz 1) or volume (ispg 1, mz nz)
  bool float16 = false;    // mode 12 instead of mode 2
};

/// Writes a volume or a stack atomically, with statistics, cell, MRC2014 stamp and a label.
void write_mrc(const std::filesystem::path& path, const float* data, int nx, int ny, int nz,
               const MrcWriteOptions& options);
inline void write_mrc(const std::filesystem::path& path, const std::vector<float>& data, int nx,
                      int ny, int nz, const MrcWriteOptions& options) {
  write_mrc(path, data.data(), nx, ny, nz, options);
}

/// Streams a large stack section by section; statistics are accumulated and the header is
/// rewritten at close(); the file appears under its final name only after close().
class MrcStackWriter {
 public:
  /// options.is_stack is ignored: the result is always an image stack (ispg 0, mz 1).
  MrcStackWriter(const std::filesystem::path& path, int nx, int ny, const MrcWriteOptions& options);
  /// Without close(), removes the temporary file: an incomplete stack never appears.
  ~MrcStackWriter();
  MrcStackWriter(const MrcStackWriter&) = delete;
  MrcStackWriter& operator=(const MrcStackWriter&) = delete;
  /// Appends one image of nx*ny values.
  void append(const float* image);
  /// Writes the header (nz = count(), statistics) and renames the file into place. Fails when
  /// no image was appended. Calling it again does nothing.
  void close();
  std::int64_t count() const { return count_; }

 private:
  std::filesystem::path path_, temp_;
  int nx_, ny_;
  MrcWriteOptions options_;
  int fd_ = -1;
  std::int64_t count_ = 0;
  // Sums of (value - sum_shift_), with sum_shift_ the first value: keeps the variance precise.
  double sum_ = 0, sum2_ = 0, sum_shift_ = 0;
  float min_ = 0, max_ = 0;
  bool nonfinite_ = false;  // statistics are then written as undetermined
};

/// True when no value is NaN or Inf.
bool all_finite(const float* data, std::size_t count);

}  // namespace emcryo::io
