// RELION STAR reader/writer. The file is read whole into one string and every cell is kept as an
// (offset, length) span into it, so reading 1 M particles costs one tokenizing pass and no
// per-cell allocation; numbers are parsed only when asked for (std::from_chars).
#include "emcryo/io/star.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"

namespace emcryo::io {

namespace {

// Any control character counts as a separator (covers ' ', '\t', '\r', '\v', '\f').
inline bool is_blank(char c) { return static_cast<unsigned char>(c) <= ' '; }

std::string_view strip_underscore(std::string_view label) {
  if (!label.empty() && label.front() == '_') label.remove_prefix(1);
  return label;
}

std::string display_file(const std::string& file) { return file.empty() ? "(in memory)" : file; }

enum class Scan { token, end_of_line, unterminated_quote };

// Finds the next token on [cursor, line_end). Quoted tokens ('...' or "...") end at the matching
// quote followed by a blank or the end of the line, as in STAR/CIF, so "it's" needs no escaping.
// '#' at the start of a token begins a comment that runs to the end of the line.
inline Scan next_token(const char*& cursor, const char* line_end, const char*& begin, const char*& end) {
  const char* p = cursor;
  while (p < line_end && is_blank(*p)) ++p;
  if (p == line_end || *p == '#') {
    cursor = line_end;
    return Scan::end_of_line;
  }
  if (*p == '\'' || *p == '"') {
    const char quote = *p;
    const char* q = p + 1;
    for (;;) {
      q = static_cast<const char*>(std::memchr(q, quote, static_cast<std::size_t>(line_end - q)));
      if (q == nullptr) return Scan::unterminated_quote;
      if (q + 1 == line_end || is_blank(q[1])) break;
      ++q;
    }
    begin = p + 1;
    end = q;
    cursor = q + 1;
    return Scan::token;
  }
  begin = p;
  while (p < line_end && !is_blank(*p)) ++p;
  end = p;
  cursor = p;
  return Scan::token;
}

bool starts_with_word(const char* p, const char* line_end, std::string_view word) {
  const auto available = static_cast<std::size_t>(line_end - p);
  return available >= word.size() && std::memcmp(p, word.data(), word.size()) == 0;
}

// "loop_" must be a whole token; "data_" is a prefix (the block name follows).
bool is_loop_keyword(const char* p, const char* line_end) {
  return starts_with_word(p, line_end, "loop_") && (p + 5 == line_end || is_blank(p[5]));
}
bool is_data_keyword(const char* p, const char* line_end) { return starts_with_word(p, line_end, "data_"); }

// Plain decimals ("-12345.678901", what RELION writes) with at most 15 digits: the digits form an
// integer below 2^53 and the divisor 10^k (k <= 22) is exact, so one IEEE division gives the
// correctly rounded value, bit-identical to from_chars (Clinger's fast path), several times faster.
inline bool parse_plain_decimal(const char* begin, const char* end, double& value) {
  static constexpr double kPowersOfTen[] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                            1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
  const char* p = begin;
  const bool negative = p != end && *p == '-';
  if (negative) ++p;
  std::uint64_t digits = 0;
  int digit_count = 0;
  int decimals = -1;  // -1: no '.' seen yet
  for (; p != end; ++p) {
    const unsigned digit = static_cast<unsigned char>(*p) - unsigned{'0'};
    if (digit < 10) {
      digits = digits * 10 + digit;
      ++digit_count;
      if (decimals >= 0) ++decimals;
    } else if (*p == '.' && decimals < 0) {
      decimals = 0;
    } else {
      return false;
    }
  }
  if (digit_count == 0 || digit_count > 15) return false;
  double result = static_cast<double>(digits);
  if (decimals > 0) result /= kPowersOfTen[decimals];
  value = negative ? -result : result;
  return true;
}

bool parse_double(std::string_view text, double& value) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (parse_plain_decimal(begin, end, value)) return true;
  if (begin != end && *begin == '+') {
    ++begin;
    if (begin != end && *begin == '-') return false;
  }
  if (begin == end) return false;
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ptr != end) return false;
  if (ec == std::errc()) return true;
  if (ec == std::errc::result_out_of_range) {  // e.g. 1e999 or 1e-400: take strtod's inf / 0
    const std::string copy(begin, end);
    value = std::strtod(copy.c_str(), nullptr);
    return true;
  }
  return false;
}

