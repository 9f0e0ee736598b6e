// gpt.c - GPT-2: forward, backward and AdamW over one contiguous parameter
// buffer. All tensor math goes through model->ops (kernels/ops.h).
// Tensor parallelism (Megatron-LM) is described in gpt.h; with tp_size 1
// every collective below is a no-op and the shard is the whole model.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "common/check.h"
#include "common/rng.h"
#include "worker/gpt.h"

const char* const GPT_PARAM_NAMES[NUM_PARAMETER_TENSORS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"};

void gpt_config_check(const GPTConfig* c) {
    if (c->max_seq_len <= 0 || c->vocab_size <= 0 || c->num_layers <= 0 || c->num_heads <= 0 || c->channels <= 0)
        fatalf("model shape must be positive: ctx=%d vocab=%d layers=%d heads=%d embd=%d", c->max_seq_len,
               c->vocab_size, c->num_layers, c->num_heads, c->channels);
    if (c->channels % c->num_heads != 0)
        fatalf("model.embd (%d) must be divisible by model.heads (%d)", c->channels, c->num_heads);
}

void gpt_param_sizes(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig* c) {
    size_t V = c->vocab_size, maxT = c->max_seq_len, L = c->num_layers, C = c->channels;
    sizes[0] = V * C;           // wte
    sizes[1] = maxT * C;        // wpe
    sizes[2] = L * C;           // ln1w
    sizes[3] = L * C;           // ln1b
    sizes[4] = L * 3 * C * C;   // qkvw
    sizes[5] = L * 3 * C;       // qkvb
    sizes[6] = L * C * C;       // attprojw
    sizes[7] = L * C;           // attprojb
    sizes[8] = L * C;           // ln2w
    sizes[9] = L * C;           // ln2b
    sizes[10] = L * 4 * C * C;  // fcw
    sizes[11] = L * 4 * C;      // fcb
    sizes[12] = L * C * 4 * C;  // fcprojw
    sizes[13] = L * C;          // fcprojb
    sizes[14] = C;              // lnfw
    sizes[15] = C;              // lnfb
}

// The 2-D weight matrices (embeddings and linear weights) get weight decay;
// biases and LayerNorm parameters do not (GPT-2 / nanoGPT convention).
int gpt_param_decays(int i) { return i == 0 || i == 1 || i == 4 || i == 6 || i == 10 || i == 12; }

// ---------------------------------------------------------------------------
// tensor-parallel shards

// Where rank r's shard of tensor i comes from in the whole tensor: piece q
// (0 <= q < count) of seg floats sits at local q*seg and at full
// q*full_stride + (sharded ? r*seg : 0), clipped to full_size (only the
// vocab shard runs past the end: its padding rows).
typedef struct {
    size_t count, seg, full_stride, full_size;
    int sharded;
} ShardSpec;

static ShardSpec shard_spec(int i, const GPTConfig* c, int P) {
    size_t full[NUM_PARAMETER_TENSORS];
    gpt_param_sizes(full, c);
    size_t L = c->num_layers, C = c->channels, Cl = C / P, V = c->vocab_size, Vp = (V + P - 1) / P;
    ShardSpec s = {1, full[i], 0, full[i], 0};
    if (P == 1) return s;
    switch (i) {
    case 0: s = (ShardSpec){1, Vp * C, 0, full[i], 1}; break;                   // wte: vocab rows
    case 4: s = (ShardSpec){3 * L, Cl * C, C * C, full[i], 1}; break;           // qkvw: q,k,v rows per layer
    case 5: s = (ShardSpec){3 * L, Cl, C, full[i], 1}; break;                   // qkvb
    case 6: s = (ShardSpec){L * C, Cl, C, full[i], 1}; break;                   // attprojw: input columns
    case 10: s = (ShardSpec){L, 4 * Cl * C, 4 * C * C, full[i], 1}; break;      // fcw: hidden rows
    case 11: s = (ShardSpec){L, 4 * Cl, 4 * C, full[i], 1}; break;              // fcb
    case 12: s = (ShardSpec){L * C, 4 * Cl, 4 * C, full[i], 1}; break;          // fcprojw: input columns
    default: break;                                                            // replicated
    }
    return s;
}

void gpt_param_sizes_tp(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig* c, int tp_size) {
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        ShardSpec s = shard_spec(i, c, tp_size);
        sizes[i] = s.count * s.seg;
    }
}

int gpt_param_tp_sharded(const GPT* model, int i) {
    if (i < 0 || i >= NUM_PARAMETER_TENSORS) fatalf("gpt_param_tp_sharded: no tensor %d", i);
    return shard_spec(i, &model->config, model->tp_size).sharded;
}

