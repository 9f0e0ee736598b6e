// reward_model.c - see reward_model.h.
//
// The head is C+1 numbers, so it runs on the host: the forward copies the B
// rows of acts.lnf it reads (one per sequence, at its last real token) to the
// host, and the backward writes d(loss)/d(row) = dr * head_w back into those
// rows of gpt_hidden_grad(). Only the rows cross the device boundary, never
// the (B,T,C) state, so a device backend works unchanged.
#include "reward_model.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model_io.h"
#include "../common/check.h"
#include "../common/hfdata.h"
#include "../common/rng.h"
#include "../common/safetensors.h"

#define HEAD_W_NAME "head.w"
#define HEAD_B_NAME "head.b"
#define OFFSET_META "reward_offset"
#define DEFAULT_SCORE_BATCH 16

// ----------------------------------------------------------------------------
// head buffers

static void head_alloc(RewardModel* rm) {
    const Ops* ops = rm->gpt.ops;
    size_t n = (size_t)rm->gpt.config.channels + 1;
    rm->head_memory = ops->alloc(n * sizeof(float));
    rm->head_w = rm->head_memory;
    rm->head_b = rm->head_memory + rm->gpt.config.channels;
    rm->head_dw = ops->alloc(n * sizeof(float));
    rm->head_db = rm->head_dw + rm->gpt.config.channels;
}

void rm_head_to_host(const RewardModel* rm, float* w, float* b) {
    int C = rm->gpt.config.channels;
    rm->gpt.ops->to_host(w, rm->head_w, (size_t)C * sizeof(float));
    rm->gpt.ops->to_host(b, rm->head_b, sizeof(float));
}

// Host copy of [w, b] (C+1), malloc'd.
static float* head_host(const RewardModel* rm) {
    int C = rm->gpt.config.channels;
    float* h = mallocCheck(((size_t)C + 1) * sizeof(float));
    rm_head_to_host(rm, h, h + C);
    return h;
}

void rm_init_from(RewardModel* rm, const char* model_path, const Ops* ops, uint64_t seed) {
    rm_init_from_tp(rm, model_path, ops, NULL, seed);
}

void rm_init_from_tp(RewardModel* rm, const char* model_path, const Ops* ops, Comm* tp, uint64_t seed) {
    memset(rm, 0, sizeof *rm);
    model_load_tp(&rm->gpt, model_path, ops, tp, NULL);
    rm_init_head(rm, seed);
}

void rm_init_head(RewardModel* rm, uint64_t seed) {
    const Ops* ops = rm->gpt.ops;
    head_alloc(rm);
    int C = rm->gpt.config.channels;
    float* h = callocCheck((size_t)C + 1, sizeof(float)); // bias 0
    Rng rng;
    rng_seed(&rng, seed ^ 0x5EEDBEEF0123ull);
    float std = 1.0f / sqrtf((float)C);
    for (int i = 0; i < C; i++) h[i] = std * rng_normal(&rng);
    ops->to_device(rm->head_memory, h, ((size_t)C + 1) * sizeof(float));
    free(h);
    rm->offset = 0.0f;
}

// ----------------------------------------------------------------------------
// load / save

// Reads a 1-D float tensor of n elements named name from f into dst.
static void read_head_tensor(const StFile* f, const char* name, int n, float* dst) {
    const StTensor* t = st_find(f, name);
    if (!t)
        fatalf("%s: no tensor '%s': not a reward model (train one with `rlhfd rm`)", f->path, name);
    if (t->ndim != 1 || t->shape[0] != n) {
        char got[64];
        fatalf("%s: tensor '%s' has shape %s, expected [%d]", f->path, name,
               st_shape_str(got, sizeof got, t->shape, t->ndim), n);
    }
    if (t->dtype == ST_OTHER)
        fatalf("%s: tensor '%s' has dtype %s (F32, F16 or BF16 expected)", f->path, name, t->dtype_name);
    st_read_f32(f, t, dst);
}

void rm_load(RewardModel* rm, const char* path, const Ops* ops) { rm_load_tp(rm, path, ops, NULL); }

