// The MRC header and stack reader: any bytes open as an MRC file or fail with emcryo::Error; an
// accepted header must let every section be read (its sizes were checked against the length).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "emcryo/io/mrc.hpp"
#include "fuzz_support.hpp"

namespace {

// The input as a file without touching the disk: an in-memory file under /proc/self/fd.
class MemoryFile {
 public:
  MemoryFile(const std::uint8_t* data, std::size_t size) : fd_(::memfd_create("fuzz.mrc", 0)) {
    if (fd_ < 0 || ::write(fd_, data, size) != static_cast<ssize_t>(size)) std::abort();
  }
  ~MemoryFile() { ::close(fd_); }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

void read_first_and_last(const emcryo::io::MrcReader& mrc) {
  (void)mrc.pixel_size();
  std::vector<float> section = mrc.read_section(0);
  section = mrc.read_section(mrc.nz() - 1);
  if (section.size() != static_cast<std::size_t>(mrc.nx()) * static_cast<std::size_t>(mrc.ny())) std::abort();
  // Out-of-range requests are the caller's bug, but must still be refused cleanly.
  emcryo::fuzz::expect_clean_error([&] { (void)mrc.read_section(mrc.nz()); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const MemoryFile file(data, size);
  emcryo::fuzz::expect_clean_error([&] {
    const emcryo::io::MrcReader mrc(file.path());
    read_first_and_last(mrc);
  });
  return 0;
}
