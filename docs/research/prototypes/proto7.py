# Fixed random conv features, then reference whitening in feature space, then k-means.
import os, sys, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
HERE=os.path.dirname(os.path.abspath(__file__))
exec(open(os.path.join(HERE,'proj.py')).read().split("mb=B.mean(0)")[0])
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi
torch.set_num_threads(1); torch.manual_seed(0)
w=int(sys.argv[1]); pool=sys.argv[2]; rel=float(sys.argv[3])
def net():
    layers=[]; c=1
    for o,s in [(w,1),(w,2),(2*w,2)]:
        conv=nn.Conv2d(c,o,3,s,1); nn.init.kaiming_normal_(conv.weight); layers+=[conv,nn.ReLU()]; c=o
    return nn.Sequential(*layers)
m=net().eval()
def feats(A):
    out=[]
    with torch.no_grad():
        for i in range(0,len(A),1000):
            x=torch.tensor(A[i:i+1000],dtype=torch.float32).view(-1,1,28,28)
            x=(x-0.5)/0.25
            h=m(x)
            h=F.adaptive_avg_pool2d(h,int(pool)) if pool!='0' else h
            out.append(h.flatten(1).numpy())
    return np.concatenate(out).astype(np.float64)
FX=feats(X); FB=feats(B); print('dims',FX.shape,flush=True)
def score(Z):
    Z=Z/np.linalg.norm(Z,axis=1,keepdims=True)
    c=KMeans(10,n_init=5,random_state=0).fit_predict(Z); return round(acc(y,c),4), round(nmi(y,c),4)
print('features, no whitening', score(FX-FX.mean(0)),flush=True)
mb=FB.mean(0); Cb=np.cov(FB.T); ev,V=np.linalg.eigh(Cb); eps=rel*ev.mean()
Wm=(V*(1/np.sqrt(ev.clip(0)+eps)))@V.T
Z=(FX-mb)@Wm
print(f'w={w} pool={pool} rel={rel} reference-whitened features', score(Z),flush=True)
# reduce to 128 dims by PCA of the whitened target (what an export would keep)
Ct=np.cov(Z.T); et,Vt=np.linalg.eigh(Ct); print('whitened + PCA128', score(Z@Vt[:,::-1][:,:128]),flush=True)
