// cmd_grpo.c - the critic-free policy-gradient family: `rlhfd pg` (REINFORCE
// with a baseline), `rlhfd grpo` (group-relative advantages) and `rlhfd rloo`
// (leave-one-out baseline). One trainer, three advantage rules; cmd_pg.c and
// cmd_rloo.c are thin entry points into pg_family_main.
//
// One iteration (all three):
//   1. rl.batch prompts (a seeded shuffle, coordinator/rl_common.h), each
//      sampled G times (G = grpo.group for GRPO/RLOO, 1 for pg) with its own
//      seed, in one batched KV-cache generation;
//   2. score every response with rl.reward (and rl.gold, logged only);
//   3. teacher-forced log-probs of the sampled tokens under the policy (the
//      "old" policy of this iteration) and under the frozen reference;
//   4. per-sequence advantages A_i (below), then the update.
//
// Advantages and KL, by algorithm (beta = rl.kl_coef, or the adaptive
// controller's value when rl.kl_adaptive):
//   pg    R_i = score_i - beta * KL_i, KL_i = sum_t kl_est(logp_old, logp_ref)
//         (rl.kl_estimator); A_i = R_i - b with b the moving average of the
//         batch-mean R (pg.baseline_decay; 0 = this batch's mean; the first
//         iteration uses its own mean). Loss (Peng et al. 2020):
//         -(1/n) sum_i A_i sum_t logp_{i,t}; pg.epochs gradient steps on the
//         same samples (plain REINFORCE, no ratio).
//   rloo  KL folded into the sequence reward as in the RLOO paper (Ahmadian
//         et al. 2024) and TRL: R_i = score_i - beta * KL_i; A_i = R_i - mean of
//         the other G-1 rewards of its prompt.
//   grpo  A_i = (score_i - mean_g) / (std_g + 1e-8) over its group
//         (grpo.scale_std = false: score_i - mean_g); the KL is NOT in the
//         reward but in the loss (Shao et al. 2024): beta * k3 per token with
//         k3 = exp(r) - 1 - r, r = logp_ref - logp, whose gradient is
//         d k3 / d logp = exp(r) * (-1) - (-1) = 1 - exp(logp_ref - logp).
//   rloo and grpo then minimise PPO's clipped surrogate (grpo.clip) with A_i
//   on every token of sequence i, averaged over all response tokens of the
//   batch (the token-level mean of DAPO; with one epoch the ratio is 1 and
//   this is REINFORCE with sum_t logp scaled by 1/#tokens), for grpo.epochs
//   gradient steps on the batch.
// Every gradient step accumulates over micro-batches of train.batch sequences
// and takes one AdamW step at constant train.lr.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "rl_common.h"
#include "train_util.h"
#include "../common/check.h"
#include "../common/config.h"
#include "../worker/gpt.h"
#include "../worker/rl_math.h"
#include "../worker/rollout.h"

typedef enum { PG_REINFORCE, PG_GRPO, PG_RLOO } PgAlgo;

// Entry point shared with cmd_pg.c and cmd_rloo.c (declared there too, with
// algo as a plain int: 0 = pg, 1 = grpo, 2 = rloo, the PgAlgo values).
int pg_family_main(int argc, char** argv, int algo_id);

static const char* const SYNOPSIS_PG =
    "--config FILE [--set KEY=VALUE]... [--model SFT] [--overwrite]\n"
    "\n"
    "REINFORCE with a baseline (Peng et al. 2020) against a classifier or reward\n"
    "model (rl.reward): per iteration rl.batch responses are sampled, each gets\n"
    "R = score - rl.kl_coef * KL(sequence) to the frozen reference (rl.kl_estimator),\n"
    "the advantage is R minus a moving-average baseline (pg.baseline_decay; 0 =\n"
    "the batch mean) and the loss -(R - b) * sum_t logp_t, averaged over the batch,\n"
    "takes pg.epochs AdamW steps (micro-batches of train.batch sequences, lr =\n"
    "train.lr). Outputs in run.dir (default runs/pg): metrics.jsonl (one line per\n"
    "iteration), ckpt-NNNNNNNN/; the last stdout line is the summary with the\n"
    "held-out gold, reward and kl on rl.val_prompts. Keys: --help-config.";

