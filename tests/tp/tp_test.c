// tp_test.c - tensor parallelism (Megatron-LM) reproduces the whole model.
// Run under mpirun with P ranks, one tensor-parallel group of P:
//   mpirun -np P tp_test --dir SCRATCH [--vocab V --heads NH --embd C --layers L]
// Every rank builds the same random model whole (tp=1, its own copy) and
// sharded over the P ranks from the same seed, runs both on the same data
// and checks (tolerances relative to the largest reference value):
//   1. sharding: the gathered shards are the whole model, bit for bit
//   2. forward: logits (gathered), per-token log-probs and the mean loss
//   3. backward: every parameter's gradient (gathered), the replicated ones
//      bit-identical on every rank; the global grad norm and
//      gpt_grad_sumsq_range summed over the ranks
//   4. 3 AdamW steps with clipping active: parameters (gathered)
//   5. policy-gradient path: gpt_token_logprobs + gpt_lm_head_backward with a
//      value head on the trunk (values, head and trunk gradients)
//   6. reward model: rm_forward / rm_backward / rm_update on a sharded trunk
//   7. generation: greedy and sampled (top-k, top-p), token for token, and
//      the log-probs; identical on every rank
//   8. checkpoints: saved sharded (with optimizer) -> loads whole and
//      resharded bit-exact; saved whole -> loads sharded bit-exact
// With --expect-bad-heads it only builds a model whose heads P does not
// divide (the caller checks the error message and exit code).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/check.h"
#include "common/rng.h"
#include "worker/comm.h"
#include "worker/generate.h"
#include "worker/gpt.h"
#include "worker/model_io.h"
#include "worker/reward_model.h"
#include "worker/value_head.h"

static int failures = 0;
static int rank = 0;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        int ok_ = (cond);                                       \
        if (!ok_) failures++;                                   \
        if (!ok_ || rank == 0) {                                \
            printf("[rank %d] %s ", rank, ok_ ? "ok  " : "FAIL"); \
            printf(__VA_ARGS__);                                \
            printf("\n");                                       \
        }                                                       \
    } while (0)

// max |got - want| relative to max |want| (0 when both are 0)
static double rel_diff(const float* got, const float* want, size_t n) {
    double md = 0.0, mw = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= md)) md = d; // NaN counts as a difference
        if (fabs(want[i]) > mw) mw = fabs(want[i]);
    }
    if (md == 0.0) return 0.0;
    return mw > 0 ? md / mw : INFINITY;
}

static float* full_copy(const GPT* m, const float* local) {
    float* f = mallocCheck(m->num_parameters_full * sizeof(float));
    gpt_gather_full(m, local, f);
    return f;
}

// Per tensor: gathered sharded buffer vs the whole model's, within tol.
static void check_tensors(const char* what, const GPT* tp, const float* tp_local, const GPT* ref,
                          const float* ref_buf, double tol) {
    float* got = full_copy(tp, tp_local);
    size_t off = 0;
    double worst = 0.0;
    const char* worst_name = "";
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        double d = rel_diff(got + off, ref_buf + off, ref->param_sizes[i]);
        if (!(d <= worst)) {
            worst = d;
            worst_name = GPT_PARAM_NAMES[i];
        }
        if (!(d <= tol)) printf("[rank %d]   %s: tensor %s rel diff %.3g\n", rank, what, GPT_PARAM_NAMES[i], d);
        off += ref->param_sizes[i];
    }
    CHECK(worst <= tol, "%s: every tensor within %.0e (worst %.3g, %s)", what, tol, worst, worst_name);
    free(got);
}

