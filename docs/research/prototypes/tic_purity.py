"""Shift-invariant k-means (transformation-invariant clustering) on the reference-whitened
targets of a shifted dataset: K templates of WINDOW×WINDOW pixels; each image takes the
template and offset of the highest normalised correlation over every WINDOW×WINDOW window of
the image; each template becomes the normalised mean of the windows assigned to it. A
template averages hundreds of windows, so the grass that whitening leaves averages out of it,
where it does not when two images are correlated with each other (shift_purity.py).
Reports ACC / NMI of the assignments, and purity@10 (PCA 64, cosine) and k-means on the windows
each image was aligned to. Labels are read for the diagnostics only.

    python3 docs/research/prototypes/tic_purity.py DATASET_DIR [N] [K] [ITERS] [RESTARTS]
"""
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from neighbour_purity import load, purity

WINDOW = 28


def acc(labels, pred):
    k = max(labels.max(), pred.max()) + 1
    m = np.zeros((k, k))
    np.add.at(m, (pred, labels), 1)
    r, c = linear_sum_assignment(-m)
    return m[r, c].sum() / len(labels)


def windows(z):
    """(N, P, WINDOW²) unit-norm windows at every offset, P = (H − WINDOW + 1)²."""
    n = len(z)
    v = np.lib.stride_tricks.sliding_window_view(z, (WINDOW, WINDOW), axis=(1, 2))
    p = v.shape[1] * v.shape[2]
    w = np.ascontiguousarray(v).reshape(n, p, WINDOW * WINDOW)
    w /= np.linalg.norm(w, axis=2, keepdims=True) + 1e-9
    return w


def assign(z, templates, chunk=500):
    """Best (template, offset, score) of every image."""
    k_best, o_best, s_best = [], [], []
    for i in range(0, len(z), chunk):
        w = windows(z[i:i + chunk])
        s = w @ templates.T  # (n, P, K)
        flat = s.reshape(len(w), -1)
        j = flat.argmax(1)
        k_best.append(j % templates.shape[0])
        o_best.append(j // templates.shape[0])
        s_best.append(flat.max(1))
    return np.concatenate(k_best), np.concatenate(o_best), np.concatenate(s_best)


def aligned(z, offsets):
    span = z.shape[1] - WINDOW + 1
    out = np.empty((len(z), WINDOW * WINDOW), np.float32)
    for i, o in enumerate(offsets):
        y, x = divmod(int(o), span)
        wnd = z[i, y:y + WINDOW, x:x + WINDOW].reshape(-1)
        out[i] = wnd / (np.linalg.norm(wnd) + 1e-9)
    return out


def tic(z, k, iters, seed):
    rng = np.random.default_rng(seed)
    h = z.shape[1]
    c = (h - WINDOW) // 2
    centre = z[:, c:c + WINDOW, c:c + WINDOW].reshape(len(z), -1)
    centre = centre / (np.linalg.norm(centre, axis=1, keepdims=True) + 1e-9)
    # k-means++ seeding on the centre windows.
    templates = [centre[rng.integers(len(z))]]
    for _ in range(1, k):
        d = np.clip(1 - np.max(centre @ np.array(templates).T, axis=1), 0, None)
        templates.append(centre[rng.choice(len(z), p=d / d.sum())])
    templates = np.array(templates)
    for it in range(iters):
        kk, oo, ss = assign(z, templates)
        win = aligned(z, oo)
        new = np.zeros_like(templates)
        for j in range(k):
            members = win[kk == j]
            new[j] = members.mean(0) if len(members) else centre[rng.integers(len(z))]
        templates = new / (np.linalg.norm(new, axis=1, keepdims=True) + 1e-9)
    kk, oo, ss = assign(z, templates)
    return kk, oo, ss.sum(), templates


def whitened_targets(directory, n, shrinkage=1.0):
    """The first n targets (images) ZCA-whitened with the reference covariance, ε = shrinkage ×
    the mean eigenvalue, and their labels."""
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    x, y = x[:n], y[:n]
    m, h, w = x.shape
    xf, bf = x.reshape(m, -1), b.reshape(len(b), -1)
    mu = bf.mean(0)
    ev, v = np.linalg.eigh(np.cov(bf - mu, rowvar=False))
    white = v @ np.diag(1 / np.sqrt(ev.clip(0) + shrinkage * ev.mean())) @ v.T
    return ((xf - mu) @ white).reshape(m, h, w).astype(np.float32), y


def main(directory, n=10000, k=10, iters=15, restarts=3):
    z, y = whitened_targets(directory, n)
    m, h, w = z.shape
    print(f"{m} targets {h}x{w}, window {WINDOW}, K {k}, {iters} iterations, {restarts} restarts",
          flush=True)
    print(f"whitened pixels: purity@10 {purity(z.reshape(m, -1), y):.3f}", flush=True)
    best = None
    for r in range(restarts):
        t0 = time.time()
        kk, oo, obj, _ = tic(z, k, iters, seed=r)
        print(f"restart {r}: objective {obj:.1f}, ACC {acc(y, kk):.3f}, "
              f"NMI {normalized_mutual_info_score(y, kk):.3f} ({time.time() - t0:.0f} s)", flush=True)
        if best is None or obj > best[2]:
            best = (kk, oo, obj)
    kk, oo, _ = best
    print(f"best objective: ACC {acc(y, kk):.3f}, NMI {normalized_mutual_info_score(y, kk):.3f}")
    win = aligned(z, oo)
    print(f"aligned windows: purity@10 {purity(win, y):.3f}", flush=True)
    km = KMeans(k, n_init=5, random_state=0).fit_predict(win)
    print(f"aligned windows, k-means: ACC {acc(y, km):.3f}, "
          f"NMI {normalized_mutual_info_score(y, km):.3f}")
    # One template (K = 1): the average object, every image aligned to it.
    _, o1, _, _ = tic(z, 1, iters, seed=0)
    win1 = aligned(z, o1)
    km1 = KMeans(k, n_init=5, random_state=0).fit_predict(win1)
    print(f"aligned to one template: purity@10 {purity(win1, y):.3f}, k-means ACC "
          f"{acc(y, km1):.3f}, NMI {normalized_mutual_info_score(y, km1):.3f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(v) for v in a[1:]))
