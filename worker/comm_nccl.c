// comm_nccl.c - the NCCL backend of worker/comm.h: collectives on device
// buffers (the CUDA backend's memory), built only with CUDA + NCCL
// (RLHFD_HAVE_NCCL; comm_mpi.c has the stubs otherwise).
//
// Bootstrap: rank 0 of the MPI communicator `over` makes the ncclUniqueId,
// broadcasts it over MPI, and every rank joins with ncclCommInitRank.
// Each communicator has its own CUDA stream. A collective first waits (an
// event) for the work already queued on the compute stream (stream 0, where
// every kernel of kernels/cuda runs), then runs on its stream, and the call
// returns once it is done -- the same blocking semantics as the MPI backend.
// The wait polls cudaStreamQuery and ncclCommGetAsyncError against
// Comm.timeout_s: past the deadline, or on an asynchronous NCCL error, the
// communicator is aborted (ncclCommAbort) with a message naming the rank,
// the communicator, the operation and the phase, and the job ends.
//
// libnccl is loaded with dlopen when the first communicator is made, so a
// binary built with NCCL still starts on a machine without it (single GPU,
// CPU runs): only comm_nccl_create needs it, and says so if it is missing.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include "comm.h"
#include "../common/check.h"

#ifndef RLHFD_NCCL_PATH
#define RLHFD_NCCL_PATH "libnccl.so"
#endif

// ---- the library, resolved once
static struct {
    void* lib;
    __typeof__(ncclGetUniqueId)* get_unique_id;
    __typeof__(ncclCommInitRank)* comm_init_rank;
    __typeof__(ncclCommDestroy)* comm_destroy;
    __typeof__(ncclCommAbort)* comm_abort;
    __typeof__(ncclCommGetAsyncError)* get_async_error;
    __typeof__(ncclGetErrorString)* get_error_string;
    __typeof__(ncclAllReduce)* all_reduce;
    __typeof__(ncclBroadcast)* broadcast;
    __typeof__(ncclAllGather)* all_gather;
    __typeof__(ncclReduceScatter)* reduce_scatter;
} N;

static void* nccl_sym(const char* name) {
    void* p = dlsym(N.lib, name);
    if (!p) fatalf("NCCL: the loaded libnccl has no %s (too old? rlhfd was built against NCCL %d.%d)", name,
                   NCCL_MAJOR, NCCL_MINOR);
    return p;
}

static void nccl_load(void) {
    if (N.lib) return;
    // the loader's path first (LD_LIBRARY_PATH, ldconfig), then where the build found it
    const char* names[] = {"libnccl.so.2", "libnccl.so", RLHFD_NCCL_PATH};
    const char* err = "";
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !N.lib; i++) {
        N.lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
        if (!N.lib) err = dlerror();
    }
    if (!N.lib)
        fatalf("NCCL: cannot load libnccl.so.2 (%s): install NCCL or add its directory to LD_LIBRARY_PATH", err);
    N.get_unique_id = (__typeof__(N.get_unique_id))nccl_sym("ncclGetUniqueId");
    N.comm_init_rank = (__typeof__(N.comm_init_rank))nccl_sym("ncclCommInitRank");
    N.comm_destroy = (__typeof__(N.comm_destroy))nccl_sym("ncclCommDestroy");
    N.comm_abort = (__typeof__(N.comm_abort))nccl_sym("ncclCommAbort");
    N.get_async_error = (__typeof__(N.get_async_error))nccl_sym("ncclCommGetAsyncError");
    N.get_error_string = (__typeof__(N.get_error_string))nccl_sym("ncclGetErrorString");
    N.all_reduce = (__typeof__(N.all_reduce))nccl_sym("ncclAllReduce");
    N.broadcast = (__typeof__(N.broadcast))nccl_sym("ncclBroadcast");
    N.all_gather = (__typeof__(N.all_gather))nccl_sym("ncclAllGather");
    N.reduce_scatter = (__typeof__(N.reduce_scatter))nccl_sym("ncclReduceScatter");
}

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;  // this communicator's collectives
    cudaEvent_t ready;    // recorded on the compute stream before each collective
    float* barrier_buf;   // one float on the device (barrier = tiny all-reduce)
    int device;
} NcclImpl;

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Ends the job after a failed or timed-out collective: abort the NCCL
// communicator first so no kernel of it keeps the GPU busy.
__attribute__((noreturn)) static void nccl_fail(Comm* c, const char* what, const char* why) {
    NcclImpl* n = c->impl;
    fprintf(stderr, "rlhfd: rank %d: NCCL %s on communicator '%s' (%d ranks) in phase '%s': %s; aborting the job\n",
            c->world_rank, what, c->name, c->size, c->phase ? c->phase : "?", why);
    fflush(stderr);
    if (n && n->comm) N.comm_abort(n->comm);
    comm_mpi_abort(1);
    exit(1); // comm_mpi_abort does not return; this tells the compiler
}