// The replicated tensors of a local buffer are bit-identical on every tp rank.
static void check_replicated_identical(const char* what, const GPT* m, const float* local) {
    size_t n = m->num_parameters;
    float* mine = mallocCheck(n * sizeof(float));
    float* root = mallocCheck(n * sizeof(float));
    memcpy(mine, local, n * sizeof(float));
    memcpy(root, local, n * sizeof(float));
    comm_broadcast(m->tp, root, n, COMM_F32, 0);
    size_t off = 0, bad = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (!gpt_param_tp_sharded(m, i) && memcmp(mine + off, root + off, m->param_sizes[i] * sizeof(float)) != 0) {
            printf("[rank %d]   %s: replicated %s differs from rank 0's\n", rank, what, GPT_PARAM_NAMES[i]);
            bad++;
        }
        off += m->param_sizes[i];
    }
    CHECK(bad == 0, "%s: replicated tensors bit-identical on every tp rank", what);
    free(mine);
    free(root);
}

// Batch b of the test: tokens, targets (some -1) and mask weights, the same on every rank.
static void make_batch(int V, int B, int T, uint64_t seed, int* inputs, int* targets, float* mask) {
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)rng_below(&r, (uint64_t)V);
        targets[i] = i % 7 == 3 ? -1 : (int)rng_below(&r, (uint64_t)V);
        mask[i] = i % 5 == 1 ? 0.0f : 0.5f + rng_float(&r);
    }
    inputs[0] = V - 1; // the last vocab id (last shard, next to the padding)
    targets[1] = V - 1;
}

static void test_forward_backward(GPT* ref, GPT* tp, int B, int T) {
    int V = ref->config.vocab_size, BT = B * T;
    int* inputs = mallocCheck((size_t)BT * sizeof(int));
    int* targets = mallocCheck((size_t)BT * sizeof(int));
    float* mask = mallocCheck((size_t)BT * sizeof(float));
    make_batch(V, B, T, 7, inputs, targets, mask);

    gpt_forward(ref, inputs, targets, mask, B, T);
    gpt_forward(tp, inputs, targets, mask, B, T);
    CHECK(fabs(ref->mean_loss - tp->mean_loss) <= 1e-5 * fabs(ref->mean_loss),
          "mean loss %.7f (tp) vs %.7f (whole)", tp->mean_loss, ref->mean_loss);
    float ml = tp->mean_loss, ml0 = ml;
    comm_broadcast(tp->tp, &ml0, 1, COMM_F32, 0);
    CHECK(ml == ml0, "mean loss identical on every tp rank");

    size_t* rows = mallocCheck((size_t)BT * sizeof(size_t));
    for (int i = 0; i < BT; i++) rows[i] = (size_t)i;
    float* lt = mallocCheck((size_t)BT * V * sizeof(float));
    float* lr = mallocCheck((size_t)BT * V * sizeof(float));
    gpt_logits_rows(tp, rows, BT, lt);
    gpt_logits_rows(ref, rows, BT, lr);
    double d = rel_diff(lt, lr, (size_t)BT * V);
    CHECK(d <= 1e-5, "logits (gathered over the vocab shards) within 1e-5: %.3g", d);

    float* pt = mallocCheck((size_t)BT * sizeof(float));
    float* pr = mallocCheck((size_t)BT * sizeof(float));
    gpt_token_logprobs(tp, pt);
    gpt_token_logprobs(ref, pr);
    d = rel_diff(pt, pr, (size_t)BT);
    CHECK(d <= 1e-5, "per-token log-probs within 1e-5: %.3g", d);

    gpt_zero_grad(ref);
    gpt_backward(ref);
    gpt_zero_grad(tp);
    gpt_backward(tp);
    check_tensors("gradients of the mean loss", tp, tp->grads_memory, ref, ref->grads_memory, 1e-5);
    check_replicated_identical("gradients", tp, tp->grads_memory);

    double ss_ref = ref->ops->sum_squares(ref->grads_memory, ref->num_parameters);
    double ss_tp = gpt_grad_sumsq(tp);
    CHECK(fabs(ss_tp - ss_ref) <= 1e-5 * ss_ref, "global grad sum of squares %.9g (tp) vs %.9g (whole)", ss_tp,
          ss_ref);
    // ranges (as ZeRO-1 would cut them), summed over the ranks, give the same
    size_t n = tp->num_parameters, cut = n / 3;
    double parts[3] = {gpt_grad_sumsq_range(tp, 0, cut), gpt_grad_sumsq_range(tp, cut, 2 * cut),
                       gpt_grad_sumsq_range(tp, 2 * cut, n)};
    comm_allreduce_f64(tp->tp, parts, 3);
    double sum = parts[0] + parts[1] + parts[2];
    CHECK(fabs(sum - ss_tp) <= 1e-9 * ss_tp, "gpt_grad_sumsq_range over 3 ranges, summed over tp: %.9g", sum);

    free(inputs);
    free(targets);
    free(mask);
    free(rows);
    free(lt);
    free(lr);
    free(pt);
    free(pr);
}