bool parse_integer(std::string_view text, std::int64_t& value) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (begin != end && *begin == '+') {
    ++begin;
    if (begin != end && *begin == '-') return false;
  }
  if (begin == end) return false;
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  return ec == std::errc() && ptr == end;
}

// True when any byte of [begin, end) is a control character or space, 8 bytes at a time:
// (x - 0x21..) & ~x & 0x80.. flags bytes below 0x21 (bytes >= 0x80, UTF-8, are never flagged).
bool has_blank(const char* begin, const char* end) {
  constexpr std::uint64_t kOnes = 0x0101010101010101ull;
  constexpr std::uint64_t kHighs = 0x8080808080808080ull;
  const char* p = begin;
  for (; end - p >= 8; p += 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    if (((word - kOnes * 0x21) & ~word & kHighs) != 0) return true;
  }
  for (; p < end; ++p)
    if (is_blank(*p)) return true;
  return false;
}

// A quote character can delimit `text` when it never appears followed by a blank inside it.
bool quote_fits(std::string_view text, char quote) {
  for (std::size_t i = 0; i + 1 < text.size(); ++i)
    if (text[i] == quote && is_blank(text[i + 1])) return false;
  return true;
}

// Writes one cell, quoting it when a reader would otherwise split or misread it. Returns the
// write position after the cell, or nullptr when the text cannot be written at all.
char* write_cell(char* out, std::string_view text) {
  bool needs_quotes = text.empty();
  if (!needs_quotes) {
    const char first = text.front();
    needs_quotes = first == '\'' || first == '"' || first == '#' || first == '_' || first == ';' ||
                   text.starts_with("data_") || text == "loop_" ||
                   has_blank(text.data(), text.data() + text.size());
  }
  if (!needs_quotes) {
    std::memcpy(out, text.data(), text.size());
    return out + text.size();
  }
  if (text.find_first_of("\n\r") != std::string_view::npos) return nullptr;
  char quote = '"';
  if (!quote_fits(text, quote)) {
    quote = '\'';
    if (!quote_fits(text, quote)) return nullptr;
  }
  *out++ = quote;
  std::memcpy(out, text.data(), text.size());
  out += text.size();
  *out++ = quote;
  return out;
}

std::string read_whole_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  if (S_ISDIR(info.st_mode)) fail("{}: cannot open: is a directory", path.string());
  // Read st_size bytes in place; then read on through a small buffer, so a file that grew (or a
  // pipe, whose size reads 0) is still read whole without reallocating the big string at EOF.
  std::string text(static_cast<std::size_t>(info.st_size), '\0');
  std::size_t done = 0;
  const auto read_some = [&](char* into, std::size_t size) -> std::size_t {
    for (;;) {
      const ssize_t got = ::read(fd, into, size);
      if (got >= 0) return static_cast<std::size_t>(got);
      if (errno != EINTR) fail("{}: cannot read: {}", path.string(), std::strerror(errno));
    }
  };
  while (done < text.size()) {
    const std::size_t got = read_some(text.data() + done, text.size() - done);
    if (got == 0) break;
    done += got;
  }
  text.resize(done);
  char more[65536];
  while (const std::size_t got = read_some(more, sizeof more)) text.append(more, got);
  return text;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reading

class StarReaderAccess {
 public:
  StarReaderAccess(std::string text, const std::filesystem::path& path)
      : text_(std::move(text)), file_(path.string()) {
    star_.path = path;
  }

