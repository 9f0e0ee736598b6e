// gpt.h - GPT-2 model: parameters, activations, forward, backward, AdamW.
//
// All parameters live in one contiguous buffer (params_memory) with named
// pointers into it (ParameterTensors); gradients and Adam moments mirror it.
// Linear weights are stored (out, in) as in PyTorch's nn.Linear; the LM head
// is tied to wte. Any shape works (vocab need not be a multiple of 8).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "../kernels/ops.h"

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
    float* logits;    // (B, T, V)
    float* losses;    // (B, T)
} ActivationTensors;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay; // weight decay only on 2-D weights
    float grad_clip;                           // max global norm; <= 0: no clipping
} AdamWConfig;

typedef struct {
    GPTConfig config;
    const Ops* ops;
    // parameters
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
} GPT;

// Validates the config (positive sizes, C divisible by NH); fatal on error.
void gpt_config_check(const GPTConfig* c);
// Allocates parameters (zeroed). Does not initialise them.
void gpt_build(GPT* model, GPTConfig config, const Ops* ops);
// GPT-2 initialisation: N(0, 0.02), residual projections scaled by
// 1/sqrt(2L), LayerNorm weights 1, biases 0. Deterministic in seed.
void gpt_init_random(GPT* model, uint64_t seed);
void gpt_free(GPT* model);
// Number of floats of each parameter tensor for a config.
void gpt_param_sizes(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig* c);
// True for tensors that get weight decay (the 2-D matrices).
int gpt_param_decays(int tensor_index);

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
// Returns the global gradient norm before clipping.
float gpt_update(GPT* model, const AdamWConfig* cfg);
