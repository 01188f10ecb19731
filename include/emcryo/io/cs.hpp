// cryoSPARC .cs files: a NumPy .npy file (numpy.save) holding a one-dimensional structured array,
// one fixed-size record per particle. This is the container only: fields by name, typed cells.
// What the fields mean, and how they map to RELION's columns, is in io/cs_particles.hpp and
// docs/formats.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace emcryo::io {

/// One field of the record: NumPy's (name, dtype[, shape]).
struct CsField {
  std::string name;
  char kind = 'f';          // 'u' unsigned, 'i' signed, 'f' float, 'b' bool, 'S' bytes, 'U' UTF-32
  int item_bytes = 4;       // bytes of one element (for 'U': 4 per character)
  bool big_endian = false;
  std::vector<int> shape;   // empty for a scalar
  std::size_t offset = 0;   // within the record

  std::size_t elements() const;
  std::size_t bytes() const { return elements() * static_cast<std::size_t>(item_bytes); }
  /// NumPy's dtype string ("<f4", "|S92", "<U8").
  std::string dtype() const;
};

class CsTable {
 public:
  std::size_t rows() const { return rows_; }
  std::size_t record_bytes() const { return record_bytes_; }
  const std::vector<CsField>& fields() const { return fields_; }
  /// Field index by name ("alignments3D/pose"), or -1.
  int find(std::string_view name) const;
  bool has(std::string_view name) const { return find(name) >= 0; }

  /// Element `element` of a numeric or bool field as a double (u8 above 2^53 loses precision;
  /// use integer() for uids).
  double number(std::size_t row, int field, std::size_t element = 0) const;
  std::uint64_t integer(std::size_t row, int field, std::size_t element = 0) const;
  /// A bytes ('S') or text ('U') field without its trailing NULs.
  std::string text(std::size_t row, int field) const;

  /// Appends a field to the record layout; only before resize(). `dtype` as NumPy writes it
  /// ("<u8", "<f4", "|S64").
  int add_field(std::string name, std::string_view dtype, std::vector<int> shape = {});
  /// Sets the number of records (new ones are zero).
  void resize(std::size_t rows);
  void set_number(std::size_t row, int field, double value, std::size_t element = 0);
  void set_integer(std::size_t row, int field, std::uint64_t value, std::size_t element = 0);
  /// Fails when the text is longer than the field.
  void set_text(std::size_t row, int field, std::string_view value);

  /// The records as stored (little-endian unless a field says otherwise).
  const unsigned char* data_bytes() const { return data_.data(); }

  /// For error messages.
  std::string source_file;

 private:
  friend CsTable parse_cs(std::string bytes, const std::filesystem::path& path_for_messages);
  const unsigned char* cell(std::size_t row, int field, std::size_t element) const;
  unsigned char* cell(std::size_t row, int field, std::size_t element);
  const CsField& field_checked(int field, std::size_t element, char usage) const;

  std::vector<CsField> fields_;
  std::size_t rows_ = 0;
  std::size_t record_bytes_ = 0;
  std::vector<unsigned char> data_;
};

/// Reads a .cs/.npy file. Fails with "<file>: <problem>" for: not a NumPy file, a header that is
/// not a structured one-dimensional array, Fortran order, object ('O') fields (pickled Python
/// objects; re-save the file with fixed-width strings), nested records, truncated data.
CsTable read_cs(const std::filesystem::path& path);
CsTable parse_cs(std::string bytes, const std::filesystem::path& path_for_messages);
/// Writes NumPy format 1.0 (2.0 when the header exceeds 64 KiB), little-endian, atomically.
void write_cs(const std::filesystem::path& path, const CsTable& table);
std::string format_cs(const CsTable& table);

}  // namespace emcryo::io
