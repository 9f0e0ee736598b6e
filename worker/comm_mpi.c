// comm_mpi.c - the MPI backend of worker/comm.h, the world's dp x tp split,
// and the control plane's byte messages.
//
// Collectives are started non-blocking (MPI_Iallreduce, ...) and waited on
// with MPI_Test against a deadline: a rank that died or hangs makes the
// others abort with a message naming the phase, instead of blocking forever.
#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "comm.h"
#include "../common/check.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define LSAN_IGNORE_BEGIN() __lsan_disable()
#define LSAN_IGNORE_END() __lsan_enable()
#else
#define LSAN_IGNORE_BEGIN() ((void)0)
#define LSAN_IGNORE_END() ((void)0)
#endif

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t comm_type_size(CommType type) {
    switch (type) {
    case COMM_F32: return 4;
    case COMM_F64: return 8;
    case COMM_I32: return 4;
    case COMM_I64: return 8;
    case COMM_U8: return 1;
    }
    return 1;
}

const char* comm_set_phase(Comm* c, const char* phase) {
    if (!c) return NULL;
    const char* old = c->phase;
    c->phase = phase;
    return old;
}

void comm_allgather(Comm* c, const void* send, void* recv, size_t n, CommType t) {
    if (!c || c->size == 1) {
        if (send != recv) memmove(recv, send, n * comm_type_size(t));
        return;
    }
    c->backend->allgather(c, send, recv, n, t);
}

void comm_reduce_scatter(Comm* c, const void* send, void* recv, size_t n, CommType t, CommOp op) {
    if (!c || c->size == 1) {
        if (send != recv) memmove(recv, send, n * comm_type_size(t));
        return;
    }
    c->backend->reduce_scatter(c, send, recv, n, t, op);
}

// ---- MPI backend

static MPI_Datatype mpi_type(CommType t) {
    switch (t) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I32: return MPI_INT32_T;
    case COMM_I64: return MPI_INT64_T;
    case COMM_U8: return MPI_UINT8_T;
    }
    return MPI_BYTE;
}

static MPI_Op mpi_op(CommOp op) {
    switch (op) {
    case COMM_SUM: return MPI_SUM;
    case COMM_MAX: return MPI_MAX;
    case COMM_MIN: return MPI_MIN;
    }
    return MPI_SUM;
}

static MPI_Comm mpi_comm_of(const Comm* c) { return *(MPI_Comm*)c->impl; }

enum { TAG_ROLLCALL = 7201, TAG_ROLLCALL_REPLY = 7202 };

// While a rank waits in a collective it answers roll calls: a rank whose
// wait timed out asks every other rank of the communicator who is alive.
static void answer_roll_calls(Comm* c) {
    MPI_Comm mc = *(MPI_Comm*)c->impl;
    int flag = 1;
    while (flag) {
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_ROLLCALL, mc, &flag, &st);
        if (!flag) break;
        int ping = 0;
        MPI_Recv(&ping, 1, MPI_INT, st.MPI_SOURCE, TAG_ROLLCALL, mc, MPI_STATUS_IGNORE);
        int me = c->rank;
        MPI_Request r;
        MPI_Isend(&me, 1, MPI_INT, st.MPI_SOURCE, TAG_ROLLCALL_REPLY, mc, &r);
        MPI_Request_free(&r);
    }
}

