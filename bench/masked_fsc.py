#!/usr/bin/python3
"""FSC of maps against a true map inside a mask: resolution at 0.5 and 0.143 (Å), and the mean FSC over
shells 1 to n/2-1 (one figure for small differences; the integration tests use the same).
usage: masked_fsc.py TRUTH.mrc MASK.mrc MAP.mrc [MAP.mrc ...]"""
import sys
import mrcfile
import numpy as np


def fsc(a, b):
    n = a.shape[0]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    k = np.fft.fftfreq(n)[:, None, None] ** 2 + np.fft.fftfreq(n)[None, :, None] ** 2 + np.fft.rfftfreq(n)[None, None, :] ** 2
    shell = np.rint(np.sqrt(k) * n).astype(int)
    num = np.bincount(shell.ravel(), (fa * fb.conj()).real.ravel())
    da = np.bincount(shell.ravel(), (abs(fa) ** 2).ravel())
    db = np.bincount(shell.ravel(), (abs(fb) ** 2).ravel())
    return (num / np.sqrt(da * db + 1e-30))[: n // 2 + 1]


def resolution(curve, threshold, n, pixel):
    for s in range(1, len(curve)):
        if curve[s] < threshold:
            return n * pixel / max(s - 1, 1) if s > 1 else n * pixel
    return 2 * pixel


def main():
    truth_file, mask_file = sys.argv[1], sys.argv[2]
    with mrcfile.open(truth_file) as m:
        truth = m.data.astype(np.float64)
        pixel = float(m.voxel_size.x)
    mask = mrcfile.open(mask_file).data.astype(np.float64)
    n = truth.shape[0]
    for f in sys.argv[3:]:
        c = fsc(mrcfile.open(f).data.astype(np.float64) * mask, truth * mask)
        print(f"{f}: FSC 0.5 {resolution(c, 0.5, n, pixel):.2f} Å, 0.143 {resolution(c, 0.143, n, pixel):.2f} Å, mean {c[1:n // 2].mean():.4f}")


main()
