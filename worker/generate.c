// generate.c - batched KV-cache decoding (rows over a per-sequence cache)
// and host-side sampling. See generate.h for the design.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "common/check.h"
#include "worker/generate.h"

// Rows per forward call. Bounds the workspace (about 16*C floats a row plus
// logits) when many long prompts are prefilled at once; chunking is exact
// because a sequence's rows go in position order, so every row finds the
// earlier positions in the cache or in its own chunk.
#define ROWS_PER_CHUNK 512

// Under tensor parallelism (gpt.h) each rank's cache holds its own heads:
// width Ca = C/tp instead of C; the rows' qkv and MLP buffers shrink the same
// way, the residual stream stays (R, C) and replicated.
struct KVCache {
    const Ops* ops;
    int num_seqs, max_t, num_layers, channels, num_heads, vocab;
    int tp_size, c_attn, vocab_shard; // tp ranks; this rank's attention width Ca and vocab rows Vp
    float* kcache; // (L, S, maxT, Ca) on the device
    float* vcache; // (L, S, maxT, Ca)
    // row workspace on the device, capacity cap_rows
    int cap_rows;
    int* d_seq;      // (R)
    int* d_pos;      // (R)
    int* d_tok;      // (R)
    float* x;        // (R, C) residual stream
    float* ln;       // (R, C) LayerNorm output (ln1, ln2, lnf in turn)
    float* ln_mean;  // (R)
    float* ln_rstd;  // (R)
    float* qkv;      // (R, 3Ca)
    float* atty;     // (R, Ca)
    float* proj;     // (R, C) attention / MLP projection output
    float* res2;     // (R, C) residual after attention
    float* fch;      // (R, 4Ca)
    float* fch_gelu; // (R, 4Ca)
    float* head_in;  // (R, C) lnf of the wanted rows, compacted
    float* host_rows; // (R, C) host staging to compact the wanted rows
    int cap_logit_rows;
    float* logits;   // (W, V) logits of the wanted rows, capacity cap_logit_rows;
                     // under tp (tp, W, Vp): every rank's vocab shard, gathered
    float* host_logits; // (tp, W, Vp) host staging of the gathered shards (tp only)
    const float* last_hidden; // (W, C) lnf of the wanted rows of the last forward (head_in or ln)
};

static void kv_free_rows(KVCache* kv) {
    const Ops* o = kv->ops;
    void* bufs[] = {kv->d_seq, kv->d_pos, kv->d_tok, kv->x, kv->ln, kv->ln_mean, kv->ln_rstd,
                    kv->qkv, kv->atty, kv->proj, kv->res2, kv->fch, kv->fch_gelu, kv->head_in};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) o->free(bufs[i]);
    free(kv->host_rows);
    kv->host_rows = NULL;
    kv->cap_rows = 0;
}

// Grows the logits buffer to hold W rows of V (the big one: only wanted rows).
static void kv_reserve_logits(KVCache* kv, int W) {
    if (W <= kv->cap_logit_rows) return;
    if (kv->logits) kv->ops->free(kv->logits);
    free(kv->host_logits);
    kv->host_logits = NULL;
    if (kv->tp_size == 1) {
        kv->logits = kv->ops->alloc((size_t)W * kv->vocab * sizeof(float));
    } else {
        size_t n = (size_t)kv->tp_size * W * kv->vocab_shard;
        kv->logits = kv->ops->alloc(n * sizeof(float));
        kv->host_logits = mallocCheck(n * sizeof(float));
    }
    kv->cap_logit_rows = W;
}

// Grows the row workspace to hold at least R rows.
static void kv_reserve_rows(KVCache* kv, int R) {
    if (R <= kv->cap_rows) return;
    kv_free_rows(kv);
    const Ops* o = kv->ops;
    size_t r = (size_t)R, C = (size_t)kv->channels, Ca = (size_t)kv->c_attn;
    kv->d_seq = o->alloc(r * sizeof(int));
    kv->d_pos = o->alloc(r * sizeof(int));
    kv->d_tok = o->alloc(r * sizeof(int));
    kv->x = o->alloc(r * C * sizeof(float));
    kv->ln = o->alloc(r * C * sizeof(float));
    kv->ln_mean = o->alloc(r * sizeof(float));
    kv->ln_rstd = o->alloc(r * sizeof(float));
    kv->qkv = o->alloc(r * 3 * Ca * sizeof(float));
    kv->atty = o->alloc(r * Ca * sizeof(float));
    kv->proj = o->alloc(r * C * sizeof(float));
    kv->res2 = o->alloc(r * C * sizeof(float));
    kv->fch = o->alloc(r * 4 * Ca * sizeof(float));
    kv->fch_gelu = o->alloc(r * 4 * Ca * sizeof(float));
    kv->head_in = o->alloc(r * C * sizeof(float));
    kv->host_rows = mallocCheck(r * C * sizeof(float));
    kv->cap_rows = R;
}

