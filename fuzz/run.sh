#!/usr/bin/env bash
# Builds the fuzz targets (clang, libFuzzer, ASan + UBSan) in build-fuzz/ and runs each for a
# bounded time on its corpus. Usage: fuzz/run.sh [SECONDS per target, default 30] [TARGET...]
# Any crash, leak, UB report, timeout (> 10 s per input) or allocation over 1 GB fails the run;
# the input that caused it is left in build-fuzz/artifacts/. New inputs found go to a scratch
# corpus, not into the repository (add a useful one to fuzz/corpus/<target>/ by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(star mrc particles checkpoint cs)

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEMCRYO_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

mkdir -p build-fuzz/artifacts
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  echo "fuzz_$t: ${seconds} s"
  # detect_leaks stays on here (unlike the unit tests): the readers keep no process-wide caches.
  if ! UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    build-fuzz/fuzz/fuzz_"$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix=build-fuzz/artifacts/"$t"- \
      "$work" fuzz/corpus/"$t" >build-fuzz/fuzz_"$t".log 2>&1; then
    tail -n 40 build-fuzz/fuzz_"$t".log
    rm -rf "$work"
    echo "fuzz_$t: FAILED (input in build-fuzz/artifacts/, log in build-fuzz/fuzz_$t.log)"
    exit 1
  fi
  rm -rf "$work"
  # A target ended by -max_total_time skips its atexit clean-up: remove scratch folders of
  # processes that no longer run (fuzz_support.hpp names them emcryo_fuzz_<pid>).
  for d in /dev/shm/emcryo_fuzz_* /tmp/emcryo_fuzz_*; do
    [[ -d $d ]] && ! kill -0 "${d##*_}" 2>/dev/null && rm -rf "$d"
  done
  grep -a -E "^#[0-9]+[[:space:]]+DONE" build-fuzz/fuzz_"$t".log || tail -n 1 build-fuzz/fuzz_"$t".log
  grep -E "stat::number_of_executed_units" build-fuzz/fuzz_"$t".log || true
done
