#!/usr/bin/python3
"""Score a 3D refinement against simulated truth.

  eval_refine.py --truth DIR/truth.star --est RESULT_data.star --map MAP.mrc --true-map TRUE.mrc
                 [--label NAME] [--json OUT.json]

Pose error: the angle of the rotation R_true^T R_est per particle (degrees), matched by image
name (index@basename), median and the fraction under 5 and 10 degrees. Valid without any frame
alignment because both programs start from the true map, low-passed, so they refine in its frame.
Map quality: FSC of MAP against TRUE, both multiplied by a soft sphere of radius box/2 - 4 px
(RELION zeroes its maps outside box/2, see bench/RESULTS.md), reported where it first drops
below 0.5 and 0.143, in Å. numpy and mrcfile only.
"""
import argparse
import json
import os
import sys

import mrcfile
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_class2d import read_star_block  # noqa: E402


def euler_matrix(rot, tilt, psi):
    """RELION's Euler convention (ZYZ, rotating the reference into the particle frame)."""
    a, b, g = np.radians(rot), np.radians(tilt), np.radians(psi)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cb * ca - sg * sa
    m[..., 0, 1] = cg * cb * sa + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cb * ca - cg * sa
    m[..., 1, 1] = -sg * cb * sa + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sb * ca
    m[..., 2, 1] = sb * sa
    m[..., 2, 2] = cb
    return m


def poses(path):
    cols, rows = read_star_block(path)
    idx = {c: k for k, c in enumerate(cols)}
    names = [r[idx["rlnImageName"]] for r in rows]
    keys = [n.split("@")[0] + "@" + os.path.basename(n.split("@")[1]) for n in names]
    ang = np.array([[float(r[idx[c]]) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")] for r in rows])
    return dict(zip(keys, range(len(keys)))), ang


def fsc_curve(a, b):
    n = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    f = np.fft.fftfreq(n)
    k = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2) * n
    shell = np.round(k).astype(int).ravel()
    num = np.bincount(shell, (fa * np.conj(fb)).real.ravel())
    da = np.bincount(shell, (np.abs(fa) ** 2).ravel())
    db = np.bincount(shell, (np.abs(fb) ** 2).ravel())
    m = n // 2 + 1
    return num[:m] / np.sqrt(da[:m] * db[:m] + 1e-30)


def crossing(curve, threshold, n, apix):
    """Resolution (Å) where the FSC first falls below threshold, linearly interpolated."""
    for s in range(1, len(curve)):
        if curve[s] < threshold:
            t = (curve[s - 1] - threshold) / (curve[s - 1] - curve[s])
            shell = s - 1 + t
            return n * apix / shell if shell > 0 else float("inf")
    return 2 * apix


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--est", required=True)
    p.add_argument("--map", required=True)
    p.add_argument("--true-map", required=True)
    p.add_argument("--label", default="est")
    p.add_argument("--json")
    a = p.parse_args()

    tidx, tang = poses(a.truth)
    eidx, eang = poses(a.est)
    common = [k for k in eidx if k in tidx]
    if not common:
        sys.exit(f"eval_refine: no image names of {a.est} are in {a.truth}")
    rt = euler_matrix(*tang[[tidx[k] for k in common]].T)
    re = euler_matrix(*eang[[eidx[k] for k in common]].T)
    tr = np.einsum("nji,njk->nik", rt, re).trace(axis1=1, axis2=2)
    err = np.degrees(np.arccos(np.clip((tr - 1) / 2, -1, 1)))

    with mrcfile.open(a.map, permissive=True) as m:
        est = m.data.astype(np.float64)
        apix = float(m.voxel_size.x)
    with mrcfile.open(a.true_map, permissive=True) as m:
        true = m.data.astype(np.float64)
    n = est.shape[0]
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    radius = n / 2 - 4
    mask = np.clip((radius + 3 - r) / 3, 0, 1)
    mask = 0.5 - 0.5 * np.cos(np.pi * mask)
    curve = fsc_curve(est * mask, true * mask)
    out = {
        "label": a.label,
        "particles": len(common),
        "median_pose_error_deg": float(np.median(err)),
        "fraction_under_5deg": float(np.mean(err < 5)),
        "fraction_under_10deg": float(np.mean(err < 10)),
        "fsc_vs_true_0.5_A": crossing(curve, 0.5, n, apix),
        "fsc_vs_true_0.143_A": crossing(curve, 0.143, n, apix),
    }
    print(f"{a.label}: median pose error {out['median_pose_error_deg']:.2f} deg "
          f"(<5 deg {100 * out['fraction_under_5deg']:.1f}%, <10 deg {100 * out['fraction_under_10deg']:.1f}%), "
          f"FSC vs true map 0.5: {out['fsc_vs_true_0.5_A']:.2f} A, 0.143: {out['fsc_vs_true_0.143_A']:.2f} A")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
