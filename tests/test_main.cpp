// Test entry: same BLAS start-up as the program, so tests run the kernels users get.
#include <gtest/gtest.h>

#include "emcryo/core/mpi.hpp"
#include "emcryo/core/runtime.hpp"

int main(int argc, char** argv) {
  emcryo::runtime::ensure_fast_runtime(argc, argv);
  emcryo::runtime::set_threads(0);  // as the program: OpenBLAS single-threaded
  emcryo::mpi::init(argc, argv);    // under mpirun, the MPI tests run across the ranks
  ::testing::InitGoogleTest(&argc, argv);
  const int failed = RUN_ALL_TESTS();
  emcryo::mpi::finalize();
  return failed;
}
