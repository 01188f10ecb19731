#!/usr/bin/env bash
# On the device tool's H200 host, from this repository's root (.devinc copied under /usr/include
# first; RELION 5 packed in $RELION_CARRY by shared/tools/relion5-pack.sh when PHASES has relion):
#   build    emcryo, the GPU tests and bench/gpu_scoring (Release, -DEMCRYO_CUDA=ON)
#   tests    info --devices, test_gpu, the GpuJobs integration tests (CPU vs GPU answers)
#   scoring  bench/gpu_scoring: TFLOP/s and score error per precision at E-step shapes
#   many     bench/gpu_many_scores: the per-particle passes' scores kernel per tile shape and split
#   class2d  simulate C2D_N particles (box C2D_BOX, C2D_K views), class2d K classes on the GPU
#   refine   simulate REF_N particles (box REF_BOX), refine from a 30 Å start on the GPU (REF_ENVS: runs with other settings)
#   relion   RELION 5 (CUDA) built beside emcryo; class2d then also runs it on the same data
#   relion_refine  RELION 5 auto-refine on the refine data (REL_REF_TIMEOUT)
# REL_C2D_N, REL_REF_N: RELION runs on the first N particles only (its full run may not fit a call); its time per particle
# per iteration is then the comparable figure.
# C2D_PRECISIONS, C2D_BATCHES, C2D_MANY: the class2d runs (EMCRYO_GPU_PRECISION x --batch x EMCRYO_GPU_MANY).
# GPU_JOBS=0: the tests phase runs test_gpu only (not the GpuJobs integration tests, nor their build).
# SIM_EXTRA: more simulate options (e.g. --float16 halves a 100,000-particle box-256 stack to 13 GB).
# DEADLINE (seconds from the start, default 575): each timed run is cut short so that it ends, and its log is copied,
# before the device call's own limit (600 s) would kill the script with it.
# Logs and a summary (summary.txt) under $OUT.
set -uo pipefail
root=$(pwd); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/lib.sh
script_start=$(now)
# A run's limit: the one asked for, or what is left before DEADLINE (less 10 s for the copies), whichever is less.
capped() { awk -v want="$1" -v left="$(awk -v d="${DEADLINE:-575}" -v e="$(since $script_start)" 'BEGIN {print int(d - e - 10)}')" \
  'BEGIN {print (left < want ? (left > 1 ? left : 1) : want)}'; }
PHASES=${PHASES:-build tests scoring class2d refine}
C2D_N=${C2D_N:-20000} C2D_BOX=${C2D_BOX:-128} C2D_K=${C2D_K:-50} C2D_IT=${C2D_IT:-5} C2D_PIX=${C2D_PIX:-2.0}
REF_N=${REF_N:-10000} REF_BOX=${REF_BOX:-128} REF_PIX=${REF_PIX:-1.5}
E=$root/build-dev/apps/emcryo
S=$OUT/summary.txt
say() { echo "$*" | tee -a "$S"; }
has() { [[ " $PHASES " == *" $1 "* ]]; }

# Peak GPU memory (MiB) of whatever runs while it samples; stop with stop_memory.
start_memory() { (peak=0; while :; do m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); ((m > peak)) && peak=$m && echo $peak > /tmp/gpu_peak; sleep 0.5; done) & MEMPID=$!; echo 0 > /tmp/gpu_peak; }
stop_memory() { kill $MEMPID 2>/dev/null; wait $MEMPID 2>/dev/null; cat /tmp/gpu_peak; }

R=/tmp/relion5/relion/build/bin/relion_refine_mpi
if has relion && [[ ! -x $R ]]; then  # in the background, beside emcryo's build: RELION_CARRY holds relion5-pack.sh's output
  (s=$(now); bash "$RELION_CARRY/relion5-build-cuda.sh" "$RELION_CARRY" && cd /tmp/relion5/relion/build && make -j8 refine_mpi &&
     echo "RELION 5 build: $(since $s) s") > "$OUT/relion_build.log" 2>&1 &
  RELPID=$!
