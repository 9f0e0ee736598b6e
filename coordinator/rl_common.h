// rl_common.h - plumbing shared by the RL commands (rlhfd ppo, pg, grpo,
// rloo, quark, dpo): options and config, the policy and its frozen
// reference, the reward and gold scorers, prompts, metrics lines with phase
// timings, checkpoints, the final held-out evaluation and the summary line.
//
//   RLRun run;
//   if (rl_run_parse(&run, "ppo", SYNOPSIS, argc, argv)) return 0;  // --help-config / --print-config
//   rl_run_open(&run);                       // models, reward, gold, prompts, run dir
//   for (int it = 1; it <= run.iterations; it++) {
//       const char* prompts[...]; rl_next_prompts(&run, prompts, run.batch);
//       ... rollouts (worker/rollout.h), update ...
//       RLIterStats st = {...};  json_t* extra = json_object(); ... algorithm's stats ...
//       rl_log_iteration(&run, it, &st, extra);   // metrics.jsonl + stderr; steals extra
//       rl_maybe_evaluate(&run, it);              // held-out eval every rl.eval_every
//   }
//   rl_finish(&run, NULL, 0, NULL, summary_extra);  // checkpoint, final eval, summary line
//   rl_run_close(&run);
// Same config + train.seed -> the same prompts, seeds and metrics.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <jansson.h>
#include "../common/config.h"
#include "../common/safetensors.h"
#include "../common/tokenizer.h"
#include "../worker/gpt.h"
#include "../worker/rewards.h"
#include "../worker/rollout.h"
#include "run_control.h"
#include "run_state.h"
#include "train_util.h"

typedef struct {
    const char* cmd;      // "ppo", ...
    Config* cfg;
    int overwrite;
    const Ops* ops;
    GPT policy;           // trained
    GPT ref;              // frozen reference (same init)
    Tokenizer* tok;
    RewardFn* reward;     // rl.reward (required)
    RewardFn* gold;       // rl.gold (NULL if empty)
    char** prompts;       // rl.prompts (those that fit the context)
    size_t num_prompts;
    char** val_prompts;   // first rl.eval_prompts of rl.val_prompts (NULL/0 if empty)
    size_t num_val;
    RolloutConfig rollout;
    AdamWConfig adamw;
    uint64_t seed;        // train.seed
    int iterations, batch, eval_every;
    const char* run_dir;
    FILE* metrics;
    char metrics_path[4096];
    // prompt order: a permutation of the prompts, reshuffled every pass
    size_t* order;
    size_t order_pos;
    uint64_t order_pass;
    // totals over the run (seconds)
    double t_start, t_generate, t_score, t_logprobs, t_train, t_eval;
    size_t rollout_tokens;
    char checkpoint[4200]; // last checkpoint written
    // the world (mpirun): rank 0 writes; each dp rank owns sequences
    // [seq0, seq0 + nloc) of every iteration's rl.batch
    TrainWorld world;
    int seq0, nloc;
    // the coordinator's loop: status socket, reports, control actions
    RunControl control;
    int stop;             // a graceful stop was decided (POST /stop, SIGTERM/SIGUSR1): leave the loop
    int iter_done;        // iterations completed (the final checkpoint's number)
    // checkpoints and exact resume (--resume auto|CKPT|RUN_DIR)
    const char* resume_spec;
    char resume_ckpt[4096];
    RunState resume;      // the loaded run state (resuming)
    int resuming;
    int first_iter;       // 1, or the iteration after the checkpoint's
    int ckpt_every;       // train.checkpoint_every (iterations; 0: only at the end)
    int ckpt_due;         // rl_log_iteration: write a checkpoint after this iteration
    int last_ckpt_iter;
    double comm_seconds;  // time in collectives up to the last metrics row
} RLRun;

// Parses --config FILE --set K=V... --model PATH --overwrite --print-config
// --help-config into run (zeroed first) and builds the config (defaults <
// file < --set < --model). Returns 1 when the command is done (help or
// print-config was asked for), 0 to go on. Usage errors exit 2.
int rl_run_parse(RLRun* run, const char* cmd, const char* synopsis, int argc, char** argv);
// Loads the policy and the reference from model.init (fatal if empty: "no
// --model"), the tokenizer, rl.reward (fatal if empty), rl.gold, the prompts
// (dropping those that do not leave a response room in the context, with a
// warning), and starts run.dir (metrics.jsonl, config.json).
void rl_run_open(RLRun* run);
void rl_run_close(RLRun* run);

// The next n training prompts (borrowed): a seeded shuffle of rl.prompts,
// reshuffled after every pass. Every rank draws the same n.
void rl_next_prompts(RLRun* run, const char** out, int n);
// This rank's share of an iteration's rl.batch sequences: draws the global
// batch's prompts (rl_next_prompts) and fills prompts/seeds (run->nloc each)
// for global sequences run->seq0 .. run->seq0 + run->nloc - 1.
void rl_local_prompts(RLRun* run, int iter, const char** prompts, uint64_t* seeds);
// Sampling seed of sequence i of iteration iter (distinct per iteration and sequence).
uint64_t rl_sample_seed(const RLRun* run, int iter, int i);
// Allocates (n) per-token arrays of r->resp_len[i] floats (zeroed) / frees them.
float** rl_alloc_per_token(const Rollout* r);
void rl_free_per_token(float** a, int n);