static void test_adamw(GPT* ref, GPT* tp, int B, int T) {
    int V = ref->config.vocab_size, BT = B * T;
    int* inputs = mallocCheck((size_t)BT * sizeof(int));
    int* targets = mallocCheck((size_t)BT * sizeof(int));
    float* mask = mallocCheck((size_t)BT * sizeof(float));
    // eps 1e-6: elements whose gradient is at rounding-noise level (|g| ~
    // 1e-9) would otherwise step by +-lr on either side at random
    AdamWConfig cfg = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-6f, .weight_decay = 0.1f,
                       .grad_clip = 0.05f};
    for (int step = 0; step < 3; step++) {
        make_batch(V, B, T, 100 + step, inputs, targets, mask);
        gpt_forward(ref, inputs, targets, mask, B, T);
        gpt_zero_grad(ref);
        gpt_backward(ref);
        float nr = gpt_update(ref, &cfg);
        gpt_forward(tp, inputs, targets, mask, B, T);
        gpt_zero_grad(tp);
        gpt_backward(tp);
        float nt = gpt_update(tp, &cfg);
        CHECK(fabsf(nr - nt) <= 1e-5f * nr && nr > cfg.grad_clip,
              "AdamW step %d: grad norm %.7f (tp) vs %.7f (whole), clipping active (clip %.2f)", step + 1, nt, nr,
              cfg.grad_clip);
    }
    // 5e-5: the biases start at 0, so after 3 steps their largest value is
    // ~3 lr and their relative error is that of the (Adam-normalised) update
    check_tensors("parameters after 3 clipped AdamW steps", tp, tp->params_memory, ref, ref->params_memory, 5e-5);
    check_tensors("AdamW first moments", tp, tp->m_memory, ref, ref->m_memory, 1e-4);
    check_replicated_identical("parameters after AdamW", tp, tp->params_memory);
    free(inputs);
    free(targets);
    free(mask);
}