KVCache* kvcache_new(const GPT* model, int num_seqs) {
    if (num_seqs <= 0) fatalf("kvcache_new: number of sequences must be positive, got %d", num_seqs);
    const GPTConfig* c = &model->config;
    KVCache* kv = callocCheck(1, sizeof(KVCache));
    kv->ops = model->ops;
    kv->num_seqs = num_seqs;
    kv->max_t = c->max_seq_len;
    kv->num_layers = c->num_layers;
    kv->channels = c->channels;
    kv->num_heads = c->num_heads;
    kv->vocab = c->vocab_size;
    kv->tp_size = model->tp_size;
    kv->c_attn = c->channels / model->tp_size;
    kv->vocab_shard = model->vocab_shard;
    size_t n = (size_t)c->num_layers * num_seqs * c->max_seq_len * kv->c_attn;
    kv->kcache = kv->ops->alloc(n * sizeof(float));
    kv->vcache = kv->ops->alloc(n * sizeof(float));
    return kv;
}

void kvcache_free(KVCache* kv) {
    if (!kv) return;
    kv_free_rows(kv);
    if (kv->logits) kv->ops->free(kv->logits);
    free(kv->host_logits);
    kv->ops->free(kv->kcache);
    kv->ops->free(kv->vcache);
    free(kv);
}

// Host-side checks of the row descriptors: a bad id would index out of the
// cache or the embedding tables on the device.
static void check_rows(const KVCache* kv, const int* seq, const int* pos, const int* tok, int R) {
    for (int r = 0; r < R; r++) {
        if (seq[r] < 0 || seq[r] >= kv->num_seqs)
            fatalf("generate: row %d: sequence %d outside the cache's %d sequences", r, seq[r], kv->num_seqs);
        if (pos[r] < 0 || pos[r] >= kv->max_t)
            fatalf("generate: row %d: position %d outside the context length %d", r, pos[r], kv->max_t);
        if (tok[r] < 0 || tok[r] >= kv->vocab)
            fatalf("generate: row %d: token id %d outside the vocab (size %d)", r, tok[r], kv->vocab);
    }
}

// One transformer block over the rows in kv->x (R,C), in place. Under tp:
// this rank's heads and hidden units, the two row-parallel projections
// all-reduced (their biases added by tp rank 0 only), as gpt_forward does.
static void block_rows(GPT* model, KVCache* kv, int l, int R) {
    const Ops* o = model->ops;
    const ParameterTensors* p = &model->params;
    size_t C = (size_t)kv->channels, Ca = (size_t)kv->c_attn;
    int NH = kv->num_heads / kv->tp_size;
    const float* attprojb = model->tp_rank == 0 ? p->attprojb + l * C : NULL;
    const float* fcprojb = model->tp_rank == 0 ? p->fcprojb + l * C : NULL;
    size_t cache_layer = (size_t)kv->num_seqs * kv->max_t * Ca;
    float* kl = kv->kcache + l * cache_layer; // (S, maxT, Ca)
    float* vl = kv->vcache + l * cache_layer;

    o->layernorm_forward(kv->ln, kv->ln_mean, kv->ln_rstd, kv->x, p->ln1w + l * C, p->ln1b + l * C,
                         R, (int)C);
    o->matmul_forward(kv->qkv, kv->ln, p->qkvw + l * 3 * Ca * C, p->qkvb + l * 3 * Ca, R, (int)C,
                      (int)(3 * Ca));
    // every row's K,V goes in before any row attends: rows of one sequence in
    // this call see each other causally
    o->kv_store(kl, vl, kv->qkv, kv->d_seq, kv->d_pos, R, kv->max_t, (int)Ca);
    o->attention_rows(kv->atty, kv->qkv, kl, vl, kv->d_seq, kv->d_pos, R, kv->max_t, (int)Ca, NH);
    o->matmul_forward(kv->proj, kv->atty, p->attprojw + l * C * Ca, attprojb, R, (int)Ca, (int)C);
    comm_allreduce_f32(model->tp, kv->proj, (size_t)R * C);
    o->residual_forward(kv->res2, kv->x, kv->proj, (size_t)R * C);
    o->layernorm_forward(kv->ln, kv->ln_mean, kv->ln_rstd, kv->res2, p->ln2w + l * C,
                         p->ln2b + l * C, R, (int)C);
    o->matmul_forward(kv->fch, kv->ln, p->fcw + l * 4 * Ca * C, p->fcb + l * 4 * Ca, R, (int)C,
                      (int)(4 * Ca));
    o->gelu_forward(kv->fch_gelu, kv->fch, (size_t)R * 4 * Ca);
    o->matmul_forward(kv->proj, kv->fch_gelu, p->fcprojw + l * C * 4 * Ca, fcprojb, R, (int)(4 * Ca),
                      (int)C);
    comm_allreduce_f32(model->tp, kv->proj, (size_t)R * C);
    o->residual_forward(kv->x, kv->res2, kv->proj, (size_t)R * C);
}

