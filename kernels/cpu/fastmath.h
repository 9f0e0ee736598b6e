// fastmath.h - exp and tanh that the compiler can vectorize inside
// `#pragma omp simd` loops (glibc's expf/tanhf are scalar calls unless
// -ffast-math, which we do not want). Accuracy: exp_fast is within ~2 ulp of
// expf over [-87, 88] (inputs are clamped to that range, so exp of a very
// negative number is ~1e-38, not 0); tanh_fast within ~1e-7 absolute.
#pragma once
#include <math.h>
#include <stdint.h>

#pragma omp declare simd notinbranch
static inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x); // (fminf/fmaxf would be calls)
    float n = floorf(x * 1.44269504088896341f + 0.5f); // round(x / ln2)
    float r = fmaf(n, -0.693145751953125f, x);          // x - n*ln2, in two parts (Cody-Waite)
    r = fmaf(n, -1.428606765330187e-06f, r);
    // exp(r) on |r| <= ln2/2: Taylor to degree 7, truncation error < 1e-8
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23; // 2^n
    return p * scale.f;
}

#pragma omp declare simd notinbranch
static inline float tanh_fast(float x) {
    // tanh(x) = 1 - 2 / (exp(2x) + 1); saturates cleanly to +-1
    return 1.0f - 2.0f / (exp_fast(2.0f * x) + 1.0f);
}
