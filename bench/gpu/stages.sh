#!/usr/bin/env bash
# Where the GPU runs' time goes, stage by stage, with per-particle templates sampled on the CPU
# (EMCRYO_GPU_SAMPLE=0, main's path) and on the GPU (the default), on the same data in one call.
# On the device host, from a built tree: B=<build dir> bash bench/gpu/stages.sh; OUT collects
# logs and summary.txt. Sizes by environment (defaults: the 2026-12-01 class2d and a 5000-particle
# refine); C2D_SAMPLE, C2D_SUMS and C2D_PREP list the EMCRYO_GPU_SAMPLE, EMCRYO_GPU_SUMS and
# EMCRYO_GPU_PREP values to run (class2d; C2D_REDUCE the EMCRYO_GPU_REDUCE ones), REF_SAMPLE, REF_BP and REF_REDUCE the EMCRYO_GPU_SAMPLE,
# EMCRYO_GPU_BACKPROJECT and EMCRYO_GPU_REDUCE values (refine);
# TESTS=0 skips test_gpu and the GpuJobs tests; C2D=0 / REF=0 skip a job.
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; B=${B:-bd}
source bench/gpu/lib.sh
C2D_N=${C2D_N:-5000} C2D_BOX=${C2D_BOX:-256} C2D_K=${C2D_K:-100} C2D_IT=${C2D_IT:-2} C2D_PIX=${C2D_PIX:-1.0}
REF_N=${REF_N:-5000} REF_BOX=${REF_BOX:-128} REF_PIX=${REF_PIX:-1.5} REF_TIMEOUT=${REF_TIMEOUT:-90}
E=$root/$B/apps/emcryo S=$OUT/summary.txt
say() { echo "$*" | tee -a "$S"; }
start_memory() { (peak=0; while :; do m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); ((m > peak)) && peak=$m && echo $peak > /tmp/gpu_peak; sleep 0.5; done) & MEMPID=$!; echo 0 > /tmp/gpu_peak; }
stop_memory() { kill $MEMPID 2>/dev/null; wait $MEMPID 2>/dev/null; cat /tmp/gpu_peak; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$S"
if [[ ${TESTS:-1} == 1 ]]; then
  ./$B/tests/test_gpu > "$OUT/test_gpu.log" 2>&1; say "test_gpu: exit $? ($(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/test_gpu.log" | tr '\n' ' '))"
  grep -E "max \|GPU|GPU-sampled" "$OUT/test_gpu.log" | tee -a "$S"
  s=$(now); ./$B/tests/test_integration --gtest_filter='GpuJobs*' > "$OUT/test_gpu_jobs.log" 2>&1
  say "GpuJobs: exit $? in $(since $s) s ($(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/test_gpu_jobs.log" | tr '\n' ' '))"
  grep -E "ARI against|map FSC|poses within" "$OUT/test_gpu_jobs.log" | tee -a "$S"
fi
c2d=/tmp/c2d ref=/tmp/ref
if [[ ${C2D:-1} == 1 ]]; then
  s=$(now)
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out $c2d --particles $C2D_N --box $C2D_BOX --pixel-size $C2D_PIX --snr 0.05 \
    --orientations views --views $C2D_K --seed 7 > "$OUT/c2d_simulate.log" 2>&1
  strip_poses $c2d/particles.star $c2d/blind.star
  say "class2d data: $C2D_N particles, box $C2D_BOX, $C2D_K views, simulated in $(since $s) s"
  for prep in ${C2D_PREP:-1}; do for sums in ${C2D_SUMS:-1}; do for sample in ${C2D_SAMPLE:-0 1}; do for reduce in ${C2D_REDUCE:-1}; do
    run=s${sample}m${sums}p${prep}r$reduce
    rm -rf $c2d/$run; start_memory; s=$(now)
    EMCRYO_GPU_REDUCE=$reduce EMCRYO_GPU_PREP=$prep EMCRYO_GPU_SAMPLE=$sample EMCRYO_GPU_SUMS=$sums timeout ${C2D_TIMEOUT:-200} "$E" class2d --particles $c2d/blind.star --classes $C2D_K \
      --out $c2d/$run --iterations $C2D_IT --mask-diameter $(awk -v b=$C2D_BOX -v p=$C2D_PIX 'BEGIN{print int(0.8*b*p)}') > /dev/null 2>&1
    rc=$?; t=$(since $s); mem=$(stop_memory)
    say "class2d EMCRYO_GPU_REDUCE=$reduce EMCRYO_GPU_PREP=$prep EMCRYO_GPU_SAMPLE=$sample EMCRYO_GPU_SUMS=$sums: exit $rc, $t s, peak GPU memory $mem MiB, $(python3 bench/gpu/accuracy.py class2d $c2d/truth.star $c2d/$run/particles.star 2>&1)"
    grep -E "iteration +[0-9]+/|backend|CUDA|E-step stages" $c2d/$run/run.log | tee -a "$S"
    cp $c2d/$run/run.log "$OUT/class2d_$run.log" 2>/dev/null
  done
  done
  done
  done
fi
if [[ ${REF:-1} == 1 ]]; then
  s=$(now)
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out $ref --particles $REF_N --box $REF_BOX --pixel-size $REF_PIX --snr 0.05 \
    --seed 11 > "$OUT/ref_simulate.log" 2>&1
  strip_poses $ref/particles.star $ref/blind.star
  say "refine data: $REF_N particles, box $REF_BOX, simulated in $(since $s) s"
  for bp in ${REF_BP:-1}; do for sample in ${REF_SAMPLE:-0 1}; do for reduce in ${REF_REDUCE:-1}; do
    run=s${sample}b${bp}r$reduce
    rm -rf $ref/$run; start_memory; s=$(now)
    EMCRYO_GPU_REDUCE=$reduce EMCRYO_GPU_SAMPLE=$sample EMCRYO_GPU_BACKPROJECT=$bp timeout $REF_TIMEOUT "$E" refine --particles $ref/blind.star \
      --ref $ref/truth_class001.mrc --ini-high 30 --out $ref/$run > /dev/null 2>&1
    rc=$?; t=$(since $s); mem=$(stop_memory)
    say "refine EMCRYO_GPU_REDUCE=$reduce EMCRYO_GPU_SAMPLE=$sample EMCRYO_GPU_BACKPROJECT=$bp: exit $rc (124: stopped by the ${REF_TIMEOUT} s limit), $t s, peak GPU memory $mem MiB, $(python3 bench/gpu/accuracy.py refine $ref/truth.star $ref/$run/particles.star 2>&1 | tail -1)"
    grep -E "iteration +[0-9]+:|refine: [0-9.]+ Å|backend|CUDA" $ref/$run/run.log | tee -a "$S"
    cp $ref/$run/run.log "$OUT/refine_$run.log" 2>/dev/null
  done
  done
  done
fi
say "done"
