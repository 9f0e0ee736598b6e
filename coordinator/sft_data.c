// sft_data.c - tokenized demonstrations, padded masked batches, the
// length-bucketed order and the held-out loss (see sft_data.h).
#include "sft_data.h"
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "../common/check.h"
#include "../common/hfdata.h"

// ----------------------------------------------------------------------------
// examples

static void push_example(SftData* d, int* tokens, int len, int prompt_len, int line) {
    d->examples = reallocCheck(d->examples, (d->n + 1) * sizeof(SftExample));
    d->examples[d->n++] = (SftExample){tokens, len, prompt_len, line};
    d->num_tokens += (size_t)len;
    d->num_response_tokens += (size_t)(len - prompt_len);
    if (len > d->max_len) d->max_len = len;
}

void sft_data_add(SftData* d, const int* prompt, int P, const int* response, int R, int eot,
                  int line) {
    assertCheck(P >= 1 && R >= 0);
    int len = P + R + 1;
    int* tokens = mallocCheck((size_t)len * sizeof(int));
    memcpy(tokens, prompt, (size_t)P * sizeof(int));
    if (R) memcpy(tokens + P, response, (size_t)R * sizeof(int));
    tokens[len - 1] = eot;
    push_example(d, tokens, len, P, line);
}

void sft_data_load(SftData* d, const char* path, Tokenizer* tok, int ctx, int skip_bad) {
    memset(d, 0, sizeof *d);
    size_t n = 0, bad_records = 0;
    HfDemo* demos = hf_read_demos(path, skip_bad, &n, &bad_records);
    HfBadReport too_long = {.path = path, .skip_bad = skip_bad, .skipped = 0};
    for (size_t i = 0; i < n; i++) {
        int len = 0, prompt_len = 0;
        int* tokens = hf_encode_pair(tok, demos[i].prompt, demos[i].response, &len, &prompt_len);
        if (len > ctx) {
            free(tokens);
            hf_bad_record(&too_long, demos[i].line,
                          "prompt+response is %d tokens, longer than the context (%d)", len, ctx);
            continue;
        }
        // a non-empty prompt is at least one token, so position P-1 exists
        assertCheck(prompt_len >= 1 && prompt_len < len);
        push_example(d, tokens, len, prompt_len, demos[i].line);
    }
    hf_bad_report_finish(&too_long);
    hf_free_demos(demos, n);
    d->skipped = bad_records + too_long.skipped;
    if (d->n == 0)
        fatalf("%s: no usable records (%zu skipped, all longer than the context %d or bad)", path,
               d->skipped, ctx);
}

void sft_data_free(SftData* d) {
    for (size_t i = 0; i < d->n; i++) free(d->examples[i].tokens);
    free(d->examples);
    memset(d, 0, sizeof *d);
}

// ----------------------------------------------------------------------------
// batches

void sft_batch_alloc(SftBatch* b, int max_B, int max_T) {
    memset(b, 0, sizeof *b);
    b->max_B = max_B;
    b->max_T = max_T;
    size_t cap = (size_t)max_B * max_T;
    b->inputs = mallocCheck(cap * sizeof(int));
    b->targets = mallocCheck(cap * sizeof(int));
    b->mask = mallocCheck(cap * sizeof(float));
}

void sft_batch_fill(SftBatch* b, const SftData* d, const size_t* idx, int B, int pad_token) {
    assertCheck(B >= 1 && B <= b->max_B);
    int T = 1;
    for (int r = 0; r < B; r++) {
        int rowlen = d->examples[idx[r]].len - 1; // inputs of a row
        if (rowlen > T) T = rowlen;
    }
    assertCheck(T <= b->max_T);
    b->B = B;
    b->T = T;
    b->loss_tokens = 0;
    b->real_tokens = 0;
    for (int r = 0; r < B; r++) {
        const SftExample* e = &d->examples[idx[r]];
        int* inp = b->inputs + (size_t)r * T;    // (T)
        int* tgt = b->targets + (size_t)r * T;   // (T)
        float* msk = b->mask + (size_t)r * T;    // (T)
        int n = e->len - 1;
        for (int t = 0; t < n; t++) {
            inp[t] = e->tokens[t];
            tgt[t] = e->tokens[t + 1];
            // target t+1 is a response token or the eot from t = P-1 on
            msk[t] = t >= e->prompt_len - 1 ? 1.0f : 0.0f;
        }
        for (int t = n; t < T; t++) { // padding: never a target, never seen by real positions
            inp[t] = pad_token;
            tgt[t] = -1;
            msk[t] = 0.0f;
        }
        b->loss_tokens += (size_t)(e->len - e->prompt_len);
        b->real_tokens += (size_t)n;
    }
}

