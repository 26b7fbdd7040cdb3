# Stage 1: Noisier2Noise background removal learned from target + reference: f(x + b - mu) ~ x,
# clean estimate 2 f(z) - z averaged over K fixed reference crops. Stage 2: IDFD (bank ID + FD)
# on the cleaned images (or raw, or the oracle digits: --stage2 clean,raw,truth); k-means ACC per
# epoch. Data: oracle_data.py's .npz. Runs on CUDA when present.
# usage: python3 docs/research/prototypes/proto10.py [--data out/ds/mnist-grass.npz] [--n2n-epochs 30 --shift 2 ...]
import argparse, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score as ari, normalized_mutual_info_score as nmi
p=argparse.ArgumentParser()
p.add_argument('--data',default='out/ds/mnist-grass.npz'); p.add_argument('--n2n-epochs',type=int,default=40)
p.add_argument('--n2n-width',type=int,default=32); p.add_argument('--k',type=int,default=8)
p.add_argument('--stage2',default='clean,raw'); p.add_argument('--epochs',type=int,default=60)
p.add_argument('--arch',default='small'); p.add_argument('--tau',type=float,default=1.0)
p.add_argument('--lr',type=float,default=0.03); p.add_argument('--crop',type=float,default=0.5)
p.add_argument('--eval-every',type=int,default=10); p.add_argument('--limit',type=int,default=0)
p.add_argument('--seed',type=int,default=0); p.add_argument('--bs',type=int,default=128)
p.add_argument('--n2n-only',action='store_true'); p.add_argument('--loss',default='idfd'); p.add_argument('--tau2v',type=float,default=0.5); p.add_argument('--shift',type=int,default=0)
p.add_argument('--holdout',action='store_true'); p.add_argument('--wd',type=float,default=0.0)
a=p.parse_args(); print(a,flush=True)
DEV='cuda' if torch.cuda.is_available() else 'cpu'; torch.manual_seed(a.seed); np.random.seed(a.seed)
if DEV=='cuda': torch.backends.cudnn.benchmark=True
d=np.load(a.data); X,y,B,Dg=d['X'],d['y'],d['B'],d['D']
if a.limit: X,y,B,Dg=X[:a.limit],y[:a.limit],B[:a.limit],Dg[:a.limit]
side=int(round(np.sqrt(X.shape[1]))); N=len(X)
Xt=torch.tensor(X,dtype=torch.float32,device=DEV).view(N,1,side,side)/255
Bt=torch.tensor(B,dtype=torch.float32,device=DEV).view(len(B),1,side,side)/255
mu=Bt.mean(0,keepdim=True)
Dt=0.25*torch.tensor(Dg,dtype=torch.float32,device=DEV).view(N,1,side,side)/255
def oracle(C,idx=None):
    # correlation and MSE of the centred estimate with the centred true 0.25 * digit (diagnostic only)
    if idx is not None: C,T=C[idx],Dt[idx]
    else: T=Dt
    c=C-C.mean(0,keepdim=True); t=T-T.mean(0,keepdim=True)
    return float((c*t).sum()/(c.norm()*t.norm())), float(((c-t)**2).mean())
def acc(y,c):
    k=max(y.max(),c.max())+1; M=np.zeros((k,k)); np.add.at(M,(c,y),1)
    r,cc=linear_sum_assignment(-M); return M[r,cc].sum()/len(y)
def km(Z,seed=0):
    c=KMeans(10,n_init=5,random_state=seed).fit_predict(Z); return acc(y,c),nmi(y,c),ari(y,c)
class UNet(nn.Module):
    def __init__(s,w):
        super().__init__()
        c=lambda i,o: nn.Sequential(nn.Conv2d(i,o,3,padding=1),nn.BatchNorm2d(o),nn.ReLU())
        s.e1=nn.Sequential(c(1,w),c(w,w)); s.e2=nn.Sequential(c(w,2*w),c(2*w,2*w)); s.e3=nn.Sequential(c(2*w,4*w),c(4*w,4*w))
        s.d2=nn.Sequential(c(6*w,2*w),c(2*w,2*w)); s.d1=nn.Sequential(c(3*w,w),c(w,w)); s.out=nn.Conv2d(w,1,1)
    def forward(s,z):
        a_=s.e1(z); b=s.e2(F.max_pool2d(a_,2)); c_=s.e3(F.max_pool2d(b,2))
        u=s.d2(torch.cat([F.interpolate(c_,size=b.shape[-2:]),b],1)); u=s.d1(torch.cat([F.interpolate(u,size=a_.shape[-2:]),a_],1))
        return z+s.out(u)
