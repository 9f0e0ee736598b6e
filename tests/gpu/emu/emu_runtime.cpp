// emu_runtime.cpp - the CPU emulation of the CUDA pieces kernels/cuda uses
// (see emu.h): fibers for the threads of a block, barriers and warp
// shuffles, guarded device allocations, and a reference cuBLASLt.
#include "emu.h"
#include <map>
#include <string>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

[[noreturn]] static void die(const char* fmt, const char* a = "", long b = 0, long c = 0) {
    fprintf(stderr, "emu: ");
    fprintf(stderr, fmt, a, b, c);
    fprintf(stderr, "\n");
    abort();
}

// ---------------------------------------------------------------------------
// fibers

enum { READY, AT_BARRIER, AT_WARP, DONE };
struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    int lane, warp, state;
};

uint3 blockIdx;
dim3 blockDim, gridDim;
static std::vector<Fiber> g_fibers;
static std::vector<char*> g_stacks;
static const size_t STACK = 256 * 1024;
static ucontext_t g_sched;
static Fiber* g_cur = nullptr;
static std::function<void()>* g_body = nullptr;
static std::vector<char> g_smem;
static double g_slots[1024]; // shuffle values by thread
static const char* g_kernel = "";

const uint3& emu_thread_idx() { return g_cur->tid; }
void* emu_dynamic_smem() { return g_smem.data(); }

static void fiber_main() {
    (*g_body)();
    g_cur->state = DONE;
    swapcontext(&g_cur->ctx, &g_sched);
}

static void yield_as(int state) {
    if (!g_cur) die("__syncthreads or a shuffle outside a kernel");
    g_cur->state = state;
    swapcontext(&g_cur->ctx, &g_sched);
}

void __syncthreads() { yield_as(AT_BARRIER); }

template <typename T>
static T shfl(T v, int lane_mask) {
    int me = (int)(g_cur - g_fibers.data());
    g_slots[me] = (double)v;
    yield_as(AT_WARP); // every lane has written
    int other = g_cur->warp * 32 + (g_cur->lane ^ lane_mask);
    if (other >= (int)g_fibers.size()) die("shuffle with a lane outside the block in %s", g_kernel);
    T r = (T)g_slots[other];
    yield_as(AT_WARP); // every lane has read
    return r;
}
float __shfl_xor_sync(unsigned, float v, int m) { return shfl<float>(v, m); }
double __shfl_xor_sync(unsigned, double v, int m) { return shfl<double>(v, m); }

static std::map<const void*, int> g_smem_optin; // kernel -> bytes allowed

// Device memory is PROT_NONE except inside a kernel, a copy or a GEMM: host
// code that dereferences a device pointer (it would crash on a real GPU, or
// read garbage) faults here too. EMU_NO_PROTECT=1 turns this off.
struct DeviceAccess {
    DeviceAccess();
    ~DeviceAccess();
};

static void run_block(int nthreads) {
    if ((int)g_stacks.size() < nthreads)
        for (int i = (int)g_stacks.size(); i < nthreads; i++) g_stacks.push_back((char*)malloc(STACK));
    g_fibers.assign(nthreads, Fiber());
    for (int i = 0; i < nthreads; i++) {
        Fiber& f = g_fibers[i];
        f.tid.x = i % blockDim.x;
        f.tid.y = (i / blockDim.x) % blockDim.y;
        f.tid.z = i / (blockDim.x * blockDim.y);
        f.lane = i % 32;
        f.warp = i / 32;
        f.state = READY;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = g_stacks[i];
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &g_sched;
        makecontext(&f.ctx, fiber_main, 0);
    }
    int nwarps = (nthreads + 31) / 32;
    while (true) {
        for (auto& f : g_fibers)
            if (f.state == READY) {
                g_cur = &f;
                swapcontext(&g_sched, &f.ctx);
            }
        g_cur = nullptr;
        bool released = false, all_done = true;
        // a warp moves on when all its live lanes wait at the shuffle
        for (int w = 0; w < nwarps; w++) {
            int waiting = 0, live = 0;
            for (int i = w * 32; i < std::min(nthreads, w * 32 + 32); i++) {
                if (g_fibers[i].state != DONE) live++;
                if (g_fibers[i].state == AT_WARP) waiting++;
            }
            if (live && waiting == live) {
                for (int i = w * 32; i < std::min(nthreads, w * 32 + 32); i++) g_fibers[i].state = READY;
                released = true;
            } else if (waiting) {
                // some lanes shuffle while others do not: divergence (or a lane at a barrier)
                for (int i = w * 32; i < std::min(nthreads, w * 32 + 32); i++)
                    if (g_fibers[i].state == AT_BARRIER) die("%s: warp %ld: lanes split between a shuffle and __syncthreads", g_kernel, w);
            }
        }
        if (released) continue;
        int live = 0, at_barrier = 0;
        for (auto& f : g_fibers) {
            if (f.state != DONE) { live++; all_done = false; }
            if (f.state == AT_BARRIER) at_barrier++;
        }
        if (all_done) break;
        if (at_barrier == live) {
            for (auto& f : g_fibers)
                if (f.state == AT_BARRIER) f.state = READY;
            continue;
        }
        die("deadlock in %s: %ld threads at __syncthreads, %ld live (a barrier some threads skip?)", g_kernel,
            at_barrier, live);
    }
}

