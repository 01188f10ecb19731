// The particle-set join (STAR rows x image stacks x optics groups). Any STAR text either reads
// or fails with emcryo::Error; once read() has accepted it, every accessor a job uses must work
// for every particle: a job must not stop halfway on a value read() let through.
#include <cstdint>
#include <cstdio>
#include <optional>
#include <cstdlib>
#include <string>
#include <vector>

#include "emcryo/io/mrc.hpp"
#include "emcryo/io/particles.hpp"
#include "emcryo/io/star.hpp"
#include "fuzz_support.hpp"

namespace {

namespace fs = std::filesystem;

// Stacks the STAR text may name (see fuzz/corpus/particles): a.mrcs 8x8x3, b.mrcs 8x8x2 in
// float16 and sub/c.mrcs 16x16x1 (another box).
const fs::path& project() {
  static const fs::path dir = [] {
    const fs::path& d = emcryo::fuzz::scratch_dir();
    fs::create_directories(d / "sub");
    std::vector<float> values(16 * 16 * 3);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 13) - 6.0f;
    emcryo::io::write_mrc(d / "a.mrcs", values.data(), 8, 8, 3, {1.5, true, false});
    emcryo::io::write_mrc(d / "b.mrcs", values.data(), 8, 8, 2, {1.5, true, true});
    emcryo::io::write_mrc(d / "sub/c.mrcs", values.data(), 16, 16, 1, {2.0, true, false});
    return d;
  }();
  return dir;
}

void use_like_a_job(const emcryo::io::ParticleSet& set) {
  const std::size_t n = std::min<std::size_t>(set.size(), 32);
  std::vector<std::size_t> rows;
  for (std::size_t i = 0; i < n; ++i) {
    (void)set.ctf(i);
    (void)set.pose(i);
    (void)set.random_subset(i);
    (void)set.class_number(i);
    (void)set.read_image(i);
    (void)set.portable_image_name(i);
    rows.push_back(i);
  }
  (void)set.half_sets(rows, 7);
  (void)emcryo::io::format_star(set.output_star(rows));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path star = project() / "p.star";
  emcryo::fuzz::write_file(star, data, size);
  std::optional<emcryo::io::ParticleSet> set;
  emcryo::fuzz::expect_clean_error([&] { set.emplace(emcryo::io::ParticleSet::read(star)); });
  if (!set) return 0;
  emcryo::fuzz::expect_clean_error([&] { set->check_pixel_size_against_stacks(); });
  try {
    use_like_a_job(*set);
  } catch (const emcryo::Error& e) {
    std::fprintf(stderr, "accepted by read(), then failed: %s\n", e.what());
    std::abort();
  }
  return 0;
}
