#!/usr/bin/env bash
# On the device tool's 16-core host (CPU only): builds emcryo with MPI, then bench/mpi_scaling.sh.
# Results in $OUT/mpi_scaling.txt and the run logs in $OUT/logs/.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/logs"
source bench/gpu/lib.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
{ which mpirun mpicxx; mpirun --version | head -1; } > "$OUT/mpi_env.txt" 2>&1
s=$(now)
build_emcryo 16 || { tail -30 /tmp/build.log /tmp/cmake.log > "$OUT/build_fail.txt"; exit 1; }
grep -i "mpi" /tmp/cmake.log >> "$OUT/mpi_env.txt"
echo "build: $(since "$s") s" >> "$OUT/mpi_env.txt"
# Bounded so that what was measured still comes back within the device call.
timeout "${BENCH_LIMIT:-330}" bash bench/mpi_scaling.sh -e "$(pwd)/build-dev/apps/emcryo" /tmp/mpi_scaling
cp /tmp/mpi_scaling/mpi_scaling.txt "$OUT/"
cp /tmp/mpi_scaling/*.log "$OUT/logs/" 2>/dev/null
true
