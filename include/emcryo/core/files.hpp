// Files appear whole or not at all: write to a temporary name in the same folder, then rename.
#pragma once
#include <filesystem>
#include <functional>
#include <string>

namespace emcryo {

/// Calls write(temp_path) and renames temp_path onto path on success; on failure removes the
/// temporary file and rethrows, so an earlier file at `path` is never damaged.
void write_atomically(const std::filesystem::path& path,
                      const std::function<void(const std::filesystem::path& temp_path)>& write);

/// Writes a text file atomically.
void write_text_file(const std::filesystem::path& path, const std::string& text);
std::string read_text_file(const std::filesystem::path& path);

}  // namespace emcryo
