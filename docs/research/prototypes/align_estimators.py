"""Class-agnostic and template alignments of moving objects, scored against the generator's
offsets (see align_truth.py): each estimator gives every target one offset; reported are the
shares of windows at the digit's offset (exact, within 1 px) after removing the estimator's
constant offset, and k-means (10 restarts) on the whitened windows at those offsets. Offsets and
labels are read for the scores only.

    python3 docs/research/prototypes/align_estimators.py DATASET_DIR OFFSETS_TXT
"""
import sys
import time

import numpy as np
from scipy import ndimage

from align_truth import alignment_scores, windows_kmeans
from neighbour_purity import load
from tic_purity import WINDOW, tic
from tic_windows import whiten

def report(name, offsets, truth, z, y, span, groups=None):
    g = np.zeros(len(offsets), int) if groups is None else groups
    ex, nr = alignment_scores(offsets, truth, g, span)
    a, n = windows_kmeans(z, offsets, y)
    print(f"{name}: exactly {ex:.3f}, within 1 px {nr:.3f}; windows k-means ACC {a:.4f} NMI {n:.4f}",
          flush=True)


def centroid_offsets(m, span):
    """Offset whose window centre is nearest the centre of mass of the non-negative map m."""
    n, h, w = m.shape
    m = np.clip(m, 0, None) + 1e-12
    yy, xx = np.mgrid[0:h, 0:w]
    cy = (m * yy).sum((1, 2)) / m.sum((1, 2))
    cx = (m * xx).sum((1, 2)) / m.sum((1, 2))
    oy = np.clip(np.rint(cy - (WINDOW - 1) / 2), 0, span - 1).astype(int)
    ox = np.clip(np.rint(cx - (WINDOW - 1) / 2), 0, span - 1).astype(int)
    return oy * span + ox


def box_offsets(m, span):
    """Offset of the window with the largest sum of m."""
    s = ndimage.uniform_filter(m, size=(1, WINDOW, WINDOW), mode="constant")
    c = WINDOW // 2
    s = s[:, c:c + span, c:c + span] if WINDOW % 2 == 0 else s[:, c:c + span, c:c + span]
    return s.reshape(len(m), -1).argmax(1)


def main(directory, offsets_txt):
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    n, h, w = x.shape
    span = h - WINDOW + 1
    truth = np.loadtxt(offsets_txt, dtype=int)[:, 4:6]
    xf, bf = x.reshape(n, -1), b.reshape(len(b), -1)
    mu = bf.mean(0)
    white = whiten(x, b)
    z, zb = white(x), white(b)

    # Excess whitened energy, blurred; centroid and best box.
    e = z ** 2 - (zb ** 2).mean(0)
    for s in (1.0, 2.0):
        eb = ndimage.gaussian_filter(e, (0, s, s))
        report(f"excess energy σ{s} centroid", centroid_offsets(eb, span), truth, z, y, span)
        report(f"excess energy σ{s} box", box_offsets(eb, span), truth, z, y, span)
    # Wiener estimate of the object: Σo (Σo + Σb)^-1 (x − μ), Σo = Σx − Σb.
    ct = np.cov(xf, rowvar=False)
    so = ct - np.cov(bf, rowvar=False)
    wiener = np.linalg.solve(ct, so).T  # (Σx^-1 Σo)^T = Σo Σx^-1
    d = ((xf - xf.mean(0)) @ wiener.T).reshape(n, h, w)
    report("wiener estimate centroid", centroid_offsets(d, span), truth, z, y, span)
    report("wiener estimate box", box_offsets(np.clip(d, 0, None), span), truth, z, y, span)
    # Brightness above the reference mean, blurred.
    r = (x - mu.reshape(h, w))
    for s in (2.0, 4.0):
        rb = ndimage.gaussian_filter(r, (0, s, s))
        report(f"brightness σ{s} centroid", centroid_offsets(rb, span), truth, z, y, span)
        report(f"brightness σ{s} box", box_offsets(rb, span), truth, z, y, span)
    # One template (K = 1) on the whitened image.
    t0 = time.time()
    kk, oo, obj, _ = tic(z, 1, 15, seed=0)
    report(f"tic K=1 ({time.time() - t0:.0f} s)", oo, truth, z, y, span)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
