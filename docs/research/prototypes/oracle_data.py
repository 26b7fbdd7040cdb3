"""Packs mnist-grass into one .npz for proto10.py, with each target's clean digit recovered.

The digit behind each target row is an oracle for diagnostics only (how much of the digit a
background remover keeps; how far IDFD gets with no background at all). Training never reads it.
Target rows are a seeded shuffle of the bundled MNIST digits, so the digit is found again per
class: target = clip(0.25 * digit + grass) with grass >= 0, hence target >= 0.25 * digit up to
rounding for the true digit. A Hungarian matching on the violation of that bound pairs rows and
digits (every pair it chose violates it by 0).

usage: python3 docs/research/prototypes/oracle_data.py [SRC [OUT.npz]]
(defaults: out/ds/mnist-grass, from `salient datasets build mnist-grass --out out/ds`, and
out/ds/mnist-grass.npz)
"""
import gzip, io, os, sys
import numpy as np, pyarrow.parquet as pq, torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

def load(p):
    t = pq.read_table(p)
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)), dtype=np.uint8).reshape(-1)
                  for b in t.column('image').to_pylist()])
    return x, (t.column('label').to_numpy() if 'label' in t.column_names else None)

src = sys.argv[1] if len(sys.argv) > 1 else 'out/ds/mnist-grass'
out = sys.argv[2] if len(sys.argv) > 2 else 'out/ds/mnist-grass.npz'
bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'data', 'bundled')
X, y = load(f'{src}/target.parquet'); B, _ = load(f'{src}/reference.parquet')
D = np.frombuffer(gzip.open(os.path.join(bundled, 'mnist-images-idx3-ubyte.gz')).read()[16:], np.uint8).reshape(-1, 784)
L = np.frombuffer(gzip.open(os.path.join(bundled, 'mnist-labels-idx1-ubyte.gz')).read()[8:], np.uint8)
Xf, Df = X / 255.0, D / 255.0
perm = np.full(len(X), -1)
for c in range(10):
    ti, dj = np.where(y == c)[0], np.where(L == c)[0]
    xc = torch.tensor(Xf[ti], dtype=torch.float32); dc = torch.tensor(0.25 * Df[dj], dtype=torch.float32)
    cost = torch.stack([torch.relu(dc - x[None] - 1.5 / 255).sum(1) for x in xc]).numpy()
    r, cc = linear_sum_assignment(cost)
    perm[ti[r]] = dj[cc]
    print(f'class {c}: worst matched violation {cost[r, cc].max():.4f}')
assert len(set(perm)) == len(X)
np.savez_compressed(out, X=X, y=y.astype(np.int64), B=B, D=D[perm])
print('written', out)
