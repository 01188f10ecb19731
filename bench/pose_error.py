#!/usr/bin/python3
"""Median angle (degrees) and shift error (Å) of refined poses against true ones.
usage: pose_error.py TRUTH.star REFINED.star [PREFIX]   (PREFIX: emcryoBody2 compares with body 2's true pose)"""
import sys
import numpy as np


def read_particles(path):
    lines = open(path).read().split("data_particles")[1].splitlines()
    labels, rows = [], []
    for line in lines:
        s = line.strip()
        if s.startswith("_"):
            labels.append(s.split()[0][1:])
        elif s and not s.startswith(("loop_", "#", "data_")) and labels:
            rows.append(s.split())
    return labels, rows


def euler(rot, tilt, psi):
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array([[cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
                     [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
                     [sb * ca, sb * sa, cb]])


def poses(path, prefix):
    labels, rows = read_particles(path)
    col = {l: i for i, l in enumerate(labels)}
    out = []
    for r in rows:
        g = lambda name: float(r[col[prefix + name]])
        out.append((euler(g("AngleRot"), g("AngleTilt"), g("AnglePsi")), g("OriginXAngst"), g("OriginYAngst")))
    return out


truth = poses(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else "rln")
refined = poses(sys.argv[2], "rln")
angles = [np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1))) for (a, _, _), (b, _, _) in zip(truth, refined)]
shifts = [np.hypot(x1 - x2, y1 - y2) for (_, x1, y1), (_, x2, y2) in zip(truth, refined)]
print(f"{sys.argv[2]}: median angle error {np.median(angles):.2f} deg, median shift error {np.median(shifts):.2f} A")
