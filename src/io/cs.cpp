#include "emcryo/io/cs.hpp"

#include <algorithm>
#include <cmath>
#include <bit>
#include <charconv>
#include <cstring>
#include <utility>

#include "emcryo/core/error.hpp"
#include "emcryo/core/files.hpp"

namespace emcryo::io {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMagic = "\x93NUMPY";

// The .npy header is a Python dict literal. Only the literals numpy writes there are parsed:
// strings, integers, True/False, tuples, lists and dicts.
struct PyValue {
  enum class Type { string, integer, boolean, sequence, dict } type = Type::integer;
  std::string text;
  long long integer = 0;
  std::vector<PyValue> items;                           // tuple or list
  // dict: keys[i] -> values[i] (two vectors: a pair holding the still incomplete PyValue is not
  // allowed, and clang refuses it)
  std::vector<std::string> keys;
  std::vector<PyValue> values;
};

class PyLiteralParser {
 public:
  PyLiteralParser(std::string_view text, const std::string& file) : text_(text), file_(file) {}

  PyValue parse() {
    PyValue v = value();
    skip_blanks();
    if (pos_ != text_.size()) bad("unexpected text after the header dict");
    return v;
  }

 private:
  [[noreturn]] void bad(std::string_view what) const {
    fail("{}: not a NumPy file: header at character {}: {}", file_, pos_, what);
  }
  void skip_blanks() {
    while (pos_ < text_.size() && static_cast<unsigned char>(text_[pos_]) <= ' ') ++pos_;
  }
  bool take(char c) {
    skip_blanks();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  PyValue value() {
    skip_blanks();
    if (pos_ >= text_.size()) bad("ends early");
    const char c = text_[pos_];
    if (c == '\'' || c == '"') return string_value();
    if (c == '(' || c == '[') return sequence(c == '(' ? ')' : ']');
    if (c == '{') return dict();
    if (text_.substr(pos_, 4) == "True" || text_.substr(pos_, 5) == "False") {
      PyValue v;
      v.type = PyValue::Type::boolean;
      v.integer = text_[pos_] == 'T';
      pos_ += v.integer ? 4 : 5;
      return v;
    }
    PyValue v;
    // NumPy may write sizes as Python longs ("10L") in old files.
    auto [p, ec] = std::from_chars(text_.data() + pos_, text_.data() + text_.size(), v.integer);
    if (ec != std::errc()) bad("expected a value");
    pos_ = static_cast<std::size_t>(p - text_.data());
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;
    return v;
  }

  PyValue string_value() {
    const char quote = text_[pos_++];
    PyValue v;
    v.type = PyValue::Type::string;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\' && pos_ + 1 < text_.size()) ++pos_;
      v.text += text_[pos_++];
    }
    if (pos_ >= text_.size()) bad("unterminated string");
    ++pos_;
    return v;
  }

  PyValue sequence(char close) {
    ++pos_;
    PyValue v;
    v.type = PyValue::Type::sequence;
    while (!take(close)) {
      v.items.push_back(value());
      if (!take(',')) {
        if (!take(close)) bad("expected ',' or a closing bracket");
        break;
      }
    }
    return v;
  }

  PyValue dict() {
    ++pos_;
    PyValue v;
    v.type = PyValue::Type::dict;
    while (!take('}')) {
      PyValue key = value();
      if (key.type != PyValue::Type::string) bad("dict key is not a string");
      if (!take(':')) bad("expected ':'");
      v.keys.push_back(key.text);
      v.values.push_back(value());
      if (!take(',')) {
        if (!take('}')) bad("expected ',' or '}'");
        break;
      }
    }
    return v;
  }

