// nlpo_ilql_dump.c - runs NLPO's mask math (worker/nlpo_mask.h) and ILQL's
// loss, gradients, target sync and decoding shift (worker/ilql.h) on random
// inputs and dumps inputs and outputs as .npy files plus meta.json, for
// nlpo_ilql_torch.py to recompute in float64 PyTorch (autograd for every
// gradient) and compare.
//
// Cases:
//   topp_K     nlpo_topp_mask on one row (several V, top_p, scales; one with ties)
//   masked_K   nlpo_masked_logprob and its gradient d logp / d logits
//   sampler_0  generation with the NLPO hook: tokens inside their masks, the masks
//              = top-p of the masking policy, sampler log-probs = masked log-probs
//   engine_K   the engine path of `rlhfd nlpo`: a GPT forward, the masks applied
//              with nlpo_mask_policy_logits, gpt_token_logprobs, and the logits'
//              gradient left by gpt_lm_head_backward(dlogp)
//   ilql_K     ilql_loss: every loss term, the gradients of both Q heads, the V
//              head, d lnf and d lm_logp
//   sync_K     ilql_heads_sync_targets (Polyak)
//   decode_K   the decoding hook: logits + beta * (min_k Qt_k - V)
//
// usage: nlpo_ilql_dump --out DIR [--seed N] [--perturb]
// --perturb corrupts one output of masked_2 and one of ilql_2 so the
// comparison can be seen to fail.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "npy.h"
#include "common/check.h"
#include "common/rng.h"
#include "worker/generate.h"
#include "worker/gpt.h"
#include "worker/ilql.h"
#include "worker/nlpo_mask.h"

static Rng rng; // the library's generator: the cases only need to be reproducible

static float uniform(void) { return rng_float(&rng); }
static int below(int n) { return (int)rng_below(&rng, (uint64_t)n); }
static float normal(void) { return rng_normal(&rng); }
static float* normals(size_t n, float std) {
    float* x = mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = std * normal();
    return x;
}

static const char* out_dir;
static json_t* cases;
static int perturb;

static json_t* case_begin(const char* fn, int index) {
    json_t* c = json_object();
    char name[128];
    snprintf(name, sizeof name, "%s_%d", fn, index);
    json_object_set_new(c, "name", json_string(name));
    json_object_set_new(c, "fn", json_string(fn));
    json_array_append_new(cases, c);
    return c;
}
static void dump(json_t* c, const char* field, const char* descr, const void* x, size_t elem, size_t n) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", json_string_value(json_object_get(c, "name")), field);
    int shape[1] = {(int)n};
    npy_save(out_dir, name, descr, x, elem, shape, 1);
}
static void dump_f32(json_t* c, const char* f, const float* x, size_t n) { dump(c, f, "<f4", x, sizeof(float), n); }
static void dump_i32(json_t* c, const char* f, const int* x, size_t n) { dump(c, f, "<i4", x, sizeof(int), n); }
static void dump_u8(json_t* c, const char* f, const unsigned char* x, size_t n) {
    int* y = mallocCheck(n * sizeof(int));
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    dump_i32(c, f, y, n);
    free(y);
}
static void set_num(json_t* c, const char* k, double v) { json_object_set_new(c, k, json_real(v)); }
static void set_int(json_t* c, const char* k, long long v) { json_object_set_new(c, k, json_integer(v)); }

// ---------------------------------------------------------------- NLPO