t0=time.time()
def report(tag,Z):
    A,Nm,Ar=km(Z); print(f'{tag}: ACC {A:.3f} NMI {Nm:.3f} ARI {Ar:.3f}  [{time.time()-t0:.0f}s]',flush=True)
# ---- stage 1
net=UNet(a.n2n_width).to(DEV); opt=torch.optim.AdamW(net.parameters(),1e-3,weight_decay=a.wd)
train_idx=torch.arange(N//2 if a.holdout else N,device=DEV); held=torch.arange(N//2,N,device=DEV) if a.holdout else None
sched=torch.optim.lr_scheduler.CosineAnnealingLR(opt,a.n2n_epochs)
g=torch.Generator(device=DEV); g.manual_seed(1234)
fixed_b=Bt[torch.randint(len(Bt),(a.k,),device=DEV,generator=g)]-mu   # baked-in reference crops
def clean(x):
    net.eval(); out=0
    with torch.no_grad():
        for r in range(a.k):
            z=x+fixed_b[r:r+1]; out=out+(2*net(z)-z)
    net.train(); return out/a.k
def clean_all(): return torch.cat([clean(Xt[i:i+1000]) for i in range(0,N,1000)])
for ep in range(a.n2n_epochs):
    perm=train_idx[torch.randperm(len(train_idx),device=DEV)]; tot=0; n=0
    for i in range(0,len(perm)-256+1,256):
        x=Xt[perm[i:i+256]]; b=Bt[torch.randint(len(Bt),(256,),device=DEV)]
        if a.shift:
            s_=a.shift; xp=F.pad(x,(s_,s_,s_,s_),mode='reflect'); dx,dy=np.random.randint(0,2*s_+1,2)
            x=xp[:,:,dy:dy+side,dx:dx+side]
            if np.random.rand()<0.5: x=x.transpose(2,3); b=b.transpose(2,3)
        z=x+b-mu; loss=F.mse_loss(net(z),x)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); tot+=loss.item(); n+=1
    sched.step()
    if ep%5==4 or ep==a.n2n_epochs-1:
        Ca=clean_all(); o=oracle(Ca); oh=oracle(Ca,held) if a.holdout else ''
        print(f'n2n epoch {ep} loss {tot/n:.5f} oracle corr/mse {o} held-out {oh}',flush=True)
        if ep%10==9 or ep==a.n2n_epochs-1: report(f'  kmeans(cleaned) n2n epoch {ep}',Ca.view(N,-1).cpu().numpy())
C=clean_all() if a.n2n_epochs else Xt

if a.n2n_only: raise SystemExit
# ---- stage 2: IDFD
def conv_bn(i,o,s=1): return nn.Sequential(nn.Conv2d(i,o,3,s,1,bias=False),nn.BatchNorm2d(o),nn.ReLU())
class Small(nn.Module):
    def __init__(s,d=128):
        super().__init__(); s.f=nn.Sequential(conv_bn(1,32),conv_bn(32,64,2),conv_bn(64,128,2),conv_bn(128,256,2)); s.fc=nn.Linear(256,d)
    def forward(s,x): return F.normalize(s.fc(s.f(x).mean((2,3))),dim=1)
class Block(nn.Module):
    def __init__(s,i,o,st):
        super().__init__(); s.c1=nn.Conv2d(i,o,3,st,1,bias=False); s.b1=nn.BatchNorm2d(o); s.c2=nn.Conv2d(o,o,3,1,1,bias=False); s.b2=nn.BatchNorm2d(o)
        s.sh=nn.Sequential() if st==1 and i==o else nn.Sequential(nn.Conv2d(i,o,1,st,bias=False),nn.BatchNorm2d(o))
    def forward(s,x): return F.relu(s.b2(s.c2(F.relu(s.b1(s.c1(x)))))+s.sh(x))
