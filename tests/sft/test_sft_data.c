// test_sft_data.c - unit tests of coordinator/sft_data.c without a model:
// the epoch sampler (every example once per epoch, batch sizes, determinism
// in the seed, a new order each epoch), length bucketing (far less padding
// than a plain shuffle) and the batch layout of a known example.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/check.h"
#include "common/rng.h"
#include "coordinator/sft_data.h"

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } } while (0)

// n examples with prompt 1..10 and response 0..50 tokens, seeded.
static void make_data(SftData* d, size_t n, uint64_t seed) {
    memset(d, 0, sizeof *d);
    Rng rng;
    rng_seed(&rng, seed);
    int toks[64];
    for (int i = 0; i < 64; i++) toks[i] = i;
    for (size_t i = 0; i < n; i++) {
        int P = 1 + (int)rng_below(&rng, 10), R = (int)rng_below(&rng, 51);
        sft_data_add(d, toks, P, toks + 10, R, 99, (int)i + 1);
    }
}

// Pad positions over all positions of one epoch's batches.
static double epoch_padding(const SftData* d, SftSampler* s) {
    size_t pad = 0, all = 0;
    for (size_t k = 0; k < s->num_batches; k++) {
        int B = 0;
        const size_t* idx = sft_sampler_next(s, &B);
        int T = 0;
        for (int r = 0; r < B; r++)
            if (d->examples[idx[r]].len - 1 > T) T = d->examples[idx[r]].len - 1;
        for (int r = 0; r < B; r++) pad += (size_t)(T - (d->examples[idx[r]].len - 1));
        all += (size_t)B * T;
    }
    return (double)pad / (double)all;
}