void rm_load_tp(RewardModel* rm, const char* path, const Ops* ops, Comm* tp) {
    memset(rm, 0, sizeof *rm);
    char* resolved = model_resolve(path);
    ModelFormat format = model_detect(resolved);
    char* weights = NULL;
    if (format == MODEL_NATIVE_DIR) {
        size_t n = strlen(resolved) + 32;
        weights = mallocCheck(n);
        snprintf(weights, n, "%s/model.safetensors", resolved);
    } else if (format == MODEL_NATIVE_FILE) {
        weights = strdup(resolved);
    } else {
        fatalf("%s: a %s model has no reward head: not a reward model (train one with `rlhfd rm`)",
               path, model_format_name(format));
    }
    model_load_tp(&rm->gpt, resolved, ops, tp, NULL); // verifies size + crc32 of a checkpoint dir
    StFile f;
    st_open(&f, weights);
    int C = rm->gpt.config.channels;
    float* h = mallocCheck(((size_t)C + 1) * sizeof(float));
    read_head_tensor(&f, HEAD_W_NAME, C, h);
    read_head_tensor(&f, HEAD_B_NAME, 1, h + C);
    const char* off = st_meta(&f, OFFSET_META);
    char* end = NULL;
    double offset = off ? strtod(off, &end) : NAN;
    if (!off || end == off || *end || !isfinite(offset))
        fatalf("%s: metadata '%s' is missing or not a finite number", weights, OFFSET_META);
    head_alloc(rm);
    ops->to_device(rm->head_memory, h, ((size_t)C + 1) * sizeof(float));
    rm->offset = (float)offset;
    free(h);
    st_close(&f);
    free(weights);
    free(resolved);
}

void rm_save(const RewardModel* rm, const char* dir, json_t* state) {
    int C = rm->gpt.config.channels;
    float* h = head_host(rm);
    StWriteTensor extra[2] = {
        {.name = HEAD_W_NAME, .data = h, .ndim = 1, .shape = {C}},
        {.name = HEAD_B_NAME, .data = h + C, .ndim = 1, .shape = {1}},
    };
    char offset_text[64];
    snprintf(offset_text, sizeof offset_text, "%.9g", (double)rm->offset);
    json_t* meta = json_object();
    json_object_set_new(meta, OFFSET_META, json_string(offset_text));
    json_object_set_new(meta, "head", json_string("reward"));
    json_t* st = json_is_object(state) ? json_copy(state) : json_object();
    json_object_set_new(st, OFFSET_META, json_real(rm->offset));
    checkpoint_save_extra(&rm->gpt, dir, st, 0, extra, 2, meta);
    json_decref(st);
    json_decref(meta);
    free(h);
}

int rm_save_try(const RewardModel* rm, const char* dir, const CheckpointSaveOptions* opts, char* err,
                size_t errlen) {
    if (opts && opts->num_extra) fatalf("rm_save_try: extra tensors are the head's own");
    int C = rm->gpt.config.channels;
    float* h = head_host(rm);
    StWriteTensor extra[2] = {
        {.name = HEAD_W_NAME, .data = h, .ndim = 1, .shape = {C}},
        {.name = HEAD_B_NAME, .data = h + C, .ndim = 1, .shape = {1}},
    };
    char offset_text[64];
    snprintf(offset_text, sizeof offset_text, "%.9g", (double)rm->offset);
    json_t* meta = json_object();
    json_object_set_new(meta, OFFSET_META, json_string(offset_text));
    json_object_set_new(meta, "head", json_string("reward"));
    CheckpointSaveOptions o = {0};
    if (opts) o = *opts;
    json_t* st = json_is_object(o.state) ? json_copy(o.state) : json_object();
    json_object_set_new(st, OFFSET_META, json_real(rm->offset));
    o.state = st;
    o.extra = extra;
    o.num_extra = 2;
    o.extra_meta = meta;
    int rc = checkpoint_try_save(&rm->gpt, dir, &o, err, errlen);
    json_decref(st);
    json_decref(meta);
    free(h);
    return rc;
}

void rm_free(RewardModel* rm) {
    const Ops* ops = rm->gpt.ops;
    if (ops) {
        ops->free(rm->head_memory);
        ops->free(rm->head_dw);
        ops->free(rm->head_m);
        ops->free(rm->head_v);
    }
    gpt_free(&rm->gpt);
    free(rm->last_pos);
    free(rm->last_hidden);
    memset(rm, 0, sizeof *rm);
}

// ----------------------------------------------------------------------------
// forward / backward / update

void rm_reserve(RewardModel* rm, int B, int T) {
    if (T > rm->gpt.config.max_seq_len)
        fatalf("reward model: sequences of %d tokens exceed the context (%d)", T, rm->gpt.config.max_seq_len);
    gpt_reserve(&rm->gpt, B, T);
}

