// rollout.h - what every on-policy RL algorithm shares: sample responses to
// prompts from the policy, decode and score them, and compute teacher-forced
// per-token log-probs of the responses under any model (policy, reference).
//
// Token convention (every RLHF stage, see coordinator/sft_data.h):
//   sequence = encode(prompt) ++ response tokens (++ eot if it stopped there)
// Response token j of sequence i is tokens[i][prompt_len[i] + j]; it is
// predicted at position prompt_len[i] - 1 + j. resp_len counts every sampled
// token, the eot included (it is an action of the policy: the KL and the
// log-probs cover it); the response TEXT excludes the eot.
//
// Typical iteration (PPO, REINFORCE, GRPO, RLOO):
//   Rollout ro;
//   rollout_generate(policy, tok, prompts, n, seeds, &rcfg, &ro);  // one batched gpt_generate
//   rollout_score(&ro, reward, ro.scores);                          // RewardFn on (prompt, text)
//   rollout_logprobs(policy, &ro, 16, logp_old, &entropy);           // (n) arrays of resp_len[i]
//   rollout_logprobs(ref,    &ro, 16, logp_ref, NULL);
//   ... train on padded batches made by rollout_pack ...
//   rollout_free(&ro);
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "generate.h"
#include "gpt.h"
#include "rewards.h"
#include "../common/tokenizer.h"

typedef struct {
    int max_new_tokens; // new tokens per response at most (eot included)
    float temperature;  // sampling temperature (1 = the policy itself; PPO wants 1)
    int top_k;          // 0 = off
    float top_p;        // 1 = off
    const LogitsHook* hook; // NULL = none: a hook on the sampled logits (NLPO mask, ILQL's beta*(Q-V))
} RolloutConfig;

// rl.max_new_tokens 24, temperature 1, no top-k/top-p.
RolloutConfig rollout_config_default(void);

typedef struct {
    int n;              // sequences
    char** prompts;     // (n) prompt text (owned copies)
    char** responses;   // (n) decoded response text, eot excluded (owned)
    int** tokens;       // (n) prompt ++ response tokens, len[i] each
    int* len;           // (n) all tokens
    int* prompt_len;    // (n) P
    int* resp_len;      // (n) len - P: sampled tokens, eot included (>= 1 unless max_new_tokens = 0)
    int* hit_eot;       // (n) 1 if the response ended with eot
    float** sample_logp;// (n) resp_len[i] each: log-prob of each sampled token under the distribution
                        // sampled from at temperature 1 (the policy's; with a hook, the hooked logits')
    float* scores;      // (n) room for the caller's rewards (rollout_score writes it); zeroed
    size_t new_tokens;  // sum of resp_len
    double t_generate;  // seconds in gpt_generate (+ encode/decode)
    double tokens_per_s;// new_tokens / t_generate
} Rollout;

// Encodes the n prompts (fatal if one is empty or leaves no room in the
// context for a response), samples one response per prompt in ONE batched
// gpt_generate call (sequence i with its own RNG seeded by seeds[i]; NULL =
// seed i), and decodes the responses. Prompts may repeat (GRPO: G seeds per
// prompt). The eot is tokenizer_eot(tok). out is overwritten.
void rollout_generate(GPT* policy, Tokenizer* tok, const char* const* prompts, int n,
                      const uint64_t* seeds, const RolloutConfig* cfg, Rollout* out);
// out (r->n) = reward(prompt, response text) of every sequence (out may be r->scores).
void rollout_score(const Rollout* r, RewardFn* reward, float* out);
void rollout_free(Rollout* r);

// Teacher-forced log-probs of the response tokens of r under model, in padded
// batches of `batch` sequences (<= 0: 16): logp[i][j] = log p(response token j
// | prefix), j < resp_len[i]; logp[i] must hold resp_len[i] floats. entropy
// (may be NULL) receives the mean entropy of the model's next-token
// distribution over all response positions (nats; log only).
void rollout_logprobs(GPT* model, const Rollout* r, int batch, float** logp, double* entropy);
// The same for any token sequences (DPO: chosen/rejected pairs): sequence i
// is seqs[i] (lens[i]) whose first prompt_lens[i] tokens are the prompt;
// logp[i] gets lens[i] - prompt_lens[i] floats.
void sequence_logprobs(GPT* model, const int* const* seqs, const int* lens, const int* prompt_lens,
                       int n, int batch, float** logp, double* entropy);

// Packs the sequences idx[0..nb) (indices into seqs) into a padded batch for
// a teacher-forced forward:
//   inputs  (nb,T) = seqs[i][0..len-1), padded with pad_token
//   targets (nb,T) = seqs[i][t+1] at the response positions t = P-1 .. len-2,
//                    -1 elsewhere (prompt, pad)
// where T = max over the batch of len - 1 (returned). Response token j of
// row b is then predicted at [b, P_b - 1 + j]. inputs/targets need
// nb * max_len ints.
int rollout_pack(const int* const* seqs, const int* lens, const int* prompt_lens, const int* idx,
                 int nb, int pad_token, int* inputs, int* targets);

// Held-out evaluation (the demo's numbers): sample one response per prompt
// from policy (seed of prompt i = seed + i), then
//   reward = mean reward(prompt, response)       (reward may be NULL: 0)
//   gold   = mean gold(prompt, response)         (gold may be NULL: 0)
//   kl     = mean over sequences of sum_t (logp_policy - logp_ref) over the
//            sampled response tokens (nats per sequence; ref NULL: 0); with a
//            cfg->hook, logp_policy is the hooked distribution's (sample_logp:
//            the policy that was actually sampled from, e.g. ILQL's decoding)
//   response_len = mean sampled tokens per response (eot included)
typedef struct {
    double gold, reward, kl, response_len;
    int n;
} RolloutEval;
RolloutEval rollout_evaluate(GPT* policy, GPT* ref, RewardFn* reward, RewardFn* gold,
                             Tokenizer* tok, const char* const* prompts, int n, uint64_t seed,
                             const RolloutConfig* cfg);
