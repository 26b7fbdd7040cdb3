"""PyTorch's and numpy's matrix products at the shapes of the default encoder's convolutions.

The Python side of `cargo bench --bench gemm_probe` (same shapes, same three products per
layer, 2 threads): forward cols·W, backward dY·Wᵀ and colsᵀ·dY, as im2col convolution needs.
usage: python3 benches/gemm_probe.py
"""
import time

import numpy as np
import torch

SHAPES = [(100_352, 9, 32), (25_088, 288, 64), (6_272, 576, 128), (2_048, 1_152, 256)]


def timed(f, reps=10):
    f()
    start = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - start) / reps


def run(name, make, t):
    total = 0.0
    for m, k, n in SHAPES:
        cols, w, dy = make((m, k)), make((k, n)), make((m, n))
        flops = 2.0 * m * k * n
        fwd = timed(lambda: cols @ w)
        dcols = timed(lambda: dy @ t(w))
        dw = timed(lambda: t(cols) @ dy)
        total += fwd + dcols + dw
        print(f"{name} M {m:>6} K {k:>5} N {n:>4}: fwd {flops / fwd / 1e9:6.1f} GFLOP/s  "
              f"dcols {flops / dcols / 1e9:6.1f}  dW {flops / dw / 1e9:6.1f}  "
              f"({(fwd + dcols + dw) * 1e3:.1f} ms total)")
    print(f"{name}: all three products of the four layers: {total * 1e3:.1f} ms")


torch.set_num_threads(2)
run("torch", lambda s: torch.randn(*s), lambda x: x.t())
rng = np.random.default_rng(0)
run("numpy", lambda s: rng.standard_normal(s, dtype=np.float32), lambda x: x.T)
