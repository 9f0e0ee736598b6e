// gpt_dump.c - runs the C GPT-2 on random data and dumps everything as .npy
// files, so that test_gpt_torch.py can replay the same computation in PyTorch
// and compare tensor by tensor.
//
// What it does, for one shape and seed:
//   1. builds the model, gpt_init_random(seed), dumps every initial parameter
//   2. draws `steps` random batches (inputs, targets with some -1, a loss
//      weight mask with zeros and non-unit weights) and dumps them
//   3. forward on batch 0: dumps logits, per-position losses, mean loss and
//      the intermediate activations (to locate a mismatch)
//   4. backward: dumps every parameter gradient
//   5. `steps` AdamW steps (step k trains on batch k): dumps each step's loss
//      and pre-clip gradient norm, then the final parameters
//   6. greedy generation with the KV cache (when worker/generate.h exists)
//      from prompts of different lengths: dumps the tokens
// plus meta.json (config, hyperparameters, tensor names, decay flags).
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "npy.h"
#include "common/args.h"
#include "common/check.h"
#include "kernels/ops.h"
#include "worker/generate.h"
#include "worker/gpt.h"


static const char* const CMD = "gpt_dump";

// ----------------------------------------------------------------------------
// random numbers: splitmix64, independent of the model's own RNG

static uint64_t rng_next(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int rng_int(uint64_t* state, int n) { return (int)(rng_next(state) % (uint64_t)n); }

static float rng_uniform(uint64_t* state) { return (float)(rng_next(state) >> 40) / 16777216.0f; }

// ----------------------------------------------------------------------------
// .npy output (tests/common/npy.h), into --out

static const char* out_dir = NULL;

static void npy_write(const char* name, const char* descr, const void* data, size_t elem_size,
                      const int* shape, int ndim) {
    npy_save(out_dir, name, descr, data, elem_size, shape, ndim);
}

static void npy_f32(const char* name, const float* data, const int* shape, int ndim) {
    npy_write(name, "<f4", data, sizeof(float), shape, ndim);
}

static void npy_i32(const char* name, const int* data, const int* shape, int ndim) {
    npy_write(name, "<i4", data, sizeof(int), shape, ndim);
}

// Copies n floats from the backend's memory and dumps them.
static void dump_device_f32(const GPT* m, const char* name, const float* dev, const int* shape,
                            int ndim) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    float* host = (float*)mallocCheck(n * sizeof(float));
    m->ops->to_host(host, dev, n * sizeof(float));
    npy_f32(name, host, shape, ndim);
    free(host);
}

// ----------------------------------------------------------------------------
// parameter tensors: shapes in the PyTorch sense (the stacked layers first)

typedef struct {
    int ndim;
    int shape[3];
} Shape;

static void param_shapes(Shape s[NUM_PARAMETER_TENSORS], const GPTConfig* c) {
    int V = c->vocab_size, C = c->channels, L = c->num_layers, maxT = c->max_seq_len;
    Shape table[NUM_PARAMETER_TENSORS] = {
        {2, {V, C, 0}},     {2, {maxT, C, 0}},  {2, {L, C, 0}},     {2, {L, C, 0}},
        {3, {L, 3 * C, C}}, {2, {L, 3 * C, 0}}, {3, {L, C, C}},     {2, {L, C, 0}},
        {2, {L, C, 0}},     {2, {L, C, 0}},     {3, {L, 4 * C, C}}, {2, {L, 4 * C, 0}},
        {3, {L, C, 4 * C}}, {2, {L, C, 0}},     {1, {C, 0, 0}},     {1, {C, 0, 0}},
    };
    memcpy(s, table, sizeof table);
}

// Dumps all 16 tensors of a ParameterTensors-shaped buffer as <prefix><name>.
static void dump_params(const GPT* m, const char* prefix, const float* memory) {
    Shape shapes[NUM_PARAMETER_TENSORS];
    param_shapes(shapes, &m->config);
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, GPT_PARAM_NAMES[i]);
        dump_device_f32(m, name, memory + offset, shapes[i].shape, shapes[i].ndim);
        offset += m->param_sizes[i];
    }
}

