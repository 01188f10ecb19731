#include "emcryo/core/files.hpp"

#include <unistd.h>

#include <fstream>
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

}  // namespace emcryo
