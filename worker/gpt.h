// gpt.h - GPT-2 model: parameters, activations, forward, backward, AdamW.
//
// All parameters live in one contiguous buffer (params_memory) with named
// pointers into it (ParameterTensors); gradients and Adam moments mirror it.
// Linear weights are stored (out, in) as in PyTorch's nn.Linear; the LM head
// is tied to wte. Any shape works (vocab need not be a multiple of 8).
//
// Tensor parallelism (Megatron-LM, gpt_build_tp with a tp communicator of
// size P > 1): each rank holds only its shard, in the same 16 named tensors
// with smaller shapes (Cl = C/P, NHl = NH/P heads, Vp = ceil(V/P)):
//   qkvw (L,3Cl,C), qkvb (L,3Cl)  column-parallel: rows of this rank's heads
//                                 of q, then k, then v
//   attprojw (L,C,Cl)             row-parallel: the matching input columns
//   fcw (L,4Cl,C), fcb (L,4Cl)    column-parallel
//   fcprojw (L,C,4Cl)             row-parallel
//   wte (Vp,C)                    vocab-parallel: ids [r*Vp, (r+1)*Vp); the
//                                 last shard's rows past V are padding (kept
//                                 0, never a token, masked out of every softmax)
//   attprojb, fcprojb, wpe, LayerNorms: replicated (whole on every rank).
// The residual stream, LayerNorms and acts.lnf are replicated: every rank
// holds identical copies, so heads on the trunk run unchanged on every rank.
// Forward: the row-parallel outputs are all-reduced (bias added once, by tp
// rank 0, before the sum); the embedding is a masked lookup + all-reduce;
// the LM head gives this rank's (B,T,Vp) logits; the cross-entropy combines
// the ranks' max / sum-exp / target logit (mean_loss and per-token log-probs
// identical on every rank). Backward: the gradient w.r.t. the replicated
// input of every column-parallel layer (ln1, ln2, lnf for the LM head) is
// all-reduced, so the replicated parameters get identical gradients on every
// rank. Every call below is collective over tp when P > 1: all tp ranks make
// the same calls with the same inputs. P = 1 (or tp NULL) is the plain model.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "../kernels/ops.h"
#include "comm.h"

typedef struct {
    int max_seq_len; // context length (wpe rows)
    int vocab_size;  // V
    int num_layers;  // L
    int num_heads;   // NH
    int channels;    // C
} GPTConfig;

#define NUM_PARAMETER_TENSORS 16
typedef struct {
    float* wte;      // (V, C)
    float* wpe;      // (maxT, C)
    float* ln1w;     // (L, C)
    float* ln1b;     // (L, C)
    float* qkvw;     // (L, 3C, C)
    float* qkvb;     // (L, 3C)
    float* attprojw; // (L, C, C)
    float* attprojb; // (L, C)
    float* ln2w;     // (L, C)
    float* ln2b;     // (L, C)
    float* fcw;      // (L, 4C, C)
    float* fcb;      // (L, 4C)
    float* fcprojw;  // (L, C, 4C)
    float* fcprojb;  // (L, C)
    float* lnfw;     // (C)
    float* lnfb;     // (C)
} ParameterTensors;

// Names of the parameter tensors in the order above (native checkpoint names).
extern const char* const GPT_PARAM_NAMES[NUM_PARAMETER_TENSORS];

#define NUM_ACTIVATION_TENSORS 21
typedef struct {
    float* encoded;   // (B, T, C)
    float* ln1;       // (L, B, T, C)
    float* ln1_mean;  // (L, B, T)
    float* ln1_rstd;  // (L, B, T)
    // under tensor parallelism qkv, atty, att, fch, fch_gelu hold this rank's
    // heads / hidden units only: C -> Cl = C/tp, NH -> NH/tp, 4C -> 4C/tp
    float* qkv;       // (L, B, T, 3C)
    float* atty;      // (L, B, T, C)
    float* att;       // (L, B, NH, T, T)
    float* attproj;   // (L, B, T, C)
    float* residual2; // (L, B, T, C)
    float* ln2;       // (L, B, T, C)
    float* ln2_mean;  // (L, B, T)
    float* ln2_rstd;  // (L, B, T)
    float* fch;       // (L, B, T, 4C)
    float* fch_gelu;  // (L, B, T, 4C)
    float* fcproj;    // (L, B, T, C)
    float* residual3; // (L, B, T, C)
    float* lnf;       // (B, T, C)  final hidden state (input of the heads)
    float* lnf_mean;  // (B, T)
    float* lnf_rstd;  // (B, T)
    float* logits;    // (B, T, V)  (B, T, Vp) under tensor parallelism
    float* losses;    // (B, T)
} ActivationTensors;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay; // weight decay only on 2-D weights
    float grad_clip;                           // max global norm; <= 0: no clipping
} AdamWConfig;

