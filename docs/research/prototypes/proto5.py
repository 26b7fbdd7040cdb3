import os, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
HERE=os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE); import views
exec(open(os.path.join(HERE,'proj.py')).read().split("mb=B.mean(0)")[0])
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score as nmi
torch.set_num_threads(2)
whiten=sys.argv[1]  # none|zca
rel=float(sys.argv[2]); epochs=int(sys.argv[3]); tau=float(sys.argv[4]); tv=float(sys.argv[5]); seed=0; noise=float(sys.argv[6]); blur=float(sys.argv[7]); arch=sys.argv[8]; rn=float(sys.argv[9]); idw=float(sys.argv[10]); vic=float(sys.argv[11])
torch.manual_seed(seed); np.random.seed(seed)
mb=B.mean(0)
if whiten=='zca':
    Cb=np.cov(B.T); ev,V=np.linalg.eigh(Cb); eps=rel*ev.mean()
    W=(V*(1/np.sqrt(ev.clip(0)+eps)))@V.T
    Z=(X-mb)@W
else:
    Z=(X-X.mean(0))/X.std()
Zs=Z.std()
Xt=torch.tensor(Z/Zs,dtype=torch.float32).view(-1,1,28,28)
ZB=((B-mb)@W) if whiten=='zca' else (B-X.mean(0))/X.std()
Xb=torch.tensor(ZB/Zs,dtype=torch.float32).view(-1,1,28,28)
N=len(Xt)
def cbr(i,o,s): return nn.Sequential(nn.Conv2d(i,o,3,s,1,bias=False),nn.BatchNorm2d(o),nn.ReLU())
w=16
if arch=='gap': net=nn.Sequential(cbr(1,w,1),cbr(w,2*w,2),cbr(2*w,4*w,2),cbr(4*w,8*w,2),nn.AdaptiveAvgPool2d(1),nn.Flatten(),nn.Linear(8*w,128),nn.BatchNorm1d(128))
elif arch=='flat': net=nn.Sequential(cbr(1,w,1),cbr(w,2*w,2),cbr(2*w,4*w,2),cbr(4*w,8*w,2),nn.Flatten(),nn.Linear(8*w*16,128),nn.BatchNorm1d(128))
else: net=nn.Sequential(nn.Flatten(),nn.Linear(784,1024),nn.BatchNorm1d(1024),nn.ReLU(),nn.Linear(1024,128),nn.BatchNorm1d(128))
A0,M0=evaluate() if False else (0,0)
opt=torch.optim.SGD(net.parameters(),lr=0.03,momentum=0.9,weight_decay=5e-4)
a=1/np.sqrt(128/3); bank=F.normalize(torch.empty(N,128).uniform_(-a,a),dim=1)
def crop(x):
    o=views.crop(x)
    if blur>0:
        k=torch.exp(-torch.arange(-3,4,dtype=torch.float32)**2/(2*blur**2)); k=k/k.sum()
        o=F.conv2d(o,k.view(1,1,1,7),padding=(0,3)); o=F.conv2d(o,k.view(1,1,7,1),padding=(3,0))
    if noise>0: o=o+noise*torch.randn_like(o)
    return o
fd=views.fd
def evaluate():
    net.eval()
    with torch.no_grad(): E=torch.cat([F.normalize(net(Xt[i:i+1000]),dim=1) for i in range(0,N,1000)]).numpy()
    net.train()
    c=KMeans(10,n_init=5,random_state=0).fit_predict(E); return acc(y,c), nmi(y,c)
A,M=evaluate(); print('init acc',A,flush=True)
t0=time.time()
for ep in range(epochs):
    perm=torch.randperm(N)
    for i in range(0,N-127,128):
        idx=perm[i:i+128]; x=Xt[idx]
        xb=Xb[torch.randint(0,len(Xb),(128,))]
        u=net(torch.cat([crop(x),crop(xb)])); ut,ub=u[:128],u[128:]
        f1=F.normalize(ut,dim=1)
        loss=idw*F.cross_entropy(f1@bank.T/tau, idx)+fd(f1)
        if rn>0: loss=loss+rn*(ub.pow(2).sum(1).mean()/ut.pow(2).sum(1).mean())
        if vic>0:
            ut2=net(crop(x))
            inv=(ut-ut2).pow(2).sum(1).mean()
            var=F.relu(1-ut.std(0)).mean()+F.relu(1-ut2.std(0)).mean()
            c=torch.cov(ut.T); off=(c-torch.diag(torch.diag(c))).pow(2).sum()/ut.shape[1]
            nb=(ub-ut.mean(0).detach()).pow(2).sum(1).mean()
            loss=loss+vic*(inv/ut.shape[1]*25+25*var+off+ rn*nb/ut.shape[1]*25)
        if tv>0:
            f2=F.normalize(net(crop(x)),dim=1)
            lg=f1@f2.T/0.2; loss=loss+tv*0.5*(F.cross_entropy(lg,torch.arange(128))+F.cross_entropy(lg.T,torch.arange(128)))
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad(): bank[idx]=F.normalize(0.5*bank[idx]+0.5*f1.detach(),dim=1)
    A,M=evaluate(); print(f'rn={rn} {arch} noise={noise} blur={blur} {whiten} rel={rel} tau={tau} tv={tv} ep {ep+1} acc {A:.4f} nmi {M:.4f} loss {loss.item():.3f} t {time.time()-t0:.0f}s',flush=True)