// Copies rank r's shard between a whole-model host buffer and a local host
// buffer: to_local 1 = full -> local (padding zeroed), 0 = local -> full.
static void shard_copy(const GPT* model, int r, float* full, float* local, int to_local) {
    size_t full_off = 0, local_off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        ShardSpec s = shard_spec(i, &model->config, model->tp_size);
        for (size_t q = 0; q < s.count; q++) {
            size_t at = q * s.full_stride + (s.sharded ? (size_t)r * s.seg : 0);
            size_t n = at >= s.full_size ? 0 : (s.full_size - at < s.seg ? s.full_size - at : s.seg);
            float* f = full + full_off + at;
            float* l = local + local_off + q * s.seg;
            if (to_local) {
                if (n) memcpy(l, f, n * sizeof(float));
                if (n < s.seg) memset(l + n, 0, (s.seg - n) * sizeof(float));
            } else if (n) {
                memcpy(f, l, n * sizeof(float));
            }
        }
        full_off += s.full_size;
        local_off += s.count * s.seg;
    }
}

void gpt_shard_from_full(const GPT* model, const float* full, float* local) {
    size_t n = model->num_parameters;
    if (model->tp_size == 1) {
        model->ops->to_device(local, full, n * sizeof(float));
        return;
    }
    float* host = mallocCheck(n * sizeof(float));
    shard_copy(model, model->tp_rank, (float*)full, host, 1);
    model->ops->to_device(local, host, n * sizeof(float));
    free(host);
}

void gpt_gather_full(const GPT* model, const float* local, float* full) {
    size_t n = model->num_parameters;
    if (model->tp_size == 1) {
        model->ops->to_host(full, local, n * sizeof(float));
        return;
    }
    // every rank's shard has the same size (padding included): one allgather
    int P = model->tp_size;
    float* all = mallocCheck((size_t)P * n * sizeof(float));
    float* mine = all + (size_t)model->tp_rank * n;
    model->ops->to_host(mine, local, n * sizeof(float));
    comm_allgather(model->tp, mine, all, n, COMM_F32);
    for (int r = 0; r < P; r++) shard_copy(model, r, full, all + (size_t)r * n, 0);
    free(all);
}

// Points the named tensors into one buffer, in GPT_PARAM_NAMES order.
static void point_parameters(ParameterTensors* p, float* memory, const size_t* sizes) {
    float** ptrs[] = {&p->wte, &p->wpe, &p->ln1w, &p->ln1b, &p->qkvw, &p->qkvb, &p->attprojw, &p->attprojb,
                      &p->ln2w, &p->ln2b, &p->fcw, &p->fcb, &p->fcprojw, &p->fcprojb, &p->lnfw, &p->lnfb};
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

void gpt_build(GPT* model, GPTConfig config, const Ops* ops) { gpt_build_tp(model, config, ops, NULL); }

void gpt_build_tp(GPT* model, GPTConfig config, const Ops* ops, Comm* tp) {
    gpt_config_check(&config);
    int P = tp ? tp->size : 1;
    if (P < 1) fatalf("tensor parallelism: communicator of size %d", P);
    if (config.num_heads % P != 0)
        fatalf("tensor parallelism: model.heads (%d) must be divisible by parallel.tp (%d)", config.num_heads, P);
    memset(model, 0, sizeof *model);
    model->config = config;
    model->ops = ops;
    model->tp = P > 1 ? tp : NULL;
    model->tp_size = P;
    model->tp_rank = P > 1 ? tp->rank : 0;
    int Vp = (config.vocab_size + P - 1) / P;
    model->vocab_shard = Vp;
    model->vocab_start = model->tp_rank * Vp;
    int valid = config.vocab_size - model->vocab_start;
    model->vocab_valid = valid < 0 ? 0 : (valid < Vp ? valid : Vp);
    size_t full[NUM_PARAMETER_TENSORS];
    gpt_param_sizes(full, &config);
    gpt_param_sizes_tp(model->param_sizes, &config, P);
    size_t n = 0;
    model->num_parameters_full = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        n += model->param_sizes[i];
        model->num_parameters_full += full[i];
    }
    model->num_parameters = n;
    model->params_memory = ops->alloc(n * sizeof(float));
    point_parameters(&model->params, model->params_memory, model->param_sizes);
    model->mean_loss = -1.0f;
}

void gpt_init_random(GPT* model, uint64_t seed) {
    const GPTConfig* c = &model->config;
    Rng rng;
    rng_seed(&rng, seed);
    // the whole model is drawn on every rank (same numbers at any tp size)
    size_t full[NUM_PARAMETER_TENSORS];
    gpt_param_sizes(full, c);
    float* host = mallocCheck(model->num_parameters_full * sizeof(float));
    float resid_std = 0.02f / sqrtf(2.0f * c->num_layers);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t sz = full[i];
        float* p = host + off;
        int is_ln_weight = (i == 2 || i == 8 || i == 14);
        if (is_ln_weight) {
            for (size_t k = 0; k < sz; k++) p[k] = 1.0f;
        } else if (gpt_param_decays(i)) {
            float std = (i == 6 || i == 12) ? resid_std : 0.02f; // residual projections
            for (size_t k = 0; k < sz; k++) p[k] = std * rng_normal(&rng);
        } else {
            memset(p, 0, sz * sizeof(float)); // biases
        }
        off += sz;
    }
    gpt_shard_from_full(model, host, model->params_memory);
    free(host);
}