  StarFile parse() {
    const char* base = text_.data();
    const char* end = base + text_.size();
    const char* p = base;
    if (text_.starts_with("\xEF\xBB\xBF")) p += 3;  // UTF-8 byte-order mark from some editors
    std::uint32_t line = 0;
    while (p < end) {
      ++line;
      const char* line_end =
          static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
      if (line_end == nullptr) line_end = end;
      const char* first = p;
      while (first < line_end && is_blank(*first)) ++first;
      p = line_end + 1;

      if (first == line_end) continue;
      // Hot path: a row of a loop.
      if (state_ == State::loop_rows && *first != '#' && *first != '_' && !is_data_keyword(first, line_end) &&
          !is_loop_keyword(first, line_end)) {
        read_row(first, line_end, line);
        continue;
      }
      if (*first == '#') {
        read_comment(first, line_end);
      } else if (is_data_keyword(first, line_end)) {
        start_block(first, line_end, line);
      } else if (is_loop_keyword(first, line_end)) {
        if (state_ != State::block_start) {
          if (state_ == State::outside) fail("{}:{}: loop_ outside a data_ block", file_, line);
          fail(
              "{}:{}: data_{}: a second loop_ or a loop_ after key-value pairs in one block is not supported",
              file_, line, excerpt(block().name));
        }
        block().is_loop = true;
        state_ = State::loop_labels;
        expect_only_comment(first + 5, line_end, line, "loop_");
      } else if (*first == '_') {
        if (state_ == State::loop_labels) {
          read_label(first, line_end, line);
        } else if (state_ == State::block_start || state_ == State::key_values) {
          read_key_value(first, line_end, line);
        } else if (state_ == State::outside) {
          fail("{}:{}: '{}' outside a data_ block", file_, line, excerpt(first_token(first, line_end)));
        } else {
          fail("{}:{}: data_{}: label {} after the rows of a loop_ is not supported", file_, line,
               excerpt(block().name), excerpt(first_token(first, line_end)));
        }
      } else if (state_ == State::loop_labels) {
        if (table().names_.empty()) fail("{}:{}: data_{}: loop_ without labels", file_, line, excerpt(block().name));
        state_ = State::loop_rows;
        reserve_rows(first);
        read_row(first, line_end, line);
      } else if (state_ == State::outside) {
        fail("{}:{}: '{}' outside a data_ block", file_, line, excerpt(first_token(first, line_end)));
      } else {
        fail("{}:{}: data_{}: value '{}' is neither in a loop_ nor after a _label", file_, line, excerpt(block().name),
             excerpt(first_token(first, line_end)));
      }
    }
    if (star_.blocks.empty()) fail("{}: no data_ block (empty file or not a STAR file)", file_);
    finish_block(text_.size());
    hand_out_text();
    return std::move(star_);
  }

 private:
  enum class State { outside, block_start, loop_labels, loop_rows, key_values };

  StarBlock& block() { return star_.blocks.back(); }
  StarTable& table() { return star_.blocks.back().table; }

  static std::string_view first_token(const char* first, const char* line_end) {
    const char* p = first;
    while (p < line_end && !is_blank(*p)) ++p;
    return {first, static_cast<std::size_t>(p - first)};
  }

  void read_comment(const char* first, const char* line_end) {
    if (star_.version != 0) return;
    const char* p = first + 1;
    while (p < line_end && is_blank(*p)) ++p;
    if (!starts_with_word(p, line_end, "version")) return;
    p += 7;
    while (p < line_end && is_blank(*p)) ++p;
    int version = 0;
    const auto [ptr, ec] = std::from_chars(p, line_end, version);
    if (ec == std::errc() && ptr != p) star_.version = version;
  }

  void expect_only_comment(const char* after, const char* line_end, std::uint32_t line,
                           std::string_view what) {
    const char* cursor = after;
    const char* begin = nullptr;
    const char* end = nullptr;
    const Scan scan = next_token(cursor, line_end, begin, end);
    if (scan == Scan::end_of_line) return;
    if (scan == Scan::unterminated_quote) fail("{}:{}: unterminated quote after {}", file_, line, what);
    fail("{}:{}: unexpected '{}' after {}", file_, line,
         excerpt(std::string_view(begin, static_cast<std::size_t>(end - begin))), excerpt(what));
  }

  void start_block(const char* first, const char* line_end, std::uint32_t line) {
    const std::size_t start = static_cast<std::size_t>(first - text_.data());
    if (!star_.blocks.empty()) finish_block(start);
    const std::string_view token = first_token(first, line_end);
    StarBlock& added = star_.blocks.emplace_back();
    added.name = std::string(token.substr(5));
    added.table.source_file = file_;
    added.table.block_name = added.name;
    block_start_.push_back(start);
    labels_.clear();
    state_ = State::block_start;
    expect_only_comment(first + token.size(), line_end, line, token);
  }

