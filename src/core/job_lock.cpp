#include "emcryo/core/job_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"
#include "emcryo/core/log.hpp"

namespace emcryo {

namespace {

namespace fs = std::filesystem;

std::string host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "unknown host";
  return name;
}

// "pid host" as written by a holder; "" when the file is empty (a holder killed before writing).
std::string read_owner(int fd) {
  char text[512] = {};
  const ssize_t got = ::pread(fd, text, sizeof text - 1, 0);
  if (got <= 0) return "";
  std::string owner(text, static_cast<std::size_t>(got));
  while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
  return owner;
}

std::string describe(const std::string& owner) {
  const auto space = owner.find(' ');
  if (owner.empty() || space == std::string::npos) return "unknown pid";
  return fmt::format("pid {} on host {}", owner.substr(0, space), excerpt(owner.substr(space + 1)));
}

// A holder removes the file when it finishes; a job that opened the file just before that holds
// a lock on a removed inode. Locking is valid only while the path still names our inode.
bool still_named(int fd, const fs::path& path) {
  struct stat open_file {}, named {};
  if (::fstat(fd, &open_file) != 0 || ::stat(path.c_str(), &named) != 0) return false;
  return open_file.st_ino == named.st_ino && open_file.st_dev == named.st_dev;
}

}  // namespace

JobLock::JobLock(const fs::path& dir) : path_(dir / ".emcryo.lock") {
  std::error_code ec;
  created_folder_ = !fs::exists(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the output folder: {}", dir.string(), ec.message());
  for (;;) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fail("{}: cannot create the job lock file: {}", path_.string(), std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      const std::string owner = read_owner(fd);
      ::close(fd);
      if (error == EWOULDBLOCK)
        fail("{}: another emcryo job ({}) is running in this folder; wait for it to finish, or choose another --out",
             dir.string(), describe(owner));
      fail("{}: cannot lock {}: {}", dir.string(), path_.string(), std::strerror(error));
    }
    if (!still_named(fd, path_)) {  // the previous holder removed it meanwhile: start again
      ::close(fd);
      continue;
    }
    const std::string stale = read_owner(fd);
    if (!stale.empty())
      log::warn("{}: taking over the lock of an emcryo job that is no longer running ({})", dir.string(),
                describe(stale));
    const std::string owner = fmt::format("{} {}\n", static_cast<long>(::getpid()), host_name());
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, owner.data(), owner.size(), 0) != static_cast<ssize_t>(owner.size())) {
      const int error = errno;
      ::close(fd);
      fail("{}: cannot write the job lock file: {}", path_.string(), std::strerror(error));
    }
    fd_ = fd;
    // The folder is ours now: what a killed writer left half-written goes (its complete
    // outputs and checkpoint stay).
    for (const std::string& name : remove_stale_temporaries(dir))
      log::warn("{}: removed {}, left half-written by a job that was killed", dir.string(), excerpt(name));
    return;
  }
}

JobLock::~JobLock() {
  // Removed while still locked, so no other job can lock this inode and believe it holds the folder.
  ::unlink(path_.c_str());
  ::close(fd_);
  std::error_code ec;
  if (created_folder_ && fs::is_empty(path_.parent_path(), ec)) fs::remove(path_.parent_path(), ec);
}

}  // namespace emcryo