static const char* const SYNOPSIS_GRPO =
    "--config FILE [--set KEY=VALUE]... [--model SFT] [--overwrite]\n"
    "\n"
    "GRPO (Shao et al. 2024): grpo.group samples per prompt, advantage = (score -\n"
    "group mean) / group std (grpo.scale_std), no critic; the KL to the frozen\n"
    "reference is in the loss (rl.kl_coef * k3 per token), not in the reward; PPO's\n"
    "clipped ratio (grpo.clip) over grpo.epochs gradient steps per batch (1 = plain\n"
    "policy gradient), loss averaged over all response tokens. Outputs in run.dir\n"
    "(default runs/grpo) as for `rlhfd ppo`. Keys: --help-config.";

static const char* const SYNOPSIS_RLOO =
    "--config FILE [--set KEY=VALUE]... [--model SFT] [--overwrite]\n"
    "\n"
    "RLOO (Ahmadian et al. 2024): grpo.group samples per prompt; each sample's\n"
    "baseline is the mean reward of the other G-1; the KL to the frozen reference\n"
    "is folded into the sequence reward (score - rl.kl_coef * sum_t kl_est), as in\n"
    "the paper and TRL. PPO's clipped ratio (grpo.clip) over grpo.epochs gradient\n"
    "steps per batch (1 = plain REINFORCE). Outputs in run.dir (default runs/rloo)\n"
    "as for `rlhfd ppo`. Keys: --help-config.";

// Work buffers of one micro-batch, (mb, ctx) each.
typedef struct {
    int mb, cap_T;
    int* idx;
    int* inputs;
    int* targets;
    float* logp;  // new log-probs from the forward
    float* old;   // logp_old at response positions, 0 elsewhere
    float* ref;   // logp_ref at response positions
    float* adv;   // A_i at the response positions of row i
    float* mask;  // 1 at response positions
    float* dlogp; // d loss / d logp
} MicroBatch;

static void micro_batch_init(MicroBatch* m, int mb, int ctx) {
    size_t n = (size_t)mb * ctx;
    m->mb = mb;
    m->cap_T = ctx;
    m->idx = mallocCheck((size_t)mb * sizeof(int));
    m->inputs = mallocCheck(n * sizeof(int));
    m->targets = mallocCheck(n * sizeof(int));
    m->logp = mallocCheck(n * sizeof(float));
    m->old = mallocCheck(n * sizeof(float));
    m->ref = mallocCheck(n * sizeof(float));
    m->adv = mallocCheck(n * sizeof(float));
    m->mask = mallocCheck(n * sizeof(float));
    m->dlogp = mallocCheck(n * sizeof(float));
}

static void micro_batch_free(MicroBatch* m) {
    free(m->idx); free(m->inputs); free(m->targets); free(m->logp); free(m->old);
    free(m->ref); free(m->adv); free(m->mask); free(m->dlogp);
}

typedef struct {
    double loss, pg_loss, kl_loss, clipfrac, approx_kl;
    float grad_norm;
} StepStats;