// Per-iteration statistics. Commands fill them with this rank's means over
// its n_seq sequences (entropy over n_tok tokens); rl_reduce_stats turns them
// into the global means (collective) before the KL controller or the log.
typedef struct {
    double n_seq, n_tok;  // weights of the local means
    double reward;        // mean rl.reward of this iteration's samples
    double gold;          // mean gold score of the same samples (0 if no gold)
    double kl;            // mean per-sequence sum of (logp - logp_ref), nats
    double entropy;       // mean per-token entropy of the policy on its samples
    double response_len;  // mean sampled tokens (eot included)
    double t_generate, t_score, t_logprobs, t_train; // seconds of this iteration
    size_t rollout_tokens;// sampled tokens this iteration
} RLIterStats;

// Local means -> global means over the dp group (times: the slowest rank).
void rl_reduce_stats(RLRun* run, RLIterStats* st);
// Global weighted mean of per-rank values (collective; the world's dp group).
double rl_global_mean(RLRun* run, double local_mean, double local_weight);
// rl_whiten (unbiased std, mean shifted to 0) and rl_explained_variance over
// every dp rank's n values (collectives; exactly the local functions at dp=1).
void rl_whiten_global(RLRun* run, float* x, size_t n);
double rl_explained_variance_global(RLRun* run, const float* v, const float* ret, size_t n);
// Mean rl.gold score of r's samples (0 without a gold scorer); adds the time to *t_score.
double rl_gold_mean(RLRun* run, const Rollout* r, double* t_score);
// Writes one metrics.jsonl line {iter, reward, gold, kl, entropy,
// response_len, <extra's fields>, t_generate, t_score, t_logprobs, t_train,
// rollout_tokens_per_s} and a progress line on stderr; steals extra (may be NULL).
// Collective: every rank reports to the coordinator, which publishes /status
// and decides. POST /checkpoint writes a policy checkpoint here; a stop
// (POST /stop, SIGTERM, SIGUSR1) sets run->stop: the command leaves its loop
// (`if (run.stop) break;`) and rl_finish checkpoints the iterations done.
void rl_log_iteration(RLRun* run, int iter, const RLIterStats* st, json_t* extra);
// Held-out evaluation of the policy on the val prompts (rollout_evaluate with
// the run's sampling config and seed train.seed + 7777). Adds to t_eval.
RolloutEval rl_evaluate(RLRun* run);
// Every rl.eval_every iterations (not the last: rl_finish does that one):
// evaluates and writes {"iter", "eval_gold", "eval_reward", "eval_kl"} as
// its own metrics line (marked "eval": true) and on stderr.
void rl_maybe_evaluate(RLRun* run, int iter);
// Its parts, for commands that evaluate their own way (Quark's control token):
// whether iteration iter is due, and the metrics line + stderr line (rank 0).
int rl_eval_due(const RLRun* run, int iter);
void rl_log_evaluation(RLRun* run, int iter, const RolloutEval* ev);
// Checkpoint RUN_DIR/ckpt-<iter> of the policy (optimizer included; state
// {"kind", "iterations", <state_extra>}, extra tensors) with the run state
// for exact resume: rs (may be NULL) holds the command's own items (KL
// controller, value head, RNGs, pools...); the iteration, prompt order,
// totals and metrics mark are added here. Collective; world rank 0 writes;
// a failed write is a warning. Steals state_extra (may be NULL).
// The loop of a command:
//   rl_log_iteration(&run, it, &st, extra);
//   if (run.ckpt_due) { RunState rs; run_state_init(&rs); ...puts...;
//                       rl_checkpoint(&run, it, NULL, 0, NULL, &rs); run_state_free(&rs); }
//   if (run.stop) break;
// and before it, for `for (it = run.first_iter; ...)`, restore the same items
// from rl_resume_state(&run) when it is not NULL.
void rl_checkpoint(RLRun* run, int iter, const StWriteTensor* extra, int num_extra, json_t* state_extra,
                   RunState* rs);
// The run state of the checkpoint being resumed, or NULL for a fresh run.
RunState* rl_resume_state(RLRun* run);
// Writes the final checkpoint RUN_DIR/ckpt-<iterations> (optimizer included,
// state {"kind": cmd, "iterations", <state_extra>}, plus extra tensors),
// closes metrics.jsonl, runs the final held-out evaluation and prints the
// summary JSON as the last stdout line: gold, reward, kl, response_len,
// checkpoint, run_dir, iterations, seconds, t_generate, t_score, t_logprobs,
// t_train, t_eval, rollout_tokens_per_s, then summary_extra's fields.
// Steals state_extra and summary_extra (may be NULL).
void rl_finish(RLRun* run, const StWriteTensor* extra, int num_extra, json_t* state_extra,
               json_t* summary_extra);
