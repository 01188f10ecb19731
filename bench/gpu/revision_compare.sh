#!/usr/bin/env bash
# On the device tool's GPU host, from this repository's root: the same class2d data classified on the GPU by
# this tree's emcryo and by older revisions (their `git archive` tarballs carried in $REV_CARRY, e.g.
# .rev-carry/8948f33.tar.gz), with every iteration's particles kept, so that a change in the answer is traced to
# the first iteration (and the first particles) where two builds part. SEEDS: this tree is also run with these
# --seed values, to show how far the answer moves with the seed alone (a chaotic trajectory, not a defect).
#   N, BOX, K, IT, PIX: the data and the run (defaults: 30,000 particles, box 256, 100 views and classes, 8 iterations)
#   BUILD_ONLY=1: the builds only (a warm machine keeps them for the next call)
# Summary in $OUT/summary.txt.
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/lib.sh
N=${N:-30000} BOX=${BOX:-256} K=${K:-100} IT=${IT:-8} PIX=${PIX:-2.0} SEEDS=${SEEDS:-2} REV_CARRY=${REV_CARRY:-.rev-carry}
S=$OUT/summary.txt
say() { echo "$*" | tee -a "$S"; }
[[ -d .devinc ]] && cp -r .devinc/* /usr/include/

# emcryo of a source tree into its build-dev/ (Release, CUDA, the program only).
build_tree() {
  local src=$1 jobs=$2 s; s=$(now)
  cmake -S "$src" -B "$src/build-dev" -DCMAKE_BUILD_TYPE=Release -DEMCRYO_CUDA=ON -DEMCRYO_BUILD_TESTS=OFF -DEMCRYO_BUILD_BENCH=OFF \
    > "$OUT/build_$(basename "$src").log" 2>&1 &&
    cmake --build "$src/build-dev" -j"$jobs" --target emcryo >> "$OUT/build_$(basename "$src").log" 2>&1 ||
    { tail -30 "$OUT/build_$(basename "$src").log"; return 1; }
  echo "built $(basename "$src") in $(since $s) s"
}

declare -A bin
bin[main]=$root/build-dev/apps/emcryo
revs=()
for tar in "$REV_CARRY"/*.tar.gz; do
  [[ -e $tar ]] || continue
  rev=$(basename "$tar" .tar.gz); revs+=("$rev")
  mkdir -p "/tmp/rev/$rev" && tar -xzf "$tar" -C "/tmp/rev/$rev"
  bin[$rev]=/tmp/rev/$rev/build-dev/apps/emcryo
done
# The builds side by side (16 cores shared), each skipped where a warm machine kept it.
for name in main "${revs[@]}"; do
  [[ -x ${bin[$name]} ]] && continue
  src=$root; [[ $name != main ]] && src=/tmp/rev/$name
  (build_tree "$src" $((16 / (1 + ${#revs[@]}) + 1)) | tee -a "$S") &
done
wait
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$S"
[[ ${BUILD_ONLY:-0} == 1 ]] && exit 0

d=/tmp/revdata
if [[ ! -s $d/blind.star ]]; then
  s=$(now)
  "${bin[main]}" simulate --model "$root/data/1tii.pdb.gz" --out $d --particles $N --box $BOX --pixel-size $PIX --snr 0.05 \
    --orientations views --views $K --seed 7 --float16 > "$OUT/simulate.log" 2>&1
  strip_poses $d/particles.star $d/blind.star
  say "data: $N particles, box $BOX, $K views, simulated in $(since $s) s"
fi

# One class2d run: name, binary, seed.
classify() {
  local name=$1 exe=$2 seed=$3 s; s=$(now)
  rm -rf "$d/$name"
  timeout ${RUN_TIMEOUT:-200} "$exe" class2d --particles $d/blind.star --classes $K --out "$d/$name" --iterations $IT --batch 1024 \
    --seed "$seed" --keep-iterations 100 --mask-diameter $(awk -v b=$BOX -v p=$PIX 'BEGIN{print int(0.8*b*p)}') > /dev/null 2>&1
  say "$name: exit $? in $(since $s) s, $(python3 bench/gpu/accuracy.py class2d $d/truth.star "$d/$name/particles.star" 2>&1)"
  cp "$d/$name/run.log" "$OUT/$name.run.log" 2>/dev/null
}

classify main_seed1 "${bin[main]}" 1
for rev in "${revs[@]}"; do classify "${rev}_seed1" "${bin[$rev]}" 1; done
for seed in $SEEDS; do classify "main_seed$seed" "${bin[main]}" "$seed"; done

# Where two runs part: per iteration, the share of particles whose class (and in-plane angle) differs.
for other in "${revs[@]}" ${SEEDS:+$(printf 'seed%s ' $SEEDS)}; do
  [[ $other == seed* ]] && b="main_$other" || b="${other}_seed1"
  say "main_seed1 vs $b: $(python3 bench/gpu/accuracy.py parting "$d/main_seed1" "$d/$b" 2>&1)"
done
