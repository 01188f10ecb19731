#!/usr/bin/env bash
# 3D refinement, emcryo refine vs RELION 3.1.3 auto-refine (relion_refine_mpi, 3 ranks), on a
# simulated 5000-particle 1TII set (64 px, 2 Å/px, SNR 0.05, uniform views).
#
# Usage: bench/refine_vs_relion.sh [WORKDIR]      (default /tmp/emcryo_refine_bench)
# Environment: EMCRYO (binary, default build/apps/emcryo), SKIP_RELION=1 / SKIP_EMCRYO=1 to rerun
# one side only (the other's results are reused), PARTICLES (default 5000).
#
# The same search for both: initial reference = the true map, low-passed to 30 Å by each program
# (--ini-high / --ini_high 30); first iteration scored by normalised cross-correlation (RELION:
# --firstiter_cc, the reference is not on the particles' grey scale); global angular step 15°
# (RELION healpix order 2 = 15°, oversampling 1; emcryo --initial-step 15); offsets +/- 3 px in
# 1 px steps; mask diameter 110 Å; C1. RELION reads the STAR without pose columns (it would
# otherwise start from the true offsets), as does emcryo. Each runs alone on the machine with 2
# cores: emcryo with 2 OpenMP threads, RELION as mpirun -np 3 (one master + two workers, --j 1).
# Wall time and CPU from /usr/bin/time -v; peak memory is the largest sum of RSS over all of the
# program's processes, sampled every second (for MPI, time -v would only see the largest rank).
# Scores from bench/eval_refine.py: median pose error against the true poses and FSC of the final
# unfiltered full map against the true map, both masked by the same soft sphere.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
W=${1:-/tmp/emcryo_refine_bench}
EMCRYO=${EMCRYO:-$root/build/apps/emcryo}
NPART=${PARTICLES:-5000}
PY=/usr/bin/python3
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true)

mkdir -p "$W"
W=$(cd "$W" && pwd)
D=$W/sim
if [[ ! -f $D/truth.star ]]; then
  rm -rf "$D"
  "$EMCRYO" simulate --model "$root/data/1tii.pdb.gz" --out "$D" --particles "$NPART" --box 64 --pixel-size 2.0 \
    --snr 0.05 --seed 11 > "$W/simulate.log" 2>&1
  $PY "$here/eval_class2d.py" --strip "$D/particles.star" "$D/particles_blind.star"
fi

# peak_rss_sampler PATTERN OUTFILE: every second, sum VmRSS of processes whose command line
# matches PATTERN; keep the maximum (MiB) in OUTFILE. Runs until killed.
peak_rss_sampler() {
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
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.log" 2>&1 || { kill $sampler; return 1; }
  kill $sampler
}
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"; }
cpu_s() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s}' "$1"; }

if [[ -z ${SKIP_EMCRYO:-} ]]; then
  # Both of emcryo's modes: poses maximised (default) and --adaptive-marginalization (RELION's
  # auto-refine always marginalises).
  rm -rf "$W/emcryo" "$W/emcryo_marg"
  common=(--particles "$D/particles_blind.star" --ref "$D/truth_class001.mrc" --ini-high 30 --initial-step 15 --offset-range 3
          --offset-step 1 --particle-diameter 110)
  timed emcryo "emcryo refine" "$EMCRYO" refine "${common[@]}" --out "$W/emcryo"
  timed emcryo_marg "emcryo refine" "$EMCRYO" refine "${common[@]}" --out "$W/emcryo_marg" --adaptive-marginalization
fi

if [[ -z ${SKIP_RELION:-} ]]; then
  rm -rf "$W/relion"
  mkdir -p "$W/relion"
  # RELION resolves rlnImageName relative to the working directory: run it from the data folder.
  (cd "$D" && timed relion "relion_refine_mpi" mpirun --allow-run-as-root --oversubscribe -np 3 relion_refine_mpi \
    --o "$W/relion/run" --auto_refine --split_random_halves --i particles_blind.star --ref truth_class001.mrc \
    --firstiter_cc --ini_high 30 --particle_diameter 110 --ctf --flatten_solvent --zero_mask --oversampling 1 \
    --healpix_order 2 --auto_local_healpix_order 4 --offset_range 3 --offset_step 1 --sym C1 \
    --low_resol_join_halves 40 --norm --scale --j 1 --pool 3 --pad 2 --dont_combine_weights_via_disc --random_seed 1)