// One gradient step over all sequences of ro: micro-batches of m->mb rows,
// gradients accumulated, one AdamW update. adv (n) per sequence.
static StepStats train_step(RLRun* run, PgAlgo algo, const Rollout* ro, float** logp_old,
                            float** logp_ref, const float* adv, float beta, float clip, MicroBatch* m) {
    GPT* policy = &run->policy;
    const int n = ro->n;            // this rank's sequences
    StepStats st = {0};
    // response tokens and sequences of the whole (global) batch: the means' denominators
    double counts[2] = {0.0, (double)n};
    for (int i = 0; i < n; i++) counts[0] += (double)ro->resp_len[i];
    comm_allreduce_f64(run->world.par.dp, counts, 2);
    const double num_tokens = counts[0], n_all = counts[1];
    if (num_tokens == 0) return st;

    gpt_zero_grad(policy);
    for (int start = 0; start < n; start += m->mb) {
        const int nb = n - start < m->mb ? n - start : m->mb;
        for (int b = 0; b < nb; b++) m->idx[b] = start + b;
        const int T = rollout_pack((const int* const*)ro->tokens, ro->len, ro->prompt_len, m->idx, nb, 0,
                                   m->inputs, m->targets);
        const size_t BT = (size_t)nb * T;
        memset(m->old, 0, BT * sizeof(float));
        memset(m->ref, 0, BT * sizeof(float));
        memset(m->adv, 0, BT * sizeof(float));
        memset(m->mask, 0, BT * sizeof(float));
        for (int b = 0; b < nb; b++) {
            const int i = m->idx[b], P = ro->prompt_len[i];
            for (int j = 0; j < ro->resp_len[i]; j++) {
                size_t pos = (size_t)b * T + (size_t)(P - 1 + j);
                m->old[pos] = logp_old[i][j];
                m->ref[pos] = logp_ref[i][j];
                m->adv[pos] = adv[i];
                m->mask[pos] = 1.0f;
            }
        }
        gpt_forward(policy, m->inputs, m->targets, NULL, nb, T);
        gpt_token_logprobs(policy, m->logp); // (nb,T)

        double tokens_here = 0.0;
        for (size_t p = 0; p < BT; p++) tokens_here += m->mask[p];
        if (algo == PG_REINFORCE) {
            // loss = -(1/n) sum_i A_i sum_t logp_{i,t}
            for (size_t p = 0; p < BT; p++) {
                m->dlogp[p] = m->mask[p] != 0.0f ? -m->adv[p] / (float)n_all : 0.0f;
                st.pg_loss += m->mask[p] != 0.0f ? -(double)m->adv[p] * m->logp[p] / n_all : 0.0;
                double d = (double)m->logp[p] - m->old[p];
                st.approx_kl += m->mask[p] != 0.0f ? 0.5 * d * d / (double)num_tokens : 0.0;
            }
        } else {
            // clipped surrogate, mean over this micro-batch's tokens -> rescaled
            // to the mean over the whole batch's tokens
            float clipfrac = 0.0f, approx_kl = 0.0f;
            double loss = rl_ppo_policy_loss(m->logp, m->old, m->adv, m->mask, BT, clip, m->dlogp,
                                             &clipfrac, &approx_kl);
            const double w = tokens_here / (double)num_tokens;
            st.pg_loss += loss * w;
            st.clipfrac += clipfrac * w;
            st.approx_kl += approx_kl * w;
            for (size_t p = 0; p < BT; p++) m->dlogp[p] *= (float)w;
            if (algo == PG_GRPO) {
                // + beta * mean_t k3(logp, logp_ref); d k3 / d logp = 1 - exp(logp_ref - logp)
                for (size_t p = 0; p < BT; p++) {
                    if (m->mask[p] == 0.0f) continue;
                    st.kl_loss += rl_kl_token(m->logp[p], m->ref[p], 3) / (double)num_tokens;
                    m->dlogp[p] += beta * (1.0f - expf(m->ref[p] - m->logp[p])) / (float)num_tokens;
                }
            }
        }
        gpt_hidden_grad(policy);
        gpt_lm_head_backward(policy, m->dlogp);
        gpt_backward_trunk(policy);
    }
    // every rank's gradient is already its part of the global means: sum them
    gpt_ensure_grads(policy);
    dp_allreduce_scaled(&run->world.dp, policy->grads_memory, policy->num_parameters, 1.0f);
    double sums[4] = {st.pg_loss, st.kl_loss, st.clipfrac, st.approx_kl};
    comm_allreduce_f64(run->world.par.dp, sums, 4);
    st.pg_loss = sums[0];
    st.kl_loss = sums[1];
    st.clipfrac = sums[2];
    st.approx_kl = sums[3];
    st.grad_norm = dp_update(&run->world.dp, policy, &run->adamw);
    st.loss = st.pg_loss + (algo == PG_GRPO ? beta * st.kl_loss : 0.0);
    if (!isfinite(st.loss)) fatalf("rlhfd %s: loss is %g (try a lower train.lr)", run->cmd, st.loss);
    return st;
}

static double mean_of_local(const float* x, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += x[i];
    return n > 0 ? s / n : 0.0;
}

// Mean and unbiased std of x over every dp rank's n values (collectives).
static double mean_of(RLRun* run, const float* x, int n) {
    double a[2] = {0.0, (double)n};
    for (int i = 0; i < n; i++) a[0] += x[i];
    comm_allreduce_f64(run->world.par.dp, a, 2);
    return a[1] > 0 ? a[0] / a[1] : 0.0;
}

static double std_of(RLRun* run, const float* x, int n) {
    double mu = mean_of(run, x, n), a[2] = {0.0, (double)n};
    for (int i = 0; i < n; i++) a[0] += ((double)x[i] - mu) * ((double)x[i] - mu);
    comm_allreduce_f64(run->world.par.dp, a, 2);
    return a[1] > 1 ? sqrt(a[0] / (a[1] - 1)) : 0.0;
}

// The checkpoint's state.json fields (readable; the run state has the exact values).
static json_t* pg_state_json(PgAlgo algo, double baseline, const KLController* klc) {
    json_t* state = json_object();
    if (algo == PG_REINFORCE) json_object_set_new(state, "baseline", json_real(baseline));
    json_object_set_new(state, "kl_coef", json_real(klc->value));
    return state;
}

