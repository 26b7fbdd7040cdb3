"""What the salient encoder's fixed whitening front keeps: k-means (10 restarts, 3 seeds) and
purity@10 on the targets filtered by the reference-whitening kernel (the centre row of the ZCA
matrix cut to k×k, as src/whitening.rs fits it; applied with zero padding), centred, PCA 64,
normalised; against the full ZCA matrix in the same pipeline (what `whiten(ref)+pca(64)` and the
neighbour positives use). Labels are read for the diagnostic only.

    python3 docs/research/prototypes/front_space.py out/quality/data/fashion-textures 10 [KERNELS]
"""
import sys

import numpy as np
from scipy.signal import convolve2d
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi

from mixture_whiten import acc, whitener
from neighbour_purity import load
from whiten_pca import unit


def reduced(f, p=64):
    f = f - f.mean(0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    return unit(f @ vt[:p].T)


def score(name, f, y, k):
    s = []
    for seed in range(3):
        c = KMeans(k, n_init=10, random_state=seed).fit_predict(f)
        s.append((acc(y, c), nmi(y, c)))
    s = np.array(s)
    g = f @ f.T
    np.fill_diagonal(g, -np.inf)
    nn = np.argpartition(-g, 10, axis=1)[:, :10]
    print(f"{name:30s} purity@10 {(y[nn] == y[:, None]).mean():.3f}  ACC {s[:, 0].mean():.3f} ± {s[:, 0].std():.3f}"
          f"  NMI {s[:, 1].mean():.3f}", flush=True)


def main(directory, k, kernels=(9, 15, 21)):
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    n, h, w = x.shape
    xf, bf = x.reshape(n, -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    mu, zca, _ = whitener(bf)
    score("full ZCA, PCA 64", reduced((xf - mu) @ zca), y, k)
    centre = (h // 2) * w + w // 2
    row = zca[centre].reshape(h, w)
    xc = x - mu.reshape(h, w)
    for size in kernels:
        r = size // 2
        kernel = row[h // 2 - r:h // 2 + r + 1, w // 2 - r:w // 2 + r + 1]
        f = np.stack([convolve2d(img, kernel[::-1, ::-1], mode="same") for img in xc]).reshape(n, -1)
        score(f"{size}x{size} kernel, PCA 64", reduced(f), y, k)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *([tuple(int(a) for a in sys.argv[3].split(","))] if len(sys.argv) > 3 else []))
