// IEEE 754 half precision (MRC mode 12) conversion.
#pragma once
#include <cstddef>
#include <cstdint>

namespace emcryo {

void half_to_float(const std::uint16_t* in, float* out, std::size_t count);
void float_to_half(const float* in, std::uint16_t* out, std::size_t count);

}  // namespace emcryo
