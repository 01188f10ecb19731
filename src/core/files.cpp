#include "emcryo/core/files.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
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

int iteration_of_file_name(const std::string& name) {
  for (std::size_t at = name.find("_it"); at != std::string::npos; at = name.find("_it", at + 1)) {
    std::size_t end = at + 3;
    while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
    if (end - (at + 3) >= 3 && end < name.size() && (name[end] == '.' || name[end] == '_'))
      return std::stoi(name.substr(at + 3, end - (at + 3)));
  }
  return -1;
}

std::vector<std::string> prune_iteration_files(const std::filesystem::path& dir, int keep_last, int keep_every) {
  namespace fs = std::filesystem;
  std::map<int, std::vector<fs::path>> by_iteration;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.find("checkpoint") != std::string::npos || name.find(".tmp") != std::string::npos)
      continue;
    if (const int it = iteration_of_file_name(name); it >= 0) by_iteration[it].push_back(entry.path());
  }
  if (ec) fail("{}: cannot list the folder: {}", dir.string(), ec.message());
  const int keep = std::max(keep_last, 1);
  int rank = static_cast<int>(by_iteration.size());  // 1 for the latest iteration
  std::vector<std::string> deleted;
  for (const auto& [it, files] : by_iteration) {
    const bool kept = rank-- <= keep || (keep_every > 0 && it % keep_every == 0);
    if (kept) continue;
    for (const auto& file : files) {
      if (!fs::remove(file, ec) && ec) fail("{}: cannot delete: {}", file.string(), ec.message());
      deleted.push_back(file.filename().string());
    }
  }
  std::sort(deleted.begin(), deleted.end());
  return deleted;
}

}  // namespace emcryo
