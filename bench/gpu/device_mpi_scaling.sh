#!/usr/bin/env bash
# On the device tool's 16-core host (CPU only): builds emcryo with MPI, then bench/mpi_scaling.sh
# for class2d and for refine, each within its own time limit (C2D_LIMIT, REF_LIMIT seconds) so that
# what was measured comes back. Results: $OUT/mpi_scaling_class2d.txt, $OUT/mpi_scaling_refine.txt,
# the environment in $OUT/mpi_env.txt, every run's log in $OUT/logs.tar.gz (the device tool returns
# at most 8 files).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/lib.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
{ which mpirun mpicxx; mpirun --version | head -1; lscpu | grep -E "Model name|^CPU\(s\)"; git log -1 --format=%h 2>/dev/null; } > "$OUT/mpi_env.txt" 2>&1
s=$(now)
if [[ ! -x build-dev/apps/emcryo ]]; then
  build_emcryo 16 || { tail -30 /tmp/build.log /tmp/cmake.log > "$OUT/build_fail.txt"; exit 1; }
  grep -i "mpi" /tmp/cmake.log >> "$OUT/mpi_env.txt"
fi
echo "build: $(since "$s") s" >> "$OUT/mpi_env.txt"
exe="$(pwd)/build-dev/apps/emcryo"
JOBS=class2d timeout "${C2D_LIMIT:-150}" bash bench/mpi_scaling.sh -e "$exe" /tmp/mpi_scaling_class2d
JOBS=refine timeout "${REF_LIMIT:-150}" bash bench/mpi_scaling.sh -e "$exe" /tmp/mpi_scaling_refine
for job in class2d refine; do cp "/tmp/mpi_scaling_$job/mpi_scaling.txt" "$OUT/mpi_scaling_$job.txt" 2>/dev/null; done
(cd /tmp && tar czf "$OUT/logs.tar.gz" mpi_scaling_*/*.log mpi_scaling_*/*/run.log 2>/dev/null)
true
