// encoder.cu - token + position embedding on the GPU, and the
// deterministic row scatter-add its backward uses.
#include <stdlib.h>
#include <string.h>
#include "kernels/cuda/cuda.h"

// out (B,T,C) = wte[inp[b,t]] + wpe[t]
__global__ void encoder_forward_kernel(float* out, const int* inp, const float* wte, const float* wpe, int T, int C,
                                       size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t bt = i / C;
        int c = (int)(i % C), t = (int)(bt % T);
        out[i] = wte[(size_t)inp[bt] * C + c] + wpe[(size_t)t * C + c];
    }
}

// out (R,C) = (wte row or 0) + (wpe row or 0); v0/Vl select the rows of a
// vocab shard (the whole table: v0 = 0, Vl = V), wpe may be NULL.
__global__ void encoder_rows_kernel(float* out, const int* tok, const int* pos, const float* wte, const float* wpe,
                                    int v0, int Vl, int C, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / C;
        int c = (int)(i % C), v = tok[r] - v0;
        float we = v >= 0 && v < Vl ? wte[(size_t)v * C + c] : 0.0f;
        float pe = wpe ? wpe[(size_t)pos[r] * C + c] : 0.0f;
        out[i] = we + pe; // x + 0 == x: the same values as the CPU's branches
    }
}

void encoder_forward_cuda(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C) {
    size_t n = (size_t)B * T * C;
    encoder_forward_kernel<<<grid_1d(n), 256>>>(out, inp, wte, wpe, T, C, n);
    cudaCheckLaunch();
}

void encoder_rows_cuda(float* out, const int* tok, const int* pos, const float* wte, const float* wpe, int R, int C) {
    size_t n = (size_t)R * C;
    if (n == 0) return;
    encoder_rows_kernel<<<grid_1d(n), 256>>>(out, tok, pos, wte, wpe, 0, 0x7fffffff, C, n);
    cudaCheckLaunch();
}

void encoder_shard_forward_cuda(float* out, const int* tok, const int* pos, const float* wte, const float* wpe,
                                int v0, int Vl, int R, int C) {
    size_t n = (size_t)R * C;
    if (n == 0) return;
    encoder_rows_kernel<<<grid_1d(n), 256>>>(out, tok, pos, wte, wpe, v0, Vl, C, n);
    cudaCheckLaunch();
}

// ---- scatter-add of rows, grouped by key on the host

// Block (k, channel tile): dst[keys[k]] += src rows rows[offsets[k] .. offsets[k+1]), in order.
__global__ void scatter_add_rows_kernel(float* dst, const float* src, const int* keys, const int* offsets,
                                        const int* rows, int C) {
    int k = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float* d = dst + (size_t)keys[k] * C + c;
    float acc = *d;
    for (int i = offsets[k]; i < offsets[k + 1]; i++) acc += src[(size_t)rows[i] * C + c];
    *d = acc;
}

// host buffers of the grouping, reused between calls
static int* g_host = NULL;
static size_t g_host_cap = 0;

void scatter_add_rows_cuda(float* dst, const float* src, const int* keys_host, int R, int C, int K) {
    if (R <= 0 || C <= 0 || K <= 0) return;
    // counting sort of the rows by key (stable: ascending r within a key)
    // layout of g_host: count[K+1] | keys[nk] | offsets[nk+1] | rows[R]
    size_t need = (size_t)K + 1 + 2 * (size_t)R + 1 + (size_t)R;
    if (need > g_host_cap) {
        free(g_host);
        g_host = (int*)mallocCheck(need * sizeof(int));
        g_host_cap = need;
    }
    int* count = g_host;
    memset(count, 0, ((size_t)K + 1) * sizeof(int));
    for (int r = 0; r < R; r++) {
        int k = keys_host[r];
        if (k >= 0 && k < K) count[k + 1]++;
    }
    int nk = 0;
    for (int k = 0; k < K; k++) nk += count[k + 1] > 0;
    if (nk == 0) return;
    int* keys = count + K + 1;
    int* offsets = keys + nk;
    int* rows = offsets + nk + 1;
    for (int k = 0; k < K; k++) count[k + 1] += count[k]; // count[k] = first slot of key k
    int used = count[K];
    for (int k = 0, j = 0; k < K; k++) {
        if (count[k + 1] == count[k]) continue;
        keys[j] = k;
        offsets[j] = count[k];
        j++;
    }
    offsets[nk] = used;
    for (int r = 0; r < R; r++) {
        int k = keys_host[r];
        if (k >= 0 && k < K) rows[count[k]++] = r;
    }
    size_t n = (size_t)nk + (size_t)nk + 1 + (size_t)used;
    int* dev = (int*)cuda_scratch(SCRATCH_ROWS, n * sizeof(int));
    cudaCheck(cudaMemcpy(dev, keys, n * sizeof(int), cudaMemcpyHostToDevice));
    dim3 grid((unsigned)nk, cdiv((size_t)C, 256));
    scatter_add_rows_kernel<<<grid, 256>>>(dst, src, dev, dev + nk, dev + 2 * nk + 1, C);
    cudaCheckLaunch();
}

// The token ids live on the device: the grouping is made on the host from a
// copy (B*T ints: microseconds), which buys determinism without atomics.
static int* download_ints(const int* dev, int n, int** buf, size_t* cap) {
    if ((size_t)n > *cap) {
        free(*buf);
        *buf = (int*)mallocCheck((size_t)n * sizeof(int));
        *cap = (size_t)n;
    }
    cudaCheck(cudaMemcpy(*buf, dev, (size_t)n * sizeof(int), cudaMemcpyDeviceToHost));
    return *buf;
}
static int* g_tok = NULL;
static size_t g_tok_cap = 0;
static int* g_pos = NULL;
static size_t g_pos_cap = 0;

void encoder_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C) {
    int R = B * T;
    const int* tok = download_ints(inp, R, &g_tok, &g_tok_cap);
    // the vocab size is not an argument: any id seen is a valid row of dwte
    int V = 0;
    for (int r = 0; r < R; r++) V = tok[r] + 1 > V ? tok[r] + 1 : V;
    scatter_add_rows_cuda(dwte, dout, tok, R, C, V);
    if ((size_t)R > g_pos_cap) {
        free(g_pos);
        g_pos = (int*)mallocCheck((size_t)R * sizeof(int));
        g_pos_cap = (size_t)R;
    }
    for (int r = 0; r < R; r++) g_pos[r] = r % T;
    scatter_add_rows_cuda(dwpe, dout, g_pos, R, C, T);
}

void encoder_shard_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* tok, const int* pos,
                                 int v0, int Vl, int R, int C) {
    if (R <= 0) return;
    int* t = download_ints(tok, R, &g_tok, &g_tok_cap);
    for (int r = 0; r < R; r++) t[r] -= v0; // local row; outside [0, Vl) is skipped
    scatter_add_rows_cuda(dwte, dout, t, R, C, Vl);
    if (dwpe) {
        const int* p = download_ints(pos, R, &g_pos, &g_pos_cap);
        int maxp = 0;
        for (int r = 0; r < R; r++) maxp = p[r] + 1 > maxp ? p[r] + 1 : maxp;
        scatter_add_rows_cuda(dwpe, dout, p, R, C, maxp);
    }
}
