// layernorm.cu - LayerNorm over the channels (eps 1e-5, GPT-2) on the GPU,
// and the deterministic column sums that its backward and the matmul's
// bias gradient share.
#include "kernels/cuda/cuda.h"

#define LN_EPS 1e-5f
// column reductions: rows per chunk of the first pass
#define COL_ROWS 64

// One warp per row. inp,out (N,C); mean,rstd (N)
__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp, const float* w,
                                         const float* b, int N, int C) {
    int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32);
    int lane = threadIdx.x & 31;
    if (row >= N) return;
    const float* x = inp + (size_t)row * C;
    float* o = out + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += x[c];
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = x[c] - m;
        v += d * d;
    }
    v = warp_sum(v) / C;
    float r = 1.0f / sqrtf(v + LN_EPS);
    for (int c = lane; c < C; c += 32) o[c] = (x[c] - m) * r * w[c] + b[c];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// dinp (N,C) += ; one warp per row
__global__ void layernorm_backward_rows_kernel(float* dinp, const float* dout, const float* inp, const float* w,
                                               const float* mean, const float* rstd, int N, int C) {
    int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32);
    int lane = threadIdx.x & 31;
    if (row >= N) return;
    const float* x = inp + (size_t)row * C;
    const float* d = dout + (size_t)row * C;
    float* dx = dinp + (size_t)row * C;
    float m = mean[row], s = rstd[row];
    float dm = 0.0f, dnm = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float norm = (x[c] - m) * s;
        float dnorm = w[c] * d[c];
        dm += dnorm;
        dnm += dnorm * norm;
    }
    dm = warp_sum(dm) / C;
    dnm = warp_sum(dnm) / C;
    for (int c = lane; c < C; c += 32) {
        float norm = (x[c] - m) * s;
        float dnorm = w[c] * d[c];
        dx[c] += (dnorm - dm - norm * dnm) * s;
    }
}

// First pass of dw, db: block (chunk of COL_ROWS rows, channel tile) writes
// partial[chunk] (2, nchunks, C) sums of norm*dout and dout.
__global__ void layernorm_backward_cols_kernel(float* partial, const float* dout, const float* inp,
                                               const float* mean, const float* rstd, int N, int C, int nchunks) {
    int chunk = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = chunk * COL_ROWS, n1 = min(N, n0 + COL_ROWS);
    float aw = 0.0f, ab = 0.0f;
    for (int n = n0; n < n1; n++) {
        float d = dout[(size_t)n * C + c];
        aw += (inp[(size_t)n * C + c] - mean[n]) * rstd[n] * d;
        ab += d;
    }
    partial[(size_t)chunk * C + c] = aw;
    partial[((size_t)nchunks + chunk) * C + c] = ab;
}

// Second pass: dst[c] += sum over chunks (in order) of partial[chunk][c], for k arrays.
__global__ void colsum_finish_kernel(float* dst0, float* dst1, const float* partial, int nchunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float a = 0.0f;
    for (int k = 0; k < nchunks; k++) a += partial[(size_t)k * C + c];
    dst0[c] += a;
    if (dst1) {
        float b = 0.0f;
        for (int k = 0; k < nchunks; k++) b += partial[((size_t)nchunks + k) * C + c];
        dst1[c] += b;
    }
}

__global__ void colsum_partial_kernel(float* partial, const float* src, int N, int C) {
    int chunk = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = chunk * COL_ROWS, n1 = min(N, n0 + COL_ROWS);
    float a = 0.0f;
    for (int n = n0; n < n1; n++) a += src[(size_t)n * C + c];
    partial[(size_t)chunk * C + c] = a;
}

void colsum_add_cuda(float* dst, const float* src, int N, int C) {
    if (N <= 0 || C <= 0) return;
    int nchunks = (int)cdiv((size_t)N, COL_ROWS);
    float* partial = (float*)cuda_scratch(SCRATCH_REDUCE, (size_t)nchunks * C * sizeof(float));
    dim3 grid((unsigned)nchunks, cdiv((size_t)C, 256));
    colsum_partial_kernel<<<grid, 256>>>(partial, src, N, C);
    cudaCheckLaunch();
    colsum_finish_kernel<<<cdiv((size_t)C, 256), 256>>>(dst, NULL, partial, nchunks, C);
    cudaCheckLaunch();
}

void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b,
                            int N, int C) {
    if (N <= 0) return;
    layernorm_forward_kernel<<<cdiv((size_t)N * 32, 256), 256>>>(out, mean, rstd, inp, w, b, N, C);
    cudaCheckLaunch();
}

void layernorm_backward_cuda(float* dinp, float* dw, float* db, const float* dout, const float* inp, const float* w,
                             const float* mean, const float* rstd, int N, int C) {
    if (N <= 0) return;
    layernorm_backward_rows_kernel<<<cdiv((size_t)N * 32, 256), 256>>>(dinp, dout, inp, w, mean, rstd, N, C);
    cudaCheckLaunch();
    int nchunks = (int)cdiv((size_t)N, COL_ROWS);
    float* partial = (float*)cuda_scratch(SCRATCH_REDUCE, 2 * (size_t)nchunks * C * sizeof(float));
    dim3 grid((unsigned)nchunks, cdiv((size_t)C, 256));
    layernorm_backward_cols_kernel<<<grid, 256>>>(partial, dout, inp, mean, rstd, N, C, nchunks);
    cudaCheckLaunch();
    colsum_finish_kernel<<<cdiv((size_t)C, 256), 256>>>(dw, db, partial, nchunks, C);
    cudaCheckLaunch();
}