void emu_launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
    g_kernel = name;
    long nthreads = (long)block.x * block.y * block.z;
    if (nthreads < 1 || nthreads > 1024) die("%s: %ld threads per block (1..1024)", name, nthreads);
    if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535)
        die("%s: bad grid (x %ld, y %ld)", name, (long)grid.x, (long)grid.y);
    if (smem > 48 * 1024) {
        auto it = g_smem_optin.find(kernel);
        if (it == g_smem_optin.end() || (size_t)it->second < smem)
            die("%s: %ld bytes of dynamic shared memory without cudaFuncSetAttribute allowing it (%ld)", name,
                (long)smem, it == g_smem_optin.end() ? 0L : (long)it->second);
    }
    if (smem > 227 * 1024) die("%s: %ld bytes of shared memory exceed an H100's 227 KiB", name, (long)smem);
    gridDim = grid;
    blockDim = block;
    g_body = &body;
    g_smem.assign(smem + 16, (char)0xff); // NaN floats: reading before writing shows
    DeviceAccess open_device;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx.x = x;
                blockIdx.y = y;
                blockIdx.z = z;
                std::fill(g_smem.begin(), g_smem.end(), (char)0xff);
                run_block((int)nthreads);
            }
    g_body = nullptr;
}

// ---------------------------------------------------------------------------
// runtime API

static cudaError_t g_last = cudaSuccess;
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
cudaError_t cudaGetLastError() {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
cudaError_t cudaGetDeviceCount(int* n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulation of a CUDA device");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 1;
    p->totalGlobalMem = (size_t)16 << 30;
    p->sharedMemPerBlockOptin = 227 * 1024;
    return cudaSuccess;
}

// Each allocation ends at a PROT_NONE page: reads or writes past the end fault.
struct Alloc {
    char* base;
    size_t len;
};
static std::map<void*, Alloc> g_allocs;
static int g_open = 0; // nesting of DeviceAccess
static int protect_on() {
    static int on = -1;
    if (on < 0) on = getenv("EMU_NO_PROTECT") ? 0 : 1;
    return on;
}
static void set_access(const Alloc& a, bool rw) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    mprotect(a.base, a.len - page, rw ? PROT_READ | PROT_WRITE : PROT_NONE);
}
DeviceAccess::DeviceAccess() {
    if (protect_on() && g_open++ == 0)
        for (auto& kv : g_allocs) set_access(kv.second, true);
}
DeviceAccess::~DeviceAccess() {
    if (protect_on() && --g_open == 0)
        for (auto& kv : g_allocs) set_access(kv.second, false);
}
cudaError_t cudaMalloc(void** p, size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (n + 15) / 16 * 16;
    size_t len = (body + page - 1) / page * page + page;
    char* base = (char*)mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return cudaErrorMemoryAllocation;
    mprotect(base + len - page, page, PROT_NONE);
    char* user = base + (len - page) - body; // 16-byte aligned, ends at the guard
    memset(user, 0xff, body);                // garbage, as cudaMalloc's
    g_allocs[user] = Alloc{base, len};
    if (protect_on() && g_open == 0) set_access(g_allocs[user], false);
    *p = user;
    return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
    if (!p) return cudaSuccess;
    auto it = g_allocs.find(p);
    if (it == g_allocs.end()) die("cudaFree of a pointer cudaMalloc did not return");
    munmap(it->second.base, it->second.len);
    g_allocs.erase(it);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
    DeviceAccess open_device;
    memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
    DeviceAccess open_device;
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t* f, size_t* t) {
    *f = *t = (size_t)16 << 30;
    return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
    if (value > 227 * 1024) return cudaErrorInvalidValue;
    g_smem_optin[kernel] = value;
    return cudaSuccess;
}

__nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) b.bits = (uint16_t)((u >> 16) | 0x40); // NaN stays NaN
    else b.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);          // round to nearest even
    return b;
}
float emu_bf16_to_float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---------------------------------------------------------------------------
// cuBLASLt: column-major D = alpha op(A) op(B) + beta C

