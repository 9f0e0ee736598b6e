// rm_dump.c - runs the C reward model (worker/reward_model.c) on a batch of
// rankings and dumps everything as .npy files, so that test_rm_torch.py can
// replay it in PyTorch.
//
// One batch of G rankings with K = 2, 3, 4, ... (cycling), random responses
// of different lengths (random tokens, padded with random tokens that must
// not matter), random best-first permutations. Dumps:
//   param_<name> (16 trunk tensors), head_w (C), head_b (1), offset (1)
//   tokens (B,T), lens (B), ks (G), rankings (sum K)   B = sum K
//   rewards (B), loss (1), pairs (2: right, total)
//   grad_<name>, grad_head_w, grad_head_b           (one backward)
//   norm (1), final_<name>, final_head_w, final_head_b (one rm_update)
// plus meta.json (config, AdamW hyperparameters, names, decay flags).
// A small forward runs first, so the activations are grown once (rm_reserve).
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
#include "kernels/ops.h"
#include "worker/gpt.h"
#include "worker/reward_model.h"

static const char* const CMD = "rm_dump";
static const char* out_dir = NULL;

// splitmix64, independent of the model's RNG
static uint64_t rng_next(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int rng_int(uint64_t* s, int n) { return (int)(rng_next(s) % (uint64_t)n); }

// .npy version 1.0: magic, header length, dict literal padded to 128 bytes, data
static void npy_write(const char* name, const char* descr, const void* data, size_t elem,
                      const int* shape, int ndim) {
    npy_save(out_dir, name, descr, data, elem, shape, ndim);
}
static void npy_f32(const char* name, const float* d, const int* shape, int ndim) {
    npy_write(name, "<f4", d, sizeof(float), shape, ndim);
}
static void npy_i32(const char* name, const int* d, const int* shape, int ndim) {
    npy_write(name, "<i4", d, sizeof(int), shape, ndim);
}

// Dumps n floats of backend memory as a 1-D array.
static void dump_device(const RewardModel* rm, const char* name, const float* dev, int n) {
    float* h = mallocCheck((size_t)n * sizeof(float));
    rm->gpt.ops->to_host(h, dev, (size_t)n * sizeof(float));
    npy_f32(name, h, &n, 1);
    free(h);
}

// The 16 trunk tensors of a parameter-shaped buffer, flat (the reference reshapes).
static void dump_params(const RewardModel* rm, const char* prefix, const float* mem) {
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, GPT_PARAM_NAMES[i]);
        dump_device(rm, name, mem + off, (int)rm->gpt.param_sizes[i]);
        off += rm->gpt.param_sizes[i];
    }
}

static void dump_head(const RewardModel* rm, const char* prefix, const float* w, const float* b) {
    char name[128];
    snprintf(name, sizeof name, "%shead_w", prefix);
    dump_device(rm, name, w, rm->gpt.config.channels);
    snprintf(name, sizeof name, "%shead_b", prefix);
    dump_device(rm, name, b, 1);
}

