#!/usr/bin/env bash
# 3D classification with alignment, K=2: emcryo hetero-refine vs RELION 3.1.3 Class3D
# (relion_refine --K 2, --healpix_order 1, 15 iterations, --maxsig 300, --j 2), on one simulated
# set: Munc18-syntaxin (2XHE) and Munc18 alone (its chain A), 50:50, in one frame
# (simulate --common-centre), 64 px, 2 Å/px, SNR 0.05, uniform views.
#
# Usage: bench/hetero_vs_relion.sh [WORKDIR]      (default /tmp/emcryo_hetero_bench)
# Environment: EMCRYO (binary, default build/apps/emcryo), PARTICLES (default 2000),
# EMCRYO_RUNS (emcryo runs this many times, default 1, and as many again after RELION; the median
# wall is reported: a VM's speed drifts by 10-20% between runs), SKIP_RELION=1 / SKIP_EMCRYO=1 (reuse the other side's results), RELION_TIMEOUT (seconds, default
# 7200: RELION is stopped there and its last finished iteration is scored).
#
# Both start from one map: the complex's true map, low-passed to 30 Å by each program (RELION:
# --firstiter_cc, the reference is not on the particles' grey scale). Both read the STAR without
# pose columns. Offsets +/- 3 px in 1 px steps; mask diameter 115 Å; C1. Wall time from
# /usr/bin/time -v; peak memory = largest RSS sum over the program's processes, sampled each second.
# Scores from bench/eval_hetero.py: assignment accuracy (best renaming of the classes) and per class
# the resolution where the FSC of its map to its true map falls to 0.5.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
W=${1:-/tmp/emcryo_hetero_bench}
EMCRYO=${EMCRYO:-$root/build/apps/emcryo}
NPART=${PARTICLES:-2000}
PY=/usr/bin/python3
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true)

mkdir -p "$W"
W=$(cd "$W" && pwd)
D=$W/sim
if [[ ! -f $D/truth.star ]]; then
  rm -rf "$D"
  "$EMCRYO" simulate --model "$root/bench/heldout_models/2XHE.pdb.gz" --model "$root/tests/data/2xhe_chain_A.pdb.gz" --common-centre \
    --out "$D" --particles "$NPART" --box 64 --pixel-size 2.0 --snr 0.05 --seed 11 > "$W/simulate.log" 2>&1
  $PY "$here/eval_class2d.py" --strip "$D/particles.star" "$D/particles_blind.star"
fi

peak_rss_sampler() {  # PATTERN OUTFILE: the largest sum of VmRSS (MiB) of matching processes
  local pattern=$1 out=$2 peak=0
  while true; do
    local sum
    sum=$(for p in $(pgrep -f "$pattern" || true); do awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done | awk '{s += $1} END {print int(s / 1024)}')
    if (( sum > peak )); then peak=$sum; echo "$peak" > "$out"; fi
    sleep 1
  done
}
timed() {  # timed NAME PATTERN CMD...
  local name=$1 pattern=$2; shift 2
  echo "[$(date '+%F %T')] $name: $*" | tee "$W/$name.cmd"
  echo 0 > "$W/$name.peak_mib"
  peak_rss_sampler "$pattern" "$W/$name.peak_mib" &
  local sampler=$!
  local rc=0
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.log" 2>&1 || rc=$?
  kill $sampler
  return $rc
}
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"; }

if [[ -z ${SKIP_EMCRYO:-} ]]; then
  emcryo_walls=()
  for ((run = 1; run <= ${EMCRYO_RUNS:-1}; run++)); do
    rm -rf "$W/emcryo"
    timed emcryo "hetero-refine --particles" "$EMCRYO" -j 2 hetero-refine --particles "$D/particles_blind.star" --ref "$D/truth_class001.mrc" \
      --classes 2 --ini-high 30 --initial-step 15 --offset-range 3 --offset-step 1 --particle-diameter 115 --max-iterations 12 --out "$W/emcryo"
    emcryo_walls+=("$(wall_s "$W/emcryo.time")")
  done
  printf '%s\n' "${emcryo_walls[@]}" > "$W/emcryo.walls"
fi

if [[ -z ${SKIP_RELION:-} ]]; then
  rm -rf "$W/relion"
  mkdir -p "$W/relion"
  (cd "$D" && timed relion "relion_refine --o" timeout "${RELION_TIMEOUT:-7200}" relion_refine \
    --o "$W/relion/run" --i particles_blind.star --ref truth_class001.mrc --firstiter_cc --ini_high 30 --K 2 --iter 15 \
    --tau2_fudge 4 --particle_diameter 115 --ctf --flatten_solvent --zero_mask --oversampling 1 --healpix_order 1 \
    --offset_range 3 --offset_step 1 --sym C1 --norm --scale --maxsig 300 --pad 2 --j 2) || echo "relion stopped (rc $?)"
  # With several emcryo runs, as many again after RELION (the VM's speed drifts over RELION's minutes):
  # the reported wall is the median of the runs on both sides of it.
  if [[ -z ${SKIP_EMCRYO:-} ]] && (( ${EMCRYO_RUNS:-1} > 1 )); then
    for ((run = 1; run <= EMCRYO_RUNS; run++)); do
      rm -rf "$W/emcryo_after"
      timed emcryo_after "hetero-refine --particles" "$EMCRYO" -j 2 hetero-refine --particles "$D/particles_blind.star" \
        --ref "$D/truth_class001.mrc" --classes 2 --ini-high 30 --initial-step 15 --offset-range 3 --offset-step 1 \
        --particle-diameter 115 --max-iterations 12 --out "$W/emcryo_after"
      wall_s "$W/emcryo_after.time" >> "$W/emcryo.walls"
    done
    rm -rf "$W/emcryo_after"
  fi
fi

{
  echo "## hetero_vs_relion $(date '+%F %T') rev $rev, $NPART particles, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  if [[ -f $W/emcryo/particles.star ]]; then
    walls=$( [[ -f $W/emcryo.walls ]] && cat "$W/emcryo.walls" || wall_s "$W/emcryo.time")
    median=$(sort -g <<< "$walls" | sed -n "$(( ($(wc -l <<< "$walls") + 1) / 2 ))p")
    echo "emcryo hetero-refine: wall $median s (median of: $(echo $walls)), peak $(cat "$W/emcryo.peak_mib") MiB (last run)"
    $PY "$here/eval_hetero.py" "$D/truth.star" "$W/emcryo/particles.star" --maps "$W/emcryo/class_001.mrc" "$W/emcryo/class_002.mrc" \
      --truth-maps "$D/truth_class001.mrc" "$D/truth_class002.mrc"
  fi
  last=$(ls "$W"/relion/run_it*_data.star 2>/dev/null | sort | tail -1 || true)
  if [[ -n $last ]]; then
    it=${last##*_it}; it=${it%%_data.star}
    echo "relion Class3D: wall $(wall_s "$W/relion.time") s, peak $(cat "$W/relion.peak_mib") MiB, last iteration $it"
    $PY "$here/eval_hetero.py" "$D/truth.star" "$last" --maps "$W/relion/run_it${it}_class001.mrc" "$W/relion/run_it${it}_class002.mrc" \
      --truth-maps "$D/truth_class001.mrc" "$D/truth_class002.mrc"
  fi
} | tee "$W/summary.txt"
