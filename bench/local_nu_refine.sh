#!/usr/bin/env bash
# local-refine and nu-refine on simulated data with known truth (issue 11), sized for the 2-core
# machine (about 4 min of CPU for flex+lowsnr+dis; uni adds about 10 min). Run from the repository
# root after building build/apps/emcryo; on the shared machine under the lock:
#   flock /tmp/emcryo-cpu.lock bash bench/local_nu_refine.sh [flex] [lowsnr] [dis] [belt] [unismall] [uni]   (default: all)
# belt: BELT_SEEDS, BELT_SNR and BELT_ARGS (extra --belt-* options; default: simulate's, 24 x 14 Å, mass 0.3) choose the belt sets.
# Work folder: $W (default /tmp/lnr). Prints, per run: FSC to truth inside the truth's mask (0.5 /
# 0.143 Å and mean FSC, bench/masked_fsc.py), body-2 pose error (bench/pose_error.py) and the sum of
# the job's own iteration times with the M-step regularisation's share.
set -uo pipefail
root=$(pwd)
E=${E:-$root/build/apps/emcryo}
J=${J:-2}
W=${W:-/tmp/lnr}
PY=/usr/bin/python3
sets=${*:-flex lowsnr dis belt unismall uni}
mkdir -p "$W" && cd "$W" || exit 1
sim() { local out=$1; shift; [ -f $out/particles.star ] || "$E" -j $J simulate --model "$root/data/1tii.pdb.gz" --out $out "$@" > $out.sim.log 2>&1; }
# Sum of the per-iteration seconds the job logs, and of its M-step regularisation.
times() { grep -hE "iteration +[0-9]+: resolution" $1/run.log | sed -E 's/.*, ([0-9.]+) s \(M-step regularisation ([0-9.]+) s\).*/\1 \2/' |
          awk -v n=$1 '{t+=$1; r+=$2} END {printf "%s: %d iterations, %.1f s, regularisation %.2f s (%.1f%%)\n", n, NR, t, r, 100*r/t}'; }
local_refine() {  # DATA NAME ARGS...
  local d=$1 name=$2; shift 2
  "$E" -j $J local-refine --particles $d/particles.star --ref $d.cons/map_unfil.mrc --mask $d/truth_body2_mask.mrc --out $name \
    --max-iterations 6 "$@" > $name.log 2>&1 || echo "$name failed"
  $PY "$root/bench/masked_fsc.py" $d/truth_body2.mrc $d/truth_body2_mask.mrc $name/map_unfil.mrc
  $PY "$root/bench/pose_error.py" $d/truth.star $name/particles.star emcryoBody2
  times $name
}
flexible() {  # DATA SIMULATE-ARGS...
  local d=$1; shift
  sim $d --box 40 --pixel-size 3 --body2-chains A --flex-sigma 12 "$@"
  [ -f $d.cons/map_unfil.mrc ] || "$E" -j $J reconstruct --particles $d/particles.star --out $d.cons > /dev/null 2>&1
  echo "== $d: consensus (reconstruction at body 1's true poses), body 2 in its mask"
  $PY "$root/bench/masked_fsc.py" $d/truth_body2.mrc $d/truth_body2_mask.mrc $d.cons/map_unfil.mrc
  $PY "$root/bench/pose_error.py" $d/truth.star $d/particles.star emcryoBody2
}
refine_pair() {  # DATA TRUTH MASK
  local d=$1 truth=$2 mask=$3
  for job in refine nu-refine; do
    "$E" -j $J $job --particles $d/particles.star --ref $d/truth_class001.mrc --ini-high 30 --out $d.$job > $d.$job.log 2>&1 || echo "$d.$job failed"
    times $d.$job
  done
  [ -n "$mask" ] || mask=$d.refine/mask.mrc
  $PY "$root/bench/masked_fsc.py" $truth $mask $d.refine/map_unfil.mrc $d.nu-refine/map_unfil.mrc
}
for s in $sets; do
  case $s in
    flex)  # SNR 1: local-refine with and without --subtract; maximisation
      flexible flex1 --particles 600 --snr 1 --seed 4
      local_refine flex1 flex1.sub --subtract
      local_refine flex1 flex1.nosub
      local_refine flex1 flex1.max --subtract --no-marginalization ;;
    lowsnr)  # SNR 0.15: marginalisation against maximisation; the pose prior at the same 20-degree extent
      for seed in 4 5; do
        flexible low$seed --particles 800 --snr 0.15 --seed $seed
        local_refine low$seed low$seed.marg --subtract --rotation-extent 20
        local_refine low$seed low$seed.max --subtract --rotation-extent 20 --no-marginalization
        local_refine low$seed low$seed.prior --subtract --rotation-extent 20 --pose-prior --prior-sigma-rot 8 --prior-sigma-shift 3
        local_refine low$seed low$seed.nosub --rotation-extent 20
      done ;;
    dis)  # chains A, D, E (55% of the mass) disordered, SNR 2: refine against nu-refine on the ordered part
      for seed in 3 5; do
        sim dis$seed --particles 800 --box 40 --pixel-size 3 --snr 2 --disorder-chains A,D,E --disorder-sigma 20 --disorder-shift 5 --seed $seed
        echo "== dis$seed: ordered part in its mask"
        refine_pair dis$seed dis$seed/truth_ordered.mrc dis$seed/truth_ordered_mask.mrc
      done ;;
    belt)  # a detergent-belt-like ring of random blobs around 1TII (simulate --belt): ordered part, seeds $BELT_SEEDS
      for seed in ${BELT_SEEDS:-1 2 3}; do
        sim belt$seed --particles 800 --box 40 --pixel-size 3 --snr ${BELT_SNR:-1} --belt ${BELT_ARGS:-} --seed $seed
        echo "== belt$seed: ordered part (the particle without its belt) in its mask"
        refine_pair belt$seed belt$seed/truth_ordered.mrc belt$seed/truth_ordered_mask.mrc
        $PY "$root/bench/localres_regions.py" belt$seed.nu-refine/localres.mrc belt$seed/truth_ordered.mrc belt$seed/truth_belt.mrc
      done ;;
    unismall)  # uniform 1TII at the tests' size: nu-refine must be no worse, seeds $UNI_SEEDS
      for seed in ${UNI_SEEDS:-1 2 3}; do
        sim unis$seed --particles 800 --box 40 --pixel-size 3 --snr ${UNI_SNR:-0.5} --seed $seed
        echo "== unis$seed: whole particle in refine's mask"
        refine_pair unis$seed unis$seed/truth_class001.mrc ""
      done ;;
    uni)  # uniform 1TII: nu-refine must be no worse (mask: refine's automatic one)
      sim uni --particles 2000 --box 64 --pixel-size 2.5 --snr 0.05 --seed 3
      echo "== uni: whole particle in refine's mask"
      refine_pair uni uni/truth_class001.mrc "" ;;
  esac
done
