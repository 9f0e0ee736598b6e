// data_parallel.c - gradient all-reduce and ZeRO-1 over the dp group.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "data_parallel.h"
#include "../common/check.h"

static int dp_size(const DataParallel* d) { return d->dp ? d->dp->size : 1; }

void dp_init(DataParallel* d, Comm* dp, Comm* tp, int zero1) {
    memset(d, 0, sizeof *d);
    d->dp = dp;
    d->tp = tp;
    d->zero1 = zero1 && dp_size(d) > 1; // one rank: plain AdamW is the same thing
}

void dp_free(DataParallel* d) {
    free(d->m);
    free(d->v);
    free(d->gather);
    memset(d, 0, sizeof *d);
}

double dp_global_weight(DataParallel* d, double local_weight) {
    double w = local_weight;
    comm_allreduce_f64(d->dp, &w, 1);
    return w;
}

void dp_allreduce_scaled(DataParallel* d, float* grads, size_t n, float scale) {
    if (dp_size(d) == 1) return;
    if (scale != 1.0f)
        for (size_t i = 0; i < n; i++) grads[i] *= scale;
    comm_allreduce_f32(d->dp, grads, n);
}

double dp_allreduce_grads(DataParallel* d, GPT* model, double local_weight) {
    if (dp_size(d) == 1) return local_weight;
    // a rank whose share of this minibatch is empty took no backward: it
    // contributes zeros (and still takes part in the collective)
    gpt_ensure_grads(model);
    const char* old = comm_set_phase(d->dp, "gradient all-reduce");
    double global = dp_global_weight(d, local_weight);
    float scale = global > 0 ? (float)(local_weight / global) : 0.0f;
    dp_allreduce_scaled(d, model->grads_memory, model->num_parameters, scale);
    comm_set_phase(d->dp, old);
    return global;
}

// ZeRO-1 shard bounds and moment buffers (first use).
static void zero1_setup(DataParallel* d, const GPT* model) {
    if (d->m) return;
    size_t n = model->num_parameters, P = (size_t)dp_size(d);
    d->shard = (n + P - 1) / P;
    d->begin = (size_t)d->dp->rank * d->shard;
    if (d->begin > n) d->begin = n;
    d->end = d->begin + d->shard < n ? d->begin + d->shard : n;
    size_t own = d->end - d->begin;
    d->m = callocCheck(own ? own : 1, sizeof(float));
    d->v = callocCheck(own ? own : 1, sizeof(float));
    d->gather = mallocCheck(d->shard * P * sizeof(float));
}

float dp_update(DataParallel* d, GPT* model, const AdamWConfig* cfg) {
    if (!d->zero1) return gpt_update(model, cfg);
    const Ops* ops = model->ops;
    if (!model->grads_memory) fatalf("dp_update needs gradients (backward first)");
    zero1_setup(d, model);
    // the gradients are identical on every dp rank after the all-reduce: the
    // norm is the whole model's (over the tp shards), exactly as gpt_update's
    float norm = (float)sqrt(gpt_grad_sumsq(model));
    model->last_grad_norm = norm;
    float grad_scale = 1.0f;
    if (cfg->grad_clip > 0.0f) {
        float coef = cfg->grad_clip / (norm + 1e-6f);
        if (coef < 1.0f) grad_scale = coef;
    }
    int t = ++model->adam_step;
    // AdamW on the part of each tensor that falls in [begin, end)
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t sz = model->param_sizes[i];
        size_t lo = off > d->begin ? off : d->begin, hi = off + sz < d->end ? off + sz : d->end;
        if (lo < hi) {
            float wd = gpt_param_decays(i) ? cfg->weight_decay : 0.0f;
            ops->adamw_update(model->params_memory + lo, model->grads_memory + lo, d->m + (lo - d->begin),
                              d->v + (lo - d->begin), hi - lo, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, wd,
                              grad_scale, t);
        }
        off += sz;
    }
    // every rank gets every updated shard
    const char* old = comm_set_phase(d->dp, "ZeRO-1 parameter all-gather");
    float* mine = d->gather + (size_t)d->dp->rank * d->shard;
    memcpy(mine, model->params_memory + d->begin, (d->end - d->begin) * sizeof(float));
    comm_allgather(d->dp, mine, d->gather, d->shard, COMM_F32);
    memcpy(model->params_memory, d->gather, model->num_parameters * sizeof(float));
    comm_set_phase(d->dp, old);
    return norm;
}

// Gathers one moment vector's shards into full (N).
static void gather_moment(DataParallel* d, const float* own, float* full, size_t n) {
    float* mine = d->gather + (size_t)d->dp->rank * d->shard;
    memset(mine, 0, d->shard * sizeof(float));
    memcpy(mine, own, (d->end - d->begin) * sizeof(float));
    comm_allgather(d->dp, mine, d->gather, d->shard, COMM_F32);
    memcpy(full, d->gather, n * sizeof(float));
}

void dp_gather_optimizer(DataParallel* d, GPT* model) {
    if (!d->zero1) return;
    zero1_setup(d, model);
    size_t n = model->num_parameters;
    if (!model->m_memory) {
        model->m_memory = model->ops->alloc(n * sizeof(float));
        model->v_memory = model->ops->alloc(n * sizeof(float));
    }
    gather_moment(d, d->m, model->m_memory, n);
    gather_moment(d, d->v, model->v_memory, n);
}

void dp_scatter_optimizer(DataParallel* d, GPT* model) {
    if (!d->zero1 || !model->m_memory) return;
    zero1_setup(d, model);
    size_t own = d->end - d->begin;
    memcpy(d->m, model->m_memory + d->begin, own * sizeof(float));
    memcpy(d->v, model->v_memory + d->begin, own * sizeof(float));
    // the full moments are not needed any more on this rank
    model->ops->free(model->m_memory);
    model->ops->free(model->v_memory);
    model->m_memory = model->v_memory = NULL;
}