void sft_batch_free(SftBatch* b) {
    free(b->inputs);
    free(b->targets);
    free(b->mask);
    memset(b, 0, sizeof *b);
}

// ----------------------------------------------------------------------------
// order

static const SftData* sort_data; // qsort has no context argument
static int by_length(const void* pa, const void* pb) {
    size_t a = *(const size_t*)pa, b = *(const size_t*)pb;
    int la = sort_data->examples[a].len, lb = sort_data->examples[b].len;
    if (la != lb) return la < lb ? -1 : 1;
    return a < b ? -1 : a > b; // ties by index: the same order on every libc
}

static void sort_by_length(const SftData* d, size_t* idx, size_t n) {
    sort_data = d;
    qsort(idx, n, sizeof *idx, by_length);
    sort_data = NULL;
}

static void shuffle(Rng* rng, size_t* a, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_below(rng, i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

// A new epoch: shuffle, sort buckets by length, shuffle the batches.
static void start_epoch(SftSampler* s) {
    size_t n = s->data->n, bs = (size_t)s->batch_size;
    size_t* order = s->order;
    for (size_t i = 0; i < n; i++) order[i] = i;
    shuffle(&s->rng, order, n);
    size_t bucket = bs * SFT_BUCKET_BATCHES;
    for (size_t i = 0; i < n; i += bucket)
        sort_by_length(s->data, order + i, n - i < bucket ? n - i : bucket);
    // batch b is order[b*bs ..]; visit the batches in a random order (the
    // short last batch included), rebuilding order batch after batch
    size_t nb = s->num_batches;
    size_t* perm = mallocCheck(nb * sizeof(size_t));
    for (size_t b = 0; b < nb; b++) perm[b] = b;
    shuffle(&s->rng, perm, nb);
    size_t* sorted = mallocCheck(n * sizeof(size_t));
    memcpy(sorted, order, n * sizeof(size_t));
    size_t pos = 0;
    for (size_t k = 0; k < nb; k++) {
        size_t start = perm[k] * bs, end = start + bs < n ? start + bs : n;
        s->batch_start[k] = pos;
        for (size_t i = start; i < end; i++) order[pos++] = sorted[i];
    }
    s->batch_start[nb] = pos;
    free(sorted);
    free(perm);
    s->next = 0;
    s->epoch++;
}

void sft_sampler_init(SftSampler* s, const SftData* d, int batch_size, uint64_t seed) {
    assertCheck(d->n > 0 && batch_size >= 1);
    memset(s, 0, sizeof *s);
    s->data = d;
    s->batch_size = batch_size;
    rng_seed(&s->rng, seed);
    s->order = mallocCheck(d->n * sizeof(size_t));
    s->num_batches = (d->n + (size_t)batch_size - 1) / (size_t)batch_size;
    s->batch_start = mallocCheck((s->num_batches + 1) * sizeof(size_t));
    s->next = s->num_batches; // the first call starts epoch 1
}

const size_t* sft_sampler_next(SftSampler* s, int* B) {
    if (s->next == s->num_batches) start_epoch(s);
    size_t k = s->next++;
    *B = (int)(s->batch_start[k + 1] - s->batch_start[k]);
    return s->order + s->batch_start[k];
}

void sft_sampler_free(SftSampler* s) {
    free(s->order);
    free(s->batch_start);
    memset(s, 0, sizeof *s);
}

// item names "KEY.SUFFIX" (keys are short: run_state.h allows 64 characters)
static const char* sampler_key(char* buf, size_t cap, const char* key, const char* suffix) {
    if ((size_t)snprintf(buf, cap, "%s.%s", key, suffix) >= cap) fatalf("run-state key '%s' is too long", key);
    return buf;
}

void sft_sampler_save(const SftSampler* s, RunState* rs, const char* key) {
    assertCheck(s->epoch > 0); // the order is drawn by the first sft_sampler_next
    char k[96];
    run_state_put_rng(rs, sampler_key(k, sizeof k, key, "rng"), &s->rng);
    run_state_put_order(rs, sampler_key(k, sizeof k, key, "order"), s->order, s->data->n, s->next,
                        (uint64_t)s->epoch);
    // batch offsets run up to n inclusive: a blob, not an order
    ByteBuf b = {0};
    for (size_t i = 0; i <= s->num_batches; i++) bytebuf_put_u64(&b, (uint64_t)s->batch_start[i]);
    run_state_put_blob(rs, sampler_key(k, sizeof k, key, "batches"), b.data, b.len);
    bytebuf_free(&b);
}

void sft_sampler_restore(SftSampler* s, const RunState* rs, const char* key) {
    char k[96];
    run_state_get_rng(rs, sampler_key(k, sizeof k, key, "rng"), &s->rng);
    size_t* order = NULL;
    size_t next;
    uint64_t epoch;
    run_state_get_order(rs, sampler_key(k, sizeof k, key, "order"), s->data->n, &order, &next, &epoch);
    void* blob;
    size_t len;
    run_state_get_blob(rs, sampler_key(k, sizeof k, key, "batches"), &blob, &len);
    ByteReader r = {.data = blob, .len = len, .pos = 0, .what = k};
    if (len != (s->num_batches + 1) * sizeof(uint64_t) || next > s->num_batches || epoch < 1 || epoch > INT32_MAX)
        fatalf("%s: %s: %zu batch offsets, epoch %" PRIu64 ", next batch %zu do not fit this data and "
               "train.batch = %d (%zu batches per epoch): resume needs the same data and batch size",
               rs->dir, k, len / sizeof(uint64_t), epoch, next, s->batch_size, s->num_batches);
    for (size_t i = 0; i <= s->num_batches; i++) {
        uint64_t v = byteread_u64(&r);
        if (v > s->data->n || (i > 0 && v < s->batch_start[i - 1]))
            fatalf("%s: %s: batch offset %zu is %" PRIu64 " (invalid)", rs->dir, k, i, v);
        s->batch_start[i] = (size_t)v;
    }
    byteread_end(&r);
    memcpy(s->order, order, s->data->n * sizeof(size_t));
    s->next = next;
    s->epoch = (int)epoch;
    free(order);
    free(blob);
}

// ----------------------------------------------------------------------------
// evaluation

double sft_eval(GPT* model, const SftData* d, SftBatch* b, int pad_token, size_t* loss_tokens) {
    return sft_eval_dp(model, d, b, pad_token, NULL, loss_tokens);
}

double sft_eval_dp(GPT* model, const SftData* d, SftBatch* b, int pad_token, Comm* dp,
                   size_t* loss_tokens) {
    size_t* idx = mallocCheck(d->n * sizeof(size_t));
    for (size_t i = 0; i < d->n; i++) idx[i] = i;
    sort_by_length(d, idx, d->n); // similar lengths together: least padding
    size_t first = 0, last = d->n; // this dp rank's examples of the sorted order
    if (dp) parallel_share(d->n, dp->rank, dp->size, &first, &last);
    double loss_sum = 0.0;
    size_t total = 0;
    for (size_t i = first; i < last; i += (size_t)b->max_B) {
        int B = last - i < (size_t)b->max_B ? (int)(last - i) : b->max_B;
        sft_batch_fill(b, d, idx + i, B, pad_token);
        gpt_forward(model, b->inputs, b->targets, b->mask, b->B, b->T);
        // mean_loss is the batch's mean over its loss tokens: weigh it back
        loss_sum += (double)model->mean_loss * (double)b->loss_tokens;
        total += b->loss_tokens;
    }
    free(idx);
    if (dp && dp->size > 1) {
        double sums[2] = {loss_sum, (double)total};
        const char* old = comm_set_phase(dp, "SFT held-out loss");
        comm_allreduce_f64(dp, sums, 2);
        comm_set_phase(dp, old);
        loss_sum = sums[0];
        total = (size_t)sums[1];
    }
    if (loss_tokens) *loss_tokens = total;
    return total ? loss_sum / (double)total : 0.0;
}

void sft_count_tokens(const SftData* d, const size_t* idx, int B, size_t* loss_tokens,
                      size_t* real_tokens) {
    size_t loss = 0, real = 0;
    for (int r = 0; r < B; r++) {
        const SftExample* e = &d->examples[idx[r]];
        loss += (size_t)(e->len - e->prompt_len);
        real += (size_t)(e->len - 1);
    }
    *loss_tokens = loss;
    *real_tokens = real;
}
