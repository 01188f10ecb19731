// nlohmann::json for checkpoints, with integers read safely. Include this instead of
// <nlohmann/json.hpp> in every file that reads a checkpoint (it must be seen before any get<int>).
//
// nlohmann converts a JSON number to an integer with a plain static_cast, so a damaged
// checkpoint holding "iteration": 1e300 is undefined behaviour (found by fuzz/fuzz_checkpoint).
// Here a number outside the integer's range, or a fraction, throws json::out_of_range, which the
// jobs already report as "damaged checkpoint".
#pragma once
#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

namespace nlohmann {

template <typename T>
struct adl_serializer<T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>> {
  template <typename Json>
  static void to_json(Json& j, T value) {
    ::nlohmann::to_json(j, value);
  }

  template <typename Json>
  static void from_json(const Json& j, T& value) {
    if (j.is_number_float()) {
      const double d = j.template get_ref<const typename Json::number_float_t&>();
      // min (0 or -2^k) and max + 1 (2^digits) are exact doubles, so the comparisons are exact.
      const double low = static_cast<double>(std::numeric_limits<T>::min());
      const double limit = std::ldexp(1.0, std::numeric_limits<T>::digits);
      if (!(d >= low && d < limit) || d != std::floor(d)) throw_out_of_range(j, std::to_string(d));
      value = static_cast<T>(d);
    } else if (j.is_number_unsigned()) {
      // get_ref, not get<>: get<> would come back here.
      const auto u = j.template get_ref<const typename Json::number_unsigned_t&>();
      if (!std::in_range<T>(u)) throw_out_of_range(j, std::to_string(u));
      value = static_cast<T>(u);
    } else if (j.is_number_integer()) {
      const auto i = j.template get_ref<const typename Json::number_integer_t&>();
      if (!std::in_range<T>(i)) throw_out_of_range(j, std::to_string(i));
      value = static_cast<T>(i);
    } else {
      ::nlohmann::from_json(j, value);  // the library's own error for a string, array...
    }
  }

 private:
  template <typename Json>
  [[noreturn]] static void throw_out_of_range(const Json& j, const std::string& shown) {
    throw Json::out_of_range::create(406, shown + " is not an integer in range", &j);
  }
};

}  // namespace nlohmann
