// ppo_core.c - the PPO trainer (InstructGPT / trlx recipe) behind `rlhfd ppo`
// and `rlhfd nlpo` (ppo_core.h).
//
// One iteration:
//   1. rollouts: rl.batch prompts, one response each (one batched generation)
//   2. scores: rl.reward of each (prompt, response); the gold scorer is logged only
//   3. teacher-forced log-probs of the responses under the policy (old) and
//      the frozen reference, and values of every response position
//   4. per-token rewards r_t = -beta * KL_t (+ the score on the last token),
//      GAE (ppo.gamma, ppo.lam) per sequence, advantages whitened over the batch
//   5. ppo.epochs passes of shuffled minibatches (ppo.minibatch sequences):
//      clipped surrogate + clipped value loss, global-norm clipping, AdamW;
//      optional early stop when the epoch's mean approx-KL passes ppo.target_kl
//   6. the KL controller (fixed, or adaptive toward rl.kl_target) updates beta
// The value of response token j is the head's output at the position that
// predicts it (P-1+j): the state before the action.
// Value head: ppo.value=policy puts it on the policy's trunk (one backward of
// policy loss + vf_coef * value loss); ppo.value=critic trains a separate GPT
// + head initialised from the reward model (trunk and head, value = RM score).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "ppo_core.h"
#include "rl_common.h"
#include "run_state.h"
#include "train_util.h"
#include "../common/check.h"
#include "../common/rng.h"
#include "../worker/reward_model.h"
#include "../worker/rl_math.h"
#include "../worker/rollout.h"
#include "../worker/value_head.h"