// log-probs + LM head backward + a value head on the same trunk, one backward
static void test_policy_value(GPT* ref, GPT* tp, int B, int T) {
    int V = ref->config.vocab_size, C = ref->config.channels, BT = B * T;
    int* inputs = mallocCheck((size_t)BT * sizeof(int));
    int* targets = mallocCheck((size_t)BT * sizeof(int));
    float* mask = mallocCheck((size_t)BT * sizeof(float));
    make_batch(V, B, T, 55, inputs, targets, mask);
    float* dlogp = mallocCheck((size_t)BT * sizeof(float));
    float* dval = mallocCheck((size_t)BT * sizeof(float));
    Rng r;
    rng_seed(&r, 9);
    for (int i = 0; i < BT; i++) {
        dlogp[i] = targets[i] < 0 ? 0.0f : rng_float(&r) - 0.5f;
        dval[i] = rng_float(&r) - 0.5f;
    }
    float* w = mallocCheck((size_t)C * sizeof(float));
    for (int i = 0; i < C; i++) w[i] = 0.1f * rng_normal(&r);

    GPT* models[2] = {ref, tp};
    ValueHead heads[2];
    float* lp[2];
    float* vals[2];
    for (int k = 0; k < 2; k++) {
        GPT* m = models[k];
        value_head_init(&heads[k], C, m->ops);
        value_head_set(&heads[k], w, 0.25f);
        lp[k] = mallocCheck((size_t)BT * sizeof(float));
        vals[k] = mallocCheck((size_t)BT * sizeof(float));
        gpt_forward(m, inputs, targets, NULL, B, T);
        gpt_token_logprobs(m, lp[k]);
        value_head_forward(&heads[k], m, vals[k]);
        gpt_zero_grad(m);
        value_head_zero_grad(&heads[k]);
        float* dlnf = gpt_hidden_grad(m);
        // the value head first, then the LM head: the order must not matter
        value_head_backward(&heads[k], m, dval, dlnf);
        gpt_lm_head_backward(m, dlogp);
        gpt_backward_trunk(m);
    }
    double d = rel_diff(lp[1], lp[0], (size_t)BT);
    CHECK(d <= 1e-5, "policy path: token log-probs within 1e-5: %.3g", d);
    d = rel_diff(vals[1], vals[0], (size_t)BT);
    CHECK(d <= 1e-5, "value head on the sharded trunk: values within 1e-5: %.3g", d);
    float* hg[2];
    for (int k = 0; k < 2; k++) {
        hg[k] = mallocCheck((size_t)(C + 1) * sizeof(float));
        tp->ops->to_host(hg[k], heads[k].grads, (size_t)(C + 1) * sizeof(float));
    }
    d = rel_diff(hg[1], hg[0], (size_t)C + 1);
    CHECK(d <= 1e-5, "value head gradients within 1e-5: %.3g", d);
    check_tensors("trunk gradients of log-prob + value objectives", tp, tp->grads_memory, ref, ref->grads_memory,
                  1e-5);
    check_replicated_identical("policy/value gradients", tp, tp->grads_memory);
    for (int k = 0; k < 2; k++) {
        value_head_free(&heads[k]);
        free(hg[k]);
        free(lp[k]);
        free(vals[k]);
    }
    free(inputs);
    free(targets);
    free(mask);
    free(dlogp);
    free(dval);
    free(w);
}

static void test_reward_model(GPTConfig cfg, Comm* tpc, uint64_t seed) {
    RewardModel rms[2];
    float rw[2][4];
    int B = 4, T = 10, V = cfg.vocab_size;
    int tokens[4 * 10], lens[4] = {10, 7, 3, 9};
    Rng r;
    rng_seed(&r, 77);
    for (int i = 0; i < B * T; i++) tokens[i] = (int)rng_below(&r, (uint64_t)V);
    float drew[4] = {0.3f, -0.7f, 0.2f, 0.2f};
    AdamWConfig a = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-6f, .weight_decay = 0.1f,
                     .grad_clip = 0.01f};
    float norms[2];
    for (int k = 0; k < 2; k++) {
        RewardModel* rm = &rms[k];
        memset(rm, 0, sizeof *rm);
        gpt_build_tp(&rm->gpt, cfg, ops_cpu(), k ? tpc : NULL);
        gpt_init_random(&rm->gpt, seed);
        rm_init_head(rm, 5);
        rm_forward(rm, tokens, lens, B, T, rw[k]);
        rm_zero_grad(rm);
        rm_backward(rm, drew);
        if (k == 1)
            check_tensors("reward model: trunk gradients", &rms[1].gpt, rms[1].gpt.grads_memory, &rms[0].gpt,
                          rms[0].gpt.grads_memory, 1e-5);
        norms[k] = rm_update(rm, &a);
        rm_forward(rm, tokens, lens, B, T, rw[k]);
    }
    CHECK(fabsf(norms[0] - norms[1]) <= 1e-5f * norms[0], "reward model: grad norm (trunk + head) %.7f vs %.7f",
          norms[1], norms[0]);
    double d = rel_diff(rw[1], rw[0], 4);
    CHECK(d <= 1e-5, "reward model: rewards after one clipped update within 1e-5: %.3g", d);
    // Adam's first step is ~ lr * g / (|g| + eps): for the few elements with
    // |g| near eps the fp32 noise of g shows up amplified, hence 1e-3 here
    // (the zero-initialised biases make max |param| only ~lr)
    check_tensors("reward model trunk after one update", &rms[1].gpt, rms[1].gpt.params_memory, &rms[0].gpt,
                  rms[0].gpt.params_memory, 1e-3);
    rm_free(&rms[0]);
    rm_free(&rms[1]);
}

