"""Template responses as a shift-invariant first layer: K templates from shift-invariant k-means
(K ≥ classes) on the reference-whitened targets; each image becomes the vector of its highest
normalised correlation with every template over all offsets (a K-channel convolution with
WINDOW×WINDOW kernels, divided by the window norm, then global max pooling), centred and
L2-normalised; then k-means (10 clusters). Labels are read for the diagnostics only.

    python3 docs/research/prototypes/tic_features.py DATASET_DIR N K [ITERS] [SEED]
"""
import sys
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from neighbour_purity import purity
from tic_purity import acc, tic, whitened_targets, windows


def responses(z, templates, chunk=500):
    out = []
    for i in range(0, len(z), chunk):
        w = windows(z[i:i + chunk])
        out.append((w @ templates.T).max(1))  # (n, K)
    return np.concatenate(out)


def main(directory, n=10000, k=40, iters=15, seed=0):
    z, y = whitened_targets(directory, n)
    t0 = time.time()
    kk, _, obj, templates = tic(z, k, iters, seed=seed)
    print(f"K {k}: {time.time() - t0:.0f} s, assignment NMI "
          f"{normalized_mutual_info_score(y, kk):.3f}", flush=True)
    r = responses(z, templates)
    for name, f in [("raw", r), ("standardised", (r - r.mean(0)) / (r.std(0) + 1e-9))]:
        g = f - f.mean(0)
        g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-9
        km = KMeans(10, n_init=5, random_state=0).fit_predict(g)
        print(f"  responses ({name}): purity@10 {purity(g, y) if k >= 64 else float('nan'):.3f}, "
              f"k-means ACC {acc(y, km):.3f}, NMI {normalized_mutual_info_score(y, km):.3f}",
              flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(v) for v in a[1:]))