// The reward model named by the first rm: term of a reward spec (malloc'd), or NULL.
static char* rm_path_of_spec(const char* spec) {
    const char* p = strstr(spec, "rm:");
    while (p && p != spec && p[-1] != '*' && p[-1] != '+') p = strstr(p + 1, "rm:");
    if (!p) return NULL;
    p += 3;
    const char* end = p;
    while (*end && !(*end == '+' && (strstr(end + 1, "rm:") == end + 1 || strstr(end + 1, "lexicon:") == end + 1 ||
                                     strstr(end + 1, "command:") == end + 1 || (end[1] >= '0' && end[1] <= '9'))))
        end++;
    size_t n = (size_t)(end - p);
    char* s = mallocCheck(n + 1);
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

typedef struct {
    // per sequence (n), per response token (resp_len[i])
    float** logp_old;
    float** logp_ref;
    float** values;
    float** adv;
    float** ret;
} PPOBuffers;

// Forward of the value trunk on a packed batch (critic: its own trunk; policy: the last forward's).
static void value_forward(GPT* trunk, int own_trunk, ValueHead* vh, const int* inputs, int nb, int T,
                          float* values) {
    if (own_trunk) gpt_forward_trunk(trunk, inputs, nb, T);
    value_head_forward(vh, trunk, values);
}

// The value head's parameters and AdamW state, exactly.
static void value_head_save(const ValueHead* h, RunState* rs) {
    size_t n = (size_t)h->C + 1;
    float* buf = mallocCheck(3 * n * sizeof(float));
    h->ops->to_host(buf, h->params, n * sizeof(float));
    h->ops->to_host(buf + n, h->m, n * sizeof(float));
    h->ops->to_host(buf + 2 * n, h->v, n * sizeof(float));
    run_state_put_blob(rs, "value_head", buf, 3 * n * sizeof(float));
    run_state_put_i64(rs, "value_head.step", h->step);
    free(buf);
}

static void value_head_restore(ValueHead* h, const RunState* rs) {
    size_t n = (size_t)h->C + 1, len = 0;
    void* data = NULL;
    run_state_get_blob(rs, "value_head", &data, &len);
    if (len != 3 * n * sizeof(float)) fatalf("run state: value_head holds %zu bytes, expected %zu", len, 3 * n * sizeof(float));
    const float* buf = data;
    h->ops->to_device(h->params, buf, n * sizeof(float));
    h->ops->to_device(h->m, buf + n, n * sizeof(float));
    h->ops->to_device(h->v, buf + 2 * n, n * sizeof(float));
    h->step = (int)run_state_get_i64(rs, "value_head.step");
    free(data);
}

// The critic trunk (ppo.value = critic, tp = 1): parameters, AdamW moments, step.
static void critic_save(const GPT* g, RunState* rs) {
    size_t n = g->num_parameters;
    float* buf = mallocCheck(n * sizeof(float));
    const float* parts[3] = {g->params_memory, g->m_memory, g->v_memory};
    const char* names[3] = {"critic.params", "critic.m", "critic.v"};
    for (int k = 0; k < 3; k++) {
        if (parts[k]) g->ops->to_host(buf, parts[k], n * sizeof(float));
        else memset(buf, 0, n * sizeof(float));
        run_state_put_blob(rs, names[k], buf, n * sizeof(float));
    }
    run_state_put_i64(rs, "critic.step", g->adam_step);
    free(buf);
}

static void critic_restore(GPT* g, const RunState* rs) {
    size_t n = g->num_parameters;
    const char* names[3] = {"critic.params", "critic.m", "critic.v"};
    if (!g->m_memory) {
        g->m_memory = g->ops->alloc(n * sizeof(float));
        g->v_memory = g->ops->alloc(n * sizeof(float));
    }
    float* dst[3] = {g->params_memory, g->m_memory, g->v_memory};
    for (int k = 0; k < 3; k++) {
        void* data = NULL;
        size_t len = 0;
        run_state_get_blob(rs, names[k], &data, &len);
        if (len != n * sizeof(float)) fatalf("run state: %s holds %zu bytes, expected %zu", names[k], len, n * sizeof(float));
        g->ops->to_device(dst[k], data, len);
        free(data);
    }
    g->adam_step = (int)run_state_get_i64(rs, "critic.step");
}

int ppo_main(const char* cmd, const char* synopsis, int argc, char** argv, const PPOVariant* variant) {
    static const PPOVariant plain = {0};
    const PPOVariant* var = variant ? variant : &plain;
    RLRun run;
    if (rl_run_parse(&run, cmd, synopsis, argc, argv)) return 0;
    Config* cfg = run.cfg;
    // validate the PPO keys before any heavy loading
    const char* value_mode = config_str(cfg, "ppo.value");
    int use_critic;
    if (!strcmp(value_mode, "policy")) use_critic = 0;
    else if (!strcmp(value_mode, "critic")) use_critic = 1;
    else fatalf("%s: ppo.value = '%s': expected policy or critic", config_origin(cfg, "ppo.value"), value_mode);
    rl_run_open(&run);
    if (var->open) var->open(var->ctx, &run);

    const int V = run.policy.config.vocab_size, C = run.policy.config.channels;
    const int ctx = run.policy.config.max_seq_len;
    // nseq: the iteration's global batch; this rank owns sequences
    // seq0 .. seq0 + nloc - 1 (local index i = global - seq0)
    const int nseq = run.batch, nloc = run.nloc, seq0 = run.seq0;
    const int mb = config_int(cfg, "ppo.minibatch") < nseq ? config_int(cfg, "ppo.minibatch") : nseq;
    DataParallel* dpar = &run.world.dp;
    const int epochs = config_int(cfg, "ppo.epochs");
    const float gamma = config_float(cfg, "ppo.gamma"), lam = config_float(cfg, "ppo.lam");
    const float clip = config_float(cfg, "ppo.clip"), vf_clip = config_float(cfg, "ppo.vf_clip");
    const float vf_coef = config_float(cfg, "ppo.vf_coef"), target_kl = config_float(cfg, "ppo.target_kl");
    const int whiten = config_bool(cfg, "ppo.whiten");
    const int kl_est = config_int(cfg, "rl.kl_estimator");
    AdamWConfig adamw_v = run.adamw;
    if (config_float(cfg, "ppo.critic_lr") > 0) adamw_v.lr = config_float(cfg, "ppo.critic_lr");
    KLController klc;
    kl_controller_init(&klc, config_float(cfg, "rl.kl_coef"), config_bool(cfg, "rl.kl_adaptive"),
                       config_float(cfg, "rl.kl_target"), config_float(cfg, "rl.kl_horizon"));

    // ---- value head: on the policy, or a critic from the reward model
    RewardModel critic;
    memset(&critic, 0, sizeof critic);
    GPT* vtrunk = &run.policy;
    ValueHead vh;
    value_head_init(&vh, C, run.ops);
    if (use_critic) {
        const char* cpath = config_str(cfg, "ppo.critic");
        char* path = cpath[0] ? NULL : rm_path_of_spec(config_str(cfg, "rl.reward"));
        if (!cpath[0] && !path)
            fatalf("ppo.value = critic needs a reward model: set ppo.critic or use an rm: term in rl.reward");
        rm_load_tp(&critic, cpath[0] ? cpath : path, run.ops, run.world.par.tp);
        if (critic.gpt.config.channels != C || critic.gpt.config.max_seq_len < ctx)
            fatalf("%s: critic shape (C=%d, ctx=%d) does not fit the policy (C=%d, ctx=%d)",
                   cpath[0] ? cpath : path, critic.gpt.config.channels, critic.gpt.config.max_seq_len, C, ctx);
        float* w = mallocCheck((size_t)C * sizeof(float));
        float b;
        rm_head_to_host(&critic, w, &b);
        value_head_set(&vh, w, b - critic.offset); // value starts as the normalised RM score
        free(w);
        free(path);
        vtrunk = &critic.gpt;
    }
    gpt_reserve(&run.policy, mb, ctx);
    gpt_reserve(&run.ref, mb, ctx);
    if (use_critic) gpt_reserve(vtrunk, mb, ctx);

    int* inputs = mallocCheck((size_t)mb * ctx * sizeof(int));   // (mb,T)
    int* targets = mallocCheck((size_t)mb * ctx * sizeof(int));  // (mb,T)
    float* grid_lp = mallocCheck((size_t)mb * ctx * sizeof(float));   // (mb,T) log-probs of the forward
    float* grid_v = mallocCheck((size_t)mb * ctx * sizeof(float));    // (mb,T) values of the forward
    float* grid_old = callocCheck((size_t)mb * ctx, sizeof(float));
    float* grid_vold = callocCheck((size_t)mb * ctx, sizeof(float));
    float* grid_adv = callocCheck((size_t)mb * ctx, sizeof(float));
    float* grid_ret = callocCheck((size_t)mb * ctx, sizeof(float));
    float* grid_mask = callocCheck((size_t)mb * ctx, sizeof(float));
    float* grid_dlp = mallocCheck((size_t)mb * ctx * sizeof(float));
    float* grid_dv = mallocCheck((size_t)mb * ctx * sizeof(float));
    float* row = mallocCheck((size_t)V * sizeof(float));
    int* idx = mallocCheck((size_t)nseq * sizeof(int));
    int* perm = mallocCheck((size_t)nseq * sizeof(int));
    const char** prompts = mallocCheck((size_t)nloc * sizeof(char*));
    uint64_t* seeds = mallocCheck((size_t)nloc * sizeof(uint64_t));
    int* mine = mallocCheck((size_t)mb * sizeof(int)); // local indices of a minibatch's own sequences
    Rng shuffle_rng;
    rng_seed(&shuffle_rng, run.seed ^ 0x5DEECE66Dull);
    RunState* resumed = rl_resume_state(&run);
    if (resumed) {
        if (variant && !var->restore_state) fatalf("rlhfd %s: --resume is not supported for this command", cmd);
        if (use_critic && run.world.par.tp_size > 1)
            fatalf("rlhfd %s: --resume of ppo.value = critic runs needs parallel.tp = 1", cmd);
        run_state_get_kl(resumed, "kl", &klc);
        run_state_get_rng(resumed, "rng.shuffle", &shuffle_rng);
        value_head_restore(&vh, resumed);
        if (use_critic) critic_restore(&critic.gpt, resumed);
        if (var->restore_state) var->restore_state(var->ctx, &run, resumed);
    }

    for (int iter = run.first_iter; iter <= run.iterations; iter++) {
        RLIterStats st = {0};
        // ---- 1. rollouts
        rl_local_prompts(&run, iter, prompts, seeds);
        Rollout ro;
        RolloutConfig rcfg = run.rollout;
        if (var->begin_rollout) var->begin_rollout(var->ctx, &run, iter, nloc, &rcfg);
        rollout_generate(&run.policy, run.tok, prompts, nloc, seeds, &rcfg, &ro);
        if (var->end_rollout) var->end_rollout(var->ctx, &ro);
        st.t_generate = ro.t_generate;
        st.rollout_tokens = ro.new_tokens;
        // ---- 2. scores
        double t0 = now_seconds();
        rollout_score(&ro, run.reward, ro.scores);
        st.t_score = now_seconds() - t0;
        st.gold = rl_gold_mean(&run, &ro, &st.t_score);
        for (int i = 0; i < nloc; i++) {
            st.reward += ro.scores[i];
            st.response_len += ro.resp_len[i];
        }
        st.n_seq = nloc;
        st.reward /= nloc;
        st.response_len /= nloc;

        // ---- 3. old log-probs, reference log-probs, values
        t0 = now_seconds();
        PPOBuffers buf = {rl_alloc_per_token(&ro), rl_alloc_per_token(&ro), rl_alloc_per_token(&ro),
                          rl_alloc_per_token(&ro), rl_alloc_per_token(&ro)};
        double ent_sum = 0.0;
        size_t ntok = 0;
        for (int start = 0; start < nloc; start += mb) {
            int nb = nloc - start < mb ? nloc - start : mb;
            for (int b = 0; b < nb; b++) idx[b] = start + b;
            int T = rollout_pack((const int* const*)ro.tokens, ro.len, ro.prompt_len, idx, nb, 0, inputs, targets);
            gpt_forward(&run.policy, inputs, targets, NULL, nb, T);
            if (var->policy_forward) var->policy_forward(var->ctx, &run.policy, &ro, idx, nb, T);
            gpt_token_logprobs(&run.policy, grid_lp);
            for (int b = 0; b < nb; b++) {
                int i = idx[b], P = ro.prompt_len[i];
                for (int j = 0; j < ro.resp_len[i]; j++) {
                    size_t pos = (size_t)b * T + (size_t)(P - 1 + j);
                    buf.logp_old[i][j] = grid_lp[pos];
                    gpt_logits_rows(&run.policy, &pos, 1, row); // whole vocab, also under tp
                    ent_sum += rl_entropy(row, V);
                    ntok++;
                }
            }
            value_forward(vtrunk, use_critic, &vh, inputs, nb, T, grid_v);
            gpt_forward(&run.ref, inputs, targets, NULL, nb, T);
            gpt_token_logprobs(&run.ref, grid_lp);
            for (int b = 0; b < nb; b++) {
                int i = idx[b], P = ro.prompt_len[i];
                for (int j = 0; j < ro.resp_len[i]; j++) {
                    size_t pos = (size_t)b * T + (size_t)(P - 1 + j);
                    buf.logp_ref[i][j] = grid_lp[pos];
                    buf.values[i][j] = grid_v[pos];
                }
            }
        }
        st.entropy = ntok ? ent_sum / (double)ntok : 0.0;
        st.n_tok = (double)ntok;
        st.t_logprobs = now_seconds() - t0;

        // ---- 4. per-token rewards, GAE, whitening
        t0 = now_seconds();
        const float beta = klc.value;
        size_t total = 0;
        for (int i = 0; i < nloc; i++) total += (size_t)ro.resp_len[i];
        float* flat_adv = mallocCheck((total ? total : 1) * sizeof(float));
        float* flat_v = mallocCheck((total ? total : 1) * sizeof(float));
        float* flat_ret = mallocCheck((total ? total : 1) * sizeof(float));
        float* rewards = mallocCheck((size_t)(ctx + 1) * sizeof(float));
        double kl_seq_sum = 0.0;
        size_t off = 0;
        for (int i = 0; i < nloc; i++) {
            int n = ro.resp_len[i];
            double kl_seq = 0.0;
            for (int j = 0; j < n; j++) {
                kl_seq += (double)buf.logp_old[i][j] - (double)buf.logp_ref[i][j];
                rewards[j] = -beta * rl_kl_token(buf.logp_old[i][j], buf.logp_ref[i][j], kl_est);
            }
            if (n > 0) rewards[n - 1] += ro.scores[i];
            kl_seq_sum += kl_seq;
            rl_gae(rewards, buf.values[i], n, gamma, lam, buf.adv[i], buf.ret[i]);
            for (int j = 0; j < n; j++) {
                flat_adv[off + j] = buf.adv[i][j];
                flat_v[off + j] = buf.values[i][j];
                flat_ret[off + j] = buf.ret[i][j];
            }
            off += (size_t)n;
        }
        st.kl = kl_seq_sum / nloc;
        rl_reduce_stats(&run, &st); // global means: the KL controller and the log see the whole batch
        double explained_var = rl_explained_variance_global(&run, flat_v, flat_ret, total);
        if (whiten) rl_whiten_global(&run, flat_adv, total);
        off = 0;
        for (int i = 0; i < nloc; i++) {
            for (int j = 0; j < ro.resp_len[i]; j++) buf.adv[i][j] = flat_adv[off + j];
            off += (size_t)ro.resp_len[i];
        }

        // ---- 5. PPO epochs over shuffled minibatches
        double sum_pl = 0, sum_vl = 0, sum_cf = 0, sum_akl = 0, sum_vcf = 0, sum_norm = 0;
        int updates = 0, stopped_early = 0;
        for (int ep = 0; ep < epochs && !stopped_early; ep++) {
            for (int i = 0; i < nseq; i++) perm[i] = i;
            for (int i = nseq; i > 1; i--) {
                int j = (int)rng_below(&shuffle_rng, (uint64_t)i);
                int t = perm[i - 1]; perm[i - 1] = perm[j]; perm[j] = t;
            }
            double epoch_akl = 0.0;
            int epoch_mbs = 0;
            for (int start = 0; start < nseq; start += mb) {
                int nb_global = nseq - start < mb ? nseq - start : mb;
                int nb = 0; // this rank's sequences of the (global) minibatch
                for (int b = 0; b < nb_global; b++)
                    if (perm[start + b] >= seq0 && perm[start + b] < seq0 + nloc) mine[nb++] = perm[start + b] - seq0;
                int T = nb ? rollout_pack((const int* const*)ro.tokens, ro.len, ro.prompt_len, mine, nb, 0,
                                          inputs, targets)
                           : 0;
                size_t n = (size_t)nb * T;
                memset(grid_mask, 0, n * sizeof(float));
                memset(grid_old, 0, n * sizeof(float));
                memset(grid_vold, 0, n * sizeof(float));
                memset(grid_adv, 0, n * sizeof(float));
                memset(grid_ret, 0, n * sizeof(float));
                double w = 0; // this rank's response tokens: the weight of its loss means
                for (int b = 0; b < nb; b++) {
                    int i = mine[b], P = ro.prompt_len[i];
                    w += ro.resp_len[i];
                    for (int j = 0; j < ro.resp_len[i]; j++) {
                        size_t pos = (size_t)b * T + (size_t)(P - 1 + j);
                        grid_mask[pos] = 1.0f;
                        grid_old[pos] = buf.logp_old[i][j];
                        grid_vold[pos] = buf.values[i][j];
                        grid_adv[pos] = buf.adv[i][j];
                        grid_ret[pos] = buf.ret[i][j];
                    }
                }
                if (nb) {
                    gpt_forward(&run.policy, inputs, targets, NULL, nb, T);
                    if (var->policy_forward) var->policy_forward(var->ctx, &run.policy, &ro, mine, nb, T);
                    gpt_token_logprobs(&run.policy, grid_lp);
                }
                float clipfrac = 0, approx_kl = 0, vf_clipfrac = 0;
                double pl = rl_ppo_policy_loss(grid_lp, grid_old, grid_adv, grid_mask, n, clip, grid_dlp,
                                               &clipfrac, &approx_kl);
                // the minibatch's means over all ranks' tokens
                double wsum = w;
                comm_allreduce_f64(run.world.par.dp, &wsum, 1);
                approx_kl = (float)rl_global_mean(&run, approx_kl, w);
                epoch_akl += approx_kl;
                epoch_mbs++;
                if (target_kl > 0 && epoch_akl / epoch_mbs > target_kl) {
                    stopped_early = 1; // the policy moved far enough from the rollouts' policy
                    break;
                }
                if (nb && !use_critic) value_head_forward(&vh, &run.policy, grid_v);
                else if (nb) value_forward(vtrunk, 1, &vh, inputs, nb, T, grid_v);
                double vl = rl_value_loss(grid_v, grid_vold, grid_ret, grid_mask, n, vf_clip, grid_dv, &vf_clipfrac);
                pl = rl_global_mean(&run, pl, w);
                vl = rl_global_mean(&run, vl, w);
                clipfrac = (float)rl_global_mean(&run, clipfrac, w);
                vf_clipfrac = (float)rl_global_mean(&run, vf_clipfrac, w);
                // each rank's gradient is of a mean over its w tokens: scale to the global mean
                const float gscale = wsum > 0 ? (float)(w / wsum) : 0.0f;
                if (!isfinite(pl) || !isfinite(vl))
                    fatalf("PPO loss is not finite at iteration %d (policy %g, value %g): try a lower train.lr",
                           iter, pl, vl);
                value_head_zero_grad(&vh);
                gpt_zero_grad(&run.policy);
                if (!use_critic) {
                    if (nb) {
                        float* dlnf = gpt_hidden_grad(&run.policy);
                        gpt_lm_head_backward(&run.policy, grid_dlp);
                        for (size_t k = 0; k < n; k++) grid_dv[k] *= vf_coef;
                        value_head_backward(&vh, &run.policy, grid_dv, dlnf);
                        gpt_backward_trunk(&run.policy);
                    }
                    dp_allreduce_grads(dpar, &run.policy, w);
                    sum_norm += dp_update(dpar, &run.policy, &run.adamw);
                } else {
                    if (nb) {
                        gpt_hidden_grad(&run.policy);
                        gpt_lm_head_backward(&run.policy, grid_dlp);
                        gpt_backward_trunk(&run.policy);
                    }
                    dp_allreduce_grads(dpar, &run.policy, w);
                    sum_norm += dp_update(dpar, &run.policy, &run.adamw);
                    gpt_zero_grad(vtrunk);
                    if (nb) {
                        float* dcrit = gpt_hidden_grad(vtrunk);
                        value_head_backward(&vh, vtrunk, grid_dv, dcrit);
                        gpt_backward_trunk(vtrunk);
                    }
                    dp_allreduce_grads(dpar, vtrunk, w); // the critic: plain all-reduce (no ZeRO-1)
                    gpt_update(vtrunk, &adamw_v);
                }
                dp_allreduce_scaled(dpar, vh.grads, (size_t)C + 1, gscale);
                value_head_update(&vh, &adamw_v);
                sum_pl += pl;
                sum_vl += vl;
                sum_cf += clipfrac;
                sum_akl += approx_kl;
                sum_vcf += vf_clipfrac;
                updates++;
            }
        }
        st.t_train = now_seconds() - t0;

        // ---- 6. KL controller (per-sequence KL, one step per sequence)
        float kl_coef_used = klc.value;
        kl_controller_update(&klc, (float)st.kl, nseq);

        json_t* extra = json_object();
        double u = updates > 0 ? updates : 1;
        json_object_set_new(extra, "kl_coef", json_real(kl_coef_used));
        json_object_set_new(extra, "policy_loss", json_real(sum_pl / u));
        json_object_set_new(extra, "value_loss", json_real(sum_vl / u));
        json_object_set_new(extra, "clipfrac", json_real(sum_cf / u));
        json_object_set_new(extra, "approx_kl", json_real(sum_akl / u));
        json_object_set_new(extra, "vf_clipfrac", json_real(sum_vcf / u));
        json_object_set_new(extra, "explained_variance", json_real(explained_var));
        json_object_set_new(extra, "grad_norm", json_real(sum_norm / u));
        json_object_set_new(extra, "updates", json_integer(updates));
        json_object_set_new(extra, "stopped_early", json_boolean(stopped_early));
        if (var->iteration_done) var->iteration_done(var->ctx, extra);
        rl_log_iteration(&run, iter, &st, extra);

        free(flat_adv);
        free(flat_v);
        free(flat_ret);
        free(rewards);
        rl_free_per_token(buf.logp_old, nloc);
        rl_free_per_token(buf.logp_ref, nloc);
        rl_free_per_token(buf.values, nloc);
        rl_free_per_token(buf.adv, nloc);
        rl_free_per_token(buf.ret, nloc);
        rollout_free(&ro);
        rl_maybe_evaluate(&run, iter);
        if (run.ckpt_due) { // exact resume: KL controller, minibatch RNG, value head (+ critic), variant
            RunState rs;
            run_state_init(&rs);
            run_state_put_kl(&rs, "kl", &klc);
            run_state_put_rng(&rs, "rng.shuffle", &shuffle_rng);
            value_head_save(&vh, &rs);
            if (use_critic && run.world.par.tp_size == 1) critic_save(&critic.gpt, &rs);
            if (var->save_state) var->save_state(var->ctx, &run, &rs);
            json_t* st_extra = json_object();
            json_object_set_new(st_extra, "kl_coef", json_real(klc.value));
            json_object_set_new(st_extra, "value", json_string(value_mode));
            float* w = mallocCheck((size_t)(C + 1) * sizeof(float));
            value_head_get(&vh, w, w + C);
            StWriteTensor head_t[2] = {
                {.name = "value_head.w", .data = w, .ndim = 1, .shape = {C}},
                {.name = "value_head.b", .data = w + C, .ndim = 1, .shape = {1}},
            };
            rl_checkpoint(&run, iter, use_critic ? NULL : head_t, use_critic ? 0 : 2, st_extra, &rs);
            free(w);
            run_state_free(&rs);
        }
        if (run.stop) break; // graceful stop after the checkpoint
    }

    // ---- final checkpoint (with the value head), evaluation, summary
    float* hw = mallocCheck((size_t)(C + 1) * sizeof(float));
    value_head_get(&vh, hw, hw + C);
    StWriteTensor extra_t[2] = {
        {.name = "value_head.w", .data = hw, .ndim = 1, .shape = {C}},
        {.name = "value_head.b", .data = hw + C, .ndim = 1, .shape = {1}},
    };
    json_t* state_extra = json_object();
    json_object_set_new(state_extra, "kl_coef", json_real(klc.value));
    json_object_set_new(state_extra, "value", json_string(value_mode));
    json_t* summary_extra = json_object();
    json_object_set_new(summary_extra, "kl_coef", json_real(klc.value));
    if (var->finish) var->finish(var->ctx, state_extra, summary_extra);
    rl_finish(&run, use_critic ? NULL : extra_t, use_critic ? 0 : 2, state_extra, summary_extra);

    free(hw);
    free(inputs); free(targets); free(grid_lp); free(grid_v); free(grid_old); free(grid_vold);
    free(grid_adv); free(grid_ret); free(grid_mask); free(grid_dlp); free(grid_dv); free(row);
    free(idx); free(perm); free(prompts); free(seeds); free(mine);
    value_head_free(&vh);
    if (use_critic) rm_free(&critic);
    if (var->close) var->close(var->ctx);
    rl_run_close(&run);
    return 0;
}
