#include "emcryo/core/files.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fstream>
#include <sstream>

#include "emcryo/core/error.hpp"

namespace emcryo {

namespace {

// Data reach the disk before the rename makes them the file: after a crash or power cut the
// name holds the old or the new content, never a file of zeros. Errors that a full disk reports
// only at this point (ENOSPC, EDQUOT, EIO from write-back) are errors of the write.
void sync_to_disk(const std::filesystem::path& temp, const std::filesystem::path& path) {
  const int fd = ::open(temp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot reopen the temporary file to sync it: {}", path.string(), std::strerror(errno));
  const int synced = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (synced != 0) fail("{}: write failed: {}", path.string(), std::strerror(error));
}

// The rename itself is durable only once the folder is synced; a failure here loses nothing.
void sync_folder(const std::filesystem::path& path) {
  const std::filesystem::path folder = path.has_parent_path() ? path.parent_path() : ".";
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_atomically(const std::filesystem::path& path,
                      const std::function<void(const std::filesystem::path&)>& write) {
  std::filesystem::path temp = path;
  temp += fmt::format(".tmp{}", static_cast<long>(getpid()));
  try {
    write(temp);
    sync_to_disk(temp, path);
    std::error_code ec;
    std::filesystem::rename(temp, path, ec);
    if (ec) fail("{}: cannot rename the temporary file into place: {}", path.string(), ec.message());
    sync_folder(path);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    throw;
  }
}

namespace {

// "<name>.tmp<digits>" or "<name>.tmp<digits>_<digits>": the temporary names this file and
// MrcStackWriter use, and nothing a user would name a file.
bool is_temporary_name(const std::string& name) {
  const auto at = name.rfind(".tmp");
  if (at == std::string::npos || at == 0) return false;
  const std::string tail = name.substr(at + 4);
  const auto underscore = tail.find('_');
  const auto digits = [](const std::string& t) {
    return !t.empty() && t.find_first_not_of("0123456789") == std::string::npos;
  };
  if (underscore == std::string::npos) return digits(tail);
  return digits(tail.substr(0, underscore)) && digits(tail.substr(underscore + 1));
}

}  // namespace

std::vector<std::string> remove_stale_temporaries(const std::filesystem::path& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!is_temporary_name(name)) continue;
    std::error_code ignored;
    if (std::filesystem::remove(entry.path(), ignored)) removed.push_back(name);
  }
  return removed;
}

void write_text_file(const std::filesystem::path& path, const std::string& text) {
  write_atomically(path, [&](const std::filesystem::path& temp) {
    // POSIX calls rather than ofstream: they say why a write failed (ENOSPC, EACCES...).
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("{}: cannot open for writing: {}", path.string(), std::strerror(errno));
    std::size_t done = 0;
    while (done < text.size()) {
      const ssize_t put = ::write(fd, text.data() + done, text.size() - done);
      if (put < 0 && errno == EINTR) continue;
      if (put < 0) {
        const int error = errno;
        ::close(fd);
        fail("{}: write failed: {}", path.string(), std::strerror(error));
      }
      done += static_cast<std::size_t>(put);
    }
    if (::close(fd) != 0) fail("{}: write failed at close: {}", path.string(), std::strerror(errno));
  });
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace emcryo
