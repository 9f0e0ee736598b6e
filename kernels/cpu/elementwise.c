// elementwise.c - GELU (GPT-2's tanh approximation) and the residual add.
#include <math.h>
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/fastmath.h"

#define GELU_SCALE 0.7978845608028654f // sqrt(2/pi)

// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void gelu_forward_cpu(float* out, const float* inp, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanh_fast(u));
    }
}

// dinp = dout * gelu'(inp); may run in place (dinp == dout)
void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float th = tanh_fast(u);
        float sech2 = 1.0f - th * th;
        float grad = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * grad;
    }
}

void residual_forward_cpu(float* out, const float* a, const float* b, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void residual_backward_cpu(float* da, float* db, const float* dout, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) { da[i] += dout[i]; db[i] += dout[i]; }
}
