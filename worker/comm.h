// comm.h - collectives: one small interface, two backends.
//
//   MPI  (worker/comm_mpi.c)  host tensors; also the control plane (bytes)
//   NCCL (worker/comm_nccl.c) device tensors; built only with CUDA + NCCL;
//        the ncclUniqueId is broadcast over the MPI communicator it mirrors.
//
// The world is dp x tp (Megatron layout): rank = dp_rank * tp + tp_rank, so a
// tensor-parallel group is tp consecutive ranks and a data-parallel group is
// the ranks with the same tp_rank. A world of one (no mpirun) is the default
// and costs nothing: every collective on a communicator of size 1 returns at
// once (buffers untouched, or copied where send != recv).
//
// Every blocking wait has a deadline (Comm.timeout_s, parallel.timeout): when
// it passes the run aborts with a message naming this rank, the communicator,
// the operation and the phase (comm_set_phase), instead of hanging.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { COMM_SUM = 0, COMM_MAX = 1, COMM_MIN = 2 } CommOp;
typedef enum { COMM_F32 = 0, COMM_F64 = 1, COMM_I32 = 2, COMM_I64 = 3, COMM_U8 = 4 } CommType;

typedef struct Comm Comm;

typedef struct {
    const char* name; // "mpi", "nccl"
    // in place: buf (count) on every rank becomes the reduction over ranks
    void (*allreduce)(Comm* c, void* buf, size_t count, CommType type, CommOp op);
    // buf (count) of rank root to every rank
    void (*broadcast)(Comm* c, void* buf, size_t count, CommType type, int root);
    // recv (size*count) = concat over ranks of send (count); send may be recv + rank*count
    void (*allgather)(Comm* c, const void* send, void* recv, size_t count, CommType type);
    // recv (count) = block `rank` of the reduction of send (size*count) over ranks
    void (*reduce_scatter)(Comm* c, const void* send, void* recv, size_t count, CommType type, CommOp op);
    void (*barrier)(Comm* c);
    void (*destroy)(Comm* c);
} CommBackend;

struct Comm {
    int rank, size;
    const CommBackend* backend;
    void* impl;          // backend state (MPI_Comm*, ncclComm_t, ...)
    const char* name;    // "world", "dp", "tp" (in errors)
    int world_rank;      // this process's rank in the world (in errors)
    double timeout_s;    // deadline of one blocking wait; <= 0: wait forever
    const char* phase;   // what the run is doing (in timeout errors), static string
    double wait_seconds; // total time spent inside collectives (communication share)
    uint64_t bytes;      // payload bytes passed to collectives
};

// Size in bytes of one element of type.
size_t comm_type_size(CommType type);

// Convenience wrappers (the usual calls): count elements of the given type.
static inline void comm_allreduce_f32(Comm* c, float* buf, size_t n) {
    if (c && c->size > 1) c->backend->allreduce(c, buf, n, COMM_F32, COMM_SUM);
}
static inline void comm_allreduce_f64(Comm* c, double* buf, size_t n) {
    if (c && c->size > 1) c->backend->allreduce(c, buf, n, COMM_F64, COMM_SUM);
}
static inline void comm_allreduce(Comm* c, void* buf, size_t n, CommType t, CommOp op) {
    if (c && c->size > 1) c->backend->allreduce(c, buf, n, t, op);
}
static inline void comm_broadcast(Comm* c, void* buf, size_t n, CommType t, int root) {
    if (c && c->size > 1) c->backend->broadcast(c, buf, n, t, root);
}
void comm_allgather(Comm* c, const void* send, void* recv, size_t n, CommType t);
void comm_reduce_scatter(Comm* c, const void* send, void* recv, size_t n, CommType t, CommOp op);
static inline void comm_barrier(Comm* c) {
    if (c && c->size > 1) c->backend->barrier(c);
}
// Names the phase shown in timeout errors (a string literal); returns the old one.
const char* comm_set_phase(Comm* c, const char* phase);

// ---- MPI: process setup and the communicators of the world

// MPI_Init_thread (FUNNELED: only the main thread calls MPI). Called once by
// main(); a process started without mpirun is a world of one.
void comm_mpi_init(int* argc, char*** argv);
void comm_mpi_finalize(void);
// Rank and size of MPI_COMM_WORLD (0 and 1 before comm_mpi_init).
int comm_mpi_world_rank(void);
int comm_mpi_world_size(void);
// Aborts every rank of the job (MPI_Abort) with exit code code; for fatal
// errors found on one rank only, so the others do not hang.
void comm_mpi_abort(int code);

// The world, split dp x tp. tp must divide the world size (fatal otherwise,
// with a clear message). timeout_s applies to every communicator made here.
typedef struct {
    Comm* world;
    Comm* dp;   // the ranks holding the same shard (same tp_rank)
    Comm* tp;   // the ranks of one model replica
    int rank, size;       // world
    int dp_rank, dp_size;
    int tp_rank, tp_size;
    char host[64];        // this rank's host name
} Parallel;
void parallel_init(Parallel* p, int tp, double timeout_s);
void parallel_free(Parallel* p);
// [begin, end) of the share of n items that dp rank r of dp_size takes:
// contiguous, sizes differ by at most one, rank order.
void parallel_share(size_t n, int r, int dp_size, size_t* begin, size_t* end);

// ---- control plane (MPI only): variable-length byte messages
// Gathers every rank's bytes to root: on root *out is a malloc'd array of
// size buffers (each malloc'd, lengths in *lens, malloc'd); NULL elsewhere.
void comm_gather_bytes(Comm* c, const void* buf, size_t len, int root, uint8_t*** out, size_t** lens);
// Broadcasts root's bytes: on other ranks *buf is replaced by a malloc'd copy
// (free the old one yourself before if needed) and *len set.
void comm_broadcast_bytes(Comm* c, uint8_t** buf, size_t* len, int root);

// ---- NCCL (device tensors): a communicator mirroring an MPI one
// Returns NULL when rlhfd was built without NCCL (comm_nccl_available() == 0).
int comm_nccl_available(void);
// device: CUDA device index this rank uses. The unique id travels over `over`.
Comm* comm_nccl_create(Comm* over, int device);
