// nlpo_mask.h - NLPO's action mask (RL4LMs, Ramamurthy et al. 2022): PPO
// whose action space at each step is the top-p set of a masking policy (a
// frozen copy of the policy, refreshed every few iterations). The policy
// samples within the mask, and its log-probs in the PPO loss are those of
// its logits with everything outside the mask set to a huge negative value
// (invalid-action masking): the softmax renormalises over the kept tokens,
// and masked tokens get no gradient.
//
// Three layers, each usable alone:
//   - row math on one logits row (V): the top-p set, masking, the masked
//     log-prob and its gradient (checked against PyTorch, tests/nlpo_ilql);
//   - nlpo_mask_policy_logits: the same masks applied to a GPT's LM-head
//     logits after a teacher-forced forward, so gpt_token_logprobs and
//     gpt_lm_head_backward see the masked distribution;
//   - NlpoSampler: a LogitsHook (generate.h) that runs the masking policy on
//     the rows being decoded (its own KV cache), masks the policy's logits
//     before sampling, and keeps every mask it made so training uses exactly
//     the masks the samples were drawn under.
// Tensor parallelism: the row functions take one logits row; over
// vocab-parallel logits the top-p threshold needs the global softmax mass
// (an all-reduce of each shard's max / sum-exp, then of the mass above a
// candidate threshold), after which nlpo_apply_mask runs per shard unchanged.
#pragma once
#include <stddef.h>
#include "generate.h"
#include "gpt.h"

// The logit given to masked tokens: exp underflows to 0 in the softmax
// (finite, unlike -inf, so 0 * logit stays 0 in entropy sums).
#define NLPO_MASKED_LOGIT (-1e30f)
// In the teacher-forced logits (nlpo_mask_policy_logits) masked tokens sit
// this far below the row's best kept logit instead (see there: denormals).
#define NLPO_TRAIN_MASK_GAP 60.0f

// keep (V) = 1 for the top-p set of softmax(logits): the smallest set of the
// most likely tokens (ties: lower id first) whose probability mass reaches
// top_p; the most likely token is always kept (top_p >= 1: every token).
// This is the sampler's nucleus rule (generate.c) at temperature 1.
// scratch: nlpo_scratch_bytes(V) bytes, or NULL to allocate. Returns #kept.
size_t nlpo_scratch_bytes(int V);
int nlpo_topp_mask(const float* logits, int V, float top_p, unsigned char* keep, void* scratch);
// logits[v] = NLPO_MASKED_LOGIT wherever keep[v] == 0.
void nlpo_apply_mask(float* logits, const unsigned char* keep, int V);
// log softmax over the kept tokens at target (keep[target] must be 1), in
// double; dlogits (V, may be NULL) = d logp / d logits = onehot(target) - p
// over the kept tokens, 0 outside the mask.
double nlpo_masked_logprob(const float* logits, const unsigned char* keep, int V, int target, float* dlogits);

// After gpt_forward(policy, inputs, targets, ...): masks row r = b*T + t of
// the logits with keep_rows[r] (V bytes; NULL = leave the row unmasked; the
// row's target is always kept; masked logits = best kept - NLPO_TRAIN_MASK_GAP,
// a softmax weight of e^-60: 0 in float32) and recomputes the per-position losses, so
// that gpt_token_logprobs returns masked log-probs and gpt_lm_head_backward
// the masked gradient. Rows go through the host (ops->to_host/to_device).
void nlpo_mask_policy_logits(GPT* policy, const unsigned char* const* keep_rows);

// The sampling hook. Usage per rollout:
//   NlpoSampler s;  nlpo_sampler_begin(&s, &mask_model, n, max_new, top_p);
//   rc.hook = &s.hook;  rollout_generate(policy, ..., n, ..., &rc, &ro);
//   nlpo_sampler_end(&s);                          // frees the KV cache
//   ... nlpo_sampler_mask(&s, i, j) = the mask of response token j of sequence i ...
//   nlpo_sampler_free(&s);
typedef struct {
    GPT* mask_model;       // frozen masking policy (same vocab and context as the policy)
    void* kv;              // its KVCache (n sequences) while generating
    float top_p;
    int n, max_new, V;
    unsigned char* keep;   // (n, max_new, V) masks of every sampled token
    int* count;            // (n) masks made per sequence
    float* mask_logits;    // (min(n, 512), V) the masking policy's logits of one call
    int cap_rows;
    char* scratch;         // (threads, nlpo_scratch_bytes(V))
    int threads;
    double kept_sum;       // sum over masks of the tokens kept (stats)
    size_t masks;          // masks made
    LogitsHook hook;       // {nlpo_sampler hook, this}
} NlpoSampler;

void nlpo_sampler_begin(NlpoSampler* s, GPT* mask_model, int n, int max_new, float top_p);
void nlpo_sampler_end(NlpoSampler* s);
// The mask (V bytes) sequence i's response token j was sampled under.
const unsigned char* nlpo_sampler_mask(const NlpoSampler* s, int i, int j);
void nlpo_sampler_free(NlpoSampler* s);