  void read_label(const char* first, const char* line_end, std::uint32_t line) {
    const std::string_view token = first_token(first, line_end);
    const std::string_view label = strip_underscore(token);
    StarTable& t = table();
    if (label.empty()) fail("{}:{}: data_{}: empty label '_'", file_, line, excerpt(block().name));
    if (!labels_.insert(label).second)
      fail("{}:{}: data_{}: duplicate column {}", file_, line, excerpt(block().name), excerpt(label));
    t.names_.emplace_back(label);
    expect_only_comment(first + token.size(), line_end, line, token);  // "#N" is a comment
  }

  void read_key_value(const char* first, const char* line_end, std::uint32_t line) {
    StarTable& t = table();
    if (state_ == State::block_start) {
      state_ = State::key_values;
      t.rows_ = 1;
      t.row_line_.push_back(line);
    }
    const std::string_view key_token = first_token(first, line_end);
    const std::string_view key = strip_underscore(key_token);
    if (key.empty()) fail("{}:{}: data_{}: empty label '_'", file_, line, excerpt(block().name));
    if (!labels_.insert(key).second)
      fail("{}:{}: data_{}: duplicate key {}", file_, line, excerpt(block().name), excerpt(key));
    const char* cursor = first + key_token.size();
    const char* begin = nullptr;
    const char* end = nullptr;
    const Scan scan = next_token(cursor, line_end, begin, end);
    if (scan == Scan::unterminated_quote) fail("{}:{}: column {}: unterminated quote", file_, line, excerpt(key));
    if (scan == Scan::end_of_line) fail("{}:{}: data_{}: {} has no value", file_, line, excerpt(block().name), excerpt(key));
    t.names_.emplace_back(key);
    check_writable(begin, end, line, key);
    t.cell_offset_.push_back(static_cast<std::uint64_t>(begin - text_.data()));
    t.cell_length_.push_back(static_cast<std::uint32_t>(end - begin));
    t.key_line_.push_back(line);
    const char* extra_begin = nullptr;
    const char* extra_end = nullptr;
    if (next_token(cursor, line_end, extra_begin, extra_end) != Scan::end_of_line)
      fail("{}:{}: data_{}: {} has more than one value", file_, line, excerpt(block().name), excerpt(key));
  }

  // Everything read must be writable again: a quoted value may hold a carriage return (only '\n'
  // ends a line), which no STAR writer can put back, so a job would fail only when writing its
  // results (found by fuzz_particles). Only quoted values can hold one; they are rare and short.
  void check_writable(const char* begin, const char* end, std::uint32_t line, std::string_view label) {
    if (begin == text_.data() || (begin[-1] != '\'' && begin[-1] != '"')) return;
    const std::string_view value(begin, static_cast<std::size_t>(end - begin));
    if (value.find('\r') == std::string_view::npos) return;
    fail("{}:{}: column {}: quoted value '{}' holds a carriage return, which cannot be written back", file_, line,
         excerpt(label), excerpt(value));
  }

  // Rows are counted by newlines up to the next block, so the cell arrays grow only once.
  void reserve_rows(const char* first) {
    const std::string_view rest(first, static_cast<std::size_t>(text_.data() + text_.size() - first));
    std::size_t block_end = rest.find("\ndata_");
    if (block_end == std::string_view::npos) block_end = rest.size();
    const auto lines = static_cast<std::size_t>(std::count(
                           rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(block_end), '\n')) +
                       1;
    StarTable& t = table();
    // Each cell takes at least two bytes (text and a separator): a file of many labels and many
    // blank lines must not reserve more cells than its size could ever fill.
    const std::size_t cells = std::min(lines * t.names_.size(), block_end / 2 + 1);
    t.cell_offset_.reserve(cells);
    t.cell_length_.reserve(cells);
    t.row_line_.reserve(lines);
  }

