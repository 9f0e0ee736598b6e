// sft_dump.c - runs one SFT step's forward + backward on a padded batch built
// by coordinator/sft_data.c and dumps everything as .npy files, so that
// test_sft_torch.py can check the prompt/pad masking against PyTorch.
//
// The batch: 3 demonstrations of different prompt/response lengths (random
// tokens, eot = V-1, padded with eot). Dumped:
//   examples (3, maxlen) the token sequences, -1 after their end; ex_len,
//            ex_prompt_len (3)
//   inputs, targets, mask (3,T) exactly what the trainer feeds gpt_forward
//   loss (1), logits (3,T,V) before backward, dlogits (3,T,V) after it
//            (gpt_backward overwrites acts.logits with their gradient)
//   grad_<name> every parameter gradient; param_<name> the parameters
//   then the same step again with the TARGET of some prompt positions changed
//   (mask still 0 there): loss2, dlogits2, grad2_<name>; changed (n,2) the
//   (row, t) positions changed, targets2 (3,T)
//   eval_loss (1): sft_eval over the 3 examples in batches of 2
// plus meta.json.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <jansson.h>
#include "npy.h"
#include "common/args.h"
#include "common/check.h"
#include "coordinator/sft_data.h"
#include "kernels/ops.h"
#include "worker/gpt.h"

static const char* const CMD = "sft_dump";
static const char* out_dir = NULL;

// ----------------------------------------------------------------------------
// .npy output (tests/common/npy.h), into --out

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

static void dump_device_f32(const GPT* m, const char* name, const float* dev, size_t n,
                            const int* shape, int ndim) {
    float* host = mallocCheck(n * sizeof(float));
    m->ops->to_host(host, dev, n * sizeof(float));
    npy_f32(name, host, shape, ndim);
    free(host);
}

// Every parameter tensor of a ParameterTensors-shaped buffer, flat, as
// <prefix><name> (the reference reshapes them by name).
static void dump_params(const GPT* m, const char* prefix, const float* memory) {
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, GPT_PARAM_NAMES[i]);
        int shape[1] = {(int)m->param_sizes[i]};
        dump_device_f32(m, name, memory + offset, m->param_sizes[i], shape, 1);
        offset += m->param_sizes[i];
    }
}

// ----------------------------------------------------------------------------