  std::string_view text_;
  const std::string& file_;
  std::size_t pos_ = 0;
};

const PyValue* dict_entry(const PyValue& dict, std::string_view key) {
  for (std::size_t i = 0; i < dict.keys.size(); ++i)
    if (dict.keys[i] == key) return &dict.values[i];
  return nullptr;
}

// "<f4" -> kind 'f', 4 bytes, little-endian. Fails for what a .cs never holds.
CsField field_from_dtype(std::string name, std::string_view dtype, const std::string& file) {
  CsField f;
  f.name = std::move(name);
  if (dtype.find('O') != std::string_view::npos)
    fail("{}: field '{}' holds Python objects (dtype 'O'), which a .cs file cannot carry portably; "
         "save it with fixed-width strings (e.g. cryosparc-tools Dataset.save)",
         file, f.name);
  if (dtype.size() < 2) fail("{}: field '{}': unsupported dtype '{}'", file, f.name, dtype);
  std::size_t p = 0;
  if (dtype[0] == '<' || dtype[0] == '>' || dtype[0] == '|' || dtype[0] == '=') {
    f.big_endian = dtype[0] == '>';
    p = 1;
  }
  f.kind = dtype[p];
  int count = 0;
  auto [end, ec] = std::from_chars(dtype.data() + p + 1, dtype.data() + dtype.size(), count);
  if (ec != std::errc() || end != dtype.data() + dtype.size() || count <= 0 ||
      std::string_view("uifbSUV").find(f.kind) == std::string_view::npos)
    fail("{}: field '{}': unsupported dtype '{}'", file, f.name, dtype);
  f.item_bytes = f.kind == 'U' ? 4 * count : count;
  if ((f.kind == 'u' || f.kind == 'i') && count != 1 && count != 2 && count != 4 && count != 8)
    fail("{}: field '{}': unsupported integer size in '{}'", file, f.name, dtype);
  if (f.kind == 'f' && count != 4 && count != 8)
    fail("{}: field '{}': unsupported float size in '{}' (f4 and f8 are read)", file, f.name, dtype);
  return f;
}

template <typename T>
T load(const unsigned char* p, bool swap) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, p, sizeof(T));
  if (swap) std::reverse(bytes, bytes + sizeof(T));
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

template <typename T>
void store(unsigned char* p, T value) {  // always little-endian (x86-64, aarch64)
  static_assert(std::endian::native == std::endian::little);
  std::memcpy(p, &value, sizeof(T));
}

std::string descr_entry(const CsField& f) {
  std::string s = fmt::format("('{}', '{}'", f.name, f.dtype());
  if (!f.shape.empty()) {
    s += ", (";
    for (std::size_t i = 0; i < f.shape.size(); ++i) s += fmt::format("{},", f.shape[i]);
    if (f.shape.size() > 1) s.pop_back();
    s += ")";
  }
  return s + ")";
}

}  // namespace