// ---------------------------------------------------------------------------
// activations

// Sizes for a tp_size-way shard (Cl = C/P channels and NH/P heads of
// attention, 4C/P hidden units, Vp logits per row).
static void activation_sizes(size_t* s, const GPTConfig* c, int B, int T, int P) {
    size_t L = c->num_layers, C = c->channels, NH = c->num_heads / P, Cl = C / P;
    size_t V = (c->vocab_size + P - 1) / P;
    size_t BT = (size_t)B * T;
    s[0] = BT * C;                  // encoded
    s[1] = L * BT * C;              // ln1
    s[2] = L * BT;                  // ln1_mean
    s[3] = L * BT;                  // ln1_rstd
    s[4] = L * BT * 3 * Cl;         // qkv
    s[5] = L * BT * Cl;             // atty
    s[6] = L * B * NH * T * T;      // att
    s[7] = L * BT * C;              // attproj
    s[8] = L * BT * C;              // residual2
    s[9] = L * BT * C;              // ln2
    s[10] = L * BT;                 // ln2_mean
    s[11] = L * BT;                 // ln2_rstd
    s[12] = L * BT * 4 * Cl;        // fch
    s[13] = L * BT * 4 * Cl;        // fch_gelu
    s[14] = L * BT * C;             // fcproj
    s[15] = L * BT * C;             // residual3
    s[16] = BT * C;                 // lnf
    s[17] = BT;                     // lnf_mean
    s[18] = BT;                     // lnf_rstd
    s[19] = BT * V;                 // logits
    s[20] = BT;                     // losses
}

static void point_activations(ActivationTensors* a, float* memory, const size_t* sizes) {
    float** ptrs[] = {&a->encoded, &a->ln1, &a->ln1_mean, &a->ln1_rstd, &a->qkv, &a->atty, &a->att,
                      &a->attproj, &a->residual2, &a->ln2, &a->ln2_mean, &a->ln2_rstd, &a->fch,
                      &a->fch_gelu, &a->fcproj, &a->residual3, &a->lnf, &a->lnf_mean, &a->lnf_rstd,
                      &a->logits, &a->losses};
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

static void free_activations(GPT* model) {
    const Ops* ops = model->ops;
    ops->free(model->acts_memory);
    ops->free(model->scratch_memory);
    ops->free(model->inputs);
    ops->free(model->targets);
    ops->free(model->dlosses);
    ops->free(model->positions);
    ops->free(model->tp_lse);
    ops->free(model->tp_stats);
    free(model->tp_stats_host);
    model->acts_memory = model->scratch_memory = model->dlosses = NULL;
    model->inputs = model->targets = model->positions = NULL;
    model->tp_lse = model->tp_stats = model->tp_stats_host = NULL;
    model->d_residual = model->d_ln = model->d_atty = model->d_qkv = model->d_fch = model->d_att = NULL;
    model->batch_size = model->seq_len = 0;
}

void gpt_reserve(GPT* model, int B, int T) {
    if (B <= 0 || T <= 0) fatalf("empty batch (%dx%d)", B, T);
    if (T > model->config.max_seq_len)
        fatalf("sequence length %d exceeds the model's context %d", T, model->config.max_seq_len);
    if (model->acts_memory) {
        if (B <= model->batch_size && T <= model->seq_len) return;
        // grow to cover both the old and the new shape
        if (B < model->batch_size) B = model->batch_size;
        if (T < model->seq_len) T = model->seq_len;
        free_activations(model);
    }
    const Ops* ops = model->ops;
    model->batch_size = B;
    model->seq_len = T;
    activation_sizes(model->act_sizes, &model->config, B, T, model->tp_size);
    size_t n = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) n += model->act_sizes[i];
    model->num_activations = n;
    model->acts_memory = ops->alloc(n * sizeof(float));
    point_activations(&model->acts, model->acts_memory, model->act_sizes);
    model->inputs = ops->alloc((size_t)B * T * sizeof(int));
    model->targets = ops->alloc((size_t)B * T * sizeof(int));
    model->dlosses = ops->alloc((size_t)B * T * sizeof(float));
    if (model->tp_size > 1) {
        size_t BT = (size_t)B * T, P = (size_t)model->tp_size;
        model->positions = ops->alloc(BT * sizeof(int));
        model->tp_lse = ops->alloc(BT * sizeof(float));
        model->tp_stats = ops->alloc(P * BT * 3 * sizeof(float));
        model->tp_stats_host = mallocCheck(P * BT * 3 * sizeof(float));
    }
}