// Checks that gpt.h's sizes agree with the shapes the reference will assume.
static void check_param_sizes(const GPT* m) {
    Shape shapes[NUM_PARAMETER_TENSORS];
    param_shapes(shapes, &m->config);
    size_t total = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = 1;
        for (int d = 0; d < shapes[i].ndim; d++) n *= (size_t)shapes[i].shape[d];
        if (n != m->param_sizes[i])
            fatalf("param_sizes[%d] (%s) = %zu, expected %zu", i, GPT_PARAM_NAMES[i],
                   m->param_sizes[i], n);
        total += n;
    }
    if (total != m->num_parameters)
        fatalf("num_parameters = %zu, expected %zu", m->num_parameters, total);
}

// Dumps the activations of the last forward (run at full capacity B,T, so
// the layer stride is unambiguous).
static void dump_acts(const GPT* m, int B, int T) {
    const GPTConfig* c = &m->config;
    int L = c->num_layers, C = c->channels, NH = c->num_heads;
    const ActivationTensors* a = &m->acts;
    struct {
        const char* name;
        const float* p;
        int ndim;
        int shape[5];
    } list[] = {
        {"encoded", a->encoded, 3, {B, T, C}},
        {"ln1", a->ln1, 4, {L, B, T, C}},
        {"ln1_mean", a->ln1_mean, 3, {L, B, T}},
        {"ln1_rstd", a->ln1_rstd, 3, {L, B, T}},
        {"qkv", a->qkv, 4, {L, B, T, 3 * C}},
        {"atty", a->atty, 4, {L, B, T, C}},
        {"att", a->att, 5, {L, B, NH, T, T}},
        {"attproj", a->attproj, 4, {L, B, T, C}},
        {"residual2", a->residual2, 4, {L, B, T, C}},
        {"ln2", a->ln2, 4, {L, B, T, C}},
        {"ln2_mean", a->ln2_mean, 3, {L, B, T}},
        {"ln2_rstd", a->ln2_rstd, 3, {L, B, T}},
        {"fch", a->fch, 4, {L, B, T, 4 * C}},
        {"fch_gelu", a->fch_gelu, 4, {L, B, T, 4 * C}},
        {"fcproj", a->fcproj, 4, {L, B, T, C}},
        {"residual3", a->residual3, 4, {L, B, T, C}},
        {"lnf", a->lnf, 3, {B, T, C}},
        {"lnf_mean", a->lnf_mean, 2, {B, T}},
        {"lnf_rstd", a->lnf_rstd, 2, {B, T}},
        {"logits", a->logits, 3, {B, T, c->vocab_size}},
        {"losses", a->losses, 2, {B, T}},
    };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "act_%s", list[i].name);
        dump_device_f32(m, name, list[i].p, list[i].shape, list[i].ndim);
    }
}

// ----------------------------------------------------------------------------
// random batches

// Fills steps batches of (B,T) inputs, targets and loss weights. About 15% of
// targets are -1 (their mask weight is left nonzero on purpose: they must be
// ignored anyway) and the weights mix 0, 0.5, 1 and 2.
static void make_batches(int* inputs, int* targets, float* mask, int steps, int B, int T, int V,
                         uint64_t* rng) {
    for (int s = 0; s < steps; s++) {
        int* inp = inputs + (size_t)s * B * T;
        int* tgt = targets + (size_t)s * B * T;
        float* w = mask + (size_t)s * B * T;
        for (int i = 0; i < B * T; i++) {
            inp[i] = rng_int(rng, V);
            tgt[i] = (rng_uniform(rng) < 0.15f) ? -1 : rng_int(rng, V);
            float u = rng_uniform(rng);
            w[i] = (u < 0.2f) ? 0.0f : (u < 0.3f) ? 0.5f : (u < 0.4f) ? 2.0f : 1.0f;
        }
        tgt[0] = rng_int(rng, V); // at least one position counts
        w[0] = 1.0f;
    }
}

// ----------------------------------------------------------------------------
// greedy generation with the KV cache

