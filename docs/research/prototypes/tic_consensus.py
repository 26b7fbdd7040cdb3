"""Consensus alignment over restarts of shift-invariant k-means (tic_purity.py): each image's
offset is the per-coordinate median of its offsets in R restarts, instead of the offsets of the
restart with the best objective. Reports, per restart and for the consensus, k-means (10
restarts) on the whitened windows at those offsets, and how often restarts agree. Labels are
read for the evaluation only.

    python3 docs/research/prototypes/tic_consensus.py DATASET_DIR [R] [K] [ITERS]
"""
import sys
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from tic_purity import WINDOW, acc, aligned, tic, whitened_targets


def kmeans_scores(z, offsets, y, k):
    win = aligned(z, offsets)
    km = KMeans(k, n_init=10, random_state=0).fit_predict(win)
    return acc(y, km), normalized_mutual_info_score(y, km)


def main(directory, restarts=5, k=10, iters=15):
    z, y = whitened_targets(directory, 10000)
    span = z.shape[1] - WINDOW + 1
    runs = []
    for r in range(restarts):
        t0 = time.time()
        kk, oo, obj, _ = tic(z, k, iters, seed=r)
        a, n = kmeans_scores(z, oo, y, k)
        print(f"restart {r}: objective {obj:.1f}, tic ACC {acc(y, kk):.3f}, windows k-means "
              f"ACC {a:.3f} NMI {n:.3f} ({time.time() - t0:.0f} s)", flush=True)
        runs.append((obj, oo))
    offsets = np.array([o for _, o in runs])  # (R, N)
    oy, ox = offsets // span, offsets % span
    my = np.rint(np.median(oy, axis=0)).astype(int)
    mx = np.rint(np.median(ox, axis=0)).astype(int)
    consensus = my * span + mx
    best = max(runs, key=lambda r: r[0])[1]
    agree = (offsets == consensus[None]).mean()
    print(f"share of (restart, image) offsets equal to the consensus: {agree:.3f}")
    for name, o in [("best objective", best), ("consensus (median)", consensus)]:
        a, n = kmeans_scores(z, o, y, k)
        print(f"{name}: windows k-means ACC {a:.3f} NMI {n:.3f}", flush=True)
    # Consensus of the first three restarts, as a 3-restart front would have it.
    my3 = np.rint(np.median(oy[:3], axis=0)).astype(int)
    mx3 = np.rint(np.median(ox[:3], axis=0)).astype(int)
    a, n = kmeans_scores(z, my3 * span + mx3, y, k)
    print(f"consensus of restarts 0-2: windows k-means ACC {a:.3f} NMI {n:.3f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(v) for v in a[1:]))