// Bias of a row-parallel layer: added by tp rank 0 only, before the all-reduce
// sums the ranks' partial outputs (so it counts once).
static const float* row_bias(const GPT* model, const float* bias) { return model->tp_rank == 0 ? bias : NULL; }

void gpt_forward_trunk(GPT* model, const int* inputs, int B, int T) {
    const GPTConfig* c = &model->config;
    const Ops* ops = model->ops;
    int V = c->vocab_size, L = c->num_layers, C = c->channels;
    int P = model->tp_size, NH = c->num_heads / P, Cl = C / P; // this rank's heads
    if (B <= 0 || T <= 0) fatalf("empty batch (%dx%d)", B, T);
    if (T > c->max_seq_len) fatalf("sequence length %d exceeds the model's context %d", T, c->max_seq_len);
    size_t BT = (size_t)B * T;
    for (size_t i = 0; i < BT; i++)
        if (inputs[i] < 0 || inputs[i] >= V) fatalf("input token %d at position %zu is outside the vocab [0,%d)", inputs[i], i, V);
    if (!model->acts_memory) gpt_reserve(model, B, T);
    if (B > model->batch_size || T > model->seq_len)
        fatalf("batch %dx%d exceeds the %dx%d the model's activations were sized for (gpt_reserve)", B, T,
               model->batch_size, model->seq_len);
    model->B = B;
    model->T = T;
    ops->to_device(model->inputs, inputs, BT * sizeof(int));

    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    if (P == 1) {
        ops->encoder_forward(a.encoded, model->inputs, p.wte, p.wpe, B, T, C); // (B,T,C)
    } else {
        // masked lookup in this rank's vocab rows, wpe added by rank 0 only:
        // the all-reduce sums one wte row and one wpe row, exactly as tp=1
        int* pos = mallocCheck(BT * sizeof(int));
        for (size_t i = 0; i < BT; i++) pos[i] = (int)(i % (size_t)T);
        ops->to_device(model->positions, pos, BT * sizeof(int));
        free(pos);
        ops->encoder_shard_forward(a.encoded, model->inputs, model->positions, p.wte,
                                   model->tp_rank == 0 ? p.wpe : NULL, model->vocab_start, model->vocab_valid,
                                   (int)BT, C);
        comm_allreduce_f32(model->tp, a.encoded, BT * C);
    }
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * BT * C;
        float* ln1 = a.ln1 + l * BT * C;
        float* ln1_mean = a.ln1_mean + l * BT;
        float* ln1_rstd = a.ln1_rstd + l * BT;
        float* qkv = a.qkv + l * BT * 3 * Cl;
        float* atty = a.atty + l * BT * Cl;
        float* att = a.att + (size_t)l * B * NH * T * T;
        float* attproj = a.attproj + l * BT * C;
        float* residual2 = a.residual2 + l * BT * C;
        float* ln2 = a.ln2 + l * BT * C;
        float* ln2_mean = a.ln2_mean + l * BT;
        float* ln2_rstd = a.ln2_rstd + l * BT;
        float* fch = a.fch + l * BT * 4 * Cl;
        float* fch_gelu = a.fch_gelu + l * BT * 4 * Cl;
        float* fcproj = a.fcproj + l * BT * C;
        float* residual3 = a.residual3 + l * BT * C;

        // column-parallel qkv (this rank's heads), attention, row-parallel
        // projection + all-reduce; the same for the MLP (Megatron's f and g)
        ops->layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, p.ln1w + l * C, p.ln1b + l * C, BT, C);
        ops->matmul_forward(qkv, ln1, p.qkvw + (size_t)l * 3 * Cl * C, p.qkvb + l * 3 * Cl, BT, C, 3 * Cl);
        ops->attention_forward(atty, att, qkv, B, T, Cl, NH);
        ops->matmul_forward(attproj, atty, p.attprojw + (size_t)l * C * Cl, row_bias(model, p.attprojb + l * C), BT,
                            Cl, C);
        comm_allreduce_f32(model->tp, attproj, BT * C);
        ops->residual_forward(residual2, residual, attproj, BT * C);
        ops->layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, p.ln2w + l * C, p.ln2b + l * C, BT, C);
        ops->matmul_forward(fch, ln2, p.fcw + (size_t)l * 4 * Cl * C, p.fcb + l * 4 * Cl, BT, C, 4 * Cl);
        ops->gelu_forward(fch_gelu, fch, BT * 4 * Cl);
        ops->matmul_forward(fcproj, fch_gelu, p.fcprojw + (size_t)l * C * 4 * Cl, row_bias(model, p.fcprojb + l * C),
                            BT, 4 * Cl, C);
        comm_allreduce_f32(model->tp, fcproj, BT * C);
        ops->residual_forward(residual3, residual2, fcproj, BT * C);
    }
    const float* last = a.residual3 + (size_t)(L - 1) * BT * C;
    ops->layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, BT, C);
    model->mean_loss = -1.0f;
}

