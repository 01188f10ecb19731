#!/usr/bin/env bash
# One command for a fresh Debian 12 machine: install what is missing (with the test oracles RELION
# and python3-mrcfile), build, run the whole test suite, then the unit tests once more under
# AddressSanitizer + UndefinedBehaviorSanitizer, then every fuzz target for 30 s (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-test-tools
(cd build && ctest --output-on-failure -j2 --timeout 600)

cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DEMCRYO_SANITIZE=ON \
  -DEMCRYO_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j"$(nproc)" --target test_core test_io test_image test_geometry test_em test_gpu test_jobs
# FFTW plans live for the whole process by design, so leak checking is off; ASan + UBSan check the rest.
(cd build-asan && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j2 -L unit --timeout 600)

# Fuzz targets (clang, libFuzzer, ASan + UBSan) in build-fuzz/, 30 s each on the corpus in fuzz/corpus/.
fuzz/run.sh 30