// Greedy-decodes 3 random prompts of lengths 1, 4 and ctx-3 (capped to the
// context) in one batch, up to 8 new tokens each (the last one runs into the
// context length). Dumps tokens and logprobs padded to (3, ctx) with -1 / 0.
static void dump_generation(GPT* m, uint64_t* rng) {
    int maxT = m->config.max_seq_len, V = m->config.vocab_size;
    enum { NPROMPTS = 3 };
    int prompt_lens[NPROMPTS] = {1, 4 < maxT ? 4 : maxT, maxT > 3 ? maxT - 3 : 1};
    int* prompts[NPROMPTS];
    for (int i = 0; i < NPROMPTS; i++) {
        prompts[i] = (int*)mallocCheck((size_t)prompt_lens[i] * sizeof(int));
        for (int j = 0; j < prompt_lens[i]; j++) prompts[i][j] = rng_int(rng, V);
    }
    SampleConfig sc = sample_config_default();
    sc.max_new_tokens = 8;
    sc.temperature = 0.0f;
    sc.top_k = 0;
    sc.top_p = 1.0f;
    sc.eot = -1;
    Generation g;
    gpt_generate(m, (const int* const*)prompts, prompt_lens, NPROMPTS, NULL, &sc, &g);

    int* tokens = (int*)mallocCheck((size_t)NPROMPTS * maxT * sizeof(int));
    float* logprobs = (float*)callocCheck((size_t)NPROMPTS * maxT, sizeof(float));
    int lens[NPROMPTS], plens[NPROMPTS];
    for (int i = 0; i < NPROMPTS; i++) {
        if (g.len[i] > maxT || g.prompt_len[i] != prompt_lens[i])
            fatalf("generation %d: len %d prompt_len %d (context %d)", i, g.len[i],
                   g.prompt_len[i], maxT);
        lens[i] = g.len[i];
        plens[i] = g.prompt_len[i];
        for (int j = 0; j < maxT; j++) tokens[i * maxT + j] = (j < g.len[i]) ? g.tokens[i][j] : -1;
        for (int j = 0; j < g.len[i] - g.prompt_len[i]; j++)
            logprobs[i * maxT + j] = g.logprobs[i][j];
    }
    int shape2[2] = {NPROMPTS, maxT}, shape1[1] = {NPROMPTS};
    npy_i32("gen_tokens", tokens, shape2, 2);
    npy_f32("gen_logprobs", logprobs, shape2, 2);
    npy_i32("gen_len", lens, shape1, 1);
    npy_i32("gen_prompt_len", plens, shape1, 1);
    generation_free(&g);
    free(tokens);
    free(logprobs);
    for (int i = 0; i < NPROMPTS; i++) free(prompts[i]);
}

// ----------------------------------------------------------------------------

static void make_dir(const char* dir) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        fatalf("%s: cannot create directory: %s", dir, strerror(errno));
}

static void write_meta(const GPT* m, const AdamWConfig* adam, int B, int T, int steps,
                       uint64_t seed, int use_mask, int generated) {
    const GPTConfig* c = &m->config;
    json_t* names = json_array();
    json_t* decays = json_array();
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        json_array_append_new(names, json_string(GPT_PARAM_NAMES[i]));
        json_array_append_new(decays, json_boolean(gpt_param_decays(i)));
    }
    json_t* meta = json_pack(
        "{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:b, s:b,"
        " s:f, s:f, s:f, s:f, s:f, s:f, s:o, s:o, s:I}",
        "max_seq_len", c->max_seq_len, "vocab_size", c->vocab_size, "num_layers", c->num_layers,
        "num_heads", c->num_heads, "channels", c->channels, "B", B, "T", T, "steps", steps,
        "seed", (json_int_t)seed, "use_mask", use_mask, "generated", generated, "lr",
        (double)adam->lr, "beta1", (double)adam->beta1, "beta2", (double)adam->beta2, "eps",
        (double)adam->eps, "weight_decay", (double)adam->weight_decay, "grad_clip",
        (double)adam->grad_clip, "param_names", names, "param_decays", decays,
        "num_parameters", (json_int_t)m->num_parameters);
    if (meta == NULL) fatalf("meta.json: json_pack failed");
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", out_dir);
    if (json_dump_file(meta, path, JSON_INDENT(1)) != 0) fatalf("%s: write failed", path);
    json_decref(meta);
}

