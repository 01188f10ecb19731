#!/usr/bin/env bash
# On the device tool's 16-core host, CPU only: emcryo class2d (12-view 1TII set, 3000 particles)
# with 1, 4 and 16 threads and refine (held-out 2XHE set) with 16 threads; checks that class2d's
# particles.star is the same for every thread count. Results in $OUT/scaling_cpu.txt.
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/lib.sh
build_emcryo 16 || { tail -20 /tmp/build.log; exit 1; }
E=$root/build-dev/apps/emcryo
{
  lscpu | grep "Model name"
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out /tmp/c2d --particles 3000 --box 64 --pixel-size 2.0 --snr 0.05 \
    --orientations views --views 12 --seed 7 > /dev/null 2>&1
  for j in 16 4 1; do
    s=$(now); "$E" -j $j class2d --particles /tmp/c2d/particles.star --classes 12 --out /tmp/c2d/j$j --iterations 15 --psi-step 5 \
      --offset-range 5 --offset-step 1 --mask-diameter 120 > /tmp/c2d/j$j.log 2>&1
    echo "class2d 3000 particles, 15 iterations, -j $j: $(since $s) s"
  done
  for j in 4 1; do
    cmp -s <(grep -v '^#' /tmp/c2d/j16/particles.star) <(grep -v '^#' /tmp/c2d/j$j/particles.star) && echo "class2d -j 16 == -j $j" || echo "class2d -j 16 != -j $j"
  done
  "$E" simulate --model "$root/bench/heldout_models/2XHE.pdb.gz" --out /tmp/ho --particles 2500 --box 64 --pixel-size 2.5 --snr 0.03 --seed 11 > /dev/null 2>&1
  s=$(now); "$E" -j 16 refine --particles /tmp/ho/particles.star --ref /tmp/ho/truth_class001.mrc --ini-high 30 \
    --particle-diameter 140 --offset-range 5 --offset-step 1 --out /tmp/ho/j16 > /tmp/ho/j16.log 2>&1
  echo "refine 2XHE 2500 particles (marginalised, the default), -j 16: $(since $s) s"
} 2>&1 | tee "$OUT/scaling_cpu.txt"
