// IEEE 754 half precision (MRC mode 12) conversion.
#pragma once
#include <cstddef>
#include <cstdint>

namespace emcryo {

/// F16C instructions where the CPU has them (chosen at run time), else one value at a time; the
/// same IEEE conversion (round to nearest even) either way.
void half_to_float(const std::uint16_t* in, float* out, std::size_t count);
void float_to_half(const float* in, std::uint16_t* out, std::size_t count);

namespace detail {
/// The one-value-at-a-time conversions, for the test that the two give the same bits.
void half_to_float_without_f16c(const std::uint16_t* in, float* out, std::size_t count);
void float_to_half_without_f16c(const float* in, std::uint16_t* out, std::size_t count);
}  // namespace detail

}  // namespace emcryo