  void read_row(const char* first, const char* line_end, std::uint32_t line) {
    StarTable& t = table();
    const std::size_t expected = t.names_.size();
    const char* base = text_.data();
    const char* cursor = first;
    const char* begin = nullptr;
    const char* end = nullptr;
    std::size_t count = 0;
    for (;;) {
      const Scan scan = next_token(cursor, line_end, begin, end);
      if (scan == Scan::end_of_line) break;
      if (scan == Scan::unterminated_quote)
        fail("{}:{}: column {}: unterminated quote", file_, line,
             excerpt(count < expected ? std::string_view(t.names_[count]) : std::string_view("(extra value)")));
      if (count < expected) check_writable(begin, end, line, t.names_[count]);
      t.cell_offset_.push_back(static_cast<std::uint64_t>(begin - base));
      t.cell_length_.push_back(static_cast<std::uint32_t>(end - begin));
      ++count;
    }
    if (count != expected)
      fail("{}:{}: data_{}: row has {} values, expected {}", file_, line, excerpt(block().name), count, expected);
    t.row_line_.push_back(line);
    ++t.rows_;
  }

  void finish_block(std::size_t end) {
    block_end_.push_back(end);
    StarTable& t = table();
    std::uint64_t live = 0;
    for (const std::uint32_t length : t.cell_length_) live += length;
    t.live_bytes_ = live;
    state_ = State::outside;
  }

  // The largest block keeps the file text itself (no copy of 250 MB); the small ones (optics,
  // model_general...) get copies of their own slice, offsets shifted accordingly.
  void hand_out_text() {
    std::size_t largest = 0;
    for (std::size_t b = 1; b < star_.blocks.size(); ++b)
      if (block_end_[b] - block_start_[b] > block_end_[largest] - block_start_[largest]) largest = b;
    for (std::size_t b = 0; b < star_.blocks.size(); ++b) {
      if (b == largest) continue;
      StarTable& t = star_.blocks[b].table;
      t.arena_ = text_.substr(block_start_[b], block_end_[b] - block_start_[b]);
      for (std::uint64_t& offset : t.cell_offset_) offset -= block_start_[b];
    }
    star_.blocks[largest].table.arena_ = std::move(text_);
  }

  std::string text_;
  std::string file_;
  StarFile star_;
  State state_ = State::outside;
  std::vector<std::size_t> block_start_;
  std::vector<std::size_t> block_end_;
  // Labels of the current block, as views into text_: finds a duplicate in O(1), so a file of a
  // million labels is not a quadratic hang.
  std::unordered_set<std::string_view> labels_;
};

StarFile parse_star(std::string text, const std::filesystem::path& path_for_messages) {
  return StarReaderAccess(std::move(text), path_for_messages).parse();
}

StarFile read_star(const std::filesystem::path& path) { return parse_star(read_whole_file(path), path); }

// ---------------------------------------------------------------------------------------------
// Table access and edits

int StarTable::find(std::string_view label) const {
  label = strip_underscore(label);
  for (std::size_t c = 0; c < names_.size(); ++c)
    if (names_[c] == label) return static_cast<int>(c);
  return -1;
}

int StarTable::require(std::string_view label) const {
  const int column = find(label);
  if (column < 0)
    fail("{}: data_{}: missing required column {}", display_file(source_file), block_name,
         strip_underscore(label));
  return column;
}

std::size_t StarTable::cell_index(std::size_t row, int column) const {
  if (column < 0 || static_cast<std::size_t>(column) >= names_.size() || row >= rows_)
    fail("{}: data_{}: cell (row {}, column {}) is out of range ({} rows, {} columns)",
         display_file(source_file), block_name, row, column, rows_, names_.size());
  return row * names_.size() + static_cast<std::size_t>(column);
}

std::string_view StarTable::cell_text(std::size_t cell) const {
  const std::uint64_t offset = cell_offset_[cell];
  if (offset == kUnsetCell) return {};
  const char* base = (offset & kEditedBit) != 0 ? edits_.data() : arena_.data();
  return {base + (offset & ~kEditedBit), cell_length_[cell]};
}

std::string_view StarTable::text(std::size_t row, int column) const {
  return cell_text(cell_index(row, column));
}

std::uint32_t StarTable::line_of(std::size_t row) const {
  return row < row_line_.size() ? row_line_[row] : 0;
}

std::uint32_t StarTable::line_of_cell(std::size_t row, int column) const {
  const auto c = static_cast<std::size_t>(column);
  if (c < key_line_.size() && key_line_[c] != 0) return key_line_[c];
  return line_of(row);
}

