// nlpo_mask.c - NLPO's top-p action mask, masked log-probs, and the sampling
// hook that applies a masking policy's mask during generation (nlpo_mask.h).
#include "nlpo_mask.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "../common/check.h"

typedef struct {
    float logit;
    int id;
    double p; // exp(logit - max)
} Item;

// Strict total order of the nucleus: higher logit first, ties by lower id
// (the sampler's order, generate.c), so the set is unique.
static inline int before(const Item* a, const Item* b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static inline void swap_items(Item* a, Item* b) {
    Item t = *a;
    *a = *b;
    *b = t;
}

size_t nlpo_scratch_bytes(int V) { return (size_t)V * sizeof(Item); }

// Partitions a[lo..hi) around a median-of-three pivot: items before it in
// the order come first; returns the pivot's final index.
static int partition(Item* a, int lo, int hi) {
    int mid = lo + (hi - lo) / 2, last = hi - 1;
    // median of a[lo], a[mid], a[last] moved to a[last]
    if (before(&a[mid], &a[lo])) swap_items(&a[mid], &a[lo]);
    if (before(&a[last], &a[lo])) swap_items(&a[last], &a[lo]);
    if (before(&a[mid], &a[last])) swap_items(&a[mid], &a[last]);
    Item pivot = a[last];
    int store = lo;
    for (int i = lo; i < last; i++)
        if (before(&a[i], &pivot)) swap_items(&a[i], &a[store++]);
    swap_items(&a[store], &a[last]);
    return store;
}

int nlpo_topp_mask(const float* logits, int V, float top_p, unsigned char* keep, void* scratch) {
    if (V <= 0) fatalf("nlpo_topp_mask: empty vocabulary");
    if (top_p >= 1.0f) {
        memset(keep, 1, (size_t)V);
        return V;
    }
    Item* a = scratch ? scratch : mallocCheck(nlpo_scratch_bytes(V));
    float mx = logits[0];
    for (int v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double total = 0.0;
    for (int v = 0; v < V; v++) {
        a[v] = (Item){logits[v], v, exp((double)logits[v] - mx)};
        total += a[v].p;
    }
    // Quickselect for the boundary k = the first index (in sorted order) at
    // which the cumulative mass reaches need: keep a[0..k]. Invariant:
    // a[0..lo) are the lo most likely tokens, with mass acc < need, and k is
    // in [lo, hi). Expected O(V), against O(V log V) for a full sort.
    const double need = (double)top_p * total;
    double acc = 0.0;
    int lo = 0, hi = V, k = V - 1;
    while (lo < hi) {
        if (hi - lo == 1) {
            k = lo;
            break;
        }
        int m = partition(a, lo, hi);
        double upper = 0.0;
        for (int i = lo; i < m; i++) upper += a[i].p;
        if (acc + upper >= need) {
            hi = m; // the boundary is among the items before the pivot
        } else {
            acc += upper + a[m].p;
            if (acc >= need) {
                k = m;
                break;
            }
            lo = m + 1; // rounding can exhaust the row: k stays V - 1
        }
    }
    memset(keep, 0, (size_t)V);
    for (int i = 0; i <= k; i++) keep[a[i].id] = 1;
    if (!scratch) free(a);
    return k + 1;
}

void nlpo_apply_mask(float* logits, const unsigned char* keep, int V) {
    for (int v = 0; v < V; v++)
        if (!keep[v]) logits[v] = NLPO_MASKED_LOGIT;
}

double nlpo_masked_logprob(const float* logits, const unsigned char* keep, int V, int target, float* dlogits) {
    if (target < 0 || target >= V || !keep[target])
        fatalf("nlpo_masked_logprob: target %d is not in the mask (V=%d)", target, V);
    double mx = -INFINITY;
    for (int v = 0; v < V; v++)
        if (keep[v] && logits[v] > mx) mx = logits[v];
    double z = 0.0;
    for (int v = 0; v < V; v++)
        if (keep[v]) z += exp((double)logits[v] - mx);
    double logz = log(z);
    if (dlogits) {
        for (int v = 0; v < V; v++)
            dlogits[v] = keep[v] ? (float)(-exp((double)logits[v] - mx - logz)) : 0.0f;
        dlogits[target] += 1.0f;
    }
    return (double)logits[target] - mx - logz;
}

void nlpo_mask_policy_logits(GPT* policy, const unsigned char* const* keep_rows) {
    if (policy->mean_loss < 0) fatalf("nlpo_mask_policy_logits needs a forward pass with targets first");
    const Ops* ops = policy->ops;
    // under tensor parallelism each rank holds the columns [v0, v0 + Vl) of
    // every row (its vocab shard); the masks are over the whole vocab
    const int Vp = policy->vocab_shard, v0 = policy->vocab_start, Vl = policy->vocab_valid;
    const size_t BT = (size_t)policy->B * policy->T;
    int* targets = mallocCheck(BT * sizeof(int));
    ops->to_host(targets, policy->targets, BT * sizeof(int));
    float* row = mallocCheck((size_t)Vp * sizeof(float));
    // pass 1: each row's best kept logit (the action taken is always a valid
    // one), the max over the shards
    float* mx = mallocCheck(BT * sizeof(float));
    for (size_t r = 0; r < BT; r++) {
        mx[r] = -INFINITY;
        if (!keep_rows[r] || targets[r] < 0) continue;
        ops->to_host(row, policy->acts.logits + r * (size_t)Vp, (size_t)Vp * sizeof(float));
        const unsigned char* keep = keep_rows[r];
        for (int v = 0; v < Vl; v++)
            if ((keep[v0 + v] || v0 + v == targets[r]) && row[v] > mx[r]) mx[r] = row[v];
    }
    if (policy->tp_size > 1) comm_allreduce(policy->tp, mx, BT, COMM_F32, COMM_MAX);
    // pass 2: the rest of the row drops to NLPO_TRAIN_MASK_GAP below it
    for (size_t r = 0; r < BT; r++) {
        if (!keep_rows[r] || targets[r] < 0) continue;
        float* dev = policy->acts.logits + r * (size_t)Vp;
        ops->to_host(row, dev, (size_t)Vp * sizeof(float));
        const unsigned char* keep = keep_rows[r];
        // Not -1e30 here: the cross-entropy kernels clamp exp at e^-87, and
        // e^-87 times a small d(loss) is a denormal float in every masked
        // entry of the logits' gradient, which makes the LM head's backward
        // sgemm ~100x slower. NLPO_TRAIN_MASK_GAP below the row's best kept
        // logit is exactly as masked for float32 (mass <= V * e^-60 ~ 1e-21).
        const float floor_logit = mx[r] - NLPO_TRAIN_MASK_GAP;
        for (int v = 0; v < Vl; v++)
            if (!keep[v0 + v] && v0 + v != targets[r]) row[v] = floor_logit;
        ops->to_device(dev, row, (size_t)Vp * sizeof(float));
    }
    gpt_recompute_losses(policy); // vocab-parallel under tp
    free(mx);
    free(row);
    free(targets);
}

// ---------------------------------------------------------------- sampling hook

// The masking policy sees the same rows as the policy (its own KV cache), so
// its logits are for the same prefix; each wanted row's top-p set masks the
// policy's logits of that row and is stored as mask (seq, j), j = the
// number of tokens sequence seq has sampled so far.
static void sampler_hook(void* ctx, const int* seq, const int* pos, const int* tok, const int* want, int R,
                         const float* hidden, float* logits, int W, int V) {
    (void)hidden;
    NlpoSampler* s = ctx;
    if (V != s->V) fatalf("nlpo: the policy's vocab (%d) differs from the masking policy's (%d)", V, s->V);
    if (W > s->cap_rows) fatalf("nlpo: %d rows to mask, room for %d", W, s->cap_rows);
    int w = gpt_forward_rows(s->mask_model, s->kv, seq, pos, tok, R, want, s->mask_logits);
    if (w != W) fatalf("nlpo: the masking policy computed %d rows of logits, the policy %d", w, W);
    // a call's wanted rows belong to distinct sequences (one next token each)
    unsigned char** dest = mallocCheck((size_t)W * sizeof(unsigned char*));
    for (int r = 0, q = 0; r < R; r++) {
        if (!want[r]) continue;
        int i = seq[r];
        if (s->count[i] >= s->max_new) fatalf("nlpo: sequence %d sampled more than %d tokens", i, s->max_new);
        dest[q++] = s->keep + ((size_t)i * s->max_new + (size_t)s->count[i]++) * (size_t)V;
    }
    double kept = 0.0;
    #pragma omp parallel for num_threads(s->threads) schedule(dynamic, 1) reduction(+:kept) if (W > 1)
    for (int q = 0; q < W; q++) {
        void* scratch = s->scratch + (size_t)omp_get_thread_num() * nlpo_scratch_bytes(V);
        kept += nlpo_topp_mask(s->mask_logits + (size_t)q * V, V, s->top_p, dest[q], scratch);
        nlpo_apply_mask(logits + (size_t)q * V, dest[q], V);
    }
    s->kept_sum += kept;
    s->masks += (size_t)W;
    free(dest);
}

void nlpo_sampler_begin(NlpoSampler* s, GPT* mask_model, int n, int max_new, float top_p) {
    memset(s, 0, sizeof *s);
    if (n <= 0 || max_new <= 0) fatalf("nlpo_sampler_begin: %d sequences of %d tokens", n, max_new);
    s->mask_model = mask_model;
    s->top_p = top_p;
    s->n = n;
    s->max_new = max_new;
    s->V = mask_model->config.vocab_size;
    s->kv = kvcache_new(mask_model, n);
    s->keep = callocCheck((size_t)n * max_new * s->V, 1);
    s->count = callocCheck((size_t)n, sizeof(int));
    s->cap_rows = n < 512 ? n : 512; // generate.c decodes at most one wanted row per sequence per chunk
    s->mask_logits = mallocCheck((size_t)s->cap_rows * s->V * sizeof(float));
    s->threads = omp_get_max_threads();
    s->scratch = mallocCheck((size_t)s->threads * nlpo_scratch_bytes(s->V));
    s->hook = (LogitsHook){.fn = sampler_hook, .ctx = s};
}

void nlpo_sampler_end(NlpoSampler* s) {
    if (s->kv) kvcache_free(s->kv);
    s->kv = NULL;
    free(s->mask_logits);
    free(s->scratch);
    s->mask_logits = NULL;
    s->scratch = NULL;
}

const unsigned char* nlpo_sampler_mask(const NlpoSampler* s, int i, int j) {
    if (i < 0 || i >= s->n || j < 0 || j >= s->count[i])
        fatalf("nlpo: no mask for token %d of sequence %d", j, i);
    return s->keep + ((size_t)i * s->max_new + (size_t)j) * (size_t)s->V;
}

void nlpo_sampler_free(NlpoSampler* s) {
    nlpo_sampler_end(s);
    free(s->keep);
    free(s->count);
    memset(s, 0, sizeof *s);
}
