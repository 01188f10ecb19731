#!/usr/bin/python3
"""Score a 2D classification against simulated truth.

  eval_class2d.py --truth DIR/truth.star --est RESULT.star [--label NAME] [--json OUT.json]
      Adjusted Rand index of rlnClassNumber (RESULT) vs emcryoTrueView (truth), and the in-plane
      angle error: per estimated class, subtract the circular median of (psi_est - psi_true),
      then take the median |error| over all particles. The same is also reported for
      (psi_est + psi_true), which is the right quantity if the two programs used opposite
      rotation senses; the smaller of the two is the figure to quote, and which one it was
      is printed.
  eval_class2d.py --strip IN.star OUT.star
      Copy of a particles STAR without the pose columns (rlnAngle*, rlnOrigin*), so that a
      program that starts from the stored offsets/angles does not start from the truth.

Particles are matched by image name (index@basename of the stack), so row order and stack
path prefixes do not matter. Uses numpy only.
"""
import argparse
import json
import os
import sys

import numpy as np


def read_star_block(path, block="particles"):
    """Columns (list of names) and rows (list of token lists) of the loop in data_<block>.

    Handles RELION 3.1 files (data_optics + data_particles) and single-block files without
    data_optics (the only loop with rlnImageName is taken when data_<block> is absent)."""
    blocks = {}
    name = None
    with open(path) as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        i += 1
        if s.startswith("data_"):
            name = s[5:]
            blocks[name] = ([], [])
        elif s.startswith("loop_") and name is not None:
            cols, rows = blocks[name]
            while i < len(lines):
                t = lines[i].strip()
                if t.startswith("_"):
                    cols.append(t.split()[0][1:])
                    i += 1
                elif t == "" or t.startswith("#"):
                    i += 1
                    if cols:
                        # a blank line after the header is allowed; after rows it ends the loop
                        if rows:
                            break
                else:
                    break
            while i < len(lines):
                t = lines[i].strip()
                if t == "" or t.startswith("#"):
                    i += 1
                    if rows:
                        break
                    continue
                if t.startswith("data_") or t.startswith("loop_") or t.startswith("_"):
                    break
                rows.append(t.split())
                i += 1
    if block in blocks and blocks[block][0]:
        return blocks[block]
    for cols, rows in blocks.values():
        if "rlnImageName" in cols:
            return cols, rows
    sys.exit(f"{path}: no data_{block} loop")


def table(path):
    cols, rows = read_star_block(path)
    return {c: [r[k] for r in rows] for k, c in enumerate(cols)}


def image_key(name):
    idx, _, stack = name.partition("@")
    return int(idx), os.path.basename(stack)


def adjusted_rand_index(a, b):
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    n = len(a)
    cont = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(cont, (a, b), 1)

    def comb2(x):
        x = np.asarray(x, dtype=np.float64)
        return (x * (x - 1) / 2).sum()

    sum_ij = comb2(cont)
    sum_a = comb2(cont.sum(axis=1))
    sum_b = comb2(cont.sum(axis=0))
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:
        return 1.0
    return (sum_ij - expected) / (max_index - expected)


def wrap(deg):
    """Angle difference into [-180, 180)."""
    return (np.asarray(deg) + 180.0) % 360.0 - 180.0


def circular_median(deg):
    """Sample angle that minimises the summed absolute circular distance to all samples."""
    deg = np.asarray(deg, dtype=np.float64)
    if len(deg) == 0:
        return 0.0
    cost = np.abs(wrap(deg[:, None] - deg[None, :])).sum(axis=1)
    return float(deg[np.argmin(cost)])


def psi_error(classes, diff):
    """Per class: remove the circular median of diff; return |residual| for every particle."""
    err = np.empty_like(diff)
    for k in np.unique(classes):
        sel = classes == k
        err[sel] = np.abs(wrap(diff[sel] - circular_median(diff[sel])))
    return err