static void test_generate(GPT* ref, GPT* tp) {
    int V = ref->config.vocab_size;
    int p0[] = {1 % V, 2 % V, 3 % V}, p1[] = {V - 1}, p2[] = {5 % V, 0, 9 % V, 4 % V, 2 % V, 8 % V, 1 % V};
    const int* prompts[3] = {p0, p1, p2};
    int lens[3] = {3, 1, 7};
    uint64_t seeds[3] = {11, 12, 13};
    SampleConfig cfgs[3] = {sample_config_default(), sample_config_default(), sample_config_default()};
    const char* names[3] = {"greedy", "sampled (temperature 1)", "sampled (temperature 0.8, top-k 20, top-p 0.9)"};
    cfgs[0].temperature = 0.0f;
    cfgs[2].temperature = 0.8f;
    cfgs[2].top_k = 20;
    cfgs[2].top_p = 0.9f;
    for (int c = 0; c < 3; c++) {
        cfgs[c].max_new_tokens = 8;
        cfgs[c].eot = -1;
        Generation gr, gt;
        gpt_generate(ref, prompts, lens, 3, seeds, &cfgs[c], &gr);
        gpt_generate(tp, prompts, lens, 3, seeds, &cfgs[c], &gt);
        int same = 1;
        double lpd = 0.0;
        for (int i = 0; i < 3; i++) {
            same &= gr.len[i] == gt.len[i] && !memcmp(gr.tokens[i], gt.tokens[i], (size_t)gr.len[i] * sizeof(int));
            for (int j = 0; same && j < gr.len[i] - gr.prompt_len[i]; j++) {
                double e = fabs((double)gr.logprobs[i][j] - gt.logprobs[i][j]);
                lpd = e > lpd ? e : lpd;
            }
        }
        CHECK(same, "generation %s: the same tokens as the whole model", names[c]);
        CHECK(lpd <= 1e-4, "generation %s: log-probs within 1e-4 (max |diff| %.3g)", names[c], lpd);
        // identical on every tp rank: compare with rank 0's tokens
        int buf[3 * 64] = {0}, mine[3 * 64] = {0};
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < gt.len[i] && j < 64; j++) mine[i * 64 + j] = buf[i * 64 + j] = gt.tokens[i][j];
        comm_broadcast(tp->tp, buf, 3 * 64, COMM_I32, 0);
        CHECK(!memcmp(buf, mine, sizeof buf), "generation %s: identical on every tp rank", names[c]);
        generation_free(&gr);
        generation_free(&gt);
    }
}

static void test_checkpoints(GPT* ref, GPT* tp, const char* dir) {
    char path[1024], path2[1024];
    snprintf(path, sizeof path, "%s/ckpt-tp%d", dir, tp->tp_size);
    snprintf(path2, sizeof path2, "%s/ckpt-whole", dir);
    // sharded -> file: every rank calls, world rank 0 writes
    checkpoint_save(tp, path, NULL, 1);
    float* want = full_copy(tp, tp->params_memory);
    float* want_m = full_copy(tp, tp->m_memory);
    float* want_v = full_copy(tp, tp->v_memory);

    GPT whole;
    model_load(&whole, path, ops_cpu(), NULL);
    checkpoint_load_optimizer(&whole, path);
    size_t n = whole.num_parameters;
    CHECK(n == tp->num_parameters_full && !memcmp(whole.params_memory, want, n * sizeof(float)),
          "checkpoint saved at tp=%d loads at tp=1 bit-exact", tp->tp_size);
    CHECK(!memcmp(whole.m_memory, want_m, n * sizeof(float)) && !memcmp(whole.v_memory, want_v, n * sizeof(float)) &&
              whole.adam_step == tp->adam_step,
          "its AdamW moments (gathered on save) load at tp=1 bit-exact, step %d", whole.adam_step);

    GPT back;
    model_load_tp(&back, path, ops_cpu(), tp->tp, NULL);
    checkpoint_load_optimizer(&back, path);
    CHECK(!memcmp(back.params_memory, tp->params_memory, tp->num_parameters * sizeof(float)) &&
              !memcmp(back.m_memory, tp->m_memory, tp->num_parameters * sizeof(float)) &&
              !memcmp(back.v_memory, tp->v_memory, tp->num_parameters * sizeof(float)),
          "it loads back at tp=%d bit-exact (parameters and sliced moments)", tp->tp_size);

    // whole -> file (rank 0 only: a tp=1 model writes wherever it is called) -> sharded
    if (rank == 0) checkpoint_save(ref, path2, NULL, 0);
    comm_barrier(tp->tp);
    GPT sharded;
    model_load_tp(&sharded, path2, ops_cpu(), tp->tp, NULL);
    float* mine = mallocCheck(tp->num_parameters * sizeof(float));
    gpt_shard_from_full(&sharded, ref->params_memory, mine);
    CHECK(!memcmp(sharded.params_memory, mine, tp->num_parameters * sizeof(float)),
          "checkpoint saved at tp=1 loads at tp=%d bit-exact (resharding)", tp->tp_size);
    free(mine);
    gpt_free(&whole);
    gpt_free(&back);
    gpt_free(&sharded);
    free(want);
    free(want_m);
    free(want_v);
}

