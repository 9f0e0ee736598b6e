// matmul.c - linear layers through OpenBLAS sgemm. Weights are (OC, C) like
// nn.Linear, so the forward is inp @ w^T.
#include <string.h>
#include <cblas.h>
#include "kernels/cpu/cpu.h"

// out (N,OC) = inp (N,C) @ w (OC,C)^T + bias (OC)
void matmul_forward_cpu(float* out, const float* inp, const float* w, const float* bias, int N, int C, int OC) {
    float beta = 0.0f;
    if (bias) {
        // start from the bias and let sgemm accumulate: one pass instead of two
        #pragma omp parallel for if ((size_t)N * OC >= PAR_MIN_WORK)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, sizeof(float) * OC);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, w, C, beta, out, OC);
}

// dinp (N,C) += dout (N,OC) @ w (OC,C); dw (OC,C) += dout^T @ inp; dbias (OC) += colsum(dout)
void matmul_backward_cpu(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                         const float* w, int N, int C, int OC) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, w, C, 1.0f, dinp, C);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    if (dbias) {
        const int CH = 64;
        int nchunks = (OC + CH - 1) / CH;
        #pragma omp parallel for if ((size_t)N * OC >= PAR_MIN_WORK)
        for (int k = 0; k < nchunks; k++) {
            int o0 = k * CH, o1 = o0 + CH < OC ? o0 + CH : OC;
            float acc[64] = {0};
            for (int n = 0; n < N; n++) {
                const float* d = dout + (size_t)n * OC;
                for (int o = o0; o < o1; o++) acc[o - o0] += d[o];
            }
            for (int o = o0; o < o1; o++) dbias[o] += acc[o - o0];
        }
    }
}
