// Test entry: same BLAS start-up as the program, so tests run the kernels users get.
#include <gtest/gtest.h>

#include "emcryo/core/runtime.hpp"

int main(int argc, char** argv) {
  emcryo::runtime::ensure_fast_blas(argc, argv);
  emcryo::runtime::set_threads(0);  // as the program: OpenBLAS single-threaded
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
