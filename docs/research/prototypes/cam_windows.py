"""The localiser front as a prototype: cam_align.py's detector (targets against references,
class activation map) places each target's window on the centre of mass of its map; shift-
invariant k-means then refines every offset within ±RADIUS px of that estimate (templates
started by k-means on the estimated windows; of RESTARTS starts, the best summed correlation,
no labels read). References take their best window against the final templates. Writes the raw
windows as a dataset (as tic_windows.py), and, given the generator's offsets, scores the
alignment (align_truth.py). Labels and offsets are read for the scores only.

    python3 docs/research/prototypes/cam_windows.py DATASET_DIR OUT_DIR SEED [OFFSETS_TXT]
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from align_estimators import centroid_offsets, report
from cam_align import net
from neighbour_purity import load
from tic_purity import WINDOW, aligned, windows
from tic_windows import best_restart, whiten, write_windows

EPOCHS, WIDTH, RADIUS, K, ITERS, RESTARTS = 6, 16, 3, 10, 15, 3
# The detector's layers (cam_align.net); CAM_ARCH=plain for four 3×3 convolutions.
ARCH = os.environ.get("CAM_ARCH", "dilated")


def detector_maps(x, b, seed):
    """The per-pixel logit maps of a detector trained to tell targets from references."""
    torch.manual_seed(seed)
    n, h, w = x.shape
    mu = b.reshape(len(b), -1).mean(0).reshape(h, w)
    s = b.std()
    data = torch.from_numpy(np.concatenate([(x - mu) / s, (b - mu) / s]).astype(np.float32))[:, None]
    target = torch.cat([torch.ones(n), torch.zeros(len(b))])
    model = net(WIDTH, ARCH)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=EPOCHS * (len(data) // 128 + 1))
    for epoch in range(EPOCHS):
        t0, total = time.time(), 0.0
        model.train()
        order = torch.randperm(len(data))
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            loss = F.binary_cross_entropy_with_logits(model(data[idx]).mean((1, 2, 3)), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"detector epoch {epoch}: loss {total / len(data):.4f} ({time.time() - t0:.0f} s)",
              flush=True)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(data[i:min(i + 512, n)]) for i in range(0, n, 512)])[:, 0].numpy()


def local_tic(z, init, seed):
    """Shift-invariant k-means with each image's offsets limited to ±RADIUS of init."""
    span = z.shape[1] - WINDOW + 1
    iy, ix = np.divmod(init, span)
    py, px = np.divmod(np.arange(span * span), span)
    allowed = (np.abs(py[None] - iy[:, None]) <= RADIUS) & (np.abs(px[None] - ix[:, None]) <= RADIUS)
    templates = KMeans(K, n_init=1, random_state=seed).fit(aligned(z, init)).cluster_centers_
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    for it in range(ITERS + 1):
        kk, oo, ss = [], [], []
        for i in range(0, len(z), 500):
            s = windows(z[i:i + 500]) @ templates.T
            s[~allowed[i:i + 500]] = -np.inf
            flat = s.reshape(len(s), -1)
            j = flat.argmax(1)
            kk.append(j % K), oo.append(j // K), ss.append(flat.max(1))
        kk, oo, ss = map(np.concatenate, (kk, oo, ss))
        if it == ITERS:
            return kk, oo, ss.sum(), templates
        win = aligned(z, oo)
        for j in range(K):
            if np.any(kk == j):
                templates[j] = win[kk == j].mean(0)
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)


def located_search(z, init, seed, y):
    """The best of RESTARTS local searches from init (labels, offsets, objective, templates)."""
    return best_restart(lambda r: local_tic(z, init, seed * RESTARTS + r), RESTARTS, y)


def main(directory, out, seed, offsets_txt=None):
    seed = int(seed)
    x, y = load(f"{directory}/target.parquet")
    b, yb = load(f"{directory}/reference.parquet")
    span = x.shape[1] - WINDOW + 1
    white = whiten(x, b)
    z, zb = white(x), white(b)
    init = centroid_offsets(detector_maps(x, b, seed), span)
    kk, oo, _, templates = located_search(z, init, seed, y)
    if offsets_txt:
        truth = np.loadtxt(offsets_txt, dtype=int)[:, 4:6]
        report("detector centroid", init, truth, z, y, span)
        report("then local tic (best objective)", oo, truth, z, y, span, groups=kk)
    write_windows(out, x, y, oo, b, yb, zb, templates)


if __name__ == "__main__":
    main(*sys.argv[1:])
