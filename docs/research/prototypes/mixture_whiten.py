"""Reference whitening per background texture: on a dataset whose references hold several
textures (fashion-textures), whiten each target with the mean and covariance of its own texture
group instead of the whole reference mixture's. Reports purity@10 of the whitened-pixel
neighbours (PCA 64, cosine: what `neighbour_positives` uses), how often those share the image's
texture group, and k-means (10 clusters, 10 restarts) ACC / NMI on the whitened pixels (PCA 64),
for global whitening and for per-group whitening with targets assigned by corner statistics or
by Gaussian likelihood. Labels and groups are read for the diagnostic only.

    python3 docs/research/prototypes/mixture_whiten.py out/quality/data/fashion-textures [GROUPS]
"""
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi

from neighbour_purity import load, nearest
from texture_leak import corner_texture


def acc(y, c):
    m = np.zeros((c.max() + 1, y.max() + 1))
    np.add.at(m, (c, y), 1)
    r, k = linear_sum_assignment(-m)
    return m[r, k].sum() / len(y)


def whitener(bf, shrinkage=1.0):
    mu = bf.mean(0)
    ev, v = np.linalg.eigh(np.cov(bf - mu, rowvar=False))
    return mu, v @ np.diag(1 / np.sqrt(ev.clip(0) + shrinkage * ev.mean())) @ v.T, (ev, v)


def report(name, z, y, texture):
    nn, p = nearest(z)
    pur = (y[nn] == y[:, None]).mean()
    tex = (texture[nn] == texture[:, None]).mean()
    km = KMeans(10, n_init=10, random_state=0).fit_predict(p)
    print(f"{name:42s} purity@10 {pur:.3f}  texture share {tex:.3f}  k-means ACC {acc(y, km):.3f} "
          f"NMI {nmi(y, km):.3f}  texture NMI {nmi(texture, km):.3f}", flush=True)


def main(directory, groups=3):
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    n = len(x)
    xf, bf = x.reshape(n, -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    db, dx = corner_texture(b), corner_texture(x)
    m, s = db.mean(0), db.std(0)
    km = KMeans(groups, n_init=10, random_state=0).fit((db - m) / s)
    gb, gx_corner = km.labels_, km.predict((dx - m) / s)
    print(f"reference groups {np.bincount(gb).tolist()}, targets by corners {np.bincount(gx_corner).tolist()}")

    mu, w, _ = whitener(bf)
    report("global whitening", (xf - mu) @ w, y, gx_corner)

    fits = [whitener(bf[gb == g]) for g in range(groups)]
    # Gaussian log-likelihood of each target under each group's (shrunk) covariance.
    ll = np.zeros((n, groups))
    for g, (mg, wg, (ev, v)) in enumerate(fits):
        zg = (xf - mg) @ wg
        ll[:, g] = -0.5 * (zg ** 2).sum(1) - 0.5 * np.log(ev.clip(0) + ev.mean()).sum()
    gx_lik = ll.argmax(1)
    print(f"targets by likelihood {np.bincount(gx_lik, minlength=groups).tolist()}, "
          f"agreement with corners {(gx_lik == gx_corner).mean():.3f}")
    for name, gx in (("per-group whitening, corners", gx_corner), ("per-group whitening, likelihood", gx_lik)):
        z = np.zeros_like(xf)
        for g, (mg, wg, _) in enumerate(fits):
            z[gx == g] = (xf[gx == g] - mg) @ wg
        report(name, z, y, gx_corner)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
