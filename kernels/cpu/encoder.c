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
