"""Quality prototype: a fixed reference-whitening front (full ZCA matrix or a convolution),
a small CNN with global average pooling, contrastive losses (two-view NT-Xent, IDFD's memory
bank, optional neighbour positives, reference-null terms), and k-means on the un-augmented
embeddings after every epoch. Salient-side only unless --cidfd gives the background encoder's
weight lambda. Needs torch, scikit-learn, scipy, pillow; Fashion-MNIST under
~/.cache/salient/data (bash data/scripts/fetch-fashion-mnist.sh).

    python3 docs/research/prototypes/q.py --data mnist-grass-012 --epochs 8 --threads 1 \
        --white conv --shift 2 --nbr 10
"""
import argparse, time, sys, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi_s, adjusted_rand_score as ari_s
sys.path.insert(0, __import__('os').path.dirname(__import__('os').path.abspath(__file__))); import data

p = argparse.ArgumentParser()
p.add_argument('--data', default='mnist-grass-shifted'); p.add_argument('--seed', type=int, default=0)
p.add_argument('--white', default='conv')  # none | zca | conv
p.add_argument('--ksize', type=int, default=9); p.add_argument('--shrink', type=float, default=1.0)
p.add_argument('--epochs', type=int, default=10); p.add_argument('--width', type=int, default=16)
p.add_argument('--lr', type=float, default=0.03); p.add_argument('--bs', type=int, default=128)
p.add_argument('--loss', default='twoview')  # twoview | bank
p.add_argument('--tau', type=float, default=0.5); p.add_argument('--alpha', type=float, default=1.0)
p.add_argument('--null', type=float, default=0.0); p.add_argument('--shift', type=int, default=3)
p.add_argument('--noise', type=float, default=0.0)  # add whitened reference crop * noise to each view
p.add_argument('--n', type=int, default=0); p.add_argument('--threads', type=int, default=2)
p.add_argument('--baselines', action='store_true'); p.add_argument('--pool', default='avg')
p.add_argument('--null_map', type=float, default=0.0)
p.add_argument('--nbr', type=int, default=0)  # positives: a random one of the K nearest neighbours in whitened-pixel space
p.add_argument('--nbr_space', default='white')  # white | raw | tic (whitened windows aligned by shift-invariant k-means, tic_purity.py)
p.add_argument('--cidfd', type=float, default=0.0)  # lambda: background encoder on raw input
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed)
X, y, R = data.build(a.data, seed=a.seed)
if a.n: X, y, R = X[:a.n], y[:a.n], R[:a.n]
k = len(np.unique(y)); n, S, _ = X.shape
print(a, X.shape, k, flush=True)

def acc(y, c):
    M = np.zeros((c.max()+1, y.max()+1))
    np.add.at(M, (c, y), 1); r, cc = linear_sum_assignment(-M); return M[r, cc].sum()/len(y)
def score(Z, seed=0):
    c = KMeans(k, n_init=5, random_state=seed).fit_predict(Z)
    return acc(y, c), nmi_s(y, c), ari_s(y, c)
def l2(Z): return Z / np.linalg.norm(Z, axis=1, keepdims=True).clip(1e-12)

mu = R.mean(0)
if a.white == 'zca' or a.baselines:
    d = S*S; Rf = (R - mu).reshape(n, d); C = Rf.T @ Rf / n
    ev, V = np.linalg.eigh(C); eps = a.shrink * ev.clip(0).mean()
    Wz = (V / np.sqrt(ev.clip(0) + eps)) @ V.T
if a.white == 'conv' or a.baselines:
    # stationary whitening filter from the reference power spectrum (zero-padded FFTs)
    P = 2*S; Fb = np.fft.rfft2(R - R.mean((1, 2), keepdims=True), s=(P, P)); pw = (np.abs(Fb)**2).mean(0) / (S*S)
    h = 1/np.sqrt(pw + a.shrink * pw.mean()); kern = np.fft.irfft2(h, s=(P, P)); kern = np.fft.fftshift(kern)
    c = P//2; r = a.ksize//2; kern = kern[c-r:c+r+1, c-r:c+r+1].astype(np.float32)
    Kt = torch.tensor(kern)[None, None]