// After a timeout: asks every other rank of c who is alive, waits up to 2 s
// and writes the ranks that did not answer into out.
static void roll_call(Comm* c, char* out, size_t cap) {
    MPI_Comm mc = *(MPI_Comm*)c->impl;
    int n = c->size, ping = 1;
    int* alive = callocCheck((size_t)n, sizeof(int));
    int* reply = callocCheck((size_t)n, sizeof(int));
    MPI_Request* rq = mallocCheck((size_t)n * sizeof(MPI_Request));
    for (int r = 0; r < n; r++) {
        rq[r] = MPI_REQUEST_NULL;
        if (r == c->rank) continue;
        MPI_Request s;
        MPI_Isend(&ping, 1, MPI_INT, r, TAG_ROLLCALL, mc, &s);
        MPI_Request_free(&s);
        MPI_Irecv(&reply[r], 1, MPI_INT, r, TAG_ROLLCALL_REPLY, mc, &rq[r]);
    }
    double t0 = wall_now();
    while (wall_now() - t0 < 2.0) {
        answer_roll_calls(c); // others may be calling the roll at the same time
        for (int r = 0; r < n; r++) {
            if (r == c->rank || alive[r]) continue;
            MPI_Test(&rq[r], &alive[r], MPI_STATUS_IGNORE);
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    size_t len = 0;
    int count = 0;
    out[0] = '\0';
    MPI_Group g, gw;
    MPI_Comm_group(mc, &g);
    MPI_Comm_group(MPI_COMM_WORLD, &gw);
    for (int r = 0; r < n; r++) {
        if (r == c->rank || alive[r] || len + 16 >= cap) continue;
        int wr = r;
        MPI_Group_translate_ranks(g, 1, &r, gw, &wr); // name them by world rank
        len += (size_t)snprintf(out + len, cap - len, "%srank %d", count++ ? ", " : "", wr);
    }
    MPI_Group_free(&g);
    MPI_Group_free(&gw);
    if (!count) snprintf(out, cap, "none (every rank answered: a rank may be waiting on another communicator)");
    free(alive);
    free(reply);
    free(rq); // requests still pending are abandoned: the job is aborting
}

// Waits for req until it completes or c->timeout_s passes (then aborts the job
// naming the ranks that no longer answer). Spins briefly (collectives on one
// node finish in microseconds), then sleeps in growing steps so a long wait
// does not burn a core another rank needs.
static void wait_request(Comm* c, MPI_Request* req, const char* what, size_t bytes) {
    double t0 = wall_now();
    int done = 0, spins = 0;
    long sleep_ns = 1000;
    while (1) {
        int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            fprintf(stderr, "rlhfd: rank %d: MPI %s on '%s' failed (phase %s)\n", c->world_rank, what,
                    c->name, c->phase ? c->phase : "?");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (done) break;
        if (++spins < 2000) continue;
        answer_roll_calls(c);
        double waited = wall_now() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s) {
            char missing[512];
            roll_call(c, missing, sizeof missing);
            fprintf(stderr,
                    "rlhfd: rank %d: %s on communicator '%s' (%d ranks) timed out after %.0f s in phase '%s'; "
                    "not answering: %s (died, hung or far slower); aborting the job "
                    "(parallel.timeout sets this limit)\n",
                    c->world_rank, what, c->name, c->size, waited, c->phase ? c->phase : "?", missing);
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 2000000) sleep_ns *= 2;
    }
    c->wait_seconds += wall_now() - t0;
    c->bytes += bytes;
}

static int count_int(size_t n) {
    if (n > (size_t)0x7fffffff) fatalf("comm: message of %zu elements is too large for MPI", n);
    return (int)n;
}

static void mpi_allreduce(Comm* c, void* buf, size_t n, CommType t, CommOp op) {
    MPI_Request req;
    MPI_Iallreduce(MPI_IN_PLACE, buf, count_int(n), mpi_type(t), mpi_op(op), mpi_comm_of(c), &req);
    wait_request(c, &req, "allreduce", n * comm_type_size(t));
}

static void mpi_broadcast(Comm* c, void* buf, size_t n, CommType t, int root) {
    MPI_Request req;
    MPI_Ibcast(buf, count_int(n), mpi_type(t), root, mpi_comm_of(c), &req);
    wait_request(c, &req, "broadcast", n * comm_type_size(t));
}

static void mpi_allgather(Comm* c, const void* send, void* recv, size_t n, CommType t) {
    MPI_Request req;
    const void* s = send == (const char*)recv + (size_t)c->rank * n * comm_type_size(t) ? MPI_IN_PLACE : send;
    MPI_Iallgather(s, count_int(n), mpi_type(t), recv, count_int(n), mpi_type(t), mpi_comm_of(c), &req);
    wait_request(c, &req, "allgather", n * comm_type_size(t) * (size_t)c->size);
}

static void mpi_reduce_scatter(Comm* c, const void* send, void* recv, size_t n, CommType t, CommOp op) {
    MPI_Request req;
    MPI_Ireduce_scatter_block(send, recv, count_int(n), mpi_type(t), mpi_op(op), mpi_comm_of(c), &req);
    wait_request(c, &req, "reduce-scatter", n * comm_type_size(t) * (size_t)c->size);
}

static void mpi_barrier(Comm* c) {
    MPI_Request req;
    MPI_Ibarrier(mpi_comm_of(c), &req);
    wait_request(c, &req, "barrier", 0);
}

static void mpi_destroy(Comm* c) {
    if (!c) return;
    MPI_Comm* mc = c->impl;
    if (*mc != MPI_COMM_WORLD && *mc != MPI_COMM_NULL) MPI_Comm_free(mc);
    free(mc);
    free(c);
}

static const CommBackend MPI_BACKEND = {
    .name = "mpi",
    .allreduce = mpi_allreduce,
    .broadcast = mpi_broadcast,
    .allgather = mpi_allgather,
    .reduce_scatter = mpi_reduce_scatter,
    .barrier = mpi_barrier,
    .destroy = mpi_destroy,
};

static Comm* comm_from_mpi(MPI_Comm mc, const char* name, double timeout_s) {
    Comm* c = callocCheck(1, sizeof(Comm));
    MPI_Comm* impl = mallocCheck(sizeof(MPI_Comm));
    *impl = mc;
    c->impl = impl;
    c->backend = &MPI_BACKEND;
    MPI_Comm_rank(mc, &c->rank);
    MPI_Comm_size(mc, &c->size);
    c->name = name;
    c->world_rank = comm_mpi_world_rank();
    c->timeout_s = timeout_s;
    c->phase = "setup";
    return c;
}

// ---- process setup

void comm_mpi_init(int* argc, char*** argv) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) return;
    int provided = 0;
    // Open MPI keeps what it allocates while starting (in plugins it unloads
    // at exit, so LeakSanitizer cannot even name them): not rlhfd's leaks.
    LSAN_IGNORE_BEGIN();
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    LSAN_IGNORE_END();
    if (rc != MPI_SUCCESS) fatalf("MPI_Init_thread failed");
    // errors come back as codes: wait_request reports them with context
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

