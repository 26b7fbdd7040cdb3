"""The PyTorch twin of salient's default CPU training configuration, for `cargo run --release
--example bench_train`: cIDFD with two small-CNN encoders (conv3x3-BN-ReLU at widths 32/64/128/256,
strides 1/2/2/2, global average pooling, linear to 128), three memory banks with an exact softmax
(tau 1), feature decorrelation (tau2 2), the reference-salient term (beta 5, g_s on target and
reference in one pass), SGD 0.03 / 0.9 / 5e-4, batch 128, random resized crops and brightness /
contrast jitter done on the batch in torch. Prints JSON: target + reference images per second,
median epoch over repeats (after one warm-up epoch).

usage: python_train.py TARGET.parquet REFERENCE.parquet ROWS REPEATS THREADS
"""
import io
import json
import statistics
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

target, reference = sys.argv[1], sys.argv[2]
rows, repeats, threads = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)


def load(path):
    images = pq.read_table(path, columns=["image"]).column(0).to_pylist()[:rows]
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in images])
    return torch.from_numpy(x).unsqueeze(1)  # uint8 N×1×28×28, as salient keeps them


def encoder(width=32, dim=128):
    def block(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    w = [width, 2 * width, 4 * width, 8 * width]
    layers = block(1, w[0], 1) + block(w[0], w[1], 2) + block(w[1], w[2], 2) + block(w[2], w[3], 2)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[3], dim))


def bank(n, d=128):
    a = 1.0 / np.sqrt(d / 3)
    return F.normalize(torch.empty(n, d).uniform_(-a, a), dim=1)


def augment(x, mean, std):
    x = x.float() / 255.0
    b = x.shape[0]
    scale = torch.empty(b).uniform_(0.2, 1.0).sqrt()
    ratio = torch.exp(torch.empty(b).uniform_(np.log(3 / 4), np.log(4 / 3))).sqrt()
    sx, sy = (scale * ratio).clamp(max=1), (scale / ratio).clamp(max=1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2] = (torch.rand(b) * 2 - 1) * (1 - sx)
    theta[:, 1, 2] = (torch.rand(b) * 2 - 1) * (1 - sy)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    x = x * torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4) + m
    return (x.clamp(0, 1) - mean) / std


def fd(f, tau2=2.0):
    c = F.normalize(f, dim=0).T @ F.normalize(f, dim=0) / tau2
    return F.cross_entropy(c, torch.arange(c.shape[0]))


xt_all, xb_all = load(target), load(reference)
mean, std = (xt_all.float() / 255).mean().item(), (xt_all.float() / 255).std().item()
g_s, g_z = encoder(), encoder()
opt = torch.optim.SGD(list(g_s.parameters()) + list(g_z.parameters()), lr=0.03, momentum=0.9, weight_decay=5e-4)
S, Zt, Zb = bank(len(xt_all)), bank(len(xt_all)), bank(len(xb_all))
batch, tau, lam, beta = 128, 1.0, 1.0, 5.0


def epoch():
    order, ref_order = torch.randperm(len(xt_all)), torch.randperm(len(xb_all))
    steps = len(xt_all) // batch
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        ridx = ref_order[torch.arange(step * batch, (step + 1) * batch) % len(xb_all)]
        xt, xb = augment(xt_all[idx], mean, std), augment(xb_all[ridx], mean, std)
        feats = F.normalize(g_s(torch.cat([xt, xb])), dim=1)
        s, sb = feats[:batch], feats[batch:]
        z = F.normalize(g_z(torch.cat([xt, xb])), dim=1)
        zx, zb = z[:batch], z[batch:]
        logit_t = (s @ S.T + lam * zx @ Zt.T) / tau
        logit_b = zb @ Zb.T / tau
        loss = F.cross_entropy(logit_t, idx) + F.cross_entropy(logit_b, ridx) + fd(s)
        loss = loss + beta * (1 - sb.mean(0).pow(2).sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for bank_, rows_, f in ((S, idx, s), (Zt, idx, zx), (Zb, ridx, zb)):
                bank_[rows_] = F.normalize(0.5 * bank_[rows_] + 0.5 * f.detach(), dim=1)
    return 2 * steps * batch / (time.perf_counter() - start)


rates = [epoch() for _ in range(repeats + 1)][1:]
print(json.dumps({"images_per_second": statistics.median(rates), "rates": rates, "torch": torch.__version__}))
