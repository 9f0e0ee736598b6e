// adamw.c - AdamW (Loshchilov & Hutter: decoupled weight decay) with bias
// correction, as torch.optim.AdamW; and the helpers for global-norm clipping.
#include <math.h>
#include "kernels/cpu/cpu.h"

// t: 1-based step; the gradient used is grad * grad_scale. param -= lr * (mhat / (sqrt(vhat) + eps) + wd * param)
void adamw_update_cpu(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, float grad_scale, int t) {
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2 = 1.0f - powf(beta2, (float)t);
    float step = lr / bc1;
    float bc2_sqrt = sqrtf(bc2);
    float decay = 1.0f - lr * weight_decay;
    #pragma omp parallel for simd schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        // torch: p *= 1 - lr*wd ; p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
        param[i] = param[i] * decay - step * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

double sum_squares_cpu(const float* x, size_t n) {
    double acc = 0.0;
    #pragma omp parallel for simd reduction(+:acc) schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) acc += (double)x[i] * x[i];
    return acc;
}

void scale_cpu(float* x, float s, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}
