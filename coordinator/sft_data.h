// sft_data.h - tokenized demonstrations for supervised fine-tuning: loading,
// padded batches with the prompt masked, a length-bucketed shuffled order,
// and the held-out loss.
//
// Token convention (every RLHF stage): a demonstration (prompt, response) is
//   encode(prompt) ++ encode(response) ++ [eot]        (len tokens, P prompt)
// A row of a batch feeds tokens[0..len-1) and predicts tokens[1..len): the
// target at position t is tokens[t+1], so the loss covers positions
// t = P-1 .. len-2, i.e. exactly the response tokens and the eot. Prompt
// positions keep their real next-token target but get mask 0; pad positions
// (after the example, up to the batch's T) get target -1 and mask 0. The
// loss is gpt_forward's masked mean: the mean over the batch's response
// tokens. Causal attention means a pad never reaches a real position, so one
// example per row needs no attention mask. (Packing several examples into a
// row would need block-diagonal attention, which the kernels do not have.)
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "../common/rng.h"
#include "../common/tokenizer.h"
#include "run_state.h"
#include "../worker/comm.h"
#include "../worker/gpt.h"

typedef struct {
    int* tokens;    // (len) prompt ++ response ++ [eot]
    int len;        // all tokens, eot included
    int prompt_len; // P: tokens of the prompt
    int line;       // line of the record in its file (0: built in memory)
} SftExample;

typedef struct {
    SftExample* examples;
    size_t n;
    size_t skipped;             // records skipped (bad, or too long) with skip_bad
    size_t num_tokens;          // sum of len
    size_t num_response_tokens; // sum of len - prompt_len: the positions trained on
    int max_len;                // longest len
} SftData;

// Reads demonstrations {"prompt","response"} from the JSONL file at path
// (hf_read_demos) and tokenizes them. An example of more than ctx tokens is
// fatal ("PATH:LINE: prompt+response is N tokens, longer than the context
// (M)") or, with skip_bad, a warning (first 10 shown, then a count) and
// counted in d->skipped, as are the bad records hf_read_demos skips. Fatal
// when no example is left.
void sft_data_load(SftData* d, const char* path, Tokenizer* tok, int ctx, int skip_bad);
// Appends an already tokenized example (tests, tools): prompt (P >= 1) ++
// response (R >= 0) ++ [eot].
void sft_data_add(SftData* d, const int* prompt, int P, const int* response, int R, int eot,
                  int line);
void sft_data_free(SftData* d);

// ---- padded batches

typedef struct {
    int B, T;              // this batch: rows, and the longest row's len - 1
    int max_B, max_T;      // capacity
    int* inputs;           // (max_B*max_T) used as (B,T); pads = pad_token
    int* targets;          // (B,T) next token; -1 on pads
    float* mask;           // (B,T) 1 on response/eot targets, 0 on prompt and pad
    size_t loss_tokens;    // sum of mask: the positions the loss averages over
    size_t real_tokens;    // non-pad positions (compute that is not wasted)
} SftBatch;

void sft_batch_alloc(SftBatch* b, int max_B, int max_T);
// Fills rows 0..B-1 with examples idx[0..B-1] of d (one per row, padded to
// the longest). B or a row beyond the capacity is a bug (aborts).
void sft_batch_fill(SftBatch* b, const SftData* d, const size_t* idx, int B, int pad_token);
void sft_batch_free(SftBatch* b);

// ---- training order

// Epochs over the data. Each epoch: shuffle all examples, cut the order into
// buckets of SFT_BUCKET_BATCHES batches, sort each bucket by length, cut it
// into batches of batch_size, then shuffle the batches. Rows of a batch thus
// have similar lengths (little padding) while batches stay random.
// Deterministic in the seed. The last batch of an epoch may be smaller.
#define SFT_BUCKET_BATCHES 16
typedef struct {
    const SftData* data;
    int batch_size;
    Rng rng;
    size_t* order;        // (n) this epoch's example order, batch after batch
    size_t* batch_start;  // (num_batches + 1) offsets of the batches into order
    size_t num_batches;   // per epoch: ceil(n / batch_size)
    size_t next;          // next batch of this epoch
    int epoch;            // 1-based epoch of the batch last returned
} SftSampler;

void sft_sampler_init(SftSampler* s, const SftData* d, int batch_size, uint64_t seed);
// The next batch's example indices (*B of them); starts a new epoch when one
// is used up. Valid until the next call.
const size_t* sft_sampler_next(SftSampler* s, int* B);
void sft_sampler_free(SftSampler* s);
// Exact resume (run_state.h): the sampler's whole state (generator, this
// epoch's order and batch offsets, next batch, epoch) as the items KEY.rng,
// KEY.order and KEY.batches. Save after at least one sft_sampler_next.
void sft_sampler_save(const SftSampler* s, RunState* rs, const char* key);
// Into a sampler fresh from sft_sampler_init over the same data and batch
// size (fatal, naming the checkpoint, when they differ).
void sft_sampler_restore(SftSampler* s, const RunState* rs, const char* key);

// ---- evaluation

// Mean masked loss over all of d (every response token of every example
// weighs the same), in batches of up to b->max_B rows sorted by length.
// *loss_tokens (may be NULL) receives the number of tokens averaged over.
double sft_eval(GPT* model, const SftData* d, SftBatch* b, int pad_token, size_t* loss_tokens);
// The same over a dp group (collective; dp may be NULL): each dp rank takes
// its share of the length-sorted examples, the loss sum and token count are
// all-reduced, so every rank gets the mean over all of d.
double sft_eval_dp(GPT* model, const SftData* d, SftBatch* b, int pad_token, Comm* dp,
                   size_t* loss_tokens);
// Over examples idx[0..B): *loss_tokens = sum of len - prompt_len (the
// positions the masked loss averages over), *real_tokens = sum of len - 1.
// A dp rank counts the whole global batch without a collective.
void sft_count_tokens(const SftData* d, const size_t* idx, int B, size_t* loss_tokens,
                      size_t* real_tokens);
