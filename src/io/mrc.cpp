#include "emcryo/io/mrc.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <utility>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/float16.hpp"

namespace emcryo::io {
namespace {

constexpr std::int64_t kHeaderBytes = 1024;
// Kept in step with project(VERSION) in CMakeLists.txt and --version in apps/main.cpp.
constexpr const char* kWriterName = "emcryo 0.1.0";
// Conversions and writes go through buffers of this many values, so memory stays bounded
// whatever the number of sections read or written at once.
constexpr std::size_t kChunkValues = std::size_t{1} << 20;

// Word indices (0-based, 4-byte words) that hold text or bytes and so are never byte-swapped.
constexpr int kExttypWord = 26;
constexpr int kMapWord = 52;
constexpr int kMachstWord = 53;
constexpr int kFirstLabelWord = 56;

bool host_is_little_endian() { return std::endian::native == std::endian::little; }

void swap_words(void* data, std::size_t count) {
  auto* bytes = static_cast<unsigned char*>(data);
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t word;
    std::memcpy(&word, bytes + 4 * i, 4);
    word = __builtin_bswap32(word);
    std::memcpy(bytes + 4 * i, &word, 4);
  }
}

void swap_halves(void* data, std::size_t count) {
  auto* bytes = static_cast<unsigned char*>(data);
  for (std::size_t i = 0; i < count; ++i) std::swap(bytes[2 * i], bytes[2 * i + 1]);
}

MrcHeader byte_swapped_header(const MrcHeader& header) {
  std::uint32_t words[256];
  std::memcpy(words, &header, sizeof(words));
  for (int i = 0; i < kFirstLabelWord; ++i) {
    if (i == kExttypWord || i == kMapWord || i == kMachstWord) continue;
    words[i] = __builtin_bswap32(words[i]);
  }
  MrcHeader swapped;
  std::memcpy(&swapped, words, sizeof(swapped));
  return swapped;
}

int bytes_per_voxel(std::int32_t mode) {
  switch (mode) {
    case static_cast<std::int32_t>(MrcMode::int8): return 1;
    case static_cast<std::int32_t>(MrcMode::int16): return 2;
    case static_cast<std::int32_t>(MrcMode::float32): return 4;
    case static_cast<std::int32_t>(MrcMode::uint16): return 2;
    case static_cast<std::int32_t>(MrcMode::float16): return 2;
    default: return 0;
  }
}

// Modes of the MRC2014 standard, supported here or not; used only to judge byte order.
bool is_standard_mode(std::int32_t mode) {
  return bytes_per_voxel(mode) > 0 || mode == 3 || mode == 4 || mode == 101;
}

// 1024 + nsymbt + nx*ny*nz*bytes, or -1 when the sizes are negative or overflow 64 bits.
std::int64_t expected_file_bytes(const MrcHeader& header, int voxel_bytes) {
  if (header.nx < 0 || header.ny < 0 || header.nz < 0 || header.nsymbt < 0) return -1;
  std::int64_t total = voxel_bytes;
  for (std::int64_t n : {std::int64_t{header.nx}, std::int64_t{header.ny}, std::int64_t{header.nz}})
    if (__builtin_mul_overflow(total, n, &total)) return -1;
  if (__builtin_add_overflow(total, kHeaderBytes + header.nsymbt, &total)) return -1;
  return total;
}

// How much a header looks like a real one when read in some byte order: a word read in the
// wrong order turns small numbers into huge or negative ones, so this tells the orders apart.
int plausibility(const MrcHeader& header, std::int64_t file_bytes) {
  constexpr std::int32_t kLargestImageSide = 1 << 20;
  int score = 0;
  // The mode counts double: it is a small number in one order only, whatever the sizes are.
  if (is_standard_mode(header.mode)) score += 2;
  if (header.nx > 0 && header.nx <= kLargestImageSide) ++score;
  if (header.ny > 0 && header.ny <= kLargestImageSide) ++score;
  if (header.nz > 0) ++score;
  if (header.nsymbt >= 0 && header.nsymbt < file_bytes) ++score;
  const std::int64_t expected = expected_file_bytes(header, std::max(1, bytes_per_voxel(header.mode)));
  if (expected > 0 && expected <= file_bytes) ++score;
  return score;
}
constexpr int kFullPlausibility = 7;

std::string mode_list() {
  return "supported: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16";
}

std::string describe_mode(std::int32_t mode) {
  switch (mode) {
    case 3: return "mode 3 (complex int16)";
    case 4: return "mode 4 (complex float32)";
    case 101: return "mode 101 (4-bit)";
    default: return fmt::format("mode {}", mode);
  }
}

void pread_fully(int fd, void* buffer, std::size_t bytes, std::int64_t offset,
                 const std::filesystem::path& path) {
  auto* out = static_cast<char*>(buffer);
  while (bytes > 0) {
    // Linux transfers at most about 2 GiB per call; larger requests come back short.
    const ssize_t got = ::pread(fd, out, bytes, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      fail("{}: read failed at byte {}: {}", path.string(), offset, std::strerror(errno));
    }
    if (got == 0)
      fail("{}: file ended at byte {} while reading (was it truncated while open?)", path.string(),
           offset);
    out += got;
    bytes -= static_cast<std::size_t>(got);
    offset += got;
  }
}

void pwrite_fully(int fd, const void* buffer, std::size_t bytes, std::int64_t offset,
                  const std::filesystem::path& path) {
  const auto* in = static_cast<const char*>(buffer);
  while (bytes > 0) {
    const ssize_t put = ::pwrite(fd, in, bytes, static_cast<off_t>(offset));
    if (put < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed at byte {}: {}", path.string(), offset, std::strerror(errno));
    }
    in += put;
    bytes -= static_cast<std::size_t>(put);
    offset += put;
  }
}

int open_for_writing(const std::filesystem::path& temp, const std::filesystem::path& path) {
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot open for writing: {}", path.string(), std::strerror(errno));
  return fd;
}

void close_written(int fd, const std::filesystem::path& path) {
  if (::close(fd) != 0) fail("{}: write failed at close: {}", path.string(), std::strerror(errno));
}

// Statistics of the values as stored (after float16 rounding), so header and data agree exactly.
// Values are shifted by the first one before summing: the variance then keeps its precision even
// when the mean is large compared with the spread.
struct RunningStats {
  bool empty = true;
  bool finite = true;
  double shift = 0, sum = 0, sum2 = 0;
  float min = 0, max = 0;
  std::int64_t count = 0;

