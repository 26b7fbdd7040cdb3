"""Purity@10 of neighbours (PCA 64, cosine, as `neighbour_purity.purity`) under single-layer
convolutional features (Coates & Ng 2011 style) of the reference-whitened targets: filters from
(a) random Gaussians, (b) k-means on contrast-normalised, ZCA-whitened target patches (triangle
activation), (c) generalised eigenvectors of target-patch vs reference-patch covariance
(contrastive PCA on patches; |.| or relu pair), (c2) k-means in that contrastive subspace; then
global max / global average / 2x2 and 3x3 quadrant sum-pooling. Each feature set is scored raw and
with every column standardised. k-means (10 clusters, 10 restarts) ACC/NMI on PCA 64 + L2 of the
best ones. Labels are read for the diagnostics only; nothing is fitted on them.

    python3 docs/research/prototypes/conv_purity.py DATASET_DIR [N]   # holds target/reference.parquet
"""
import os
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.linalg import eigh
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from neighbour_purity import load  # noqa: E402

RNG = np.random.default_rng(0)


def pca64_unit(features, dims=64):
    """Same projection as `neighbour_purity.purity` (centre, top-64 principal axes, L2), via the
    covariance eigenvectors, which span the same subspace as the top right singular vectors."""
    f = features.astype(np.float64)
    f = f - f.mean(0)
    if f.shape[1] > dims:
        ev, v = np.linalg.eigh(f.T @ f)
        p = f @ v[:, ::-1][:, :dims]
    else:
        p = f
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-12
    return p.astype(np.float32)


def purity(features, labels, k=10, block=2000):
    p = pca64_unit(features)
    n = len(p)
    hits = 0
    for i in range(0, n, block):
        s = p[i:i + block] @ p.T
        s[np.arange(len(s)), np.arange(i, i + len(s))] = -np.inf
        nn = np.argpartition(-s, k, axis=1)[:, :k]
        hits += (labels[nn] == labels[i:i + block, None]).sum()
    return hits / (n * k)


def standardise(f):
    return (f - f.mean(0)) / (f.std(0) + 1e-8)


def cluster_scores(features, labels, seed=0):
    p = pca64_unit(features)
    pred = KMeans(10, n_init=10, random_state=seed).fit_predict(p)
    m = np.zeros((10, 10))
    np.add.at(m, (pred, labels), 1)
    r, c = linear_sum_assignment(-m)
    return m[r, c].sum() / len(labels), normalized_mutual_info_score(labels, pred)


def patches(images, size):
    """(B, H, W) -> (B, H-size+1, W-size+1, size*size)."""
    w = sliding_window_view(images, (size, size), axis=(1, 2))
    b, h, ww = w.shape[:3]
    return w.reshape(b, h, ww, size * size)


def sample_patches(images, size, count):
    n, h, w = images.shape
    i = RNG.integers(0, n, count)
    r = RNG.integers(0, h - size + 1, count)
    c = RNG.integers(0, w - size + 1, count)
    off = np.arange(size)
    return images[i[:, None, None], (r[:, None] + off)[:, :, None], (c[:, None] + off)[:, None, :]].reshape(
        count, -1).astype(np.float64)


def pool(maps):
    """maps (B, H, W, K) -> dict pooling name -> (B, features)."""
    out = {"gmax": maps.max((1, 2)), "gavg": maps.mean((1, 2))}
    for q in (2, 3):
        rows = np.array_split(np.arange(maps.shape[1]), q)
        cols = np.array_split(np.arange(maps.shape[2]), q)
        out[f"quad{q}x{q}"] = np.concatenate(
            [maps[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1].sum((1, 2)) for r in rows for c in cols], axis=1)
    return out


def convolve(images, size, fn, batch=100):
    """Applies fn (patch matrix (M, size^2) -> responses (M, K)) at every valid position, pools."""
    acc = {}
    for i in range(0, len(images), batch):
        p = patches(images[i:i + batch], size)
        b, h, w, d = p.shape
        r = fn(p.reshape(-1, d).astype(np.float32)).reshape(b, h, w, -1)
        for name, f in pool(r).items():
            acc.setdefault(name, []).append(f.astype(np.float32))
    return {name: np.concatenate(v) for name, v in acc.items()}


