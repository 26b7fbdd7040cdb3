"""k-means on neighbour-smoothed salient embeddings, rows assigned by their own embedding.

Reads the Parquet that `salient embed` writes (columns `embedding`, `label`, `cluster_id`) and
prints ACC / NMI / ARI for: the model's own clusters, scikit-learn k-means on the embeddings,
and k-means on each embedding averaged with its k nearest neighbours (cosine, in the same
space), every row then assigned to the nearest of those centroids by its unsmoothed embedding,
as inference does.

    python3 smoothed_kmeans.py FILE.parquet --clusters 10 --neighbours 5 10 20
"""
import argparse

import numpy as np
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def acc(y, p):
    k = max(y.max(), p.max()) + 1
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (p, y), 1)
    r, c = linear_sum_assignment(-m)
    return m[r, c].sum() / len(y)


def scores(y, p):
    return acc(y, p), normalized_mutual_info_score(y, p), adjusted_rand_score(y, p)


def normalise(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--neighbours", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t = pq.read_table(a.file, columns=["embedding", "label", "cluster_id"])
    x = np.asarray(t.column("embedding").combine_chunks().values, dtype=np.float64)
    x = normalise(x.reshape(t.num_rows, -1))
    y = np.asarray(t.column("label"))
    fmt = "{:<28} {:.3f} / {:.3f} / {:.3f}"
    print(fmt.format("model's clusters", *scores(y, np.asarray(t.column("cluster_id")))))
    km = KMeans(a.clusters, n_init=a.restarts, random_state=a.seed).fit(x)
    print(fmt.format("k-means", *scores(y, km.labels_)))
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1)
    for k in a.neighbours:
        nn = order[:, :k]
        print("  neighbour purity@{}: {:.3f}".format(k, (y[nn] == y[:, None]).mean()))
        smooth = normalise(x + x[nn].sum(axis=1))
        kms = KMeans(a.clusters, n_init=a.restarts, random_state=a.seed).fit(smooth)
        own = np.argmin(((x[:, None, :] - normalise(kms.cluster_centers_)[None]) ** 2).sum(-1), axis=1)
        print(fmt.format(f"smoothed k={k}, own assign", *scores(y, own)))
        print(fmt.format(f"smoothed k={k}, smooth assign", *scores(y, kms.labels_)))


if __name__ == "__main__":
    main()
