"""Purity@10 of neighbours among the windows shift-invariant k-means aligns (K = classes), with
the aligned whitened windows low-pass filtered (Gaussian, sigma in pixels) before the
neighbour search, and with stronger whitening shrinkage. Labels are read for the diagnostic
only.

    python3 docs/research/prototypes/tic_blur.py DATASET_DIR [N]
"""
import sys

import numpy as np
from scipy import ndimage

from neighbour_purity import purity
from tic_purity import WINDOW, aligned, tic, whitened_targets


def main(directory, n=10000):
    for shrink in (1.0, 4.0):
        z, y = whitened_targets(directory, n, shrink)
        m = len(z)
        kk, oo, _, _ = tic(z, 10, 15, seed=0)
        win = aligned(z, oo).reshape(m, WINDOW, WINDOW)
        for sigma in (0.0, 0.7, 1.0, 1.5, 2.0):
            f = win if sigma == 0 else ndimage.gaussian_filter(win, (0, sigma, sigma))
            print(f"shrinkage {shrink}, blur {sigma}: purity@10 {purity(f.reshape(m, -1), y):.3f}",
                  flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(v) for v in a[1:]))
