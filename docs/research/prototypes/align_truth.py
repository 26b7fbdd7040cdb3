"""How well shift-invariant k-means aligns moving objects, measured against the generator's own
offsets: the (dy, dx) of every target, replayed from `salient datasets build`'s seeded draws into
a text file (one "index background y x dy dx" line per target row). Reports, for the best of
RESTARTS tic restarts, the share of windows at the digit's offset after each template's constant
offset is removed (exact and within 1 px), and k-means (10 restarts) on the whitened windows cut
at tic's and at the true offsets. The offsets and labels are read for the scores only.

    python3 docs/research/prototypes/align_truth.py DATASET_DIR OFFSETS_TXT [RESTARTS]
"""
import sys
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from tic_purity import WINDOW, acc, aligned, tic, whitened_targets


def alignment_scores(offsets, truth, groups, span):
    """Shares of images at the true offset (exact, within 1 px) once each group's modal error is
    removed (a template may hold its object a constant offset away)."""
    oy, ox = np.divmod(offsets, span)
    ey, ex = oy - truth[:, 0], ox - truth[:, 1]
    exact = near = 0
    for g in np.unique(groups):
        m = groups == g
        pairs, counts = np.unique(np.stack([ey[m], ex[m]], 1), axis=0, return_counts=True)
        my, mx = pairs[counts.argmax()]
        dy, dx = ey[m] - my, ex[m] - mx
        exact += np.sum((dy == 0) & (dx == 0))
        near += np.sum((np.abs(dy) <= 1) & (np.abs(dx) <= 1))
    return exact / len(offsets), near / len(offsets)


def windows_kmeans(z, offsets, y, k=10):
    win = aligned(z, offsets)
    km = KMeans(k, n_init=10, random_state=0).fit_predict(win)
    return acc(y, km), normalized_mutual_info_score(y, km)


def main(directory, offsets_txt, restarts=3):
    z, y = whitened_targets(directory, 10000)
    span = z.shape[1] - WINDOW + 1
    truth = np.loadtxt(offsets_txt, dtype=int)[:, 4:6]
    true_offsets = truth[:, 0] * span + truth[:, 1]
    a, n = windows_kmeans(z, true_offsets, y)
    print(f"true offsets: windows k-means ACC {a:.4f} NMI {n:.4f}", flush=True)
    best = None
    for r in range(restarts):
        t0 = time.time()
        kk, oo, obj, _ = tic(z, 10, 15, seed=r)
        ex, nr = alignment_scores(oo, truth, kk, span)
        a, n = windows_kmeans(z, oo, y)
        print(f"restart {r}: objective {obj:.1f}, tic ACC {acc(y, kk):.4f}; aligned exactly "
              f"{ex:.3f}, within 1 px {nr:.3f}; windows k-means ACC {a:.4f} NMI {n:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
        if best is None or obj > best[0]:
            best = (obj, r)
    print(f"best objective: restart {best[1]}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