def whiten_np(A):
    if a.white == 'zca': return ((A - mu).reshape(len(A), -1) @ Wz).reshape(A.shape)
    if a.white == 'conv':
        with torch.no_grad(): return F.conv2d(torch.tensor(A - mu)[:, None], Kt, padding=a.ksize//2)[:, 0].numpy()
    return (A - mu) / R.std()
if a.baselines:
    print('raw', score(X.reshape(n, -1)), flush=True)
    print('whiten zca', score(l2(((X - mu).reshape(n, -1) @ Wz))), flush=True)
    with torch.no_grad(): Zc = F.conv2d(torch.tensor(X - mu)[:, None], Kt, padding=a.ksize//2)[:, 0].numpy()
    print('whiten conv', score(l2(Zc.reshape(n, -1))), flush=True)
Xw = torch.tensor(whiten_np(X), dtype=torch.float32)[:, None]; Rw = torch.tensor(whiten_np(R), dtype=torch.float32)[:, None]
sc = Rw.std(); Xw /= sc; Rw /= sc
print('whitened std target %.3f ref %.3f' % (Xw.std(), Rw.std()), flush=True)

def enc(w, d=128):
    L = []; cin = 1
    for i, c in enumerate([w, 2*w, 4*w, 8*w]):
        L += [nn.Conv2d(cin, c, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]; cin = c
    L += [nn.AdaptiveAvgPool2d(1) if a.pool == 'avg' else nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, d)]
    return nn.Sequential(*L)
g = enc(a.width); params = list(g.parameters())
if a.cidfd:
    gz = enc(a.width); params += list(gz.parameters())
    Xr = torch.tensor((X - X.mean())/X.std(), dtype=torch.float32)[:, None]; Rr = torch.tensor((R - X.mean())/X.std(), dtype=torch.float32)[:, None]
opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=5e-4)

def shift(x, s):
    if s == 0: return x
    B = x.shape[0]; xp = F.pad(x, (s, s, s, s), mode='replicate')
    dy = torch.randint(0, 2*s+1, (B,)); dx = torch.randint(0, 2*s+1, (B,))
    idx_y = (dy[:, None] + torch.arange(S)[None]); idx_x = (dx[:, None] + torch.arange(S)[None])
    return xp[torch.arange(B)[:, None, None], 0][:, None] if False else torch.stack([xp[i, :, idx_y[i]][:, :, idx_x[i]] for i in range(B)])
def view(x):
    v = shift(x, a.shift)
    if a.noise: v = v + a.noise * shift(Rw[torch.randint(0, n, (len(x),))], a.shift)
    return v
def fd(f, tau2=2.0):
    fn = F.normalize(f, dim=0); Cm = fn.T @ fn / tau2
    return F.cross_entropy(Cm, torch.arange(f.shape[1]))
def ntxent(f1, f2, tau):
    z = F.normalize(torch.cat([f1, f2]), dim=1); s = z @ z.T / tau; B = len(f1)
    s.fill_diagonal_(-1e9); t = torch.cat([torch.arange(B, 2*B), torch.arange(B)])
    return F.cross_entropy(s, t)
bank = F.normalize(torch.rand(n, 128) - 0.5, dim=1)
if a.cidfd:
    bank_zt = F.normalize(torch.rand(n, 128) - 0.5, dim=1); bank_zb = F.normalize(torch.rand(n, 128) - 0.5, dim=1)

if a.nbr:
    if a.nbr_space == 'tic':
        import tic_purity
        d = S*S; Rf = (R - mu).reshape(n, d); ev, V = np.linalg.eigh(Rf.T @ Rf / n)
        Zw = ((X - mu).reshape(n, d) @ ((V / np.sqrt(ev.clip(0) + ev.clip(0).mean())) @ V.T)).reshape(n, S, S).astype(np.float32)
        runs = [tic_purity.tic(Zw, k, 15, seed=r) for r in range(3)]
        kk, oo, obj, _ = max(runs, key=lambda r: r[2])
        print('tic: ACC %.3f, objective %.1f' % (acc(y, kk), obj), flush=True)
        Zs = tic_purity.aligned(Zw, oo)
    elif a.nbr_space == 'white': Zs = l2(Xw.reshape(n, -1).numpy())
    else: Zs = l2(X.reshape(n, -1) - X.reshape(n, -1).mean(0))
    from sklearn.decomposition import PCA
    Zp = l2(PCA(64, random_state=0).fit_transform(Zs))
    sims = Zp @ Zp.T; np.fill_diagonal(sims, -np.inf)
    NB = torch.tensor(np.argsort(-sims, axis=1)[:, :a.nbr]); del sims
    purity = (y[NB.numpy()] == y[:, None]).mean(); print('neighbour purity', round(purity, 4), flush=True)
def embed():
    g.eval(); out = []
    with torch.no_grad():
        for i in range(0, n, 1000): out.append(F.normalize(g(Xw[i:i+1000]), dim=1))
    g.train(); return torch.cat(out).numpy()
print('epoch 0', score(embed()), flush=True)
steps = n // a.bs
for ep in range(1, a.epochs+1):
    t0 = time.time(); perm = torch.randperm(n); permr = torch.randperm(n); tot = {}
    lr = a.lr * (0.1 if ep > 0.8*a.epochs else 1)
    for pg in opt.param_groups: pg['lr'] = lr
    for it in range(steps):
        ix = perm[it*a.bs:(it+1)*a.bs]; xb = Xw[ix]
        losses = {}
        if a.loss == 'twoview':
            if a.nbr:
                jx = NB[ix, torch.randint(0, a.nbr, (len(ix),))]
                f1 = g(view(xb)); f2 = g(view(Xw[jx]))
            else:
                f1 = g(view(xb)); f2 = g(view(xb))
            losses['tv'] = ntxent(f1, f2, a.tau); losses['fd'] = a.alpha * fd(f1)
            s = F.normalize(f1, dim=1)
        else:
            f1 = g(view(xb)); s = F.normalize(f1, dim=1)
            logit = s @ bank.T
            if a.cidfd:
                zx = F.normalize(gz(Xr[ix]), dim=1); logit = logit + a.cidfd * (zx @ bank_zt.T)
                ir = permr[it*a.bs:(it+1)*a.bs]; zb = F.normalize(gz(Rr[ir]), dim=1)
                losses['idb'] = F.cross_entropy(zb @ bank_zb.T / a.tau, ir)
            losses['id'] = F.cross_entropy(logit / a.tau, ix); losses['fd'] = a.alpha * fd(f1)
        if a.null_map:
            ir = permr[it*a.bs:(it+1)*a.bs]; trunk = g[:-3]
            m = trunk(torch.cat([view(xb), view(Rw[ir])])); mt, mb = m[:len(xb)], m[len(xb):]
            losses['nullmap'] = a.null_map * (mb.pow(2).sum(1).mean() / mt.pow(2).sum(1).mean())
        if a.null:
            ir = permr[it*a.bs:(it+1)*a.bs]; fo = g(torch.cat([view(xb), view(Rw[ir])])); ft, fb = fo[:len(xb)], fo[len(xb):]
            losses['null'] = a.null * (fb.pow(2).sum(1).mean() / ft.pow(2).sum(1).mean())
        L = sum(losses.values()); opt.zero_grad(); L.backward(); opt.step()
        if a.loss == 'bank':
            with torch.no_grad():
                bank[ix] = F.normalize(0.5*bank[ix] + 0.5*s.detach(), dim=1)
                if a.cidfd:
                    bank_zt[ix] = F.normalize(0.5*bank_zt[ix] + 0.5*zx.detach(), dim=1); bank_zb[ir] = F.normalize(0.5*bank_zb[ir] + 0.5*zb.detach(), dim=1)
        for kk, v in losses.items(): tot[kk] = tot.get(kk, 0) + v.item()/steps
    print('epoch', ep, 'lr %.4f' % lr, {kk: round(v, 3) for kk, v in tot.items()}, 'score', tuple(round(v, 4) for v in score(embed())), '%.0fs' % (time.time()-t0), flush=True)
