// cuda.h - the CUDA backend's shared pieces: error checks, the device
// context (cuBLASLt handle, matmul precision), grow-on-demand scratch
// buffers, block reductions, and the functions of the Ops table.
// Semantics and shapes of every op are documented once, in kernels/ops.h;
// ops_cuda() (ops_cuda.cu) returns the table.
//
// Every kernel runs on the legacy default stream (stream 0), so kernels,
// cudaMemcpy and the NCCL stream (worker/comm_nccl.c waits on an event of
// stream 0) are ordered without explicit synchronisation; to_host blocks
// until the data is there.
#pragma once
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <math.h>
#include <stddef.h>
extern "C" {
#include "kernels/ops.h"
#include "common/check.h"
}

// ---- errors: a failed CUDA call is fatal, naming the call and the place
void cuda_check(cudaError_t err, const char* what, const char* file, int line);
#define cudaCheck(call) cuda_check((call), #call, __FILE__, __LINE__)
// after a kernel launch: launch errors (bad configuration, no kernel image)
#define cudaCheckLaunch() cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// ---- the device context (context.cu)
// Selects this rank's device and creates the cuBLASLt handle; on failure
// writes the reason to err and returns 0. Called once by ops_cuda().
int cuda_context_init(char* err, size_t cap);
int cuda_device_index(void);           // -1 before cuda_context_init succeeded
int cuda_bf16_enabled(void);            // matmul precision (ops_cuda_set_bf16)
void cuda_set_bf16(int on);
cublasLtHandle_t cuda_lt(void);
void* cuda_lt_workspace(size_t* bytes);
size_t cuda_max_smem_optin(void);       // largest dynamic shared memory a block may ask for

// Scratch buffers, one per slot so that one op's buffers never alias:
// grown on demand (never shrunk), contents undefined between calls.
enum {
    SCRATCH_BF16_A,   // matmul: A converted to bf16
    SCRATCH_BF16_B,   // matmul: B converted to bf16
    SCRATCH_REDUCE,   // partial sums of the deterministic column/total reductions
    SCRATCH_ATT_O,    // attention backward: recomputed forward output (B,T,C)
    SCRATCH_ATT_STATS,// attention backward: logsumexp and D = rowsum(dO * O), (2, B*NH*T)
    SCRATCH_ROWS,     // encoder backward: rows grouped by token (ints)
    SCRATCH_RESULT,   // a few scalars read back by the host (sum_squares)
    SCRATCH_COUNT
};
void* cuda_scratch(int slot, size_t bytes);

// ---- launch shapes
static inline unsigned cdiv(size_t n, size_t d) { return (unsigned)((n + d - 1) / d); }
// grid of a grid-stride loop over n elements with 256-thread blocks
static inline unsigned grid_1d(size_t n) {
    size_t g = (n + 255) / 256;
    return g == 0 ? 1u : (g > (1u << 20) ? (1u << 20) : (unsigned)g);
}

// Raises a kernel's dynamic shared memory limit above the default 48 KiB
// when it needs more (fatal, naming the kernel, if the device has less).
void cuda_smem_optin(const void* kernel, size_t bytes, const char* name);

// ---- block reductions (blockDim.x a multiple of 32, at most 1024).
// shared: 32 elements of scratch; every thread gets the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // shared may still be read by a previous reduction
    if (lane == 0) shared[wid] = v;
    __syncthreads();
    return warp_sum(lane < nw ? shared[lane] : 0.0f);
}
__device__ __forceinline__ float block_max(float v, float* shared) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[wid] = v;
    __syncthreads();
    return warp_max(lane < nw ? shared[lane] : -INFINITY);
}
__device__ __forceinline__ double block_sum_d(double v, double* shared) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) shared[wid] = v;
    __syncthreads();
    return warp_sum_d(lane < nw ? shared[lane] : 0.0);
}

// ---- shared helpers of the kernels
// dst (C) += column sums of src (N,C), rows summed in a fixed order: deterministic.
void colsum_add_cuda(float* dst, const float* src, int N, int C);
// dst[key[r]] (K rows of C) += src[r] for every r with 0 <= key[r] < K; keys on
// the host. The rows of one key are added in ascending r, one at a time, as the
// CPU backend does: the same sums, bit for bit, and no atomics.
void scatter_add_rows_cuda(float* dst, const float* src, const int* keys_host, int R, int C, int K);

// ---- the Ops table's functions
void* cuda_alloc(size_t bytes);
void cuda_free(void* p);
void cuda_to_device(void* dst, const void* src, size_t bytes);
void cuda_to_host(void* dst, const void* src, size_t bytes);
void cuda_zero(void* p, size_t bytes);

void encoder_forward_cuda(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C);
void encoder_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C);
void encoder_rows_cuda(float* out, const int* tok, const int* pos, const float* wte, const float* wpe, int R, int C);
void encoder_shard_forward_cuda(float* out, const int* tok, const int* pos, const float* wte, const float* wpe,
                                int v0, int Vl, int R, int C);
void encoder_shard_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* tok, const int* pos,
                                 int v0, int Vl, int R, int C);
void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* w,
                            const float* b, int N, int C);
void layernorm_backward_cuda(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                             const float* w, const float* mean, const float* rstd, int N, int C);
void matmul_forward_cuda(float* out, const float* inp, const float* w, const float* bias, int N, int C, int OC);
void matmul_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                          const float* w, int N, int C, int OC);
void attention_forward_cuda(float* out, float* att, const float* qkv, int B, int T, int C, int NH);
void attention_backward_cuda(float* dqkv, float* scratch, const float* dout, const float* qkv,
                             const float* att, int B, int T, int C, int NH);
void kv_store_cuda(float* kcache, float* vcache, const float* qkv, const int* seq, const int* pos, int R,
                   int maxT, int C);
void attention_rows_cuda(float* out, const float* qkv, const float* kcache, const float* vcache,
                         const int* seq, const int* pos, int R, int maxT, int C, int NH);
void gelu_forward_cuda(float* out, const float* inp, size_t n);
void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, size_t n);
void residual_forward_cuda(float* out, const float* a, const float* b, size_t n);
void residual_backward_cuda(float* da, float* db, const float* dout, size_t n);
void crossentropy_forward_cuda(float* losses, const float* logits, const int* targets, int N, int V);
void crossentropy_backward_cuda(float* dlogits, const float* logits, const float* losses, const float* dlosses,
                                const int* targets, int N, int V);
void crossentropy_shard_stats_cuda(float* stats, const float* logits, const int* targets, int v0, int Vl, int N,
                                   int Vp);
void crossentropy_shard_backward_cuda(float* dlogits, const float* logits, const float* lse, const float* dlosses,
                                      const int* targets, int v0, int Vl, int N, int Vp);
double sum_squares_cuda(const float* x, size_t n);
void scale_cuda(float* x, float s, size_t n);
void adamw_update_cuda(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, float grad_scale, int t);
