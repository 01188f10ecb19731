#!/usr/bin/env bash
# Ab-initio reconstruction (issue 15) on simulated 5000-particle sets (64 px, 2 Å/px, SNR 0.05,
# uniform views): 1TII, 2XHE (bench/heldout_models) and their 50:50 mixture.
#
# Usage: bench/abinitio.sh [WORKDIR] [PART...]   (default /tmp/emcryo_abinitio_bench, all parts)
# Parts: main (1TII, default settings, timed), seeds (1TII, seeds 1..10: success = FSC 0.5 to
# the truth <= 15 Å after superposition), momentum0 (seeds 1..3 with cryoSPARC's momentum 0),
# momentum (1TII and 2XHE, seeds 1..3, momentum 0.5 and 0), other (2XHE), mix (K = 2 on the
# mixture), refine (1TII), refine2xhe (2XHE): `emcryo refine --ini-high 30` from the ab-initio map
# and from the true map, both low-passed to 30 Å by --ini-high, each map_unfil.mrc scored against
# the truth after superposition; relion (relion_refine --denovo_3dref --sgd, RELION 3.1.3;
# RELION_ITERS="initial in-between final" SGD iterations, default RELION's 50 200 50;
# RELION_SUBSETS="initial final" minibatch sizes, default 100 500).
# RELION on a 16-core host, beside emcryo on the same cores: bench/abinitio_device.sh.
# Every heavy run takes /tmp/emcryo-cpu.lock (the machine is shared); emcryo runs with -j 2,
# RELION with --j 2. Scores: bench/eval_abinitio.py (emcryo align-map against each truth).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
W=${1:-/tmp/emcryo_abinitio_bench}
shift || true
PARTS=${*:-main seeds momentum0 other mix refine relion}
EMCRYO=${EMCRYO:-$root/build/apps/emcryo}
PY=/usr/bin/python3
LOCK=/tmp/emcryo-cpu.lock
mkdir -p "$W"
W=$(cd "$W" && pwd)
echo "# $(date -u '+%F %T') UTC, $(git -C "$root" rev-parse --short HEAD), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores" | tee -a "$W/summary.txt"

simulate() {  # simulate NAME SEED MODEL...
  local name=$1 seed=$2; shift 2
  [[ -f $W/$name/truth.star ]] && return
  local models=()
  for m in "$@"; do models+=(--model "$m"); done
  flock $LOCK "$EMCRYO" simulate "${models[@]}" --out "$W/$name" --particles 5000 --box 64 --pixel-size 2 --snr 0.05 --seed "$seed" > "$W/$name.simulate.log" 2>&1
}
abinitio() {  # abinitio OUT DATA ARGS...: timed run and its score
  local out=$1 data=$2; shift 2
  rm -rf "${W:?}/$out"
  echo "emcryo -j 2 abinitio --particles $data/particles.star --out $out $*" > "$W/$out.cmd"
  flock $LOCK /usr/bin/time -v -o "$W/$out.time" "$EMCRYO" -j 2 abinitio --particles "$W/$data/particles.star" --out "$W/$out" "$@" > "$W/$out.log" 2>&1
  local wall
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$W/$out.time")
  local score
  score=$($PY "$here/eval_abinitio.py" --exe "$EMCRYO" --run "$W/$out" --truth "$W/$data" --json "$W/$out.json")
  echo "$out: wall $wall; $score" | tee -a "$W/summary.txt"
}

T1=$root/data/1tii.pdb.gz
T2=$root/bench/heldout_models/2XHE.pdb.gz
simulate sim1tii 11 "$T1"
for part in $PARTS; do
  case $part in
    main) abinitio ab_main sim1tii ;;
    seeds) for s in 1 2 3 4 5 6 7 8 9 10; do abinitio "ab_seed$s" sim1tii --seed "$s"; done
           $PY - "$W" <<'PY' | tee -a "$W/summary.txt"
