// One job per output folder: a lock file that a running job holds with flock(2).
#pragma once
#include <filesystem>
#include <string>

namespace emcryo {

/// Claims an output folder for the life of this object (create it where a job claims its folder,
/// before it looks at what the folder holds). The folder is created if needed; the lock file
/// `<dir>/.emcryo.lock` holds "pid host" of the running job.
///
/// - Another live job holds the folder: fails with "<dir>: another emcryo job (pid P on host H)
///   is running in this folder; wait for it, or choose another --out".
/// - A lock file left by a job that was killed (its flock was freed when it died) is taken over,
///   with a warning line naming the old pid and host.
/// - Temporary files a killed job left half-written are removed (remove_stale_temporaries).
/// - A folder this lock created and that is still empty when the lock goes (a job refused for
///   bad input before it wrote anything) is removed with it: a failed start leaves no trace.
///
/// flock works across NFS on Linux >= 2.6.12 (emulated with fcntl locks by the client).
class JobLock {
 public:
  explicit JobLock(const std::filesystem::path& dir);
  ~JobLock();
  JobLock(const JobLock&) = delete;
  JobLock& operator=(const JobLock&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  bool created_folder_ = false;
};

}  // namespace emcryo
