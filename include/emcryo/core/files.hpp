// Files appear whole or not at all: write to a temporary name in the same folder, then rename.
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace emcryo {

/// Calls write(temp_path) and renames temp_path onto path on success; on failure removes the
/// temporary file and rethrows, so an earlier file at `path` is never damaged.
void write_atomically(const std::filesystem::path& path,
                      const std::function<void(const std::filesystem::path& temp_path)>& write);

/// Removes the temporary files ("<name>.tmp<pid>" or "<name>.tmp<pid>_<n>", as written by
/// write_atomically and MrcStackWriter) that a killed job left in `dir`, and returns their names.
/// Only for a folder no other process writes into (hold its JobLock).
std::vector<std::string> remove_stale_temporaries(const std::filesystem::path& dir);

/// Writes a text file atomically.
void write_text_file(const std::filesystem::path& path, const std::string& text);
std::string read_text_file(const std::filesystem::path& path);

/// The iteration number of a per-iteration output ("classes_it007.mrcs", "run_it025_data.star":
/// "_it" and at least 3 digits, then '.' or '_'), or -1 for any other name.
int iteration_of_file_name(const std::string& name);

/// Deletes per-iteration outputs in `dir` (not below it) except those of the last `keep_last`
/// iterations present (at least 1, so --continue always finds the latest) and of every
/// `keep_every`-th iteration (0: none). Checkpoint files ("checkpoint" in the name) and files
/// being written (".tmp") are never touched. Returns the names deleted, sorted.
std::vector<std::string> prune_iteration_files(const std::filesystem::path& dir, int keep_last, int keep_every);

}  // namespace emcryo