class R18(nn.Module):
    def __init__(s,d=128):
        super().__init__(); L=[conv_bn(1,64)]; i=64
        for o,st in [(64,1),(64,1),(128,2),(128,1),(256,2),(256,1),(512,2),(512,1)]: L.append(Block(i,o,st)); i=o
        s.f=nn.Sequential(*L); s.fc=nn.Linear(512,d)
    def forward(s,x): return F.normalize(s.fc(s.f(x).mean((2,3))),dim=1)
def augment(x):
    n=len(x); sc=torch.empty(n,device=DEV).uniform_(a.crop,1.0); lr=torch.empty(n,device=DEV).uniform_(np.log(3/4),np.log(4/3)).exp()
    w=(sc*lr).sqrt().clamp(max=1); h=(sc/lr).sqrt().clamp(max=1)
    cx=(torch.rand(n,device=DEV)*2-1)*(1-w); cy=(torch.rand(n,device=DEV)*2-1)*(1-h)
    th=torch.zeros(n,2,3,device=DEV); th[:,0,0]=w; th[:,0,2]=cx; th[:,1,1]=h; th[:,1,2]=cy
    x=F.grid_sample(x,F.affine_grid(th,x.shape,align_corners=False),align_corners=False,padding_mode='border')
    br=torch.empty(n,1,1,1,device=DEV).uniform_(0.6,1.4); ct=torch.empty(n,1,1,1,device=DEV).uniform_(0.6,1.4)
    m=x.mean((1,2,3),keepdim=True); return ((x-m)*ct+m)*br
for inp in a.stage2.split(','):
    src={'clean':C,'raw':Xt,'truth':Dt}[inp]; m_,s_=src.mean(),src.std()
    torch.manual_seed(a.seed)
    enc=(Small() if a.arch=='small' else R18()).to(DEV)
    opt=torch.optim.SGD(enc.parameters(),a.lr,momentum=0.9,weight_decay=5e-4)
    sched=torch.optim.lr_scheduler.MultiStepLR(opt,[int(a.epochs*f) for f in (0.3,0.475,0.65,0.825)],0.1)
    bank=F.normalize(torch.empty(N,128,device=DEV).uniform_(-1/np.sqrt(128/3),1/np.sqrt(128/3)),dim=1)
    def embed():
        enc.eval()
        with torch.no_grad(): E=torch.cat([enc((src[i:i+1000]-m_)/s_) for i in range(0,N,1000)])
        enc.train(); return E.cpu().numpy()
    report(f"{inp} init",embed())
    for ep in range(a.epochs):
        perm=torch.randperm(N,device=DEV); tot=0; n=0
        for i in range(0,N-a.bs+1,a.bs):
            idx=perm[i:i+a.bs]; f=enc((augment(src[idx])-m_)/s_)
            if a.loss=='twoview':
                # in-batch two-view contrast (NT-Xent) instead of the memory bank
                f2=enc((augment(src[idx])-m_)/s_); Z=torch.cat([f,f2]); S=Z@Z.T/a.tau2v; S.fill_diagonal_(-1e9)
                n_=len(f); tgt=torch.cat([torch.arange(n_,2*n_),torch.arange(n_)]).to(DEV); li=F.cross_entropy(S,tgt)
            else:
                li=F.cross_entropy(f@bank.T/a.tau,idx)
            Fc=F.normalize(f,dim=0); lf=F.cross_entropy(Fc.T@Fc/2.0,torch.arange(128,device=DEV))
            loss=li+lf; opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            with torch.no_grad(): bank[idx]=F.normalize(0.5*bank[idx]+0.5*f.detach(),dim=1)
            tot+=loss.item(); n+=1
        sched.step()
        if ep%a.eval_every==a.eval_every-1 or ep==a.epochs-1:
            print(f'{inp} epoch {ep} loss {tot/n:.4f}',flush=True); report(f'  {inp} IDFD epoch {ep}',embed())
