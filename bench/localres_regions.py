#!/usr/bin/python3
"""Median local resolution (Å) of a localres.mrc in the ordered core (ordered truth above 15% of its peak,
away from the disordered density: below 2% of its peak) and in the disordered region's own voxels (the
same with the roles swapped); the integration tests use the same definition.
usage: localres_regions.py LOCALRES.mrc TRUTH_ORDERED.mrc TRUTH_DISORDERED.mrc"""
import sys
import mrcfile
import numpy as np


def main():
    res, ordered, disordered = (mrcfile.open(f).data.astype(np.float64) for f in sys.argv[1:4])
    core = (ordered > 0.15 * ordered.max()) & ~(disordered > 0.02 * disordered.max())
    region = (disordered > 0.15 * disordered.max()) & ~(ordered > 0.02 * ordered.max())
    print(f"{sys.argv[1]}: local resolution median {np.median(res[core]):.2f} Å in the ordered core ({core.sum()} voxels), "
          f"{np.median(res[region]):.2f} Å in the disordered region ({region.sum()} voxels)")


main()
