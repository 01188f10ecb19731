#!/usr/bin/env bash
# On the device tool's H200 host (16 cores): RELION 5 (CUDA) auto-refine on one held-out set
# (SET, default 7DDO; RELION grabs most of the GPU's memory, so sets run one at a time), then
# emcryo's thread scaling on the CPU: class2d of the 12-view 1TII set and refine of the 2XHE set
# with 1..16 threads on the CPU (--cpu: the CUDA build would score on the GPU). Results in $OUT (scaling.txt, relion5_<SET>.tar.gz). SCALING (default
# "class2d refine") picks which thread-scaling runs to make; RELION_LIMIT (default 300 s) caps RELION; REF_THREADS (default "1 2 4 8 16") the refine thread counts.
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; SET=${SET:-7DDO}
source bench/gpu/lib.sh
# EMCRYO=path: use that binary (e.g. device_mpi_scaling.sh's CPU build) and build nothing; SET=none: no RELION.
if [[ -n ${EMCRYO:-} ]]; then E=$EMCRYO R=""
else
  build_emcryo 6 &
  [[ $SET == none ]] || build_relion5 10
  wait
  E=$root/build-dev/apps/emcryo R=/tmp/relion5/relion/build/bin/relion_refine_mpi
fi
[[ -x $E ]] || { tail -20 /tmp/build.log; exit 1; }
declare -A model=([2XHE]=2XHE.pdb.gz [7DDO]=7DDO.pdb.gz [6WQA]=6WQA.cif.gz)
for n in 2XHE ${SET/none/}; do
  [[ -f /tmp/ho/$n/particles_blind.star ]] && continue
  "$E" simulate --model "$root/bench/heldout_models/${model[$n]}" --out /tmp/ho/$n --particles 2500 --box 64 --pixel-size 2.5 --snr 0.03 --seed 11 > /dev/null 2>&1
  strip_poses /tmp/ho/$n/particles.star /tmp/ho/$n/particles_blind.star
done
if [[ $SET != none && -x $R ]]; then
  d=/tmp/ho/$SET; mkdir -p $d/relion
  (cd $d && timeout ${RELION_LIMIT:-300} /usr/bin/time -v -o relion.time mpirun --allow-run-as-root --oversubscribe -np 3 "$R" \
     --o relion/run --auto_refine --split_random_halves --i particles_blind.star --ref truth_class001.mrc --firstiter_cc --ini_high 30 \
     --particle_diameter 140 --healpix_order 1 --auto_local_healpix_order 3 --low_resol_join_halves 40 --sym C1 --j 1 --ctf \
     --flatten_solvent --zero_mask --norm --scale --oversampling 1 --offset_range 5 --offset_step 2 --maxsig 300 \
     --dont_combine_weights_via_disc --pool 3 --pad 2 --random_seed 1 --gpu > relion.log 2>&1)
  echo "$SET relion5: $(grep -E 'Elapsed|Exit status' $d/relion.time | tr '\n' ' ')"
  (cd /tmp/ho && tar czf "$OUT/relion5_$SET.tar.gz" $SET/relion.log $SET/relion.time $SET/relion/run_data.star $SET/relion/run_class001.mrc 2>/dev/null)
fi
{
  lscpu | grep "Model name"
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out /tmp/c2d --particles 3000 --box 64 --pixel-size 2.0 --snr 0.05 \
    --orientations views --views 12 --seed 7 > /dev/null 2>&1
  strip_poses /tmp/c2d/particles.star /tmp/c2d/blind.star
  if [[ ${SCALING:-class2d refine} == *class2d* ]]; then
  for j in 1 2 4 8 16; do
    s=$(now); "$E" --cpu -j $j class2d --particles /tmp/c2d/blind.star --classes 12 --out /tmp/c2d/j$j --iterations 15 --psi-step 5 \
      --offset-range 5 --offset-step 1 --mask-diameter 120 > /tmp/c2d/j$j.log 2>&1
    echo "class2d 3000 particles, 15 iterations, -j $j: $(since $s) s"
  done
  cmp -s <(grep -v '^#' /tmp/c2d/j1/particles.star) <(grep -v '^#' /tmp/c2d/j16/particles.star) && echo "class2d particles.star -j 1 == -j 16" || echo "class2d particles.star -j 1 != -j 16"
  fi
  if [[ ${SCALING:-class2d refine} == *refine* ]]; then
  for j in ${REF_THREADS:-1 2 4 8 16}; do
    s=$(now); "$E" --cpu -j $j refine --particles /tmp/ho/2XHE/particles_blind.star --ref /tmp/ho/2XHE/truth_class001.mrc --ini-high 30 \
      --particle-diameter 140 --offset-range 5 --offset-step 1 --out /tmp/ho/2XHE/emcryo_j$j > /tmp/ho/2XHE/emcryo_j$j.log 2>&1
    echo "refine 2XHE 2500 particles, -j $j: $(since $s) s"
  done
  cmp -s <(grep -v '^#' /tmp/ho/2XHE/emcryo_j1/particles.star) <(grep -v '^#' /tmp/ho/2XHE/emcryo_j16/particles.star) && echo "refine particles.star -j 1 == -j 16" || echo "refine particles.star -j 1 != -j 16"
  fi
} 2>&1 | tee "$OUT/scaling.txt"
cp /tmp/c2d/j16/run.log "$OUT/class2d_j16_run.log" 2>/dev/null; cp /tmp/ho/2XHE/emcryo_j16/run.log "$OUT/refine_j16_run.log" 2>/dev/null; true
