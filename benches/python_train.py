"""The PyTorch twin of salient's default training configuration, for `cargo bench --bench
bench_train`: cIDFD with two small-CNN encoders (or two CIFAR-stem ResNet-18s with
--architecture resnet18) (conv3x3-BN-ReLU at widths 32/64/128/256,
strides 1/2/2/2, global average pooling, linear to 128), three memory banks with an exact softmax
(tau 1), feature decorrelation (tau2 2), the reference-salient term (beta 5, g_s on target and
reference in one pass), SGD 0.03 / 0.9 / 5e-4, batch 128, random resized crops and brightness /
contrast jitter done on the batch in torch. Prints JSON: target + reference images per second,
median epoch over repeats (after one warm-up epoch).

usage: python_train.py TARGET.parquet REFERENCE.parquet ROWS REPEATS THREADS
                       [--architecture small-cnn|resnet18] [--device cpu|cuda] [--no-tf32]

On CUDA the images live on the GPU and are augmented there; epochs are timed after a device
synchronisation. PyTorch's defaults allow TF32 in cuDNN convolutions; --no-tf32 turns that off
(candle computes in full FP32).
"""
import argparse
import io
import json
import statistics
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

cli = argparse.ArgumentParser()
cli.add_argument("target")
cli.add_argument("reference")
cli.add_argument("rows", type=int)
cli.add_argument("repeats", type=int)
cli.add_argument("threads", type=int)
cli.add_argument("--architecture", default="small-cnn", choices=["small-cnn", "resnet18"])
cli.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
cli.add_argument("--no-tf32", action="store_true")
args = cli.parse_args()
target, reference, rows, repeats = args.target, args.reference, args.rows, args.repeats
device = torch.device(args.device)
torch.set_num_threads(args.threads)
torch.manual_seed(0)
if args.no_tf32:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def load(path):
    images = pq.read_table(path, columns=["image"]).column(0).to_pylist()[:rows]
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in images])
    return torch.from_numpy(x).unsqueeze(1).to(device)  # uint8 N×1×28×28, as salient keeps them


def encoder(width=32, dim=128):
    def block(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    w = [width, 2 * width, 4 * width, 8 * width]
    layers = block(1, w[0], 1) + block(w[0], w[1], 2) + block(w[1], w[2], 2) + block(w[2], w[3], 2)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[3], dim))


class BasicBlock(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
        self.shortcut = nn.Sequential()
        if s != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18(width=64, dim=128):
    """salient's resnet18: CIFAR stem (3x3 conv, stride 1, no max-pool), 2 blocks per stage."""
    layers, c = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)], width
    for stage, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
        for b in range(2):
            layers.append(BasicBlock(c, w, 2 if stage > 0 and b == 0 else 1))
            c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, dim))


def bank(n, d=128):
    a = 1.0 / np.sqrt(d / 3)
    return F.normalize(torch.empty(n, d, device=device).uniform_(-a, a), dim=1)


def augment(x, mean, std):
    x = x.float() / 255.0
    b = x.shape[0]
    on = {"device": x.device}
    scale = torch.empty(b, **on).uniform_(0.2, 1.0).sqrt()
    ratio = torch.exp(torch.empty(b, **on).uniform_(np.log(3 / 4), np.log(4 / 3))).sqrt()
    sx, sy = (scale * ratio).clamp(max=1), (scale / ratio).clamp(max=1)
    theta = torch.zeros(b, 2, 3, **on)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2] = (torch.rand(b, **on) * 2 - 1) * (1 - sx)
    theta[:, 1, 2] = (torch.rand(b, **on) * 2 - 1) * (1 - sy)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    x = x * torch.empty(b, 1, 1, 1, **on).uniform_(0.6, 1.4)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * torch.empty(b, 1, 1, 1, **on).uniform_(0.6, 1.4) + m
    return (x.clamp(0, 1) - mean) / std


def fd(f, tau2=2.0):
    c = F.normalize(f, dim=0).T @ F.normalize(f, dim=0) / tau2
    return F.cross_entropy(c, torch.arange(c.shape[0], device=c.device))


xt_all, xb_all = load(target), load(reference)
mean, std = (xt_all.float() / 255).mean().item(), (xt_all.float() / 255).std().item()
make = resnet18 if args.architecture == "resnet18" else encoder
g_s, g_z = make().to(device), make().to(device)
opt = torch.optim.SGD(list(g_s.parameters()) + list(g_z.parameters()), lr=0.03, momentum=0.9, weight_decay=5e-4)
S, Zt, Zb = bank(len(xt_all)), bank(len(xt_all)), bank(len(xb_all))
batch, tau, lam, beta = 128, 1.0, 1.0, 5.0


def epoch():
    order = torch.randperm(len(xt_all), device=device)
    ref_order = torch.randperm(len(xb_all), device=device)
    steps = len(xt_all) // batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        ridx = ref_order[torch.arange(step * batch, (step + 1) * batch, device=device) % len(xb_all)]
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
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * steps * batch / (time.perf_counter() - start)


rates = [epoch() for _ in range(repeats + 1)][1:]
print(json.dumps({
    "images_per_second": statistics.median(rates),
    "rates": rates,
    "torch": torch.__version__,
    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    "tf32": device.type == "cuda" and torch.backends.cudnn.allow_tf32,
    # The widest vector code PyTorch dispatches to on this processor (DEFAULT, AVX2, AVX512).
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
}))
