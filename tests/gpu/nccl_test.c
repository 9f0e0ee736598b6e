// nccl_test.c - the NCCL backend of worker/comm.h on device buffers, one
// GPU per rank (mpirun -np 2 on a machine with 2+ GPUs; test_nccl.sh).
// Every collective is checked against values computed on the host. When
// any rank lacks what it needs (NCCL built in, a GPU of its own) every rank
// prints why ("no CUDA device: ...") and exits 77 = skipped.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/check.h"
#include "kernels/ops.h"
#include "worker/comm.h"
#ifdef RLHFD_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static int g_fails = 0;

static void expect(int rank, const char* what, int ok) {
    if (!ok) {
        g_fails++;
        fprintf(stderr, "rank %d: %s: WRONG\n", rank, what);
    } else if (rank == 0) {
        printf("  %-44s ok\n", what);
    }
}

static int gpus_visible(void) {
#ifdef RLHFD_HAVE_CUDA
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
    return n;
#else
    return 0;
#endif
}

int main(int argc, char** argv) {
    comm_mpi_init(&argc, &argv);
    Parallel par;
    parallel_init(&par, 1, 120.0);
    int me = par.rank, P = par.size;

    char reason[256] = "";
    const Ops* g = NULL;
    if (!comm_nccl_available()) snprintf(reason, sizeof reason, "rlhfd was built without NCCL");
    else if (P < 2) snprintf(reason, sizeof reason, "the NCCL test needs 2+ ranks (mpirun -np 2)");
    else if (!(g = ops_cuda())) snprintf(reason, sizeof reason, "%s", ops_cuda_error());
    else if (gpus_visible() < P)
        snprintf(reason, sizeof reason, "%d ranks need %d GPUs, %d visible", P, P, gpus_visible());
    int ok = reason[0] == '\0';
    comm_allreduce(par.world, &ok, 1, COMM_I32, COMM_MIN); // skip together
    if (!ok) {
        if (me == 0 || reason[0]) printf("no CUDA device: %s\n", reason[0] ? reason : "another rank has none");
        parallel_free(&par);
        comm_mpi_finalize();
        return 77;
    }

    Comm* nc = comm_nccl_create(par.world, ops_cuda_device());
    if (me == 0) printf("== NCCL over %d ranks (device %d on rank 0)\n", P, ops_cuda_device());
    comm_set_phase(nc, "nccl test");
    size_t n = 1000003;
    float* h = mallocCheck(n * P * sizeof(float));
    float* want = mallocCheck(n * P * sizeof(float));
    float* d = g->alloc(n * P * sizeof(float));

    // all-reduce (sum, f32): x[i] = rank + i/2, exact in fp32 at this size
    for (size_t i = 0; i < n; i++) h[i] = (float)me + 0.5f * (float)(i % 4096);
    g->to_device(d, h, n * sizeof(float));
    nc->backend->allreduce(nc, d, n, COMM_F32, COMM_SUM);
    g->to_host(h, d, n * sizeof(float));
    int good = 1;
    for (size_t i = 0; i < n; i++) good &= h[i] == (float)(P * (P - 1) / 2) + P * 0.5f * (float)(i % 4096);
    expect(me, "allreduce f32 sum (1M floats)", good);

    // all-reduce max (f64) and min (i32)
    double* dd = g->alloc(4 * sizeof(double));
    double hd[4] = {me, -me, 10.0 * me, 1.5};
    g->to_device(dd, hd, sizeof hd);
    nc->backend->allreduce(nc, dd, 4, COMM_F64, COMM_MAX);
    g->to_host(hd, dd, sizeof hd);
    expect(me, "allreduce f64 max", hd[0] == P - 1 && hd[1] == 0 && hd[2] == 10.0 * (P - 1) && hd[3] == 1.5);
    int* di = g->alloc(2 * sizeof(int));
    int hi[2] = {me + 5, -me};
    g->to_device(di, hi, sizeof hi);
    nc->backend->allreduce(nc, di, 2, COMM_I32, COMM_MIN);
    g->to_host(hi, di, sizeof hi);
    expect(me, "allreduce i32 min", hi[0] == 5 && hi[1] == -(P - 1));

    // broadcast from the last rank
    for (size_t i = 0; i < n; i++) h[i] = (float)(me * 1000 + (int)(i % 977));
    g->to_device(d, h, n * sizeof(float));
    nc->backend->broadcast(nc, d, n, COMM_F32, P - 1);
    g->to_host(h, d, n * sizeof(float));
    good = 1;
    for (size_t i = 0; i < n; i++) good &= h[i] == (float)((P - 1) * 1000 + (int)(i % 977));
    expect(me, "broadcast f32 from the last rank", good);

    // all-gather, in place (send = recv + rank*n) and from a separate buffer
    for (size_t i = 0; i < n; i++) h[i] = (float)(me * 7) + (float)(i % 100);
    g->zero(d, n * P * sizeof(float));
    g->to_device(d + (size_t)me * n, h, n * sizeof(float));
    comm_allgather(nc, d + (size_t)me * n, d, n, COMM_F32);
    float* hall = mallocCheck(n * P * sizeof(float));
    g->to_host(hall, d, n * P * sizeof(float));
    good = 1;
    for (int r = 0; r < P; r++)
        for (size_t i = 0; i < n; i++) good &= hall[(size_t)r * n + i] == (float)(r * 7) + (float)(i % 100);
    expect(me, "allgather in place", good);
    float* src = g->alloc(n * sizeof(float));
    g->to_device(src, h, n * sizeof(float));
    g->zero(d, n * P * sizeof(float));
    comm_allgather(nc, src, d, n, COMM_F32);
    g->to_host(hall, d, n * P * sizeof(float));
    int good2 = 1;
    for (int r = 0; r < P; r++)
        for (size_t i = 0; i < n; i++) good2 &= hall[(size_t)r * n + i] == (float)(r * 7) + (float)(i % 100);
    expect(me, "allgather from a separate buffer", good2);

    // reduce-scatter: block r of the sum lands on rank r
    for (size_t i = 0; i < n * P; i++) h[i] = (float)(me + 1) * (float)(i % 311);
    g->to_device(d, h, n * P * sizeof(float));
    comm_reduce_scatter(nc, d, src, n, COMM_F32, COMM_SUM);
    g->to_host(want, src, n * sizeof(float));
    good = 1;
    float ranks_sum = (float)(P * (P + 1) / 2);
    for (size_t i = 0; i < n; i++) good &= want[i] == ranks_sum * (float)(((size_t)me * n + i) % 311);
    expect(me, "reduce_scatter f32 sum", good);

    comm_barrier(nc);
    expect(me, "barrier; bytes and wait time accounted", nc->bytes > 0 && nc->wait_seconds > 0.0);

    int fails = g_fails;
    comm_allreduce(par.world, &fails, 1, COMM_I32, COMM_SUM);
    if (me == 0)
        printf("RESULT nccl collectives np%d | %s | allreduce/broadcast/allgather/reduce-scatter exact | %s\n", P,
               fails ? "wrong results (see log)" : "all exact", fails ? "FAIL" : "PASS");
    g->free(d);
    g->free(dd);
    g->free(di);
    g->free(src);
    free(h);
    free(want);
    free(hall);
    nc->backend->destroy(nc);
    parallel_free(&par);
    comm_mpi_finalize();
    return fails ? 1 : 0;
}
