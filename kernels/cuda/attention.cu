// attention.cu - causal multi-head self-attention on the GPU, flash-attention
// style (Dao et al. 2022): tiles of keys and values stream through shared
// memory and each query keeps a running max and sum (online softmax), so no
// (T,T) matrix is ever stored. fp32 throughout, on the CUDA cores.
//
// The interface's att (B,NH,T,T) and scratch (B,NH,T,T) buffers are NOT used
// here: the backward recomputes the forward (output and per-row logsumexp)
// into the backend's own O(B*T*C) scratch. The model still allocates them
// for the CPU backend; nothing reads them on the GPU.
//
// One thread owns one query row (forward, dQ) or one key row (dK, dV) and
// keeps its accumulators in registers; HS is a compile-time bound on the
// head size hs (kernels exist for hs <= 16, 32, 64, 128; GPT-2 uses 64).
//
// Generation: kv_store writes rows' K,V into a cache; attention_rows lets
// one query per row attend to its sequence's cache (one block per row and head).
#include <math.h>
#include "kernels/cuda/cuda.h"

#define FWD_BR 64 // query rows per forward block (threads)
#define ATT_BC 32 // keys per shared-memory tile
#define BWD_BR 32 // rows per backward block (threads)

// qkv (B,T,3C) = [q | k | v], each C = NH*hs wide; head h uses columns h*hs ..
// out (B,T,C); lse (B*NH, T) optional: logsumexp of each row's scaled scores
template <int HS>
__global__ void __launch_bounds__(FWD_BR) flash_forward_kernel(float* out, float* lse, const float* qkv, int T, int C,
                                                               int NH, float scale) {
    extern __shared__ float smem[];
    int hs = C / NH, C3 = 3 * C;
    int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int row0 = blockIdx.x * FWD_BR, i = row0 + threadIdx.x;
    bool active = i < T;
    const float* base = qkv + (size_t)b * T * C3 + h * hs;
    float* Ks = smem;              // (ATT_BC, hs)
    float* Vs = smem + ATT_BC * hs; // (ATT_BC, hs)

    float q[HS], o[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) {
        q[d] = active && d < hs ? base[(size_t)i * C3 + d] : 0.0f;
        o[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int last = min(T - 1, row0 + FWD_BR - 1); // the block's last query sees keys 0..last
    for (int j0 = 0; j0 <= last; j0 += ATT_BC) {
        for (int e = threadIdx.x; e < ATT_BC * hs; e += blockDim.x) {
            int j = j0 + e / hs, d = e % hs;
            Ks[e] = j < T ? base[(size_t)j * C3 + C + d] : 0.0f;
            Vs[e] = j < T ? base[(size_t)j * C3 + 2 * C + d] : 0.0f;
        }
        __syncthreads();
        if (active && j0 <= i) {
            int nj = min(ATT_BC, i - j0 + 1); // keys j0 .. j0+nj-1 are visible (<= i < T)
            for (int jj = 0; jj < nj; jj++) {
                float s = 0.0f;
#pragma unroll
                for (int d = 0; d < HS; d++)
                    if (d < hs) s += q[d] * Ks[jj * hs + d];
                s *= scale;
                if (s > m) { // a new running max: rescale what was summed so far
                    float corr = expf(m - s); // 0 for the first key (m = -inf)
                    l *= corr;
#pragma unroll
                    for (int d = 0; d < HS; d++) o[d] *= corr;
                    m = s;
                }
                float p = expf(s - m);
                l += p;
#pragma unroll
                for (int d = 0; d < HS; d++)
                    if (d < hs) o[d] += p * Vs[jj * hs + d];
            }
        }
        __syncthreads();
    }
    if (active) {
        float inv = 1.0f / l;
        float* dst = out + ((size_t)b * T + i) * C + h * hs;
#pragma unroll
        for (int d = 0; d < HS; d++)
            if (d < hs) dst[d] = o[d] * inv;
        if (lse) lse[(size_t)bh * T + i] = m + logf(l);
    }
}

// D (B*NH, T) = rowsum(dO * O) per head: the softmax backward's correction term
__global__ void attention_d_kernel(float* D, const float* dout, const float* o, int B, int T, int C, int NH) {
    size_t n = (size_t)B * NH * T;
    int hs = C / NH;
    for (size_t x = blockIdx.x * (size_t)blockDim.x + threadIdx.x; x < n; x += (size_t)gridDim.x * blockDim.x) {
        size_t bh = x / T;
        int t = (int)(x % T), b = (int)(bh / NH), h = (int)(bh % NH);
        size_t at = ((size_t)b * T + t) * C + (size_t)h * hs;
        float acc = 0.0f;
        for (int d = 0; d < hs; d++) acc += dout[at + d] * o[at + d];
        D[x] = acc;
    }
}

// dK, dV: a thread owns key row j; query tiles stream through shared memory.
// dqkv (B,T,3C) += on the k and v columns.
template <int HS>
__global__ void __launch_bounds__(BWD_BR) flash_backward_kv_kernel(float* dqkv, const float* dout, const float* qkv,
                                                                   const float* lse, const float* D, int T, int C,
                                                                   int NH, float scale) {
    extern __shared__ float smem[];
    int hs = C / NH, C3 = 3 * C, hp = hs + 1; // own rows padded: no bank conflicts
    int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int j0 = blockIdx.x * BWD_BR, j = j0 + threadIdx.x;
    bool active = j < T;
    const float* base = qkv + (size_t)b * T * C3 + h * hs;
    const float* dbase = dout + (size_t)b * T * C + h * hs;
    float* Ko = smem;                    // (BWD_BR, hs+1) this block's keys
    float* Vo = Ko + BWD_BR * hp;        // (BWD_BR, hs+1) this block's values
    float* Qt = Vo + BWD_BR * hp;        // (ATT_BC, hs) tile of queries
    float* dOt = Qt + ATT_BC * hs;       // (ATT_BC, hs) their output gradients
    float* Lt = dOt + ATT_BC * hs;       // (ATT_BC) their logsumexp
    float* Dt = Lt + ATT_BC;             // (ATT_BC) their D
    for (int d = 0; d < hs; d++) {
        Ko[threadIdx.x * hp + d] = active ? base[(size_t)j * C3 + C + d] : 0.0f;
        Vo[threadIdx.x * hp + d] = active ? base[(size_t)j * C3 + 2 * C + d] : 0.0f;
    }
    float dk[HS], dv[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) dk[d] = dv[d] = 0.0f;
    const float* Lh = lse + (size_t)bh * T;
    const float* Dh = D + (size_t)bh * T;
    for (int i0 = j0; i0 < T; i0 += ATT_BC) { // queries before j0 see none of these keys
        for (int e = threadIdx.x; e < ATT_BC * hs; e += blockDim.x) {
            int i = i0 + e / hs, d = e % hs;
            Qt[e] = i < T ? base[(size_t)i * C3 + d] : 0.0f;
            dOt[e] = i < T ? dbase[(size_t)i * C + d] : 0.0f;
        }
        for (int e = threadIdx.x; e < ATT_BC; e += blockDim.x) {
            int i = i0 + e;
            Lt[e] = i < T ? Lh[i] : 0.0f;
            Dt[e] = i < T ? Dh[i] : 0.0f;
        }
        __syncthreads();
        if (active) {
            int ni = min(ATT_BC, T - i0);
            for (int ii = 0; ii < ni; ii++) {
                if (i0 + ii < j) continue; // causal: query i sees key j only if j <= i
                const float* qi = Qt + ii * hs;
                const float* gi = dOt + ii * hs;
                float s = 0.0f, dp = 0.0f;
#pragma unroll
                for (int d = 0; d < HS; d++)
                    if (d < hs) {
                        s += qi[d] * Ko[threadIdx.x * hp + d];
                        dp += gi[d] * Vo[threadIdx.x * hp + d];
                    }
                float p = expf(s * scale - Lt[ii]);
                float ds = p * (dp - Dt[ii]) * scale;
#pragma unroll
                for (int d = 0; d < HS; d++)
                    if (d < hs) {
                        dv[d] += p * gi[d];
                        dk[d] += ds * qi[d];
                    }
            }
        }
        __syncthreads();
    }
    if (active) {
        float* g = dqkv + ((size_t)b * T + j) * C3 + h * hs;
#pragma unroll
        for (int d = 0; d < HS; d++)
            if (d < hs) {
                g[C + d] += dk[d];
                g[2 * C + d] += dv[d];
            }
    }
}

// dQ: a thread owns query row i; key/value tiles stream through shared memory.
template <int HS>
__global__ void __launch_bounds__(BWD_BR) flash_backward_q_kernel(float* dqkv, const float* dout, const float* qkv,
                                                                  const float* lse, const float* D, int T, int C,
                                                                  int NH, float scale) {
    extern __shared__ float smem[];
    int hs = C / NH, C3 = 3 * C, hp = hs + 1;
    int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    int row0 = blockIdx.x * BWD_BR, i = row0 + threadIdx.x;
    bool active = i < T;
    const float* base = qkv + (size_t)b * T * C3 + h * hs;
    float* Kt = smem;                 // (ATT_BC, hs)
    float* Vt = Kt + ATT_BC * hs;     // (ATT_BC, hs)
    float* dOo = Vt + ATT_BC * hs;    // (BWD_BR, hs+1) this block's output gradients
    for (int d = 0; d < hs; d++)
        dOo[threadIdx.x * hp + d] = active ? dout[((size_t)b * T + i) * C + h * hs + d] : 0.0f;
    float q[HS], dq[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) {
        q[d] = active && d < hs ? base[(size_t)i * C3 + d] : 0.0f;
        dq[d] = 0.0f;
    }
    float Li = active ? lse[(size_t)bh * T + i] : 0.0f;
    float Di = active ? D[(size_t)bh * T + i] : 0.0f;
    int last = min(T - 1, row0 + BWD_BR - 1);
    for (int j0 = 0; j0 <= last; j0 += ATT_BC) {
        for (int e = threadIdx.x; e < ATT_BC * hs; e += blockDim.x) {
            int j = j0 + e / hs, d = e % hs;
            Kt[e] = j < T ? base[(size_t)j * C3 + C + d] : 0.0f;
            Vt[e] = j < T ? base[(size_t)j * C3 + 2 * C + d] : 0.0f;
        }
        __syncthreads();
        if (active && j0 <= i) {
            int nj = min(ATT_BC, i - j0 + 1);
            for (int jj = 0; jj < nj; jj++) {
                const float* kj = Kt + jj * hs;
                const float* vj = Vt + jj * hs;
                float s = 0.0f, dp = 0.0f;
#pragma unroll
                for (int d = 0; d < HS; d++)
                    if (d < hs) {
                        s += q[d] * kj[d];
                        dp += dOo[threadIdx.x * hp + d] * vj[d];
                    }
                float p = expf(s * scale - Li);
                float ds = p * (dp - Di) * scale;
#pragma unroll
                for (int d = 0; d < HS; d++)
                    if (d < hs) dq[d] += ds * kj[d];
            }
        }
        __syncthreads();
    }
    if (active) {
        float* g = dqkv + ((size_t)b * T + i) * C3 + h * hs;
#pragma unroll
        for (int d = 0; d < HS; d++)
            if (d < hs) g[d] += dq[d];
    }
}

// ---- launches, by head size

static size_t fwd_smem(int hs) { return 2 * (size_t)ATT_BC * hs * sizeof(float); }
static size_t kv_smem(int hs) {
    return (2 * (size_t)BWD_BR * (hs + 1) + 2 * (size_t)ATT_BC * hs + 2 * ATT_BC) * sizeof(float);
}
static size_t q_smem(int hs) { return (2 * (size_t)ATT_BC * hs + (size_t)BWD_BR * (hs + 1)) * sizeof(float); }

template <int HS>
static void forward_hs(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, float scale) {
    size_t smem = fwd_smem(C / NH);
    cuda_smem_optin((const void*)flash_forward_kernel<HS>, smem, "flash_forward");
    dim3 grid(cdiv((size_t)T, FWD_BR), (unsigned)(B * NH));
    flash_forward_kernel<HS><<<grid, FWD_BR, smem>>>(out, lse, qkv, T, C, NH, scale);
    cudaCheckLaunch();
}

template <int HS>
static void backward_hs(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int B,
                        int T, int C, int NH, float scale) {
    int hs = C / NH;
    dim3 grid(cdiv((size_t)T, BWD_BR), (unsigned)(B * NH));
    size_t s1 = kv_smem(hs), s2 = q_smem(hs);
    cuda_smem_optin((const void*)flash_backward_kv_kernel<HS>, s1, "flash_backward_kv");
    cuda_smem_optin((const void*)flash_backward_q_kernel<HS>, s2, "flash_backward_q");
    flash_backward_kv_kernel<HS><<<grid, BWD_BR, s1>>>(dqkv, dout, qkv, lse, D, T, C, NH, scale);
    cudaCheckLaunch();
    flash_backward_q_kernel<HS><<<grid, BWD_BR, s2>>>(dqkv, dout, qkv, lse, D, T, C, NH, scale);
    cudaCheckLaunch();
}

static void check_shape(int B, int T, int C, int NH) {
    if (NH <= 0 || C % NH) fatalf("attention: C=%d is not divisible by NH=%d", C, NH);
    if (C / NH > 128) fatalf("attention: head size %d exceeds the CUDA kernels' limit of 128", C / NH);
    if ((size_t)B * NH > 65535) fatalf("attention: B*NH = %zu exceeds 65535 blocks", (size_t)B * NH);
    (void)T;
}

#define DISPATCH_HS(hs, CALL)                \
    do {                                     \
        if ((hs) <= 16) CALL(16);            \
        else if ((hs) <= 32) CALL(32);       \
        else if ((hs) <= 64) CALL(64);       \
        else CALL(128);                      \
    } while (0)

static void flash_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
    float scale = 1.0f / sqrtf((float)(C / NH));
#define FWD(H) forward_hs<H>(out, lse, qkv, B, T, C, NH, scale)
    DISPATCH_HS(C / NH, FWD);
#undef FWD
}

void attention_forward_cuda(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
    (void)att; // unused on the GPU: see the top of this file
    if (B <= 0 || T <= 0) return;
    check_shape(B, T, C, NH);
    flash_forward(out, NULL, qkv, B, T, C, NH);
}

void attention_backward_cuda(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att,
                             int B, int T, int C, int NH) {
    (void)scratch;
    (void)att;
    if (B <= 0 || T <= 0) return;
    check_shape(B, T, C, NH);
    size_t rows = (size_t)B * NH * T;
    float* o = (float*)cuda_scratch(SCRATCH_ATT_O, (size_t)B * T * C * sizeof(float));
    float* stats = (float*)cuda_scratch(SCRATCH_ATT_STATS, 2 * rows * sizeof(float));
    float* lse = stats;
    float* D = stats + rows;
    flash_forward(o, lse, qkv, B, T, C, NH); // recompute: output and logsumexp
    attention_d_kernel<<<grid_1d(rows), 256>>>(D, dout, o, B, T, C, NH);
    cudaCheckLaunch();
    float scale = 1.0f / sqrtf((float)(C / NH));
#define BWD(H) backward_hs<H>(dqkv, dout, qkv, lse, D, B, T, C, NH, scale)
    DISPATCH_HS(C / NH, BWD);
#undef BWD
}

// ---- generation

__global__ void kv_store_kernel(float* kcache, float* vcache, const float* qkv, const int* seq, const int* pos,
                                int maxT, int C, size_t n) {
    for (size_t x = blockIdx.x * (size_t)blockDim.x + threadIdx.x; x < n; x += (size_t)gridDim.x * blockDim.x) {
        size_t r = x / C;
        int c = (int)(x % C);
        size_t at = ((size_t)seq[r] * maxT + pos[r]) * C + c;
        kcache[at] = qkv[r * 3 * C + C + c];
        vcache[at] = qkv[r * 3 * C + 2 * C + c];
    }
}

void kv_store_cuda(float* kcache, float* vcache, const float* qkv, const int* seq, const int* pos, int R, int maxT,
                   int C) {
    size_t n = (size_t)R * C;
    if (n == 0) return;
    kv_store_kernel<<<grid_1d(n), 256>>>(kcache, vcache, qkv, seq, pos, maxT, C, n);
    cudaCheckLaunch();
}

#define ROWS_THREADS 128

// Block (r, h): scores of row r's query against its cache [0..pos[r]] in
// shared memory, softmax, then the weighted sum of the values.
__global__ void __launch_bounds__(ROWS_THREADS) attention_rows_kernel(float* out, const float* qkv,
                                                                      const float* kcache, const float* vcache,
                                                                      const int* seq, const int* pos, int maxT, int C,
                                                                      int NH, float scale) {
    extern __shared__ float sc[]; // (maxT) scores, then 32 floats for the reductions
    float* red = sc + maxT;
    int r = blockIdx.x, h = blockIdx.y, hs = C / NH;
    const float* q = qkv + (size_t)r * 3 * C + (size_t)h * hs;
    const float* kb = kcache + (size_t)seq[r] * maxT * C + (size_t)h * hs;
    const float* vb = vcache + (size_t)seq[r] * maxT * C + (size_t)h * hs;
    int n = pos[r] + 1;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float* k = kb + (size_t)j * C;
        float s = 0.0f;
        for (int d = 0; d < hs; d++) s += q[d] * k[d];
        sc[j] = s * scale;
        mx = fmaxf(mx, sc[j]);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        sc[j] = expf(sc[j] - mx);
        sum += sc[j];
    }
    sum = block_sum(sum, red); // its __syncthreads also publishes sc[]
    float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < hs; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) acc += sc[j] * inv * vb[(size_t)j * C + d];
        out[(size_t)r * C + (size_t)h * hs + d] = acc;
    }
}

void attention_rows_cuda(float* out, const float* qkv, const float* kcache, const float* vcache, const int* seq,
                         const int* pos, int R, int maxT, int C, int NH) {
    if (R <= 0) return;
    if (NH > 65535) fatalf("attention_rows: %d heads exceed 65535 blocks", NH);
    size_t smem = ((size_t)maxT + 32) * sizeof(float);
    cuda_smem_optin((const void*)attention_rows_kernel, smem, "attention_rows");
    dim3 grid((unsigned)R, (unsigned)NH);
    attention_rows_kernel<<<grid, ROWS_THREADS, smem>>>(out, qkv, kcache, vcache, seq, pos, maxT, C, NH,
                                                        1.0f / sqrtf((float)(C / NH)));
    cudaCheckLaunch();
}
