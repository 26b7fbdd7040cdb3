"""numpy re-creation of salient's dataset recipes (same distribution, not byte-identical)."""
import gzip, os, numpy as np
from PIL import Image
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'data', 'bundled') + os.sep

def idx(path):
    b = gzip.open(path).read()
    nd = b[3]; dims = [int.from_bytes(b[4+4*i:8+4*i], 'big') for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4+4*nd).reshape(dims)

def mnist():
    return idx(ROOT+'mnist-images-idx3-ubyte.gz').astype(np.float32), idx(ROOT+'mnist-labels-idx1-ubyte.gz').astype(np.int64)

def fashion():
    import os
    d = os.path.expanduser('~/.cache/salient/data/fashion-mnist/')
    return idx(d+'t10k-images-idx3-ubyte.gz').astype(np.float32), idx(d+'t10k-labels-idx1-ubyte.gz').astype(np.int64)

def bg(name):
    return np.asarray(Image.open(ROOT+name).convert('L'), np.float32)

def build(name, seed=0):
    rng = np.random.default_rng(seed)
    if name.startswith('fashion'):
        O, y = fashion(); B = [bg('gravel.png'), bg('brick.png'), bg('grass.png')]
    else:
        O, y = mnist(); B = [bg('grass.png')]
    if name == 'mnist-grass-01': keep = y <= 1
    elif name == 'mnist-grass-012': keep = y <= 2
    else: keep = np.ones_like(y, bool)
    O, y = O[keep], y[keep]
    order = rng.permutation(len(y)); O, y = O[order], y[order]
    side = 36 if name.endswith('shifted') else 28
    n = len(y)
    def crop(ref):
        b = B[rng.integers(len(B))]; h = b.shape[0] // 2
        lo, hi = (h, b.shape[0]) if ref else (0, h)
        yy = rng.integers(lo, hi - side + 1); xx = rng.integers(0, b.shape[1] - side + 1)
        return b[yy:yy+side, xx:xx+side]
    X = np.zeros((n, side, side), np.float32)
    for i in range(n):
        c = crop(False).copy()
        dy, dx = rng.integers(0, side-28+1, 2)
        c[dy:dy+28, dx:dx+28] += 0.25 * O[i]
        X[i] = np.minimum(255, np.round(c))
    R = np.stack([crop(True) for _ in range(n)])
    return X / 255, y, R / 255
