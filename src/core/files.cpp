#include "emcryo/core/files.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <sstream>

#include "emcryo/core/error.hpp"

namespace emcryo {

void write_atomically(const std::filesystem::path& path,
                      const std::function<void(const std::filesystem::path&)>& write) {
  std::filesystem::path temp = path;
  temp += fmt::format(".tmp{}", static_cast<long>(getpid()));
  try {
    write(temp);
    std::error_code ec;
    std::filesystem::rename(temp, path, ec);
    if (ec) fail("{}: cannot rename the temporary file into place: {}", path.string(), ec.message());
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    throw;
  }
}

void write_text_file(const std::filesystem::path& path, const std::string& text) {
  write_atomically(path, [&](const std::filesystem::path& temp) {
    std::ofstream out(temp, std::ios::binary);
    if (!out) fail("{}: cannot open for writing", path.string());
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    if (!out) fail("{}: write failed (disk full?)", path.string());
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