// Vocab-parallel cross-entropy (Megatron-LM): each rank's (max, sum-exp,
// target logit) over its vocab columns, one allgather, and every rank
// combines them in the same order into each row's logsumexp and loss
// (identical on every rank). losses (B*T) host; also sets acts.losses and
// tp_lse (for the backward) on the device.
static void vocab_parallel_crossentropy(GPT* model, const int* targets, float* losses) {
    const Ops* ops = model->ops;
    size_t BT = (size_t)model->B * model->T;
    int P = model->tp_size;
    float* mine = model->tp_stats + (size_t)model->tp_rank * BT * 3;
    ops->crossentropy_shard_stats(mine, model->acts.logits, model->targets, model->vocab_start, model->vocab_valid,
                                  (int)BT, model->vocab_shard);
    comm_allgather(model->tp, mine, model->tp_stats, BT * 3, COMM_F32);
    float* st = model->tp_stats_host;
    ops->to_host(st, model->tp_stats, (size_t)P * BT * 3 * sizeof(float));
    float* lse = mallocCheck(BT * sizeof(float));
    for (size_t i = 0; i < BT; i++) {
        if (targets[i] < 0) {
            losses[i] = lse[i] = 0.0f;
            continue;
        }
        float mx = -INFINITY;
        double tgt = 0.0;
        for (int r = 0; r < P; r++) {
            const float* s = st + ((size_t)r * BT + i) * 3;
            if (s[1] > 0.0f && s[0] > mx) mx = s[0]; // a rank with no real column has sum 0
            tgt += s[2];                            // only the owner's is non-zero
        }
        double sum = 0.0;
        for (int r = 0; r < P; r++) {
            const float* s = st + ((size_t)r * BT + i) * 3;
            if (s[1] > 0.0f) sum += (double)s[1] * exp((double)s[0] - mx);
        }
        lse[i] = (float)(mx + log(sum));
        losses[i] = (float)((double)mx + log(sum) - tgt);
    }
    ops->to_device(model->acts.losses, losses, BT * sizeof(float));
    ops->to_device(model->tp_lse, lse, BT * sizeof(float));
    free(lse);
}

void gpt_forward(GPT* model, const int* inputs, const int* targets, const float* mask, int B, int T) {
    const Ops* ops = model->ops;
    int V = model->config.vocab_size, C = model->config.channels;
    size_t BT = (size_t)B * T;
    if (targets)
        for (size_t i = 0; i < BT; i++)
            if (targets[i] >= V) fatalf("target token %d at position %zu is outside the vocab [0,%d)", targets[i], i, V);
    gpt_forward_trunk(model, inputs, B, T);
    ActivationTensors a = model->acts;
    int Vp = model->vocab_shard; // V, or this rank's vocab shard
    ops->matmul_forward(a.logits, a.lnf, model->params.wte, NULL, BT, C, Vp); // tied LM head, (B,T,Vp)

    if (!targets) {
        model->mean_loss = -1.0f;
        return;
    }
    // per-position weights: mask (default 1), 0 where there is no target;
    // d(mean)/d(loss_i) = w_i / sum(w)
    float* dl = mallocCheck(BT * sizeof(float));
    double wsum = 0.0;
    for (size_t i = 0; i < BT; i++) {
        float w = targets[i] < 0 ? 0.0f : (mask ? mask[i] : 1.0f);
        dl[i] = w;
        wsum += w;
    }
    for (size_t i = 0; i < BT; i++) dl[i] = wsum > 0 ? (float)(dl[i] / wsum) : 0.0f;
    ops->to_device(model->targets, targets, BT * sizeof(int));
    ops->to_device(model->dlosses, dl, BT * sizeof(float));
    float* losses = mallocCheck(BT * sizeof(float));
    if (model->tp_size == 1) {
        ops->crossentropy_forward(a.losses, a.logits, model->targets, BT, V);
        ops->to_host(losses, a.losses, BT * sizeof(float));
    } else {
        vocab_parallel_crossentropy(model, targets, losses);
    }
    double mean = 0.0;
    for (size_t i = 0; i < BT; i++) mean += (double)dl[i] * losses[i];
    model->mean_loss = wsum > 0 ? (float)mean : 0.0f;
    free(losses);
    free(dl);
}

