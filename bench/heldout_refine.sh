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
#   some of the sets (e.g. SETS=2XHE).
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
  rm -rf "${D:?}/$LABEL"
  s=$(date +%s.%N)
  "$EMCRYO" refine --particles "$D/particles_blind.star" --ref "$D/truth_class001.mrc" --ini-high 30 --particle-diameter 140 \
    --offset-range 5 --offset-step 1 --out "$D/$LABEL" "$@" > "$W/$n.$LABEL.log" 2>&1
  echo "$n $LABEL: $(echo "$(date +%s.%N) - $s" | bc) s wall ($(lscpu | sed -n 's/Model name: *//p'), $(nproc) cores)"
  $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$D/$LABEL/particles.star" --map "$D/$LABEL/map_unfil.mrc" \
    --true-map "$D/truth_class001.mrc" --label "$n $LABEL" --json "$D/$LABEL.eval.json"
  [[ -f $D/truepose.eval.json ]] || $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$D/particles.star" \
    --map "$D/truepose/map_unfil.mrc" --true-map "$D/truth_class001.mrc" --label "$n true poses" --json "$D/truepose.eval.json"
  if [[ -f $D/relion_data.star ]]; then
    $PY "$here/eval_refine.py" --truth "$D/truth.star" --est "$D/relion_data.star" --map "$D/relion_class001.mrc" \
      --true-map "$D/truth_class001.mrc" --label "$n relion5" --json "$D/relion.eval.json"
  fi
done
