// cmd_quark.c - `rlhfd quark`: Quark (Lu et al. 2022), "quantized reward
// konditioning": the policy learns to produce text of a given reward quantile
// when the prompt starts with that quantile's control token, and is then
// asked for the best quantile.
//
// Control tokens: the K = quark.bins token ids just below <|endoftext|>,
//   ctrl(k) = eot - K + k,  k = 0 (lowest rewards) .. K-1 (highest),
// i.e. 50251..50255 for K = 5: the last BPE merges of GPT-2, the rarest
// tokens of its vocabulary. They keep their ordinary embeddings, which are
// trained like every other parameter. (The reference never sees them: its
// log-probs are always of the plain prompt.)
//
// One iteration:
//   1. exploration: rl.batch prompts, each prefixed with ctrl(K-1), sampled
//      from the current policy (one batched KV-cache generation);
//   2. score with rl.reward (rl.gold logged only); the reference's per-token
//      log-probs of each response given the plain prompt are computed once
//      and stored with the sample;
//   3. the samples join the data pool (it only grows), and the WHOLE pool is
//      re-binned into K equal-size reward quantiles (rl_quantile_bins);
//   4. quark.steps gradient steps, each on train.batch pool samples drawn
//      uniformly (seeded), every row = [ctrl(bin)] ++ prompt ++ response,
//      minimising over the response tokens (mean over the batch's tokens)
//        -logp_t + quark.kl_coef * k3(logp_t, logp_ref_t) - quark.entropy_coef * H_t
//      The KL and the entropy are estimated on the pool's sampled tokens, not
//      over the whole vocabulary: the LM-head backward of gpt.h takes
//      dJ/dlogp(target) only, so the exact full-distribution KL of the paper
//      would need a d(logits) entry point in the engine. k3 = exp(r) - 1 - r,
//      r = logp_ref - logp, has d/dlogp = 1 - exp(logp_ref - logp): it pulls
//      each token's log-prob towards the reference's. The sampled entropy
//      estimate H_t ~ -logp_t has d(-H)/dlogp = +1, i.e. it lowers the weight
//      of the LM term (that is all an entropy bonus on fixed samples can do).
// Evaluations (rl.eval_every and the final one) sample with ctrl(K-1)
// prepended; kl = sum_t (logp_policy(. | ctrl, prompt) - logp_ref(. | prompt)).
// The summary also reports the same evaluation conditioned on ctrl(0)
// (worst_reward, worst_gold): the gap shows the conditioning is used.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "rl_common.h"
#include "run_state.h"
#include "train_util.h"
#include "../common/check.h"
#include "../common/config.h"
#include "../common/rng.h"
#include "../worker/generate.h"
#include "../worker/gpt.h"
#include "../worker/rl_math.h"
#include "../worker/rollout.h"

static const char* const SYNOPSIS =
    "--config FILE [--set KEY=VALUE]... [--model SFT] [--overwrite]\n"
    "\n"
    "Quark (Lu et al. 2022): samples conditioned on the best reward quantile's\n"
    "control token go into a growing pool; the pool is re-binned into quark.bins\n"
    "reward quantiles every iteration and the policy is trained with the LM loss on\n"
    "[ctrl(bin)] ++ prompt ++ response, plus quark.kl_coef * KL to the frozen\n"
    "reference and a quark.entropy_coef entropy bonus (both estimated on the pool's\n"
    "tokens). Control tokens: the quark.bins ids just below <|endoftext|> (50251..\n"
    "50255 for 5 bins; the last is the best). Evaluation samples with the best\n"
    "token. Outputs in run.dir (default runs/quark) as for `rlhfd ppo`;\n"
    "quark.log_rows writes the training rows to RUN_DIR/quark_rows.jsonl.\n"
    "Keys: --help-config.";

typedef struct {
    int* tokens;     // prompt ++ response (eot included if sampled), no control token
    int len, prompt_len;
    float reward;
    float* ref_logp; // (len - prompt_len) log p_ref(response token | plain prefix)
    int bin;
    // under data parallelism every rank keeps every sample's scalars (len,
    // prompt_len, reward, bin: the binning and the picks are global) but only
    // the tokens of the samples it generated (owned; tokens/ref_logp NULL otherwise)
    int owned;
} PoolSample;

