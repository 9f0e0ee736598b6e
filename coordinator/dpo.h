// dpo.h - the pieces of `rlhfd dpo` (coordinator/cmd_dpo.c), exposed so that
// tests/rl/dpo_dump.c runs exactly the command's gradient path.
//
// Preference pairs are tokenized like SFT demonstrations (sft_data.h):
// encode(prompt) ++ encode(response) ++ [eot]; the sequence log-prob of a
// response is the sum of log p over its response tokens and the eot.
// A batch of np pairs is 2*np padded rows: chosen 0, rejected 0, chosen 1, ...
#pragma once
#include <stddef.h>
#include "sft_data.h"
#include "../common/tokenizer.h"
#include "../worker/comm.h"
#include "../worker/gpt.h"

typedef struct {
    SftData seqs;            // 2*n examples: 2p chosen, 2p+1 rejected
    size_t n;                // pairs
    size_t skipped;          // bad records and pairs too long for the context
    float* ref_c;            // (n) reference log-prob sum of the chosen response
    float* ref_r;            // (n) ... of the rejected response
    unsigned char* ref_done; // (n) 1 once ref_c/ref_r are computed
} DpoPairs;

typedef struct {
    SftBatch batch;                      // (2*np, T) rows
    size_t* rows;                        // (2*max_pairs) example index of each row
    float* logp;                         // (2*max_pairs*max_T) token log-probs of the last forward
    float* dlogp;                        // (2*max_pairs*max_T) d loss / d logp
    float *pc, *pr, *rc, *rr, *dpc, *dpr; // (max_pairs) sums and d loss / d sums
} DpoBatch;

typedef struct {
    double loss, acc, margin, chosen_reward, rejected_reward; // means over pairs
} DpoStats;

// Reads rankings or {"prompt","chosen","rejected"} pairs (hf_read_rankings):
// a ranking gives (best, worst), or every pair when all_pairs. A pair longer
// than ctx is fatal naming PATH:LINE, or skipped and counted with skip_bad.
void dpo_pairs_load(DpoPairs* d, const char* path, Tokenizer* tok, int ctx, int all_pairs, int skip_bad);
// Appends a tokenized pair (d zeroed first): prompt (P >= 1), chosen (Rc), rejected (Rr); eot appended.
void dpo_pairs_add(DpoPairs* d, const int* prompt, int P, const int* chosen, int Rc, const int* rejected, int Rr,
                   int eot, int line);
void dpo_pairs_free(DpoPairs* d);
// Pair indices sorted by length (ties by index), malloc'd (n): low-padding evaluation batches.
size_t* dpo_pairs_by_length(const DpoPairs* d);

void dpo_batch_alloc(DpoBatch* pb, int max_pairs, int max_T);
void dpo_batch_free(DpoBatch* pb);
// Forward of model on pairs idx[0..np): log-prob sums of chosen and rejected
// into sum_c, sum_r (np). Activations and pb->logp stay for a backward.
void dpo_batch_forward(GPT* model, DpoBatch* pb, const DpoPairs* d, const size_t* idx, int np, int eot,
                       float* sum_c, float* sum_r);
// Reference sums of the pairs idx[0..np) not computed yet (each pair once).
void dpo_ensure_reference(GPT* ref, DpoBatch* pb, DpoPairs* d, const size_t* idx, int np, int eot);
// rl_dpo_loss of the batch just forwarded (pb->pc/pr) against the reference
// sums; fills pb->dpc/dpr.
DpoStats dpo_batch_loss(DpoBatch* pb, const DpoPairs* d, const size_t* idx, int np, float beta);
// gpt_zero_grad, then the DPO gradient into model->grads: dlogp = dpc (dpr)
// at every response position of a chosen (rejected) row, through
// gpt_lm_head_backward and gpt_backward_trunk. No optimizer step.
void dpo_batch_backward(GPT* model, DpoBatch* pb, int np);
// Mean stats over all pairs of d (no gradient), reference computed as needed.
DpoStats dpo_evaluate(GPT* model, GPT* ref, DpoBatch* pb, DpoPairs* d, int max_pairs, int eot, float beta);
// The same over a dp group (collective; dp may be NULL): each dp rank takes
// its share of the length-sorted pairs (reference included) and the weighted
// stats are all-reduced, so every rank gets the means over all of d.
DpoStats dpo_evaluate_dp(GPT* model, GPT* ref, DpoBatch* pb, DpoPairs* d, int max_pairs, int eot, float beta,
                         Comm* dp);
// Batch-mean stats of np pairs on this rank -> the means over every dp rank's
// pairs (collective; a no-op for a world of one).
void dpo_stats_reduce(DpoStats* s, double np, Comm* dp);
