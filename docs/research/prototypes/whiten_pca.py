"""Reference whitening as a clustering baseline, and what k-means on it is sensitive to: the
whitened pixels L2-normalised (what `compare`'s `whiten(ref)` clusters), centred on the target
mean first, and reduced to the top P principal components before normalising (the space the
neighbour positives are found in). k-means (k = the dataset's, 10 restarts, 3 seeds) ACC / NMI.

    python3 docs/research/prototypes/whiten_pca.py out/quality/data/DATASET K
"""
import sys

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi

from mixture_whiten import acc, whitener
from neighbour_purity import load


def unit(z):
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)


def main(directory, k):
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    n = len(x)
    xf, bf = x.reshape(n, -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    mu, w, _ = whitener(bf)
    z = (xf - mu) @ w
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    views = {"normalised (whiten(ref))": unit(z), "centred, normalised": unit(zc)}
    for p in (10, 20, 32, 64, 128):
        views[f"centred, PCA {p}, normalised"] = unit(zc @ vt[:p].T)
    views["centred, PCA 64, not normalised"] = zc @ vt[:64].T
    for name, f in views.items():
        scores = []
        for seed in range(3):
            c = KMeans(k, n_init=10, random_state=seed).fit_predict(f)
            scores.append((acc(y, c), nmi(y, c)))
        s = np.array(scores)
        print(f"{directory.split('/')[-1]:18s} {name:34s} ACC {s[:, 0].mean():.3f} ± {s[:, 0].std():.3f}  "
              f"NMI {s[:, 1].mean():.3f} ± {s[:, 1].std():.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