import json, sys, glob
runs = sorted(glob.glob(sys.argv[1] + "/ab_seed*.json"))
res = [json.load(open(r))["classes"][0]["fsc05_A"] for r in runs]
print(f"seeds: {sum(r <= 15 for r in res)}/{len(res)} reach FSC 0.5 <= 15 Å; FSC 0.5 (Å): {res}")
PY
           ;;
    momentum0) for s in 1 2 3; do abinitio "ab_m0_seed$s" sim1tii --seed "$s" --momentum 0; done ;;
    momentum)  # seed 1 at momentum 0.5 is ab_main / ab_2xhe (the default seed)
      simulate sim2xhe 12 "$T2"
      [[ -f $W/ab_main.json ]] || abinitio ab_main sim1tii
      [[ -f $W/ab_2xhe.json ]] || abinitio ab_2xhe sim2xhe
      for s in ${MOMENTUM_SEEDS:-1 2 3}; do  # MOMENTUM_SETS="1tii" leaves 2XHE out
        for set in ${MOMENTUM_SETS:-1tii 2xhe}; do
          tag=$([[ $set == 1tii ]] || echo "_$set")
          [[ -f $W/ab${tag}_m0_seed$s.json ]] || abinitio "ab${tag}_m0_seed$s" "sim$set" --seed "$s" --momentum 0
          ((s > 1)) && { [[ -f $W/ab${tag}_m05_seed$s.json ]] || abinitio "ab${tag}_m05_seed$s" "sim$set" --seed "$s"; }
        done
      done ;;
    other) simulate sim2xhe 12 "$T2"; abinitio ab_2xhe sim2xhe ;;
    mix) simulate simmix 13 "$T1" "$T2"; abinitio ab_mix simmix --classes 2 ;;
    refine|refine2xhe)
      if [[ $part == refine ]]; then data=sim1tii ab=ab_main tag=""; else simulate sim2xhe 12 "$T2"; data=sim2xhe ab=ab_2xhe tag=_2xhe; fi
      [[ -f $W/$ab/class_001.mrc ]] || abinitio "$ab" "$data"
      for from in ab truth; do
        ref=$W/$ab/class_001.mrc; [[ $from == truth ]] && ref=$W/$data/truth_class001.mrc
        out=refine${tag}_from_$from
        rm -rf "${W:?}/$out"
        echo "emcryo -j 2 refine --particles $data/particles.star --ref $ref --ini-high 30 --out $out" > "$W/$out.cmd"
        flock $LOCK /usr/bin/time -v -o "$W/$out.time" "$EMCRYO" -j 2 refine --particles "$W/$data/particles.star" --ref "$ref" \
          --ini-high 30 --out "$W/$out" > "$W/$out.log" 2>&1
        wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$W/$out.time")
        gold=$(tail -n 1 "$W/$out.log")
        truth=$("$EMCRYO" align-map --map "$W/$out/map_unfil.mrc" --ref "$W/$data/truth_class001.mrc" | tr '\n' ' ')
        echo "$data: refine from $from (30 Å): wall $wall; $gold; to the truth after superposition: $truth" | tee -a "$W/summary.txt"
      done ;;
    relion)
      R=$W/relion
      rm -rf "$R"; mkdir -p "$R"  # RELION reads the images relative to its working folder: it runs in the set's
      $PY "$here/eval_class2d.py" --strip "$W/sim1tii/particles.star" "$W/sim1tii/particles_blind.star"
      read -r ini mid fin <<< "${RELION_ITERS:-50 200 50}"
      read -r sub0 sub1 <<< "${RELION_SUBSETS:-100 500}"
      cmd=(relion_refine --o "$R/run" --i "$W/sim1tii/particles_blind.star" --denovo_3dref --sgd --K 1 --sym C1
           --particle_diameter 115 --ctf --zero_mask --flatten_solvent --healpix_order 1 --offset_range 6 --offset_step 2
           --sgd_ini_iter $ini --sgd_inbetween_iter $mid --sgd_fin_iter $fin --sgd_ini_resol 35 --sgd_fin_resol 12
           --sgd_ini_subset $sub0 --sgd_fin_subset $sub1 --sgd_write_iter $((ini + mid + fin)) --pad 1 --dont_combine_weights_via_disc --pool 3 --j 2)
      echo "${cmd[*]}" > "$R.cmd"
      (cd "$W/sim1tii" && flock $LOCK /usr/bin/time -v -o "$R.time" "${cmd[@]}" > "$R.log" 2>&1)
      wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$R.time")
      last=$(ls "$R"/run_it*_class001.mrc | sort | tail -n 1)
      score=$("$EMCRYO" align-map --map "$last" --ref "$W/sim1tii/truth_class001.mrc" | tr '\n' ' ')
      echo "relion_refine --denovo_3dref --sgd: wall $wall; $(basename "$last"): $score" | tee -a "$W/summary.txt" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
