"""Background twins among the neighbour positives: class purity of each image's nearest
neighbours in the reference-whitened pixels (PCA 64, cosine; what `neighbour_positives` uses)
by rank, and after skipping the image's R nearest images in the raw pixels (PCA 64, cosine),
which share its background crop more often than its object (`neighbour_skip_raw_nearest`).
Labels are read for the diagnostic only.

    python3 docs/research/prototypes/twin_purity.py DATASET_DIR   # holds target/reference.parquet
"""
import sys

import numpy as np

from neighbour_purity import load


def cosine_pca(f, components=64):
    f = f - f.mean(0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    p = f @ vt[:components].T
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-12
    s = p @ p.T
    np.fill_diagonal(s, -np.inf)
    return s


def main(directory):
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    n = len(x)
    xf, bf = x.reshape(n, -1), b.reshape(len(b), -1)
    mu = bf.mean(0)
    ev, v = np.linalg.eigh(np.cov(bf - mu, rowvar=False))
    z = (xf - mu) @ (v @ np.diag(1 / np.sqrt(ev.clip(0) + ev.mean())) @ v.T)
    whitened, raw = cosine_pca(z), cosine_pca(xf)
    order = np.argsort(-whitened, axis=1)[:, :20]
    hit = y[order] == y[:, None]
    for k in (1, 2, 3, 5, 10, 20):
        print(f"purity@{k} = {hit[:, :k].mean():.3f} (rank {k} alone {hit[:, k - 1].mean():.3f})")
    top = order[:, :10]
    raw_rank = np.argsort(-raw, axis=1)
    for r in (1, 3, 5, 10):
        twin = (top[:, :, None] == raw_rank[:, None, :r]).any(2)
        s = whitened.copy()
        np.put_along_axis(s, raw_rank[:, :r], -np.inf, 1)
        kept = np.argsort(-s, axis=1)[:, :10]
        print(f"skip the {r} raw-nearest: {twin.mean():.3f} of the top 10 skipped, their purity "
              f"{hit[:, :10][twin].mean():.3f}; purity@10 after = {(y[kept] == y[:, None]).mean():.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
