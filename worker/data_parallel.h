// data_parallel.h - data parallelism for the GPT: gradient all-reduce over
// the dp group and optional ZeRO-1 (AdamW moments sharded over dp).
//
// Every training command takes the GLOBAL batch from its config and gives
// each dp rank its share (parallel_share), so a config means the same run at
// any world size. A loss that is a weighted mean over a rank's positions
// becomes the weighted mean over all ranks' positions by scaling each rank's
// gradient by local_weight / global_weight before the sum: dp=2 with global
// batch G reproduces dp=1 with batch G up to fp32 reduction order.
//
//   DataParallel dp;  dp_init(&dp, par.dp, par.tp, zero1);
//   ... forward + backward on this rank's share ...
//   dp_allreduce_grads(&dp, &model, local_weight);   // collective over dp
//   float norm = dp_update(&dp, &model, &adamw);      // collective with ZeRO-1
#pragma once
#include <stddef.h>
#include "comm.h"
#include "gpt.h"

typedef struct {
    Comm* dp;        // data-parallel group (NULL or size 1: nothing to do)
    Comm* tp;        // tensor-parallel group of this replica (for the global grad norm)
    int zero1;       // shard the AdamW moments over dp
    // ZeRO-1: this rank owns params [begin, end) of the flat buffer
    size_t begin, end, shard; // shard = ceil(N / dp size): the padded block size
    float* m;        // (end - begin) first moments
    float* v;        // (end - begin) second moments
    float* gather;   // (shard * dp size) all-gather buffer
} DataParallel;

// dp/tp may be NULL (a world of one).
void dp_init(DataParallel* d, Comm* dp, Comm* tp, int zero1);
void dp_free(DataParallel* d);

// Sum of local_weight over the dp group (the global number of weighted
// positions the loss is averaged over). Collective.
double dp_global_weight(DataParallel* d, double local_weight);
// grads of model (the gradient of a weighted mean over local_weight positions
// on this rank) -> the gradient of the weighted mean over every rank's
// positions, identical on every dp rank. Collective. Returns the global weight.
double dp_allreduce_grads(DataParallel* d, GPT* model, double local_weight);
// The same for any other gradient buffer (a head's): scale then sum over dp.
void dp_allreduce_scaled(DataParallel* d, float* grads, size_t n, float scale);

// Clip + AdamW step: gpt_update, or with ZeRO-1 the step on this rank's shard
// of the parameters followed by an all-gather of the updated parameters.
// Returns the global gradient norm before clipping (same on every rank).
float dp_update(DataParallel* d, GPT* model, const AdamWConfig* cfg);

// ZeRO-1 and checkpoints: before checkpoint_save(with_optimizer), gather the
// moment shards into model->m_memory / v_memory (allocated if needed; every
// dp rank must call); after checkpoint_load_optimizer, keep only this rank's
// shard. No-ops without ZeRO-1.
void dp_gather_optimizer(DataParallel* d, GPT* model);
void dp_scatter_optimizer(DataParallel* d, GPT* model);