void StarTable::fail_not_number(std::size_t row, int column, std::string_view what) const {
  const std::string_view label = names_[static_cast<std::size_t>(column)];
  const std::string_view value = text(row, column);
  const std::uint32_t line = line_of_cell(row, column);
  if (line != 0)
    fail("{}:{}: column {}: '{}' is not {}", display_file(source_file), line, excerpt(label), excerpt(value), what);
  fail("{}: data_{}: row {}: column {}: '{}' is not {}", display_file(source_file), excerpt(block_name), row + 1,
       excerpt(label), excerpt(value), what);
}

double StarTable::number(std::size_t row, int column) const {
  double value = 0;
  if (!parse_double(text(row, column), value)) fail_not_number(row, column, "a number");
  return value;
}

std::int64_t StarTable::integer(std::size_t row, int column) const {
  const std::string_view cell = text(row, column);
  std::int64_t value = 0;
  if (parse_integer(cell, value)) return value;
  // Other tools write integers as "3.000000"; accept any integral value.
  double as_double = 0;
  if (!parse_double(cell, as_double)) fail_not_number(row, column, "a number");
  if (!std::isfinite(as_double) || as_double != std::floor(as_double) || std::fabs(as_double) > 9.0e18)
    fail_not_number(row, column, "an integer");
  return static_cast<std::int64_t>(as_double);
}

std::vector<double> StarTable::numbers(int column) const {
  if (column < 0 || static_cast<std::size_t>(column) >= names_.size())
    fail("{}: data_{}: column index {} is out of range ({} columns)", display_file(source_file), block_name,
         column, names_.size());
  std::vector<double> values(rows_);
  const std::size_t stride = names_.size();
  // Cells of one column lie a whole row apart in the text, too irregular for the hardware
  // prefetcher: fetch the text a few rows ahead.
  constexpr std::size_t kPrefetchRows = 16;
  for (std::size_t row = 0; row < rows_; ++row) {
    const std::size_t cell = row * stride + static_cast<std::size_t>(column);
    if (row + kPrefetchRows < rows_) {
      const std::uint64_t ahead = cell_offset_[cell + kPrefetchRows * stride];
      if (ahead != kUnsetCell)
        __builtin_prefetch(((ahead & kEditedBit) != 0 ? edits_.data() : arena_.data()) +
                           (ahead & ~kEditedBit));
    }
    if (!parse_double(cell_text(cell), values[row])) fail_not_number(row, column, "a number");
  }
  return values;
}

void StarTable::store_cell(std::size_t cell, std::string_view value) {
  if (value.size() > UINT32_MAX)
    fail("{}: data_{}: value of {} bytes is too long for a cell", display_file(source_file), block_name,
         value.size());
  live_bytes_ -= cell_length_[cell];
  cell_offset_[cell] = static_cast<std::uint64_t>(edits_.size()) | kEditedBit;
  cell_length_[cell] = static_cast<std::uint32_t>(value.size());
  edits_.append(value);
  live_bytes_ += value.size();
  compact_if_wasteful();
}

// Edited values are appended, so text they replace stays behind; once the arenas hold more than
// twice the live text (plus 16 MB of slack), copy the live cells into one fresh arena.
void StarTable::compact_if_wasteful() {
  const std::uint64_t held = arena_.size() + edits_.size();
  if (held <= 2 * live_bytes_ + (std::uint64_t{16} << 20)) return;
  std::string packed;
  packed.reserve(live_bytes_);
  for (std::size_t cell = 0; cell < cell_offset_.size(); ++cell) {
    if (cell_offset_[cell] == kUnsetCell) continue;
    const std::string_view value = cell_text(cell);
    cell_offset_[cell] = packed.size();
    packed.append(value);
  }
  arena_ = std::move(packed);
  edits_ = std::string();
}

void StarTable::set_text(std::size_t row, int column, std::string_view value) {
  store_cell(cell_index(row, column), value);
}

