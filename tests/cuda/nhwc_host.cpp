// Checks the index arithmetic of salient's CUDA kernels (src/cuda/nhwc.cu) without a GPU: the
// kernels compile as plain C++ with the thread indices emulated, one call per thread. im2col
// must equal a naive loop exactly, and col2im must be its adjoint (<im2col x, y> = <x, col2im y>)
// for strides 1 and 2, paddings 0 and 1, kernels 1 and 3, odd and even, non-square sizes.
// Run by tests/run.sh:  c++ -O1 -x c++ tests/cuda/nhwc_host.cpp -o nhwc_host && ./nhwc_host
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cmath>
#include <cstddef>
struct D { unsigned x; };
static D blockIdx, threadIdx, blockDim;
#define __global__
#include "../../src/cuda/nhwc.cu"
int main() {
  int fails = 0;
  unsigned geos[][4] = {{3,1,1,7},{3,2,1,7},{3,2,1,8},{1,2,0,7},{1,1,0,5},{3,1,1,28}};
  for (auto& g : geos) {
    unsigned K=g[0],S=g[1],P=g[2],H=g[3],W=g[3]+1,C=3,B=2;
    unsigned OH=(H+2*P-K)/S+1, OW=(W+2*P-K)/S+1;
    size_t nx=(size_t)B*H*W*C, nc=(size_t)B*OH*OW*K*K*C;
    std::vector<float> x(nx), cols(nc), y(nc), xb(nx);
    srand(1); for (auto& v : x) v = rand()/(float)RAND_MAX-0.5f; for (auto& v : y) v = rand()/(float)RAND_MAX-0.5f;
    blockDim.x = 256;
    for (unsigned i = 0; i < nc; ++i) { blockIdx.x = i/256; threadIdx.x = i%256; im2col_nhwc(x.data(), cols.data(), nc, H,W,C,OH,OW,K,S,P); }
    for (unsigned i = 0; i < nx; ++i) { blockIdx.x = i/256; threadIdx.x = i%256; col2im_nhwc(y.data(), xb.data(), nx, H,W,C,OH,OW,K,S,P); }
    // naive im2col
    double err = 0; 
    for (unsigned b=0;b<B;b++) for (unsigned oy=0;oy<OH;oy++) for (unsigned ox=0;ox<OW;ox++) for (unsigned ky=0;ky<K;ky++) for (unsigned kx=0;kx<K;kx++) for (unsigned c=0;c<C;c++) {
      int iy=oy*S+ky-(int)P, ix=ox*S+kx-(int)P; float v = (iy>=0&&iy<(int)H&&ix>=0&&ix<(int)W)? x[((b*H+iy)*W+ix)*C+c]:0;
      err = fmax(err, fabs(v - cols[(((b*OH+oy)*OW+ox)*K*K + ky*K+kx)*C + c])); }
    double a=0, bb=0; for (size_t i=0;i<nc;i++) a += (double)cols[i]*y[i]; for (size_t i=0;i<nx;i++) bb += (double)x[i]*xb[i];
    printf("K%u S%u P%u %ux%u: im2col err %g, adjoint <im2col x,y>=%.6f <x,col2im y>=%.6f\n",K,S,P,H,W,err,a,bb);
    if (err > 0 || fabs(a-bb) > 1e-4*fabs(a)) fails++;
  }
  return fails;
}