int pg_family_main(int argc, char** argv, int algo_id) {
    if (algo_id < PG_REINFORCE || algo_id > PG_RLOO) fatalf("pg_family_main: bad algorithm %d", algo_id);
    const PgAlgo algo = (PgAlgo)algo_id;
    const char* cmd = algo == PG_REINFORCE ? "pg" : algo == PG_GRPO ? "grpo" : "rloo";
    const char* synopsis = algo == PG_REINFORCE ? SYNOPSIS_PG : algo == PG_GRPO ? SYNOPSIS_GRPO : SYNOPSIS_RLOO;
    RLRun run;
    if (rl_run_parse(&run, cmd, synopsis, argc, argv)) return 0;
    Config* cfg = run.cfg;
    const int G = algo == PG_REINFORCE ? 1 : config_int(cfg, "grpo.group");
    if (algo != PG_REINFORCE && G < 2) // before loading anything: a one-line error
        fatalf("%s: grpo.group = %d: %s needs at least 2 samples per prompt", config_origin(cfg, "grpo.group"), G,
               cmd);
    rl_run_open(&run);
    const int epochs = config_int(cfg, algo == PG_REINFORCE ? "pg.epochs" : "grpo.epochs");
    const float clip = config_float(cfg, "grpo.clip");
    const int scale_std = config_bool(cfg, "grpo.scale_std");
    const float baseline_decay = config_float(cfg, "pg.baseline_decay");
    const int kl_est = config_int(cfg, "rl.kl_estimator");
    KLController klc;
    kl_controller_init(&klc, config_float(cfg, "rl.kl_coef"), config_bool(cfg, "rl.kl_adaptive"),
                       config_float(cfg, "rl.kl_target"), config_float(cfg, "rl.kl_horizon"));
    const int mb = config_int(cfg, "train.batch");
    const int ctx = run.policy.config.max_seq_len;
    gpt_reserve(&run.policy, mb, ctx);
    MicroBatch m;
    micro_batch_init(&m, mb, ctx);

    // this rank's prompts: run.seq0 .. run.seq0 + run.nloc - 1, G samples each
    const int n = run.nloc * G;
    const char** batch_prompts = mallocCheck((size_t)run.batch * sizeof(char*));
    const char** prompts = mallocCheck((size_t)n * sizeof(char*));
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    float* seq_reward = mallocCheck((size_t)n * sizeof(float)); // the reward the advantages see
    float* adv = mallocCheck((size_t)n * sizeof(float));
    double baseline = 0.0;
    int have_baseline = 0;
    RunState* resumed = rl_resume_state(&run);
    if (resumed) {
        run_state_get_kl(resumed, "kl", &klc);
        baseline = run_state_get_f64(resumed, "baseline");
        have_baseline = (int)run_state_get_i64(resumed, "have_baseline");
    }

    for (int it = run.first_iter; it <= run.iterations; it++) {
        RLIterStats st = {0};
        const float beta = klc.value;
        // ---- rollouts: G samples of each prompt, consecutive (the groups)
        rl_next_prompts(&run, batch_prompts, run.batch);
        for (int i = 0; i < n; i++) {
            prompts[i] = batch_prompts[run.seq0 + i / G];
            seeds[i] = rl_sample_seed(&run, it, run.seq0 * G + i);
        }
        Rollout ro;
        rollout_generate(&run.policy, run.tok, prompts, n, seeds, &run.rollout, &ro);
        st.t_generate = ro.t_generate;
        st.rollout_tokens = ro.new_tokens;

        double t0 = now_seconds();
        rollout_score(&ro, run.reward, ro.scores);
        st.t_score = now_seconds() - t0;
        st.gold = rl_gold_mean(&run, &ro, &st.t_score);

        t0 = now_seconds();
        float** logp_old = rl_alloc_per_token(&ro);
        float** logp_ref = rl_alloc_per_token(&ro);
        rollout_logprobs(&run.policy, &ro, mb, logp_old, &st.entropy);
        rollout_logprobs(&run.ref, &ro, mb, logp_ref, NULL);
        st.t_logprobs = now_seconds() - t0;

        // ---- sequence rewards and advantages
        double kl_sum = 0.0, len_sum = 0.0;
        for (int i = 0; i < n; i++) {
            double kl = 0.0, kl_pen = 0.0;
            for (int j = 0; j < ro.resp_len[i]; j++) {
                kl += (double)logp_old[i][j] - logp_ref[i][j];
                kl_pen += rl_kl_token(logp_old[i][j], logp_ref[i][j], kl_est);
            }
            kl_sum += kl;
            len_sum += ro.resp_len[i];
            seq_reward[i] = algo == PG_GRPO ? ro.scores[i] : (float)(ro.scores[i] - beta * kl_pen);
        }
        st.n_seq = n;
        st.n_tok = (double)ro.new_tokens;
        st.reward = n ? mean_of_local(ro.scores, n) : 0.0;
        st.kl = n ? kl_sum / n : 0.0;
        st.response_len = n ? len_sum / n : 0.0;
        rl_reduce_stats(&run, &st);
        int zero_groups = 0; // groups whose samples all scored the same: no signal
        if (algo == PG_REINFORCE) {
            double batch_mean = mean_of(&run, seq_reward, n);
            if (baseline_decay <= 0.0f || !have_baseline) baseline = batch_mean;
            for (int i = 0; i < n; i++) adv[i] = (float)(seq_reward[i] - baseline);
            baseline = baseline_decay * baseline + (1.0 - baseline_decay) * batch_mean;
            have_baseline = 1;
        } else {
            if (algo == PG_GRPO) rl_grpo_advantages(seq_reward, (size_t)run.nloc, G, scale_std, adv);
            else rl_rloo_advantages(seq_reward, (size_t)run.nloc, G, adv);
            for (int g = 0; g < run.nloc; g++) {
                int same = 1;
                for (int k = 1; k < G; k++) same &= seq_reward[g * G + k] == seq_reward[g * G];
                zero_groups += same;
            }
        }

        // ---- update
        t0 = now_seconds();
        StepStats first = {0}, last = {0};
        for (int e = 0; e < epochs; e++) {
            last = train_step(&run, algo, &ro, logp_old, logp_ref, adv, beta, clip, &m);
            if (e == 0) first = last;
        }
        st.t_train = now_seconds() - t0;
        kl_controller_update(&klc, (float)st.kl, run.batch * G);
        int64_t zg = zero_groups;
        comm_allreduce(run.world.par.dp, &zg, 1, COMM_I64, COMM_SUM);
        zero_groups = (int)zg;
        const double seq_reward_mean = mean_of(&run, seq_reward, n);
        const double score_std = std_of(&run, ro.scores, n), adv_std = std_of(&run, adv, n);

        json_t* extra = json_object();
        json_object_set_new(extra, "loss", json_real(first.loss));
        json_object_set_new(extra, "pg_loss", json_real(first.pg_loss));
        if (algo == PG_GRPO) json_object_set_new(extra, "kl_loss", json_real(first.kl_loss));
        if (algo != PG_REINFORCE) {
            json_object_set_new(extra, "clipfrac", json_real(last.clipfrac));
            json_object_set_new(extra, "zero_adv_groups", json_integer(zero_groups));
        }
        json_object_set_new(extra, "approx_kl", json_real(last.approx_kl));
        if (algo == PG_REINFORCE) json_object_set_new(extra, "baseline", json_real(baseline));
        json_object_set_new(extra, "seq_reward", json_real(seq_reward_mean));
        json_object_set_new(extra, "score_std", json_real(score_std));
        json_object_set_new(extra, "adv_std", json_real(adv_std));
        json_object_set_new(extra, "kl_coef", json_real(beta));
        json_object_set_new(extra, "grad_norm", json_real(first.grad_norm));
        rl_log_iteration(&run, it, &st, extra);

        rl_free_per_token(logp_old, n);
        rl_free_per_token(logp_ref, n);
        rollout_free(&ro);
        rl_maybe_evaluate(&run, it);
        if (run.ckpt_due) { // exact resume: the KL controller and the baseline
            RunState rs;
            run_state_init(&rs);
            run_state_put_kl(&rs, "kl", &klc);
            run_state_put_f64(&rs, "baseline", baseline);
            run_state_put_i64(&rs, "have_baseline", have_baseline);
            rl_checkpoint(&run, it, NULL, 0, pg_state_json(algo, baseline, &klc), &rs);
            run_state_free(&rs);
        }
        if (run.stop) break; // graceful stop after the checkpoint
    }

    json_t* summary = json_object();
    json_object_set_new(summary, "algorithm", json_string(cmd));
    json_object_set_new(summary, "group", json_integer(G));
    json_object_set_new(summary, "kl_coef", json_real(klc.value));
    rl_finish(&run, NULL, 0, pg_state_json(algo, baseline, &klc), summary);

    free(batch_prompts);
    free(prompts);
    free(seeds);
    free(seq_reward);
    free(adv);
    micro_batch_free(&m);
    rl_run_close(&run);
    return 0;
}

int cmd_grpo(int argc, char** argv) { return pg_family_main(argc, argv, PG_GRPO); }