static void cases_topp_masked(void) {
    const int Vs[] = {5, 97, 1000, 50257, 97, 1000};
    const float ps[] = {0.5f, 0.9f, 0.3f, 0.9f, 0.999f, 0.95f};
    const float scales[] = {1.0f, 2.0f, 0.5f, 3.0f, 1.0f, 4.0f};
    for (int k = 0; k < 6; k++) {
        int V = Vs[k];
        float* logits = normals((size_t)V, scales[k]);
        if (k == 4) // ties: the order must fall back to the lower id
            for (int v = 0; v < V; v += 3) logits[v] = logits[0];
        unsigned char* keep = mallocCheck((size_t)V);
        int kept = nlpo_topp_mask(logits, V, ps[k], keep, NULL);
        json_t* c = case_begin("topp", k);
        set_num(c, "top_p", ps[k]);
        set_int(c, "kept", kept);
        dump_f32(c, "logits", logits, (size_t)V);
        dump_u8(c, "keep", keep, (size_t)V);
        // the masked log-prob of a kept token (and of the argmax), with its gradient
        for (int t = 0; t < 2; t++) {
            int target = below(V); // t = 0: a random kept token; t = 1: the most likely one
            for (int tries = 0; t == 0 && !keep[target] && tries < 1000000; tries++) target = below(V);
            if (t == 1 || !keep[target]) {
                target = 0;
                for (int v = 1; v < V; v++) if (logits[v] > logits[target]) target = v;
            }
            float* d = mallocCheck((size_t)V * sizeof(float));
            double lp = nlpo_masked_logprob(logits, keep, V, target, d);
            if (perturb && k == 1 && t == 0) d[target] *= 1.01f;
            json_t* m = case_begin("masked", 2 * k + t);
            set_int(m, "target", target);
            set_num(m, "logp", lp);
            dump_f32(m, "logits", logits, (size_t)V);
            dump_u8(m, "keep", keep, (size_t)V);
            dump_f32(m, "dlogits", d, (size_t)V);
            free(d);
        }
        free(logits);
        free(keep);
    }
}

// A GPT forward on random tokens; masks from random "masking policy" logits
// for half the positions; masked log-probs and the logits' gradient.
static void cases_engine(void) {
    const Ops* ops = ops_cpu();
    for (int k = 0; k < 2; k++) {
        GPTConfig cfg = {.max_seq_len = 8, .vocab_size = k ? 101 : 67, .num_layers = 1, .num_heads = 2, .channels = 16};
        GPT m;
        gpt_build(&m, cfg, ops);
        gpt_init_random(&m, 42 + (uint64_t)k);
        const int B = 2, T = 7, V = cfg.vocab_size;
        const size_t BT = (size_t)B * T;
        int* in = mallocCheck(BT * sizeof(int));
        int* tg = mallocCheck(BT * sizeof(int));
        for (size_t i = 0; i < BT; i++) {
            in[i] = below(V);
            tg[i] = i % T < 2 ? -1 : below(V); // the first two positions: a "prompt"
        }
        gpt_forward(&m, in, tg, NULL, B, T);
        float* raw = mallocCheck(BT * V * sizeof(float));
        ops->to_host(raw, m.acts.logits, BT * V * sizeof(float));
        unsigned char* keep = mallocCheck(BT * V);
        const unsigned char** rows = callocCheck(BT, sizeof(*rows));
        int* masked = callocCheck(BT, sizeof(int));
        for (size_t r = 0; r < BT; r++) {
            float* ml = normals((size_t)V, 1.5f);
            nlpo_topp_mask(ml, V, 0.7f, keep + r * V, NULL);
            free(ml);
            if (tg[r] >= 0 && below(4) > 0) { // most positions masked, some left alone
                rows[r] = keep + r * V;
                masked[r] = 1;
            }
        }
        nlpo_mask_policy_logits(&m, rows);
        float* lp = mallocCheck(BT * sizeof(float));
        gpt_token_logprobs(&m, lp);
        float* dlp = normals(BT, 1.0f);
        gpt_hidden_grad(&m);
        gpt_lm_head_backward(&m, dlp);
        float* dlogits = mallocCheck(BT * V * sizeof(float));
        ops->to_host(dlogits, m.acts.logits, BT * V * sizeof(float));
        json_t* c = case_begin("engine", k);
        set_int(c, "rows", (long long)BT);
        set_int(c, "V", V);
        dump_f32(c, "logits", raw, BT * V);
        dump_u8(c, "keep", keep, BT * V);
        dump_i32(c, "masked", masked, BT);
        dump_i32(c, "targets", tg, BT);
        dump_f32(c, "logp", lp, BT);
        dump_f32(c, "dlogp", dlp, BT);
        dump_f32(c, "dlogits", dlogits, BT * V);
        free(in); free(tg); free(raw); free(keep); free(rows); free(masked); free(lp); free(dlp); free(dlogits);
        gpt_free(&m);
    }
}

