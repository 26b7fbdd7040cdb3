"""Noisier2Noise background removal on the shifted digits, then re-centring of the estimate.

A fully convolutional U-Net (proto10's, adapted to 36x36 Parquet data) is trained on all targets
with reference crops as the added noise: f(x + b - mu_b) ~ x; the digit estimate is
2 f(z) - z averaged over K fixed reference crops (minus mu_b, so that it is ~ 0.25 x digit).
The estimate is then re-centred on its energy centroid (neighbour_purity.recentre: a 28x28
window around the centroid of the blurred squared image). Purity@10 (PCA 64, cosine) and
k-means ACC / NMI (10 clusters, 10 restarts, PCA 64 + L2) are measured on raw pixels,
reference-whitened pixels (baseline), the estimate, the re-centred estimate (blur sigma 1, 2)
and the re-centred estimate after reference-free PCA (ZCA) whitening. Labels: scoring only.

    OMP_NUM_THREADS=1 nice -n 19 python3 docs/research/prototypes/denoise_recentre.py \
        /tmp/s5/data/mnist-grass-shifted [--width 32 --epochs 12 --k 4 --budget 2100]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from neighbour_purity import load, purity, recentre  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument('data')
p.add_argument('--width', type=int, default=32)
p.add_argument('--epochs', type=int, default=12)
p.add_argument('--k', type=int, default=4, help='fixed reference crops averaged in the estimate')
p.add_argument('--bs', type=int, default=128)
p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--budget', type=float, default=2100, help='stop training after this many seconds')
p.add_argument('--bench', action='store_true', help='time a few batches and exit')
p.add_argument('--save', default='/tmp/s5/denoise_estimate.npy')
p.add_argument('--load', default='', help='skip training: read a saved estimate')
p.add_argument('--seed', type=int, default=0)
a = p.parse_args()
print(a, flush=True)
torch.set_num_threads(1)
torch.manual_seed(a.seed)
np.random.seed(a.seed)
t0 = time.time()


def stamp():
    return f'[{time.time() - t0:.0f}s]'


x_np, y = load(f'{a.data}/target.parquet')
b_np, _ = load(f'{a.data}/reference.parquet')
N, H, W = x_np.shape
Xt = torch.tensor(x_np).view(N, 1, H, W)
Bt = torch.tensor(b_np).view(len(b_np), 1, H, W)
mu = Bt.mean(0, keepdim=True)
print(f'loaded {N} targets, {len(b_np)} references of {H}x{W} {stamp()}', flush=True)


def acc(y, c):
    k = max(y.max(), c.max()) + 1
    M = np.zeros((k, k))
    np.add.at(M, (c, y), 1)
    r, cc = linear_sum_assignment(-M)
    return M[r, cc].sum() / len(y)


def pca_l2(f, d=64):
    f = f - f.mean(0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    z = f @ vt[:d].T
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)


results = []


def score(name, feats):
    f = feats.reshape(len(feats), -1).astype(np.float64)
    pur = purity(f, y)
    c = KMeans(10, n_init=10, random_state=0).fit_predict(pca_l2(f))
    A, Nm = acc(y, c), normalized_mutual_info_score(y, c)
    results.append((name, pur, A, Nm))
    print(f'{name:55s} purity@10 {pur:.3f}  ACC {A:.3f}  NMI {Nm:.3f} {stamp()}', flush=True)


def zca(f, ref=None):
    """ZCA whitening with eps = mean eigenvalue (as whiten(ref)); covariance of ref (default f)."""
    ref = f if ref is None else ref
    m = ref.mean(0)
    ev, v = np.linalg.eigh(np.cov(ref - m, rowvar=False))
    return (f - m) @ (v @ np.diag(1 / np.sqrt(ev.clip(0) + ev.mean())) @ v.T)


class UNet(nn.Module):
    # proto10's U-Net: 36 -> 18 -> 9, skip connections, residual output
    def __init__(s, w):
        super().__init__()
        c = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        s.e1 = nn.Sequential(c(1, w), c(w, w))
        s.e2 = nn.Sequential(c(w, 2 * w), c(2 * w, 2 * w))
        s.e3 = nn.Sequential(c(2 * w, 4 * w), c(4 * w, 4 * w))
        s.d2 = nn.Sequential(c(6 * w, 2 * w), c(2 * w, 2 * w))
        s.d1 = nn.Sequential(c(3 * w, w), c(w, w))
        s.out = nn.Conv2d(w, 1, 1)

    def forward(s, z):
        a_ = s.e1(z)
        b = s.e2(F.max_pool2d(a_, 2))
        c_ = s.e3(F.max_pool2d(b, 2))
        u = s.d2(torch.cat([F.interpolate(c_, size=b.shape[-2:]), b], 1))
        u = s.d1(torch.cat([F.interpolate(u, size=a_.shape[-2:]), a_], 1))
        return z + s.out(u)


net = UNet(a.width)
opt = torch.optim.Adam(net.parameters(), a.lr)
g = torch.Generator()
g.manual_seed(1234)
fixed_b = Bt[torch.randint(len(Bt), (a.k,), generator=g)] - mu  # baked-in reference crops


def clean_all():
    """2 f(z) - z averaged over the K fixed crops, minus mu_b: ~ 0.25 x digit."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, N, 500):
            x = Xt[i:i + 500]
            acc_ = 0
            for r in range(a.k):
                z = x + fixed_b[r:r + 1]
                acc_ = acc_ + (2 * net(z) - z)
            out.append(acc_ / a.k - mu)
    net.train()
    return torch.cat(out)[:, 0].numpy()