struct EmuLt {};
struct EmuLtDesc {
    cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
};
struct EmuLtLayout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct EmuLtPref {
    uint32_t align[4] = {256, 256, 256, 256}; // cuBLASLt's defaults
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
    *h = new EmuLt();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t c, cudaDataType_t s) {
    if (c != CUBLAS_COMPUTE_32F || s != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    *d = new EmuLtDesc();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a,
                                              const void* buf, size_t n) {
    if (n != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
    if (a == CUBLASLT_MATMUL_DESC_TRANSA) memcpy(&d->ta, buf, n);
    else if (a == CUBLASLT_MATMUL_DESC_TRANSB) memcpy(&d->tb, buf, n);
    else return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t t, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    if (ld < (int64_t)rows || rows == 0 || cols == 0) return CUBLAS_STATUS_INVALID_VALUE; // column-major: ld >= rows
    *l = new EmuLtLayout{t, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
    *p = new EmuLtPref();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a, const void* buf,
                                                    size_t n) {
    if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return n == 8 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    if (a < CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES || a > CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES || n != 4)
        return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&p->align[a - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, 4);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

// op(X) dimensions of a layout
static uint64_t op_rows(const EmuLtLayout* l, cublasOperation_t t) { return t == CUBLAS_OP_N ? l->rows : l->cols; }
static uint64_t op_cols(const EmuLtLayout* l, cublasOperation_t t) { return t == CUBLAS_OP_N ? l->cols : l->rows; }

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t dl, cublasLtMatmulPreference_t p, int want,
                                              cublasLtMatmulHeuristicResult_t* out, int* found) {
    *found = 0;
    if (want < 1) return CUBLAS_STATUS_INVALID_VALUE;
    uint64_t m = dl->rows, n = dl->cols, k = op_cols(a, d->ta);
    if (op_rows(a, d->ta) != m || op_rows(b, d->tb) != k || op_cols(b, d->tb) != n || c->rows != m || c->cols != n)
        return CUBLAS_STATUS_INVALID_VALUE; // shapes that do not chain
    if (a->type != b->type || c->type != CUDA_R_32F || dl->type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    // EMU_LT_NO_BF16=1: no bf16 algorithm, as a real cuBLASLt might answer (tests the fallback)
    if (a->type == CUDA_R_16BF && getenv("EMU_LT_NO_BF16")) return CUBLAS_STATUS_SUCCESS;
    memset(out, 0, sizeof *out);
    memcpy(out->algo.data, p->align, sizeof p->align); // the alignments it was chosen for
    out->state = CUBLAS_STATUS_SUCCESS;
    *found = 1;
    return CUBLAS_STATUS_SUCCESS;
}

static double elem(const void* base, const EmuLtLayout* l, uint64_t r, uint64_t c) {
    size_t at = (size_t)(r + c * (uint64_t)l->ld);
    if (l->type == CUDA_R_16BF) return emu_bf16_to_float(((const __nv_bfloat16*)base)[at]);
    return ((const float*)base)[at];
}

static uint32_t align_of(const void* p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && a % al) al >>= 1;
    return al;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t la, const void* B, cublasLtMatrixLayout_t lb, const void* beta,
                              const void* C, cublasLtMatrixLayout_t lc, void* D, cublasLtMatrixLayout_t ld,
                              const cublasLtMatmulAlgo_t* algo, void*, size_t, cudaStream_t) {
    const uint32_t* want = (const uint32_t*)algo->data;
    const void* ptrs[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++)
        if (align_of(ptrs[i]) < want[i])
            die("cublasLtMatmul: operand %s is %ld-byte aligned, the algorithm was chosen for %ld", i == 0 ? "A" : i == 1 ? "B" : i == 2 ? "C" : "D",
                (long)align_of(ptrs[i]), (long)want[i]);
    uint64_t m = ld->rows, n = ld->cols, k = op_cols(la, d->ta);
    float al = *(const float*)alpha, be = *(const float*)beta;
    DeviceAccess open_device;
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            double acc = 0.0;
            for (uint64_t p = 0; p < k; p++) {
                double x = d->ta == CUBLAS_OP_N ? elem(A, la, i, p) : elem(A, la, p, i);
                double y = d->tb == CUBLAS_OP_N ? elem(B, lb, p, j) : elem(B, lb, j, p);
                acc += x * y;
            }
            double cv = be != 0.0f ? elem(C, lc, i, j) : 0.0; // beta 0: C is not read
            ((float*)D)[i + j * (uint64_t)ld->ld] = (float)(al * acc + be * cv);
        }
    return CUBLAS_STATUS_SUCCESS;
}
