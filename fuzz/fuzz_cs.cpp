// The cryoSPARC .cs reader (a NumPy .npy structured array): any bytes open as a table or fail with
// emcryo::Error; an accepted table must let every field of every record be read, and its particle
// conversion must succeed or fail cleanly.
#include <cstdint>
#include <cstdlib>

#include "emcryo/io/cs.hpp"
#include "emcryo/io/cs_particles.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = emcryo::fuzz::scratch_dir() / "input.cs";
  emcryo::fuzz::write_file(path, data, size);
  emcryo::fuzz::expect_clean_error([&] {
    const emcryo::io::CsTable cs = emcryo::io::read_cs(path);
    for (std::size_t row = 0; row < cs.rows() && row < 64; ++row)
      for (int f = 0; f < static_cast<int>(cs.fields().size()); ++f) {
        const auto& field = cs.fields()[static_cast<std::size_t>(f)];
        emcryo::fuzz::expect_clean_error([&] { (void)cs.text(row, f); });
        emcryo::fuzz::expect_clean_error([&] { (void)cs.number(row, f); });
        (void)field;
      }
    (void)emcryo::io::star_from_cs(cs, "");
  });
  return 0;
}