// Generation with the NLPO sampling hook: every sampled token lies in the mask
// stored for it, that mask is the top-p set of the masking policy's own
// (teacher-forced) logits at that prefix, and the sampler's log-prob is the
// masked log-prob of the policy's logits.
static void cases_sampler(void) {
    const Ops* ops = ops_cpu();
    GPTConfig cfg = {.max_seq_len = 16, .vocab_size = 67, .num_layers = 1, .num_heads = 2, .channels = 16};
    GPT pol, msk;
    gpt_build(&pol, cfg, ops);
    gpt_build(&msk, cfg, ops);
    gpt_init_random(&pol, 5);
    gpt_init_random(&msk, 6);
    const int n = 3, max_new = 6, V = cfg.vocab_size, lens[3] = {2, 3, 1};
    int p0[2], p1[3], p2[1];
    int* prompts[3] = {p0, p1, p2};
    for (int i = 0; i < n; i++)
        for (int t = 0; t < lens[i]; t++) prompts[i][t] = below(V);
    NlpoSampler s;
    nlpo_sampler_begin(&s, &msk, n, max_new, 0.6f);
    SampleConfig sc = sample_config_default();
    sc.max_new_tokens = max_new;
    sc.eot = -1;
    sc.hook = &s.hook;
    Generation g;
    gpt_generate(&pol, (const int* const*)prompts, lens, n, NULL, &sc, &g);
    nlpo_sampler_end(&s);
    gpt_reserve(&pol, 1, cfg.max_seq_len);
    gpt_reserve(&msk, 1, cfg.max_seq_len);
    int in_mask = 1, mismatch = 0, tokens = 0;
    double err = 0.0;
    unsigned char* keep = mallocCheck((size_t)V);
    float* row = mallocCheck((size_t)V * sizeof(float));
    for (int i = 0; i < n; i++) {
        int T = g.len[i] - 1;
        for (int j = 0; j < g.len[i] - g.prompt_len[i]; j++, tokens++) {
            int pos = g.prompt_len[i] - 1 + j, tok = g.tokens[i][pos + 1];
            const unsigned char* m = nlpo_sampler_mask(&s, i, j);
            in_mask &= m[tok];
            gpt_forward(&msk, g.tokens[i], NULL, NULL, 1, T);
            ops->to_host(row, msk.acts.logits + (size_t)pos * V, (size_t)V * sizeof(float));
            nlpo_topp_mask(row, V, 0.6f, keep, NULL);
            for (int v = 0; v < V; v++) mismatch += keep[v] != m[v];
            gpt_forward(&pol, g.tokens[i], NULL, NULL, 1, T);
            ops->to_host(row, pol.acts.logits + (size_t)pos * V, (size_t)V * sizeof(float));
            double e = fabs(nlpo_masked_logprob(row, m, V, tok, NULL) - g.logprobs[i][j]);
            err = e > err ? e : err;
        }
    }
    json_t* c = case_begin("sampler", 0);
    set_int(c, "tokens", tokens);
    set_int(c, "in_mask", in_mask);
    set_int(c, "mask_mismatch", mismatch);
    set_num(c, "logp_err", err);
    set_num(c, "mean_kept", s.masks ? s.kept_sum / (double)s.masks : 0.0);
    free(keep);
    free(row);
    generation_free(&g);
    nlpo_sampler_free(&s);
    gpt_free(&pol);
    gpt_free(&msk);
}

// ---------------------------------------------------------------- ILQL

