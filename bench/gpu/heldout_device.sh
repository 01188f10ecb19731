#!/usr/bin/env bash
# Runs on the device tool's H200 host (16 cores): builds emcryo and RELION 5 (CUDA), simulates the
# held-out refine sets (bench/heldout_refine.sh makes the same ones on any machine, same seeds),
# runs RELION 5's GPU auto-refine on each (the accuracy yardstick), then emcryo's thread scaling.
# Results go to $OUT (RELION's final data.star and map per set, logs, timings).
#   bench/gpu/heldout_device.sh        (from the repository root, with .devinc and .gpu-carry carried)
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cp -r .devinc/* /usr/include/
cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DEMCRYO_BUILD_TESTS=OFF -DEMCRYO_BUILD_BENCH=OFF > "$OUT/cmake.log" 2>&1
cmake --build build-dev -j16 --target emcryo > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
E=$root/build-dev/apps/emcryo
t0=$(date +%s)
bash .gpu-carry/relion5-build-cuda.sh .gpu-carry > "$OUT/relion_build.log" 2>&1 || { tail -20 "$OUT/relion_build.log"; exit 1; }
(cd /tmp/relion5/relion/build && make -j16 refine_mpi >> "$OUT/relion_build.log" 2>&1) || { tail -20 "$OUT/relion_build.log"; exit 1; }
echo "RELION 5 built in $(( $(date +%s) - t0 )) s"
R=/tmp/relion5/relion/build/bin/relion_refine_mpi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
lscpu | grep "Model name" | tee -a "$OUT/gpu.txt"
strip_poses() {  # a copy of a particles STAR without rlnAngle*/rlnOrigin* columns (awk: no numpy here)
  awk 'BEGIN{blk=""} /^data_/{blk=$1; n=0; delete keep} 
       blk=="data_particles" && /^_rln/ {n++; if ($1 ~ /^_rlnAngle|^_rlnOrigin/) {drop[n]=1; next} else {m++; print $1 " #" m; next}}
       blk=="data_particles" && NF>2 && $1 !~ /^_/ && $1 !~ /^#/ && $1 != "loop_" {s=""; for(i=1;i<=NF;i++) if(!drop[i]) s=s (s==""?"":" ") $i; print s; next}
       {print}' "$1" > "$2"
}
P=/usr/share/doc/python-biopython-doc/Tests/PDB
mkdir -p /tmp/ho
for m in 2XHE.pdb.gz 7DDO.pdb.gz 6WQA.cif.gz; do
  n=${m%%.*}
  "$E" simulate --model "$root/bench/heldout_models/$m" --out /tmp/ho/$n --particles 2500 --box 64 --pixel-size 2.5 --snr 0.03 --seed 11 > /tmp/ho/$n.sim.log 2>&1
  strip_poses /tmp/ho/$n/particles.star /tmp/ho/$n/particles_blind.star
done
for n in 2XHE 7DDO 6WQA; do
  mkdir -p /tmp/ho/$n/relion
  (cd /tmp/ho/$n && /usr/bin/time -v -o relion.time mpirun --allow-run-as-root --oversubscribe -np 3 "$R" --o relion/run --auto_refine \
     --split_random_halves --i particles_blind.star --ref truth_class001.mrc --firstiter_cc --ini_high 30 --particle_diameter 140 \
     --healpix_order 1 --auto_local_healpix_order 3 --low_resol_join_halves 40 --sym C1 --j 1 --ctf --flatten_solvent --zero_mask \
     --norm --scale --oversampling 1 --offset_range 5 --offset_step 2 --maxsig 300 --dont_combine_weights_via_disc --pool 3 --pad 2 \
     --random_seed 1 --gpu > relion.log 2>&1) &
done
wait
for n in 2XHE 7DDO 6WQA; do
  d=/tmp/ho/$n
  grep -E "Elapsed|Maximum resident" $d/relion.time | sed "s/^/$n relion: /"
  tail -3 $d/relion.log | sed "s/^/$n relion log: /"
  mkdir -p "$OUT/$n"
  cp $d/relion/run_data.star "$OUT/$n/relion_data.star" 2>/dev/null
  cp $d/relion/run_class001.mrc "$OUT/$n/relion_class001.mrc" 2>/dev/null
  cp $d/relion.time "$OUT/$n/relion.time"
done
# emcryo's thread scaling on the 16-core host: refine (first held-out set) and class2d (12 views).
"$E" simulate --model "$root/data/1tii.pdb.gz" --out /tmp/c2d --particles 3000 --box 64 --pixel-size 2.0 --snr 0.05 --orientations views --views 12 --seed 7 > /dev/null 2>&1
strip_poses /tmp/c2d/particles.star /tmp/c2d/blind.star
for j in 1 2 4 8 16; do
  s=$(date +%s.%N); "$E" -j $j class2d --particles /tmp/c2d/blind.star --classes 12 --out /tmp/c2d/j$j --iterations 15 > /tmp/c2d/j$j.log 2>&1
  echo "class2d -j $j: $(echo "$(date +%s.%N) - $s" | bc) s"
done | tee "$OUT/class2d_scaling.txt"
cp /tmp/c2d/j16/particles.star "$OUT/class2d_j16_particles.star"
for j in 1 4 16; do
  s=$(date +%s.%N); "$E" -j $j refine --particles /tmp/ho/2XHE/particles_blind.star --ref /tmp/ho/2XHE/truth_class001.mrc --ini-high 30 \
     --particle-diameter 140 --offset-range 5 --offset-step 1 --out /tmp/ho/2XHE/emcryo_j$j > /tmp/ho/2XHE/emcryo_j$j.log 2>&1
  echo "refine 2XHE -j $j: $(echo "$(date +%s.%N) - $s" | bc) s"
done | tee "$OUT/refine_scaling.txt"
