#!/usr/bin/env python3
"""Accuracy of a class2d or refine run against emcryo simulate's truth.star (numpy only; the device
host has no mrcfile). class2d: adjusted Rand index of rlnClassNumber against emcryoTrueView.
refine: median angle between estimated and true orientations (degrees), and the fraction within 5°.
Also compares two runs: `compare A.star B.star STEP` gives the ARI between their classes or the
fraction of poses within STEP degrees.
  accuracy.py class2d truth.star particles.star
  accuracy.py refine truth.star particles.star
  accuracy.py compare a.star b.star [step]
  accuracy.py parting run_a/ run_b/   (per iteration kept in both: the share of particles whose class or in-plane
                                       angle differs, and the ARI between the two runs' classes)"""
import sys
from collections import Counter

import numpy as np


def read_particles(path):
    labels, rows, block, in_loop = [], [], None, False
    for line in open(path):
        s = line.strip()
        if s.startswith("data_"):
            block, labels, in_loop = s, [], False
            continue
        if block != "data_particles":
            continue
        if s.startswith("loop_"):
            in_loop = True
        elif s.startswith("_rln") or s.startswith("_emcryo"):
            labels.append(s.split()[0][1:])
        elif in_loop and s and not s.startswith("#") and labels:
            rows.append(s.split())
    return {l: [r[i] for r in rows] for i, l in enumerate(labels)}


def matched(truth, run):
    """The truth's rows in the run's order, by image name: a run may hold a subset (RELION on the first N)."""
    if "rlnImageName" not in truth or "rlnImageName" not in run:
        return truth
    def key(name):  # index@stack, the stack by its file name (a job may write it with its folder)
        index, _, stack = name.partition("@")
        return int(index), stack.rsplit("/", 1)[-1]
    where = {key(name): i for i, name in enumerate(truth["rlnImageName"])}
    rows = [where[key(name)] for name in run["rlnImageName"]]
    return {label: [values[i] for i in rows] for label, values in truth.items()}


def ari(a, b):
    pairs = lambda x: x * (x - 1) / 2
    joint = Counter(zip(a, b))
    s = sum(pairs(v) for v in joint.values())
    sa = sum(pairs(v) for v in Counter(a).values())
    sb = sum(pairs(v) for v in Counter(b).values())
    expected = sa * sb / pairs(len(a))
    return (s - expected) / ((sa + sb) / 2 - expected)


def matrices(t):
    rot, tilt, psi = (np.radians(np.array(t[k], dtype=float)) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    def rz(a):
        c, s = np.cos(a), np.sin(a)
        m = np.zeros((len(a), 3, 3)); m[:, 0, 0] = c; m[:, 0, 1] = s; m[:, 1, 0] = -s; m[:, 1, 1] = c; m[:, 2, 2] = 1
        return m
    def ry(a):
        c, s = np.cos(a), np.sin(a)
        m = np.zeros((len(a), 3, 3)); m[:, 0, 0] = c; m[:, 0, 2] = -s; m[:, 2, 0] = s; m[:, 2, 2] = c; m[:, 1, 1] = 1
        return m
    return rz(psi) @ ry(tilt) @ rz(rot)


def angles_between(a, b):
    r = np.einsum("nij,nkj->nik", matrices(a), matrices(b))
    return np.degrees(np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def parting(dir_a, dir_b):
    """Per kept iteration of two class2d runs: how many particles the runs place differently."""
    import glob, os
    out = []
    for path in sorted(glob.glob(os.path.join(dir_a, "particles_it*.star"))):
        other = os.path.join(dir_b, os.path.basename(path))
        if not os.path.exists(other):
            continue
        a, b = read_particles(path), read_particles(other)
        differ = np.mean(np.array(a["rlnClassNumber"]) != np.array(b["rlnClassNumber"]))
        psi = np.abs(np.array(a["rlnAnglePsi"], dtype=float) - np.array(b["rlnAnglePsi"], dtype=float)) % 360
        moved = np.mean(np.minimum(psi, 360 - psi) > 1e-3)
        it = os.path.basename(path)[len("particles_it"):-len(".star")]
        out.append(f"it{it}: class {100 * differ:.2f}% psi {100 * moved:.2f}% ARI {ari(a['rlnClassNumber'], b['rlnClassNumber']):.3f}")
    print("; ".join(out) if out else "no iteration kept in both")


def main():
    if sys.argv[1] == "parting":
        return parting(sys.argv[2], sys.argv[3])
    mode, a, b = sys.argv[1], read_particles(sys.argv[2]), read_particles(sys.argv[3])
    a = matched(a, b)
    if mode == "class2d":
        print(f"ARI {ari(a['emcryoTrueView'], b['rlnClassNumber']):.4f}")
    elif mode == "refine":
        d = angles_between(a, b)
        print(f"median pose error {np.median(d):.2f} deg, within 5 deg {100 * np.mean(d <= 5):.1f}%")
    else:
        if "rlnAngleRot" in a and "rlnAngleRot" in b and len(sys.argv) > 4:
            d = angles_between(a, b)
            step = float(sys.argv[4])
            print(f"poses within {step} deg: {100 * np.mean(d <= step * 1.001):.2f}%")
        print(f"ARI between runs {ari(a['rlnClassNumber'], b['rlnClassNumber']):.4f}")


main()
