"""Null the references' directions in a model's salient embedding before k-means.

Reads `salient embed`'s output for the targets (with labels) and for the references, and prints
ACC / NMI / ARI of k-means (10 restarts) on the target embeddings after
- projecting out the top m principal directions of the reference embeddings (centred), or
- whitening by the reference embeddings' covariance (shrunk towards its mean eigenvalue),
each followed by L2 normalisation. Labels are read for scoring only.

    python3 reference_null_embedding.py TARGET_EMB.parquet REFERENCE_EMB.parquet --clusters 10
"""
import argparse

import numpy as np
import pyarrow.parquet as pq
from sklearn.cluster import KMeans

from smoothed_kmeans import normalise, scores


def embeddings(path):
    t = pq.read_table(path)
    x = np.asarray(t.column("embedding").combine_chunks().values, dtype=np.float64).reshape(t.num_rows, -1)
    y = np.asarray(t.column("label")) if "label" in t.column_names else None
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("reference")
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--nulls", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--shrink", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--restarts", type=int, default=10)
    a = ap.parse_args()
    x, y = embeddings(a.target)
    r, _ = embeddings(a.reference)
    fmt = "{:<30} {:.3f} / {:.3f} / {:.3f}"

    def run(name, z):
        p = KMeans(a.clusters, n_init=a.restarts, random_state=0).fit(normalise(z)).labels_
        print(fmt.format(name, *scores(y, p)), flush=True)

    run("k-means", x)
    mu = r.mean(0)
    _, s, vt = np.linalg.svd(r - mu, full_matrices=False)
    var = s**2 / len(r)
    print("reference variance, top 8 share:", np.round(var[:8] / var.sum(), 3))
    tvar = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2 / len(x)
    print("target variance, top 8 share:   ", np.round(tvar[:8] / tvar.sum(), 3))
    for m in a.nulls:
        u = vt[:m]
        run(f"null top {m}", x - (x @ u.T) @ u)
    for shrink in a.shrink:
        w = vt.T @ np.diag(1.0 / np.sqrt((1 - shrink) * var + shrink * var.mean())) @ vt
        run(f"reference whitening, shrink {shrink}", (x - mu) @ w)


if __name__ == "__main__":
    main()
