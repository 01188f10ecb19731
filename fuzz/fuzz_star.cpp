// The STAR parser: any text parses or fails with emcryo::Error; what parses is written back
// without error and must read again to the same tables (the writer quotes whatever needs it).
#include <cstdint>
#include <cstdio>
#include <optional>
#include <cstdlib>
#include <string>

#include "emcryo/io/star.hpp"
#include "fuzz_support.hpp"

namespace {

using emcryo::io::StarFile;

void touch_every_column(const StarFile& star) {
  for (const auto& block : star.blocks) {
    const auto& t = block.table;
    for (std::size_t c = 0; c < t.columns(); ++c)
      emcryo::fuzz::expect_clean_error([&] { (void)t.numbers(static_cast<int>(c)); });
    if (t.rows() > 0 && t.columns() > 0)
      emcryo::fuzz::expect_clean_error([&] { (void)t.integer(t.rows() - 1, 0); });
  }
}

// Written-out text that reads back differently would lose a user's metadata.
void check_round_trip(const StarFile& star) {
  // The reader refuses what cannot be written back, so formatting must not fail.
  const std::string text = emcryo::io::format_star(star);
  const StarFile again = emcryo::io::parse_star(text, "round-trip.star");
  if (again.blocks.size() != star.blocks.size()) std::abort();
  for (std::size_t b = 0; b < star.blocks.size(); ++b) {
    const auto& t1 = star.blocks[b].table;
    const auto& t2 = again.blocks[b].table;
    if (t1.column_names() != t2.column_names()) std::abort();
    if (t1.columns() == 0) continue;  // an empty block has no rows to compare
    if (t1.rows() != t2.rows()) std::abort();
    for (std::size_t r = 0; r < t1.rows(); ++r)
      for (std::size_t c = 0; c < t1.columns(); ++c)
        if (t1.text(r, static_cast<int>(c)) != t2.text(r, static_cast<int>(c))) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::optional<StarFile> star;
  emcryo::fuzz::expect_clean_error(
      [&] { star.emplace(emcryo::io::parse_star(std::string(reinterpret_cast<const char*>(data), size), "fuzz.star")); });
  if (!star) return 0;
  touch_every_column(*star);
  try {
    check_round_trip(*star);
  } catch (const emcryo::Error& e) {
    std::fprintf(stderr, "parsed, but the round trip failed: %s\n", e.what());
    std::abort();
  }
  return 0;
}