void gpt_recompute_losses(GPT* model) {
    if (model->mean_loss < 0) fatalf("gpt_recompute_losses needs a forward pass with targets first");
    const Ops* ops = model->ops;
    const size_t BT = (size_t)model->B * model->T;
    int* targets = mallocCheck(BT * sizeof(int));
    float* dl = mallocCheck(BT * sizeof(float));
    float* losses = mallocCheck(BT * sizeof(float));
    ops->to_host(targets, model->targets, BT * sizeof(int));
    ops->to_host(dl, model->dlosses, BT * sizeof(float));
    if (model->tp_size == 1) {
        ops->crossentropy_forward(model->acts.losses, model->acts.logits, model->targets, (int)BT,
                                  model->config.vocab_size);
        ops->to_host(losses, model->acts.losses, BT * sizeof(float));
    } else {
        vocab_parallel_crossentropy(model, targets, losses);
    }
    double mean = 0.0;
    for (size_t i = 0; i < BT; i++) mean += (double)dl[i] * losses[i];
    model->mean_loss = (float)mean;
    free(targets);
    free(dl);
    free(losses);
}

void gpt_zero_grad(GPT* model) {
    if (model->grads_memory) model->ops->zero(model->grads_memory, model->num_parameters * sizeof(float));
}

// Allocates gradients and backward scratch on first use.
static void ensure_backward_buffers(GPT* model) {
    const Ops* ops = model->ops;
    if (!model->grads_memory) {
        model->grads_memory = ops->alloc(model->num_parameters * sizeof(float));
        point_parameters(&model->grads, model->grads_memory, model->param_sizes);
    }
    if (!model->scratch_memory) {
        int P = model->tp_size;
        size_t BT = (size_t)model->batch_size * model->seq_len, C = model->config.channels, Cl = C / P;
        size_t att = (size_t)model->batch_size * (model->config.num_heads / P) * model->seq_len * model->seq_len;
        size_t n = BT * C * 2 + BT * Cl + BT * 3 * Cl + BT * 4 * Cl + att;
        float* m = model->scratch_memory = ops->alloc(n * sizeof(float));
        model->d_residual = m; m += BT * C;
        model->d_ln = m;       m += BT * C;
        model->d_atty = m;     m += BT * Cl;
        model->d_qkv = m;      m += BT * 3 * Cl;
        model->d_fch = m;      m += BT * 4 * Cl;
        model->d_att = m;
    }
}

void gpt_ensure_grads(GPT* model) {
    if (!model->grads_memory) {
        model->grads_memory = model->ops->alloc(model->num_parameters * sizeof(float));
        point_parameters(&model->grads, model->grads_memory, model->param_sizes);
    }
}

float* gpt_hidden_grad(GPT* model) {
    if (!model->acts_memory) fatalf("gpt_hidden_grad needs a forward pass first");
    ensure_backward_buffers(model);
    size_t BT = (size_t)model->B * model->T;
    model->ops->zero(model->d_ln, BT * model->config.channels * sizeof(float));
    return model->d_ln;
}

// LM head backward: d(loss_i) = dlosses[i] (on the device) into d_ln and wte.
static void lm_head_backward(GPT* model, const float* dlosses) {
    const Ops* ops = model->ops;
    int V = model->config.vocab_size, C = model->config.channels;
    size_t BT = (size_t)model->B * model->T;
    ActivationTensors a = model->acts;
    if (model->tp_size == 1) {
        // logits become their own gradient (B,T,V)
        ops->crossentropy_backward(a.logits, a.logits, a.losses, dlosses, model->targets, BT, V);
        ops->matmul_backward(model->d_ln, model->grads.wte, NULL, a.logits, a.lnf, model->params.wte, BT, C, V);
        return;
    }
    // vocab-parallel: this rank's part of d(lnf) is summed over the ranks
    // before it joins d_ln, which other heads may already have added to
    // (replicated, so they must not be summed). d_residual is free until
    // gpt_backward_trunk zeroes it.
    int Vp = model->vocab_shard;
    ops->crossentropy_shard_backward(a.logits, a.logits, model->tp_lse, dlosses, model->targets, model->vocab_start,
                                     model->vocab_valid, (int)BT, Vp);
    ops->zero(model->d_residual, BT * C * sizeof(float));
    ops->matmul_backward(model->d_residual, model->grads.wte, NULL, a.logits, a.lnf, model->params.wte, BT, C, Vp);
    comm_allreduce_f32(model->tp, model->d_residual, BT * C);
    ops->residual_forward(model->d_ln, model->d_ln, model->d_residual, BT * C);
}

void gpt_backward(GPT* model) {
    if (model->mean_loss < 0) fatalf("gpt_backward needs a forward pass with targets first");
    gpt_hidden_grad(model); // zeroed d(lnf) (B,T,C)
    lm_head_backward(model, model->dlosses);
    gpt_backward_trunk(model);
}

void gpt_token_logprobs(const GPT* model, float* logp) {
    if (model->mean_loss < 0) fatalf("gpt_token_logprobs needs a forward pass with targets first");
    size_t BT = (size_t)model->B * model->T;
    int* targets = mallocCheck(BT * sizeof(int));
    model->ops->to_host(logp, model->acts.losses, BT * sizeof(float));
    model->ops->to_host(targets, model->targets, BT * sizeof(int));
    for (size_t i = 0; i < BT; i++) logp[i] = targets[i] < 0 ? 0.0f : -logp[i];
    free(targets);
}