fi
if has build; then
  s=$(now)
  targets="emcryo test_gpu test_integration gpu_scoring gpu_many_scores"; has tests || has many || targets=emcryo
  [[ ${GPU_JOBS:-1} == 0 ]] && targets=${targets/ test_integration/}
  cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DEMCRYO_CUDA=ON > "$OUT/build.log" 2>&1 &&
    cmake --build build-dev -j$(has relion && echo 8 || echo 16) --target $targets >> "$OUT/build.log" 2>&1 ||
    { tail -40 "$OUT/build.log"; exit 1; }
  say "build: $(since $s) s"
fi
if [[ -n ${RELPID:-} ]]; then wait $RELPID; tail -1 "$OUT/relion_build.log" | tee -a "$S"; fi
# RELION's iteration times: seconds from the start to each run_itNNN_optimiser.star.
relion_iterations() { local t0=$1 dir=$2; for f in $(ls $dir/run_it*_optimiser.star 2>/dev/null); do echo -n "$(basename $f | sed 's/run_it0*\([0-9]*\)_.*/it\1/'):$(( $(stat -c %Y $f) - ${t0%.*} ))s "; done; echo; }
if has tests; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$S"
  "$E" info --devices | tee -a "$S"
  ./build-dev/tests/test_gpu > "$OUT/test_gpu.log" 2>&1; say "test_gpu: exit $? ($(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/test_gpu.log" | tr '\n' ' '))"
  grep -E "max \|GPU" "$OUT/test_gpu.log" | tee -a "$S"
  if [[ ${GPU_JOBS:-1} != 0 ]]; then
    s=$(now)
    ./build-dev/tests/test_integration --gtest_filter='GpuJobs*' > "$OUT/test_gpu_jobs.log" 2>&1
    say "GpuJobs: exit $? in $(since $s) s ($(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/test_gpu_jobs.log" | tr '\n' ' '))"
    grep -E "ARI against|map FSC|abinitio: FSC" "$OUT/test_gpu_jobs.log" | tee -a "$S"
  fi
fi
if has scoring; then
  {
    ./build-dev/bench/gpu_scoring 256 9 3640 700 20      # class2d coarse chunk, box 256, K = 100
    ./build-dev/bench/gpu_scoring 256 25 4608 1200 10    # refine coarse chunk (global search)
    ./build-dev/bench/gpu_scoring 1 27 200 9000 200      # one particle's fine pass
  } 2>&1 | tee "$OUT/scoring.txt" | tee -a "$S"
fi
if has many; then
  {
    ./build-dev/bench/gpu_many_scores 120 9 53 6000 20    # a box-256 refine's last local pass (one 512 MB group)
    ./build-dev/bench/gpu_many_scores 600 9 53 1200 20    # the same at an early iteration's resolution
    ./build-dev/bench/gpu_many_scores 200 25 100 3000 20  # more shifts and templates a particle
  } 2>&1 | tee "$OUT/many.txt" | tee -a "$S"
