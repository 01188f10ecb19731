#!/usr/bin/python3
"""Compares a resumed job's folder with an uninterrupted run's (bench/kill_trials.sh).

  compare_runs.py REFERENCE_DIR RESUMED_DIR

Same file names (logs, reports and the lock aside), no temporary files, the same classes and
poses in particles.star (text of the columns), every MRC file equal to float tolerance and every
STAR file with the same tables. Prints what differs and exits 1, or exits 0 silently.
"""
import os
import sys

import mrcfile
import numpy as np

# Columns that must be identical text: the job's answer for each particle.
ANSWER_COLUMNS = ["rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                  "rlnOriginYAngst", "rlnImageName"]
NOT_COMPARED = {"run.log", "report.html", ".emcryo.lock"}


def loop_columns(path, block):
    """{label: [cells]} of one loop block of a STAR file (a plain reader: values without blanks)."""
    labels, rows, inside = [], [], False
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.strip()
        if line.startswith("data_"):
            inside = line == "data_" + block
            continue
        if not inside or not line or line.startswith("#") or line == "loop_":
            continue
        if line.startswith("_"):
            labels.append(line.split()[0][1:])
        else:
            rows.append(line.split())
    return {label: [r[i] for r in rows] for i, label in enumerate(labels)}


def compare(ref, run):
    problems = []
    temporary = [f for f in os.listdir(run) if ".tmp" in f]
    if temporary:
        problems.append(f"temporary files left: {temporary}")
    ref_files = set(os.listdir(ref)) - NOT_COMPARED
    run_files = set(os.listdir(run)) - NOT_COMPARED - set(temporary)
    if ref_files != run_files:
        problems.append(f"files differ: only in reference {sorted(ref_files - run_files)}, "
                        f"only in resumed {sorted(run_files - ref_files)}")
    for name in sorted(ref_files & run_files):
        a, b = os.path.join(ref, name), os.path.join(run, name)
        if name.endswith((".mrc", ".mrcs")):
            with mrcfile.open(a, permissive=True) as x, mrcfile.open(b, permissive=True) as y:
                da, db = np.asarray(x.data, dtype=np.float64), np.asarray(y.data, dtype=np.float64)
            scale = max(float(np.abs(da).max()), 1e-30)
            if da.shape != db.shape or not np.allclose(da, db, rtol=1e-4, atol=1e-5 * scale):
                diff = float(np.abs(da - db).max()) / scale if da.shape == db.shape else float("inf")
                problems.append(f"{name}: maps differ (max |a-b|/max|a| = {diff:.3g})")
        elif name == "particles.star":
            pa, pb = loop_columns(a, "particles"), loop_columns(b, "particles")
            for column in ANSWER_COLUMNS:
                if pa.get(column) != pb.get(column):
                    changed = sum(1 for u, v in zip(pa.get(column, []), pb.get(column, [])) if u != v)
                    problems.append(f"particles.star: {column} differs in {changed} rows")
    return problems


def main():
    problems = compare(sys.argv[1], sys.argv[2])
    if problems:
        print("; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