void StarTable::set_number(std::size_t row, int column, double value, int precision) {
  const std::size_t cell = cell_index(row, column);
  precision = std::clamp(precision, 0, 17);
  if (value == 0) value = 0;  // no "-0.000000"
  const double magnitude = std::fabs(value);
  // Fixed point as RELION writes it; exponent form where fixed would lose the value.
  const bool scientific = value != 0 && std::isfinite(value) && (magnitude < 1e-3 || magnitude >= 1e9);
  // std::to_chars, not fmt: fmt 9 formats fixed precision with Dragon4, about 10x slower.
  char buffer[400];  // fixed format of 1e9 - epsilon with 17 decimals fits easily
  const auto [end, ec] =
      std::to_chars(buffer, buffer + sizeof buffer, value,
                    scientific ? std::chars_format::scientific : std::chars_format::fixed, precision);
  if (ec != std::errc()) fail("{}: data_{}: cannot format {}", display_file(source_file), block_name, value);
  store_cell(cell, std::string_view(buffer, static_cast<std::size_t>(end - buffer)));
}

void StarTable::set_integer(std::size_t row, int column, std::int64_t value) {
  const std::size_t cell = cell_index(row, column);
  char buffer[24];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  store_cell(cell, std::string_view(buffer, static_cast<std::size_t>(end - buffer)));
}

int StarTable::add_column(std::string_view label, std::string_view fill) {
  label = strip_underscore(label);
  if (const int existing = find(label); existing >= 0) return existing;
  if (label.empty() || has_blank(label.data(), label.data() + label.size()))
    fail("{}: data_{}: invalid column label '{}'", display_file(source_file), block_name, label);
  if (fill.size() > UINT32_MAX)
    fail("{}: data_{}: fill value too long", display_file(source_file), block_name);
  const std::size_t old_columns = names_.size();
  const std::size_t new_columns = old_columns + 1;
  // Every new cell points at one shared copy of the fill text.
  const std::uint64_t fill_offset = static_cast<std::uint64_t>(edits_.size()) | kEditedBit;
  edits_.append(fill);
  std::vector<std::uint64_t> offsets(rows_ * new_columns);
  std::vector<std::uint32_t> lengths(rows_ * new_columns);
  for (std::size_t row = 0; row < rows_; ++row) {
    std::copy_n(cell_offset_.begin() + static_cast<std::ptrdiff_t>(row * old_columns), old_columns,
                offsets.begin() + static_cast<std::ptrdiff_t>(row * new_columns));
    std::copy_n(cell_length_.begin() + static_cast<std::ptrdiff_t>(row * old_columns), old_columns,
                lengths.begin() + static_cast<std::ptrdiff_t>(row * new_columns));
    offsets[row * new_columns + old_columns] = fill_offset;
    lengths[row * new_columns + old_columns] = static_cast<std::uint32_t>(fill.size());
  }
  cell_offset_ = std::move(offsets);
  cell_length_ = std::move(lengths);
  names_.emplace_back(label);
  if (!key_line_.empty()) key_line_.push_back(0);
  live_bytes_ += rows_ * fill.size();
  return static_cast<int>(old_columns);
}

std::size_t StarTable::add_row() {
  cell_offset_.resize(cell_offset_.size() + names_.size(), kUnsetCell);
  cell_length_.resize(cell_length_.size() + names_.size(), 0);
  row_line_.resize(rows_, 0);
  row_line_.push_back(0);
  return rows_++;
}

void StarTable::select_rows(const std::vector<std::size_t>& rows) {
  const std::size_t stride = names_.size();
  std::vector<std::uint64_t> offsets(rows.size() * stride);
  std::vector<std::uint32_t> lengths(rows.size() * stride);
  std::vector<std::uint32_t> lines(rows.size(), 0);
  std::uint64_t live = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::size_t row = rows[i];
    if (row >= rows_)
      fail("{}: data_{}: select_rows: row {} is out of range ({} rows)", display_file(source_file),
           block_name, row, rows_);
    for (std::size_t c = 0; c < stride; ++c) {
      offsets[i * stride + c] = cell_offset_[row * stride + c];
      lengths[i * stride + c] = cell_length_[row * stride + c];
      live += lengths[i * stride + c];
    }
    lines[i] = line_of(row);
  }
  cell_offset_ = std::move(offsets);
  cell_length_ = std::move(lengths);
  row_line_ = std::move(lines);
  rows_ = rows.size();
  live_bytes_ = live;
  compact_if_wasteful();
}

