# Linear salient encoder on reference-whitened pixels, initialised at the whitened-PCA solution;
# does cIDFD-style training move ACC up or down from that start?
import os, sys, time, numpy as np, torch, torch.nn.functional as F
HERE=os.path.dirname(os.path.abspath(__file__))
exec(open(os.path.join(HERE,'proj.py')).read().split("mb=B.mean(0)")[0])
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi
torch.set_num_threads(int(sys.argv[8]) if len(sys.argv)>8 else 1)
mode=sys.argv[1]; epochs=int(sys.argv[2]); tau=float(sys.argv[3]); rn=float(sys.argv[4]); lr=float(sys.argv[5]); noise=float(sys.argv[6]); d=int(sys.argv[7])
torch.manual_seed(0); np.random.seed(0)
mb=B.mean(0); Cb=np.cov(B.T); ev,V=np.linalg.eigh(Cb); eps=ev.mean()
W=(V*(1/np.sqrt(ev.clip(0)+eps)))@V.T
Z=(X-mb)@W; ZB=(B-mb)@W
s=Z.std(); Z/=s; ZB/=s
# init: top-d principal directions of the whitened target
Ct=np.cov(Z.T); et,Vt=np.linalg.eigh(Ct); P=Vt[:,::-1][:,:d].copy()
Zt=torch.tensor(Z,dtype=torch.float32); Zb=torch.tensor(ZB,dtype=torch.float32)
Wt=torch.nn.Parameter(torch.tensor(P,dtype=torch.float32))
N=len(Zt)
def evaluate():
    with torch.no_grad(): E=F.normalize(Zt@Wt,dim=1).numpy()
    c=KMeans(10,n_init=5,random_state=0).fit_predict(E); return acc(y,c), nmi(y,c)
print('init', evaluate(), flush=True)
opt=torch.optim.SGD([Wt],lr=lr,momentum=0.9)
bank=F.normalize(Zt@Wt,dim=1).detach().clone()
bankb=F.normalize(Zb@Wt,dim=1).detach().clone()
def aug(x): return x+noise*torch.randn_like(x)
t0=time.time()
for ep in range(epochs):
    perm=torch.randperm(N)
    for i in range(0,N-255,256):
        idx=perm[i:i+256]; bidx=torch.randint(0,len(Zb),(256,))
        f=F.normalize(aug(Zt[idx])@Wt,dim=1); g=F.normalize(aug(Zb[bidx])@Wt,dim=1)
        fn=F.normalize(Zt[idx]@Wt,dim=0); fdl=F.cross_entropy(fn.T@fn/2.0,torch.arange(d))
        if mode=='id':   # plain ID + FD on target
            loss=F.cross_entropy(f@bank.T/tau,idx)+fdl
        elif mode=='cid': # target ID minus reference ID (reference instances should be indistinguishable)
            loss=F.cross_entropy(f@bank.T/tau,idx)+fdl-rn*F.cross_entropy(g@bankb.T/tau,bidx)
        elif mode=='null': # target ID + FD + reference-null energy ratio on raw projections
            u=aug(Zt[idx])@Wt; v=aug(Zb[bidx])@Wt
            loss=F.cross_entropy(f@bank.T/tau,idx)+fdl+rn*(v.pow(2).sum(1).mean()/u.pow(2).sum(1).mean())
        elif mode=='gev': # generalised eigen objective: maximise target energy / reference energy, decorrelated
            u=Zt[idx]@Wt; v=Zb[bidx]@Wt
            loss=-(u.pow(2).sum(1).mean()/v.pow(2).sum(1).mean())+fdl
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            bank[idx]=F.normalize(0.5*bank[idx]+0.5*f.detach(),dim=1)
            bankb[bidx]=F.normalize(0.5*bankb[bidx]+0.5*g.detach(),dim=1)
    A,M=evaluate(); print(f'{mode} tau={tau} rn={rn} lr={lr} noise={noise} d={d} ep {ep+1} acc {A:.4f} nmi {M:.4f} loss {loss.item():.3f} t {time.time()-t0:.0f}s',flush=True)