static void nccl_call(Comm* c, const char* what, ncclResult_t r) {
    if (r != ncclSuccess && r != ncclInProgress) nccl_fail(c, what, N.get_error_string(r));
}

// Blocks until the communicator's stream is idle, or the deadline passes.
// Spins briefly, then sleeps in growing steps (as comm_mpi.c's wait).
static void nccl_wait(Comm* c, const char* what, size_t bytes) {
    NcclImpl* n = c->impl;
    double t0 = wall_now();
    long sleep_ns = 1000;
    int spins = 0;
    while (1) {
        cudaError_t e = cudaStreamQuery(n->stream);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) nccl_fail(c, what, cudaGetErrorString(e));
        ncclResult_t ae = ncclSuccess;
        if (N.get_async_error(n->comm, &ae) == ncclSuccess && ae != ncclSuccess && ae != ncclInProgress)
            nccl_fail(c, what, N.get_error_string(ae));
        if (++spins < 2000) continue;
        double waited = wall_now() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s) {
            char why[160];
            snprintf(why, sizeof why,
                     "timed out after %.0f s: another rank stopped answering (died, hung or is far slower); "
                     "parallel.timeout sets this limit", waited);
            nccl_fail(c, what, why);
        }
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 2000000) sleep_ns *= 2;
    }
    c->wait_seconds += wall_now() - t0;
    c->bytes += bytes;
}

// The collective waits for the kernels already queued on the compute stream.
static void nccl_begin(Comm* c, const char* what) {
    NcclImpl* n = c->impl;
    cudaError_t e = cudaEventRecord(n->ready, 0);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(n->stream, n->ready, 0);
    if (e != cudaSuccess) nccl_fail(c, what, cudaGetErrorString(e));
}

static ncclDataType_t nccl_type(CommType t) {
    switch (t) {
    case COMM_F32: return ncclFloat32;
    case COMM_F64: return ncclFloat64;
    case COMM_I32: return ncclInt32;
    case COMM_I64: return ncclInt64;
    case COMM_U8: return ncclUint8;
    }
    return ncclUint8;
}

static ncclRedOp_t nccl_op(CommOp op) {
    switch (op) {
    case COMM_SUM: return ncclSum;
    case COMM_MAX: return ncclMax;
    case COMM_MIN: return ncclMin;
    }
    return ncclSum;
}

static void nccl_allreduce(Comm* c, void* buf, size_t count, CommType t, CommOp op) {
    NcclImpl* n = c->impl;
    nccl_begin(c, "allreduce");
    nccl_call(c, "allreduce", N.all_reduce(buf, buf, count, nccl_type(t), nccl_op(op), n->comm, n->stream));
    nccl_wait(c, "allreduce", count * comm_type_size(t));
}

static void nccl_broadcast(Comm* c, void* buf, size_t count, CommType t, int root) {
    NcclImpl* n = c->impl;
    nccl_begin(c, "broadcast");
    nccl_call(c, "broadcast", N.broadcast(buf, buf, count, nccl_type(t), root, n->comm, n->stream));
    nccl_wait(c, "broadcast", count * comm_type_size(t));
}

