#!/usr/bin/env bash
# Ab-initio on the device tool's 16-core host (issue 15): emcryo abinitio and RELION 3.1.3's
# `relion_refine --denovo_3dref --sgd` on the same simulated 1TII set as bench/abinitio.sh (5000
# particles, 64 px, 2 Å/px, SNR 0.05, seed 11), one after the other on the same cores.
#
# Run from an emcryo source tree on that host:
#   DEVINC=DIR RELION313=DIR DEADLINE=EPOCH_SECONDS bash bench/abinitio_device.sh
# DEVINC: headers the host lacks (gemmi, tao, stb), copied under /usr/include; RELION313: bin/
# relion_refine and the lib/ it needs beyond libc/libstdc++ (Debian's 3.1.3 build); DEADLINE: RELION
# is stopped 20 s before it (its last written iteration is then scored); THREADS (16).
# RELION_ITERS="initial in-between final" SGD iterations (default 4 16 4; RELION's own is 50 200 50),
# RELION_SUBSETS="initial final" minibatch sizes (default 100 300, as emcryo's).
# Writes to $OUT: summary.txt, the maps (emcryo_class_001.mrc, relion_last.mrc), logs, and
# checksums of the simulated set to compare with the one simulated locally.
# SKIP_BUILD=1 with EMCRYO=path: use an existing binary (to test this script on tiny data:
# PARTICLES=200, AB_ARGS="--iterations 3", RELION_ITERS="1 1 1").
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
THREADS=${THREADS:-16} PARTICLES=${PARTICLES:-5000} BOX=${BOX:-64}
DEADLINE=${DEADLINE:-$(( $(date +%s) + 480 ))}
S=$OUT/summary.txt
say() { echo "$*" | tee -a "$S"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
say "# $(date -u '+%F %T') UTC; $(lscpu | sed -n 's/^Model name: *//p'); $(nproc) cores; threads $THREADS"

E=${EMCRYO:-$root/build-dev/apps/emcryo}
if [[ -z ${SKIP_BUILD:-} ]]; then
  s=$(now)
  cp -r "$DEVINC"/* /usr/include/
  { cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DEMCRYO_CUDA=OFF -DEMCRYO_BUILD_TESTS=OFF -DEMCRYO_BUILD_BENCH=OFF &&
      cmake --build build-dev -j"$THREADS" --target emcryo; } > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  say "build: $(since $s) s"
fi

W=/tmp/abw; rm -rf "$W"; mkdir -p "$W"
s=$(now)
"$E" -j "$THREADS" simulate --model "$root/data/1tii.pdb.gz" --out "$W/sim1tii" --particles "$PARTICLES" --box "$BOX" --pixel-size 2 --snr 0.05 --seed 11 > "$W/simulate.log" 2>&1 || { tail "$W/simulate.log"; exit 1; }
say "simulate: $(since $s) s"
# The set's fingerprint: the truth poses' text and the images' bytes.
(cd "$W/sim1tii" && md5sum truth.star *.mrcs) | tee "$OUT/checksums.txt" | tee -a "$S"

s=$(now)
/usr/bin/time -v -o "$W/ab.time" "$E" -j "$THREADS" abinitio --particles "$W/sim1tii/particles.star" --out "$W/ab" ${AB_ARGS:-} > "$OUT/emcryo_abinitio.log" 2>&1 || { tail "$OUT/emcryo_abinitio.log"; exit 1; }
say "emcryo -j $THREADS abinitio: wall $(since $s) s ($(grep -c . "$OUT/emcryo_abinitio.log") log lines)"
cp "$W/ab/class_001.mrc" "$OUT/emcryo_class_001.mrc"

# RELION: a particles STAR without the pose columns (awk: no python packages needed).
awk '/^data_/{blk=$1; n=0; m=0; split("", drop)}
     blk=="data_particles" && /^_rln/ {n++; if ($1 ~ /^_rlnAngle|^_rlnOrigin/) {drop[n]=1; next} else {m++; print $1 " #" m; next}}
     blk=="data_particles" && NF>2 && $1 !~ /^_/ && $1 !~ /^#/ {s=""; for(i=1;i<=NF;i++) if(!drop[i]) s=s (s==""?"":" ") $i; print s; next}
     {print}' "$W/sim1tii/particles.star" > "$W/sim1tii/particles_blind.star"
read -r ini mid fin <<< "${RELION_ITERS:-4 16 4}"
read -r sub0 sub1 <<< "${RELION_SUBSETS:-100 300}"
R=$W/relion; mkdir -p "$R"
cmd=(relion_refine --o "$R/run" --i particles_blind.star --denovo_3dref --sgd --K 1 --sym C1
     --particle_diameter 115 --ctf --zero_mask --flatten_solvent --healpix_order 1 --offset_range 6 --offset_step 2
     --sgd_ini_iter "$ini" --sgd_inbetween_iter "$mid" --sgd_fin_iter "$fin" --sgd_ini_resol 35 --sgd_fin_resol 12
     --sgd_ini_subset "$sub0" --sgd_fin_subset "$sub1" --sgd_write_iter 1 --pad 1 --dont_combine_weights_via_disc --pool 3 --j "$THREADS")
say "RELION: ${cmd[*]}"
left=$(( DEADLINE - 20 - $(date +%s) ))
say "RELION time limit: $left s"
s=$(now)
(cd "$W/sim1tii" && PATH=$RELION313/bin:$PATH LD_LIBRARY_PATH=$RELION313/lib timeout "$left" "${cmd[@]}" > "$OUT/relion.log" 2>&1)
rc=$?
t0=${s%.*}
iters=""
for f in $(ls "$R"/run_it*_optimiser.star 2>/dev/null); do iters+="$(basename "$f" | sed 's/run_it0*\([0-9]*\)_.*/it\1/'):$(( $(stat -c %Y "$f") - t0 ))s "; done
say "RELION: exit $rc (124 = stopped at the time limit) after $(since $s) s; iterations written at: $iters"
last=$(ls "$R"/run_it*_class001.mrc 2>/dev/null | sort | tail -n 1)
[[ -n $last ]] && cp "$last" "$OUT/relion_last.mrc" && say "RELION last map: $(basename "$last")"
grep -E "Resolution|resolution|healpix|sampling" "$R"/run_it*_model.star 2>/dev/null | tail -n 4 >> "$S"
exit 0
