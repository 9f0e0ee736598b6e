// layernorm.c - LayerNorm over the channel dimension, eps = 1e-5 (GPT-2).
#include <math.h>
#include <omp.h>
#include "kernels/cpu/cpu.h"

#define LN_EPS 1e-5f

// inp,out (N,C); w,b (C); mean,rstd (N) saved for the backward pass
void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* w,
                           const float* b, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float* o = out + (size_t)n * C;
        float m = 0.0f;
        #pragma omp simd reduction(+:m)
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        float v = 0.0f;
        #pragma omp simd reduction(+:v)
        for (int c = 0; c < C; c++) { float d = x[c] - m; v += d * d; }
        v /= C;
        float s = 1.0f / sqrtf(v + LN_EPS);
        #pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * w[c] + b[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

// dinp (N,C) += ; dw, db (C) += . Two passes: rows in parallel for dinp, then
// channel blocks in parallel for dw/db (fixed order: deterministic, no atomics).
void layernorm_backward_cpu(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                            const float* w, const float* mean, const float* rstd, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        const float* d = dout + (size_t)n * C;
        float* dx = dinp + (size_t)n * C;
        float m = mean[n], s = rstd[n];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        #pragma omp simd reduction(+:dnorm_mean, dnorm_norm_mean)
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            float dnorm = w[c] * d[c];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        #pragma omp simd
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            float dnorm = w[c] * d[c];
            dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
    const int CH = 64;
    int nchunks = (C + CH - 1) / CH;
    #pragma omp parallel for if ((size_t)N * C >= PAR_MIN_WORK)
    for (int k = 0; k < nchunks; k++) {
        int c0 = k * CH, c1 = c0 + CH < C ? c0 + CH : C;
        float accw[64] = {0}, accb[64] = {0};
        for (int n = 0; n < N; n++) {
            const float* x = inp + (size_t)n * C;
            const float* d = dout + (size_t)n * C;
            float m = mean[n], s = rstd[n];
            for (int c = c0; c < c1; c++) {
                accw[c - c0] += (x[c] - m) * s * d[c];
                accb[c - c0] += d[c];
            }
        }
        for (int c = c0; c < c1; c++) { dw[c] += accw[c - c0]; db[c] += accb[c - c0]; }
    }
}
