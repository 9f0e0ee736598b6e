// reward_model.h - a GPT trunk with a scalar head on the final token: the
// reward model of InstructGPT, trained on human rankings of K responses.
//
//   raw reward of a sequence = head_w . lnf[last real token] + head_b
//   reported reward          = raw - offset
//
// offset is the mean raw reward on SFT samples, so rewards are 0 on average
// there (the normalisation InstructGPT applies before PPO).
// Head init: N(0, std 1/sqrt(C)) weights (deterministic in the seed), bias 0,
// so the head starts with unit-scale outputs and the trunk gets gradient from
// the first step (a zero head would block it).
// Saved as a native checkpoint whose model.safetensors also holds "head.w" (C)
// and "head.b" (1) and whose metadata holds "reward_offset": any command that
// loads a GPT (model_load) still reads the trunk of a saved reward model.
#pragma once
#include <stdint.h>
#include <jansson.h>
#include "data_parallel.h"
#include "gpt.h"
#include "model_io.h"
#include "../common/tokenizer.h"

typedef struct {
    GPT gpt;          // trunk (its LM head is unused)
    float* head_w;    // (C) on the device (ops->alloc); grads in head_dw, moments managed by rm code
    float* head_b;    // (1)
    float offset;     // normalisation: reported reward = raw - offset (mean 0 on SFT samples)
    // head buffers: w and b are one device array of C+1 floats (head_w, head_b point into it)
    float* head_memory;  // (C+1)
    float* head_dw;      // (C+1) gradient of [w, b] (allocated with the head)
    float* head_db;      // = head_dw + C
    float* head_m;       // (C+1) AdamW moments (allocated on the first update)
    float* head_v;
    // last forward (for rm_backward): which rows of acts.lnf the head read
    int B, T;
    int* last_pos;       // (cap) host: b*T + lens[b]-1 of each sequence
    float* last_hidden;  // (cap, C) host copy of the rows the head read
    int cap;             // capacity of last_pos / last_hidden (sequences)
    float last_grad_norm;
} RewardModel;

void rm_init_from(RewardModel* rm, const char* model_path, const Ops* ops, uint64_t seed); // trunk from any --model
void rm_load(RewardModel* rm, const char* path, const Ops* ops);  // a saved RM (checkpoint dir or run dir); fatal if it has no head
void rm_save(const RewardModel* rm, const char* dir, json_t* state); // atomic, with checksum, like checkpoint_save
// rm_save that never exits (training checkpoints): opts as checkpoint_try_save
// (state, with_optimizer = the trunk's AdamW moments, extra files; no extra
// tensors of its own), plus the head and the offset. 0, or -1 with err.
int rm_save_try(const RewardModel* rm, const char* dir, const CheckpointSaveOptions* opts, char* err,
                size_t errlen);
// rewards (B) = head(lnf at position lens[b]-1) - offset, for B padded sequences tokens (B,T)
void rm_forward(RewardModel* rm, const int* tokens, const int* lens, int B, int T, float* rewards);
// convenience: score n texts (prompt, response) with the token convention above (batched internally)
void rm_score_texts(RewardModel* rm, const Tokenizer* tok, const char* const* prompts,
                    const char* const* responses, int n, float* out);
void rm_free(RewardModel* rm);
// The same under tensor parallelism (trunk sharded over tp, see gpt.h; the
// head is replicated and runs on every tp rank): model_load_tp underneath.
// Every other rm_* call then is collective over tp; rm_save writes from
// world rank 0 only.
void rm_init_from_tp(RewardModel* rm, const char* model_path, const Ops* ops, Comm* tp, uint64_t seed);
void rm_load_tp(RewardModel* rm, const char* path, const Ops* ops, Comm* tp);

// ---- beyond the shared interface

// Allocates and initialises the head (N(0, 1/sqrt(C)) from seed, bias 0,
// offset 0) of a reward model whose trunk rm->gpt is already built (e.g. by
// gpt_build + gpt_init_random, for a reward model from scratch). The other
// fields of *rm must be zero.
void rm_init_head(RewardModel* rm, uint64_t seed);
// Makes the trunk's activations hold at least B sequences of T tokens (they
// are sized once, by the first forward; growing them costs one forward).
// Call it first with the largest batch a run will use.
void rm_reserve(RewardModel* rm, int B, int T);
// Zeroes trunk and head gradients.
void rm_zero_grad(RewardModel* rm);
// Backward of a loss whose gradient w.r.t. the rewards of the last rm_forward
// is drewards (B): accumulates into the trunk's and the head's gradients.
void rm_backward(RewardModel* rm, const float* drewards);
// Global-norm clipping over trunk + head, then AdamW on both (weight decay on
// the trunk's 2-D weights and on head_w; none on head_b). Returns the norm
// before clipping.
float rm_update(RewardModel* rm, const AdamWConfig* cfg);
// ---- data parallelism (worker/data_parallel.h)
// After rm_backward of this rank's share, a loss that is a mean over
// local_weight items (rankings): trunk and head gradients become those of the
// mean over every dp rank's items, the same on every rank. Collective.
// Returns the global weight.
double rm_allreduce_grads(RewardModel* rm, DataParallel* d, double local_weight);
// rm_update for a dp group: the same as rm_update without ZeRO-1; with it,
// the trunk's AdamW step is dp_update's sharded one (collective) and the
// head's (C+1 numbers) is replicated. Clipping uses the global norm over
// trunk + head either way. Returns that norm.
float rm_update_dp(RewardModel* rm, DataParallel* d, const AdamWConfig* cfg);
// Host copies of the head: w (C) and b (1).
void rm_head_to_host(const RewardModel* rm, float* w, float* b);

// InstructGPT's K-wise ranking loss over G rankings whose sequences lie one
// after another in rewards: ranking g owns rewards[o_g .. o_g + k[g]) with
// o_g = k[0] + ... + k[g-1]; rankings[g] is a permutation of 0..k[g]-1, best
// first (indices into that ranking's own responses). For each ranking, over
// its C(k,2) pairs (w ranked above l):
//     loss_g = -1/C(k,2) * sum log sigmoid(r_w - r_l)
// and the batch loss is the mean of loss_g over the G rankings.
// drewards (sum k, may be NULL) receives d(loss)/d(rewards). pairs_right /
// pairs_total (may be NULL) receive the number of pairs with r_w > r_l and
// the number of pairs. Returns the loss.
double rm_ranking_loss(const float* rewards, int G, const int* k, const int* const* rankings,
                       float* drewards, int* pairs_right, int* pairs_total);

// Token convention of every stage: encode(prompt) ++ encode(response) ++ [eot].
// Returns a malloc'd array; *len receives its length.
int* rm_encode_pair(const Tokenizer* tok, const char* prompt, const char* response, int* len);
// Scores n token sequences (any lengths <= the context), batch_size at a time
// (<= 0: 16), into out (n), normalised like rm_forward.
void rm_score_tokens(RewardModel* rm, const int* const* seqs, const int* lens, int n,
                     int batch_size, float* out);