typedef struct {
    PoolSample* s;
    size_t n, cap;
} Pool;

static void pool_free(Pool* p) {
    for (size_t i = 0; i < p->n; i++) {
        free(p->s[i].tokens);
        free(p->s[i].ref_logp);
    }
    free(p->s);
    memset(p, 0, sizeof *p);
}

// Re-bins the whole pool into K reward quantiles.
static void pool_rebin(Pool* p, int K) {
    float* r = mallocCheck(p->n * sizeof(float));
    int* bins = mallocCheck(p->n * sizeof(int));
    for (size_t i = 0; i < p->n; i++) r[i] = p->s[i].reward;
    rl_quantile_bins(r, p->n, K, bins);
    for (size_t i = 0; i < p->n; i++) p->s[i].bin = bins[i];
    free(r);
    free(bins);
}

// Responses conditioned on a control token: tokens[i] = [ctrl] ++ prompt ++
// response; texts are the decoded responses (eot excluded).
typedef struct {
    Generation g;
    char** responses;
    double seconds;
} CtrlSamples;

static void ctrl_samples_free(CtrlSamples* cs) {
    for (int i = 0; i < cs->g.n; i++) free(cs->responses[i]);
    free(cs->responses);
    generation_free(&cs->g);
}

static void ctrl_generate(RLRun* run, int ctrl, const char* const* prompts, int n, const uint64_t* seeds,
                          CtrlSamples* out) {
    const double t0 = now_seconds();
    const int ctx = run->policy.config.max_seq_len, eot = tokenizer_eot(run->tok);
    int** ptoks = mallocCheck((size_t)n * sizeof(int*));
    int* plens = mallocCheck((size_t)n * sizeof(int));
    int* ids = NULL;
    size_t cap = 0;
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        tokenizer_encode(run->tok, prompts[i], strlen(prompts[i]), &ids, &len, &cap);
        // keep room for the control token and one response token: drop the
        // prompt's first tokens if it is that long
        size_t keep = len + 2 > (size_t)ctx ? (size_t)ctx - 2 : len;
        ptoks[i] = mallocCheck((keep + 1) * sizeof(int));
        ptoks[i][0] = ctrl;
        memcpy(ptoks[i] + 1, ids + (len - keep), keep * sizeof(int));
        plens[i] = (int)keep + 1;
    }
    free(ids);
    SampleConfig sc = sample_config_default();
    sc.max_new_tokens = run->rollout.max_new_tokens;
    sc.temperature = run->rollout.temperature;
    sc.top_k = run->rollout.top_k;
    sc.top_p = run->rollout.top_p;
    sc.eot = eot;
    gpt_generate(&run->policy, (const int* const*)ptoks, plens, n, seeds, &sc, &out->g);
    out->responses = mallocCheck((size_t)n * sizeof(char*));
    for (int i = 0; i < n; i++) {
        int P = out->g.prompt_len[i], R = out->g.len[i] - P;
        int text_tokens = R - (out->g.hit_eot[i] ? 1 : 0);
        size_t text_len = 0;
        out->responses[i] = tokenizer_decode(run->tok, out->g.tokens[i] + P, (size_t)text_tokens, &text_len);
        free(ptoks[i]);
    }
    free(ptoks);
    free(plens);
    out->seconds = now_seconds() - t0;
}

// (n) arrays of response lengths.
static float** alloc_resp(const Generation* g) {
    float** a = mallocCheck((size_t)g->n * sizeof(float*));
    for (int i = 0; i < g->n; i++) {
        int R = g->len[i] - g->prompt_len[i];
        a[i] = callocCheck((size_t)(R > 0 ? R : 1), sizeof(float));
    }
    return a;
}

static void free_resp(float** a, int n) {
    for (int i = 0; i < n; i++) free(a[i]);
    free(a);
}