typedef struct {
    GPTConfig config;
    const Ops* ops;
    // tensor parallelism (see the top of this file); tp_size 1 = whole model
    Comm* tp;          // NULL when tp_size == 1
    int tp_rank, tp_size;
    int vocab_shard;   // Vp: rows of wte held here (V when tp_size == 1)
    int vocab_start;   // first vocab id of this shard (tp_rank * Vp)
    int vocab_valid;   // real tokens among them (< Vp only on the last shards)
    size_t num_parameters_full; // parameters of the whole model (all shards, no padding)
    // parameters (this rank's shard; param_sizes are the local sizes)
    ParameterTensors params;
    size_t param_sizes[NUM_PARAMETER_TENSORS];
    float* params_memory;
    size_t num_parameters;
    // gradients (allocated on first backward)
    ParameterTensors grads;
    float* grads_memory;
    // AdamW moments (allocated on first update)
    float* m_memory;
    float* v_memory;
    int adam_step; // number of updates taken
    // activations, sized once for (batch_size, seq_len)
    ActivationTensors acts;
    size_t act_sizes[NUM_ACTIVATION_TENSORS];
    float* acts_memory;
    size_t num_activations;
    // backward scratch, one layer's worth: the residual stream's gradient is
    // accumulated in place in d_residual, so no per-layer gradient storage.
    float* d_residual;  // (B, T, C)
    float* d_ln;        // (B, T, C)   dln1 / dln2 / dlnf
    float* d_atty;      // (B, T, C)
    float* d_qkv;       // (B, T, 3C)
    float* d_fch;       // (B, T, 4C)  dfch_gelu, then dfch in place
    float* d_att;       // (B, NH, T, T) attention scratch
    float* scratch_memory;
    int batch_size, seq_len; // capacity of the activations
    int B, T;                // shape of the last forward
    int* inputs;             // (B, T) copy of the last forward's inputs
    int* targets;            // (B, T) targets of the last loss, -1 = none
    float* dlosses;          // (B, T) d(loss)/d(losses[b,t])
    float mean_loss;         // mean over unmasked positions, -1 if no targets
    float last_grad_norm;    // global norm before clipping, of the last update
    // tensor-parallel buffers (NULL when tp_size == 1), sized with the activations
    int* positions;          // (B*T) device: t of each row (the sharded embedding's wpe index)
    float* tp_lse;           // (B*T) device: logsumexp of each row over the whole vocab
    float* tp_stats;         // (tp, B*T, 3) device: every rank's cross-entropy stats
    float* tp_stats_host;    // (tp, B*T, 3) host copy
} GPT;

// Validates the config (positive sizes, C divisible by NH); fatal on error.
void gpt_config_check(const GPTConfig* c);
// Allocates parameters (zeroed). Does not initialise them.
void gpt_build(GPT* model, GPTConfig config, const Ops* ops);
// The same with tensor parallelism over tp (NULL or size 1 = gpt_build):
// allocates this rank's shard. NH must be divisible by tp's size (fatal
// otherwise, naming both). Not collective.
void gpt_build_tp(GPT* model, GPTConfig config, const Ops* ops, Comm* tp);
// GPT-2 initialisation: N(0, 0.02), residual projections scaled by
// 1/sqrt(2L), LayerNorm weights 1, biases 0. Deterministic in seed; under
// tensor parallelism every rank draws the whole model and keeps its shard,
// so a seed gives the same model at any tp size.
void gpt_init_random(GPT* model, uint64_t seed);
void gpt_free(GPT* model);
// Number of floats of each parameter tensor for a config (the whole model).
void gpt_param_sizes(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig* c);
// The same for the shard of one rank out of tp_size (local sizes, padding included).
void gpt_param_sizes_tp(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig* c, int tp_size);
// True for tensors that get weight decay (the 2-D matrices).
int gpt_param_decays(int tensor_index);
// 1 if this rank holds only a slice of tensor i (tp_size > 1 and i is one of
// wte, qkvw, qkvb, attprojw, fcw, fcb, fcprojw); 0 if it holds all of it.
int gpt_param_tp_sharded(const GPT* model, int tensor_index);

