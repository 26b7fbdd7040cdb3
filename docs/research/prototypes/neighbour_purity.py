"""Class purity of the 10 nearest neighbours (PCA 64, cosine) under several views of the
reference-whitened targets: whitened pixels (what `neighbour_positives` uses), the DFT modulus,
blurred and re-centred images. Labels are read for the diagnostic only.

    python3 docs/research/prototypes/neighbour_purity.py DATASET_DIR   # holds target/reference.parquet
"""
import io
import sys

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from scipy import ndimage


def load(path):
    t = pq.read_table(path)
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.float32) / 255
                       for b in t.column("image").to_pylist()])
    labels = np.array(t.column("label").to_pylist()) if "label" in t.column_names else None
    return images, labels


def nearest(features, k=10, groups=None):
    """Each row's k nearest neighbours (PCA 64, cosine; with groups, from the row's own group
    first, others only when it runs short), and the normalised PCA-64 rows they were found in."""
    f = features - features.mean(0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    p = f @ vt[:64].T
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-12
    s = p @ p.T
    np.fill_diagonal(s, -np.inf)
    if groups is not None:
        s[groups[:, None] != groups[None, :]] -= 10.0
    return np.argpartition(-s, k, axis=1)[:, :k], p


def purity(features, labels, k=10, groups=None):
    """Share of the k nearest neighbours (PCA 64, cosine) with the row's label; with groups,
    neighbours come from the row's own group first (others only when it runs short)."""
    nn, _ = nearest(features, k, groups)
    return (labels[nn] == labels[:, None]).mean()


def recentre(images, sigma=2.0, out=28):
    """Cuts an out×out window centred on the energy centroid of the blurred squared image."""
    n, h, w = images.shape
    energy = ndimage.gaussian_filter(images ** 2, sigma=(0, sigma, sigma))
    yy, xx = np.mgrid[0:h, 0:w]
    res = np.zeros((n, out, out), np.float32)
    for i in range(n):
        e = energy[i] - np.median(energy[i])
        e[e < 0] = 0
        total = e.sum() + 1e-9
        cy, cx = (e * yy).sum() / total, (e * xx).sum() / total
        top = min(max(int(round(cy - out / 2 + 0.5)), 0), h - out)
        left = min(max(int(round(cx - out / 2 + 0.5)), 0), w - out)
        res[i] = images[i, top:top + out, left:left + out]
    return res


def main(directory):
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    n, h, w = x.shape
    xf, bf = x.reshape(n, -1), b.reshape(len(b), -1)
    mu = bf.mean(0)
    ev, v = np.linalg.eigh(np.cov(bf - mu, rowvar=False))
    whiten = v @ np.diag(1 / np.sqrt(ev.clip(0) + ev.mean())) @ v.T
    z = ((xf - mu) @ whiten).reshape(n, h, w)
    spectrum = np.abs(np.fft.fft2(z))
    views = {
        "whitened pixels": z,
        "|DFT| whitened": spectrum,
        "|DFT|^0.5 whitened": np.sqrt(spectrum),
        "|DFT|^2 whitened (autocorrelation)": spectrum ** 2,
        "|DFT| raw minus reference mean": np.abs(np.fft.fft2(x - mu.reshape(h, w))),
        "whitened, blur 1": ndimage.gaussian_filter(z, sigma=(0, 1, 1)),
        "whitened, blur 2": ndimage.gaussian_filter(z, sigma=(0, 2, 2)),
    }
    if h > 28:
        r = recentre(z)
        views["whitened, re-centred"] = r
        views["whitened, re-centred, blur 1"] = ndimage.gaussian_filter(r, sigma=(0, 1, 1))
    for name, f in views.items():
        print(f"{name:40s} purity@10 = {purity(f.reshape(n, -1), y):.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