fi
c2d=/tmp/c2d; ref=/tmp/ref
if has class2d; then
  s=$(now)
  "$E" simulate --model "$root/data/1tii.pdb.gz" --out $c2d --particles $C2D_N --box $C2D_BOX --pixel-size $C2D_PIX --snr 0.05 \
    --orientations views --views $C2D_K --seed 7 ${SIM_EXTRA:-} > "$OUT/c2d_simulate.log" 2>&1
  strip_poses $c2d/particles.star $c2d/blind.star
  say "class2d data: $C2D_N particles, box $C2D_BOX, $C2D_K views, simulated in $(since $s) s"
  for prec in ${C2D_PRECISIONS:-split-tf32}; do for batch in ${C2D_BATCHES:-256}; do for many in ${C2D_MANY:-1}; do
    run=gpu_${prec}_b${batch}_m$many
    rm -rf $c2d/$run  # a warm machine keeps the last call's /tmp: a job refuses a used folder
    start_memory; s=$(now)
    EMCRYO_GPU_MANY=$many EMCRYO_GPU_PRECISION=$prec timeout $(capped ${C2D_TIMEOUT:-300}) "$E" class2d --particles $c2d/blind.star --classes $C2D_K --out $c2d/$run \
      --iterations $C2D_IT --batch $batch --mask-diameter $(awk -v b=$C2D_BOX -v p=$C2D_PIX 'BEGIN{print int(0.8*b*p)}') > /dev/null 2>&1
    rc=$?; t=$(since $s); mem=$(stop_memory)
    say "emcryo class2d GPU $prec --batch $batch EMCRYO_GPU_MANY=$many: exit $rc, $t s, peak GPU memory $mem MiB, $(python3 bench/gpu/accuracy.py class2d $c2d/truth.star $c2d/$run/particles.star 2>&1)"
    grep -E "^.*iteration +[0-9]+/" $c2d/$run/run.log | tail -4 | tee -a "$S"
    cp $c2d/$run/run.log "$OUT/class2d_$run.log" 2>/dev/null
  done; done; done
  if has relion && [[ -x $R ]]; then
    D=$(awk -v b=$C2D_BOX -v p=$C2D_PIX 'BEGIN{print int(0.8*b*p)}')
    rm -rf $c2d/relion; mkdir -p $c2d/relion; start_memory; s=$(now)
    head_particles $c2d/blind.star $c2d/relion_in.star ${REL_C2D_N:-$C2D_N}
    (cd $c2d && timeout $(capped ${REL_C2D_TIMEOUT:-150}) mpirun --allow-run-as-root --oversubscribe -np 3 "$R" --i relion_in.star --o relion/run \
       --K $C2D_K --iter ${REL_C2D_IT:-2} --tau2_fudge 2 --particle_diameter $D --ctf --psi_step 6 --offset_range 3 --offset_step 1 \
       --flatten_solvent --zero_mask --norm --scale --dont_combine_weights_via_disc --pool 30 --pad 2 --j 4 --gpu --oversampling 1 \
       --random_seed 1 > relion.log 2>&1)
    rc=$?; t=$(since $s); mem=$(stop_memory)
    last=$(ls $c2d/relion/run_it*_data.star 2>/dev/null | tail -1)
    say "RELION 5 class2d GPU (${REL_C2D_N:-$C2D_N} particles): exit $rc, $t s, peak GPU memory $mem MiB, iterations $(relion_iterations $s $c2d/relion)"
    [[ -n $last ]] && say "  RELION 5 $(python3 bench/gpu/accuracy.py class2d $c2d/truth.star $last 2>&1) ($(basename $last))"
    tail -5 $c2d/relion.log > "$OUT/relion_class2d.log"
  fi