static void ensure_last(RewardModel* rm, int B) {
    if (B <= rm->cap) return;
    rm->last_pos = reallocCheck(rm->last_pos, (size_t)B * sizeof(int));
    rm->last_hidden = reallocCheck(rm->last_hidden, (size_t)B * rm->gpt.config.channels * sizeof(float));
    rm->cap = B;
}

void rm_forward(RewardModel* rm, const int* tokens, const int* lens, int B, int T, float* rewards) {
    GPT* g = &rm->gpt;
    const Ops* ops = g->ops;
    int C = g->config.channels;
    for (int b = 0; b < B; b++)
        if (lens[b] < 1 || lens[b] > T)
            fatalf("reward model: sequence %d has length %d, outside [1, %d]", b, lens[b], T);
    rm_reserve(rm, B, T);
    gpt_forward_trunk(g, tokens, B, T); // acts.lnf (B,T,C)
    ensure_last(rm, B);
    rm->B = B;
    rm->T = T;
    float* h = head_host(rm);
    for (int b = 0; b < B; b++) {
        int pos = b * T + lens[b] - 1;
        float* row = rm->last_hidden + (size_t)b * C; // (C)
        rm->last_pos[b] = pos;
        ops->to_host(row, g->acts.lnf + (size_t)pos * C, (size_t)C * sizeof(float));
        double raw = h[C];
        for (int i = 0; i < C; i++) raw += (double)h[i] * row[i];
        rewards[b] = (float)raw - rm->offset;
    }
    free(h);
}

void rm_zero_grad(RewardModel* rm) {
    gpt_zero_grad(&rm->gpt);
    rm->gpt.ops->zero(rm->head_dw, ((size_t)rm->gpt.config.channels + 1) * sizeof(float));
}

void rm_backward(RewardModel* rm, const float* drewards) {
    GPT* g = &rm->gpt;
    const Ops* ops = g->ops;
    int C = g->config.channels;
    if (rm->B <= 0 || g->B != rm->B || g->T != rm->T)
        fatalf("rm_backward needs rm_forward first (and no other forward in between)");
    float* dlnf = gpt_hidden_grad(g); // (B,T,C), zeroed
    float* h = head_host(rm);
    float* dh = mallocCheck(((size_t)C + 1) * sizeof(float)); // d[w, b]
    ops->to_host(dh, rm->head_dw, ((size_t)C + 1) * sizeof(float));
    float* drow = mallocCheck((size_t)C * sizeof(float));
    for (int b = 0; b < rm->B; b++) {
        float dr = drewards[b];
        const float* row = rm->last_hidden + (size_t)b * C;
        for (int i = 0; i < C; i++) {
            drow[i] = dr * h[i];   // d(loss)/d(lnf row)
            dh[i] += dr * row[i];  // d(loss)/d(w)
        }
        dh[C] += dr;               // d(loss)/d(b)
        ops->to_device(dlnf + (size_t)rm->last_pos[b] * C, drow, (size_t)C * sizeof(float));
    }
    ops->to_device(rm->head_dw, dh, ((size_t)C + 1) * sizeof(float));
    gpt_backward_trunk(g);
    free(drow);
    free(dh);
    free(h);
}

float rm_update(RewardModel* rm, const AdamWConfig* cfg) {
    GPT* g = &rm->gpt;
    const Ops* ops = g->ops;
    size_t n = g->num_parameters, C = (size_t)g->config.channels;
    if (!g->grads_memory) fatalf("rm_update needs gradients (call rm_backward first)");
    if (!g->m_memory) {
        g->m_memory = ops->alloc(n * sizeof(float));
        g->v_memory = ops->alloc(n * sizeof(float));
    }
    if (!rm->head_m) {
        rm->head_m = ops->alloc((C + 1) * sizeof(float));
        rm->head_v = ops->alloc((C + 1) * sizeof(float));
    }
    // the trunk's whole-model sum (tensor parallel: over its shards); the
    // head is replicated, the same on every tp rank
    double ss = gpt_grad_sumsq(g) + ops->sum_squares(rm->head_dw, C + 1);
    float norm = (float)sqrt(ss);
    rm->last_grad_norm = g->last_grad_norm = norm;
    float grad_scale = 1.0f; // clipping happens inside the AdamW pass, as in gpt_update
    if (cfg->grad_clip > 0.0f) {
        float coef = cfg->grad_clip / (norm + 1e-6f);
        if (coef < 1.0f) grad_scale = coef;
    }
    int t = ++g->adam_step;
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t sz = g->param_sizes[i];
        float wd = gpt_param_decays(i) ? cfg->weight_decay : 0.0f;
        ops->adamw_update(g->params_memory + off, g->grads_memory + off, g->m_memory + off,
                          g->v_memory + off, sz, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, wd,
                          grad_scale, t);
        off += sz;
    }
    ops->adamw_update(rm->head_w, rm->head_dw, rm->head_m, rm->head_v, C, cfg->lr, cfg->beta1,
                      cfg->beta2, cfg->eps, cfg->weight_decay, grad_scale, t);
    ops->adamw_update(rm->head_b, rm->head_db, rm->head_m + C, rm->head_v + C, 1, cfg->lr,
                      cfg->beta1, cfg->beta2, cfg->eps, 0.0f, grad_scale, t);
    return norm;
}

