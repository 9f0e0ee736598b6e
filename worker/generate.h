// generate.h - batched KV-cache decoding and sampling for a GPT.
//
// The unit of work is a "row": one token of one sequence at one position.
// A forward over a set of rows writes each row's K,V into its sequence's
// cache and lets each row's query attend to that sequence's cache up to and
// including its own position. So:
//   prefill = every prompt position of every sequence as rows (prompts of
//             different lengths in one batch; per layer all K,V are stored
//             before anyone attends, which keeps it causal),
//   decode  = one row per live sequence, at its next position.
// The LM head runs only for rows whose logits are wanted (the last prompt
// position, then each new row). All tensor math goes through model->ops, so
// a device backend works unchanged; logits come back to the host to sample.
#pragma once
#include <stdint.h>
#include "gpt.h"
#include "../common/rng.h"

// A hook on the logits of the rows a decoding step samples from, called after
// the model's forward and before sampling (NLPO: mask everything outside the
// masking policy's top-p; ILQL: add beta * (Q - V) from heads on the trunk).
// Rows are those of one gpt_forward_rows call: seq/pos/tok (R) as given to it
// (prefill rows included, so a hook with its own model can run the same rows
// through its own KV cache), want (R) the rows whose logits were computed;
// hidden (W,C) on the model's device: their final hidden state (lnf);
// logits (W,V) on the host, in row order, modified in place. What the hook
// leaves is what is sampled from, and what Generation.logprobs report.
// Hooks run on the calling thread, one chunk of rows at a time.
typedef struct {
    void (*fn)(void* ctx, const int* seq, const int* pos, const int* tok, const int* want, int R,
               const float* hidden, float* logits, int W, int V);
    void* ctx;
} LogitsHook;

typedef struct {
    int max_new_tokens; // upper bound on new tokens per sequence (>= 0)
    float temperature;  // 0 = greedy (argmax; ties -> lowest id)
    int top_k;          // keep the k most likely tokens; 0 = off
    float top_p;        // nucleus: smallest set of top tokens with mass >= top_p,
                        // after temperature and top-k; always keeps the top one. 1 = off
    int eot;            // stop after sampling this token (kept in the output); -1 = none
    const LogitsHook* hook; // NULL = none; see LogitsHook
} SampleConfig;

// The defaults of `rlhfd generate`: 64 tokens, temperature 1, no top-k/top-p, eot 50256.
SampleConfig sample_config_default(void);

typedef struct {
    int n;              // number of sequences
    int** tokens;       // tokens[i] (len[i]): the prompt followed by the new tokens
    int* len;           // total length of sequence i (<= model max_seq_len)
    int* prompt_len;    // length of prompt i; new tokens are tokens[i][prompt_len[i]..]
    float** logprobs;   // logprobs[i][j], j < len[i]-prompt_len[i]: log pi(new token j | prefix),
                        // the log-softmax of the model's raw logits (temperature 1, no top-k/top-p),
                        // i.e. the policy log-probability PPO needs, whatever the sampler did
                        // (with a LogitsHook: of the logits the hook left)
    int* hit_eot;       // 1 if sequence i stopped on the end token (which is its last token),
                        // 0 if it stopped at max_new_tokens or at the context length
} Generation;

// Generates continuations of n prompts in one batch. Sequence i samples with
// its own RNG seeded from seeds[i] (NULL = seed i), so a seed and a prompt give
// the same tokens whatever else is in the batch. A sequence stops at cfg->eot,
// after cfg->max_new_tokens new tokens, or when it fills the context.
// Empty prompts, prompts longer than the context and token ids outside the
// vocab are fatal errors. out is overwritten; free it with generation_free.
void gpt_generate(GPT* model, const int* const* prompts, const int* prompt_lens, int n,
                  const uint64_t* seeds, const SampleConfig* cfg, Generation* out);
void generation_free(Generation* g);

// ---- lower level: the cache and the row forward (used by gpt_generate and tests)

// K and V caches (L, S, maxT, C) each on the model's device, plus the row
// workspace (grown on demand). One cache serves S sequences.
typedef struct KVCache KVCache;
KVCache* kvcache_new(const GPT* model, int num_seqs);
void kvcache_free(KVCache* kv);

// Forward over R rows: row r is token tok[r] of sequence seq[r] at position
// pos[r]. Stores the rows' K,V in the cache, then each row attends to its
// sequence's cache [0..pos[r]], so every earlier position of that sequence
// must be in the cache already or among these rows. want_logits (R) flags
// the rows whose logits are computed (NULL = all); their logits are written
// to logits_out (#wanted, V) on the host, in row order. Returns #wanted.
int gpt_forward_rows(GPT* model, KVCache* kv, const int* seq, const int* pos, const int* tok,
                     int R, const int* want_logits, float* logits_out);
// The final hidden state (lnf) of the wanted rows of the last gpt_forward_rows
// call: (#wanted, C) on the model's device, valid until the next call.
const float* kvcache_last_hidden(const KVCache* kv);

// ---- sampling (host side), exposed for tests

// Each sequence owns an Rng (common/rng.h: xoshiro256** seeded by splitmix64)
// seeded with rng_seed(&rng, seed).

// log softmax(logits)[token] over V logits, computed in double.
float logprob_of(const float* logits, int V, int token);

// Picks a token from logits (V) by cfg (temperature, then top_k, then top_p).
// Temperature 0 is argmax and uses no randomness; otherwise exactly one
// uniform is drawn per call, so a sequence's RNG advances once per token.
// scratch: sample_scratch_bytes(V) bytes, or NULL to allocate one.
size_t sample_scratch_bytes(int V);
int sample_token(const float* logits, int V, const SampleConfig* cfg, Rng* rng, void* scratch);
