#!/usr/bin/env bash
# MPI scaling of class2d and refine: the same data with ranks x threads = 1x1, 2x1, 4x1, 8x1,
# 16x1, 1x16, 2x8, 4x4 (set COMBOS to change), wall time and parallel efficiency against 1x1, and
# a check that every run's answer (particles.star, and the maps' data bytes) equals 1x1's.
#   bench/mpi_scaling.sh [-e EXE] WORKDIR
# Prints a table to stdout (and WORKDIR/mpi_scaling.txt). Needs mpirun (OpenMPI).
# Environment: SCORING (global options; default "--cpu": CPU scaling even where a GPU is present,
# "" lets every rank score on the GPU), JOBS ("class2d refine"), COMBOS, RUN_LIMIT (s per run), C2D_PARTICLES,
# C2D_ITERATIONS, REF_PARTICLES, REF_ITERATIONS. Each run's log (with rank 0's "chunk reduction"
# lines: time computing, folding, waiting; bytes moved) is kept as WORKDIR/JOB-RxT.log.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exe="$here/../build/apps/emcryo"
if [[ ${1:-} == -e ]]; then exe=$2; shift 2; fi
work=${1:?usage: mpi_scaling.sh [-e EXE] WORKDIR}
combos=${COMBOS:-"1x1 2x1 4x1 8x1 16x1 1x16 2x8 4x4"}
limit=${RUN_LIMIT:-150}  # seconds per run at most
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$work"
report="$work/mpi_scaling.txt"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

{
  echo "host: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(mpirun --version 2>&1 | head -1); $(date -u +%F)"
  [[ " ${JOBS:-class2d refine} " == *" class2d "* ]] && "$exe" simulate --model "$here/../data/1tii.pdb.gz" --out "$work/c2d" --particles ${C2D_PARTICLES:-3000} --box 64 --pixel-size 2.0 --snr 0.05 \
    --orientations views --views 12 --seed 7 > /dev/null 2>&1
  [[ " ${JOBS:-class2d refine} " == *" refine "* ]] && "$exe" simulate --model "$here/heldout_models/2XHE.pdb.gz" --out "$work/ref" --particles ${REF_PARTICLES:-3000} --box 64 --pixel-size 2.5 --snr 0.03 \
    --seed 11 > /dev/null 2>&1
} | tee "$report"

class2d=(class2d --particles "$work/c2d/particles.star" --classes 12 --iterations ${C2D_ITERATIONS:-8} --psi-step 5 --offset-range 5 --offset-step 1
  --mask-diameter 120)
refine=(refine --particles "$work/ref/particles.star" --ref "$work/ref/truth_class001.mrc" --ini-high 30 --particle-diameter 140
  --offset-range 5 --offset-step 1 --max-poses --max-iterations ${REF_ITERATIONS:-4})

same_answer() {  # reference_dir dir: particles.star without comments, then every map's data (after the 1024-byte header)
  cmp -s <(grep -v '^#' "$1/particles.star") <(grep -v '^#' "$2/particles.star") || { echo "particles.star differs"; return; }
  for m in "$1"/*.mrc "$1"/*.mrcs; do
    [[ -f $m ]] || continue
    cmp -s -i 1024 "$m" "$2/$(basename "$m")" || { echo "$(basename "$m") differs"; return; }
  done
  echo "identical to 1x1"
}
# Seconds of the iterations (run.log's "iteration ..., X s" figures) and of rank 0's reductions.
phases() {
  local it red
  it=$(grep -o "iteration .*" "$1/run.log" 2>/dev/null | grep -o ", [0-9.]* s" | grep -o "[0-9.]*" | awk '{s += $1} END {printf "%.1f", s}')
  red=$(grep -o "rank 0: [0-9.]* s computing, [0-9.]* s folding, [0-9.]* s waiting" "$1/run.log" 2>/dev/null |
    awk '{c += $3; f += $6; w += $9} END {printf "%.1f / %.1f / %.1f", c, f, w}')
  echo "$it | $red"
}

for job in ${JOBS:-class2d refine}; do
  unset -n args 2>/dev/null; declare -n args=$job
  echo "| $job | ranks x threads | wall (s) | speed-up | efficiency | answer | iterations (s) | rank 0 computing / folding / waiting (s) |" | tee -a "$report"
  echo "|---|---|---|---|---|---|---|---|" | tee -a "$report"
  base=""
  for combo in $combos; do
    ranks=${combo%x*} threads=${combo#*x}
    out="$work/$job-$combo"
    rm -rf "$out"
    start=$(now)
    if ((ranks == 1)); then
      timeout "$limit" "$exe" ${SCORING---cpu} -j "$threads" "${args[@]}" --out "$out" > "$out.log" 2>&1
    else
      timeout "$limit" mpirun -np "$ranks" --bind-to none "$exe" ${SCORING---cpu} -j "$threads" "${args[@]}" --out "$out" > "$out.log" 2>&1
    fi
    rc=$? wall=$(since "$start")
    if ((rc != 0)); then echo "| $job | $combo | failed (rc $rc) | | | $(tail -1 "$out.log") |" | tee -a "$report"; continue; fi
    [[ -z $base ]] && base=$wall base_dir=$out
    speedup=$(awk -v a="$base" -v b="$wall" 'BEGIN {printf "%.2f", a / b}')
    eff=$(awk -v a="$base" -v b="$wall" -v p=$((ranks * threads)) 'BEGIN {printf "%.0f%%", 100 * a / b / p}')
    echo "| $job | $combo | $wall | $speedup | $eff | $(same_answer "$base_dir" "$out") | $(phases "$out") |" | tee -a "$report"
  done
done
