// cmd_nlpo.c - `rlhfd nlpo`: NLPO (Natural Language Policy Optimization,
// RL4LMs, Ramamurthy et al. 2022) = PPO (coordinator/ppo_core.c) whose action
// space is masked: a masking policy - a frozen copy of the policy, refreshed
// every nlpo.mask_refresh iterations - keeps its top-p (nlpo.top_p) tokens at
// every step. The policy samples within that mask (a LogitsHook running the
// masking policy beside the policy, worker/nlpo_mask.h), and the old and new
// log-probs of the PPO loss are those of the masked logits (-inf outside the
// mask, renormalised), using the very masks the samples were drawn under.
// The KL penalty is to the unmasked reference, as in PPO: the masked policy is
// what was sampled, so log pi_masked - log ref is its per-token KL estimate.
// The held-out evaluation samples the trained policy itself (no mask), like
// every other method's.
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "ppo_core.h"
#include "run_state.h"
#include "../common/check.h"
#include "../worker/model_io.h"
#include "../worker/nlpo_mask.h"

#define CMD "nlpo"

static const char* const SYNOPSIS =
    "--model SFT [--config FILE] [--set KEY=VALUE]... [--overwrite]\n"
    "\n"
    "NLPO (RL4LMs): PPO whose action space at each step is the top-p set (nlpo.top_p)\n"
    "of a masking policy, a frozen copy of the policy refreshed every nlpo.mask_refresh\n"
    "iterations. The policy samples within the mask and is trained on its masked\n"
    "log-probs; everything else is rlhfd ppo (keys rl.*, ppo.*, train.*): clipped\n"
    "surrogate, value head, GAE, KL penalty to the frozen reference. Writes\n"
    "run.dir/metrics.jsonl (plus mask_tokens: mean size of the action set), a\n"
    "checkpoint, and a JSON summary (held-out gold, reward, kl) as the last stdout line.\n"
    "Example: rlhfd nlpo --config deploy/configs/nlpo.ini --model runs/sft --set rl.reward=rm:runs/rm\n"
    "Keys: rlhfd nlpo --help-config (sections rl, ppo, nlpo, train).";

typedef struct {
    RLRun* run;
    GPT mask_model;      // the masking policy
    float top_p;
    int refresh;         // iterations between copies of the policy into the mask model
    int refreshes;       // copies made so far
    NlpoSampler sampler; // this iteration's masks
    int have_sampler;
    const unsigned char** keep_rows; // (B*T) scratch for nlpo_mask_policy_logits
    size_t keep_cap;
    double kept_total;   // over the run: tokens kept per mask
    size_t masks_total;
} Nlpo;

static void nlpo_open(void* ctx, RLRun* run) {
    Nlpo* s = ctx;
    s->run = run;
    s->top_p = config_float(run->cfg, "nlpo.top_p");
    s->refresh = config_int(run->cfg, "nlpo.mask_refresh");
    // Under tensor parallelism the masking policy is sharded like the policy:
    // its rows' logits come back from generation gathered over the vocab
    // shards, so every tp rank computes the same top-p sets; the policy's
    // shard of each row is then masked with them (nlpo_mask_policy_logits:
    // the row max and the cross-entropy are combined over the shards).
    model_load_tp(&s->mask_model, config_str(run->cfg, "model.init"), run->ops, run->world.par.tp, NULL);
    gpt_config_expect(&run->policy.config, &s->mask_model.config, config_str(run->cfg, "model.init"));
}

// The masking policy <- the policy (through the host: the one copy every backend has).
static void refresh_mask_model(Nlpo* s) {
    const GPT* p = &s->run->policy;
    size_t bytes = p->num_parameters * sizeof(float);
    float* host = mallocCheck(bytes);
    p->ops->to_host(host, p->params_memory, bytes);
    s->mask_model.ops->to_device(s->mask_model.params_memory, host, bytes);
    free(host);
    s->refreshes++;
}

// Exact resume: the masking policy (it may lag the policy by up to
// nlpo.mask_refresh - 1 iterations), the refresh count and the mask statistics.
static void nlpo_save_state(void* ctx, RLRun* run, RunState* rs) {
    Nlpo* s = ctx;
    (void)run;
    // the whole model (the tp shards gathered), so any tp size can resume it
    size_t bytes = s->mask_model.num_parameters_full * sizeof(float);
    float* full = mallocCheck(bytes);
    gpt_gather_full(&s->mask_model, s->mask_model.params_memory, full);
    run_state_put_blob(rs, "nlpo.mask_model", full, bytes);
    free(full);
    run_state_put_i64(rs, "nlpo.refreshes", s->refreshes);
    run_state_put_f64(rs, "nlpo.kept_total", s->kept_total);
    run_state_put_i64(rs, "nlpo.masks_total", (int64_t)s->masks_total);
}

