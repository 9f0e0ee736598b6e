// matmul.cu - linear layers through cuBLASLt. Weights are (OC, C) like
// nn.Linear, all buffers row-major fp32.
//
// Precision (ops_cuda_set_bf16): fp32 mode is exact fp32 (CUBLAS_COMPUTE_32F,
// no TF32), for checks against the CPU; bf16 mode rounds both inputs to
// bf16 (copies in scratch buffers) and multiplies on the tensor cores with
// fp32 accumulation and fp32 output, so everything outside the matmuls
// (weights, activations, gradients, AdamW) stays fp32: fp32 master weights.
//
// cuBLASLt is column-major; a row-major (R, K) matrix is the column-major
// (K, R) one with ld = K, so each product below is written transposed.
#include <stdint.h>
#include <stdio.h>
#include <cuda_bf16.h>
#include "kernels/cuda/cuda.h"

static void lt_check(cublasStatus_t st, const char* what) {
    if (st != CUBLAS_STATUS_SUCCESS) fatalf("cuBLASLt %s failed (status %d)", what, (int)st);
}

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic
// assumes 256-byte aligned buffers unless told otherwise, and our operands
// are often slices of one big buffer.
static uint32_t alignment_of(const void* p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 4 && (a % al) != 0) al >>= 1;
    return al;
}

__global__ void to_bf16_kernel(__nv_bfloat16* dst, const float* src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]); // round to nearest even
}

static const void* as_bf16(const float* src, size_t n, int slot) {
    __nv_bfloat16* dst = (__nv_bfloat16*)cuda_scratch(slot, n * sizeof(__nv_bfloat16));
    to_bf16_kernel<<<grid_1d(n), 256>>>(dst, src, n);
    cudaCheckLaunch();
    return dst;
}

// Column-major D (m,n) = op(A) (m,k) @ op(B) (k,n) + beta * D, A and B in
// in_type (fp32, or bf16 copies). A is stored (m,k) if !ta else (k,m), with
// leading dimension lda; same for B; both dense. Returns 0, doing nothing,
// when cuBLASLt has no algorithm for it.
static int lt_try(cudaDataType_t in_type, int ta, int tb, int m, int n, int k, const void* a, int lda, const void* b,
                  int ldb, float* D, int ldd, float beta) {
    cublasLtMatmulDesc_t op;
    lt_check(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    lt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa), "set TRANSA");
    lt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb), "set TRANSB");
    cublasLtMatrixLayout_t la, lb, ld;
    lt_check(cublasLtMatrixLayoutCreate(&la, in_type, ta ? k : m, ta ? m : k, lda), "layout A");
    lt_check(cublasLtMatrixLayoutCreate(&lb, in_type, tb ? n : k, tb ? k : n, ldb), "layout B");
    lt_check(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, ldd), "layout D");
    size_t ws_bytes = 0;
    void* ws = cuda_lt_workspace(&ws_bytes);
    cublasLtMatmulPreference_t pref;
    lt_check(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
    uint64_t ws64 = ws_bytes;
    lt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws64, sizeof ws64),
             "set workspace");
    uint32_t al_a = alignment_of(a), al_b = alignment_of(b), al_d = alignment_of(D);
    lt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a),
             "set alignment A");
    lt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b),
             "set alignment B");
    lt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d),
             "set alignment C");
    lt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d),
             "set alignment D");
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cuda_lt(), op, la, lb, ld, ld, pref, 1, &heur, &found);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
        float alpha = 1.0f;
        lt_check(cublasLtMatmul(cuda_lt(), op, &alpha, a, la, b, lb, &beta, D, ld, D, ld, &heur.algo, ws, ws_bytes, 0),
                 "Matmul");
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
    return st == CUBLAS_STATUS_SUCCESS && found > 0;
}

static void lt_matmul(int ta, int tb, int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* D,
                      int ldd, float beta) {
    if (m == 0 || n == 0) return;
    if (cuda_bf16_enabled()) {
        const void* a = as_bf16(A, (size_t)m * k, SCRATCH_BF16_A);
        const void* b = as_bf16(B, (size_t)k * n, SCRATCH_BF16_B);
        if (lt_try(CUDA_R_16BF, ta, tb, m, n, k, a, lda, b, ldb, D, ldd, beta)) return;
        // never silently: this shape runs in fp32 (slower, more exact)
        static int warned = 0;
        if (!warned++)
            fprintf(stderr, "rlhfd: warning: cuBLASLt has no bf16 algorithm for a matmul m=%d n=%d k=%d "
                            "(alignment %u/%u bytes); such matmuls run in fp32\n", m, n, k, alignment_of(A),
                    alignment_of(D));
    }
    if (!lt_try(CUDA_R_32F, ta, tb, m, n, k, A, lda, B, ldb, D, ldd, beta))
        fatalf("cuBLASLt has no fp32 algorithm for a matmul m=%d n=%d k=%d (trans %d%d, alignment %u/%u/%u bytes)", m,
               n, k, ta, tb, alignment_of(A), alignment_of(B), alignment_of(D));
}

// out (N,OC) = bias broadcast over the rows
__global__ void bias_rows_kernel(float* out, const float* bias, int OC, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = bias[i % OC];
}

// out (N,OC) = inp (N,C) @ w (OC,C)^T + bias (OC)
// column-major: out^T (OC,N) = w^T (OC,C: w stored (C,OC), transposed) @ inp^T (C,N)
void matmul_forward_cuda(float* out, const float* inp, const float* w, const float* bias, int N, int C, int OC) {
    float beta = 0.0f;
    if (bias) {
        // start from the bias and let the GEMM accumulate, as the CPU backend
        size_t n = (size_t)N * OC;
        bias_rows_kernel<<<grid_1d(n), 256>>>(out, bias, OC, n);
        cudaCheckLaunch();
        beta = 1.0f;
    }
    lt_matmul(1, 0, OC, N, C, w, C, inp, C, out, OC, beta);
}

// dinp (N,C) += dout (N,OC) @ w (OC,C)   column-major: dinp^T (C,N) += w^T... = W (C,OC) @ dout^T (OC,N)
// dw (OC,C) += dout^T @ inp              column-major: dw^T (C,OC) += inp^T (C,N) @ dout (N,OC)
// dbias (OC) += column sums of dout
void matmul_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout, const float* inp, const float* w,
                          int N, int C, int OC) {
    if (dinp) lt_matmul(0, 0, C, N, OC, w, C, dout, OC, dinp, C, 1.0f);
    if (dw) lt_matmul(0, 1, C, OC, N, inp, C, dout, OC, dw, C, 1.0f);
    if (dbias) colsum_add_cuda(dbias, dout, N, OC);
}