  void add(const float* values, std::size_t n) {
    if (n == 0) return;
    if (empty) {
      shift = values[0];
      min = max = values[0];
      empty = false;
    }
    double s = 0, s2 = 0;
    float lo = min, hi = max;
    for (std::size_t i = 0; i < n; ++i) {
      const double d = static_cast<double>(values[i]) - shift;
      s += d;
      s2 += d * d;
      lo = std::min(lo, values[i]);
      hi = std::max(hi, values[i]);
    }
    if (!std::isfinite(s2) || !all_finite(values, n)) finite = false;
    sum += s;
    sum2 += s2;
    min = lo;
    max = hi;
    count += static_cast<std::int64_t>(n);
  }

  // Writes real statistics, or marks them undetermined (MRC2014: dmax < dmin, dmean < dmin,
  // rms < 0) when there are none or the data hold NaN or Inf.
  void store(MrcHeader& header) const {
    if (empty || !finite) {
      header.dmin = 0;
      header.dmax = -1;
      header.dmean = -2;
      header.rms = -1;
      return;
    }
    const double n = static_cast<double>(count);
    const double mean_shifted = sum / n;
    const double variance = std::max(0.0, sum2 / n - mean_shifted * mean_shifted);
    header.dmin = min;
    header.dmax = max;
    header.dmean = static_cast<float>(shift + mean_shifted);
    header.rms = static_cast<float>(std::sqrt(variance));
  }
};

MrcHeader make_header(int nx, int ny, int nz, const MrcWriteOptions& options) {
  MrcHeader header;
  header.nx = nx;
  header.ny = ny;
  header.nz = nz;
  header.mode = static_cast<std::int32_t>(options.float16 ? MrcMode::float16 : MrcMode::float32);
  header.mx = nx;
  header.my = ny;
  const auto pixel = static_cast<float>(options.pixel_size);
  header.cella[0] = static_cast<float>(nx * options.pixel_size);
  header.cella[1] = static_cast<float>(ny * options.pixel_size);
  if (options.is_stack) {
    // mrcfile's image-stack convention: each section is one image, one pixel thick.
    header.ispg = 0;
    header.mz = 1;
    header.cella[2] = pixel;
  } else {
    header.ispg = 1;
    header.mz = nz;
    header.cella[2] = static_cast<float>(nz * options.pixel_size);
  }
  header.nversion = 20141;
  std::memcpy(header.map, "MAP ", 4);
  const unsigned char little[4] = {0x44, 0x44, 0, 0}, big[4] = {0x11, 0x11, 0, 0};
  std::memcpy(header.machst, host_is_little_endian() ? little : big, 4);

  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", &utc);
  const std::string label = fmt::format("{} {}", kWriterName, date);
  std::memcpy(header.labels[0], label.data(), std::min<std::size_t>(label.size(), 80));
  header.nlabl = 1;
  return header;
}

void check_write_arguments(const std::filesystem::path& path, int nx, int ny, int nz,
                           const MrcWriteOptions& options) {
  if (nx <= 0 || ny <= 0 || nz <= 0)
    fail("{}: cannot write an MRC file of non-positive size {}x{}x{}", path.string(), nx, ny, nz);
  if (!std::isfinite(options.pixel_size) || options.pixel_size < 0)
    fail("{}: cannot write an MRC file with pixel size {}", path.string(), options.pixel_size);
}

// Writes n values at offset in the file's mode and adds the stored values to stats.
void write_values(int fd, const float* values, std::size_t n, std::int64_t offset, bool float16,
                  RunningStats& stats, const std::filesystem::path& path) {
  if (!float16) {
    stats.add(values, n);
    pwrite_fully(fd, values, n * sizeof(float), offset, path);
    return;
  }
  std::vector<std::uint16_t> halves(std::min(n, kChunkValues));
  std::vector<float> rounded(halves.size());
  for (std::size_t done = 0; done < n;) {
    const std::size_t chunk = std::min(n - done, kChunkValues);
    float_to_half(values + done, halves.data(), chunk);
    half_to_float(halves.data(), rounded.data(), chunk);
    stats.add(rounded.data(), chunk);
    pwrite_fully(fd, halves.data(), chunk * 2, offset, path);
    offset += static_cast<std::int64_t>(chunk * 2);
    done += chunk;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------- reading

MrcReader::MrcReader(const std::filesystem::path& path) : path_(path) {
  const std::string name = path.string();
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    if (errno == ENOENT) fail("{}: no such file", name);
    fail("{}: cannot open: {}", name, std::strerror(errno));
  }
  try {
    struct stat info {};
    if (::fstat(fd_, &info) != 0) fail("{}: cannot stat: {}", name, std::strerror(errno));
    if (!S_ISREG(info.st_mode)) fail("{}: not an MRC file: not a regular file", name);
    const std::int64_t file_bytes = info.st_size;
    if (file_bytes < kHeaderBytes)
      fail("{}: not an MRC file: shorter than the 1024-byte header ({} bytes)", name, file_bytes);

    MrcHeader as_stored;
    pread_fully(fd_, &as_stored, sizeof(as_stored), 0, path_);

    // The machine stamp says the byte order (0x44 little-endian, 0x11 big-endian); a missing or
    // odd stamp, or a header absurd in the stamped order, falls back to the more plausible one.
    const unsigned char stamp = as_stored.machst[0];
    bool file_little = host_is_little_endian();
    if (stamp == 0x44 || stamp == 0x41) file_little = true;
    if (stamp == 0x11) file_little = false;
    const bool preferred_swap = file_little != host_is_little_endian();
    const MrcHeader preferred = preferred_swap ? byte_swapped_header(as_stored) : as_stored;
    const MrcHeader other = preferred_swap ? as_stored : byte_swapped_header(as_stored);
    const int preferred_score = plausibility(preferred, file_bytes);
    const int other_score = plausibility(other, file_bytes);
    swapped_ = other_score > preferred_score ? !preferred_swap : preferred_swap;
    header_ = other_score > preferred_score ? other : preferred;

    const bool has_map_stamp = std::memcmp(header_.map, "MAP", 3) == 0;
    if (!has_map_stamp && std::max(preferred_score, other_score) < kFullPlausibility)
      fail("{}: not an MRC file: no 'MAP ' stamp and an implausible header (nx={} ny={} nz={} "
           "mode={})",
           name, header_.nx, header_.ny, header_.nz, header_.mode);

    bytes_per_voxel_ = bytes_per_voxel(header_.mode);
    if (bytes_per_voxel_ == 0)
      fail("{}: unsupported MRC {} ({})", name, describe_mode(header_.mode), mode_list());
    if (header_.nx <= 0 || header_.ny <= 0 || header_.nz <= 0)
      fail("{}: non-positive MRC size nx={} ny={} nz={}", name, header_.nx, header_.ny,
           header_.nz);
    if (header_.nsymbt < 0)
      fail("{}: negative extended header size nsymbt={}", name, header_.nsymbt);
    data_offset_ = kHeaderBytes + header_.nsymbt;
    // A NaN or infinite cell is a damaged header, and its pixel size would poison every job.
    for (int axis = 0; axis < 3; ++axis)
      if (!std::isfinite(header_.cella[axis]))
        fail("{}: header field cella (cell size) is {} {} {}: not a finite number", name, header_.cella[0],
             header_.cella[1], header_.cella[2]);

    const std::int64_t expected = expected_file_bytes(header_, bytes_per_voxel_);
    // Longer files are accepted: some writers pad the end.
    if (expected < 0 || file_bytes < expected)
      fail("{}: truncated, or sizes disagree with the file length: {}x{}x{} in mode {} with a "
           "{}-byte extended header needs {} bytes, the file has {} bytes",
           name, header_.nx, header_.ny, header_.nz, header_.mode, header_.nsymbt,
           expected < 0 ? std::string("more than 2^63") : std::to_string(expected), file_bytes);
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

MrcReader::~MrcReader() {
  if (fd_ >= 0) ::close(fd_);
}

MrcReader::MrcReader(MrcReader&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      header_(other.header_),
      swapped_(other.swapped_),
      data_offset_(other.data_offset_),
      bytes_per_voxel_(other.bytes_per_voxel_) {}

double MrcReader::pixel_size() const {
  const std::int32_t cells = header_.mx > 0 ? header_.mx : header_.nx;
  const double length = header_.cella[0];
  if (cells <= 0 || !std::isfinite(length) || length <= 0) return 0;
  return length / cells;
}

void MrcReader::read_sections(std::int64_t first, std::int64_t count, float* out) const {
  if (first < 0 || count < 0 || first > header_.nz - count)
    fail("{}: sections {} to {} requested, the file has {} (nz)", path_.string(), first,
         first + count - 1, header_.nz);
  const std::size_t section_values = static_cast<std::size_t>(header_.nx) * header_.ny;
  const std::size_t total = section_values * static_cast<std::size_t>(count);
  std::int64_t offset =
      data_offset_ + first * static_cast<std::int64_t>(section_values) * bytes_per_voxel_;
  const auto mode = static_cast<MrcMode>(header_.mode);

  if (mode == MrcMode::float32) {  // straight into the caller's buffer
    pread_fully(fd_, out, total * 4, offset, path_);
    if (swapped_) swap_words(out, total);
    return;
  }
  // Other modes go through a bounded buffer of the stored type, then convert.
  auto convert_in_chunks = [&](auto stored_type_tag, auto convert) {
    using Stored = decltype(stored_type_tag);
    std::vector<Stored> raw(std::min(total, kChunkValues));
    for (std::size_t done = 0; done < total;) {
      const std::size_t chunk = std::min(total - done, kChunkValues);
      pread_fully(fd_, raw.data(), chunk * sizeof(Stored), offset, path_);
      if (swapped_ && sizeof(Stored) == 2) swap_halves(raw.data(), chunk);
      convert(raw.data(), out + done, chunk);
      offset += static_cast<std::int64_t>(chunk * sizeof(Stored));
      done += chunk;
    }
  };
  switch (mode) {
    case MrcMode::int8:  // signed, as MRC2014, mrcfile and RELION >= 3.1 read it
      convert_in_chunks(std::int8_t{}, [](const std::int8_t* in, float* dest, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) dest[i] = in[i];
      });
      break;
    case MrcMode::int16:
      convert_in_chunks(std::uint16_t{}, [](const std::uint16_t* in, float* dest, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) dest[i] = static_cast<std::int16_t>(in[i]);
      });
      break;
    case MrcMode::uint16:
      convert_in_chunks(std::uint16_t{}, [](const std::uint16_t* in, float* dest, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) dest[i] = in[i];
      });
      break;
    case MrcMode::float16:
      convert_in_chunks(std::uint16_t{}, [](const std::uint16_t* in, float* dest, std::size_t n) {
        half_to_float(in, dest, n);
      });
      break;
    case MrcMode::float32: break;  // handled above
  }
}

std::vector<float> MrcReader::read_section(std::int64_t index) const {
  std::vector<float> image(static_cast<std::size_t>(header_.nx) * header_.ny);
  read_sections(index, 1, image.data());
  return image;
}

namespace {
// MAPC/MAPR/MAPS as 0-based axes, or {0, 1, 2} when they are not a permutation (zeroed headers).
std::array<int, 3> axis_order(const MrcHeader& h) {
  const std::array<int, 3> order{h.mapc - 1, h.mapr - 1, h.maps - 1};
  std::array<bool, 3> seen{};
  for (int a : order) {
    if (a < 0 || a > 2 || seen[static_cast<std::size_t>(a)]) return {0, 1, 2};
    seen[static_cast<std::size_t>(a)] = true;
  }
  return order;
}
}  // namespace

bool MrcReader::axes_permuted() const { return axis_order(header_) != std::array<int, 3>{0, 1, 2}; }

std::array<int, 3> MrcReader::map_size() const {
  const auto order = axis_order(header_);
  std::array<int, 3> size{};
  const int stored[3] = {header_.nx, header_.ny, header_.nz};
  for (int i = 0; i < 3; ++i) size[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = stored[i];
  return size;
}

std::vector<float> MrcReader::read_all() const {
  std::vector<float> volume(static_cast<std::size_t>(header_.nx) * header_.ny * header_.nz);
  read_sections(0, header_.nz, volume.data());
  if (!axes_permuted()) return volume;
  // Stored column c, row r, section s is the voxel whose coordinate along axis order[0] is c,
  // along order[1] is r and along order[2] is s.
  const auto order = axis_order(header_);
  const auto size = map_size();
  std::array<std::size_t, 3> stride{1, static_cast<std::size_t>(size[0]),
                                    static_cast<std::size_t>(size[0]) * static_cast<std::size_t>(size[1])};
  const std::size_t sc = stride[static_cast<std::size_t>(order[0])], sr = stride[static_cast<std::size_t>(order[1])],
                    ss = stride[static_cast<std::size_t>(order[2])];
  std::vector<float> out(volume.size());
  std::size_t i = 0;
  for (int s = 0; s < header_.nz; ++s)
    for (int r = 0; r < header_.ny; ++r)
      for (int c = 0; c < header_.nx; ++c) out[c * sc + r * sr + s * ss] = volume[i++];
  return out;
}

std::vector<std::string> MrcReader::notes() const {
  std::vector<std::string> notes;
  const MrcHeader& h = header_;
  if (pixel_size() <= 0)
    notes.emplace_back("cell dimensions are 0: no pixel size in the header (particles take it from the STAR file)");
  if (std::memcmp(h.map, "MAP", 3) != 0)
    notes.emplace_back("no 'MAP ' stamp (zeroed or pre-MRC2000 header); read by the header's plausibility");
  if (h.machst[0] == 0 && h.machst[1] == 0)
    notes.push_back(fmt::format("machine stamp is zero; byte order inferred ({})", swapped_ ? "swapped" : "native"));
  if (h.nsymbt > 0) {
    const std::string type(h.exttyp, strnlen(h.exttyp, 4));
    notes.push_back(fmt::format("extended header of {} bytes{} skipped", h.nsymbt, type.empty() ? "" : " (" + type + ")"));
  }
  if (axes_permuted())
    notes.push_back(fmt::format("axis order MAPC/MAPR/MAPS = {}/{}/{}: maps are reordered to x fastest ({} x {} x {})",
                                h.mapc, h.mapr, h.maps, map_size()[0], map_size()[1], map_size()[2]));
  else if (h.mapc != 1 || h.mapr != 2 || h.maps != 3)
    notes.push_back(fmt::format("axis order MAPC/MAPR/MAPS = {}/{}/{} is not a permutation: read as 1/2/3", h.mapc,
                                h.mapr, h.maps));
  const std::string ext = path_.extension().string();
  if (h.ispg == 1 && h.nz > 1 && ext == ".mrcs")
    notes.emplace_back("space group 1 (a volume) on a .mrcs stack: read as a stack of images");
  if (h.dmax < h.dmin) notes.emplace_back("statistics not set (dmax < dmin)");
  return notes;
}

// ---------------------------------------------------------------------------------- writing

void write_mrc(const std::filesystem::path& path, const float* data, int nx, int ny, int nz,
               const MrcWriteOptions& options) {
  check_write_arguments(path, nx, ny, nz, options);
  write_atomically(path, [&](const std::filesystem::path& temp) {
    const int fd = open_for_writing(temp, path);
    try {
      // Data first, header last: the statistics are known only after one pass over the data.
      RunningStats stats;
      const std::size_t total = static_cast<std::size_t>(nx) * ny * nz;
      write_values(fd, data, total, kHeaderBytes, options.float16, stats, path);
      MrcHeader header = make_header(nx, ny, nz, options);
      stats.store(header);
      pwrite_fully(fd, &header, sizeof(header), 0, path);
    } catch (...) {
      ::close(fd);
      throw;
    }
    close_written(fd, path);
  });
}

namespace {
std::atomic<int> stack_writer_serial{0};
}

MrcStackWriter::MrcStackWriter(const std::filesystem::path& path, int nx, int ny,
                               const MrcWriteOptions& options)
    : path_(path), nx_(nx), ny_(ny), options_(options) {
  options_.is_stack = true;  // a stack writer always writes an image stack
  check_write_arguments(path, nx, ny, 1, options_);
  // Same "<name>.tmp<pid>" pattern as write_atomically (ignored by git); the serial keeps two
  // writers of one process apart.
  temp_ = path;
  temp_ += fmt::format(".tmp{}_{}", static_cast<long>(::getpid()), stack_writer_serial++);
  fd_ = open_for_writing(temp_, path_);
}

MrcStackWriter::~MrcStackWriter() {
  if (fd_ >= 0) {  // never closed: the stack is incomplete, so it must not appear
    ::close(fd_);
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
  }
}

void MrcStackWriter::append(const float* image) {
  if (fd_ < 0) fail("{}: cannot append to a closed MRC stack", path_.string());
  if (count_ >= std::numeric_limits<std::int32_t>::max())
    fail("{}: an MRC stack holds at most {} images", path_.string(),
         std::numeric_limits<std::int32_t>::max());
  const std::size_t values = static_cast<std::size_t>(nx_) * ny_;
  const std::int64_t image_bytes =
      static_cast<std::int64_t>(values) * (options_.float16 ? 2 : 4);
  RunningStats stats;
  stats.shift = sum_shift_;
  stats.empty = count_ == 0;
  stats.min = min_;
  stats.max = max_;
  write_values(fd_, image, values, kHeaderBytes + count_ * image_bytes, options_.float16, stats,
               path_);
  if (count_ == 0) sum_shift_ = stats.shift;
  sum_ += stats.sum;
  sum2_ += stats.sum2;
  min_ = stats.min;
  max_ = stats.max;
  nonfinite_ = nonfinite_ || !stats.finite;
  ++count_;
}

void MrcStackWriter::close() {
  if (fd_ < 0) return;
  const int fd = std::exchange(fd_, -1);
  bool closed = false;
  try {
    if (count_ == 0) fail("{}: no images were written to the MRC stack", path_.string());
    MrcHeader header = make_header(nx_, ny_, static_cast<int>(count_), options_);
    RunningStats stats;
    stats.empty = false;
    stats.finite = !nonfinite_;
    stats.shift = sum_shift_;
    stats.sum = sum_;
    stats.sum2 = sum2_;
    stats.min = min_;
    stats.max = max_;
    stats.count = count_ * nx_ * ny_;
    stats.store(header);
    pwrite_fully(fd, &header, sizeof(header), 0, path_);
    // On disk before the rename, as write_atomically does (a full disk may say so only here).
    if (::fsync(fd) != 0) fail("{}: write failed: {}", path_.string(), std::strerror(errno));
    closed = true;  // even a failing close() releases the descriptor
    close_written(fd, path_);
    std::error_code ec;
    std::filesystem::rename(temp_, path_, ec);
    if (ec)
      fail("{}: cannot rename the temporary file into place: {}", path_.string(), ec.message());
  } catch (...) {
    if (!closed) ::close(fd);
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
    throw;
  }
}

// ---------------------------------------------------------------------------------- checks

bool all_finite(const float* data, std::size_t count) {
  // A float is NaN or Inf exactly when its exponent bits are all ones. Blocks without early
  // exit inside let the compiler vectorize the test.
  constexpr std::uint32_t kExponent = 0x7f800000u;
  constexpr std::size_t kBlock = 4096;
  for (std::size_t start = 0; start < count; start += kBlock) {
    const std::size_t end = std::min(count, start + kBlock);
    bool bad = false;
    for (std::size_t i = start; i < end; ++i) {
      std::uint32_t bits;
      std::memcpy(&bits, &data[i], 4);
      bad |= (bits & kExponent) == kExponent;
    }
    if (bad) return false;
  }
  return true;
}

}  // namespace emcryo::io
