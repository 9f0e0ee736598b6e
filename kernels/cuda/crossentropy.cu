// crossentropy.cu - fused softmax + cross-entropy over the vocabulary on the
// GPU, one block per row. As on the CPU the probabilities are never stored:
// the backward rebuilds each row's softmax from the forward's loss.
#include <math.h>
#include "kernels/cuda/cuda.h"

#define CE_THREADS 512

// losses (N) = logsumexp(logits[n]) - logits[n][target]; target < 0 -> 0
__global__ void __launch_bounds__(CE_THREADS) crossentropy_forward_kernel(float* losses, const float* logits,
                                                                          const int* targets, int V) {
    __shared__ float red[32];
    int n = blockIdx.x, tgt = targets[n];
    if (tgt < 0) { // uniform over the block: no thread reaches a barrier
        if (threadIdx.x == 0) losses[n] = 0.0f;
        return;
    }
    const float* row = logits + (size_t)n * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(row[i] - mx);
    sum = block_sum(sum, red);
    if (threadIdx.x == 0) losses[n] = (mx + logf(sum)) - row[tgt];
}

// dlogits (N,V) = (softmax - onehot) * dlosses[n]; may alias logits
__global__ void __launch_bounds__(CE_THREADS) crossentropy_backward_kernel(float* dlogits, const float* logits,
                                                                           const float* losses,
                                                                           const float* dlosses, const int* targets,
                                                                           int V) {
    __shared__ float lse_s;
    int n = blockIdx.x, tgt = targets[n];
    float dl = dlosses[n];
    const float* row = logits + (size_t)n * V;
    float* d = dlogits + (size_t)n * V;
    if (dl == 0.0f || tgt < 0) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = 0.0f;
        return;
    }
    // the target's logit is read before anyone overwrites the row (aliasing)
    if (threadIdx.x == 0) lse_s = losses[n] + row[tgt];
    __syncthreads();
    float lse = lse_s;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = expf(row[i] - lse) * dl;
        d[i] = i == tgt ? g - dl : g;
    }
}

// stats (N,3) = [max over the Vl real columns, sum exp(x - max), target logit if held here else 0]
__global__ void __launch_bounds__(CE_THREADS) crossentropy_shard_stats_kernel(float* stats, const float* logits,
                                                                              const int* targets, int v0, int Vl,
                                                                              int Vp) {
    __shared__ float red[32];
    int n = blockIdx.x, tgt = targets[n];
    float* s = stats + (size_t)n * 3;
    if (tgt < 0) {
        if (threadIdx.x == 0) s[0] = s[1] = s[2] = 0.0f;
        return;
    }
    const float* row = logits + (size_t)n * Vp;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < Vl; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < Vl; i += blockDim.x) sum += expf(row[i] - mx);
    sum = block_sum(sum, red);
    if (threadIdx.x == 0) {
        s[0] = mx;
        s[1] = sum;
        s[2] = tgt >= v0 && tgt < v0 + Vl ? row[tgt - v0] : 0.0f;
    }
}

// dlogits (N,Vp) = (exp(x - lse[n]) - onehot) * dlosses[n] on the real columns, 0 on padding
__global__ void __launch_bounds__(CE_THREADS) crossentropy_shard_backward_kernel(float* dlogits, const float* logits,
                                                                                 const float* lse,
                                                                                 const float* dlosses,
                                                                                 const int* targets, int v0, int Vl,
                                                                                 int Vp) {
    int n = blockIdx.x, tgt = targets[n];
    float dl = dlosses[n];
    const float* row = logits + (size_t)n * Vp;
    float* d = dlogits + (size_t)n * Vp;
    if (dl == 0.0f || tgt < 0) {
        for (int i = threadIdx.x; i < Vp; i += blockDim.x) d[i] = 0.0f;
        return;
    }
    float m = lse[n];
    int local = tgt - v0; // each element is read and written by one thread: aliasing is safe
    for (int i = threadIdx.x; i < Vp; i += blockDim.x) {
        float g = i < Vl ? expf(row[i] - m) * dl : 0.0f;
        d[i] = i == local && i < Vl ? g - dl : g;
    }
}

void crossentropy_forward_cuda(float* losses, const float* logits, const int* targets, int N, int V) {
    if (N <= 0) return;
    crossentropy_forward_kernel<<<N, CE_THREADS>>>(losses, logits, targets, V);
    cudaCheckLaunch();
}

void crossentropy_backward_cuda(float* dlogits, const float* logits, const float* losses, const float* dlosses,
                                const int* targets, int N, int V) {
    if (N <= 0) return;
    crossentropy_backward_kernel<<<N, CE_THREADS>>>(dlogits, logits, losses, dlosses, targets, V);
    cudaCheckLaunch();
}

void crossentropy_shard_stats_cuda(float* stats, const float* logits, const int* targets, int v0, int Vl, int N,
                                   int Vp) {
    if (N <= 0) return;
    crossentropy_shard_stats_kernel<<<N, CE_THREADS>>>(stats, logits, targets, v0, Vl, Vp);
    cudaCheckLaunch();
}

void crossentropy_shard_backward_cuda(float* dlogits, const float* logits, const float* lse, const float* dlosses,
                                      const int* targets, int v0, int Vl, int N, int Vp) {
    if (N <= 0) return;
    crossentropy_shard_backward_kernel<<<N, CE_THREADS>>>(dlogits, logits, lse, dlosses, targets, v0, Vl, Vp);
    cudaCheckLaunch();
}
