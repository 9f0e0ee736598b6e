// context.cu - the CUDA backend's device context: which GPU this rank
// uses, the cuBLASLt handle and workspace, the matmul precision, scratch
// buffers, and device memory (the Ops table's alloc/free/copies).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/cuda/cuda.h"

static int g_device = -1;
static int g_bf16 = 0;
static cublasLtHandle_t g_lt = NULL;
static void* g_lt_ws = NULL;
static const size_t LT_WORKSPACE = (size_t)32 << 20; // cuBLAS's advice for Hopper
static size_t g_smem_optin = 48 * 1024;
static void* g_scratch[SCRATCH_COUNT];
static size_t g_scratch_bytes[SCRATCH_COUNT];

void cuda_check(cudaError_t err, const char* what, const char* file, int line) {
    if (err == cudaSuccess) return;
    fatalf("CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(err), cudaGetErrorString(err), what, file, line);
}

// One GPU per rank: the local rank as the launcher tells it (Open MPI,
// MPICH/Hydra, Slurm, torchrun-style), modulo the visible devices.
static int local_rank(void) {
    const char* vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char* v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

int cuda_context_init(char* err, size_t cap) {
    // Without a driver cudaGetDeviceCount fails (cudaErrorInsufficientDriver)
    // and leaves count untouched: start from 0.
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(err, cap, "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        cudaGetLastError(); // clear the sticky error for later calls
        return 0;
    }
    if (count <= 0) {
        snprintf(err, cap, "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)");
        return 0;
    }
    int dev = local_rank() % count;
    if ((e = cudaSetDevice(dev)) != cudaSuccess) {
        snprintf(err, cap, "cannot use device %d: %s", dev, cudaGetErrorString(e));
        cudaGetLastError();
        return 0;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, dev));
    // built for sm_90 machine code and compute_75 PTX (JIT-compiled elsewhere)
    if (prop.major * 10 + prop.minor < 75) {
        snprintf(err, cap, "device %d (%s) has compute capability %d.%d; rlhfd needs 7.5 or newer", dev, prop.name,
                 prop.major, prop.minor);
        return 0;
    }
    cublasStatus_t st = cublasLtCreate(&g_lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, cap, "cublasLtCreate failed (status %d)", (int)st);
        return 0;
    }
    cudaCheck(cudaMalloc(&g_lt_ws, LT_WORKSPACE));
    g_smem_optin = (size_t)prop.sharedMemPerBlockOptin;
    g_device = dev;
    fprintf(stderr, "rlhfd: CUDA device %d of %d: %s (sm_%d%d, %.0f GiB, %d SMs)\n", dev, count, prop.name,
            prop.major, prop.minor, (double)prop.totalGlobalMem / (1 << 30), prop.multiProcessorCount);
    return 1;
}

int cuda_device_index(void) { return g_device; }
int cuda_bf16_enabled(void) { return g_bf16; }
void cuda_set_bf16(int on) { g_bf16 = on ? 1 : 0; }
cublasLtHandle_t cuda_lt(void) { return g_lt; }
void* cuda_lt_workspace(size_t* bytes) {
    *bytes = LT_WORKSPACE;
    return g_lt_ws;
}
size_t cuda_max_smem_optin(void) { return g_smem_optin; }

void cuda_smem_optin(const void* kernel, size_t bytes, const char* name) {
    if (bytes <= 48 * 1024) return;
    if (bytes > g_smem_optin)
        fatalf("CUDA kernel %s needs %zu bytes of shared memory; this device allows %zu per block (a smaller "
               "head size or context would fit)", name, bytes, g_smem_optin);
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

void* cuda_scratch(int slot, size_t bytes) {
    if (bytes <= g_scratch_bytes[slot]) return g_scratch[slot];
    if (g_scratch[slot]) {
        cudaCheck(cudaDeviceSynchronize()); // a kernel may still read the old buffer
        cudaCheck(cudaFree(g_scratch[slot]));
    }
    size_t n = bytes + bytes / 4; // slack: shapes grow a little at a time (generation)
    cudaError_t e = cudaMalloc(&g_scratch[slot], n);
    if (e != cudaSuccess) fatalf("out of GPU memory: %zu bytes of scratch (%s)", n, cudaGetErrorString(e));
    g_scratch_bytes[slot] = n;
    return g_scratch[slot];
}

// ---- device memory

void* cuda_alloc(size_t bytes) {
    void* p = NULL;
    size_t n = bytes ? bytes : 256; // never NULL, as the CPU backend
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        fatalf("out of GPU memory allocating %zu bytes (%.2f of %.2f GiB free): %s", bytes,
               (double)free_b / (1 << 30), (double)total_b / (1 << 30), cudaGetErrorString(e));
    }
    cudaCheck(cudaMemset(p, 0, n));
    return p;
}

void cuda_free(void* p) {
    if (p) cudaCheck(cudaFree(p));
}

void cuda_to_device(void* dst, const void* src, size_t bytes) {
    if (bytes) cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void cuda_to_host(void* dst, const void* src, size_t bytes) {
    if (bytes) cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void cuda_zero(void* p, size_t bytes) {
    if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, 0));
}
