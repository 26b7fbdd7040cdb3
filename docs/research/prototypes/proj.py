import numpy as np, pyarrow.parquet as pq, io, os
from PIL import Image
from scipy.optimize import linear_sum_assignment
def load(p):
    t=pq.read_table(p)
    X=np.stack([np.asarray(Image.open(io.BytesIO(b)),dtype=np.float32).reshape(-1) for b in t.column('image').to_pylist()])/255
    y=t.column('label').to_numpy() if 'label' in t.column_names else None
    return X,y
# mnist-grass from `salient datasets build mnist-grass --out out/ds`; MNIST_GRASS overrides the directory.
SRC=os.environ.get('MNIST_GRASS','out/ds/mnist-grass')
X,y=load(os.path.join(SRC,'target.parquet')); B,_=load(os.path.join(SRC,'reference.parquet'))
print(X.shape,B.shape)
def acc(y,c):
    k=max(y.max(),c.max())+1; M=np.zeros((k,k))
    for a,b in zip(c,y): M[a,b]+=1
    r,cc=linear_sum_assignment(-M); return M[r,cc].sum()/len(y)
def kmeans(Z,k=10,iters=50,restarts=3,seed=0):
    rng=np.random.default_rng(seed); best=None
    for _ in range(restarts):
        C=Z[rng.choice(len(Z),1)]
        for _ in range(k-1):
            d=((Z[:,None,:]-C[None])**2).sum(-1).min(1) if Z.shape[1]<64 else (np.square(Z).sum(1)[:,None]-2*Z@C.T+np.square(C).sum(1)[None]).min(1)
            C=np.vstack([C,Z[rng.choice(len(Z),p=np.maximum(d,0)/np.maximum(d,0).sum())]])
        for _ in range(iters):
            D=np.square(Z).sum(1)[:,None]-2*Z@C.T+np.square(C).sum(1)[None]
            a=D.argmin(1)
            C=np.stack([Z[a==j].mean(0) if (a==j).any() else C[j] for j in range(k)])
        inert=D.min(1).sum()
        if best is None or inert<best[0]: best=(inert,a)
    return best[1]
mb=B.mean(0); Cb=np.cov(B.T); Ct=np.cov(X.T)
ev,V=np.linalg.eigh(Cb); V=V[:,::-1]; ev=ev[::-1]
print('ref var explained top 10/50/100', ev[:10].sum()/ev.sum(), ev[:50].sum()/ev.sum(), ev[:100].sum()/ev.sum())
Xc=X-X.mean(0)
print('raw', acc(y,kmeans(Xc)))
for m in [20,50,100,200,400]:
    P=V[:,m:]; Z=Xc@P
    print('remove top',m,'ref PCs:', acc(y,kmeans(Z)))
for eps in [1e-3,1e-2]:
    W=V@np.diag(1/np.sqrt(ev.clip(0)+eps))@V.T
    print('ZCA ref eps',eps, acc(y,kmeans(Xc@W)))