std::size_t CsField::elements() const {
  std::size_t n = 1;
  for (int d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

std::string CsField::dtype() const {
  const char order = (kind == 'S' || kind == 'b' || kind == 'V' || item_bytes == 1) ? '|' : (big_endian ? '>' : '<');
  return fmt::format("{}{}{}", order, kind, kind == 'U' ? item_bytes / 4 : item_bytes);
}

int CsTable::find(std::string_view name) const {
  for (std::size_t i = 0; i < fields_.size(); ++i)
    if (fields_[i].name == name) return static_cast<int>(i);
  return -1;
}

const CsField& CsTable::field_checked(int field, std::size_t element, char usage) const {
  const CsField& f = fields_.at(static_cast<std::size_t>(field));
  const bool text_field = f.kind == 'S' || f.kind == 'U';
  if ((usage == 't') != text_field || f.kind == 'V')
    fail("{}: field '{}' ({}) is not {}", source_file, f.name, f.dtype(), usage == 't' ? "text" : "numeric");
  if (element >= f.elements())
    fail("{}: field '{}' has {} elements, element {} requested", source_file, f.name, f.elements(), element);
  return f;
}

const unsigned char* CsTable::cell(std::size_t row, int field, std::size_t element) const {
  const CsField& f = fields_[static_cast<std::size_t>(field)];
  return data_.data() + row * record_bytes_ + f.offset + element * static_cast<std::size_t>(f.item_bytes);
}

unsigned char* CsTable::cell(std::size_t row, int field, std::size_t element) {
  return const_cast<unsigned char*>(std::as_const(*this).cell(row, field, element));
}

double CsTable::number(std::size_t row, int field, std::size_t element) const {
  const CsField& f = field_checked(field, element, 'n');
  const unsigned char* p = cell(row, field, element);
  const bool s = f.big_endian;
  switch (f.kind) {
    case 'f': return f.item_bytes == 4 ? load<float>(p, s) : load<double>(p, s);
    case 'b': return *p != 0;
    case 'i':
      switch (f.item_bytes) {
        case 1: return load<std::int8_t>(p, s);
        case 2: return load<std::int16_t>(p, s);
        case 4: return load<std::int32_t>(p, s);
        default: return static_cast<double>(load<std::int64_t>(p, s));
      }
    default: return static_cast<double>(integer(row, field, element));
  }
}

std::uint64_t CsTable::integer(std::size_t row, int field, std::size_t element) const {
  const CsField& f = field_checked(field, element, 'n');
  const unsigned char* p = cell(row, field, element);
  const bool s = f.big_endian;
  if (f.kind == 'f' || f.kind == 'i') {
    // A float or signed field read as an index or uid: only whole values in range convert (a cast
    // of anything else is undefined; found by fuzz/fuzz_cs).
    const double v = number(row, field, element);
    if (!(v >= 0 && v < 18446744073709551616.0) || v != std::floor(v))
      fail("{}: record {}: field '{}': {} is not a valid index", source_file, row + 1, f.name, v);
    return static_cast<std::uint64_t>(v);
  }
  switch (f.item_bytes) {
    case 1: return *p;
    case 2: return load<std::uint16_t>(p, s);
    case 4: return load<std::uint32_t>(p, s);
    default: return load<std::uint64_t>(p, s);
  }
}

std::string CsTable::text(std::size_t row, int field) const {
  const CsField& f = field_checked(field, 0, 't');
  const unsigned char* p = cell(row, field, 0);
  std::string out;
  if (f.kind == 'S') {
    const auto* c = reinterpret_cast<const char*>(p);
    out.assign(c, strnlen(c, static_cast<std::size_t>(f.item_bytes)));
    return out;
  }
  // UTF-32 to UTF-8.
  for (int i = 0; i < f.item_bytes / 4; ++i) {
    const auto u = load<std::uint32_t>(p + 4 * i, f.big_endian);
    if (u == 0) break;
    if (u < 0x80) {
      out += static_cast<char>(u);
    } else if (u < 0x800) {
      out += static_cast<char>(0xC0 | (u >> 6));
      out += static_cast<char>(0x80 | (u & 0x3F));
    } else if (u < 0x10000) {
      out += static_cast<char>(0xE0 | (u >> 12));
      out += static_cast<char>(0x80 | ((u >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (u & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (u >> 18));
      out += static_cast<char>(0x80 | ((u >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((u >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (u & 0x3F));
    }
  }
  return out;
}

int CsTable::add_field(std::string name, std::string_view dtype, std::vector<int> shape) {
  if (rows_ > 0) fail("{}: field '{}' added after the records", source_file, name);
  if (has(name)) fail("{}: duplicate field '{}'", source_file, name);
  CsField f = field_from_dtype(std::move(name), dtype, source_file);
  f.shape = std::move(shape);
  f.offset = record_bytes_;
  record_bytes_ += f.bytes();
  fields_.push_back(std::move(f));
  return static_cast<int>(fields_.size() - 1);
}

void CsTable::resize(std::size_t rows) {
  rows_ = rows;
  data_.resize(rows * record_bytes_, 0);
}

void CsTable::set_number(std::size_t row, int field, double value, std::size_t element) {
  const CsField& f = field_checked(field, element, 'n');
  unsigned char* p = cell(row, field, element);
  if (f.big_endian) fail("{}: field '{}': big-endian fields are read only", source_file, f.name);
  switch (f.kind) {
    case 'f':
      if (f.item_bytes == 4) store(p, static_cast<float>(value));
      else store(p, value);
      return;
    case 'b': *p = value != 0; return;
    case 'i':
      switch (f.item_bytes) {
        case 1: store(p, static_cast<std::int8_t>(value)); return;
        case 2: store(p, static_cast<std::int16_t>(value)); return;
        case 4: store(p, static_cast<std::int32_t>(value)); return;
        default: store(p, static_cast<std::int64_t>(value)); return;
      }
    default:
      if (value < 0) fail("{}: field '{}': negative value {} in an unsigned field", source_file, f.name, value);
      set_integer(row, field, static_cast<std::uint64_t>(value), element);
  }
}

void CsTable::set_integer(std::size_t row, int field, std::uint64_t value, std::size_t element) {
  const CsField& f = field_checked(field, element, 'n');
  unsigned char* p = cell(row, field, element);
  if (f.kind != 'u') return set_number(row, field, static_cast<double>(value), element);
  switch (f.item_bytes) {
    case 1: *p = static_cast<unsigned char>(value); return;
    case 2: store(p, static_cast<std::uint16_t>(value)); return;
    case 4: store(p, static_cast<std::uint32_t>(value)); return;
    default: store(p, value); return;
  }
}

void CsTable::set_text(std::size_t row, int field, std::string_view value) {
  const CsField& f = field_checked(field, 0, 't');
  if (f.kind != 'S') fail("{}: field '{}': only bytes ('S') fields are written", source_file, f.name);
  if (value.size() > static_cast<std::size_t>(f.item_bytes))
    fail("{}: record {}: field '{}': '{}' is longer than {} bytes", source_file, row, f.name, value,
         f.item_bytes);
  unsigned char* p = cell(row, field, 0);
  std::memset(p, 0, static_cast<std::size_t>(f.item_bytes));
  std::memcpy(p, value.data(), value.size());
}

CsTable parse_cs(std::string bytes, const fs::path& path_for_messages) {
  const std::string file = path_for_messages.string();
  if (bytes.size() < 10 || std::string_view(bytes).substr(0, 6) != kMagic) {
    if (bytes.starts_with("\x94" "CSDAT"))
      fail("{}: a compressed cryoSPARC dataset (CSDAT); save it in NumPy format (cryosparc-tools "
           "Dataset.save(path, format=NUMPY_FORMAT))",
           file);
    fail("{}: not a NumPy .npy/.cs file (no \\x93NUMPY magic)", file);
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  std::size_t header_length = 0, header_start = 0;
  if (major == 1) {
    header_length = load<std::uint16_t>(reinterpret_cast<const unsigned char*>(bytes.data()) + 8, false);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail("{}: truncated NumPy header", file);
    header_length = load<std::uint32_t>(reinterpret_cast<const unsigned char*>(bytes.data()) + 8, false);
    header_start = 12;
  } else {
    fail("{}: NumPy format version {} is not supported (1, 2 and 3 are)", file, major);
  }
  if (header_start + header_length > bytes.size()) fail("{}: truncated NumPy header", file);
  const std::string_view header(bytes.data() + header_start, header_length);
  const PyValue dict = PyLiteralParser(header, file).parse();
  if (dict.type != PyValue::Type::dict) fail("{}: NumPy header is not a dict", file);
  const PyValue* descr = dict_entry(dict, "descr");
  const PyValue* order = dict_entry(dict, "fortran_order");
  const PyValue* shape = dict_entry(dict, "shape");
  if (!descr || !shape) fail("{}: NumPy header lacks 'descr' or 'shape'", file);
  if (descr->type != PyValue::Type::sequence)
    fail("{}: not a structured array (descr is a plain dtype): a .cs file has named fields", file);
  if (shape->type != PyValue::Type::sequence || shape->items.size() != 1 ||
      shape->items[0].type != PyValue::Type::integer || shape->items[0].integer < 0)
    fail("{}: the array is not one-dimensional (one record per particle)", file);
  (void)order;  // irrelevant for a one-dimensional array

  CsTable t;
  t.source_file = file;
  for (const PyValue& entry : descr->items) {
    if (entry.type != PyValue::Type::sequence || entry.items.size() < 2 ||
        entry.items[0].type != PyValue::Type::string)
      fail("{}: malformed descr entry in the NumPy header", file);
    if (entry.items[1].type != PyValue::Type::string)
      fail("{}: field '{}' is a nested record, which is not supported", file, entry.items[0].text);
    std::string name = entry.items[0].text;
    if (name.empty()) name = fmt::format("(padding {})", t.fields_.size());  // numpy's alignment gaps
    // A sub-array's dimensions: whole numbers from 0 to 2^20 (a (-3,) shape wrapped the record size
    // and let reads run past the data; found by fuzz/fuzz_cs).
    constexpr long long kMaxDimension = 1 << 20;
    std::vector<int> dims;
    if (entry.items.size() > 2) {
      for (const PyValue& d : entry.items[2].items) {
        if (d.type != PyValue::Type::integer || d.integer < 0 || d.integer > kMaxDimension)
          fail("{}: field '{}': sub-array shape entry '{}' is not a whole number from 0 to {}", file, name,
               d.type == PyValue::Type::integer ? std::to_string(d.integer) : d.text, kMaxDimension);
        dims.push_back(static_cast<int>(d.integer));
      }
    }
    CsField f = field_from_dtype(name, entry.items[1].text, file);
    f.shape = std::move(dims);
    // Record and data sizes in range: a record of at most 2^30 bytes, the data at most 2^62.
    constexpr std::size_t kMaxRecordBytes = std::size_t{1} << 30;
    const double field_bytes = static_cast<double>(f.item_bytes) * [&] {
      double n = 1;
      for (int d : f.shape) n *= d;
      return n;
    }();
    if (field_bytes + static_cast<double>(t.record_bytes_) > static_cast<double>(kMaxRecordBytes))
      fail("{}: field '{}': records of more than {} bytes are not supported", file, name, kMaxRecordBytes);
    f.offset = t.record_bytes_;
    t.record_bytes_ += f.bytes();
    t.fields_.push_back(std::move(f));
  }
  t.rows_ = static_cast<std::size_t>(shape->items[0].integer);
  const std::size_t data_start = header_start + header_length;
  if (t.record_bytes_ > 0 && t.rows_ > (std::size_t{1} << 62) / t.record_bytes_)
    fail("{}: {} records of {} bytes: more data than any file holds", file, t.rows_, t.record_bytes_);
  const std::size_t need = t.rows_ * t.record_bytes_;
  if (bytes.size() - data_start < need)
    fail("{}: truncated: {} records of {} bytes need {} bytes of data, the file has {}", file, t.rows_,
         t.record_bytes_, need, bytes.size() - data_start);
  t.data_.assign(bytes.begin() + static_cast<std::ptrdiff_t>(data_start),
                 bytes.begin() + static_cast<std::ptrdiff_t>(data_start + need));
  return t;
}

CsTable read_cs(const fs::path& path) {
  if (!fs::exists(path)) fail("{}: no such file", path.string());
  return parse_cs(read_text_file(path), path);
}

std::string format_cs(const CsTable& table) {
  std::string descr;
  for (const CsField& f : table.fields()) descr += descr_entry(f) + ", ";
  if (!descr.empty()) descr.resize(descr.size() - 2);
  std::string header =
      fmt::format("{{'descr': [{}], 'fortran_order': False, 'shape': ({},), }}", descr, table.rows());
  // Version 1.0 holds a 16-bit header length; numpy pads the header with spaces and a newline so
  // that the data starts at a multiple of 64 bytes.
  const int major = header.size() + 1 + 10 > 65535 ? 2 : 1;
  const std::size_t prefix = major == 1 ? 10 : 12;
  const std::size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header += '\n';
  std::string out(kMagic);
  out += static_cast<char>(major);
  out += '\0';
  if (major == 1) {
    const auto n = static_cast<std::uint16_t>(header.size());
    out.append(reinterpret_cast<const char*>(&n), 2);
  } else {
    const auto n = static_cast<std::uint32_t>(header.size());
    out.append(reinterpret_cast<const char*>(&n), 4);
  }
  out += header;
  out.append(reinterpret_cast<const char*>(table.data_bytes()), table.rows() * table.record_bytes());
  return out;
}

void write_cs(const fs::path& path, const CsTable& table) { write_text_file(path, format_cs(table)); }

}  // namespace emcryo::io