int gpt_forward_rows(GPT* model, KVCache* kv, const int* seq, const int* pos, const int* tok,
                     int R, const int* want_logits, float* logits_out) {
    if (R <= 0) return 0;
    if (kv->ops != model->ops || kv->channels != model->config.channels ||
        kv->num_layers != model->config.num_layers || kv->max_t != model->config.max_seq_len ||
        kv->vocab != model->config.vocab_size || kv->tp_size != model->tp_size)
        fatalf("generate: the KV cache was made for a different model");
    check_rows(kv, seq, pos, tok, R);
    kv_reserve_rows(kv, R);
    const Ops* o = model->ops;
    const ParameterTensors* p = &model->params;
    int C = kv->channels, V = kv->vocab;

    o->to_device(kv->d_seq, seq, (size_t)R * sizeof(int));
    o->to_device(kv->d_pos, pos, (size_t)R * sizeof(int));
    o->to_device(kv->d_tok, tok, (size_t)R * sizeof(int));
    if (model->tp_size == 1) {
        o->encoder_rows(kv->x, kv->d_tok, kv->d_pos, p->wte, p->wpe, R, C); // (R,C)
    } else { // vocab-parallel lookup, wpe from rank 0, summed over the ranks
        o->encoder_shard_forward(kv->x, kv->d_tok, kv->d_pos, p->wte, model->tp_rank == 0 ? p->wpe : NULL,
                                 model->vocab_start, model->vocab_valid, R, C);
        comm_allreduce_f32(model->tp, kv->x, (size_t)R * C);
    }
    for (int l = 0; l < kv->num_layers; l++) block_rows(model, kv, l, R);
    o->layernorm_forward(kv->ln, kv->ln_mean, kv->ln_rstd, kv->x, p->lnfw, p->lnfb, R, C);

    // the LM head only over the wanted rows: compact them (through the host,
    // the one copy every backend has) unless all are wanted
    int wanted = 0;
    const float* head_in = kv->ln;
    if (want_logits) {
        for (int r = 0; r < R; r++) {
            if (!want_logits[r]) continue;
            o->to_host(kv->host_rows + (size_t)wanted * C, kv->ln + (size_t)r * C, (size_t)C * sizeof(float));
            wanted++;
        }
        if (wanted < R) {
            o->to_device(kv->head_in, kv->host_rows, (size_t)wanted * C * sizeof(float));
            head_in = kv->head_in;
        }
    } else {
        wanted = R;
    }
    kv->last_hidden = head_in;
    if (wanted == 0) return 0;
    kv_reserve_logits(kv, wanted);
    if (model->tp_size == 1) {
        o->matmul_forward(kv->logits, head_in, p->wte, NULL, wanted, C, V); // (W,V), tied head
        o->to_host(logits_out, kv->logits, (size_t)wanted * V * sizeof(float));
        return wanted;
    }
    // vocab-parallel head: every rank's (W,Vp) shard gathered, so every rank
    // samples from the same full logits (same seeds -> same tokens)
    int Vp = kv->vocab_shard, P = kv->tp_size;
    size_t per = (size_t)wanted * Vp;
    float* mine = kv->logits + (size_t)model->tp_rank * per;
    o->matmul_forward(mine, head_in, p->wte, NULL, wanted, C, Vp); // (W,Vp)
    comm_allgather(model->tp, mine, kv->logits, per, COMM_F32);
    o->to_host(kv->host_logits, kv->logits, (size_t)P * per * sizeof(float));
    for (int r = 0; r < P; r++) {
        int v0 = r * Vp, nv = V - v0 < Vp ? V - v0 : Vp; // the padding columns are dropped
        for (int w = 0; nv > 0 && w < wanted; w++)
            memcpy(logits_out + (size_t)w * V + v0, kv->host_logits + (size_t)r * per + (size_t)w * Vp,
                   (size_t)nv * sizeof(float));
    }
    return wanted;
}