static void nlpo_restore_state(void* ctx, RLRun* run, const RunState* rs) {
    Nlpo* s = ctx;
    (void)run;
    void* data = NULL;
    size_t len = 0;
    run_state_get_blob(rs, "nlpo.mask_model", &data, &len);
    if (len != s->mask_model.num_parameters_full * sizeof(float))
        fatalf("run state: nlpo.mask_model holds %zu bytes, expected %zu", len,
               s->mask_model.num_parameters_full * sizeof(float));
    gpt_shard_from_full(&s->mask_model, data, s->mask_model.params_memory);
    free(data);
    s->refreshes = (int)run_state_get_i64(rs, "nlpo.refreshes");
    s->kept_total = run_state_get_f64(rs, "nlpo.kept_total");
    s->masks_total = (size_t)run_state_get_i64(rs, "nlpo.masks_total");
}

static void nlpo_begin_rollout(void* ctx, RLRun* run, int iter, int n, RolloutConfig* rc) {
    (void)run;
    Nlpo* s = ctx;
    if (iter > 1 && (iter - 1) % s->refresh == 0) refresh_mask_model(s);
    if (s->have_sampler) nlpo_sampler_free(&s->sampler);
    nlpo_sampler_begin(&s->sampler, &s->mask_model, n, rc->max_new_tokens, s->top_p);
    s->have_sampler = 1;
    rc->hook = &s->sampler.hook;
}

static void nlpo_end_rollout(void* ctx, const Rollout* ro) {
    (void)ro;
    Nlpo* s = ctx;
    nlpo_sampler_end(&s->sampler); // the masks stay for the PPO epochs
    s->kept_total += s->sampler.kept_sum;
    s->masks_total += s->sampler.masks;
}

// Row b of the batch is sequence seq_of_row[b]; its response token j sits at
// position P-1+j and gets the mask it was sampled under.
static void nlpo_policy_forward(void* ctx, GPT* policy, const Rollout* ro, const int* seq_of_row, int nb, int T) {
    Nlpo* s = ctx;
    size_t BT = (size_t)nb * T;
    if (BT > s->keep_cap) {
        free(s->keep_rows);
        s->keep_rows = mallocCheck(BT * sizeof(*s->keep_rows));
        s->keep_cap = BT;
    }
    memset(s->keep_rows, 0, BT * sizeof(*s->keep_rows));
    for (int b = 0; b < nb; b++) {
        int i = seq_of_row[b], P = ro->prompt_len[i];
        for (int j = 0; j < ro->resp_len[i]; j++)
            s->keep_rows[(size_t)b * T + (size_t)(P - 1 + j)] = nlpo_sampler_mask(&s->sampler, i, j);
    }
    nlpo_mask_policy_logits(policy, s->keep_rows);
}

static void nlpo_iteration_done(void* ctx, json_t* extra) {
    Nlpo* s = ctx;
    double kept = s->sampler.masks ? s->sampler.kept_sum / (double)s->sampler.masks : 0.0;
    json_object_set_new(extra, "mask_tokens", json_real(kept));
    json_object_set_new(extra, "mask_refreshes", json_integer(s->refreshes));
}

static void nlpo_finish(void* ctx, json_t* state_extra, json_t* summary_extra) {
    Nlpo* s = ctx;
    json_object_set_new(state_extra, "nlpo_top_p", json_real(s->top_p));
    json_object_set_new(state_extra, "nlpo_mask_refresh", json_integer(s->refresh));
    json_object_set_new(summary_extra, "mask_tokens",
                        json_real(s->masks_total ? s->kept_total / (double)s->masks_total : 0.0));
    json_object_set_new(summary_extra, "mask_refreshes", json_integer(s->refreshes));
}

static void nlpo_close(void* ctx) {
    Nlpo* s = ctx;
    if (s->have_sampler) nlpo_sampler_free(&s->sampler);
    free(s->keep_rows);
    gpt_free(&s->mask_model);
}

int cmd_nlpo(int argc, char** argv) {
    Nlpo state;
    memset(&state, 0, sizeof state);
    PPOVariant v = {.ctx = &state,
                    .open = nlpo_open,
                    .begin_rollout = nlpo_begin_rollout,
                    .end_rollout = nlpo_end_rollout,
                    .policy_forward = nlpo_policy_forward,
                    .iteration_done = nlpo_iteration_done,
                    .finish = nlpo_finish,
                    .close = nlpo_close,
                    .save_state = nlpo_save_state,
                    .restore_state = nlpo_restore_state};
    return ppo_main(CMD, SYNOPSIS, argc, argv, &v);
}
