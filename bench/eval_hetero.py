#!/usr/bin/python3
"""Class assignment accuracy (best label permutation) and per-class FSC to the truth of a 3D
classification run (emcryo hetero-refine / class3d / hetero-reconstruct, or RELION Class3D).

usage: eval_hetero.py TRUTH_STAR RESULT_STAR [--maps MAP1 MAP2 ... --truth-maps T1 T2 ... [--oracle-maps O1 O2 ...]]
Prints accuracy, the permutation, and per class the resolution where the FSC to its truth falls to 0.5;
with --oracle-maps (the true-pose, true-class maps, e.g. hetero-reconstruct of truth.star), also each
class map's FSC 0.5 crossing (interpolated shells) as a fraction of its oracle's (issue 10's bar: 0.85).
"""
import argparse, itertools, sys
import numpy as np


def read_column(path, label):
    block_rows, cols, in_particles = [], [], False
    rows = []
    with open(path) as f:
        lines = f.read().splitlines()
    block = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("data_"):
            block = line[5:]
            cols = []
        elif line.startswith("_") and block == "particles":
            cols.append(line.split()[0][1:])
        elif block == "particles" and cols and line and not line.startswith(("loop_", "#", "_")):
            rows.append(line.split())
        i += 1
    c = cols.index(label)
    return [r[c] for r in rows]


def fsc(a, b):
    n = a.shape[0]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, np.arange(n // 2 + 1), indexing="ij")
    shell = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    out = []
    for s in range(n // 2 + 1):
        m = shell == s
        num = np.real(np.sum(fa[m] * np.conj(fb[m])))
        den = np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2))
        out.append(num / den if den > 0 else 0)
    return np.array(out)


def crossing(f):
    """The FSC 0.5 crossing in shells, interpolated between the shells around it."""
    for s in range(1, len(f)):
        if f[s] < 0.5:
            return s - 1 + (f[s - 1] - 0.5) / (f[s - 1] - f[s])
    return len(f) - 1


def read_map(path):
    import mrcfile
    with mrcfile.open(path) as m:
        return m.data.astype(np.float64)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("truth")
    p.add_argument("result")
    p.add_argument("--maps", nargs="*", default=[])
    p.add_argument("--truth-maps", nargs="*", default=[])
    p.add_argument("--oracle-maps", nargs="*", default=[])
    a = p.parse_args()
    truth = np.array([int(v) for v in read_column(a.truth, "rlnClassNumber")])
    names_t = read_column(a.truth, "rlnImageName")
    got = dict(zip((n.split("@")[0] + "@" + n.split("@")[1].split("/")[-1] for n in read_column(a.result, "rlnImageName")),
                   (int(v) for v in read_column(a.result, "rlnClassNumber"))))
    keys = [n.split("@")[0] + "@" + n.split("@")[1].split("/")[-1] for n in names_t]
    result = np.array([got.get(k, 0) for k in keys])
    K = max(truth.max(), result.max())
    best, perm = -1, None
    for p_ in itertools.permutations(range(1, K + 1)):
        acc = np.mean(np.array([p_[r - 1] if r > 0 else 0 for r in result]) == truth)
        if acc > best:
            best, perm = acc, p_
    print(f"accuracy {best:.4f} permutation {perm} (result class -> true class)")
    if a.maps:
        import mrcfile
        for i, m in enumerate(a.maps):
            t = a.truth_maps[perm[i] - 1]
            with mrcfile.open(m) as x, mrcfile.open(t) as y:
                f = fsc(x.data.astype(np.float64), y.data.astype(np.float64))
                n = x.data.shape[0]
                px = float(x.voxel_size.x)
            s = 1
            while s + 1 < len(f) and f[s] >= 0.5:
                s += 1
            line = f"class {i + 1} vs truth {perm[i]}: FSC 0.5 at {n * px / s:.2f} A (shell {s})"
            if a.oracle_maps:
                truth_map = read_map(t)
                got = crossing(f)
                oracle = crossing(fsc(read_map(a.oracle_maps[perm[i] - 1]), truth_map))
                line += f"; crossing {got:.2f} vs true-pose map {oracle:.2f}: ratio {got / oracle:.3f}"
            print(line)


if __name__ == "__main__":
    main()
