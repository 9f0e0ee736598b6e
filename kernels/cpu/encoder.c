// encoder.c - token + position embedding.
#include "kernels/cpu/cpu.h"

// out (B,T,C) = wte[inp[b,t]] (V,C) + wpe[t] (maxT,C)
void encoder_forward_cpu(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C) {
    #pragma omp parallel for collapse(2) if ((size_t)B * T * C >= PAR_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float* o = out + ((size_t)b * T + t) * C;
            const float* we = wte + (size_t)inp[b * T + t] * C;
            const float* pe = wpe + (size_t)t * C;
            #pragma omp simd
            for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
        }
    }
}

// Rows at arbitrary positions (generation). out (R,C)
void encoder_rows_cpu(float* out, const int* tok, const int* pos, const float* wte, const float* wpe, int R, int C) {
    #pragma omp parallel for if ((size_t)R * C >= PAR_MIN_WORK)
    for (int r = 0; r < R; r++) {
        float* o = out + (size_t)r * C;
        const float* we = wte + (size_t)tok[r] * C;
        const float* pe = wpe + (size_t)pos[r] * C;
        #pragma omp simd
        for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
}

// dwte (V,C), dwpe (maxT,C) += from dout (B,T,C). Several positions may hold the
// same token, so threads split the channels, not the positions: no races, and
// the summation order is fixed (deterministic for any thread count).
void encoder_backward_cpu(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C) {
    const int CH = 64; // channels per task
    int nchunks = (C + CH - 1) / CH;
    #pragma omp parallel for if ((size_t)B * T * C >= PAR_MIN_WORK)
    for (int k = 0; k < nchunks; k++) {
        int c0 = k * CH, c1 = c0 + CH < C ? c0 + CH : C;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                const float* d = dout + ((size_t)b * T + t) * C;
                float* dw = dwte + (size_t)inp[b * T + t] * C;
                float* dp = dwpe + (size_t)t * C;
                for (int c = c0; c < c1; c++) { dw[c] += d[c]; dp[c] += d[c]; }
            }
        }
    }
}

// ---- vocab-parallel embedding (tensor parallelism): wte holds rows [v0, v0+Vl)

// out (R,C) = (owned ? wte[tok-v0] : 0) + (wpe ? wpe[pos] : 0)
void encoder_shard_forward_cpu(float* out, const int* tok, const int* pos, const float* wte, const float* wpe,
                               int v0, int Vl, int R, int C) {
    #pragma omp parallel for if ((size_t)R * C >= PAR_MIN_WORK)
    for (int r = 0; r < R; r++) {
        float* o = out + (size_t)r * C;
        int v = tok[r] - v0;
        const float* we = v >= 0 && v < Vl ? wte + (size_t)v * C : NULL;
        const float* pe = wpe ? wpe + (size_t)pos[r] * C : NULL;
        if (we && pe) {
            #pragma omp simd
            for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
        } else if (we || pe) {
            const float* src = we ? we : pe;
            for (int c = 0; c < C; c++) o[c] = src[c];
        } else {
            for (int c = 0; c < C; c++) o[c] = 0.0f;
        }
    }
}

// dwte[tok-v0] += dout for owned rows; dwpe[pos] += dout (if dwpe). Threads
// split the channels, rows go in order: deterministic, as encoder_backward.
void encoder_shard_backward_cpu(float* dwte, float* dwpe, const float* dout, const int* tok, const int* pos,
                                int v0, int Vl, int R, int C) {
    const int CH = 64; // channels per task
    int nchunks = (C + CH - 1) / CH;
    #pragma omp parallel for if ((size_t)R * C >= PAR_MIN_WORK)
    for (int k = 0; k < nchunks; k++) {
        int c0 = k * CH, c1 = c0 + CH < C ? c0 + CH : C;
        for (int r = 0; r < R; r++) {
            const float* d = dout + (size_t)r * C;
            int v = tok[r] - v0;
            if (v >= 0 && v < Vl) {
                float* dw = dwte + (size_t)v * C;
                for (int c = c0; c < c1; c++) dw[c] += d[c];
            }
            if (dwpe) {
                float* dp = dwpe + (size_t)pos[r] * C;
                for (int c = c0; c < c1; c++) dp[c] += d[c];
            }
        }
    }
}
