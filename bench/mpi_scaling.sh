#!/usr/bin/env bash
# MPI scaling of class2d and refine on the CPU: the same data with ranks x threads in COMBOS
# (default 1x1 16x1 8x1 4x1 2x1 4x4 2x8: the baseline and the 16-rank run first, so a time limit
# cuts the least telling runs), wall time and parallel efficiency against 1x1 (whole job, and its
# iterations alone), and a check that every run's answer (particles.star, the maps' data bytes)
# equals 1x1's.
#   bench/mpi_scaling.sh [-e EXE] WORKDIR
# Prints a table to stdout (and WORKDIR/mpi_scaling.txt). Needs mpirun (OpenMPI).
# Environment: SCORING (global options; default "--cpu": CPU scaling even where a GPU is present,
# "" lets every rank score on the GPU), JOBS ("class2d refine"), COMBOS, RUN_LIMIT (s per run),
# BIND (mpirun's --bind-to: none, the default, or core), C2D_PARTICLES, C2D_ITERATIONS,
# REF_PARTICLES, REF_ITERATIONS. Each run's log (with the "chunk reduction" lines: the folding
# rank's time computing, folding, waiting; every rank's computing least/mean/most; bytes moved) is kept as
# WORKDIR/JOB-RxT.log, its run.log as WORKDIR/JOB-RxT/run.log.
# CEILING=N (default 0: skip) also measures what the host allows any program, MPI or not: the job on
# 1/N of the particles (one rank's share at N ranks), once alone and then as N independent copies at
# once, single-threaded, no MPI. No communication and no imbalance can slow the copies, so
# alone / (mean of the copies) bounds the efficiency N ranks can reach on this host (clock, memory
# bandwidth and caches shared by busy cores).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exe="$here/../build/apps/emcryo"
if [[ ${1:-} == -e ]]; then exe=$2; shift 2; fi
work=${1:?usage: mpi_scaling.sh [-e EXE] WORKDIR}
combos=${COMBOS:-"1x1 16x1 8x1 4x1 2x1 4x4 2x8"}
limit=${RUN_LIMIT:-150}  # seconds per run at most
bind=${BIND:-none}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$work"
report="$work/mpi_scaling.txt"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
jobs=" ${JOBS:-class2d refine} "

{
  echo "host: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; $(mpirun --version 2>&1 | head -1); $(date -u +%F); --bind-to $bind"
  s=$(now)
  [[ $jobs == *" class2d "* && ! -f $work/c2d/particles.star ]] && "$exe" simulate --model "$here/../data/1tii.pdb.gz" --out "$work/c2d" \
    --particles ${C2D_PARTICLES:-3000} --box 64 --pixel-size 2.0 --snr 0.05 --orientations views --views 12 --seed 7 > /dev/null 2>&1 &
  [[ $jobs == *" refine "* && ! -f $work/ref/particles.star ]] && "$exe" simulate --model "$here/heldout_models/2XHE.pdb.gz" --out "$work/ref" \
    --particles ${REF_PARTICLES:-3000} --box 64 --pixel-size 2.5 --snr 0.03 --seed 11 > /dev/null 2>&1 &
  wait
  echo "data simulated in $(since "$s") s: class2d ${C2D_PARTICLES:-3000} particles, refine ${REF_PARTICLES:-3000} particles"
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
  echo "identical"
}
# Seconds of the iterations (run.log's "iteration ..., X s" figures).
iterations() {
  grep -E "iteration +[0-9/]+: resolution" "$1/run.log" 2>/dev/null | grep -o ", [0-9.]* s" | grep -o "[0-9.]*" | awk '{s += $1} END {printf "%.1f", s}'
}
# The folding ranks' reductions (computing / folding / waiting; refine's halves fold on ranks 0 and 1), and the ranks' computing least / most (summed over reductions).
reductions() {
  grep -o "rank [0-9]* folds: [0-9.]* s computing, [0-9.]* s folding, [0-9.]* s waiting" "$1/run.log" 2>/dev/null |
    awk '{c += $4; f += $7; w += $10} END {printf "%.1f / %.2f / %.1f", c, f, w}'
  printf " | "
  grep -o "ranks computing [0-9.]*/[0-9.]*/[0-9.]* s" "$1/run.log" 2>/dev/null | awk '{split($3, v, "/"); l += v[1]; m += v[3]} END {printf "%.1f / %.1f", l, m}'
}