int main(int argc, char** argv) {
    GPTConfig cfg = {.max_seq_len = 16, .vocab_size = 67, .num_layers = 2, .num_heads = 2, .channels = 32};
    int G = 3, threads = 0;
    float offset = 0.25f;
    uint64_t seed = 7;
    AdamWConfig adam = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                        .grad_clip = 0.0f};
    ArgSpec specs[] = {
        {"out", ARG_STR, &out_dir, "DIR: output directory (created)"},
        {"layers", ARG_INT, &cfg.num_layers, "N: layers"},
        {"heads", ARG_INT, &cfg.num_heads, "N: heads"},
        {"channels", ARG_INT, &cfg.channels, "N: channels"},
        {"vocab", ARG_INT, &cfg.vocab_size, "N: vocab"},
        {"ctx", ARG_INT, &cfg.max_seq_len, "N: context"},
        {"rankings", ARG_INT, &G, "N: rankings in the batch (K cycles 2, 3, 4)"},
        {"offset", ARG_FLOAT, &offset, "X: reward offset"},
        {"seed", ARG_U64, &seed, "N: seed"},
        {"lr", ARG_FLOAT, &adam.lr, "X: learning rate"},
        {"weight-decay", ARG_FLOAT, &adam.weight_decay, "X: weight decay"},
        {"grad-clip", ARG_FLOAT, &adam.grad_clip, "X: max global norm (0: none)"},
        {"threads", ARG_INT, &threads, "N: threads"},
    };
    args_parse(CMD, "--out DIR [options]", specs, (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (!out_dir) args_fail(CMD, "--out is required");
    if (G < 1 || cfg.max_seq_len < 3) args_fail(CMD, "need --rankings >= 1 and --ctx >= 3");
    gpt_config_check(&cfg);
    ops_cpu_set_threads(threads);
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) fatalf("%s: %s", out_dir, strerror(errno));

    RewardModel rm;
    memset(&rm, 0, sizeof rm);
    gpt_build(&rm.gpt, cfg, ops_cpu());
    gpt_init_random(&rm.gpt, seed);
    rm_init_head(&rm, seed);
    rm.offset = offset;
    dump_params(&rm, "param_", rm.gpt.params_memory);
    dump_head(&rm, "", rm.head_w, rm.head_b);
    int one = 1;
    npy_f32("offset", &rm.offset, &one, 1);

    // ---- the batch
    uint64_t rng = seed ^ 0xDA7Aull;
    int* ks = mallocCheck((size_t)G * sizeof(int));
    int B = 0;
    for (int g = 0; g < G; g++) B += ks[g] = 2 + g % 3;
    int T = cfg.max_seq_len - 1; // padded length; one sequence reaches it
    int* tokens = mallocCheck((size_t)B * T * sizeof(int));
    int* lens = mallocCheck((size_t)B * sizeof(int));
    int* flat = mallocCheck((size_t)B * sizeof(int));
    const int** rankings = mallocCheck((size_t)G * sizeof(int*));
    for (int i = 0; i < B * T; i++) tokens[i] = rng_int(&rng, cfg.vocab_size);
    for (int b = 0; b < B; b++) lens[b] = 1 + rng_int(&rng, T);
    lens[0] = T;
    lens[B - 1] = 1;
    for (int g = 0, off = 0; g < G; off += ks[g], g++) {
        int* p = flat + off;
        for (int i = 0; i < ks[g]; i++) p[i] = i;
        for (int i = ks[g] - 1; i > 0; i--) { // Fisher-Yates
            int j = rng_int(&rng, i + 1), t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
        rankings[g] = p;
    }
    int shape2[2] = {B, T};
    npy_i32("tokens", tokens, shape2, 2);
    npy_i32("lens", lens, &B, 1);
    npy_i32("ks", ks, &G, 1);
    npy_i32("rankings", flat, &B, 1);

    // a small forward first: the big one must grow the activations
    float* rewards = mallocCheck((size_t)B * sizeof(float));
    int small_lens[2] = {3, 4};
    rm_forward(&rm, tokens, small_lens, 2, 4, rewards);

    // ---- forward, loss, backward
    rm_forward(&rm, tokens, lens, B, T, rewards);
    float* drewards = mallocCheck((size_t)B * sizeof(float));
    int pairs[2];
    float loss = (float)rm_ranking_loss(rewards, G, ks, rankings, drewards, &pairs[0], &pairs[1]);
    npy_f32("rewards", rewards, &B, 1);
    npy_f32("loss", &loss, &one, 1);
    int two = 2;
    npy_i32("pairs", pairs, &two, 1);
    rm_zero_grad(&rm);
    rm_backward(&rm, drewards);
    dump_params(&rm, "grad_", rm.gpt.grads_memory);
    dump_head(&rm, "grad_", rm.head_dw, rm.head_db);

    // ---- one AdamW step
    float norm = rm_update(&rm, &adam);
    npy_f32("norm", &norm, &one, 1);
    dump_params(&rm, "final_", rm.gpt.params_memory);
    dump_head(&rm, "final_", rm.head_w, rm.head_b);
    printf("rm_dump: B=%d T=%d G=%d loss %.6f pairs %d/%d grad norm %.6f\n", B, T, G, loss, pairs[0],
           pairs[1], norm);

    json_t* names = json_array();
    json_t* decays = json_array();
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        json_array_append_new(names, json_string(GPT_PARAM_NAMES[i]));
        json_array_append_new(decays, json_boolean(gpt_param_decays(i)));
    }
    json_t* meta = json_pack("{s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:o, s:o}",
                             "max_seq_len", cfg.max_seq_len, "vocab_size", cfg.vocab_size,
                             "num_layers", cfg.num_layers, "num_heads", cfg.num_heads, "channels",
                             cfg.channels, "lr", (double)adam.lr, "beta1", (double)adam.beta1,
                             "beta2", (double)adam.beta2, "eps", (double)adam.eps, "weight_decay",
                             (double)adam.weight_decay, "grad_clip", (double)adam.grad_clip,
                             "param_names", names, "param_decays", decays);
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", out_dir);
    if (!meta || json_dump_file(meta, path, JSON_INDENT(1)) != 0) fatalf("%s: write failed", path);
    json_decref(meta);

    free(ks);
    free(tokens);
    free(lens);
    free(flat);
    free(rankings);
    free(rewards);
    free(drewards);
    rm_free(&rm);
    return 0;
}
