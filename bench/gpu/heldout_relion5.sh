#!/usr/bin/env bash
# On the device tool's H200 host: RELION 5 (CUDA) auto-refine on the three held-out refine sets of
# bench/heldout_refine.sh (simulated there by emcryo with the same seeds), with the engine issue's
# options plus --gpu. The three runs share the GPU; each mpirun gets its own TMPDIR (OpenMPI's
# session files) and they start 20 s apart. Everything returned is packed into $OUT/relion5.tar.gz.
#   bench/gpu/heldout_relion5.sh     (repository root; .devinc and .gpu-carry carried)
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/lib.sh
build_emcryo 6 &
build_relion5 10
wait
E=$root/build-dev/apps/emcryo R=/tmp/relion5/relion/build/bin/relion_refine_mpi
[[ -x $E && -x $R ]] || { tail -20 /tmp/build.log /tmp/relion_build.log; exit 1; }
for m in 2XHE.pdb.gz 7DDO.pdb.gz 6WQA.cif.gz; do
  n=${m%%.*}; d=/tmp/ho/$n
  "$E" simulate --model "$root/bench/heldout_models/$m" --out $d --particles 2500 --box 64 --pixel-size 2.5 --snr 0.03 --seed 11 > /tmp/ho_$n.sim.log 2>&1
  strip_poses $d/particles.star $d/particles_blind.star
  mkdir -p $d/relion /tmp/ompi_$n
  (cd $d && TMPDIR=/tmp/ompi_$n timeout 470 /usr/bin/time -v -o relion.time mpirun --allow-run-as-root --oversubscribe -np 3 "$R" \
     --o relion/run --auto_refine --split_random_halves --i particles_blind.star --ref truth_class001.mrc --firstiter_cc --ini_high 30 \
     --particle_diameter 140 --healpix_order 1 --auto_local_healpix_order 3 --low_resol_join_halves 40 --sym C1 --j 1 --ctf \
     --flatten_solvent --zero_mask --norm --scale --oversampling 1 --offset_range 5 --offset_step 2 --maxsig 300 \
     --dont_combine_weights_via_disc --pool 3 --pad 2 --random_seed 1 --gpu > relion.log 2>&1) &
  sleep 20
done
wait
nvidia-smi --query-gpu=name --format=csv,noheader > /tmp/ho/gpu.txt
cd /tmp/ho && tar czf "$OUT/relion5.tar.gz" gpu.txt */relion.log */relion.time */relion/run_data.star */relion/run_class001.mrc \
  */relion/run_it0[0-9][0-9]_half1_model.star $(ls -t */relion/run_it*_data.star 2>/dev/null | head -3) 2>/dev/null
for n in 2XHE 7DDO 6WQA; do echo "$n: $(grep -E 'Elapsed|Exit status' /tmp/ho/$n/relion.time | tr '\n' ' ')"; grep -E "Final resolution|ERROR" /tmp/ho/$n/relion.log | head -3; done