void gpt_lm_head_backward(GPT* model, const float* dlogp) {
    if (model->mean_loss < 0) fatalf("gpt_lm_head_backward needs a forward pass with targets first");
    if (!model->scratch_memory) fatalf("gpt_lm_head_backward needs gpt_hidden_grad first");
    size_t BT = (size_t)model->B * model->T;
    float* dl = mallocCheck(BT * sizeof(float));
    for (size_t i = 0; i < BT; i++) dl[i] = -dlogp[i]; // loss_i = -logp_i
    model->ops->to_device(model->dlosses, dl, BT * sizeof(float));
    free(dl);
    lm_head_backward(model, model->dlosses);
}

void gpt_backward_trunk(GPT* model) {
    if (!model->scratch_memory) fatalf("gpt_backward_trunk needs gpt_hidden_grad first");
    const GPTConfig* c = &model->config;
    const Ops* ops = model->ops;
    int B = model->B, T = model->T, L = c->num_layers, C = c->channels;
    int P = model->tp_size, NH = c->num_heads / P, Cl = C / P; // this rank's heads
    size_t BT = (size_t)B * T;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts;
    float* dres = model->d_residual; // gradient of the residual stream, accumulated in place

    // final LayerNorm: d(lnf) is in d_ln
    ops->zero(dres, BT * C * sizeof(float));
    const float* last = a.residual3 + (size_t)(L - 1) * BT * C;
    ops->layernorm_backward(dres, g.lnfw, g.lnfb, model->d_ln, last, p.lnfw, a.lnf_mean, a.lnf_rstd, BT, C);

    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * BT * C;
        const float* ln1 = a.ln1 + l * BT * C;
        const float* qkv = a.qkv + l * BT * 3 * Cl;
        const float* atty = a.atty + l * BT * Cl;
        const float* att = a.att + (size_t)l * B * NH * T * T;
        const float* residual2 = a.residual2 + l * BT * C;
        const float* ln2 = a.ln2 + l * BT * C;
        const float* fch = a.fch + l * BT * 4 * Cl;
        const float* fch_gelu = a.fch_gelu + l * BT * 4 * Cl;

        // MLP block: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        // dres is d(residual3) = d(fcproj); the skip path keeps it for residual2.
        // Under tp, dres is replicated, so the row-parallel fcproj needs no
        // communication and every rank gets the same fcprojb gradient; the
        // column-parallel fc's d(ln2) is a partial sum: all-reduced.
        ops->zero(model->d_fch, BT * 4 * Cl * sizeof(float));
        ops->matmul_backward(model->d_fch, g.fcprojw + (size_t)l * C * 4 * Cl, g.fcprojb + l * C, dres, fch_gelu,
                             p.fcprojw + (size_t)l * C * 4 * Cl, BT, 4 * Cl, C);
        ops->gelu_backward(model->d_fch, fch, model->d_fch, BT * 4 * Cl);
        ops->zero(model->d_ln, BT * C * sizeof(float));
        ops->matmul_backward(model->d_ln, g.fcw + (size_t)l * 4 * Cl * C, g.fcb + l * 4 * Cl, model->d_fch, ln2,
                             p.fcw + (size_t)l * 4 * Cl * C, BT, C, 4 * Cl);
        comm_allreduce_f32(model->tp, model->d_ln, BT * C);
        ops->layernorm_backward(dres, g.ln2w + l * C, g.ln2b + l * C, model->d_ln, residual2, p.ln2w + l * C,
                                a.ln2_mean + l * BT, a.ln2_rstd + l * BT, BT, C);
        // attention block: residual2 = residual + attproj(attn(qkv(ln1(residual))))
        ops->zero(model->d_atty, BT * Cl * sizeof(float));
        ops->matmul_backward(model->d_atty, g.attprojw + (size_t)l * C * Cl, g.attprojb + l * C, dres, atty,
                             p.attprojw + (size_t)l * C * Cl, BT, Cl, C);
        ops->zero(model->d_qkv, BT * 3 * Cl * sizeof(float));
        ops->attention_backward(model->d_qkv, model->d_att, model->d_atty, qkv, att, B, T, Cl, NH);
        ops->zero(model->d_ln, BT * C * sizeof(float));
        ops->matmul_backward(model->d_ln, g.qkvw + (size_t)l * 3 * Cl * C, g.qkvb + l * 3 * Cl, model->d_qkv, ln1,
                             p.qkvw + (size_t)l * 3 * Cl * C, BT, C, 3 * Cl);
        comm_allreduce_f32(model->tp, model->d_ln, BT * C);
        ops->layernorm_backward(dres, g.ln1w + l * C, g.ln1b + l * C, model->d_ln, residual, p.ln1w + l * C,
                                a.ln1_mean + l * BT, a.ln1_rstd + l * BT, BT, C);
    }
    if (P == 1)
        ops->encoder_backward(g.wte, g.wpe, dres, model->inputs, B, T, C);
    else // this rank's vocab rows; wpe (replicated) the same on every rank
        ops->encoder_shard_backward(g.wte, g.wpe, dres, model->inputs, model->positions, model->vocab_start,
                                    model->vocab_valid, (int)BT, C);
}