int main(int argc, char** argv) {
    comm_mpi_init(&argc, &argv);
    const char* dir = NULL;
    GPTConfig cfg = {.max_seq_len = 24, .vocab_size = 67, .num_layers = 2, .num_heads = 4, .channels = 32};
    int bad_heads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc) cfg.vocab_size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--heads") && i + 1 < argc) cfg.num_heads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--embd") && i + 1 < argc) cfg.channels = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) cfg.num_layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--expect-bad-heads")) bad_heads = 1;
        else fatalf("tp_test: unknown argument '%s'", argv[i]);
    }
    Parallel par;
    parallel_init(&par, comm_mpi_world_size(), 120.0); // one tp group of every rank
    rank = par.rank;
    if (bad_heads) {
        GPT m;
        gpt_build_tp(&m, cfg, ops_cpu(), par.tp); // must be fatal
        printf("tp_test: built a model with %d heads over %d ranks\n", cfg.num_heads, par.tp_size);
        return 0;
    }
    if (!dir) fatalf("tp_test: --dir SCRATCH is required");
    if (rank == 0)
        printf("tp_test: tp=%d, model L=%d NH=%d C=%d V=%d (vocab shard %d rows)\n", par.tp_size, cfg.num_layers,
               cfg.num_heads, cfg.channels, cfg.vocab_size, (cfg.vocab_size + par.tp_size - 1) / par.tp_size);

    const uint64_t seed = 1234;
    GPT ref, tp;
    gpt_build(&ref, cfg, ops_cpu());
    gpt_init_random(&ref, seed);
    gpt_build_tp(&tp, cfg, ops_cpu(), par.tp);
    gpt_init_random(&tp, seed);
    float* g = full_copy(&tp, tp.params_memory);
    CHECK(tp.num_parameters_full == ref.num_parameters &&
              !memcmp(g, ref.params_memory, ref.num_parameters * sizeof(float)),
          "same seed: the gathered shards are the whole model bit for bit (%zu of %zu floats here)",
          tp.num_parameters, tp.num_parameters_full);
    free(g);

    int B = 3, T = 11;
    test_forward_backward(&ref, &tp, B, T);
    test_policy_value(&ref, &tp, B, T);
    test_adamw(&ref, &tp, B, T);
    test_generate(&ref, &tp);
    test_checkpoints(&ref, &tp, dir);
    test_reward_model(cfg, par.tp, seed);

    gpt_free(&ref);
    gpt_free(&tp);
    int total = failures;
    comm_allreduce(par.world, &total, 1, COMM_I32, COMM_SUM);
    if (rank == 0) printf("tp_test: %s (%d failed checks over %d ranks)\n", total ? "FAILED" : "ok", total, par.size);
    parallel_free(&par);
    comm_mpi_finalize();
    return total ? 1 : 0;
}