void comm_mpi_finalize(void) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) {
        LSAN_IGNORE_BEGIN();
        MPI_Finalize();
        LSAN_IGNORE_END();
    }
}

int comm_mpi_world_rank(void) {
    int inited = 0, r = 0;
    MPI_Initialized(&inited);
    if (inited) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int comm_mpi_world_size(void) {
    int inited = 0, s = 1;
    MPI_Initialized(&inited);
    if (inited) MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

void comm_mpi_abort(int code) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    fflush(stdout);
    fflush(stderr);
    if (inited && !finalized && comm_mpi_world_size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

void parallel_init(Parallel* p, int tp, double timeout_s) {
    memset(p, 0, sizeof *p);
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) fatalf("parallel_init: MPI is not initialised (comm_mpi_init)");
    MPI_Comm_rank(MPI_COMM_WORLD, &p->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &p->size);
    if (tp < 1 || p->size % tp != 0)
        fatalf("parallel.tp = %d does not divide the world size %d (mpirun -np): use a tp that divides it",
               tp, p->size);
    p->tp_size = tp;
    p->dp_size = p->size / tp;
    p->tp_rank = p->rank % tp;
    p->dp_rank = p->rank / tp;
    if (gethostname(p->host, sizeof p->host) != 0) snprintf(p->host, sizeof p->host, "?");
    p->host[sizeof p->host - 1] = '\0';
    MPI_Comm world, dp, tpc;
    MPI_Comm_dup(MPI_COMM_WORLD, &world);
    MPI_Comm_split(MPI_COMM_WORLD, p->dp_rank, p->tp_rank, &tpc); // same replica
    MPI_Comm_split(MPI_COMM_WORLD, p->tp_rank, p->dp_rank, &dp);  // same shard
    p->world = comm_from_mpi(world, "world", timeout_s);
    p->dp = comm_from_mpi(dp, "dp", timeout_s);
    p->tp = comm_from_mpi(tpc, "tp", timeout_s);
}

void parallel_free(Parallel* p) {
    if (p->world) p->world->backend->destroy(p->world);
    if (p->dp) p->dp->backend->destroy(p->dp);
    if (p->tp) p->tp->backend->destroy(p->tp);
    memset(p, 0, sizeof *p);
}

void parallel_share(size_t n, int r, int dp_size, size_t* begin, size_t* end) {
    size_t base = n / (size_t)dp_size, extra = n % (size_t)dp_size;
    size_t rr = (size_t)r;
    *begin = rr * base + (rr < extra ? rr : extra);
    *end = *begin + base + (rr < extra ? 1 : 0);
}

// ---- control plane

// Rank 0 waits for one message from every other rank; on the deadline it
// names the ranks that never arrived (a gather would not say which).
static void wait_from_ranks(Comm* c, MPI_Request* reqs, int n, const char* what, size_t bytes) {
    double t0 = wall_now();
    long sleep_ns = 1000;
    int spins = 0;
    while (1) {
        int all = 0;
        if (MPI_Testall(n, reqs, &all, MPI_STATUSES_IGNORE) != MPI_SUCCESS) {
            fprintf(stderr, "rlhfd: rank %d: MPI %s on '%s' failed (phase %s)\n", c->world_rank, what, c->name,
                    c->phase ? c->phase : "?");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (all) break;
        if (++spins < 2000) continue;
        answer_roll_calls(c);
        double waited = wall_now() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s) {
            char missing[512] = "";
            size_t len = 0;
            int count = 0;
            for (int i = 0; i < n; i++) {
                int done = 0;
                MPI_Request_get_status(reqs[i], &done, MPI_STATUS_IGNORE);
                if (done || reqs[i] == MPI_REQUEST_NULL) continue;
                if (count++ < 16 && len < sizeof missing - 16)
                    len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%d", count > 1 ? ", " : "", i);
            }
            fprintf(stderr,
                    "rlhfd: rank %d (coordinator): rank(s) %s of communicator '%s' sent no %s within %.0f s in phase "
                    "'%s': they died, hung or are far slower; aborting the job (parallel.timeout sets this limit)\n",
                    c->world_rank, missing, c->name, what, waited, c->phase ? c->phase : "?");
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 2000000) sleep_ns *= 2;
    }
    c->wait_seconds += wall_now() - t0;
    c->bytes += bytes;
}

enum { TAG_GATHER_LEN = 7101, TAG_GATHER_DATA = 7102 };

void comm_gather_bytes(Comm* c, const void* buf, size_t len, int root, uint8_t*** out, size_t** lens) {
    *out = NULL;
    *lens = NULL;
    if (len > (size_t)0x7fffffff) fatalf("comm_gather_bytes: message of %zu bytes is too large", len);
    const int n = c->size;
    MPI_Comm mc = mpi_comm_of(c);
    if (c->rank != root) {
        // point to point, so the root can tell exactly which rank is missing
        int64_t mylen = (int64_t)len;
        MPI_Request req[2];
        MPI_Isend(&mylen, 1, MPI_INT64_T, root, TAG_GATHER_LEN, mc, &req[0]);
        MPI_Isend(buf, (int)len, MPI_BYTE, root, TAG_GATHER_DATA, mc, &req[1]);
        wait_from_ranks(c, req, 2, "report (send)", len);
        return;
    }
    int64_t* all = callocCheck((size_t)n, sizeof(int64_t));
    MPI_Request* reqs = mallocCheck((size_t)n * sizeof(MPI_Request));
    for (int r = 0; r < n; r++) {
        if (r == root) {
            reqs[r] = MPI_REQUEST_NULL;
            all[r] = (int64_t)len;
            continue;
        }
        MPI_Irecv(&all[r], 1, MPI_INT64_T, r, TAG_GATHER_LEN, mc, &reqs[r]);
    }
    wait_from_ranks(c, reqs, n, "report", (size_t)n * sizeof(int64_t));
    uint8_t** msgs = mallocCheck((size_t)n * sizeof(uint8_t*));
    size_t* ls = mallocCheck((size_t)n * sizeof(size_t));
    for (int r = 0; r < n; r++) {
        if (all[r] < 0 || all[r] > 0x7fffffff) fatalf("comm_gather_bytes: rank %d sent a bad length %lld", r, (long long)all[r]);
        ls[r] = (size_t)all[r];
        msgs[r] = mallocCheck(ls[r] ? ls[r] : 1);
        if (r == root) {
            memcpy(msgs[r], buf, len);
            reqs[r] = MPI_REQUEST_NULL;
        } else {
            MPI_Irecv(msgs[r], (int)ls[r], MPI_BYTE, r, TAG_GATHER_DATA, mc, &reqs[r]);
        }
    }
    wait_from_ranks(c, reqs, n, "report", 0);
    free(all);
    free(reqs);
    *out = msgs;
    *lens = ls;
}

void comm_broadcast_bytes(Comm* c, uint8_t** buf, size_t* len, int root) {
    if (c->size == 1) return;
    int64_t n = c->rank == root ? (int64_t)*len : 0;
    mpi_broadcast(c, &n, 1, COMM_I64, root);
    if (n < 0 || n > 0x7fffffff) fatalf("comm_broadcast_bytes: bad length %lld", (long long)n);
    if (c->rank != root) {
        *buf = mallocCheck(n ? (size_t)n : 1);
        *len = (size_t)n;
    }
    if (n) mpi_broadcast(c, *buf, (size_t)n, COMM_U8, root);
}

// ---- NCCL: see comm_nccl.c (compiled with CUDA); without it, not available.
#ifndef RLHFD_HAVE_NCCL
int comm_nccl_available(void) { return 0; }
Comm* comm_nccl_create(Comm* over, int device) {
    (void)over;
    (void)device;
    return NULL;
}
#endif
