#!/usr/bin/env bash
# 2D classification, emcryo vs RELION 3.1 (relion_refine, CPU), on a simulated 12-view set.
#
# Usage: bench/class2d_vs_relion.sh [WORKDIR] [ITERATIONS]
#   WORKDIR     default /tmp/emcryo_class2d_bench (wiped and re-created)
#   ITERATIONS  default 15, the same for both programs
# Environment:
#   EMCRYO        emcryo binary (default build/apps/emcryo of this checkout)
#   RELION_INPUT  blind (default): both programs read particles_blind.star, the simulated STAR
#                 without rlnAngle*/rlnOrigin* columns. The simulated particles.star carries the
#                 true poses; emcryo class2d ignores them, but relion_refine starts each particle
#                 from its stored offsets (and searches +/- offset_range around them), so the
#                 file as written would hand RELION the true centring.
#                 full: RELION reads particles.star as simulated (true offsets), emcryo the same.
#   RELION_OVERSAMPLING  default 1 (RELION's default: a fine pass at psi_step/2, offset_step/2 over
#                 the significant coarse samples). 0 = RELION searches exactly emcryo's grid.
#   SKIP_RELION=1 / SKIP_EMCRYO=1  run only one side (the other's earlier results are reused)
#   BLAS_PEAK     measured sgemm GFLOP/s (2 threads) to compare the E-step rate with; default:
#                 run build/bench/bench_blas 0.5 and take its best 2-thread figure.
#
# Both run one after the other with 2 threads, under /usr/bin/time -v (wall time, peak RSS).
# Scores (bench/eval_class2d.py): adjusted Rand index of classes vs true views, median in-plane
# angle error after removing each class's circular-median offset.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
W=${1:-/tmp/emcryo_class2d_bench}
N=${2:-15}
EMCRYO=${EMCRYO:-$root/build/apps/emcryo}
PY=/usr/bin/python3
RELION_INPUT=${RELION_INPUT:-blind}
RELION_OVERSAMPLING=${RELION_OVERSAMPLING:-1}
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true)

mkdir -p "$W"
W=$(cd "$W" && pwd)
D=$W/sim

if [[ ! -f $D/truth.star ]]; then
  rm -rf "$D"
  "$EMCRYO" simulate --model "$root/data/1tii.pdb.gz" --out "$D" --particles 3000 --box 64 --pixel-size 2.0 \
    --snr 0.05 --orientations views --views 12 --seed 7 > "$W/simulate.log" 2>&1
  $PY "$here/eval_class2d.py" --strip "$D/particles.star" "$D/particles_blind.star"
fi
case $RELION_INPUT in
  blind) IN=particles_blind.star ;;
  full) IN=particles.star ;;
  *) echo "RELION_INPUT must be blind or full" >&2; exit 2 ;;
esac

timed() {  # timed NAME CMD...: run CMD under /usr/bin/time -v, log to $W/NAME.log and $W/NAME.time
  local name=$1; shift
  echo "[$(date '+%F %T')] $name: $*" | tee "$W/$name.cmd"
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.log" 2>&1
}
wall_s() {  # seconds from a /usr/bin/time -v "Elapsed (wall clock)" line: [h:]mm:ss.ss
  awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"
}
cpu_s() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s}' "$1"; }
rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }

if [[ -z ${SKIP_EMCRYO:-} ]]; then
  rm -rf "$W/emcryo"
  # The same fine sampling as RELION's (psi 10 and offsets 2 px, oversampled once: 5 degrees and
  # 1 px); emcryo's coarse pass takes twice these steps. EXHAUSTIVE=1 scores everything at the full
  # limit (the FLOPs before the coarse-to-fine search).
  timed emcryo "$EMCRYO" class2d --particles "$D/$IN" --classes 12 --out "$W/emcryo" --iterations "$N" \
    --psi-step 5 --offset-range 5 --offset-step 1 --mask-diameter 120 ${EXHAUSTIVE:+--exhaustive}
fi

if [[ -z ${SKIP_RELION:-} ]]; then
  rm -rf "$W/relion"
  mkdir -p "$W/relion"
  # RELION resolves rlnImageName relative to the working directory: run it from the data folder.
  # No --ref and 2D images: 2D classification. --oversampling 1 (the default) makes the fine
  # pass sample psi_step/2 and offset_step/2.
  # RELION's usual speed settings, exactly those of the engine issue.
  (cd "$D" && timed relion relion_refine --i "$IN" --o "$W/relion/run" --K 12 --iter "$N" --tau2_fudge 2 --psi_step 10 \
    --strict_highres_exp 8 --ctf --flatten_solvent --zero_mask --norm --scale --oversampling "$RELION_OVERSAMPLING" \
    --offset_range 5 --offset_step 2 --maxsig 300 --dont_combine_weights_via_disc --pool 3 --pad 2 --random_seed 1 --j 2 \
    --particle_diameter 120)
fi

relion_data=$(printf '%s/relion/run_it%03d_data.star' "$W" "$N")
$PY "$here/eval_class2d.py" --truth "$D/truth.star" --est "$W/emcryo/particles.star" --label emcryo \
  --json "$W/emcryo_eval.json"
$PY "$here/eval_class2d.py" --truth "$D/truth.star" --est "$relion_data" --label relion --json "$W/relion_eval.json"

if [[ -z ${BLAS_PEAK:-} && -x $root/build/bench/bench_blas ]]; then
  "$root/build/bench/bench_blas" 0.5 > "$W/bench_blas.log" 2>&1
  BLAS_PEAK=$(awk '/^(square|class2d)/ {if ($(NF-2) > m) m = $(NF-2)} END {print m}' "$W/bench_blas.log")
fi

em_wall=$(wall_s "$W/emcryo.time")
rl_wall=$(wall_s "$W/relion.time")
{
  echo "input: $IN, $N iterations"
  echo "emcryo: $("$EMCRYO" --version 2>/dev/null | head -1) (checkout at start: $rev)"
  printf 'emcryo: wall %.1f s, CPU (user+sys) %s s, peak RSS %s MiB\n' "$em_wall" "$(cpu_s "$W/emcryo.time")" "$(rss_mib "$W/emcryo.time")"
  printf 'relion: wall %.1f s, CPU (user+sys) %s s, peak RSS %s MiB (oversampling %s)\n' "$rl_wall" "$(cpu_s "$W/relion.time")" "$(rss_mib "$W/relion.time")" "$RELION_OVERSAMPLING"
  awk -v a="$rl_wall" -v b="$em_wall" 'BEGIN {printf "wall-time ratio relion/emcryo: %.1f\n", a / b}'
  grep -o 'scoring [0-9.]* GFLOP' "$W/emcryo/run.log" | awk -v peak="${BLAS_PEAK:-0}" '
    {s += $2; n++}
    END {printf "emcryo scoring GEMMs: %.1f GFLOP over %d iterations (%.2f per iteration)", s, n, s / n
         if (peak > 0) printf "; sgemm peak measured by bench_blas (2 threads): %.0f GFLOP/s", peak
         printf "\n"}'
} | tee "$W/summary.txt"
