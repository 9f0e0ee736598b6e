// ppo_heads_test.c - checks of the pieces under rlhfd ppo:
//  1. gpt_lm_head_backward with dlogp = -w/sum(w) reproduces gpt_backward's
//     gradients of the masked mean loss exactly (same float ops)
//  2. rollout_pack / sequence_logprobs agree with gpt_forward's per-token losses
//  3. the value head's gradients (head and trunk) match central finite
//     differences of L = 0.5 * sum m (v - y)^2
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../worker/gpt.h"
#include "../../worker/rollout.h"
#include "../../worker/value_head.h"
#include "../../common/rng.h"

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL  "); } else printf("ok    "); \
                              printf(__VA_ARGS__); printf("\n"); } while (0)

static void build(GPT* m, int V, uint64_t seed) {
    GPTConfig c = {.max_seq_len = 16, .vocab_size = V, .num_layers = 2, .num_heads = 2, .channels = 16};
    memset(m, 0, sizeof *m);
    gpt_build(m, c, ops_cpu());
    gpt_init_random(m, seed);
}

static void test_lm_head_backward(void) {
    const int B = 3, T = 7, V = 37;
    GPT a, b;
    build(&a, V, 1);
    build(&b, V, 1);
    Rng rng;
    rng_seed(&rng, 42);
    int inputs[3 * 7], targets[3 * 7];
    float mask[3 * 7], dlogp[3 * 7];
    double wsum = 0;
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)rng_below(&rng, V);
        targets[i] = (i % 5 == 4) ? -1 : (int)rng_below(&rng, V);
        mask[i] = (i % 3 == 0) ? 0.0f : 0.5f + rng_float(&rng);
        if (targets[i] >= 0) wsum += mask[i];
    }
    for (int i = 0; i < B * T; i++) dlogp[i] = targets[i] < 0 ? 0.0f : (float)(-mask[i] / wsum);
    gpt_forward(&a, inputs, targets, mask, B, T);
    gpt_zero_grad(&a);
    gpt_backward(&a);
    gpt_forward(&b, inputs, targets, mask, B, T);
    gpt_zero_grad(&b);
    gpt_hidden_grad(&b);
    gpt_lm_head_backward(&b, dlogp);
    gpt_backward_trunk(&b);
    double maxdiff = 0, maxg = 0;
    for (size_t i = 0; i < a.num_parameters; i++) {
        double d = fabs((double)a.grads_memory[i] - (double)b.grads_memory[i]);
        if (d > maxdiff) maxdiff = d;
        if (fabs(a.grads_memory[i]) > maxg) maxg = fabs(a.grads_memory[i]);
    }
    CHECK(maxg > 0 && maxdiff <= 1e-6 * maxg, "lm_head_backward(-w/sum w) == gpt_backward: max |diff| %.3g (max |g| %.3g)",
          maxdiff, maxg);
    gpt_free(&a);
    gpt_free(&b);
}

static void test_pack_logprobs(void) {
    const int V = 29;
    GPT m;
    build(&m, V, 3);
    int s0[] = {1, 2, 3, 4, 5, 6};   // prompt 2, response 4
    int s1[] = {7, 8, 9};            // prompt 1, response 2
    int s2[] = {10, 11, 12, 13};     // prompt 4, response 0
    const int* seqs[] = {s0, s1, s2};
    int lens[] = {6, 3, 4}, plens[] = {2, 1, 4}, idx[] = {0, 1, 2};
    int inputs[3 * 6], targets[3 * 6];
    int T = rollout_pack(seqs, lens, plens, idx, 3, 0, inputs, targets);
    CHECK(T == 5, "rollout_pack: T = max len - 1 = %d", T);
    CHECK(targets[0] == -1 && targets[1] == 3 && targets[4] == 6 && inputs[4] == 5, "rollout_pack: row 0 targets/inputs");
    CHECK(targets[5] == 8 && targets[6] == 9 && targets[7] == -1 && inputs[7] == 0, "rollout_pack: row 1 targets, padding");
    int none = 1;
    for (int t = 0; t < T; t++) none &= targets[10 + t] == -1;
    CHECK(none, "rollout_pack: a response of 0 tokens has no targets");
    // per-token log-probs: batched (with padding) == one sequence at a time
    float l0[4], l1[2], l2[1];
    float* lp[] = {l0, l1, l2};
    double ent = 0;
    sequence_logprobs(&m, seqs, lens, plens, 3, 2, lp, &ent);
    float one[4];
    float* lpo[] = {one};
    double maxdiff = 0;
    sequence_logprobs(&m, seqs, lens, plens, 1, 1, lpo, NULL);
    for (int j = 0; j < 4; j++) maxdiff = fmax(maxdiff, fabs(one[j] - l0[j]));
    sequence_logprobs(&m, seqs + 1, lens + 1, plens + 1, 1, 1, lpo, NULL);
    for (int j = 0; j < 2; j++) maxdiff = fmax(maxdiff, fabs(one[j] - l1[j]));
    CHECK(maxdiff < 1e-5, "sequence_logprobs: padded batch == one at a time (max diff %.3g)", maxdiff);
    int neg = 1;
    for (int j = 0; j < 4; j++) neg &= l0[j] < 0;
    CHECK(neg && ent > 0 && ent <= log(V) + 1e-6, "log-probs < 0, entropy %.4f in (0, log V]", ent);
    gpt_free(&m);
}

