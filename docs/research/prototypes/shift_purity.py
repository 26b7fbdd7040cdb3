"""Purity@10 of neighbours under the max over shifts of the normalised cross-correlation of
reference-whitened images (FFT, zero-padded), against plain cosine. Labels for the diagnostic only.

    python3 docs/research/prototypes/shift_purity.py DATASET_DIR N MAX_SHIFT
"""
import sys, time
import numpy as np, torch
sys.path.insert(0, __import__('os').path.dirname(__file__))
from neighbour_purity import load
from scipy import ndimage
torch.set_num_threads(2)
d = sys.argv[1]; n = int(sys.argv[2]); maxs = int(sys.argv[3])
x, y = load(f"{d}/target.parquet"); b, _ = load(f"{d}/reference.parquet")
x, y = x[:n], y[:n]
N, h, w = x.shape
bf = b.reshape(len(b), -1); mu = bf.mean(0)
ev, v = np.linalg.eigh(np.cov(bf - mu, rowvar=False))
W = v @ np.diag(1 / np.sqrt(ev.clip(0) + ev.mean())) @ v.T
z = ((x.reshape(N, -1) - mu) @ W).reshape(N, h, w).astype(np.float32)
def purity_from_sim(s, k=10):
    s = s.clone(); s.fill_diagonal_(-float('inf'))
    nn = torch.topk(s, k, dim=1).indices.numpy()
    return (y[nn] == y[:, None]).mean()
def shiftmax(zz, maxs, pad=True):
    t = torch.from_numpy(zz)
    t = t - t.mean((1, 2), keepdim=True)
    t = t / t.flatten(1).norm(dim=1)[:, None, None]
    H, Wd = t.shape[1:]
    P = (H + maxs, Wd + maxs)
    F = torch.fft.rfft2(t, s=P)
    best = torch.full((len(t), len(t)), -1.0)
    for i0 in range(0, len(t), 40):
        c = torch.fft.irfft2(F[i0:i0+40, None].conj() * F[None], s=P)  # (b, n, P)
        # shifts in [-maxs, maxs]: indices 0..maxs and P-maxs..P-1
        idx_h = list(range(0, maxs + 1)) + list(range(P[0] - maxs, P[0]))
        idx_w = list(range(0, maxs + 1)) + list(range(P[1] - maxs, P[1]))
        c = c[:, :, idx_h][:, :, :, idx_w]
        best[i0:i0+40] = c.flatten(2).max(2).values
    return best
t0 = time.time()
flat = torch.from_numpy(z.reshape(N, -1)); flat = flat - flat.mean(1, keepdim=True); flat = flat / flat.norm(dim=1, keepdim=True)
print(f"n={N} whitened cosine            purity@10 = {purity_from_sim(flat @ flat.T):.3f}", flush=True)
raw = torch.from_numpy(x.reshape(N,-1)); raw = raw-raw.mean(1,keepdim=True); raw=raw/raw.norm(dim=1,keepdim=True)
print(f"n={N} raw cosine                 purity@10 = {purity_from_sim(raw @ raw.T):.3f}", flush=True)
for sigma in [0, 1]:
    zz = z if sigma == 0 else ndimage.gaussian_filter(z, sigma=(0, sigma, sigma)).astype(np.float32)
    for m in [2, 4, maxs]:
        s = shiftmax(zz, m)
        print(f"n={N} whitened blur {sigma} shift-max ±{m}  purity@10 = {purity_from_sim(s):.3f}  ({time.time()-t0:.0f} s)", flush=True)
