#include "emcryo/core/float16.hpp"

#include <cstring>

namespace emcryo {

// g++ 12 supports _Float16 on x86-64 with correct IEEE rounding; the conversion vectorizes.
static_assert(sizeof(_Float16) == 2);

void half_to_float(const std::uint16_t* in, float* out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    _Float16 h;
    std::memcpy(&h, &in[i], 2);
    out[i] = static_cast<float>(h);
  }
}

void float_to_half(const float* in, std::uint16_t* out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    auto h = static_cast<_Float16>(in[i]);
    std::memcpy(&out[i], &h, 2);
  }
}

}  // namespace emcryo
