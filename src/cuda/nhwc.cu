// The CUDA halves of salient's channels-last convolution (src/nhwc.rs): im2col and its
// adjoint col2im, f32, one thread per output element. Compiled to PTX by build.rs when the
// `cuda` feature is on; the matrix products around them are candle's (cuBLAS).
//
// Layouts: x is (B, H, W, C) contiguous; cols is (B, OH, OW, K*K*C) contiguous, each row
// ordered (ky, kx, c). Zero padding P, stride S, square kernel K.

extern "C" __global__ void im2col_nhwc(const float* x, float* cols, unsigned int n,
                                       unsigned int H, unsigned int W, unsigned int C,
                                       unsigned int OH, unsigned int OW, unsigned int K,
                                       unsigned int S, unsigned int P) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int c = i % C;
    unsigned int rest = i / C;
    unsigned int tap = rest % (K * K);
    unsigned int m = rest / (K * K);
    unsigned int ox = m % OW;
    unsigned int t = m / OW;
    unsigned int oy = t % OH;
    unsigned int b = t / OH;
    int iy = (int)(oy * S + tap / K) - (int)P;
    int ix = (int)(ox * S + tap % K) - (int)P;
    float v = 0.0f;
    if (iy >= 0 && iy < (int)H && ix >= 0 && ix < (int)W) {
        v = x[(((size_t)b * H + (size_t)iy) * W + (size_t)ix) * C + c];
    }
    cols[i] = v;
}

// Gather form: each input element sums the column entries that copied it, so no two threads
// write the same address and no atomics are needed.
extern "C" __global__ void col2im_nhwc(const float* cols, float* x, unsigned int n,
                                       unsigned int H, unsigned int W, unsigned int C,
                                       unsigned int OH, unsigned int OW, unsigned int K,
                                       unsigned int S, unsigned int P) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int c = i % C;
    unsigned int rest = i / C;
    unsigned int ix = rest % W;
    rest /= W;
    unsigned int iy = rest % H;
    unsigned int b = rest / H;
    size_t row = (size_t)K * K * C;
    float acc = 0.0f;
    for (unsigned int ky = 0; ky < K; ++ky) {
        int ty = (int)(iy + P) - (int)ky;
        if (ty < 0 || ty % (int)S != 0) continue;
        unsigned int oy = (unsigned int)ty / S;
        if (oy >= OH) continue;
        for (unsigned int kx = 0; kx < K; ++kx) {
            int tx = (int)(ix + P) - (int)kx;
            if (tx < 0 || tx % (int)S != 0) continue;
            unsigned int ox = (unsigned int)tx / S;
            if (ox >= OW) continue;
            acc += cols[(((size_t)b * OH + oy) * OW + ox) * row + (size_t)(ky * K + kx) * C + c];
        }
    }
    x[i] = acc;
}