static uint64_t splitmix(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// One forward + backward of batch b; dumps loss, logits (if logits_name),
// d(logits) and the gradients under the given names.
static void step_and_dump(GPT* m, const SftBatch* b, const int* targets, const char* loss_name,
                          const char* logits_name, const char* dlogits_name,
                          const char* grad_prefix) {
    int B = b->B, T = b->T, V = m->config.vocab_size;
    gpt_forward(m, b->inputs, targets, b->mask, B, T);
    int one[1] = {1}, bt_v[3] = {B, T, V};
    npy_f32(loss_name, &m->mean_loss, one, 1);
    size_t n = (size_t)B * T * V;
    if (logits_name) dump_device_f32(m, logits_name, m->acts.logits, n, bt_v, 3);
    gpt_zero_grad(m);
    gpt_backward(m);
    dump_device_f32(m, dlogits_name, m->acts.logits, n, bt_v, 3); // now d(logits)
    dump_params(m, grad_prefix, m->grads_memory);
}

int main(int argc, char** argv) {
    GPTConfig cfg = {.max_seq_len = 16, .vocab_size = 67, .num_layers = 2, .num_heads = 2,
                     .channels = 32};
    uint64_t seed = 7;
    ArgSpec specs[] = {
        {"out", ARG_STR, &out_dir, "DIR: output directory (created)"},
        {"seed", ARG_U64, &seed, "N: seed of the weights and the tokens"},
    };
    args_parse(CMD, "--out DIR [--seed N]", specs, 2, argc, argv);
    if (!out_dir) args_fail(CMD, "--out is required");
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST)
        fatalf("%s: cannot create directory: %s", out_dir, strerror(errno));

    GPT model;
    gpt_build(&model, cfg, ops_cpu());
    gpt_init_random(&model, seed);
    const int V = cfg.vocab_size, eot = V - 1;

    // 3 demonstrations: prompt/response lengths differ, so do the totals
    // (len = P + R + 1: 9, 12, 6); the longest fixes T = 11
    enum { NEX = 3 };
    const int P[NEX] = {5, 2, 3}, R[NEX] = {3, 9, 2};
    SftData data;
    memset(&data, 0, sizeof data);
    uint64_t rng = seed ^ 0x5F7ull;
    for (int e = 0; e < NEX; e++) {
        int prompt[16], response[16];
        for (int i = 0; i < P[e]; i++) prompt[i] = (int)(splitmix(&rng) % (uint64_t)(V - 1));
        for (int i = 0; i < R[e]; i++) response[i] = (int)(splitmix(&rng) % (uint64_t)(V - 1));
        sft_data_add(&data, prompt, P[e], response, R[e], eot, e + 1);
    }
    int maxlen = data.max_len;
    int* examples = mallocCheck((size_t)NEX * maxlen * sizeof(int));
    int lens[NEX], plens[NEX];
    for (int e = 0; e < NEX; e++) {
        const SftExample* x = &data.examples[e];
        lens[e] = x->len;
        plens[e] = x->prompt_len;
        for (int t = 0; t < maxlen; t++) examples[e * maxlen + t] = t < x->len ? x->tokens[t] : -1;
    }
    int ex_shape[2] = {NEX, maxlen}, n_shape[1] = {NEX};
    npy_i32("examples", examples, ex_shape, 2);
    npy_i32("ex_len", lens, n_shape, 1);
    npy_i32("ex_prompt_len", plens, n_shape, 1);

    SftBatch batch;
    sft_batch_alloc(&batch, NEX, maxlen - 1);
    const size_t idx[NEX] = {0, 1, 2};
    sft_batch_fill(&batch, &data, idx, NEX, eot);
    int B = batch.B, T = batch.T, bt[2] = {B, T};
    npy_i32("inputs", batch.inputs, bt, 2);
    npy_i32("targets", batch.targets, bt, 2);
    npy_f32("mask", batch.mask, bt, 2);
    dump_params(&model, "param_", model.params_memory);

    step_and_dump(&model, &batch, batch.targets, "loss", "logits", "dlogits", "grad_");

    // the same step with other targets at masked prompt positions
    int* targets2 = mallocCheck((size_t)B * T * sizeof(int));
    memcpy(targets2, batch.targets, (size_t)B * T * sizeof(int));
    int changed[8][2], nchanged = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T && nchanged < 8; t++)
            if (batch.mask[b * T + t] == 0.0f && batch.targets[b * T + t] >= 0) {
                targets2[b * T + t] = (batch.targets[b * T + t] + 1 + b + t) % V;
                changed[nchanged][0] = b;
                changed[nchanged][1] = t;
                nchanged++;
            }
    int ch_shape[2] = {nchanged, 2};
    npy_i32("changed", &changed[0][0], ch_shape, 2);
    npy_i32("targets2", targets2, bt, 2);
    step_and_dump(&model, &batch, targets2, "loss2", NULL, "dlogits2", "grad2_");

    // held-out loss with another batching (2 rows, sorted by length)
    SftBatch small;
    sft_batch_alloc(&small, 2, maxlen - 1);
    size_t eval_tokens = 0;
    float eval_loss = (float)sft_eval(&model, &data, &small, eot, &eval_tokens);
    int one[1] = {1};
    npy_f32("eval_loss", &eval_loss, one, 1);
    int eval_tokens_i = (int)eval_tokens;
    npy_i32("eval_tokens", &eval_tokens_i, one, 1);

    json_t* names = json_array();
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++)
        json_array_append_new(names, json_string(GPT_PARAM_NAMES[i]));
    json_t* meta = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o}", "max_seq_len",
                             cfg.max_seq_len, "vocab_size", V, "num_layers", cfg.num_layers,
                             "num_heads", cfg.num_heads, "channels", cfg.channels, "eot", eot,
                             "B", B, "T", T, "param_names", names);
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", out_dir);
    if (!meta || json_dump_file(meta, path, JSON_INDENT(1)) != 0) fatalf("%s: write failed", path);
    json_decref(meta);
    printf("sft_dump: B=%d T=%d loss %.6f (changed %d prompt targets) eval %.6f over %zu tokens\n",
           B, T, model.mean_loss, nchanged, eval_loss, eval_tokens);

    free(targets2);
    free(examples);
    sft_batch_free(&small);
    sft_batch_free(&batch);
    sft_data_free(&data);
    gpt_free(&model);
    return 0;
}
