#!/usr/bin/env bash
# On the device tool's 16-core host, CPU only: builds emcryo with MPI and without CUDA (so no rank
# touches the GPU), then bench/mpi_scaling.sh for class2d and for refine, each within its own
# time limit (C2D_LIMIT, REF_LIMIT seconds, both cut to fit DEADLINE) so that what was measured comes back. Results:
# $OUT/mpi_scaling_class2d.txt, $OUT/mpi_scaling_refine.txt, the host in $OUT/mpi_env.txt (lscpu
# in full), every run's log in $OUT/logs.tar.gz. Sizes and combinations: bench/mpi_scaling.sh's
# environment (C2D_PARTICLES, C2D_ITERATIONS, REF_PARTICLES, REF_ITERATIONS, COMBOS, RUN_LIMIT, BIND).
#   OUT=... C2D_PARTICLES=20000 C2D_ITERATIONS=1 REF_PARTICLES=10000 REF_ITERATIONS=2 bash bench/gpu/device_mpi_scaling.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/lib.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
{ which mpirun; mpirun --version | head -1; lscpu; nproc; free -g | head -2; git log -1 --format=%h 2>/dev/null; } > "$OUT/mpi_env.txt" 2>&1
s0=$(now) s=$(now)
if [[ ! -x build-cpu/apps/emcryo ]]; then
  [[ -d .devinc ]] && cp -r .devinc/* /usr/include/
  { cmake -S . -B build-cpu -DCMAKE_BUILD_TYPE=Release -DEMCRYO_CUDA=OFF -DEMCRYO_BUILD_TESTS=OFF -DEMCRYO_BUILD_BENCH=OFF > /tmp/cmake.log 2>&1 &&
    cmake --build build-cpu -j16 --target emcryo > /tmp/build.log 2>&1; } || { tail -30 /tmp/build.log /tmp/cmake.log > "$OUT/build_fail.txt"; exit 1; }
  grep -i "mpi\|cuda" /tmp/cmake.log >> "$OUT/mpi_env.txt"
fi
echo "build: $(since "$s") s" >> "$OUT/mpi_env.txt"
exe="$(pwd)/build-cpu/apps/emcryo"
# DEADLINE (seconds from the start of this script, default 530): the jobs' limits shrink to fit
# it, so the tables and logs are copied to $OUT before the device call's own limit.
left() { awk -v a="$s0" -v b="$(now)" -v d="${DEADLINE:-530}" 'BEGIN {printf "%d", d - (b - a) - 15}'; }
c2d_limit=$(( $(left) * ${C2D_SHARE:-55} / 100 )); ((c2d_limit > ${C2D_LIMIT:-100000})) && c2d_limit=$C2D_LIMIT
echo "class2d limit: $c2d_limit s" >> "$OUT/mpi_env.txt"
JOBS=class2d timeout "$c2d_limit" bash bench/mpi_scaling.sh -e "$exe" /tmp/mpi_scaling_class2d
cp /tmp/mpi_scaling_class2d/mpi_scaling.txt "$OUT/mpi_scaling_class2d.txt" 2>/dev/null
ref_limit=$(left); ((ref_limit > ${REF_LIMIT:-100000})) && ref_limit=$REF_LIMIT
echo "refine limit: $ref_limit s" >> "$OUT/mpi_env.txt"
JOBS=refine timeout "$ref_limit" bash bench/mpi_scaling.sh -e "$exe" /tmp/mpi_scaling_refine
cp /tmp/mpi_scaling_refine/mpi_scaling.txt "$OUT/mpi_scaling_refine.txt" 2>/dev/null
(cd /tmp && tar czf "$OUT/logs.tar.gz" mpi_scaling_*/*.log mpi_scaling_*/*/run.log 2>/dev/null)
true
