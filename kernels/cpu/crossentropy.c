// crossentropy.c - fused softmax + cross-entropy over the vocabulary.
// The probabilities are never stored: the forward keeps only the loss, the
// backward rebuilds each row's softmax from it while writing the gradient.
#include <math.h>
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/fastmath.h"

// log(sum(exp(row))) computed stably
static float logsumexp(const float* row, int V) {
    float mx = -INFINITY;
    #pragma omp simd reduction(max:mx)
    for (int i = 0; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int i = 0; i < V; i++) sum += exp_fast(row[i] - mx);
    return mx + logf(sum);
}

// losses (N) = logsumexp(logits[n]) - logits[n][target]; target < 0 -> 0
void crossentropy_forward_cpu(float* losses, const float* logits, const int* targets, int N, int V) {
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        int tgt = targets[n];
        if (tgt < 0) { losses[n] = 0.0f; continue; }
        const float* row = logits + (size_t)n * V;
        losses[n] = logsumexp(row, V) - row[tgt];
    }
}

// dlogits (N,V) = (softmax(logits) - onehot(target)) * dlosses[n]; may alias logits.
// The forward's loss gives logsumexp back: lse = loss + logit[target].
void crossentropy_backward_cpu(float* dlogits, const float* logits, const float* losses, const float* dlosses,
                               const int* targets, int N, int V) {
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float* row = logits + (size_t)n * V;
        float* d = dlogits + (size_t)n * V;
        float dl = dlosses[n];
        int tgt = targets[n];
        if (dl == 0.0f || tgt < 0) {
            for (int i = 0; i < V; i++) d[i] = 0.0f;
            continue;
        }
        float lse = losses[n] + row[tgt];
        #pragma omp simd
        for (int i = 0; i < V; i++) d[i] = exp_fast(row[i] - lse) * dl;
        d[tgt] -= dl;
    }
}

// ---- vocab-parallel cross-entropy (tensor parallelism): columns [v0, v0+Vl)
// of the vocabulary, rows of Vp floats (the tail past Vl is padding)

// stats (N,3) = [max, sum exp(x - max), target logit if held here else 0]
void crossentropy_shard_stats_cpu(float* stats, const float* logits, const int* targets, int v0, int Vl, int N,
                                  int Vp) {
    #pragma omp parallel for schedule(static) if ((size_t)N * Vl >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        float* s = stats + (size_t)n * 3;
        int tgt = targets[n];
        if (tgt < 0) { s[0] = s[1] = s[2] = 0.0f; continue; }
        const float* row = logits + (size_t)n * Vp;
        float mx = -INFINITY;
        #pragma omp simd reduction(max:mx)
        for (int i = 0; i < Vl; i++) mx = row[i] > mx ? row[i] : mx;
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int i = 0; i < Vl; i++) sum += exp_fast(row[i] - mx);
        s[0] = mx;
        s[1] = sum;
        s[2] = tgt >= v0 && tgt < v0 + Vl ? row[tgt - v0] : 0.0f;
    }
}

// dlogits (N,Vp) = (softmax - onehot) * dlosses[n] from the global logsumexp lse (N)
void crossentropy_shard_backward_cpu(float* dlogits, const float* logits, const float* lse, const float* dlosses,
                                     const int* targets, int v0, int Vl, int N, int Vp) {
    #pragma omp parallel for schedule(static) if ((size_t)N * Vp >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float* row = logits + (size_t)n * Vp;
        float* d = dlogits + (size_t)n * Vp;
        float dl = dlosses[n];
        int tgt = targets[n];
        if (dl == 0.0f || tgt < 0) {
            for (int i = 0; i < Vp; i++) d[i] = 0.0f;
            continue;
        }
        float m = lse[n];
        #pragma omp simd
        for (int i = 0; i < Vl; i++) d[i] = exp_fast(row[i] - m) * dl;
        for (int i = Vl; i < Vp; i++) d[i] = 0.0f;
        if (tgt >= v0 && tgt < v0 + Vl) d[tgt - v0] -= dl;
    }
}
