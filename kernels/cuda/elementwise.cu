// elementwise.cu - GELU (GPT-2's tanh approximation), the residual add, and
// the optimizer's pieces: AdamW, scaling, and the sum of squares that
// global-norm clipping needs.
#include <math.h>
#include "kernels/cuda/cuda.h"

#define GELU_SCALE 0.7978845608028654f // sqrt(2/pi)

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__global__ void gelu_forward_kernel(float* out, const float* inp, size_t n) {
    GRID_STRIDE(i, n) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

// dinp = dout * gelu'(inp); may run in place (dinp == dout)
__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t n) {
    GRID_STRIDE(i, n) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float th = tanhf(u);
        float sech2 = 1.0f - th * th;
        float grad = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * grad;
    }
}

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, size_t n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

__global__ void residual_backward_kernel(float* da, float* db, const float* dout, size_t n) {
    GRID_STRIDE(i, n) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

__global__ void scale_kernel(float* x, float s, size_t n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

// torch.optim.AdamW: p *= 1 - lr*wd ; p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, size_t n, float beta1, float beta2,
                             float eps, float step, float bc2_sqrt, float decay, float grad_scale) {
    GRID_STRIDE(i, n) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = param[i] * decay - step * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

#define SUMSQ_THREADS 256
#define SUMSQ_MAX_BLOCKS 1024

// First pass: block partial sums (double) of x^2; the grid depends on n
// only, so the result is the same on every run (no atomics).
__global__ void sumsq_partial_kernel(double* partial, const float* x, size_t n) {
    __shared__ double red[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)x[i] * x[i];
    acc = block_sum_d(acc, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sumsq_finish_kernel(double* out, const double* partial, int nblocks) {
    __shared__ double red[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += blockDim.x) acc += partial[i];
    acc = block_sum_d(acc, red);
    if (threadIdx.x == 0) *out = acc;
}

void gelu_forward_cuda(float* out, const float* inp, size_t n) {
    if (!n) return;
    gelu_forward_kernel<<<grid_1d(n), 256>>>(out, inp, n);
    cudaCheckLaunch();
}

void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, size_t n) {
    if (!n) return;
    gelu_backward_kernel<<<grid_1d(n), 256>>>(dinp, inp, dout, n);
    cudaCheckLaunch();
}

void residual_forward_cuda(float* out, const float* a, const float* b, size_t n) {
    if (!n) return;
    residual_forward_kernel<<<grid_1d(n), 256>>>(out, a, b, n);
    cudaCheckLaunch();
}

void residual_backward_cuda(float* da, float* db, const float* dout, size_t n) {
    if (!n) return;
    residual_backward_kernel<<<grid_1d(n), 256>>>(da, db, dout, n);
    cudaCheckLaunch();
}

void scale_cuda(float* x, float s, size_t n) {
    if (!n) return;
    scale_kernel<<<grid_1d(n), 256>>>(x, s, n);
    cudaCheckLaunch();
}

void adamw_update_cuda(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, float grad_scale, int t) {
    if (!n) return;
    // the step's scalars exactly as the CPU backend computes them
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2 = 1.0f - powf(beta2, (float)t);
    float step = lr / bc1;
    float bc2_sqrt = sqrtf(bc2);
    float decay = 1.0f - lr * weight_decay;
    adamw_kernel<<<grid_1d(n), 256>>>(param, grad, m, v, n, beta1, beta2, eps, step, bc2_sqrt, decay, grad_scale);
    cudaCheckLaunch();
}

double sum_squares_cuda(const float* x, size_t n) {
    if (!n) return 0.0;
    size_t g = (n + SUMSQ_THREADS * 8 - 1) / (SUMSQ_THREADS * 8);
    int nblocks = (int)(g > SUMSQ_MAX_BLOCKS ? SUMSQ_MAX_BLOCKS : g);
    double* buf = (double*)cuda_scratch(SCRATCH_RESULT, (SUMSQ_MAX_BLOCKS + 1) * sizeof(double));
    sumsq_partial_kernel<<<nblocks, SUMSQ_THREADS>>>(buf + 1, x, n);
    cudaCheckLaunch();
    sumsq_finish_kernel<<<1, SUMSQ_THREADS>>>(buf, buf + 1, nblocks);
    cudaCheckLaunch();
    double out = 0.0;
    cudaCheck(cudaMemcpy(&out, buf, sizeof out, cudaMemcpyDeviceToHost));
    return out;
}
