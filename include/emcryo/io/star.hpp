// RELION STAR files (3.0 and 3.1 layouts): blocks of key-value pairs or loops, read and written
// fast and column-wise. Unknown columns survive a round trip; values keep their original text
// until they are changed.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace emcryo::io {

/// One loop table (or a key-value block seen as a one-row table). Cells are text; numeric
/// accessors parse on demand and report the file, line and column of a bad value.
class StarTable {
 public:
  StarTable() = default;

  std::size_t rows() const { return rows_; }
  std::size_t columns() const { return names_.size(); }
  const std::vector<std::string>& column_names() const { return names_; }
  /// Column index by label without the leading underscore (e.g. "rlnImageName"), or -1.
  int find(std::string_view label) const;
  bool has(std::string_view label) const { return find(label) >= 0; }
  /// Like find() but fails with "<file>: data_<block>: missing required column <label>".
  int require(std::string_view label) const;

  /// The cell text without quotes. The view stays valid until the next edit of this table.
  std::string_view text(std::size_t row, int column) const;
  /// Parsed numbers; fail with "<file>:<line>: column <label>: '<text>' is not a number".
  double number(std::size_t row, int column) const;
  std::int64_t integer(std::size_t row, int column) const;
  /// Whole column parsed at once (fast path for jobs); values are bit-identical to from_chars.
  std::vector<double> numbers(int column) const;

  /// Adds a column (filled with `fill`) or returns the existing one.
  int add_column(std::string_view label, std::string_view fill = "0");
  void set_text(std::size_t row, int column, std::string_view value);
  /// Fixed point with `precision` decimals as RELION writes ("12345.678901"); exponent form
  /// ("1.500000e-07") below 1e-3 or from 1e9 in magnitude.
  void set_number(std::size_t row, int column, double value, int precision = 6);
  void set_integer(std::size_t row, int column, std::int64_t value);
  /// Appends a row of unset cells (set them after; writing an unset cell fails), returns its index.
  std::size_t add_row();
  /// Keeps only the given rows, in the given order.
  void select_rows(const std::vector<std::size_t>& rows);

  /// Where the table came from, for error messages.
  std::string source_file;
  std::string block_name;
  /// The file line where each row started (0 when built in memory).
  std::uint32_t line_of(std::size_t row) const;

 private:
  friend class StarReaderAccess;
  friend class StarWriterAccess;
  // Offsets with this bit set point into edits_, others into arena_.
  static constexpr std::uint64_t kEditedBit = std::uint64_t{1} << 63;
  // Offset of a cell created by add_row() and not set yet.
  static constexpr std::uint64_t kUnsetCell = ~std::uint64_t{0};

  std::size_t cell_index(std::size_t row, int column) const;
  std::string_view cell_text(std::size_t cell) const;
  void store_cell(std::size_t cell, std::string_view value);
  void compact_if_wasteful();
  std::uint32_t line_of_cell(std::size_t row, int column) const;
  [[noreturn]] void fail_not_number(std::size_t row, int column, std::string_view what) const;

  std::vector<std::string> names_;
  std::size_t rows_ = 0;
  // Row-major cells as (offset, length): the file text stays in arena_ (never copied cell by
  // cell); edited cells go to edits_, so a first edit does not reallocate the whole file.
  std::vector<std::uint64_t> cell_offset_;
  std::vector<std::uint32_t> cell_length_;
  std::vector<std::uint32_t> row_line_;
  // Key-value blocks: the file line of each key (their single "row" spans many lines).
  std::vector<std::uint32_t> key_line_;
  std::string arena_;
  std::string edits_;
  // Sum of cell lengths, to know when superseded text is worth compacting away.
  std::uint64_t live_bytes_ = 0;
};

struct StarBlock {
  std::string name;  // without "data_"
  bool is_loop = false;
  StarTable table;  // key-value blocks: one row, one column per key
};

struct StarFile {
  std::filesystem::path path;
  /// Version from a "# version NNNNN" comment (30001 for RELION 3.1); 0 when absent.
  int version = 0;
  std::vector<StarBlock> blocks;

  StarBlock* find_block(std::string_view name);
  const StarBlock* find_block(std::string_view name) const;
  /// Fails with "<file>: no data_<name> block" when absent.
  const StarBlock& require_block(std::string_view name) const;
};

/// Reads a STAR file. Errors name the file and line.
StarFile read_star(const std::filesystem::path& path);
StarFile parse_star(std::string text, const std::filesystem::path& path_for_messages);
/// Writes atomically (temporary name, then rename), "# version 30001" before each block.
void write_star(const std::filesystem::path& path, const StarFile& star);
std::string format_star(const StarFile& star);

}  // namespace emcryo::io