// send may be recv + rank*count (NCCL's in-place all-gather)
static void nccl_allgather(Comm* c, const void* send, void* recv, size_t count, CommType t) {
    NcclImpl* n = c->impl;
    nccl_begin(c, "allgather");
    nccl_call(c, "allgather", N.all_gather(send, recv, count, nccl_type(t), n->comm, n->stream));
    nccl_wait(c, "allgather", count * comm_type_size(t) * (size_t)c->size);
}

static void nccl_reduce_scatter(Comm* c, const void* send, void* recv, size_t count, CommType t, CommOp op) {
    NcclImpl* n = c->impl;
    nccl_begin(c, "reduce-scatter");
    nccl_call(c, "reduce-scatter",
              N.reduce_scatter(send, recv, count, nccl_type(t), nccl_op(op), n->comm, n->stream));
    nccl_wait(c, "reduce-scatter", count * comm_type_size(t) * (size_t)c->size);
}

static void nccl_barrier(Comm* c) {
    NcclImpl* n = c->impl;
    nccl_begin(c, "barrier");
    nccl_call(c, "barrier", N.all_reduce(n->barrier_buf, n->barrier_buf, 1, ncclFloat32, ncclSum, n->comm, n->stream));
    nccl_wait(c, "barrier", 0);
}

static void nccl_destroy(Comm* c) {
    if (!c) return;
    NcclImpl* n = c->impl;
    if (n) {
        cudaStreamSynchronize(n->stream);
        N.comm_destroy(n->comm);
        cudaStreamDestroy(n->stream);
        cudaEventDestroy(n->ready);
        cudaFree(n->barrier_buf);
        free(n);
    }
    free(c);
}

static const CommBackend NCCL_BACKEND = {
    .name = "nccl",
    .allreduce = nccl_allreduce,
    .broadcast = nccl_broadcast,
    .allgather = nccl_allgather,
    .reduce_scatter = nccl_reduce_scatter,
    .barrier = nccl_barrier,
    .destroy = nccl_destroy,
};

int comm_nccl_available(void) { return 1; }

Comm* comm_nccl_create(Comm* over, int device) {
    if (!over) fatalf("comm_nccl_create: needs the MPI communicator to bootstrap over");
    nccl_load();
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        fatalf("NCCL: rank %d cannot use CUDA device %d: %s", over->world_rank, device, cudaGetErrorString(e));
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (over->rank == 0) {
        ncclResult_t r = N.get_unique_id(&id);
        if (r != ncclSuccess) fatalf("NCCL: ncclGetUniqueId failed: %s", N.get_error_string(r));
    }
    const char* old = comm_set_phase(over, "NCCL bootstrap");
    comm_broadcast(over, &id, sizeof id, COMM_U8, 0);
    comm_set_phase(over, old);

    NcclImpl* n = callocCheck(1, sizeof(NcclImpl));
    n->device = device;
    ncclResult_t r = N.comm_init_rank(&n->comm, over->size, id, over->rank);
    if (r != ncclSuccess)
        fatalf("NCCL: rank %d of '%s' could not join (ncclCommInitRank: %s)", over->rank, over->name,
               N.get_error_string(r));
    if ((e = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&n->ready, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaMalloc((void**)&n->barrier_buf, sizeof(float))) != cudaSuccess)
        fatalf("NCCL: CUDA setup of communicator '%s' failed: %s", over->name, cudaGetErrorString(e));

    Comm* c = callocCheck(1, sizeof(Comm));
    c->rank = over->rank;
    c->size = over->size;
    c->backend = &NCCL_BACKEND;
    c->impl = n;
    c->name = over->name;
    c->world_rank = over->world_rank;
    c->timeout_s = over->timeout_s;
    c->phase = "setup";
    return c;
}
