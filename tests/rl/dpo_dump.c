// dpo_dump.c - runs the gradient path of `rlhfd dpo` (coordinator/dpo.h, the
// very functions cmd_dpo.c trains with) on a tiny random GPT and dumps
// everything dpo_torch.py needs to replay it in PyTorch:
//   policy and reference parameters (two different random models, so the
//   reference sums matter), the pairs' tokens, the padded batch, the
//   sequence log-prob sums pc/pr (policy) and rc/rr (reference), the DPO
//   loss, d loss/d sums, and every parameter gradient after
//   dpo_batch_backward. Then one AdamW step and the new loss, plus
//   dpo_evaluate in batches of 2 (other padding) for the same pairs.
//
// usage: dpo_dump --out DIR [--perturb]   (--perturb: the reference's sums
// are shifted by 0.01 after use, so the torch check must fail)
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "npy.h"
#include "common/check.h"
#include "coordinator/dpo.h"
#include "kernels/ops.h"
#include "worker/gpt.h"

static const char* out_dir = NULL;

static void npy_write(const char* name, const char* descr, const void* data, size_t elem_size, size_t count) {
    int shape[1] = {(int)count};
    npy_save(out_dir, name, descr, data, elem_size, shape, 1);
}

static void dump_f32(const char* name, const float* x, size_t n) { npy_write(name, "<f4", x, sizeof(float), n); }
static void dump_i32(const char* name, const int* x, size_t n) { npy_write(name, "<i4", x, sizeof(int), n); }

static void dump_params(const GPT* m, const char* prefix, const float* memory) {
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, GPT_PARAM_NAMES[i]);
        dump_f32(name, memory + offset, m->param_sizes[i]);
        offset += m->param_sizes[i];
    }
}

int main(int argc, char** argv) {
    int perturb = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out_dir = argv[++i];
        else if (strcmp(argv[i], "--perturb") == 0) perturb = 1;
        else fatalf("dpo_dump: unknown argument '%s' (usage: --out DIR [--perturb])", argv[i]);
    }
    if (out_dir == NULL) fatalf("dpo_dump: --out DIR is required");

    const GPTConfig config = {.max_seq_len = 24, .vocab_size = 67, .num_layers = 2, .num_heads = 2, .channels = 32};
    const int eot = config.vocab_size - 1;
    const float beta = 0.5f;
    GPT policy, ref;
    gpt_build(&policy, config, ops_cpu());
    gpt_init_random(&policy, 11);
    gpt_build(&ref, config, ops_cpu());
    gpt_init_random(&ref, 23);
    dump_params(&policy, "param_", policy.params_memory);
    dump_params(&ref, "ref_", ref.params_memory);

    // 4 pairs: prompts of different lengths, chosen/rejected of different
    // lengths (one empty response: only the eot is scored)
    DpoPairs pairs;
    memset(&pairs, 0, sizeof pairs);
    const int P[4] = {3, 1, 6, 2}, Rc[4] = {5, 2, 9, 0}, Rr[4] = {2, 7, 4, 3};
    uint64_t state = 0x1234;
    int tokens[32];
    int all_tokens[4 * 3 * 32], layout[4 * 3];
    size_t at = 0;
    for (int p = 0; p < 4; p++) {
        int n = P[p] + Rc[p] + Rr[p];
        for (int i = 0; i < n; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            tokens[i] = (int)((state >> 33) % (uint64_t)(config.vocab_size - 1)); // never the eot
            all_tokens[at++] = tokens[i];
        }
        layout[3 * p] = P[p];
        layout[3 * p + 1] = Rc[p];
        layout[3 * p + 2] = Rr[p];
        dpo_pairs_add(&pairs, tokens, P[p], tokens + P[p], Rc[p], tokens + P[p] + Rc[p], Rr[p], eot, p + 1);
    }
    dump_i32("pair_tokens", all_tokens, at);
    dump_i32("pair_layout", layout, 12);

    const int np = 4;
    const size_t idx[4] = {0, 1, 2, 3};
    DpoBatch pb;
    dpo_batch_alloc(&pb, np, pairs.seqs.max_len - 1);
    dpo_ensure_reference(&ref, &pb, &pairs, idx, np, eot);
    if (perturb) pairs.ref_c[2] += 0.01f;
    dpo_batch_forward(&policy, &pb, &pairs, idx, np, eot, pb.pc, pb.pr);
    DpoStats s = dpo_batch_loss(&pb, &pairs, idx, np, beta);
    dpo_batch_backward(&policy, &pb, np);
    const int batch_B = pb.batch.B, batch_T = pb.batch.T; // evaluation below re-fills the batch
    dump_i32("inputs", pb.batch.inputs, (size_t)pb.batch.B * pb.batch.T);
    dump_i32("targets", pb.batch.targets, (size_t)pb.batch.B * pb.batch.T);
    dump_f32("mask", pb.batch.mask, (size_t)pb.batch.B * pb.batch.T);
    dump_f32("pc", pb.pc, np);
    dump_f32("pr", pb.pr, np);
    dump_f32("rc", pb.rc, np);
    dump_f32("rr", pb.rr, np);
    dump_f32("dpc", pb.dpc, np);
    dump_f32("dpr", pb.dpr, np);
    dump_params(&policy, "grad_", policy.grads_memory);

    // one AdamW step, then the loss again (the step must lower it)
    AdamWConfig adamw = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.0f,
                         .grad_clip = 0.0f};
    gpt_update(&policy, &adamw);
    dpo_batch_forward(&policy, &pb, &pairs, idx, np, eot, pb.pc, pb.pr);
    DpoStats after = dpo_batch_loss(&pb, &pairs, idx, np, beta);
    // the held-out path: other batching (2 pairs per forward), same pairs
    DpoStats ev = dpo_evaluate(&policy, &ref, &pb, &pairs, 2, eot, beta);

    json_t* meta = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
                             "vocab_size", config.vocab_size, "channels", config.channels, "num_layers",
                             config.num_layers, "num_heads", config.num_heads, "max_seq_len", config.max_seq_len,
                             "eot", eot, "beta", (double)beta, "B", batch_B, "T", batch_T,
                             "loss", s.loss, "acc", s.acc, "margin", s.margin, "chosen_reward", s.chosen_reward,
                             "rejected_reward", s.rejected_reward, "loss_after_step", after.loss,
                             "eval_loss", ev.loss);
    json_t* names = json_array();
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) json_array_append_new(names, json_string(GPT_PARAM_NAMES[i]));
    json_object_set_new(meta, "param_names", names);
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", out_dir);
    if (json_dump_file(meta, path, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) != 0) fatalf("%s: cannot write", path);
    json_decref(meta);

    dpo_batch_free(&pb);
    dpo_pairs_free(&pairs);
    gpt_free(&policy);
    gpt_free(&ref);
    return 0;
}
