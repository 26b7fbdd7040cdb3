# Shared by the PyTorch prototypes: IDFD's random resized crop on a batch of images (scale
# 0.5-1, aspect ratio 3/4-4/3, no flip) and the feature-decorrelation loss (tau2 = 2).
import numpy as np, torch, torch.nn.functional as F

def crop(x):
    b=x.shape[0]; s=torch.empty(b).uniform_(0.5,1).sqrt(); r=torch.exp(torch.empty(b).uniform_(np.log(3/4),np.log(4/3)))
    sx=(s*r.sqrt()).clamp(max=1); sy=(s/r.sqrt()).clamp(max=1)
    tx=(torch.rand(b)*2-1)*(1-sx); ty=(torch.rand(b)*2-1)*(1-sy)
    th=torch.zeros(b,2,3); th[:,0,0]=sx; th[:,1,1]=sy; th[:,0,2]=tx; th[:,1,2]=ty
    return F.grid_sample(x,F.affine_grid(th,x.shape,align_corners=False),align_corners=False)

def fd(f):
    fn=F.normalize(f,dim=0); c=fn.T@fn/2.0; return F.cross_entropy(c,torch.arange(c.shape[0]))