static void test_sampler(void) {
    SftData d;
    const size_t n = 203; // not a multiple of the batch: a short last batch
    const int B = 8;
    make_data(&d, n, 1);
    SftSampler a, b, c;
    sft_sampler_init(&a, &d, B, 42);
    sft_sampler_init(&b, &d, B, 42);
    sft_sampler_init(&c, &d, B, 43);
    CHECK(a.num_batches == (n + B - 1) / B, "num_batches %zu", a.num_batches);
    int* seen = callocCheck(n, sizeof(int));
    size_t* first_epoch = mallocCheck(n * sizeof(size_t));
    int same_as_other_seed = 1, same_as_epoch1 = 1;
    for (int epoch = 1; epoch <= 3; epoch++) {
        memset(seen, 0, n * sizeof(int));
        size_t pos = 0, short_batches = 0;
        for (size_t k = 0; k < a.num_batches; k++) {
            int ba = 0, bb = 0, bc = 0;
            const size_t* ia = sft_sampler_next(&a, &ba);
            const size_t* ib = sft_sampler_next(&b, &bb);
            const size_t* ic = sft_sampler_next(&c, &bc);
            CHECK(a.epoch == epoch, "epoch %d, expected %d", a.epoch, epoch);
            CHECK(ba == bb && !memcmp(ia, ib, (size_t)ba * sizeof(size_t)), "same seed, different batch");
            if (ba != bc || memcmp(ia, ic, (size_t)ba * sizeof(size_t))) same_as_other_seed = 0;
            CHECK(ba >= 1 && ba <= B, "batch of %d", ba);
            if (ba < B) short_batches++;
            for (int r = 0; r < ba; r++, pos++) {
                CHECK(ia[r] < n, "index %zu", ia[r]);
                if (ia[r] < n) seen[ia[r]]++;
                if (epoch == 1) first_epoch[pos] = ia[r];
                else if (first_epoch[pos] != ia[r]) same_as_epoch1 = 0;
            }
        }
        CHECK(pos == n, "epoch %d covered %zu of %zu", epoch, pos, n);
        CHECK(short_batches == 1, "epoch %d: %zu short batches", epoch, short_batches);
        for (size_t i = 0; i < n; i++) CHECK(seen[i] == 1, "epoch %d: example %zu seen %d times", epoch, i, seen[i]);
    }
    CHECK(!same_as_other_seed, "another seed gave the same order");
    CHECK(!same_as_epoch1, "every epoch has the same order");
    free(seen);
    free(first_epoch);
    sft_sampler_free(&a);
    sft_sampler_free(&b);
    sft_sampler_free(&c);

    // bucketing against contiguous batches of a plain shuffle
    SftSampler s;
    sft_sampler_init(&s, &d, B, 5);
    double bucketed = epoch_padding(&d, &s);
    sft_sampler_free(&s);
    Rng rng;
    rng_seed(&rng, 5);
    size_t* perm = mallocCheck(n * sizeof(size_t));
    for (size_t i = 0; i < n; i++) perm[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_below(&rng, i), t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    size_t pad = 0, all = 0;
    for (size_t i = 0; i < n; i += B) {
        size_t end = i + B < n ? i + B : n;
        int T = 0;
        for (size_t k = i; k < end; k++) if (d.examples[perm[k]].len - 1 > T) T = d.examples[perm[k]].len - 1;
        for (size_t k = i; k < end; k++) pad += (size_t)(T - (d.examples[perm[k]].len - 1));
        all += (end - i) * (size_t)T;
    }
    double plain = (double)pad / (double)all;
    printf("padding: bucketed %.3f, plain shuffle %.3f\n", bucketed, plain);
    CHECK(bucketed < 0.25 * plain, "bucketed padding %.3f vs plain %.3f", bucketed, plain);
    free(perm);
    sft_data_free(&d);
}

static void test_batch_layout(void) {
    SftData d;
    memset(&d, 0, sizeof d);
    const int p0[] = {10, 11, 12}, r0[] = {20, 21};
    const int p1[] = {30}, r1[] = {40, 41, 42, 43, 44};
    sft_data_add(&d, p0, 3, r0, 2, 99, 1); // 10 11 12 20 21 99  (len 6)
    sft_data_add(&d, p1, 1, r1, 5, 99, 2); // 30 40 41 42 43 44 99 (len 7)
    CHECK(d.n == 2 && d.max_len == 7 && d.num_response_tokens == 3 + 6, "data n %zu max %d resp %zu",
          d.n, d.max_len, d.num_response_tokens);
    SftBatch b;
    sft_batch_alloc(&b, 2, 6);
    const size_t idx[2] = {0, 1};
    sft_batch_fill(&b, &d, idx, 2, 77);
    CHECK(b.B == 2 && b.T == 6, "B %d T %d", b.B, b.T);
    const int in[12] = {10, 11, 12, 20, 21, 77, /**/ 30, 40, 41, 42, 43, 44};
    const int tg[12] = {11, 12, 20, 21, 99, -1, /**/ 40, 41, 42, 43, 44, 99};
    const float mk[12] = {0, 0, 1, 1, 1, 0, /**/ 1, 1, 1, 1, 1, 1};
    for (int i = 0; i < 12; i++) {
        CHECK(b.inputs[i] == in[i], "inputs[%d] = %d, expected %d", i, b.inputs[i], in[i]);
        CHECK(b.targets[i] == tg[i], "targets[%d] = %d, expected %d", i, b.targets[i], tg[i]);
        CHECK(b.mask[i] == mk[i], "mask[%d] = %g, expected %g", i, b.mask[i], mk[i]);
    }
    CHECK(b.loss_tokens == 9 && b.real_tokens == 11, "loss_tokens %zu real_tokens %zu", b.loss_tokens,
          b.real_tokens);
    // a smaller batch reuses the buffer with its own T
    const size_t one[1] = {0};
    sft_batch_fill(&b, &d, one, 1, 77);
    CHECK(b.B == 1 && b.T == 5 && b.targets[4] == 99 && b.mask[1] == 0 && b.mask[2] == 1,
          "single row: B %d T %d", b.B, b.T);
    sft_batch_free(&b);
    sft_data_free(&d);
}

int main(void) {
    test_batch_layout();
    test_sampler();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("sft_data: all checks passed\n");
    return 0;
}
