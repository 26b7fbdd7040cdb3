"""A weakly supervised localiser for moving objects: a small fully convolutional CNN learns to
tell targets (background + object) from references (background alone) through the global
average of a per-pixel logit map (a class activation map); each target's window is then placed
on the centre of mass of the map's positive part (or the window of largest map sum). Scored
against the generator's offsets as in align_truth.py; labels and offsets are read for the
scores only.

    python3 docs/research/prototypes/cam_align.py DATASET_DIR OFFSETS_TXT [EPOCHS] [WIDTH] [INPUT]
    (INPUT: `raw` standardised pixels or `zca` reference-whitened ones)
"""
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from align_estimators import box_offsets, centroid_offsets, report
from neighbour_purity import load
from tic_purity import WINDOW
from tic_windows import whiten


def net(width, arch="dilated"):
    """`dilated`: 5×5, 3×3 and a dilated 3×3 convolution (receptive field 11 px); `plain`: four
    3×3 convolutions (9 px), the layers salient's encoders are made of."""
    def block(cin, cout, k, d=1):
        return [nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d), nn.BatchNorm2d(cout),
                nn.ReLU()]
    if arch == "plain":
        return nn.Sequential(*block(1, width, 3), *block(width, 2 * width, 3),
                             *block(2 * width, 2 * width, 3), *block(2 * width, 2 * width, 3),
                             nn.Conv2d(2 * width, 1, 1))
    return nn.Sequential(*block(1, width, 5), *block(width, 2 * width, 3),
                         *block(2 * width, 2 * width, 3, 2), nn.Conv2d(2 * width, 1, 1))


def main(directory, offsets_txt, epochs=6, width=16, source="raw"):
    torch.manual_seed(0)
    x, y = load(f"{directory}/target.parquet")
    b, _ = load(f"{directory}/reference.parquet")
    n, h, w = x.shape
    span = h - WINDOW + 1
    truth = np.loadtxt(offsets_txt, dtype=int)[:, 4:6]
    white = whiten(x, b)
    z = white(x)
    if source == "zca":
        inp_t, inp_b = z, white(b)
    else:
        mu, s = b.mean(0), b.std()
        inp_t = ((x - mu) / s).astype(np.float32)
        inp_b = ((b - mu) / s).astype(np.float32)
    data = torch.from_numpy(np.concatenate([inp_t, inp_b]))[:, None]
    target = torch.cat([torch.ones(n), torch.zeros(len(b))])
    # Hold out 10% of each side to report how well the detector tells them apart.
    perm = torch.randperm(len(data))
    held, train = perm[: len(data) // 10], perm[len(data) // 10:]
    model = net(width)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(train) // 128 + 1))
    for epoch in range(epochs):
        t0 = time.time()
        model.train()
        order = train[torch.randperm(len(train))]
        total = 0.0
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            logit = model(data[idx]).mean((1, 2, 3))
            loss = F.binary_cross_entropy_with_logits(logit, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            logit = torch.cat([model(data[held[i:i + 512]]).mean((1, 2, 3))
                               for i in range(0, len(held), 512)])
        accuracy = ((logit > 0).float() == target[held]).float().mean().item()
        print(f"epoch {epoch}: loss {total / len(train):.4f}, held-out accuracy {accuracy:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    with torch.no_grad():
        maps = torch.cat([model(data[i:min(i + 512, n)]) for i in range(0, n, 512)])[:, 0].numpy()
    report("map centroid (positive part)", centroid_offsets(maps, span), truth, z, y, span)
    report("map box (positive part)", box_offsets(np.clip(maps, 0, None), span), truth, z, y, span)
    for tau in (0.5, 1.0, 2.0):
        p = np.exp((maps - maps.max((1, 2), keepdims=True)) / tau)
        report(f"map softmax τ{tau} centroid", centroid_offsets(p, span), truth, z, y, span)
    np.save("/tmp/cam_maps.npy", maps)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], *(int(v) for v in a[2:4]), *a[4:5])