for job in ${JOBS:-class2d refine}; do
  unset -n args 2>/dev/null; declare -n args=$job
  echo "| $job | ranks x threads | wall (s) | efficiency (wall) | iterations (s) | efficiency (iterations) | answer vs 1x1 | folding rank computing / folding / waiting (s) | ranks computing least / most (s) |" | tee -a "$report"
  echo "|---|---|---|---|---|---|---|---|---|" | tee -a "$report"
  base=""
  for combo in $combos; do
    ranks=${combo%x*} threads=${combo#*x}
    out="$work/$job-$combo"
    rm -rf "$out"
    start=$(now)
    if ((ranks == 1)); then
      timeout "$limit" "$exe" ${SCORING---cpu} -j "$threads" "${args[@]}" --out "$out" > "$out.log" 2>&1
    else
      timeout "$limit" mpirun -np "$ranks" --bind-to "$bind" "$exe" ${SCORING---cpu} -j "$threads" "${args[@]}" --out "$out" > "$out.log" 2>&1
    fi
    rc=$? wall=$(since "$start") its=$(iterations "$out")
    if ((rc != 0)); then echo "| $job | $combo | failed (rc $rc) after $wall s | | | | $(tail -1 "$out.log") | | |" | tee -a "$report"; continue; fi
    [[ -z $base ]] && base=$wall base_its=$its base_dir=$out
    eff=$(awk -v a="$base" -v b="$wall" -v p=$((ranks * threads)) 'BEGIN {printf "%.0f%%", 100 * a / b / p}')
    eff_its=$(awk -v a="$base_its" -v b="$its" -v p=$((ranks * threads)) 'BEGIN {if (b > 0) printf "%.0f%%", 100 * a / b / p}')
    echo "| $job | $combo | $wall | $eff | $its | $eff_its | $(same_answer "$base_dir" "$out") | $(reductions "$out") |" | tee -a "$report"
  done
done

# host_ceiling JOB N: the job on a 1/N-size set, alone and as N concurrent copies (see CEILING above).
host_ceiling() {
  local job=$1 n=$2 dir="$work/ceiling-$1" share
  unset -n cargs 2>/dev/null; declare -n cargs=$job
  if [[ $job == class2d ]]; then share=$(( ${C2D_PARTICLES:-3000} / n ));
    "$exe" simulate --model "$here/../data/1tii.pdb.gz" --out "$dir/data" --particles $share --box 64 --pixel-size 2.0 --snr 0.05 \
      --orientations views --views 12 --seed 7 > /dev/null 2>&1
  else share=$(( ${REF_PARTICLES:-3000} / n ));
    "$exe" simulate --model "$here/heldout_models/2XHE.pdb.gz" --out "$dir/data" --particles $share --box 64 --pixel-size 2.5 \
      --snr 0.03 --seed 11 > /dev/null 2>&1
  fi
  local a=() x; for x in "${cargs[@]}"; do a+=("${x/$work\/c2d/$dir/data}"); done
  local b=(); for x in "${a[@]}"; do b+=("${x/$work\/ref/$dir/data}"); done
  local start; start=$(now)
  timeout "$limit" "$exe" ${SCORING---cpu} -j 1 "${b[@]}" --out "$dir/alone" > "$dir/alone.log" 2>&1
  local alone; alone=$(since "$start")
  local i; for ((i = 0; i < n; i++)); do
    ( s=$(now); timeout "$limit" "$exe" ${SCORING---cpu} -j 1 "${b[@]}" --out "$dir/copy$i" > "$dir/copy$i.log" 2>&1; echo "$(since "$s")" > "$dir/copy$i.s" ) &
  done
  wait
  cat "$dir"/copy*.s | awk -v a="$alone" -v n="$n" -v j="$job" -v p="$share" '{s += $1; if ($1 > m) m = $1} END {
    printf "host ceiling, %s on %d particles: alone %.1f s; %d concurrent copies mean %.1f s, slowest %.1f s: per-process slowdown %.2fx, efficiency ceiling %.0f%%\n",
      j, p, a, n, s / n, m, s / n / a, 100 * a / (s / n)}' | tee -a "$report"
}
if (( ${CEILING:-0} > 1 )); then for job in ${JOBS:-class2d refine}; do host_ceiling "$job" "$CEILING"; done; fi
