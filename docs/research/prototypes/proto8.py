# IDFD (bank ID + FD) on raw target images, then reference whitening of the learned features
# (feature-space contrast) before k-means: do learned invariances + whitening beat pixel whitening?
import os, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
HERE=os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
exec(open(os.path.join(HERE,'proj.py')).read().split("mb=B.mean(0)")[0])
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi
torch.set_num_threads(2); torch.manual_seed(0); np.random.seed(0)
epochs=int(sys.argv[1]); w=int(sys.argv[2]); use_ref=sys.argv[3]=='1'
mu=X.mean(); sd=X.std()
Xt=torch.tensor((X-mu)/sd,dtype=torch.float32).view(-1,1,28,28)
Xb=torch.tensor((B-mu)/sd,dtype=torch.float32).view(-1,1,28,28)
N=len(Xt)
def cbr(i,o,s): return nn.Sequential(nn.Conv2d(i,o,3,s,1,bias=False),nn.BatchNorm2d(o),nn.ReLU())
trunk=nn.Sequential(cbr(1,w,1),cbr(w,2*w,2),cbr(2*w,4*w,2),cbr(4*w,8*w,2),nn.AdaptiveAvgPool2d(1),nn.Flatten())
head=nn.Linear(8*w,128)
params=list(trunk.parameters())+list(head.parameters())
opt=torch.optim.SGD(params,lr=0.03,momentum=0.9,weight_decay=5e-4)
a=1/np.sqrt(128/3); bank=F.normalize(torch.empty(N,128).uniform_(-a,a),dim=1)
from views import crop, fd
def embed(A):
    trunk.eval(); head.eval()
    with torch.no_grad(): T=torch.cat([trunk(A[i:i+1000]) for i in range(0,len(A),1000)]); H=head(T)
    trunk.train(); head.train(); return T.double().numpy(), H.double().numpy()
def km(Z):
    Z=Z/np.linalg.norm(Z,axis=1,keepdims=True); c=KMeans(10,n_init=5,random_state=0).fit_predict(Z); return round(acc(y,c),4)
def whiten(FX,FB,rel=1.0):
    mb=FB.mean(0); ev,V=np.linalg.eigh(np.cov(FB.T)); Wm=(V*(1/np.sqrt(ev.clip(0)+rel*ev.mean())))@V.T; return (FX-mb)@Wm
def report(tag):
    TX,HX=embed(Xt); TB,HB=embed(Xb)
    print(f'{tag}: head {km(HX)} trunk {km(TX)} | whitened head {km(whiten(HX,HB))} trunk {km(whiten(TX,TB))} trunk(0.1) {km(whiten(TX,TB,0.1))}',flush=True)
report('init')
t0=time.time()
for ep in range(epochs):
    perm=torch.randperm(N)
    for i in range(0,N-127,128):
        idx=perm[i:i+128]; x=Xt[idx]
        inp=crop(x)
        if use_ref: inp=torch.cat([inp,crop(Xb[torch.randint(0,len(Xb),(128,))])])
        f=F.normalize(head(trunk(inp))[:128],dim=1)
        loss=F.cross_entropy(f@bank.T/1.0,idx)+fd(f)
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad(): bank[idx]=F.normalize(0.5*bank[idx]+0.5*f.detach(),dim=1)
    report(f'ep {ep+1} loss {loss.item():.3f} t {time.time()-t0:.0f}s')