// Teacher-forced log-probs of the responses under the policy (with the
// control token) and the reference (plain prompt: the same tokens from 1).
static void ctrl_logprobs(RLRun* run, const Generation* g, int batch, float** lp_policy, float** lp_ref,
                          double* entropy) {
    const int n = g->n;
    if (lp_policy)
        sequence_logprobs(&run->policy, (const int* const*)g->tokens, g->len, g->prompt_len, n, batch, lp_policy,
                          entropy);
    const int** plain = mallocCheck((size_t)n * sizeof(int*));
    int* lens = mallocCheck((size_t)n * sizeof(int));
    int* plens = mallocCheck((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        plain[i] = g->tokens[i] + 1;
        lens[i] = g->len[i] - 1;
        plens[i] = g->prompt_len[i] - 1;
    }
    sequence_logprobs(&run->ref, plain, lens, plens, n, batch, lp_ref, NULL);
    free(plain);
    free(lens);
    free(plens);
}

static double mean_score(RewardFn* f, const char* const* prompts, char** responses, int n) {
    if (!f || n <= 0) return 0.0;
    float* s = mallocCheck((size_t)n * sizeof(float));
    reward_score(f, prompts, (const char* const*)responses, n, s);
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += s[i];
    free(s);
    return sum / n;
}

// Held-out evaluation conditioned on ctrl: rollout_evaluate's numbers
// (prompt i sampled with seed train.seed + 7777 + i, as rl_evaluate).
// Weighted means over the dp ranks' shares of the held-out prompts.
static RolloutEval quark_eval_reduce(RLRun* run, RolloutEval ev) {
    Comm* dp = run->world.par.dp;
    if (!dp || dp->size == 1) return ev;
    double n = ev.n, sums[5] = {ev.gold * n, ev.reward * n, ev.kl * n, ev.response_len * n, n};
    comm_allreduce_f64(dp, sums, 5);
    double N = sums[4] > 0 ? sums[4] : 1;
    RolloutEval out = {sums[0] / N, sums[1] / N, sums[2] / N, sums[3] / N, (int)sums[4]};
    return out;
}

static RolloutEval quark_evaluate(RLRun* run, int ctrl, int batch) {
    RolloutEval ev = {0};
    if (run->num_val == 0) return ev;
    // each dp rank evaluates its share of the prompts (prompt i keeps seed + i)
    size_t first = 0, last = run->num_val;
    Comm* dp = run->world.par.dp;
    if (dp) parallel_share(run->num_val, dp->rank, dp->size, &first, &last);
    const int n = (int)(last - first);
    const double t0 = now_seconds();
    if (n <= 0) return quark_eval_reduce(run, ev);
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) seeds[i] = run->seed + 7777 + first + (uint64_t)i;
    const char* const* prompts = (const char* const*)run->val_prompts + first;
    CtrlSamples cs;
    ctrl_generate(run, ctrl, prompts, n, seeds, &cs);
    ev.n = n;
    ev.reward = mean_score(run->reward, prompts, cs.responses, n);
    ev.gold = mean_score(run->gold, prompts, cs.responses, n);
    float** lp = alloc_resp(&cs.g);
    float** lr = alloc_resp(&cs.g);
    ctrl_logprobs(run, &cs.g, batch, lp, lr, NULL);
    for (int i = 0; i < n; i++) {
        int R = cs.g.len[i] - cs.g.prompt_len[i];
        double kl = 0.0;
        for (int j = 0; j < R; j++) kl += (double)lp[i][j] - lr[i][j];
        ev.kl += kl / n;
        ev.response_len += (double)R / n;
    }
    free_resp(lp, n);
    free_resp(lr, n);
    ctrl_samples_free(&cs);
    free(seeds);
    run->t_eval += now_seconds() - t0;
    return quark_eval_reduce(run, ev);
}

static void write_tokens(json_t* obj, const char* key, const int* t, int n) {
    json_t* a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(t[i]));
    json_object_set_new(obj, key, a);
}

typedef struct {
    double loss, nll, kl, entropy_est;
    float grad_norm;
} QuarkStep;

