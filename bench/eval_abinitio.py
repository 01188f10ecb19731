#!/usr/bin/python3
"""Score an ab-initio run against simulated truth.

  eval_abinitio.py --exe EMCRYO --run DIR --truth SIMDIR [--json OUT.json]

Each class_NNN.mrc in DIR is superposed on each truth_classNNN.mrc in SIMDIR with
`emcryo align-map` (rotation, shift and hand); classes are matched to truths by the best total
FSC-0.5 resolution; the class accuracy is the fraction of particles whose rlnClassNumber in
DIR/particles.star maps to their true class (truth.star), under that matching.
"""
import argparse
import glob
import itertools
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_class2d import image_key, table  # noqa: E402


def align(exe, moving, reference):
    out = subprocess.run([exe, "align-map", "--map", moving, "--ref", reference], capture_output=True, text=True, check=True).stdout
    res05 = float(re.search(r"FSC 0.5: ([0-9.]+)", out).group(1))
    flipped = "hand: flipped" in out
    return res05, flipped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--json")
    a = ap.parse_args()
    maps = sorted(glob.glob(os.path.join(a.run, "class_*.mrc")))
    truths = sorted(glob.glob(os.path.join(a.truth, "truth_class*.mrc")))
    res = [[align(a.exe, m, t) for t in truths] for m in maps]
    best = None
    for perm in itertools.permutations(range(len(truths)), len(maps)):
        total = sum(res[k][perm[k]][0] for k in range(len(maps)))
        if best is None or total < best[0]:
            best = (total, perm)
    perm = best[1]
    out = {"classes": [{"map": os.path.basename(maps[k]), "truth": os.path.basename(truths[perm[k]]),
                        "fsc05_A": res[k][perm[k]][0], "flipped": res[k][perm[k]][1]} for k in range(len(maps))]}
    if len(truths) > 1:
        est = table(os.path.join(a.run, "particles.star"))
        tru = table(os.path.join(a.truth, "truth.star"))
        true_class = {image_key(n): int(c) for n, c in zip(tru["rlnImageName"], tru["rlnClassNumber"])}
        right = sum(1 for n, c in zip(est["rlnImageName"], est["rlnClassNumber"])
                    if perm[int(c) - 1] + 1 == true_class[image_key(n)])
        out["class_accuracy"] = right / len(est["rlnImageName"])
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
