"""Over-clustered shift-invariant k-means as a source of positives: K templates (K ≥ classes)
on the reference-whitened targets, then
  - pair purity of the clusters (the chance that two images of one cluster share the label),
  - purity@10 of neighbours among aligned windows, unrestricted and restricted to the
    image's own cluster,
  - ACC / NMI of k-means (10 clusters) on the aligned windows.
Labels are read for the diagnostics only.

    python3 docs/research/prototypes/tic_over.py DATASET_DIR N K [ITERS] [SEED]
"""
import sys
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from neighbour_purity import purity
from tic_purity import acc, aligned, tic, whitened_targets


def pair_purity(labels, clusters):
    num = den = 0.0
    for c in np.unique(clusters):
        counts = np.bincount(labels[clusters == c])
        num += (counts * (counts - 1)).sum()
        n = counts.sum()
        den += n * (n - 1)
    return num / den


def main(directory, n=10000, k=40, iters=15, seed=0):
    z, y = whitened_targets(directory, n)
    m = len(z)
    t0 = time.time()
    kk, oo, obj, _ = tic(z, k, iters, seed=seed)
    win = aligned(z, oo)
    sizes = np.bincount(kk, minlength=k)
    print(f"K {k}: {time.time() - t0:.0f} s, objective {obj:.1f}, cluster sizes "
          f"{sizes.min()}..{sizes.max()}", flush=True)
    print(f"  pair purity {pair_purity(y, kk):.3f} (chance {pair_purity(y, np.zeros_like(y)):.3f})")
    print(f"  assignment NMI {normalized_mutual_info_score(y, kk):.3f}")
    print(f"  aligned windows purity@10 {purity(win, y):.3f}, "
          f"within own cluster {purity(win, y, groups=kk):.3f}", flush=True)
    km = KMeans(10, n_init=5, random_state=0).fit_predict(win)
    print(f"  aligned windows k-means: ACC {acc(y, km):.3f}, "
          f"NMI {normalized_mutual_info_score(y, km):.3f}", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(v) for v in a[1:]))