// One gradient step on nb pool samples (indices pick[]): rows [ctrl(bin)] ++
// prompt ++ response.
static QuarkStep quark_train_step(RLRun* run, const Pool* pool, const size_t* pick_all, int nb_all, int ctrl_base,
                                  float kl_coef, float ent_coef, FILE* rows_log, int iter, int step) {
    GPT* policy = &run->policy;
    const int ctx = policy->config.max_seq_len;
    // the step's mean is over the response tokens of every picked row; each
    // rank trains on the picked rows it owns
    size_t num_tokens = 0;
    int nb = 0;
    size_t* pick = mallocCheck((size_t)(nb_all > 0 ? nb_all : 1) * sizeof(size_t));
    for (int b = 0; b < nb_all; b++) {
        const PoolSample* s = &pool->s[pick_all[b]];
        num_tokens += (size_t)(s->len - s->prompt_len);
        if (s->owned) pick[nb++] = pick_all[b];
    }
    int** rows = mallocCheck((size_t)nb * sizeof(int*));
    int* lens = mallocCheck((size_t)nb * sizeof(int));
    int* plens = mallocCheck((size_t)nb * sizeof(int));
    int* idx = mallocCheck((size_t)nb * sizeof(int));
    for (int b = 0; b < nb; b++) {
        const PoolSample* s = &pool->s[pick[b]];
        rows[b] = mallocCheck((size_t)(s->len + 1) * sizeof(int));
        rows[b][0] = ctrl_base + s->bin;
        memcpy(rows[b] + 1, s->tokens, (size_t)s->len * sizeof(int));
        lens[b] = s->len + 1;
        plens[b] = s->prompt_len + 1;
        idx[b] = b;
        if (rows_log) {
            json_t* o = json_object();
            json_object_set_new(o, "kind", json_string("train"));
            json_object_set_new(o, "iter", json_integer(iter));
            json_object_set_new(o, "step", json_integer(step));
            json_object_set_new(o, "bin", json_integer(s->bin));
            json_object_set_new(o, "reward", json_real(s->reward));
            json_object_set_new(o, "prompt_len", json_integer(plens[b]));
            write_tokens(o, "tokens", rows[b], lens[b]);
            write_json_line(rows_log, o);
            json_decref(o);
        }
    }
    int* inputs = mallocCheck((size_t)nb * ctx * sizeof(int));
    int* targets = mallocCheck((size_t)nb * ctx * sizeof(int));
    const int T = rollout_pack((const int* const*)rows, lens, plens, idx, nb, 0, inputs, targets);
    const size_t BT = (size_t)nb * T;
    float* lp = mallocCheck((BT ? BT : 1) * sizeof(float));
    float* dlogp = callocCheck(BT ? BT : 1, sizeof(float));
    if (nb) {
        gpt_forward(policy, inputs, targets, NULL, nb, T);
        gpt_token_logprobs(policy, lp);
    }
    QuarkStep st = {0};
    for (int b = 0; b < nb; b++) {
        const PoolSample* s = &pool->s[pick[b]];
        for (int j = 0; j < lens[b] - plens[b]; j++) {
            size_t pos = (size_t)b * T + (size_t)(plens[b] - 1 + j);
            float logp = lp[pos], ref = s->ref_logp[j];
            st.nll += -(double)logp / num_tokens;
            st.kl += rl_kl_token(logp, ref, 3) / (double)num_tokens;
            st.entropy_est += -(double)logp / num_tokens;
            // J = -logp + kl_coef * k3 - ent_coef * (-logp), per token, mean over tokens
            dlogp[pos] = (-1.0f + kl_coef * (1.0f - expf(ref - logp)) + ent_coef) / (float)num_tokens;
        }
    }
    double sums[3] = {st.nll, st.kl, st.entropy_est};
    comm_allreduce_f64(run->world.par.dp, sums, 3);
    st.nll = sums[0];
    st.kl = sums[1];
    st.entropy_est = sums[2];
    st.loss = st.nll + kl_coef * st.kl - ent_coef * st.entropy_est;
    if (!isfinite(st.loss)) fatalf("rlhfd quark: loss is %g (try a lower train.lr)", st.loss);
    gpt_zero_grad(policy);
    if (nb) {
        gpt_hidden_grad(policy);
        gpt_lm_head_backward(policy, dlogp);
        gpt_backward_trunk(policy);
    }
    // each rank's gradient is its part of the global token mean: sum them
    gpt_ensure_grads(policy);
    dp_allreduce_scaled(&run->world.dp, policy->grads_memory, policy->num_parameters, 1.0f);
    st.grad_norm = dp_update(&run->world.dp, policy, &run->adamw);
    for (int b = 0; b < nb; b++) free(rows[b]);
    free(rows); free(lens); free(plens); free(idx); free(inputs); free(targets); free(lp); free(dlogp); free(pick);
    return st;
}