// Random parameters in every head (targets different from the Q heads).
static void random_heads(IlqlHeads* h, float std) {
    float* q = normals(2 * h->qn, std);
    h->ops->to_device(h->q, q, 2 * h->qn * sizeof(float));
    free(q);
    q = normals(2 * h->qn, std);
    h->ops->to_device(h->q_target, q, 2 * h->qn * sizeof(float));
    free(q);
    float* v = normals((size_t)h->C + 1, std);
    h->ops->to_device(h->vh, v, ((size_t)h->C + 1) * sizeof(float));
    free(v);
}

static void dump_heads(json_t* c, const IlqlHeads* h, const char* prefix) {
    float* host = NULL;
    StWriteTensor t[ILQL_NUM_TENSORS];
    ilql_heads_to_tensors(h, &host, t);
    for (int i = 0; i < ILQL_NUM_TENSORS; i++) {
        size_t n = t[i].ndim == 2 ? (size_t)(t[i].shape[0] * t[i].shape[1]) : (size_t)t[i].shape[0];
        char f[96];
        snprintf(f, sizeof f, "%s%s", prefix, t[i].name);
        dump_f32(c, f, t[i].data, n);
    }
    free(host);
}

static void cases_ilql(void) {
    const Ops* ops = ops_cpu();
    const struct { int B, T, C, V; float gamma, tau, cql, awac, std; } P[] = {
        {3, 6, 8, 37, 0.99f, 0.7f, 0.1f, 1.0f, 0.3f},
        {2, 9, 16, 101, 1.0f, 0.9f, 0.5f, 0.3f, 0.5f},
        {4, 5, 12, 53, 0.9f, 0.5f, 0.0f, 2.0f, 0.4f},
    };
    for (int k = 0; k < 3; k++) {
        const int B = P[k].B, T = P[k].T, C = P[k].C, V = P[k].V, N = B * T;
        IlqlHeads h;
        ilql_heads_init(&h, C, V, ops, 7 + (uint64_t)k, 0.02f);
        random_heads(&h, P[k].std);
        float* lnf = normals((size_t)N * C, 1.0f);
        float* d_lnf = ops->alloc((size_t)N * C * sizeof(float));
        float* lnf_dev = ops->alloc((size_t)N * C * sizeof(float));
        ops->to_device(lnf_dev, lnf, (size_t)N * C * sizeof(float));
        int* actions = mallocCheck((size_t)N * sizeof(int));
        float* rewards = callocCheck((size_t)N, sizeof(float));
        unsigned char* done = callocCheck((size_t)N, 1);
        float* lm_logp = callocCheck((size_t)N, sizeof(float));
        for (int b = 0; b < B; b++) { // a prompt of p positions, then actions up to position e, then pad
            int p = 1 + below(2), e = p + 1 + below(T - p - 1);
            for (int t = 0; t < T; t++) {
                int n = b * T + t, act = t >= p && t <= e;
                actions[n] = act ? below(V) : -1;
                done[n] = (unsigned char)(t == e);
                rewards[n] = t == e ? 2.0f * normal() : 0.0f;
                lm_logp[n] = act ? -3.0f * uniform() : 0.0f;
            }
        }
        IlqlLossConfig lc = {P[k].gamma, P[k].tau, P[k].cql, P[k].awac};
        json_t* c = case_begin("ilql", k);
        set_int(c, "N", N); set_int(c, "C", C); set_int(c, "V", V);
        set_num(c, "gamma", lc.gamma); set_num(c, "tau", lc.tau);
        set_num(c, "cql_weight", lc.cql_weight); set_num(c, "awac_weight", lc.awac_weight);
        dump_heads(c, &h, "in.");
        ilql_heads_zero_grad(&h);
        float* dlm = mallocCheck((size_t)N * sizeof(float));
        IlqlStats st;
        double loss = ilql_loss(&h, lnf_dev, N, actions, rewards, done, lm_logp, &lc, d_lnf, dlm, &st);
        set_num(c, "loss", loss);
        set_num(c, "loss_q", st.loss_q); set_num(c, "loss_v", st.loss_v);
        set_num(c, "loss_cql", st.loss_cql); set_num(c, "loss_awac", st.loss_awac);
        set_num(c, "q_mean", st.q_mean); set_num(c, "target_q_mean", st.target_q_mean); set_num(c, "v_mean", st.v_mean);
        set_int(c, "actions", st.actions);
        dump_f32(c, "lnf", lnf, (size_t)N * C);
        dump_i32(c, "actions", actions, (size_t)N);
        dump_f32(c, "rewards", rewards, (size_t)N);
        dump_u8(c, "done", done, (size_t)N);
        dump_f32(c, "lm_logp", lm_logp, (size_t)N);
        dump_f32(c, "dlm_logp", dlm, (size_t)N);
        float* g = mallocCheck(2 * h.qn * sizeof(float));
        ops->to_host(g, h.q_grad, 2 * h.qn * sizeof(float));
        if (perturb && k == 2) g[5] += 0.01f;
        dump_f32(c, "q_grad", g, 2 * h.qn);
        ops->to_host(g, h.vh_grad, ((size_t)C + 1) * sizeof(float));
        dump_f32(c, "v_grad", g, (size_t)C + 1);
        float* dl = mallocCheck((size_t)N * C * sizeof(float));
        ops->to_host(dl, d_lnf, (size_t)N * C * sizeof(float));
        dump_f32(c, "dlnf", dl, (size_t)N * C);

        // Polyak sync of the same heads
        json_t* s = case_begin("sync", k);
        float alpha = 0.05f + 0.3f * (float)k;
        set_num(s, "alpha", alpha);
        dump_heads(s, &h, "in.");
        ilql_heads_sync_targets(&h, alpha);
        dump_heads(s, &h, "out.");

        // decoding shift on W rows of hidden states
        json_t* d = case_begin("decode", k);
        const int W = 3;
        float beta = 0.5f + (float)k;
        float* hid = normals((size_t)W * C, 1.0f);
        float* hid_dev = ops->alloc((size_t)W * C * sizeof(float));
        ops->to_device(hid_dev, hid, (size_t)W * C * sizeof(float));
        float* logits = normals((size_t)W * V, 2.0f);
        IlqlDecoder dec;
        ilql_decoder_init(&dec, &h, beta);
        set_num(d, "beta", beta);
        set_int(d, "W", W);
        dump_heads(d, &h, "in.");
        dump_f32(d, "hidden", hid, (size_t)W * C);
        dump_f32(d, "logits_in", logits, (size_t)W * V);
        dec.hook.fn(dec.hook.ctx, NULL, NULL, NULL, NULL, 0, hid_dev, logits, W, V);
        dump_f32(d, "logits_out", logits, (size_t)W * V);
        ilql_decoder_free(&dec);
        ops->free(hid_dev);
        free(hid); free(logits);
        free(g); free(dl); free(dlm); free(lnf); free(actions); free(rewards); free(done); free(lm_logp);
        ops->free(d_lnf);
        ops->free(lnf_dev);
        ilql_heads_free(&h);
    }
}

int main(int argc, char** argv) {
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out_dir = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--perturb") == 0) perturb = 1;
        else fatalf("nlpo_ilql_dump: unknown argument '%s' (usage: --out DIR [--seed N] [--perturb])", argv[i]);
    }
    if (!out_dir) fatalf("nlpo_ilql_dump: --out DIR is required");
    rng_seed(&rng, seed);
    ops_cpu_set_threads(1);
    cases = json_array();
    cases_topp_masked();
    cases_engine();
    cases_sampler();
    cases_ilql();
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", out_dir);
    if (json_dump_file(cases, path, JSON_INDENT(1)) != 0) fatalf("cannot write %s", path);
    json_decref(cases);
    return 0;
}