const float* kvcache_last_hidden(const KVCache* kv) { return kv->last_hidden; }

// ---------------------------------------------------------------- sampling

SampleConfig sample_config_default(void) {
    SampleConfig c = {.max_new_tokens = 64, .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .eot = 50256};
    return c;
}

// [0, 1) with 53 random bits: fine enough for vocabularies of any size.
static double uniform53(Rng* rng) { return (double)(rng_u64(rng) >> 11) * 0x1.0p-53; }

float logprob_of(const float* logits, int V, int token) {
    float maxv = logits[0];
    for (int i = 1; i < V; i++) maxv = logits[i] > maxv ? logits[i] : maxv;
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - maxv);
    return (float)((double)logits[token] - maxv - log(sum));
}

static int argmax(const float* x, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[best]) best = i; // strict: ties keep the lowest id
    return best;
}

typedef struct { float logit; int id; } Candidate;

// Descending logit, ties by ascending id (so top-1 agrees with argmax).
static int candidate_cmp(const void* a, const void* b) {
    const Candidate* x = a;
    const Candidate* y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

size_t sample_scratch_bytes(int V) { return (size_t)V * (sizeof(Candidate) + sizeof(double)); }

static int sample_from(const float* logits, int V, const SampleConfig* cfg, Rng* rng,
                       Candidate* cand, double* prob) {
    double inv_t = 1.0 / cfg->temperature;
    int sorted = (cfg->top_k > 0 && cfg->top_k < V) || cfg->top_p < 1.0f;
    int m = V; // candidates kept, in cand[0..m) (sorted) or ids 0..V-1
    if (sorted) {
        for (int i = 0; i < V; i++) cand[i] = (Candidate){logits[i], i};
        qsort(cand, (size_t)V, sizeof(Candidate), candidate_cmp);
        if (cfg->top_k > 0 && cfg->top_k < m) m = cfg->top_k;
    }
    float maxv = sorted ? cand[0].logit : logits[argmax(logits, V)];
    double total = 0.0;
    for (int i = 0; i < m; i++) {
        float z = sorted ? cand[i].logit : logits[i];
        prob[i] = exp(((double)z - maxv) * inv_t);
        total += prob[i];
    }
    if (cfg->top_p < 1.0f) {
        // smallest prefix of the (sorted) kept tokens whose mass reaches top_p
        double need = (double)cfg->top_p * total, cum = 0.0;
        int keep = 0;
        while (keep < m) {
            cum += prob[keep++];
            if (cum >= need) break;
        }
        m = keep; // >= 1: the top token always stays
        total = cum;
    }
    double u = uniform53(rng) * total, cum = 0.0;
    int pick = m - 1; // rounding can leave u just above the last partial sum
    for (int i = 0; i < m; i++) {
        cum += prob[i];
        if (u < cum) { pick = i; break; }
    }
    while (pick > 0 && prob[pick] == 0.0) pick--; // never return a zero-probability token
    return sorted ? cand[pick].id : pick;
}

int sample_token(const float* logits, int V, const SampleConfig* cfg, Rng* rng, void* scratch) {
    if (cfg->temperature <= 0.0f) return argmax(logits, V);
    void* own = scratch ? NULL : mallocCheck(sample_scratch_bytes(V));
    char* s = scratch ? scratch : own;
    Candidate* cand = (Candidate*)s;
    double* prob = (double*)(s + (size_t)V * sizeof(Candidate));
    int tok = sample_from(logits, V, cfg, rng, cand, prob);
    free(own);
    return tok;
}

// ---------------------------------------------------------------- generation

static void check_sample_config(const SampleConfig* cfg) {
    if (cfg->max_new_tokens < 0) fatalf("generate: max_new_tokens must be >= 0, got %d", cfg->max_new_tokens);
    if (!(cfg->temperature >= 0.0f) || isinf(cfg->temperature))
        fatalf("generate: temperature must be a finite number >= 0, got %g", (double)cfg->temperature);
    if (cfg->top_k < 0) fatalf("generate: top_k must be >= 0 (0 = off), got %d", cfg->top_k);
    if (!(cfg->top_p > 0.0f && cfg->top_p <= 1.0f))
        fatalf("generate: top_p must be in (0, 1], got %g", (double)cfg->top_p);
    if (cfg->eot < -1) fatalf("generate: eot must be a token id or -1 (none), got %d", cfg->eot);
}

static void check_prompts(const GPTConfig* c, const int* const* prompts, const int* lens, int n) {
    for (int i = 0; i < n; i++) {
        if (lens[i] <= 0) fatalf("generate: prompt %d is empty", i);
        if (lens[i] > c->max_seq_len)
            fatalf("generate: prompt %d has %d tokens, more than the context length %d", i, lens[i],
                   c->max_seq_len);
        for (int t = 0; t < lens[i]; t++)
            if (prompts[i][t] < 0 || prompts[i][t] >= c->vocab_size)
                fatalf("generate: prompt %d, position %d: token id %d outside the vocab (size %d)", i, t,
                       prompts[i][t], c->vocab_size);
    }
}

// Decoding state shared by the prefill and decode steps.
typedef struct {
    const SampleConfig* cfg;
    int V, max_t;
    Generation* out;
    Rng* rngs; // (n)
    int* live;       // (n) 1 while a sequence still generates
    // rows of the current step
    int *seq, *pos, *tok, *want; // (cap)
    float* logits;               // (min(n, ROWS_PER_CHUNK), V) host
    char* scratch;               // (threads, sample_scratch_bytes(V))
    int threads;
} Decoder;

// Appends a sampled token to sequence i and decides whether it goes on.
static void append_token(Decoder* d, int i, const float* logits, void* scratch) {
    Generation* g = d->out;
    int tok = sample_token(logits, d->V, d->cfg, &d->rngs[i], scratch);
    int j = g->len[i] - g->prompt_len[i];
    g->logprobs[i][j] = logprob_of(logits, d->V, tok);
    g->tokens[i][g->len[i]++] = tok;
    if (tok == d->cfg->eot) {
        g->hit_eot[i] = 1;
        d->live[i] = 0;
    } else if (j + 1 >= d->cfg->max_new_tokens || g->len[i] >= d->max_t) {
        d->live[i] = 0;
    }
}

// Runs the R rows in d->seq/pos/tok/want through the model in chunks and
// samples one token for the sequence of each wanted row.
static void run_rows(GPT* model, KVCache* kv, Decoder* d, int R) {
    for (int start = 0; start < R; start += ROWS_PER_CHUNK) {
        int r = R - start < ROWS_PER_CHUNK ? R - start : ROWS_PER_CHUNK;
        int w = gpt_forward_rows(model, kv, d->seq + start, d->pos + start, d->tok + start, r,
                                 d->want + start, d->logits);
        if (w > 0 && d->cfg->hook)
            d->cfg->hook->fn(d->cfg->hook->ctx, d->seq + start, d->pos + start, d->tok + start, d->want + start, r,
                             kvcache_last_hidden(kv), d->logits, w, d->V);
        int* owner = mallocCheck((size_t)(w ? w : 1) * sizeof(int)); // sequence of each wanted row
        for (int k = 0, q = 0; k < r; k++)
            if (d->want[start + k]) owner[q++] = d->seq[start + k];
        // sequences are independent (own RNG, own output): sample in parallel
        #pragma omp parallel for num_threads(d->threads) schedule(dynamic, 1) if (w > 1)
        for (int q = 0; q < w; q++) {
            void* scratch = d->scratch + (size_t)omp_get_thread_num() * sample_scratch_bytes(d->V);
            append_token(d, owner[q], d->logits + (size_t)q * d->V, scratch);
        }
        free(owner);
    }
}

static void generation_alloc(Generation* g, const int* const* prompts, const int* lens, int n,
                             int max_new, int max_t) {
    g->n = n;
    g->tokens = callocCheck((size_t)n, sizeof(int*));
    g->logprobs = callocCheck((size_t)n, sizeof(float*));
    g->len = callocCheck((size_t)n, sizeof(int));
    g->prompt_len = callocCheck((size_t)n, sizeof(int));
    g->hit_eot = callocCheck((size_t)n, sizeof(int));
    for (int i = 0; i < n; i++) {
        int room = max_t - lens[i] < max_new ? max_t - lens[i] : max_new; // new tokens at most
        g->tokens[i] = mallocCheck((size_t)(lens[i] + room) * sizeof(int));
        g->logprobs[i] = mallocCheck((size_t)(room ? room : 1) * sizeof(float));
        memcpy(g->tokens[i], prompts[i], (size_t)lens[i] * sizeof(int));
        g->len[i] = g->prompt_len[i] = lens[i];
    }
}

void gpt_generate(GPT* model, const int* const* prompts, const int* prompt_lens, int n,
                  const uint64_t* seeds, const SampleConfig* cfg, Generation* out) {
    memset(out, 0, sizeof *out);
    if (n <= 0) return;
    const GPTConfig* c = &model->config;
    check_sample_config(cfg);
    check_prompts(c, prompts, prompt_lens, n);
    generation_alloc(out, prompts, prompt_lens, n, cfg->max_new_tokens, c->max_seq_len);

    Decoder d = {.cfg = cfg, .V = c->vocab_size, .max_t = c->max_seq_len, .out = out};
    d.rngs = mallocCheck((size_t)n * sizeof(Rng));
    d.live = mallocCheck((size_t)n * sizeof(int));
    size_t prefill_rows = 0;
    int any_live = 0;
    for (int i = 0; i < n; i++) {
        rng_seed(&d.rngs[i], seeds ? seeds[i] : (uint64_t)i);
        d.live[i] = cfg->max_new_tokens > 0 && prompt_lens[i] < c->max_seq_len;
        if (d.live[i]) prefill_rows += (size_t)prompt_lens[i];
        any_live |= d.live[i];
    }
    if (!any_live) { // nothing to generate: skip the cache altogether
        free(d.rngs);
        free(d.live);
        return;
    }
    size_t cap = prefill_rows > (size_t)n ? prefill_rows : (size_t)n;
    d.seq = mallocCheck(cap * sizeof(int));
    d.pos = mallocCheck(cap * sizeof(int));
    d.tok = mallocCheck(cap * sizeof(int));
    d.want = mallocCheck(cap * sizeof(int));
    // wanted rows per chunk: at most one per sequence
    d.logits = mallocCheck((size_t)(n < ROWS_PER_CHUNK ? n : ROWS_PER_CHUNK) * d.V * sizeof(float));
    d.threads = omp_get_max_threads();
    d.scratch = mallocCheck((size_t)d.threads * sample_scratch_bytes(d.V));
    KVCache* kv = kvcache_new(model, n);

    // prefill: every position of every live prompt; logits of the last one
    int R = 0;
    for (int i = 0; i < n; i++) {
        if (!d.live[i]) continue;
        for (int t = 0; t < prompt_lens[i]; t++, R++) {
            d.seq[R] = i;
            d.pos[R] = t;
            d.tok[R] = prompts[i][t];
            d.want[R] = t == prompt_lens[i] - 1;
        }
    }
    run_rows(model, kv, &d, R);

    // decode: one row per live sequence, its newest token
    for (;;) {
        R = 0;
        for (int i = 0; i < n; i++) {
            if (!d.live[i]) continue;
            d.seq[R] = i;
            d.pos[R] = out->len[i] - 1;
            d.tok[R] = out->tokens[i][out->len[i] - 1];
            d.want[R] = 1;
            R++;
        }
        if (R == 0) break;
        run_rows(model, kv, &d, R);
    }

    kvcache_free(kv);
    free(d.rngs);
    free(d.live);
    free(d.seq);
    free(d.pos);
    free(d.tok);
    free(d.want);
    free(d.logits);
    free(d.scratch);
}

void generation_free(Generation* g) {
    if (!g) return;
    for (int i = 0; i < g->n; i++) {
        if (g->tokens) free(g->tokens[i]);
        if (g->logprobs) free(g->logprobs[i]);
    }
    free(g->tokens);
    free(g->logprobs);
    free(g->len);
    free(g->prompt_len);
    free(g->hit_eot);
    memset(g, 0, sizeof *g);
}