// Whole-model <-> shard conversion of any buffer laid out like the
// parameters (params, grads, AdamW moments). full is on the host, in the
// layout of gpt_param_sizes (num_parameters_full floats); local is on the
// device (num_parameters floats). With tp_size 1 both are plain copies.
// gpt_shard_from_full: keeps this rank's slice (padding rows zeroed); not collective.
void gpt_shard_from_full(const GPT* model, const float* full, float* local);
// gpt_gather_full: every tp rank receives the whole tensor set (collective: allgather).
void gpt_gather_full(const GPT* model, const float* local, float* full);

// Sizes the activations for batches up to (B,T); the first forward does this
// by itself. Growing later frees and re-allocates (never per step).
void gpt_reserve(GPT* model, int B, int T);

// Forward pass over inputs (B,T). If targets != NULL, computes losses and
// mean_loss; mask (B,T) weights each position's loss (NULL = all 1; targets
// < 0 are always masked). The mean is over the weighted positions.
void gpt_forward(GPT* model, const int* inputs, const int* targets, const float* mask,
                 int B, int T);
// The trunk only: embeddings, blocks, final LayerNorm -> acts.lnf (B,T,C).
// No logits, no loss: for heads other than the LM head (reward, value).
void gpt_forward_trunk(GPT* model, const int* inputs, int B, int T);
// After acts.logits (this rank's vocab shard under tp) were changed in place
// since the last forward with targets (e.g. NLPO's action masks): recomputes
// the losses (vocab-parallel under tp: collective) and mean_loss from them,
// with the same weights, so log-probs and the backward see the new logits.
void gpt_recompute_losses(GPT* model);
// Allocates the (zeroed) gradient buffer if no backward has made it yet
// (a data-parallel rank with no rows this step still joins the all-reduce).
void gpt_ensure_grads(GPT* model);
// Zeroes parameter gradients.
void gpt_zero_grad(GPT* model);
// Backward of mean_loss from the last forward (targets required).
// Overwrites acts.logits with their gradient (saves a (B,T,V) buffer).
void gpt_backward(GPT* model);
// Backward from the final hidden state, for heads on the trunk:
//   float* dlnf = gpt_hidden_grad(model);  // (B,T,C), zeroed, on the device
//   ... the head adds d(loss)/d(lnf) into dlnf ...
//   gpt_backward_trunk(model);             // accumulates into model->grads
// gpt_backward is exactly this with the tied LM head as the head.
float* gpt_hidden_grad(GPT* model);
void gpt_backward_trunk(GPT* model);

// Policy-gradient methods (PPO, REINFORCE, GRPO, DPO, ...) work on the
// log-probabilities of the tokens, not on a mean loss. After gpt_forward with
// targets (mask is irrelevant here):
//   gpt_token_logprobs(model, logp);     // (B,T) host: log p(targets[b,t] | prefix); 0 where target < 0
//   float* dlnf = gpt_hidden_grad(model);
//   gpt_lm_head_backward(model, dlogp);  // dlogp (B,T) host: dJ/dlogp of the objective J to MINIMISE
//   ... other heads (value) add into dlnf ...
//   gpt_backward_trunk(model);
// gpt_lm_head_backward overwrites acts.logits with their gradient, as gpt_backward does.
void gpt_token_logprobs(const GPT* model, float* logp);
void gpt_lm_head_backward(GPT* model, const float* dlogp);
// Clips by global norm (if cfg->grad_clip > 0) and takes one AdamW step.
// Returns the global gradient norm before clipping (of the whole model under
// tensor parallelism: collective over tp).
float gpt_update(GPT* model, const AdamWConfig* cfg);
// Sum of squares of grads_memory[begin, end) (local indices), with the
// elements of tp-replicated tensors weighted 1/tp_size, so that the sum of
// the results over the tp ranks (and over disjoint ranges, e.g. ZeRO-1 dp
// shards) is the whole model's sum of squares. Not collective.
double gpt_grad_sumsq_range(const GPT* model, size_t begin, size_t end);
// The whole model's gradient sum of squares (collective over tp).
double gpt_grad_sumsq(const GPT* model);

// Full-vocabulary logits of some rows of the last forward: out (n,V) host =
// acts.logits[rows[i]] (a row index is b*T + t). Under tensor parallelism
// acts.logits holds only this rank's (B,T,Vp) vocab shard; this gathers the
// rows (collective over tp). Use it instead of reading acts.logits.
void gpt_logits_rows(const GPT* model, const size_t* rows, int n, float* out);