// ---------------------------------------------------------------------------------------------
// Blocks and writing

StarBlock* StarFile::find_block(std::string_view name) {
  for (StarBlock& block : blocks)
    if (block.name == name) return &block;
  return nullptr;
}

const StarBlock* StarFile::find_block(std::string_view name) const {
  for (const StarBlock& block : blocks)
    if (block.name == name) return &block;
  return nullptr;
}

const StarBlock& StarFile::require_block(std::string_view name) const {
  const StarBlock* block = find_block(name);
  if (block == nullptr) fail("{}: no data_{} block", display_file(path.string()), name);
  return *block;
}

class StarWriterAccess {
 public:
  explicit StarWriterAccess(const StarFile& star) : star_(star) {}

  std::string format() {
    // One exact upper bound, one allocation: cells + 2 quotes + separator each, plus headers.
    std::size_t bound = 0;
    for (const StarBlock& block : star_.blocks) {
      const StarTable& t = block.table;
      bound += 64 + block.name.size();
      for (const std::string& name : t.names_) bound += name.size() + 32;
      // Summed here rather than trusting live_bytes_: an overflow would corrupt memory.
      std::size_t text_bytes = 0;
      for (const std::uint32_t length : t.cell_length_) text_bytes += length;
      bound += text_bytes + 3 * t.cell_length_.size() + t.rows_ + 1;
    }
    std::string out(bound, '\0');
    char* w = out.data();
    for (const StarBlock& block : star_.blocks) w = write_block(w, block);
    out.resize(static_cast<std::size_t>(w - out.data()));
    return out;
  }

 private:
  static char* put(char* w, std::string_view text) {
    std::memcpy(w, text.data(), text.size());
    return w + text.size();
  }

  std::string where(const StarTable& t) const {
    return display_file(t.source_file.empty() ? star_.path.string() : t.source_file);
  }

  char* put_cell(char* w, const StarTable& t, std::size_t row, std::size_t column) const {
    const std::size_t cell = row * t.names_.size() + column;
    if (t.cell_offset_[cell] == StarTable::kUnsetCell)
      fail("{}: data_{}: row {}: column {} was never set", where(t), t.block_name, row + 1, t.names_[column]);
    const std::string_view text = t.cell_text(cell);
    char* after = write_cell(w, text);
    if (after == nullptr)
      fail(
          "{}: data_{}: row {}: column {}: value '{}' cannot be written in STAR (line break or both quote "
          "kinds)",
          where(t), t.block_name, row + 1, t.names_[column], text);
    return after;
  }

  char* write_block(char* w, const StarBlock& block) const {
    const StarTable& t = block.table;
    w = put(w, "# version 30001\n\ndata_");
    w = put(w, block.name);
    w = put(w, "\n\n");
    const std::size_t columns = t.names_.size();
    if (!block.is_loop) {
      if (columns != 0 && t.rows_ != 1)
        fail("{}: data_{}: a key-value block needs exactly one row, it has {}", where(t), block.name,
             t.rows_);
      for (std::size_t c = 0; c < columns; ++c) {
        *w++ = '_';
        w = put(w, t.names_[c]);
        *w++ = ' ';
        w = put_cell(w, t, 0, c);
        *w++ = '\n';
      }
      *w++ = '\n';
      return w;
    }
    w = put(w, "loop_\n");
    for (std::size_t c = 0; c < columns; ++c) {
      *w++ = '_';
      w = put(w, t.names_[c]);
      w = fmt::format_to(w, " #{}\n", c + 1);
    }
    for (std::size_t row = 0; row < t.rows_; ++row) {
      for (std::size_t c = 0; c < columns; ++c) {
        if (c != 0) *w++ = ' ';
        w = put_cell(w, t, row, c);
      }
      *w++ = '\n';
    }
    *w++ = '\n';
    return w;
  }

  const StarFile& star_;
};

std::string format_star(const StarFile& star) { return StarWriterAccess(star).format(); }

void write_star(const std::filesystem::path& path, const StarFile& star) {
  write_text_file(path, format_star(star));
}

}  // namespace emcryo::io