// Held-out evaluation with the best token every rl.eval_every iterations
// (not the last: the final evaluation does that one), as its own metrics line.
static void quark_maybe_evaluate(RLRun* run, int it, int best, int mb) {
    if (!rl_eval_due(run, it)) return;
    RolloutEval ev = quark_evaluate(run, best, mb);
    rl_log_evaluation(run, it, &ev);
}

static json_t* quark_state_json(int K, int ctrl_base, int best) {
    json_t* state = json_object();
    json_object_set_new(state, "bins", json_integer(K));
    json_object_set_new(state, "control_tokens_first", json_integer(ctrl_base));
    json_object_set_new(state, "best_token", json_integer(best));
    return state;
}

// The pool in the run state: every sample's scalars and tokens. Under data
// parallelism each rank holds the tokens of its own samples: they are
// gathered to rank 0 first. Pool sample p is sequence p % rl.batch of its
// iteration, which is how a resumed run (at any dp size) finds its own.
static void pool_save(RLRun* run, const Pool* pool, RunState* rs) {
    ByteBuf mine = {0};
    for (size_t p = 0; p < pool->n; p++) {
        const PoolSample* s = &pool->s[p];
        if (!s->owned) continue;
        bytebuf_put_u64(&mine, p);
        bytebuf_put_i32s(&mine, s->tokens, (size_t)s->len);
        for (int j = 0; j < s->len - s->prompt_len; j++) bytebuf_put_f32(&mine, s->ref_logp[j]);
    }
    uint8_t** parts = NULL;
    size_t* lens = NULL;
    comm_gather_bytes(run->world.par.world, mine.data, mine.len, 0, &parts, &lens);
    bytebuf_free(&mine);
    if (!run->world.is_root) return;
    const int** toks = callocCheck(pool->n ? pool->n : 1, sizeof(int*));
    const uint8_t** logp = callocCheck(pool->n ? pool->n : 1, sizeof(uint8_t*));
    int** owned_toks = callocCheck(pool->n ? pool->n : 1, sizeof(int*));
    for (int r = 0; r < run->world.par.size; r++) {
        ByteReader rd = {parts[r], lens[r], 0, "quark pool part"};
        while (rd.pos < rd.len) {
            uint64_t p = byteread_u64(&rd);
            size_t n = 0;
            int* t = byteread_i32s(&rd, &n);
            if (p >= pool->n || (int)n != pool->s[p].len) fatalf("quark pool: rank %d sent a bad sample %llu", r, (unsigned long long)p);
            const uint8_t* lp = rd.data + rd.pos;
            rd.pos += (size_t)(pool->s[p].len - pool->s[p].prompt_len) * sizeof(float);
            if (rd.pos > rd.len) fatalf("quark pool: rank %d sent a truncated part", r);
            if (toks[p]) { free(t); continue; } // the same sample from another tp rank
            owned_toks[p] = t;
            toks[p] = t;
            logp[p] = lp;
        }
    }
    ByteBuf b = {0};
    bytebuf_put_u64(&b, pool->n);
    for (size_t p = 0; p < pool->n; p++) {
        const PoolSample* s = &pool->s[p];
        if (!toks[p]) fatalf("quark pool: no rank holds sample %zu", p);
        bytebuf_put_f32(&b, s->reward);
        bytebuf_put_i32(&b, s->bin);
        bytebuf_put_i32(&b, s->prompt_len);
        bytebuf_put_i32s(&b, toks[p], (size_t)s->len);
        bytebuf_put(&b, logp[p], (size_t)(s->len - s->prompt_len) * sizeof(float));
    }
    run_state_put_blob(rs, "quark_pool", b.data, b.len);
    bytebuf_free(&b);
    for (size_t p = 0; p < pool->n; p++) free(owned_toks[p]);
    free(owned_toks);
    free(toks);
    free(logp);
    for (int r = 0; r < run->world.par.size; r++) free(parts[r]);
    free(parts);
    free(lens);
}