fi

for v in emcryo emcryo_marg; do
  $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$W/$v/particles.star" --map "$W/$v/map_unfil.mrc" \
    --true-map "$D/truth_class001.mrc" --label "$v" --json "$W/${v}_eval.json"
  # The first half map too: the like-for-like map when RELION is scored at an unfinished iteration.
  $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$W/$v/particles.star" --map "$W/$v/half1_unfil.mrc" \
    --true-map "$D/truth_class001.mrc" --label "$v (half map 1)" --json "$W/${v}_half1_eval.json"
done
# RELION's final outputs, or (when its run was stopped before convergence) those of its last
# finished iteration, labelled as such.
relion_data=$W/relion/run_data.star relion_map=$W/relion/run_class001.mrc relion_label=relion
if [[ ! -f $relion_data ]]; then
  last=$(ls "$W"/relion/run_it*_half1_model.star 2>/dev/null | sed 's/.*run_it0*\([0-9]*\)_half1_model.star/\1/' | sort -n | tail -1)
  relion_data=$(printf '%s/relion/run_it%03d_data.star' "$W" "$last")
  relion_map=$(printf '%s/relion/run_it%03d_half1_class001.mrc' "$W" "$last")
  relion_label="relion (stopped; iteration $last, half map 1)"
fi
$PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$relion_data" --map "$relion_map" \
  --true-map "$D/truth_class001.mrc" --label "$relion_label" --json "$W/relion_eval.json"

rl_wall=$(wall_s "$W/relion.time")
if [[ -z $rl_wall ]]; then
  # /usr/bin/time was stopped together with RELION: wall time from the start stamp in relion.cmd
  # to the last finished iteration's files (what was scored above).
  start=$(date -d "$(sed -n 's/^\[\([^]]*\)\].*/\1/p' "$W/relion.cmd")" +%s)
  rl_wall=$(( $(stat -c %Y "$relion_data") - start ))
fi
{
  echo "data: $NPART particles, 64 px, 2 Å/px, SNR 0.05; C1; start: true map low-passed to 30 Å"
  echo "emcryo: checkout $rev"
  for v in emcryo emcryo_marg; do
    printf '%s: wall %.1f s, CPU (user+sys) %s s, peak memory %s MiB, %s\n' "$v" "$(wall_s "$W/$v.time")" "$(cpu_s "$W/$v.time")" \
      "$(cat "$W/$v.peak_mib")" "$(grep -o 'refine: [0-9.]* Å after.*' "$W/$v.log" | tail -1)"
  done
  printf 'relion: wall %.1f s, CPU (user+sys) %s s, peak memory %s MiB (3 ranks), %s %s\n' "$rl_wall" "$(cpu_s "$W/relion.time")" \
    "$(cat "$W/relion.peak_mib")" "$(grep -o 'Final resolution.*' "$W/relion.log" | tail -1)" \
    "$(grep -q 'terminated by signal' "$W/relion.time" && echo "(stopped before convergence: $relion_label)")"
  for v in emcryo emcryo_marg; do
    awk -v a="$rl_wall" -v b="$(wall_s "$W/$v.time")" -v v="$v" 'BEGIN {printf "wall-time ratio relion/%s: %.1f\n", v, a / b}'
  done
  $PY -c 'import json, sys
for f in sys.argv[1:]:
    e = json.load(open(f))
    print("%s: median pose error %.2f deg, <5 deg %.1f%%, FSC vs true map: 0.5 at %.2f A, 0.143 at %.2f A" % (e["label"],
          e["median_pose_error_deg"], 100 * e["fraction_under_5deg"], e["fsc_vs_true_0.5_A"], e["fsc_vs_true_0.143_A"]))' \
    "$W/emcryo_eval.json" "$W/emcryo_half1_eval.json" "$W/emcryo_marg_eval.json" "$W/emcryo_marg_half1_eval.json" "$W/relion_eval.json"
} | tee "$W/summary.txt"