fi
if has refine; then
  s=$(now)
  # A later call on the same warm machine reuses the set it simulated (same size and box).
  made="$REF_N $REF_BOX $REF_PIX ${SIM_EXTRA:-}"
  if [[ -f $ref/blind.star && "$(cat $ref/made 2>/dev/null)" == "$made" ]]; then
    say "refine data: $REF_N particles, box $REF_BOX, reused from an earlier call"
  else
    rm -rf $ref
    "$E" simulate --model "$root/data/1tii.pdb.gz" --out $ref --particles $REF_N --box $REF_BOX --pixel-size $REF_PIX --snr 0.05 \
      --seed 11 ${SIM_EXTRA:-} > "$OUT/ref_simulate.log" 2>&1
    strip_poses $ref/particles.star $ref/blind.star
    echo "$made" > $ref/made
    say "refine data: $REF_N particles, box $REF_BOX, simulated in $(since $s) s"
  fi
  # REF_ENVS: one run per entry, each a comma-separated list of environment settings ("-": none),
  # e.g. "- EMCRYO_GPU_TRANSFORMS=0" compares the defaults with the CPU's 3D transforms in one call.
  # REF_EXTRA: more refine options (e.g. --max-iterations 3).
  i=0
  for envs in ${REF_ENVS:--}; do
    i=$((i + 1)); run=gpu_r$i; settings=(); [[ $envs != - ]] && IFS=, read -ra settings <<< "$envs"
    rm -rf $ref/$run; start_memory; s=$(now)
    env "${settings[@]}" timeout $(capped ${REF_TIMEOUT:-300}) "$E" refine --particles $ref/blind.star --ref $ref/truth_class001.mrc --ini-high 30 \
      --out $ref/$run ${REF_EXTRA:-} > /dev/null 2> "$OUT/refine_$run.stderr"
    rc=$?; t=$(since $s); mem=$(stop_memory)
    [[ $rc == 0 ]] || say "emcryo refine GPU ($envs) failed: $(grep -v '%' "$OUT/refine_$run.stderr" | tail -3)"
    accuracy="no particles.star (the run did not finish)"
    [[ -f $ref/$run/particles.star ]] && accuracy=$(python3 bench/gpu/accuracy.py refine $ref/truth.star $ref/$run/particles.star 2>&1)
    say "emcryo refine GPU ($envs): exit $rc, $t s, peak GPU memory $mem MiB, $accuracy"
    grep -E "iteration +[0-9]+:|refine: [0-9.]+ Å" $ref/$run/run.log | tail -${REF_LOG_LINES:-6} | tee -a "$S"
    cp $ref/$run/run.log "$OUT/refine_$run.log" 2>/dev/null
  done
fi
if has relion_refine && [[ -x $R ]]; then
  if [[ ! -f $ref/blind.star ]]; then
    "$E" simulate --model "$root/data/1tii.pdb.gz" --out $ref --particles $REF_N --box $REF_BOX --pixel-size $REF_PIX --snr 0.05 \
      --seed 11 > "$OUT/ref_simulate.log" 2>&1
    strip_poses $ref/particles.star $ref/blind.star
  fi
  D=$(awk -v b=$REF_BOX -v p=$REF_PIX 'BEGIN{print int(0.8*b*p)}')
  rm -rf $ref/relion; mkdir -p $ref/relion; head_particles $ref/blind.star $ref/relion_in.star ${REL_REF_N:-$REF_N}
  start_memory; s=$(now)
  (cd $ref && timeout $(capped ${REL_REF_TIMEOUT:-120}) mpirun --allow-run-as-root --oversubscribe -np 3 "$R" --o relion/run --auto_refine \
     --split_random_halves --i relion_in.star --ref truth_class001.mrc --firstiter_cc --ini_high 30 --particle_diameter $D \
     --healpix_order 2 --auto_local_healpix_order 4 --low_resol_join_halves 40 --sym C1 --j 4 --ctf --flatten_solvent --zero_mask \
     --norm --scale --oversampling 1 --offset_range 3 --offset_step 1 --dont_combine_weights_via_disc --pool 30 --pad 2 \
     --random_seed 1 --gpu > relion.log 2>&1)
  rc=$?; t=$(since $s); mem=$(stop_memory)
  say "RELION 5 refine GPU (${REL_REF_N:-$REF_N} particles, box $REF_BOX): exit $rc, $t s, peak GPU memory $mem MiB, iterations $(relion_iterations $s $ref/relion)"
  last=$(ls $ref/relion/run_it*_half1_model.star 2>/dev/null | tail -1)
  [[ -n $last ]] && say "  RELION 5 last half-map resolution: $(grep _rlnCurrentResolution $last | awk '{print $2}') Å ($(basename $last))"
  tail -5 $ref/relion.log > "$OUT/relion_refine.log"
fi
say "done"