def evaluate(truth_path, est_path):
    truth = table(truth_path)
    est = table(est_path)
    t_index = {image_key(n): i for i, n in enumerate(truth["rlnImageName"])}
    pairs = [(t_index[image_key(n)], j) for j, n in enumerate(est["rlnImageName"]) if image_key(n) in t_index]
    if not pairs:
        sys.exit("no particles in common between truth and estimate")
    ti = np.array([p[0] for p in pairs])
    ej = np.array([p[1] for p in pairs])
    view = np.array(truth["emcryoTrueView"], dtype=np.int64)[ti]
    cls = np.array(est["rlnClassNumber"], dtype=np.int64)[ej]
    psi_true = np.array(truth["rlnAnglePsi"], dtype=np.float64)[ti]
    psi_est = np.array(est["rlnAnglePsi"], dtype=np.float64)[ej]

    ari = adjusted_rand_index(view, cls)
    err_minus = psi_error(cls, wrap(psi_est - psi_true))
    err_plus = psi_error(cls, wrap(psi_est + psi_true))
    med_minus, med_plus = float(np.median(err_minus)), float(np.median(err_plus))
    sense = "psi_est - psi_true" if med_minus <= med_plus else "psi_est + psi_true"
    err = err_minus if med_minus <= med_plus else err_plus

    # purity: share of particles whose class's majority view is their own view
    purity = sum(np.bincount(view[cls == k]).max() for k in np.unique(cls)) / len(cls)
    sizes = np.bincount(cls)[1:] if cls.min() >= 1 else np.bincount(cls)
    return {
        "particles": int(len(cls)),
        "true_views": int(len(np.unique(view))),
        "classes_used": int(len(np.unique(cls))),
        "class_sizes": [int(s) for s in sizes],
        "ari": float(ari),
        "purity": float(purity),
        "psi_median_abs_error_deg": float(np.median(err)),
        "psi_p90_abs_error_deg": float(np.percentile(err, 90)),
        "psi_within_6deg": float(np.mean(err <= 6.0)),
        "psi_sense": sense,
        "psi_median_abs_error_minus_deg": med_minus,
        "psi_median_abs_error_plus_deg": med_plus,
    }


def strip(in_path, out_path):
    """Drop pose columns from every loop that has rlnImageName; keep everything else as text."""
    drop_prefixes = ("rlnAngle", "rlnOrigin")
    with open(in_path) as f:
        lines = f.read().splitlines()
    out = []
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("loop_"):
            out.append(lines[i])
            i += 1
            cols = []
            while i < len(lines) and lines[i].strip().startswith("_"):
                cols.append(lines[i].strip().split()[0][1:])
                i += 1
            keep = [k for k, c in enumerate(cols) if not ("rlnImageName" in cols and c.startswith(drop_prefixes))]
            for n, k in enumerate(keep):
                out.append(f"_{cols[k]} #{n + 1}")
            while i < len(lines):
                t = lines[i].strip()
                if t == "" or t.startswith("data_") or t.startswith("loop_") or t.startswith("#"):
                    break
                tok = t.split()
                out.append(" ".join(tok[k] for k in keep))
                i += 1
        else:
            out.append(lines[i])
            i += 1
    with open(out_path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth")
    ap.add_argument("--est")
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    ap.add_argument("--strip", nargs=2, metavar=("IN", "OUT"))
    a = ap.parse_args()
    if a.strip:
        strip(*a.strip)
        return
    if not (a.truth and a.est):
        ap.error("--truth and --est are required")
    r = evaluate(a.truth, a.est)
    r["label"] = a.label
    r["est"] = a.est
    print(f"{a.label or a.est}: {r['particles']} particles, {r['classes_used']} classes used "
          f"(sizes {r['class_sizes']}), ARI {r['ari']:.3f}, purity {r['purity']:.3f}, "
          f"psi median |err| {r['psi_median_abs_error_deg']:.2f} deg (90th pct {r['psi_p90_abs_error_deg']:.1f}, "
          f"{100 * r['psi_within_6deg']:.0f}% within 6 deg; {r['psi_sense']}; "
          f"-: {r['psi_median_abs_error_minus_deg']:.2f}, +: {r['psi_median_abs_error_plus_deg']:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