# ---------------------------------------------------------------- filter banks
def linear_abs(filters):
    f = filters.astype(np.float32)
    return lambda p: np.abs(p @ f)


def linear_relu_pair(filters):
    f = filters.astype(np.float32)

    def fn(p):
        r = p @ f
        return np.concatenate([np.maximum(r, 0), np.maximum(-r, 0)], axis=1)
    return fn


def triangle(pre, centroids):
    """pre: patch matrix -> the space the centroids live in; triangle (k-means) activation."""
    c = centroids.astype(np.float32)
    c2 = (c ** 2).sum(1)

    def fn(p):
        q = pre(p)
        d = (q ** 2).sum(1, keepdims=True) - 2 * q @ c.T + c2
        d = np.sqrt(np.maximum(d, 0))
        return np.maximum(d.mean(1, keepdims=True) - d, 0)
    return fn


def random_bank(size, k):
    f = RNG.standard_normal((size * size, k))
    f -= f.mean(0)
    return f / np.linalg.norm(f, axis=0)


def coates_bank(images, size, k, count=100_000):
    """Contrast normalisation + patch ZCA + k-means centroids on target patches (triangle)."""
    p = sample_patches(images, size, count)
    var_eps = p.var(1).mean()

    def norm(q):
        q = q - q.mean(1, keepdims=True)
        return q / np.sqrt(q.var(1, keepdims=True) + var_eps)
    pn = norm(p)
    m = pn.mean(0)
    ev, v = np.linalg.eigh(np.cov(pn - m, rowvar=False))
    zca = v @ np.diag(1 / np.sqrt(ev.clip(0) + 0.1 * ev.mean())) @ v.T
    pw = (pn - m) @ zca
    km = KMeans(k, n_init=1, max_iter=100, random_state=0).fit(pw.astype(np.float32))
    m32, zca32 = m.astype(np.float32), zca.astype(np.float32)
    return triangle(lambda q: (norm(q) - m32) @ zca32, km.cluster_centers_)


def contrastive_filters(targets, references, size, count=200_000):
    """Generalised eigenvectors of C_target v = lambda (C_reference + delta I) v, descending."""
    pt = sample_patches(targets, size, count)
    pr = sample_patches(references, size, count)
    ct = np.cov(pt - pt.mean(0), rowvar=False)
    cr = np.cov(pr - pr.mean(0), rowvar=False)
    delta = 1e-3 * np.trace(cr) / len(cr)
    lam, v = eigh(ct, cr + delta * np.eye(len(cr)))
    lam, v = lam[::-1], v[:, ::-1]
    print(f"  GEV {size}x{size}: eigenvalues top 10 {np.round(lam[:10], 3).tolist()}, "
          f"median {np.median(lam):.3f}, min {lam[-1]:.3f}", flush=True)
    return lam, v, pt.mean(0)


def contrastive_kmeans_bank(targets, v, mean_t, size, k, count=100_000):
    pt = sample_patches(targets, size, count)
    proj = ((pt - mean_t) @ v).astype(np.float32)
    km = KMeans(k, n_init=1, max_iter=100, random_state=0).fit(proj)
    v32, m32 = v.astype(np.float32), mean_t.astype(np.float32)
    return triangle(lambda q: (q - m32) @ v32, km.cluster_centers_)


