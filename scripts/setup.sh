#!/usr/bin/env bash
# Installs the Debian packages emcryo needs (only those missing; idempotent, no prompt) and
# builds it in Release into build/. Usage: scripts/setup.sh [--with-test-tools]
set -euo pipefail
cd "$(dirname "$0")/.."

build_packages=(cmake ninja-build g++ pkg-config libfftw3-dev libopenblas-openmp-dev libcli11-dev
  nlohmann-json3-dev libfmt-dev libstb-dev libgtest-dev gemmi-dev tao-pegtl-dev zlib1g-dev
  libopenmpi-dev openmpi-bin  # EMCRYO_MPI: mpirun -np N emcryo ... (the build also works without MPI)
  libjs-chart.js)  # Chart.js, inlined into report.html when a job writes it (not linked)
# Test oracles only, never linked: RELION 3.1.3 and python3-mrcfile check our formats; numpy reads
# our .cs files; headless chromium loads report.html; clang with libFuzzer (and LLVM's OpenMP)
# builds the fuzz targets in build-fuzz/ (fuzz/run.sh).
test_packages=(relion python3-mrcfile python3-numpy chromium clang libclang-rt-14-dev libomp-dev)

wanted=("${build_packages[@]}")
if [[ "${1:-}" == "--with-test-tools" ]]; then wanted+=("${test_packages[@]}"); fi

missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "emcryo setup: installing ${missing[*]}"
  as_root=()
  [[ $(id -u) -ne 0 ]] && as_root=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
