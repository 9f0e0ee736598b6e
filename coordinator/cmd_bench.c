// cmd_bench.c - `rlhfd bench train|generate`: times the engine on a random
// model of any shape. Prints one line per step and a JSON summary last.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cblas.h>
#include "common/args.h"
#include "common/check.h"
#include "common/rng.h"
#include "coordinator/commands.h"
#include "coordinator/train_util.h"
#include "worker/generate.h"
#include "worker/gpt.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static double median(double* v, int n) {
    qsort(v, n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// FLOPs of one training step (forward + backward = 3x forward), counting
// the matmuls and attention, as llm.c / PaLM's MFU formula does.
static double train_flops(const GPTConfig* c, int B, int T) {
    double L = c->num_layers, C = c->channels, V = c->vocab_size;
    double per_token_fwd = 2.0 * (L * 12.0 * C * C + C * V) + 2.0 * 2.0 * L * T * C; // attention ~ (T/2 avg)*2
    return 3.0 * per_token_fwd * B * T;
}

typedef struct {
    int layers, heads, embd, vocab, ctx, batch, seq, steps, threads, new_tokens, size;
    uint64_t seed;
    const char* device;    // cpu | cuda
    const char* precision; // fp32 | bf16 (cuda matmuls)
    const Ops* ops;
} BenchArgs;

static void build_random_model(GPT* m, const BenchArgs* a) {
    GPTConfig cfg = {.max_seq_len = a->ctx, .vocab_size = a->vocab, .num_layers = a->layers,
                     .num_heads = a->heads, .channels = a->embd};
    gpt_build(m, cfg, a->ops);
    gpt_init_random(m, a->seed);
}

static int bench_train(const BenchArgs* a) {
    if (a->seq > a->ctx) args_fail("bench", "--seq %d exceeds --ctx %d", a->seq, a->ctx);
    GPT m;
    build_random_model(&m, a);
    int B = a->batch, T = a->seq;
    int* inputs = mallocCheck(sizeof(int) * B * T);
    int* targets = mallocCheck(sizeof(int) * B * T);
    Rng rng;
    rng_seed(&rng, a->seed + 1);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)rng_below(&rng, a->vocab);
        targets[i] = (int)rng_below(&rng, a->vocab);
    }
    AdamWConfig opt = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 1.0f};
    int total = a->steps + 1; // one warm-up step, not counted
    double* ms = mallocCheck(sizeof(double) * total);
    double fwd_ms = 0, bwd_ms = 0, upd_ms = 0;
    fprintf(stderr, "bench train: %zu parameters, B=%d T=%d, %d threads\n", m.num_parameters, B, T, ops_cpu_threads());
    for (int s = 0; s < total; s++) {
        double t0 = now_ms();
        gpt_forward(&m, inputs, targets, NULL, B, T);
        double t1 = now_ms();
        gpt_zero_grad(&m);
        gpt_backward(&m);
        double t2 = now_ms();
        gpt_update(&m, &opt);
        float probe; // waits for the device's queued work (AdamW) before the clock is read
        m.ops->to_host(&probe, m.params_memory, sizeof probe);
        double t3 = now_ms();
        ms[s] = t3 - t0;
        if (s > 0) { fwd_ms += t1 - t0; bwd_ms += t2 - t1; upd_ms += t3 - t2; }
        fprintf(stderr, "step %d/%d: loss %.4f, %.1f ms (fwd %.1f, bwd %.1f, update %.1f)%s\n", s, a->steps,
                m.mean_loss, ms[s], t1 - t0, t2 - t1, t3 - t2, s == 0 ? " [warm-up]" : "");
    }
    double med = median(ms + 1, a->steps);
    double gflops = train_flops(&m.config, B, T) / (med * 1e6);
    printf("{\"bench\": \"train\", \"device\": \"%s\", \"precision\": \"%s\", \"params\": %zu, \"batch\": %d, \"seq\": %d, \"threads\": %d, "
           "\"ms_per_step\": %.2f, \"fwd_ms\": %.2f, \"bwd_ms\": %.2f, \"update_ms\": %.2f, "
           "\"tokens_per_s\": %.1f, \"gflops\": %.1f}\n",
           a->device, a->precision, m.num_parameters, B, T, ops_cpu_threads(), med, fwd_ms / a->steps, bwd_ms / a->steps,
           upd_ms / a->steps, B * T / (med / 1e3), gflops);
    free(ms);
    free(inputs);
    free(targets);
    gpt_free(&m);
    return 0;
}

