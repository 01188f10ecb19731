# Shared by the device-host scripts in bench/gpu/ (sourced from the repository root there).

# The headers the host lacks (carried in .devinc), then emcryo in Release into build-dev/.
build_emcryo() {
  [[ -d .devinc ]] && cp -r .devinc/* /usr/include/
  cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DEMCRYO_BUILD_TESTS=OFF -DEMCRYO_BUILD_BENCH=OFF > /tmp/cmake.log 2>&1 &&
    cmake --build build-dev -j"${1:-16}" --target emcryo > /tmp/build.log 2>&1
}

# RELION 5's relion_refine_mpi with CUDA from what shared/tools/relion5-pack.sh packed (.gpu-carry).
build_relion5() {
  bash .gpu-carry/relion5-build-cuda.sh .gpu-carry > /tmp/relion_build.log 2>&1 &&
    (cd /tmp/relion5/relion/build && make -j"${1:-10}" refine_mpi >> /tmp/relion_build.log 2>&1)
}

# A copy of a particles STAR without rlnAngle*/rlnOrigin* columns (awk: the host has no numpy).
strip_poses() {
  awk '/^data_/{blk=$1; n=0; m=0; split("", drop)}
       blk=="data_particles" && /^_rln/ {n++; if ($1 ~ /^_rlnAngle|^_rlnOrigin/) {drop[n]=1; next} else {m++; print $1 " #" m; next}}
       blk=="data_particles" && NF>2 && $1 !~ /^_/ && $1 !~ /^#/ {s=""; for(i=1;i<=NF;i++) if(!drop[i]) s=s (s==""?"":" ") $i; print s; next}
       {print}' "$1" > "$2"
}

# The first N particle rows of a particles STAR (every other block and the header kept): RELION's subset at the
# benchmark's size when its full run would not fit a call.
head_particles() {
  awk -v n="$3" '/^data_/{blk=$1}
       blk=="data_particles" && NF>2 && $1 !~ /^_/ && $1 !~ /^#/ {if (++k > n) next}
       {print}' "$1" > "$2"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
