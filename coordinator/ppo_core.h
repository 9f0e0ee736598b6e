// ppo_core.h - the PPO trainer (InstructGPT / trlx recipe) shared by
// `rlhfd ppo` and the PPO variants (`rlhfd nlpo`: PPO in a masked action
// space). The whole command lives in ppo_main; a variant changes what it
// needs through a few hooks, all optional:
//
//   open            after rl_run_open (models, prompts, run dir): load what
//                   the variant needs (NLPO: the masking policy)
//   begin_rollout   before iteration iter samples n sequences: may install a
//                   LogitsHook in *rc (NLPO: sample within the mask)
//   end_rollout     after the generation
//   policy_forward  after EVERY teacher-forced gpt_forward of the policy on
//                   a packed batch (rows = sequences seq_of_row[0..nb), T
//                   positions): may rewrite its logits and losses (NLPO: the
//                   masks the samples were drawn under) before the old
//                   log-probs and the loss are read
//   iteration_done  adds the variant's fields to the iteration's metrics line
//   finish          adds fields to the checkpoint state and the summary line
//   close           frees what open made
//   save_state / restore_state   the variant's part of an exact-resume checkpoint
#pragma once
#include <jansson.h>
#include "rl_common.h"
#include "../worker/rollout.h"

typedef struct {
    void* ctx;
    void (*open)(void* ctx, RLRun* run);
    void (*begin_rollout)(void* ctx, RLRun* run, int iter, int n, RolloutConfig* rc);
    void (*end_rollout)(void* ctx, const Rollout* ro);
    void (*policy_forward)(void* ctx, GPT* policy, const Rollout* ro, const int* seq_of_row, int nb, int T);
    void (*iteration_done)(void* ctx, json_t* extra);
    void (*finish)(void* ctx, json_t* state_extra, json_t* summary_extra);
    void (*close)(void* ctx);
    // exact resume: the variant's items into / out of the checkpoint's run
    // state (every rank calls; only rank 0's rs is written). A variant
    // without them cannot be resumed (--resume is refused).
    void (*save_state)(void* ctx, RLRun* run, RunState* rs);
    void (*restore_state)(void* ctx, RLRun* run, const RunState* rs);
} PPOVariant;

// `rlhfd <cmd>` with PPO's options and config (sections rl, ppo, train, plus
// the variant's own keys); variant NULL = plain PPO. Returns the exit code.
int ppo_main(const char* cmd, const char* synopsis, int argc, char** argv, const PPOVariant* variant);