// ----------------------------------------------------------------------------
// data parallelism

double rm_allreduce_grads(RewardModel* rm, DataParallel* d, double local_weight) {
    double global = dp_allreduce_grads(d, &rm->gpt, local_weight);
    // the head's gradient gets the trunk's scale (the same expression as
    // dp_allreduce_grads, so both see exactly the same factor)
    float scale = global > 0 ? (float)(local_weight / global) : 0.0f;
    dp_allreduce_scaled(d, rm->head_dw, (size_t)rm->gpt.config.channels + 1, scale);
    return global;
}

float rm_update_dp(RewardModel* rm, DataParallel* d, const AdamWConfig* cfg) {
    if (!d->zero1) return rm_update(rm, cfg);
    GPT* g = &rm->gpt;
    const Ops* ops = g->ops;
    size_t n = g->num_parameters, C = (size_t)g->config.channels;
    if (!g->grads_memory) fatalf("rm_update needs gradients (call rm_backward first)");
    if (!rm->head_m) {
        rm->head_m = ops->alloc((C + 1) * sizeof(float));
        rm->head_v = ops->alloc((C + 1) * sizeof(float));
        ops->zero(rm->head_m, (C + 1) * sizeof(float));
        ops->zero(rm->head_v, (C + 1) * sizeof(float));
    }
    // the gradients are the same on every dp rank: the norm over trunk + head
    // is computed here, exactly as rm_update does (the trunk's over its tp
    // shards, collective over tp; the replicated head counted once)
    double ss = gpt_grad_sumsq(g) + ops->sum_squares(rm->head_dw, C + 1);
    float norm = (float)sqrt(ss);
    float grad_scale = 1.0f;
    if (cfg->grad_clip > 0.0f) {
        float coef = cfg->grad_clip / (norm + 1e-6f);
        if (coef < 1.0f) grad_scale = coef;
    }
    // dp_update clips by the trunk's norm alone: clip here instead by
    // pre-scaling the trunk's gradient (the AdamW kernel forms grad *
    // grad_scale in float, so the step is the same as rm_update's) and let
    // it run with clipping off
    if (grad_scale != 1.0f) ops->scale(g->grads_memory, grad_scale, n);
    AdamWConfig unclipped = *cfg;
    unclipped.grad_clip = 0.0f;
    dp_update(d, g, &unclipped); // ++adam_step; sharded step + parameter all-gather
    int t = g->adam_step;
    ops->adamw_update(rm->head_w, rm->head_dw, rm->head_m, rm->head_v, C, cfg->lr, cfg->beta1,
                      cfg->beta2, cfg->eps, cfg->weight_decay, grad_scale, t);
    ops->adamw_update(rm->head_b, rm->head_db, rm->head_m + C, rm->head_v + C, 1, cfg->lr,
                      cfg->beta1, cfg->beta2, cfg->eps, 0.0f, grad_scale, t);
    rm->last_grad_norm = g->last_grad_norm = norm;
    return norm;
}

// ----------------------------------------------------------------------------
// the K-wise ranking loss

// log(sigmoid(x)) without overflow: -softplus(-x)
static double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }

double rm_ranking_loss(const float* rewards, int G, const int* k, const int* const* rankings,
                       float* drewards, int* pairs_right, int* pairs_total) {
    double loss = 0.0;
    int right = 0, total = 0, off = 0;
    for (int g = 0; g < G; g++) {
        int K = k[g];
        if (K < 2) fatalf("rm_ranking_loss: ranking %d has k = %d (< 2)", g, K);
        const float* r = rewards + off;
        float* dr = drewards ? drewards + off : NULL;
        if (dr) memset(dr, 0, (size_t)K * sizeof(float));
        double npairs = 0.5 * K * (K - 1);
        double scale = 1.0 / (npairs * G); // mean over pairs, then over rankings
        double sum = 0.0;
        for (int i = 0; i < K; i++) {
            for (int j = i + 1; j < K; j++) {
                int w = rankings[g][i], l = rankings[g][j]; // w ranked above l
                double d = (double)r[w] - (double)r[l];
                sum += log_sigmoid(d);
                right += d > 0;
                total++;
                if (dr) { // d(-log sigmoid(d))/dd = -sigmoid(-d)
                    double s = 1.0 / (1.0 + exp(d));
                    dr[w] -= (float)(s * scale);
                    dr[l] += (float)(s * scale);
                }
            }
        }
        loss -= sum / npairs;
        off += K;
    }
    if (pairs_right) *pairs_right = right;
    if (pairs_total) *pairs_total = total;
    return G > 0 ? loss / G : 0.0;
}

// ----------------------------------------------------------------------------
// scoring

int* rm_encode_pair(const Tokenizer* tok, const char* prompt, const char* response, int* len) {
    int prompt_len;
    // encoding only fills the tokenizer's word cache
    return hf_encode_pair((Tokenizer*)tok, prompt, response, len, &prompt_len);
}

static const int* sort_lens; // qsort has no context argument
static int by_length(const void* a, const void* b) {
    int x = *(const int*)a, y = *(const int*)b;
    if (sort_lens[x] != sort_lens[y]) return sort_lens[x] - sort_lens[y];
    return x - y;
}

void rm_score_tokens(RewardModel* rm, const int* const* seqs, const int* lens, int n,
                     int batch_size, float* out) {
    if (n <= 0) return;
    if (batch_size <= 0) batch_size = DEFAULT_SCORE_BATCH;
    int ctx = rm->gpt.config.max_seq_len, max_len = 0;
    for (int i = 0; i < n; i++) {
        if (lens[i] < 1 || lens[i] > ctx)
            fatalf("reward model: sequence %d has %d tokens, outside [1, %d] (the context)", i,
                   lens[i], ctx);
        if (lens[i] > max_len) max_len = lens[i];
    }
    // similar lengths together: less padding
    int* order = mallocCheck((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) order[i] = i;
    sort_lens = lens;
    qsort(order, (size_t)n, sizeof(int), by_length);
    rm_reserve(rm, n < batch_size ? n : batch_size, max_len);
    int* tokens = mallocCheck((size_t)batch_size * max_len * sizeof(int)); // (B,T)
    int* blens = mallocCheck((size_t)batch_size * sizeof(int));
    float* rewards = mallocCheck((size_t)batch_size * sizeof(float));
    for (int start = 0; start < n; start += batch_size) {
        int B = n - start < batch_size ? n - start : batch_size;
        int T = lens[order[start + B - 1]]; // the longest of this batch
        for (int b = 0; b < B; b++) {
            int i = order[start + b];
            blens[b] = lens[i];
            memcpy(tokens + (size_t)b * T, seqs[i], (size_t)lens[i] * sizeof(int));
            for (int t = lens[i]; t < T; t++) tokens[(size_t)b * T + t] = 0; // padding: never read
        }
        rm_forward(rm, tokens, blens, B, T, rewards);
        for (int b = 0; b < B; b++) out[order[start + b]] = rewards[b];
    }
    free(rewards);
    free(blens);
    free(tokens);
    free(order);
}

void rm_score_texts(RewardModel* rm, const Tokenizer* tok, const char* const* prompts,
                    const char* const* responses, int n, float* out) {
    if (n <= 0) return;
    int ctx = rm->gpt.config.max_seq_len;
    int** seqs = mallocCheck((size_t)n * sizeof(int*));
    int* lens = mallocCheck((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        seqs[i] = rm_encode_pair(tok, prompts[i], responses[i], &lens[i]);
        if (lens[i] > ctx)
            fatalf("reward model: text %d: prompt+response is %d tokens, longer than the context (%d)",
                   i, lens[i], ctx);
    }
    rm_score_tokens(rm, (const int* const*)seqs, lens, n, DEFAULT_SCORE_BATCH, out);
    for (int i = 0; i < n; i++) free(seqs[i]);
    free(seqs);
    free(lens);
}