// Tokens per second of KV-cache sampling: `batch` prompts of 8 tokens, each
// continued by new_tokens tokens (no end token), best of `steps` runs.
static int bench_generate(const BenchArgs* a) {
    GPT m;
    build_random_model(&m, a);
    int B = a->batch, P = 8;
    if (P + a->new_tokens > a->ctx) args_fail("bench", "8 + --new-tokens must fit in --ctx %d", a->ctx);
    int** prompts = mallocCheck(sizeof(int*) * B);
    int* lens = mallocCheck(sizeof(int) * B);
    uint64_t* seeds = mallocCheck(sizeof(uint64_t) * B);
    Rng rng;
    rng_seed(&rng, a->seed + 2);
    for (int b = 0; b < B; b++) {
        prompts[b] = mallocCheck(sizeof(int) * P);
        for (int i = 0; i < P; i++) prompts[b][i] = (int)rng_below(&rng, a->vocab);
        lens[b] = P;
        seeds[b] = a->seed + b;
    }
    SampleConfig sc = {.max_new_tokens = a->new_tokens, .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .eot = -1};
    int runs = a->steps < 1 ? 1 : a->steps;
    double* ms = mallocCheck(sizeof(double) * (runs + 1));
    long generated = 0;
    for (int r = 0; r <= runs; r++) { // run 0 is a warm-up
        Generation g;
        double t0 = now_ms();
        gpt_generate(&m, (const int* const*)prompts, lens, B, seeds, &sc, &g);
        ms[r] = now_ms() - t0;
        generated = 0;
        for (int b = 0; b < B; b++) generated += g.len[b] - g.prompt_len[b];
        generation_free(&g);
        fprintf(stderr, "run %d/%d: %ld tokens in %.1f ms%s\n", r, runs, generated, ms[r], r == 0 ? " [warm-up]" : "");
    }
    double med = median(ms + 1, runs);
    printf("{\"bench\": \"generate\", \"device\": \"%s\", \"precision\": \"%s\", \"params\": %zu, \"batch\": %d, \"new_tokens\": %d, \"threads\": %d, "
           "\"ms\": %.2f, \"tokens_per_s\": %.1f}\n",
           a->device, a->precision, m.num_parameters, B, a->new_tokens, ops_cpu_threads(), med, generated / (med / 1e3));
    for (int b = 0; b < B; b++) free(prompts[b]);
    free(prompts);
    free(lens);
    free(seeds);
    free(ms);
    gpt_free(&m);
    return 0;
}

// The machine's sgemm ceiling through the same OpenBLAS: size^3, best of steps.
static int bench_sgemm(int size, int steps) {
    size_t n = (size_t)size * size;
    float* a = mallocCheck(n * sizeof(float));
    float* b = mallocCheck(n * sizeof(float));
    float* c = mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { a[i] = 0.001f * (float)(i % 97); b[i] = 0.002f * (float)(i % 89); c[i] = 0.0f; }
    double best = 1e30;
    for (int s = 0; s <= steps; s++) {
        double t0 = now_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, size, size, size, 1.0f, a, size, b, size, 0.0f, c, size);
        double t = now_ms() - t0;
        if (s > 0 && t < best) best = t;
    }
    printf("{\"bench\": \"sgemm\", \"size\": %d, \"threads\": %d, \"ms\": %.2f, \"gflops\": %.1f}\n", size,
           ops_cpu_threads(), best, 2.0 * size * (double)n / (best * 1e6));
    free(a);
    free(b);
    free(c);
    return 0;
}

int cmd_bench(int argc, char** argv) {
    if (argc < 2 || (strcmp(argv[1], "train") && strcmp(argv[1], "generate") && strcmp(argv[1], "sgemm"))) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            printf("usage: rlhfd bench train|generate|sgemm [options]   (rlhfd bench train --help)\n");
            return 0;
        }
        args_fail("bench", "expected 'train', 'generate' or 'sgemm'");
    }
    const char* what = argv[1];
    BenchArgs a = {.layers = 12, .heads = 12, .embd = 768, .vocab = 50257, .ctx = 1024, .batch = 4, .seq = 64,
                   .steps = 5, .threads = 0, .new_tokens = 64, .size = 2048, .seed = 1337, .device = "cpu",
                   .precision = "fp32"};
    ArgSpec specs[] = {
        {"layers", ARG_INT, &a.layers, "L: transformer blocks (default 12)"},
        {"heads", ARG_INT, &a.heads, "H: attention heads (default 12)"},
        {"embd", ARG_INT, &a.embd, "C: channels (default 768)"},
        {"vocab", ARG_INT, &a.vocab, "V: vocabulary size (default 50257)"},
        {"ctx", ARG_INT, &a.ctx, "N: context length (default 1024)"},
        {"batch", ARG_INT, &a.batch, "B: batch size / sequences (default 4)"},
        {"seq", ARG_INT, &a.seq, "T: training sequence length (default 64)"},
        {"steps", ARG_INT, &a.steps, "K: timed steps/runs after one warm-up (default 5)"},
        {"new-tokens", ARG_INT, &a.new_tokens, "N: generate: new tokens per sequence (default 64)"},
        {"threads", ARG_INT, &a.threads, "N: threads (default: OMP_NUM_THREADS or all cores)"},
        {"seed", ARG_U64, &a.seed, "S: random seed (default 1337)"},
        {"size", ARG_INT, &a.size, "N: sgemm: matrix size (default 2048)"},
        {"device", ARG_STR, &a.device, "D: train/generate on cpu or cuda (default cpu)"},
        {"precision", ARG_STR, &a.precision, "P: cuda matmuls in fp32 or bf16 (default fp32)"},
    };
    args_parse("bench", "train|generate|sgemm [options]", specs, sizeof specs / sizeof specs[0], argc - 1, argv + 1);
    if (a.layers <= 0 || a.heads <= 0 || a.embd <= 0 || a.vocab <= 0 || a.ctx <= 0 || a.batch <= 0 || a.seq <= 0 ||
        a.steps <= 0 || a.new_tokens <= 0 || a.size <= 0)
        args_fail("bench", "sizes and counts must be positive");
    if (a.embd % a.heads) args_fail("bench", "--embd %d must be divisible by --heads %d", a.embd, a.heads);
    if (!strcmp(what, "sgemm")) {
        ops_cpu_set_threads(a.threads);
        return bench_sgemm(a.size, a.steps);
    }
    a.ops = ops_by_name(a.device, a.precision, a.threads, "bench");
    return !strcmp(what, "train") ? bench_train(&a) : bench_generate(&a);
}