def train_step():
    idx = torch.randint(N, (a.bs,))
    x = Xt[idx]
    b = Bt[torch.randint(len(Bt), (a.bs,))]
    loss = F.mse_loss(net(x + b - mu), x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


if a.bench:
    train_step()
    t = time.time()
    for _ in range(5):
        train_step()
    dt = (time.time() - t) / 5
    print(f'width {a.width}: {dt:.3f}s per batch of {a.bs} -> {dt * N / a.bs:.0f}s per epoch', flush=True)
    raise SystemExit

# ---- baselines (no training)
mu_np = mu[0, 0].numpy()
zw = zca(x_np.reshape(N, -1), b_np.reshape(len(b_np), -1)).reshape(N, H, W)
score('(a) raw pixels', x_np)
score('baseline: reference-whitened pixels', zw)
score('baseline: reference-whitened, re-centred (sigma 2)', recentre(zw, 2.0))

# ---- Noisier2Noise
if a.load:
    C = np.load(a.load)
    print(f'loaded estimate {a.load}', flush=True)
else:
    steps = N // a.bs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * steps)
    t_train = time.time()
    for ep in range(a.epochs):
        te = time.time()
        net.train()
        perm = torch.randperm(N)
        tot = 0
        for i in range(0, N - a.bs + 1, a.bs):
            x = Xt[perm[i:i + a.bs]]
            b = Bt[torch.randint(len(Bt), (a.bs,))]
            loss = F.mse_loss(net(x + b - mu), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        el = time.time() - t_train
        print(f'n2n epoch {ep} loss {tot / steps:.6f} epoch {time.time() - te:.0f}s train total {el:.0f}s {stamp()}',
              flush=True)
        if el + (time.time() - te) > a.budget and ep < a.epochs - 1:
            print(f'stopping after epoch {ep}: training budget {a.budget:.0f}s (cosine schedule not finished)',
                  flush=True)
            break
    C = clean_all()
    np.save(a.save, C)
    print(f'estimate saved to {a.save} {stamp()}', flush=True)

print(f'estimate: mean {C.mean():.4f} std {C.std():.4f}; per-pixel std over images {C.std(0).mean():.4f}', flush=True)
score('(b) denoised estimate', C)
for s in (1.0, 2.0):
    R = recentre(C, s)
    score(f'(c) estimate re-centred (sigma {s:g})', R)
    score(f'(d) estimate re-centred (sigma {s:g}), PCA-whitened', zca(R.reshape(N, -1)))
    # variant: centroid of the positive part only (digit strokes are bright)
    n_, h_, w_ = C.shape
    Cp = np.clip(C, 0, None)
    e = ndimage.gaussian_filter(Cp, sigma=(0, s, s))
    yy, xx = np.mgrid[0:h_, 0:w_]
    Rp = np.zeros((n_, 28, 28), np.float32)
    tot_ = e.sum((1, 2)) + 1e-9
    cy, cx = (e * yy).sum((1, 2)) / tot_, (e * xx).sum((1, 2)) / tot_
    for i in range(n_):
        top = min(max(int(round(cy[i] - 14 + 0.5)), 0), h_ - 28)
        left = min(max(int(round(cx[i] - 14 + 0.5)), 0), w_ - 28)
        Rp[i] = C[i, top:top + 28, left:left + 28]
    score(f'(c\') estimate re-centred on blurred positive part (sigma {s:g})', Rp)

print('\n| feature set | purity@10 | ACC | NMI |\n|---|---|---|---|')
for name, pur, A, Nm in results:
    print(f'| {name} | {pur:.3f} | {A:.3f} | {Nm:.3f} |')
print(f'total wall {time.time() - t0:.0f}s', flush=True)
