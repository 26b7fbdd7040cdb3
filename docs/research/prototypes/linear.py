# Closed-form linear baselines on mnist-grass: reference whitening, a Wiener estimate of the digit
# (signal covariance = target minus reference covariance), and the top generalised eigenvectors of
# (target, reference) covariances; k-means on each. Data: oracle_data.py's .npz (argument 1,
# default out/ds/mnist-grass.npz).
import sys
import numpy as np, scipy.linalg as sl
from sklearn.cluster import KMeans
from scipy.optimize import linear_sum_assignment
d=np.load(sys.argv[1] if len(sys.argv)>1 else 'out/ds/mnist-grass.npz'); X=d['X']/255.; y=d['y']; B=d['B']/255.; D=d['D']/255.
def acc(c):
    M=np.zeros((10,10)); np.add.at(M,(c,y),1); r,cc=linear_sum_assignment(-M); return M[r,cc].sum()/len(y)
def km(Z): return acc(KMeans(10,n_init=5,random_state=0).fit_predict(Z))
l2=lambda Z: Z/np.linalg.norm(Z,axis=1,keepdims=True)
mb=B.mean(0); St=np.cov(X.T); Sb=np.cov(B.T); ev,V=np.linalg.eigh(Sb); eps=ev.mean()
Xc=X-mb
W=V@np.diag(1/np.sqrt(ev+eps))@V.T; print('whiten l2',km(l2(Xc@W)),flush=True)
Sd=St-Sb; e2,U=np.linalg.eigh(Sd); Sd_p=U@np.diag(e2.clip(0))@U.T
Wi=Sd_p@np.linalg.inv(Sd_p+Sb); Dh=(X-X.mean(0))@Wi.T
T=0.25*(D-D.mean(0)); print('wiener corr with truth',np.corrcoef(Dh.ravel(),T.ravel())[0,1])
print('wiener',km(Dh),'wiener l2',km(l2(Dh)),flush=True)
# generalized eigenvectors: maximise target/reference variance ratio
gw,G=sl.eigh(St,Sb+eps*np.eye(784)); G=G[:,::-1]; gw=gw[::-1]
for k in [10,20,50]:
    Z=Xc@G[:,:k]; print('gev top',k,km(Z),'l2',km(l2(Z)),'scaled', km(l2(Z*np.sqrt(gw[:k]))),flush=True)