int main(int argc, char** argv) {
    GPTConfig cfg = {.max_seq_len = 16, .vocab_size = 67, .num_layers = 2, .num_heads = 2,
                     .channels = 32};
    int B = 3, T = 11, steps = 10, no_mask = 0, threads = 0;
    uint64_t seed = 1337;
    AdamWConfig adam = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                        .weight_decay = 0.1f, .grad_clip = 1.0f};
    ArgSpec specs[] = {
        {"out", ARG_STR, &out_dir, "DIR: output directory (created)"},
        {"layers", ARG_INT, &cfg.num_layers, "N: number of layers L"},
        {"heads", ARG_INT, &cfg.num_heads, "N: number of heads NH"},
        {"channels", ARG_INT, &cfg.channels, "N: channels C"},
        {"vocab", ARG_INT, &cfg.vocab_size, "N: vocabulary size V"},
        {"ctx", ARG_INT, &cfg.max_seq_len, "N: context length (wpe rows)"},
        {"batch", ARG_INT, &B, "N: batch size B"},
        {"seq", ARG_INT, &T, "N: sequence length T (<= ctx)"},
        {"seed", ARG_U64, &seed, "N: seed of the weights and the data"},
        {"steps", ARG_INT, &steps, "N: AdamW steps"},
        {"lr", ARG_FLOAT, &adam.lr, "X: learning rate"},
        {"beta1", ARG_FLOAT, &adam.beta1, "X: Adam beta1"},
        {"beta2", ARG_FLOAT, &adam.beta2, "X: Adam beta2"},
        {"eps", ARG_FLOAT, &adam.eps, "X: Adam epsilon"},
        {"weight-decay", ARG_FLOAT, &adam.weight_decay, "X: decoupled weight decay"},
        {"grad-clip", ARG_FLOAT, &adam.grad_clip, "X: max global gradient norm (<= 0: none)"},
        {"no-mask", ARG_FLAG, &no_mask, "pass mask = NULL to gpt_forward"},
        {"threads", ARG_INT, &threads, "N: CPU threads (0: default)"},
    };
    args_parse(CMD, "--out DIR [options]", specs, (int)(sizeof specs / sizeof specs[0]), argc,
               argv);
    if (out_dir == NULL) args_fail(CMD, "--out is required");
    if (B <= 0 || T <= 0 || T > cfg.max_seq_len)
        args_fail(CMD, "need B > 0 and 0 < T <= ctx (got B=%d T=%d ctx=%d)", B, T,
                  cfg.max_seq_len);
    if (steps < 1) args_fail(CMD, "--steps must be >= 1");
    gpt_config_check(&cfg);
    ops_cpu_set_threads(threads);
    make_dir(out_dir);

    GPT model;
    gpt_build(&model, cfg, ops_cpu());
    check_param_sizes(&model);
    gpt_init_random(&model, seed);
    dump_params(&model, "param_", model.params_memory);

    // data: batch s is used by step s; batch 0 also for the gradient dump
    size_t BT = (size_t)B * T;
    int* inputs = (int*)mallocCheck((size_t)steps * BT * sizeof(int));
    int* targets = (int*)mallocCheck((size_t)steps * BT * sizeof(int));
    float* mask = (float*)mallocCheck((size_t)steps * BT * sizeof(float));
    uint64_t rng = seed ^ 0xDA7AULL;
    make_batches(inputs, targets, mask, steps, B, T, cfg.vocab_size, &rng);
    int data_shape[3] = {steps, B, T};
    npy_i32("inputs", inputs, data_shape, 3);
    npy_i32("targets", targets, data_shape, 3);
    npy_f32("mask", mask, data_shape, 3);

    // forward + backward on batch 0
    gpt_forward(&model, inputs, targets, no_mask ? NULL : mask, B, T);
    int scalar_shape[1] = {1};
    npy_f32("loss", &model.mean_loss, scalar_shape, 1);
    dump_acts(&model, B, T); // before backward: it may overwrite the logits
    gpt_zero_grad(&model);
    gpt_backward(&model);
    dump_params(&model, "grad_", model.grads_memory);

    // training: step s trains on batch s
    float* step_losses = (float*)mallocCheck((size_t)steps * sizeof(float));
    float* step_norms = (float*)mallocCheck((size_t)steps * sizeof(float));
    for (int s = 0; s < steps; s++) {
        gpt_forward(&model, inputs + s * BT, targets + s * BT, no_mask ? NULL : mask + s * BT, B,
                    T);
        gpt_zero_grad(&model);
        gpt_backward(&model);
        step_losses[s] = model.mean_loss;
        step_norms[s] = gpt_update(&model, &adam);
        printf("step %d: loss %.6f grad norm %.6f%s\n", s, step_losses[s], step_norms[s],
               (adam.grad_clip > 0 && step_norms[s] > adam.grad_clip) ? " (clipped)" : "");
    }
    int steps_shape[1] = {steps};
    npy_f32("step_losses", step_losses, steps_shape, 1);
    npy_f32("step_norms", step_norms, steps_shape, 1);
    dump_params(&model, "final_", model.params_memory);

    dump_generation(&model, &rng);
    int generated = 1;
    write_meta(&model, &adam, B, T, steps, seed, !no_mask, generated);

    free(step_losses);
    free(step_norms);
    free(inputs);
    free(targets);
    free(mask);
    gpt_free(&model);
    return 0;
}
