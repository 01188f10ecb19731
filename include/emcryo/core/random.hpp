// Seeded, reproducible random streams: one independent stream per (seed, item), so results do not
// depend on thread count or scheduling.
#pragma once
#include <cstdint>
#include <random>

namespace emcryo {

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// A generator for item `item` of a run seeded with `seed`.
inline std::mt19937_64 item_rng(std::uint64_t seed, std::uint64_t item) {
  return std::mt19937_64(splitmix64(splitmix64(seed) ^ (item * 0x2545F4914F6CDD1DULL + 1)));
}

}  // namespace emcryo
