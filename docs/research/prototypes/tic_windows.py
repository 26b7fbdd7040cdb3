"""Writes the WINDOW×WINDOW windows that shift-invariant k-means aligns (tic_purity.py) as a new
dataset: each target's raw window at the offset of its best (template, offset) on the
reference-whitened image, and each reference's raw window at its best offset against the same
templates. Training salient on the result tests an alignment front before the whitening front.
The templates come from the restart with the best summed correlation (no labels read); labels
are copied for the evaluation only.

    python3 docs/research/prototypes/tic_windows.py DATASET_DIR OUT_DIR [K] [ITERS] [RESTARTS]
"""
import io
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from neighbour_purity import load
from tic_purity import WINDOW, acc, assign, tic


def whiten(x, b, shrinkage=1.0):
    xf, bf = x.reshape(len(x), -1), b.reshape(len(b), -1)
    mu = bf.mean(0)
    ev, v = np.linalg.eigh(np.cov(bf - mu, rowvar=False))
    white = v @ np.diag(1 / np.sqrt(ev.clip(0) + shrinkage * ev.mean())) @ v.T
    return lambda a: ((a.reshape(len(a), -1) - mu) @ white).reshape(a.shape).astype(np.float32)


def crop(images, offsets):
    span = images.shape[1] - WINDOW + 1
    out = np.empty((len(images), WINDOW, WINDOW), np.uint8)
    for i, o in enumerate(offsets):
        y, x = divmod(int(o), span)
        out[i] = np.rint(images[i, y:y + WINDOW, x:x + WINDOW] * 255).clip(0, 255)
    return out


def write(path, windows, labels):
    pngs = []
    for w in windows:
        buf = io.BytesIO()
        Image.fromarray(w, mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    cols = {"id": pa.array(np.arange(len(windows), dtype=np.int64)),
            "image": pa.array(pngs, pa.binary())}
    if labels is not None:
        cols["label"] = pa.array(labels.astype(np.int64))
    tmp = path + ".tmp"
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, path)


def best_restart(run, restarts, y):
    """Of run(0) … run(restarts − 1), each (labels, offsets, objective, templates), the one with
    the highest objective (no labels read; y only scores each restart in the log)."""
    best = None
    for r in range(restarts):
        t0 = time.time()
        kk, oo, obj, templates = run(r)
        print(f"restart {r}: objective {obj:.1f}, ACC {acc(y, kk):.4f} ({time.time() - t0:.0f} s)",
              flush=True)
        if best is None or obj > best[2]:
            best = (kk, oo, obj, templates)
    return best


def write_windows(out, x, y, offsets, b, yb, zb, templates):
    """Writes the targets' windows at `offsets` and the references' windows at their best
    offsets against `templates` (on their whitened pixels zb) as OUT's dataset."""
    _, ob, _ = assign(zb, templates)
    os.makedirs(out, exist_ok=True)
    write(f"{out}/target.parquet", crop(x, offsets), y)
    write(f"{out}/reference.parquet", crop(b, ob), yb)
    print(f"wrote {len(x)} + {len(b)} windows of {WINDOW}x{WINDOW} to {out}")


def main(directory, out, k=10, iters=15, restarts=3):
    x, y = load(f"{directory}/target.parquet")
    b, yb = load(f"{directory}/reference.parquet")
    white = whiten(x, b)
    z, zb = white(x), white(b)
    _, oo, _, templates = best_restart(lambda r: tic(z, k, iters, seed=r), restarts, y)
    write_windows(out, x, y, oo, b, yb, zb, templates)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], *(int(v) for v in a[2:]))