def main(directory, n=None):
    t_start = time.time()
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    if n:
        x, y, b = x[:n], y[:n], b[:n]
    n, h, w = x.shape
    xf, bf = x.reshape(n, -1), b.reshape(len(b), -1)
    mu = bf.mean(0)
    ev, v = np.linalg.eigh(np.cov(bf - mu, rowvar=False))
    whiten = v @ np.diag(1 / np.sqrt(ev.clip(0) + ev.mean())) @ v.T
    z = ((xf - mu) @ whiten).reshape(n, h, w).astype(np.float32)
    zb = ((bf - mu) @ whiten).reshape(len(b), h, w).astype(np.float32)
    print(f"{n} targets {h}x{w}, {len(b)} references; load + whiten {time.time() - t_start:.0f}s", flush=True)

    results = []  # (purity, name, features, standardised?)

    def score(name, feats):
        for pname, f in feats.items():
            full = f"{name} | {pname}" if pname else name
            pr, ps = purity(f, y), purity(standardise(f), y)
            print(f"{full:58s} dim {f.shape[1]:5d}  purity@10 raw {pr:.3f}  std {ps:.3f}", flush=True)
            results.append((pr, full, f, False))
            results.append((ps, full, f, True))

    score("whitened pixels (baseline)", {"": z.reshape(n, -1)})
    score("raw pixels", {"": xf})

    banks = []
    # (a) random Gaussian filters
    banks.append(("(a) random 5x5 K=64 |.|", z, 5, lambda: linear_abs(random_bank(5, 64))))
    banks.append(("(a) random 7x7 K=256 |.|", z, 7, lambda: linear_abs(random_bank(7, 256))))
    # (b) Coates & Ng: k-means on whitened target patches, triangle
    banks.append(("(b) kmeans 5x5 K=64 tri", z, 5, lambda: coates_bank(z, 5, 64)))
    banks.append(("(b) kmeans 7x7 K=256 tri", z, 7, lambda: coates_bank(z, 7, 256)))

    # (c) contrastive generalised eigenvectors (target vs reference patches, both whitened)
    gev = {}
    for size in (5, 7, 9):
        gev[size] = contrastive_filters(z, zb, size)
    banks.append(("(c) GEV 5x5 top16 |.|", z, 5, lambda: linear_abs(gev[5][1][:, :16])))
    banks.append(("(c) GEV 7x7 top16 |.|", z, 7, lambda: linear_abs(gev[7][1][:, :16])))
    banks.append(("(c) GEV 7x7 top32 |.|", z, 7, lambda: linear_abs(gev[7][1][:, :32])))
    banks.append(("(c) GEV 7x7 top32 relu pair", z, 7, lambda: linear_relu_pair(gev[7][1][:, :32])))
    banks.append(("(c) GEV 9x9 top32 |.|", z, 9, lambda: linear_abs(gev[9][1][:, :32])))
    banks.append(("(c2) GEV 7x7 top16 + kmeans K=64 tri", z, 7,
                  lambda: contrastive_kmeans_bank(z, gev[7][1][:, :16], gev[7][2], 7, 64)))
    banks.append(("(c2) GEV 7x7 top16 + kmeans K=256 tri", z, 7,
                  lambda: contrastive_kmeans_bank(z, gev[7][1][:, :16], gev[7][2], 7, 256)))
    # (c') the same contrastive filters on raw (unwhitened) target vs reference patches
    banks.append(("(c') GEV raw 7x7 top32 |.|", x, 7, lambda: linear_abs(
        contrastive_filters(x, b, 7)[1][:, :32])))

    for name, images, size, make in banks:
        t0 = time.time()
        fn = make()
        t1 = time.time()
        feats = convolve(images, size, fn)
        t2 = time.time()
        score(name, feats)
        print(f"  [{name}: filters {t1 - t0:.0f}s, conv+pool {t2 - t1:.0f}s, purity {time.time() - t2:.0f}s]",
              flush=True)

    print("\nranked (top 10):")
    ranked = sorted(results, key=lambda r: -r[0])
    for pr, full, _, std in ranked[:10]:
        print(f"  {pr:.3f}  {full}{' (std)' if std else ''}")

    print("\nk-means (10 clusters, 10 restarts) on PCA 64 + L2:")
    picks, seen = [], set()
    for r in ranked:
        if r[1] not in seen and not r[1].startswith("whitened pixels"):
            picks.append(r)
            seen.add(r[1])
        if len(picks) == 3:
            break
    base = next(r for r in results if r[1].startswith("whitened pixels") and not r[3])
    for pr, full, f, std in [base] + picks:
        acc, nmi = cluster_scores(standardise(f) if std else f, y)
        print(f"  {full}{' (std)' if std else ''}: purity {pr:.3f}  ACC {acc:.3f}  NMI {nmi:.3f}", flush=True)
    print(f"\ntotal wall time {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
