// attention.c - causal multi-head self-attention.
// Training: per (batch, head) the scores and the weighted sum are sgemm calls
// on strided views of qkv (no copies); the (b,h) pairs are spread over the
// OpenMP threads and each sgemm runs single-threaded inside (OpenBLAS's
// OpenMP build does that by itself inside a parallel region).
#include <math.h>
#include <string.h>
#include <cblas.h>
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/fastmath.h"

// qkv (B,T,3C) holds [q | k | v], each C = NH*hs wide
// out (B,T,C); att (B,NH,T,T) softmax probabilities, zero above the diagonal
void attention_forward_cpu(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2) schedule(dynamic) if ((size_t)B * T * T * C >= PAR_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float* q = qkv + (size_t)b * T * C3 + h * hs;
            const float* k = q + C;
            const float* v = q + 2 * C;
            float* a = att + ((size_t)b * NH + h) * T * T;
            // scores (T,T) = scale * q (T,hs) @ k^T (hs,T)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, C3, k, C3, 0.0f, a, T);
            for (int t = 0; t < T; t++) {
                float* row = a + (size_t)t * T;
                float mx = -INFINITY;
                for (int j = 0; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
                float sum = 0.0f;
                for (int j = 0; j <= t; j++) { row[j] = exp_fast(row[j] - mx); sum += row[j]; }
                float inv = 1.0f / sum;
                for (int j = 0; j <= t; j++) row[j] *= inv;
                for (int j = t + 1; j < T; j++) row[j] = 0.0f;
            }
            // out (T,hs) = att (T,T) @ v (T,hs)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, v, C3, 0.0f,
                        out + (size_t)b * T * C + h * hs, C);
        }
    }
}

// dqkv (B,T,3C) += ; scratch (B,NH,T,T) is overwritten with d(scores)
void attention_backward_cpu(float* dqkv, float* scratch, const float* dout, const float* qkv,
                            const float* att, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2) schedule(dynamic) if ((size_t)B * T * T * C >= PAR_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float* q = qkv + (size_t)b * T * C3 + h * hs;
            const float* k = q + C;
            const float* v = q + 2 * C;
            float* dq = dqkv + (size_t)b * T * C3 + h * hs;
            float* dk = dq + C;
            float* dv = dq + 2 * C;
            const float* a = att + ((size_t)b * NH + h) * T * T;
            float* da = scratch + ((size_t)b * NH + h) * T * T;
            const float* dO = dout + (size_t)b * T * C + h * hs;
            // datt (T,T) = dO (T,hs) @ v^T ; dv (T,hs) += att^T @ dO
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dO, C, v, C3, 0.0f, da, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, dO, C, 1.0f, dv, C3);
            // softmax backward, row by row: dS = P * (dP - sum(P * dP))
            for (int t = 0; t < T; t++) {
                const float* p = a + (size_t)t * T;
                float* d = da + (size_t)t * T;
                float dot = 0.0f;
                for (int j = 0; j <= t; j++) dot += p[j] * d[j];
                for (int j = 0; j <= t; j++) d[j] = p[j] * (d[j] - dot);
                for (int j = t + 1; j < T; j++) d[j] = 0.0f;
            }
            // dq (T,hs) += scale * dS @ k ; dk (T,hs) += scale * dS^T @ q
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, scale, da, T, k, C3, 1.0f, dq, C3);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, scale, da, T, q, C3, 1.0f, dk, C3);
        }
    }
}

// ---- generation with a KV cache. kcache, vcache (S,maxT,C) for one layer.

void kv_store_cpu(float* kcache, float* vcache, const float* qkv, const int* seq, const int* pos, int R,
                  int maxT, int C) {
    #pragma omp parallel for if ((size_t)R * C >= PAR_MIN_WORK)
    for (int r = 0; r < R; r++) {
        size_t at = ((size_t)seq[r] * maxT + pos[r]) * C;
        memcpy(kcache + at, qkv + (size_t)r * 3 * C + C, sizeof(float) * C);
        memcpy(vcache + at, qkv + (size_t)r * 3 * C + 2 * C, sizeof(float) * C);
    }
}

// out (R,C): row r's query (from qkv (R,3C)) attends to its sequence's cache [0..pos[r]]
void attention_rows_cpu(float* out, const float* qkv, const float* kcache, const float* vcache,
                        const int* seq, const int* pos, int R, int maxT, int C, int NH) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel if ((size_t)R * maxT * C >= PAR_MIN_WORK)
    {
        float* sc = cpu_alloc(sizeof(float) * (size_t)maxT);
        #pragma omp for collapse(2) schedule(dynamic)
        for (int r = 0; r < R; r++) {
            for (int h = 0; h < NH; h++) {
                const float* q = qkv + (size_t)r * 3 * C + h * hs;
                const float* kbase = kcache + (size_t)seq[r] * maxT * C + h * hs;
                const float* vbase = vcache + (size_t)seq[r] * maxT * C + h * hs;
                int n = pos[r] + 1;
                float mx = -INFINITY;
                for (int j = 0; j < n; j++) {
                    const float* k = kbase + (size_t)j * C;
                    float s = 0.0f;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    sc[j] = s * scale;
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                float sum = 0.0f;
                for (int j = 0; j < n; j++) { sc[j] = exp_fast(sc[j] - mx); sum += sc[j]; }
                float inv = 1.0f / sum;
                float* o = out + (size_t)r * C + h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0.0f;
                for (int j = 0; j < n; j++) {
                    const float* v = vbase + (size_t)j * C;
                    float p = sc[j] * inv;
                    for (int i = 0; i < hs; i++) o[i] += p * v[i];
                }
            }
        }
        cpu_free(sc);
    }
}