static void pool_load(RLRun* run, Pool* pool, const RunState* rs) {
    void* data = NULL;
    size_t len = 0;
    run_state_get_blob(rs, "quark_pool", &data, &len);
    ByteReader rd = {data, len, 0, "quark_pool"};
    size_t n = (size_t)byteread_u64(&rd);
    pool->n = 0;
    pool->cap = n > 256 ? n : 256;
    pool->s = reallocCheck(pool->s, pool->cap * sizeof(PoolSample));
    for (size_t p = 0; p < n; p++) {
        PoolSample* s = &pool->s[pool->n++];
        memset(s, 0, sizeof *s);
        s->reward = byteread_f32(&rd);
        s->bin = byteread_i32(&rd);
        s->prompt_len = byteread_i32(&rd);
        size_t nt = 0;
        int* t = byteread_i32s(&rd, &nt);
        s->len = (int)nt;
        const int R = s->len - s->prompt_len;
        float* lp = mallocCheck((size_t)(R > 0 ? R : 1) * sizeof(float));
        byteread(&rd, lp, (size_t)R * sizeof(float));
        const int g = (int)(p % (size_t)run->batch); // its sequence in its iteration
        if (g >= run->seq0 && g < run->seq0 + run->nloc) {
            s->owned = 1;
            s->tokens = t;
            s->ref_logp = lp;
        } else {
            free(t);
            free(lp);
        }
    }
    byteread_end(&rd);
    free(data);
}