// L = 0.5 * sum m (v - y)^2 through the trunk + head, in double over float values.
static double value_loss(GPT* m, ValueHead* h, const int* in, const float* y, const float* msk, int B, int T,
                         float* v, float* dv) {
    gpt_forward_trunk(m, in, B, T);
    value_head_forward(h, m, v);
    double L = 0;
    for (int i = 0; i < B * T; i++) {
        double d = (double)v[i] - y[i];
        L += 0.5 * msk[i] * d * d;
        if (dv) dv[i] = (float)(msk[i] * d);
    }
    return L;
}

static void test_value_head_grad(void) {
    const int B = 2, T = 5, V = 23, C = 16;
    GPT m;
    build(&m, V, 5);
    ValueHead h;
    value_head_init(&h, C, m.ops);
    Rng rng;
    rng_seed(&rng, 9);
    float w[16], bias = 0.3f;
    for (int c = 0; c < C; c++) w[c] = 0.5f * rng_normal(&rng);
    value_head_set(&h, w, bias);
    int in[10];
    float y[10], msk[10], v[10], dv[10];
    for (int i = 0; i < B * T; i++) {
        in[i] = (int)rng_below(&rng, V);
        y[i] = rng_normal(&rng);
        msk[i] = i % 4 == 3 ? 0.0f : 1.0f;
    }
    value_loss(&m, &h, in, y, msk, B, T, v, dv);
    gpt_zero_grad(&m);
    value_head_zero_grad(&h);
    float* dlnf = gpt_hidden_grad(&m);
    value_head_backward(&h, &m, dv, dlnf);
    gpt_backward_trunk(&m);
    // finite differences on head params and a few trunk params
    const float eps = 1e-2f;
    double worst = 0;
    for (int k = 0; k <= C; k++) {
        float* p = h.params + k;
        float old = *p;
        *p = old + eps; double lp = value_loss(&m, &h, in, y, msk, B, T, v, NULL);
        *p = old - eps; double lm = value_loss(&m, &h, in, y, msk, B, T, v, NULL);
        *p = old;
        double fd = (lp - lm) / (2 * eps), an = h.grads[k];
        double rel = fabs(fd - an) / fmax(1e-3, fabs(fd) + fabs(an));
        if (rel > worst) worst = rel;
    }
    CHECK(worst < 1e-2, "value head d(w,b) vs finite differences: worst rel err %.2g", worst);
    worst = 0;
    float* trunk[] = {m.params.lnfw, m.params.lnfb, m.params.fcprojw + 7, m.params.qkvw + 100, m.params.wpe + 3,
                      m.params.wte + in[0] * C + 2};
    float* tgrad[] = {m.grads.lnfw, m.grads.lnfb, m.grads.fcprojw + 7, m.grads.qkvw + 100, m.grads.wpe + 3,
                      m.grads.wte + in[0] * C + 2};
    const float teps = 2e-3f; // the trunk is less linear than the head: a smaller step
    for (int k = 0; k < 6; k++) {
        float old = *trunk[k];
        *trunk[k] = old + teps; double lp = value_loss(&m, &h, in, y, msk, B, T, v, NULL);
        *trunk[k] = old - teps; double lm = value_loss(&m, &h, in, y, msk, B, T, v, NULL);
        *trunk[k] = old;
        double fd = (lp - lm) / (2 * teps), an = *tgrad[k];
        printf("      trunk param %d: analytic %.6f, finite differences %.6f\n", k, an, fd);
        // float forward noise (~1e-6 on a loss of ~20) / 2 teps bounds what FD can resolve: 2e-3 absolute
        double excess = fabs(fd - an) / (0.02 * (fabs(fd) + fabs(an)) + 2e-3);
        if (excess > worst) worst = excess;
    }
    CHECK(worst < 1, "trunk gradient through the value head vs finite differences: worst |err| / (2%% + 2e-3) = %.2g", worst);
    // one AdamW step lowers the loss
    double before = value_loss(&m, &h, in, y, msk, B, T, v, NULL);
    AdamWConfig cfg = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0, .grad_clip = 1};
    value_head_update(&h, &cfg);
    gpt_update(&m, &cfg);
    double after = value_loss(&m, &h, in, y, msk, B, T, v, NULL);
    CHECK(after < before, "one AdamW step on head + trunk lowers the value loss (%.4f -> %.4f)", before, after);
    value_head_free(&h);
    gpt_free(&m);
}

int main(void) {
    test_lm_head_backward();
    test_pack_logprobs();
    test_value_head_grad();
    printf(failures ? "%d FAILED\n" : "all passed\n", failures);
    return failures ? 1 : 0;
}