float gpt_update(GPT* model, const AdamWConfig* cfg) {
    const Ops* ops = model->ops;
    if (!model->grads_memory) fatalf("gpt_update needs gradients (call gpt_backward first)");
    size_t n = model->num_parameters;
    if (!model->m_memory) {
        model->m_memory = ops->alloc(n * sizeof(float));
        model->v_memory = ops->alloc(n * sizeof(float));
    }
    float norm = (float)sqrt(gpt_grad_sumsq(model));
    model->last_grad_norm = norm;
    float grad_scale = 1.0f; // clipping is applied inside the AdamW pass
    if (cfg->grad_clip > 0.0f) {
        float coef = cfg->grad_clip / (norm + 1e-6f); // as torch.nn.utils.clip_grad_norm_
        if (coef < 1.0f) grad_scale = coef;
    }
    int t = ++model->adam_step;
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t sz = model->param_sizes[i];
        float wd = gpt_param_decays(i) ? cfg->weight_decay : 0.0f;
        ops->adamw_update(model->params_memory + off, model->grads_memory + off, model->m_memory + off,
                          model->v_memory + off, sz, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, wd, grad_scale, t);
        off += sz;
    }
    return norm;
}

double gpt_grad_sumsq_range(const GPT* model, size_t begin, size_t end) {
    if (!model->grads_memory) fatalf("gpt_grad_sumsq_range needs gradients (backward first)");
    if (end > model->num_parameters) end = model->num_parameters;
    if (begin >= end) return 0.0;
    const Ops* ops = model->ops;
    if (model->tp_size == 1) return ops->sum_squares(model->grads_memory + begin, end - begin);
    // replicated tensors are on every tp rank: each counts 1/tp of them
    double total = 0.0, w_rep = 1.0 / model->tp_size;
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t lo = off > begin ? off : begin, hi = off + model->param_sizes[i] < end ? off + model->param_sizes[i] : end;
        if (lo < hi) {
            double s = ops->sum_squares(model->grads_memory + lo, hi - lo);
            total += gpt_param_tp_sharded(model, i) ? s : s * w_rep;
        }
        off += model->param_sizes[i];
    }
    return total;
}

double gpt_grad_sumsq(const GPT* model) {
    if (model->tp_size == 1) return model->ops->sum_squares(model->grads_memory, model->num_parameters);
    double ss = gpt_grad_sumsq_range(model, 0, model->num_parameters);
    comm_allreduce_f64(model->tp, &ss, 1);
    return ss;
}

void gpt_logits_rows(const GPT* model, const size_t* rows, int n, float* out) {
    const Ops* ops = model->ops;
    int V = model->config.vocab_size, Vp = model->vocab_shard, P = model->tp_size;
    size_t BT = (size_t)model->B * model->T;
    for (int i = 0; i < n; i++)
        if (rows[i] >= BT) fatalf("gpt_logits_rows: row %zu outside the last forward's %zu", rows[i], BT);
    if (P == 1) {
        for (int i = 0; i < n; i++)
            ops->to_host(out + (size_t)i * V, model->acts.logits + rows[i] * V, (size_t)V * sizeof(float));
        return;
    }
    // (P, n, Vp): every rank's shard of the rows, then the real columns in vocab order
    size_t per = (size_t)n * Vp;
    float* all = mallocCheck((size_t)P * (per ? per : 1) * sizeof(float));
    float* mine = all + (size_t)model->tp_rank * per;
    for (int i = 0; i < n; i++)
        ops->to_host(mine + (size_t)i * Vp, model->acts.logits + rows[i] * Vp, (size_t)Vp * sizeof(float));
    comm_allgather(model->tp, mine, all, per, COMM_F32);
    for (int r = 0; r < P; r++) {
        int v0 = r * Vp, nv = V - v0 < Vp ? V - v0 : Vp;
        for (int i = 0; nv > 0 && i < n; i++)
            memcpy(out + (size_t)i * V + v0, all + (size_t)r * per + (size_t)i * Vp, (size_t)nv * sizeof(float));
    }
    free(all);
}

void gpt_free(GPT* model) {
    const Ops* ops = model->ops;
    if (!ops) return;
    ops->free(model->params_memory);
    ops->free(model->grads_memory);
    ops->free(model->m_memory);
    ops->free(model->v_memory);
    free_activations(model);
    memset(model, 0, sizeof *model);
}
