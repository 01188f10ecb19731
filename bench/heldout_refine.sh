#!/usr/bin/env bash
# Refine on held-out proteins (not 1TII, which the defaults were tuned on): three structures from
# Debian's python-biopython-doc test files (bench/heldout_models/: 2XHE, 7DDO, 6WQA), 2500
# particles each, 64 px, 2.5 Å/px, SNR 0.03, uniform views, started from the true map low-passed to
# 30 Å. Scores every run in WORKDIR against the truth (bench/eval_refine.py): median pose error
# and FSC to the true map at 0.5 and 0.143, plus the reconstruction from the true poses.
#
# Usage: bench/heldout_refine.sh [WORKDIR] [emcryo refine options...]
#   WORKDIR default /tmp/emcryo_heldout; each run goes to WORKDIR/<set>/<label>, label from $LABEL
#   (default "emcryo"). RELION results from bench/gpu/heldout_device.sh (RELION 5, GPU), copied to
#   WORKDIR/<set>/relion_data.star and relion_class001.mrc, are scored too. $SETS limits the run to
#   some of the sets (e.g. SETS=2XHE). EMCRYO_RUNS=N runs emcryo N times and reports the median wall
#   (with RELION3=1, N more times after RELION; the ratio uses the median of all 2N).
#   RELION3=1: RELION 3.1.3's auto-refine (Debian's relion_refine_mpi, 3 ranks) also runs on each set, right after
#   emcryo, with exactly the options issue 9 names (--healpix_order 1 --auto_local_healpix_order 3 --offset_range 5
#   --offset_step 2 --maxsig 300 --pool 3 ...), into WORKDIR/<set>/relion3; both are scored and the wall ratio printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
W=${1:-/tmp/emcryo_heldout}; shift || true
EMCRYO=${EMCRYO:-$root/build/apps/emcryo}
LABEL=${LABEL:-emcryo}
PY=/usr/bin/python3
mkdir -p "$W"
for m in 2XHE.pdb.gz 7DDO.pdb.gz 6WQA.cif.gz; do
  n=${m%%.*}; D=$W/$n
  [[ -z ${SETS:-} || " $SETS " == *" $n "* ]] || continue
  if [[ ! -f $D/truth.star ]]; then
    "$EMCRYO" simulate --model "$here/heldout_models/$m" --out "$D" --particles 2500 --box 64 --pixel-size 2.5 --snr 0.03 \
      --seed 11 > "$W/$n.simulate.log" 2>&1
    $PY "$here/eval_class2d.py" --strip "$D/particles.star" "$D/particles_blind.star"
  fi
  if [[ ! -f $D/truepose/map_unfil.mrc && ! -f $D/truepose/map.mrc ]]; then
    "$EMCRYO" reconstruct --particles "$D/particles.star" --out "$D/truepose" > "$W/$n.truepose.log" 2>&1
  fi
  walls=()
  run_emcryo() {  # LABEL: one timed refine into $D/LABEL, its wall appended to walls
    rm -rf "${D:?}/$1"
    local s
    s=$(date +%s.%N)
    "$EMCRYO" refine --particles "$D/particles_blind.star" --ref "$D/truth_class001.mrc" --ini-high 30 --particle-diameter 140 \
      --offset-range 5 --offset-step 1 --out "$D/$1" "${extra[@]}" > "$W/$n.$1.log" 2>&1
    walls+=("$(echo "$(date +%s.%N) - $s" | bc)")
  }
  median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
  extra=("$@")
  for ((run = 1; run <= ${EMCRYO_RUNS:-1}; run++)); do run_emcryo "$LABEL"; done
  # The median of the runs (EMCRYO_RUNS, default 1): a VM's speed drifts by 10-20% from one run to the next.
  emcryo_wall=$(median "${walls[@]}")
  echo "$n $LABEL: $emcryo_wall s wall (median of ${#walls[@]}: ${walls[*]}; $(lscpu | sed -n 's/Model name: *//p'), $(nproc) cores)"
  $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$D/$LABEL/particles.star" --map "$D/$LABEL/map_unfil.mrc" \
    --true-map "$D/truth_class001.mrc" --label "$n $LABEL" --json "$D/$LABEL.eval.json"
  [[ -f $D/truepose.eval.json ]] || $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$D/particles.star" \
    --map "$D/truepose/map_unfil.mrc" --true-map "$D/truth_class001.mrc" --label "$n true poses" --json "$D/truepose.eval.json"
  if [[ ${RELION3:-0} == 1 ]]; then
    rm -rf "$D/relion3"; mkdir -p "$D/relion3"
    r=$(date +%s.%N)
    (cd "$D" && OMPI_MCA_mpi_yield_when_idle=1 mpirun --allow-run-as-root --oversubscribe -np 3 relion_refine_mpi --o relion3/run \
      --auto_refine --split_random_halves --i particles_blind.star --ref truth_class001.mrc --firstiter_cc --ini_high 30 \
      --healpix_order 1 --auto_local_healpix_order 3 --low_resol_join_halves 40 --sym C1 --j 1 --ctf --flatten_solvent \
      --zero_mask --norm --scale --oversampling 1 --offset_range 5 --offset_step 2 --maxsig 300 --dont_combine_weights_via_disc \
      --pool 3 --pad 2 --random_seed 1 --particle_diameter 140 > "$W/$n.relion3.log" 2>&1)
    relion_wall=$(echo "$(date +%s.%N) - $r" | bc)
    # With several emcryo runs, as many again after RELION: the VM's speed drifts over RELION's minutes,
    # and the ratio takes the median of the runs on both sides of it.
    if (( ${EMCRYO_RUNS:-1} > 1 )); then
      for ((run = 1; run <= EMCRYO_RUNS; run++)); do run_emcryo "$LABEL.after"; done
      rm -rf "${D:?}/$LABEL.after"
      emcryo_wall=$(median "${walls[@]}")
      echo "$n $LABEL: $emcryo_wall s wall (median of ${#walls[@]} runs before and after RELION: ${walls[*]})"
    fi
    echo "$n RELION 3.1.3: $relion_wall s wall; emcryo $emcryo_wall s: ratio $(echo "scale=1; $relion_wall / $emcryo_wall" | bc)x"
    $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$D/relion3/run_data.star" --map "$D/relion3/run_class001.mrc" \
      --true-map "$D/truth_class001.mrc" --label "$n relion3" --json "$D/relion3.eval.json"
  fi
  if [[ -f $D/relion_data.star ]]; then
    $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$D/relion_data.star" --map "$D/relion_class001.mrc" \
      --true-map "$D/truth_class001.mrc" --label "$n relion5" --json "$D/relion.eval.json"
  fi
done
