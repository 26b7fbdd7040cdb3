"""Whether the locator's estimate tells pixel-aligned objects from moving ones: the spread of the
centre of mass of the prototype detector's positive map (cam_windows.detector_maps, seed 0) over
each dataset's targets (per-axis sd and the 5th and 95th percentiles, in pixels). Reads no
labels.

    python3 docs/research/prototypes/com_spread.py DATASET_DIR [DATASET_DIR ...]
"""
import sys

import numpy as np

import cam_windows
from neighbour_purity import load


def main(directories):
    for d in directories:
        x, _ = load(f"{d}/target.parquet")
        b, _ = load(f"{d}/reference.parquet")
        m = np.clip(cam_windows.detector_maps(x, b, 0), 0, None) + 1e-12
        yy, xx = np.mgrid[0:m.shape[1], 0:m.shape[2]]
        cy = (m * yy).sum((1, 2)) / m.sum((1, 2))
        cx = (m * xx).sum((1, 2)) / m.sum((1, 2))
        q = lambda v: np.percentile(v, [5, 95]).round(2).tolist()
        print(f"{d}: {x.shape[1]}x{x.shape[2]}, centre of mass sd y {cy.std():.2f} "
              f"x {cx.std():.2f}, 5-95% y {q(cy)} x {q(cx)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
