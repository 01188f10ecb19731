#!/usr/bin/env bash
# One command for a fresh Debian 12 machine: install what is missing, build, and run the main job
# (2D classification) on the built-in demo data simulated from the bundled 1TII model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out="demo_output/$(date +%Y%m%d-%H%M%S)"  # a new folder per run: earlier results stay
./build/apps/emcryo simulate --model data/1tii.pdb.gz --out "$out/data" --particles 2000 --box 64 \
  --pixel-size 2.0 --snr 0.1 --orientations views --views 10 --seed 1
./build/apps/emcryo class2d --particles "$out/data/particles.star" --classes 10 --out "$out/class2d" \
  --iterations 15 --mask-diameter 110 --seed 1
echo "Demo finished. Open $out/class2d/report.html in a browser."