int cmd_quark(int argc, char** argv) {
    RLRun run;
    if (rl_run_parse(&run, "quark", SYNOPSIS, argc, argv)) return 0;
    rl_run_open(&run);
    Config* cfg = run.cfg;
    const int K = config_int(cfg, "quark.bins");
    const int eot = tokenizer_eot(run.tok);
    const int ctrl_base = eot - K, best = eot - 1;
    if (ctrl_base < 0 || eot >= run.policy.config.vocab_size)
        fatalf("%s: quark.bins = %d does not fit below <|endoftext|> (%d)", config_origin(cfg, "quark.bins"), K, eot);
    const float kl_coef = config_float(cfg, "quark.kl_coef");
    const float ent_coef = config_float(cfg, "quark.entropy_coef");
    const int steps = config_int(cfg, "quark.steps");
    const int mb = config_int(cfg, "train.batch");
    gpt_reserve(&run.policy, mb > 16 ? mb : 16, run.policy.config.max_seq_len);

    FILE* rows_log = NULL;
    char rows_path[4200];
    if (config_bool(cfg, "quark.log_rows") && run.world.is_root) { // rank 0 logs its own rows
        snprintf(rows_path, sizeof rows_path, "%s/quark_rows.jsonl", run.run_dir);
        rows_log = fopen(rows_path, "w");
        if (!rows_log) fatalf("cannot write '%s': %s", rows_path, strerror(errno));
    }
    fprintf(stderr, "quark: %d bins, control tokens %d..%d (best %d) | %d steps x %d pool rows per iteration\n", K,
            ctrl_base, best, best, steps, mb);

    Pool pool = {0};
    Rng pick_rng;
    rng_seed(&pick_rng, run.seed ^ 0x5175A4Bull);
    const int n = run.nloc, n_all = run.batch; // this rank's sequences: run.seq0 .. run.seq0 + n - 1
    const char** prompts = mallocCheck((size_t)n * sizeof(char*));
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    float* scores = mallocCheck((size_t)n * sizeof(float));
    double* shared = mallocCheck((size_t)n_all * 3 * sizeof(double)); // every sequence's reward, len, prompt_len
    size_t* pick = mallocCheck((size_t)mb * sizeof(size_t));

    RunState* resumed = rl_resume_state(&run);
    if (resumed) {
        pool_load(&run, &pool, resumed);
        run_state_get_rng(resumed, "rng.pick", &pick_rng);
    }

    for (int it = run.first_iter; it <= run.iterations; it++) {
        RLIterStats st = {0};
        // ---- exploration with the best quantile's token
        rl_local_prompts(&run, it, prompts, seeds);
        CtrlSamples cs;
        ctrl_generate(&run, best, prompts, n, seeds, &cs);
        st.t_generate = cs.seconds;
        double t0 = now_seconds();
        reward_score(run.reward, prompts, (const char* const*)cs.responses, n, scores);
        for (int i = 0; i < n; i++)
            if (!isfinite(scores[i]))
                fatalf("reward '%s' gave %g for response %d", reward_name(run.reward), (double)scores[i], i);
        st.t_score = now_seconds() - t0;
        t0 = now_seconds();
        st.gold = mean_score(run.gold, prompts, cs.responses, n);
        st.t_score += now_seconds() - t0;

        t0 = now_seconds();
        float** lp = alloc_resp(&cs.g);
        float** lr = alloc_resp(&cs.g);
        ctrl_logprobs(&run, &cs.g, mb, lp, lr, &st.entropy);
        st.t_logprobs = now_seconds() - t0;

        // ---- into the pool (without the control token), then re-bin all of it
        // every rank learns every sequence's scalars (a sum of zero-padded slices)
        memset(shared, 0, (size_t)n_all * 3 * sizeof(double));
        for (int i = 0; i < n; i++) {
            shared[3 * (run.seq0 + i)] = scores[i];
            shared[3 * (run.seq0 + i) + 1] = cs.g.len[i] - 1;
            shared[3 * (run.seq0 + i) + 2] = cs.g.prompt_len[i] - 1;
        }
        comm_allreduce_f64(run.world.par.dp, shared, (size_t)n_all * 3);
        st.n_seq = n;
        for (int i = 0; i < n; i++) {
            const int P = cs.g.prompt_len[i], R = cs.g.len[i] - P;
            double kl = 0.0;
            for (int j = 0; j < R; j++) kl += (double)lp[i][j] - lr[i][j];
            st.kl += kl / n;
            st.reward += (double)scores[i] / n;
            st.response_len += (double)R / n;
            st.rollout_tokens += (size_t)R;
            if (rows_log) {
                json_t* o = json_object();
                json_object_set_new(o, "kind", json_string("sample"));
                json_object_set_new(o, "iter", json_integer(it));
                json_object_set_new(o, "reward", json_real(scores[i]));
                json_object_set_new(o, "prompt_len", json_integer(P));
                write_tokens(o, "tokens", cs.g.tokens[i], cs.g.len[i]);
                write_json_line(rows_log, o);
                json_decref(o);
            }
        }
        st.n_tok = (double)st.rollout_tokens;
        // the pool grows by every rank's sequences, in global order
        for (int g = 0; g < n_all; g++) {
            if (pool.n == pool.cap) {
                pool.cap = pool.cap ? 2 * pool.cap : 256;
                pool.s = reallocCheck(pool.s, pool.cap * sizeof(PoolSample));
            }
            PoolSample* s = &pool.s[pool.n++];
            memset(s, 0, sizeof *s);
            s->reward = (float)shared[3 * g];
            s->len = (int)shared[3 * g + 1];
            s->prompt_len = (int)shared[3 * g + 2];
            const int i = g - run.seq0;
            if (i < 0 || i >= n) continue;
            const int R = s->len - s->prompt_len;
            s->owned = 1;
            s->tokens = mallocCheck((size_t)s->len * sizeof(int));
            memcpy(s->tokens, cs.g.tokens[i] + 1, (size_t)s->len * sizeof(int));
            s->ref_logp = mallocCheck((size_t)(R > 0 ? R : 1) * sizeof(float));
            memcpy(s->ref_logp, lr[i], (size_t)R * sizeof(float));
        }
        rl_reduce_stats(&run, &st);
        free_resp(lp, n);
        free_resp(lr, n);
        ctrl_samples_free(&cs);
        pool_rebin(&pool, K);

        // ---- quark.steps gradient steps on uniform draws from the pool
        t0 = now_seconds();
        QuarkStep qs = {0}, q;
        const int nb = (size_t)mb < pool.n ? mb : (int)pool.n;
        for (int s = 0; s < steps; s++) {
            for (int b = 0; b < nb; b++) pick[b] = (size_t)rng_below(&pick_rng, pool.n);
            q = quark_train_step(&run, &pool, pick, nb, ctrl_base, kl_coef, ent_coef, rows_log, it, s + 1);
            qs.loss += q.loss / steps;
            qs.nll += q.nll / steps;
            qs.kl += q.kl / steps;
            qs.grad_norm = q.grad_norm;
        }
        st.t_train = now_seconds() - t0;
        if (rows_log) fflush(rows_log);

        double best_sum = 0.0;
        size_t best_n = 0;
        for (size_t i = 0; i < pool.n; i++)
            if (pool.s[i].bin == K - 1) { best_sum += pool.s[i].reward; best_n++; }
        json_t* extra = json_object();
        json_object_set_new(extra, "loss", json_real(qs.loss));
        json_object_set_new(extra, "nll", json_real(qs.nll));
        json_object_set_new(extra, "kl_loss", json_real(qs.kl));
        json_object_set_new(extra, "pool", json_integer((json_int_t)pool.n));
        json_object_set_new(extra, "pool_best_bin_reward", json_real(best_n ? best_sum / best_n : 0.0));
        json_object_set_new(extra, "grad_norm", json_real(qs.grad_norm));
        rl_log_iteration(&run, it, &st, extra);
        quark_maybe_evaluate(&run, it, best, mb);
        if (run.ckpt_due) { // exact resume: the pool (every rank's tokens), the pick RNG
            RunState rs;
            run_state_init(&rs);
            pool_save(&run, &pool, &rs);
            run_state_put_rng(&rs, "rng.pick", &pick_rng);
            rl_checkpoint(&run, it, NULL, 0, quark_state_json(K, ctrl_base, best), &rs);
            run_state_free(&rs);
        }
        if (run.stop) break; // graceful stop after the checkpoint
    }
    if (rows_log && fclose(rows_log) != 0) fatalf("cannot write '%s': %s", rows_path, strerror(errno));

    // ---- final evaluation with the best token (and the worst, for contrast);
    // rl_finish's own evaluation is of the unconditioned prompt, so it is
    // skipped (num_val = 0 for its duration) and these numbers replace it.
    RolloutEval ev = quark_evaluate(&run, best, mb);
    RolloutEval worst = quark_evaluate(&run, ctrl_base, mb);
    if (run.world.is_root) fprintf(stderr, "quark final eval | best token: gold %+.4f reward %+.4f kl %.3f | worst token: gold %+.4f reward %+.4f\n",
            ev.gold, ev.reward, ev.kl, worst.gold, worst.reward);
    json_t* summary = json_object();
    json_object_set_new(summary, "gold", json_real(ev.gold));
    json_object_set_new(summary, "reward", json_real(ev.reward));
    json_object_set_new(summary, "kl", json_real(ev.kl));
    json_object_set_new(summary, "response_len", json_real(ev.response_len));
    json_object_set_new(summary, "eval_prompts", json_integer(ev.n));
    json_object_set_new(summary, "worst_gold", json_real(worst.gold));
    json_object_set_new(summary, "worst_reward", json_real(worst.reward));
    json_object_set_new(summary, "algorithm", json_string("quark"));
    json_object_set_new(summary, "bins", json_integer(K));
    json_object_set_new(summary, "best_token", json_integer(best));
    json_object_set_new(summary, "worst_token", json_integer(ctrl_base));
    json_object_set_new(summary, "pool", json_integer((json_int_t)pool.n));
    json_t* state = quark_state_json(K, ctrl_base, best);
    const size_t num_val = run.num_val;
    run.num_val = 0;
    rl_finish(&run, NULL, 0, state, summary);
    run.num_val = num_val;

    free(prompts);
    free(seeds);
    free(scores);
    free(shared);
    free(pick);
    pool_free(&pool);
    rl_run_close(&run);
    return 0;
}
