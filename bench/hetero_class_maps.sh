#!/usr/bin/env bash
# hetero-refine's class maps against the true-pose, true-class reconstruction (issue 10's bar: each
# class map's FSC 0.5 to its truth within 15% of the true-pose map's), on five simulated sets:
# 1TII vs 1TII without chain H (seeds 3, 5, 7) and 2XHE vs its chain A (seeds 11, 12), 1,000
# particles 50:50, 64 px, 2 Å/px, SNR 0.05, one common start (the complex at 30 Å, noisy copies).
# Each set runs with the best pose per class (the default) and with --marginalize-poses.
# Usage: bench/hetero_class_maps.sh [WORKDIR]   (~4 min on 2 cores; EMCRYO= another binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/.." && pwd)
W=${1:-/tmp/emcryo_hetero_maps}; E=${EMCRYO:-$root/build/apps/emcryo}
mkdir -p "$W"
make_set() {  # name, complex, part, seed
  local D=$W/$1
  [[ -f $D/oracle/class_002.mrc ]] && return
  "$E" simulate --model "$2" --model "$3" --common-centre --out "$D/data" --particles 1000 --box 64 --pixel-size 2 --snr 0.05 \
    --seed "$4" > "$W/$1.simulate.log" 2>&1
  "$E" hetero-reconstruct --particles "$D/data/truth.star" --out "$D/oracle" > "$W/$1.oracle.log" 2>&1
}
for s in 3 5 7; do make_set 1tii_$s "$root/data/1tii.pdb.gz" "$root/tests/data/1tii_without_chain_H.pdb.gz" $s; done
for s in 11 12; do make_set 2xhe_$s "$here/heldout_models/2XHE.pdb.gz" "$root/tests/data/2xhe_chain_A.pdb.gz" $s; done
for D in "$W"/1tii_*/ "$W"/2xhe_*/; do
  D=${D%/}
  for variant in "" --marginalize-poses; do
    out=$D/run${variant:+_marginalized}; rm -rf "$out"
    "$E" hetero-refine --particles "$D/data/particles.star" --ref "$D/data/truth_class001.mrc" --classes 2 --particle-diameter 115 \
      --out "$out" $variant > "$out.log" 2>&1
    echo "== $(basename "$D") ${variant:-best pose}"
    /usr/bin/python3 "$here/eval_hetero.py" "$D/data/truth.star" "$out/particles.star" --maps "$out"/class_00{1,2}.mrc \
      --truth-maps "$D"/data/truth_class00{1,2}.mrc --oracle-maps "$D"/oracle/class_00{1,2}.mrc
  done
done
