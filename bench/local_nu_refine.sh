#!/usr/bin/env bash
# local-refine and nu-refine on simulated data with known truth (issue 11), run on the device
# tool's 16-core host (CPU only), four jobs at a time with -j 4 each. Results: $OUT/results.tgz
# (maps, logs, STAR files; evaluate with bench/masked_fsc.py and bench/pose_error.py) and
# $OUT/times.txt. Usage (repository root, .devinc carried): bash bench/local_nu_refine.sh
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/lib.sh
build_emcryo 16 || { tail -20 /tmp/build.log; exit 1; }
E=$root/build-dev/apps/emcryo
W=/tmp/lnr; rm -rf $W; mkdir -p $W; cd $W
timed() { local name=$1; shift; local s=$(now); "$E" -j 4 "$@" > $name.log 2>&1; echo "$name: $(since $s) s (rc $?)" >> times.txt; }
{
  lscpu | grep "Model name"
  # Flexible domain: body 2 = chain A, 12 degrees (sd) about the hinge.
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out flex --particles 1000 --box 40 --pixel-size 3 --snr 0.2 --body2-chains A \
    --flex-sigma 12 --seed 4 > /dev/null 2>&1
  "$E" reconstruct --particles flex/particles.star --out cons > /dev/null 2>&1
  L="local-refine --particles flex/particles.star --ref cons/map_unfil.mrc --mask flex/truth_body2_mask.mrc --max-iterations 6"
  timed loc_sub $L --out loc_sub --subtract &
  timed loc_nosub $L --out loc_nosub &
  timed loc_max $L --out loc_max --subtract --no-marginalization &
  timed loc_prior $L --out loc_prior --subtract --pose-prior --prior-sigma-rot 3 --prior-sigma-shift 2 &
  wait
  timed loc_prior15 $L --out loc_prior15 --subtract --pose-prior &
  # Disordered density (chain A) and uniform data: refine vs nu-refine.
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out dis --particles 1000 --box 48 --pixel-size 2.5 --snr 0.05 --disorder-chains A \
    --disorder-sigma 15 --disorder-shift 4 --seed 3 > /dev/null 2>&1
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out uni --particles 1000 --box 48 --pixel-size 2.5 --snr 0.05 --seed 3 > /dev/null 2>&1
  timed dis_refine refine --particles dis/particles.star --ref dis/truth_class001.mrc --ini-high 30 --out dis_refine &
  timed dis_nu nu-refine --particles dis/particles.star --ref dis/truth_class001.mrc --ini-high 30 --out dis_nu &
  timed uni_refine refine --particles uni/particles.star --ref uni/truth_class001.mrc --ini-high 30 --out uni_refine &
  wait
  timed uni_nu nu-refine --particles uni/particles.star --ref uni/truth_class001.mrc --ini-high 30 --out uni_nu &
  timed dis_local_nu local-refine --particles dis_refine/particles.star --ref dis_refine/map_unfil.mrc --mask dis/truth_ordered_mask.mrc --nu --max-iterations 4 --out dis_local_nu &
  wait
  cat times.txt
} 2>&1 | tee "$OUT/times.txt"
tar czf "$OUT/results.tgz" --exclude='*.mrcs' --exclude='checkpoint*' --exclude='particles.cs' .
ls -la "$OUT"
