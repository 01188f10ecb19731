#!/usr/bin/env bash
# Ab-initio success over seeds (issue 15) on the device host's CPUs: the same simulated sets as
# bench/abinitio.sh (5000 particles, 64 px, 2 Å/px, SNR 0.05; 1TII seed 11, 2XHE seed 12, their
# 50:50 mixture seed 13), eight runs at a time with 2 threads each. Scores are computed back home
# (bench/eval_abinitio.py) from the maps and particles.star left in $OUT.
#   bench/gpu/abinitio_seeds.sh      (repository root; .devinc carried)
set -euo pipefail
source bench/gpu/lib.sh
build_emcryo 16
E=$PWD/build-dev/apps/emcryo
W=/tmp/abs; mkdir -p "$W"
T1=data/1tii.pdb.gz T2=bench/heldout_models/2XHE.pdb.gz
sim() { "$E" simulate "${@:3}" --out "$W/$1" --particles 5000 --box 64 --pixel-size 2 --snr 0.05 --seed "$2" > /dev/null 2>&1; }
sim sim1tii 11 --model $T1 & sim sim2xhe 12 --model $T2 & sim simmix 13 --model $T1 --model $T2 & wait
run() {  # run NAME DATA ARGS...
  local name=$1 data=$2; shift 2
  local t0; t0=$(now)
  "$E" -j 2 abinitio --particles "$W/$data/particles.star" --out "$W/$name" "$@" > "$W/$name.log" 2>&1
  echo "$name: $(since "$t0") s wall ($*)" >> "$W/times.txt"
  mkdir -p "$OUT/$name"; cp "$W/$name"/class_*.mrc "$W/$name.log" "$OUT/$name/"
  [[ $data == simmix ]] && cp "$W/$name/particles.star" "$OUT/$name/"
  true
}
queue=()
for s in 1 2 3 4 5 6 7 8 9 10; do queue+=("ab_seed$s sim1tii --seed $s"); done
for s in 1 2 3; do queue+=("ab_m0_seed$s sim1tii --seed $s --momentum 0"); done
queue+=("ab_2xhe sim2xhe" "ab_mix simmix --classes 2")
for j in "${queue[@]}"; do
  while (( $(jobs -rp | wc -l) >= 8 )); do sleep 1; done
  # shellcheck disable=SC2086
  run $j &
done
wait
cp "$W/times.txt" "$OUT/"
for d in sim1tii sim2xhe simmix; do mkdir -p "$OUT/$d"; cp "$W/$d"/truth_class*.mrc "$W/$d/truth.star" "$OUT/$d/"; done
nproc; lscpu | grep "Model name"
cat "$OUT/times.txt"
