#include "emcryo/core/float16.hpp"

#include <cstring>

#if defined(__clang__) && __clang_major__ < 15
#include <immintrin.h>
#endif

namespace emcryo {

#if defined(__clang__) && __clang_major__ < 15
// clang 14 (Debian 12's, used only by the fuzz build) has no _Float16 on x86-64: the F16C
// instructions convert with the same IEEE round-to-nearest-even.
__attribute__((target("f16c"))) void half_to_float(const std::uint16_t* in, float* out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) out[i] = _cvtsh_ss(in[i]);
}

__attribute__((target("f16c"))) void float_to_half(const float* in, std::uint16_t* out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) out[i] = _cvtss_sh(in[i], _MM_FROUND_TO_NEAREST_INT);
}
#else
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
#endif

}  // namespace emcryo
