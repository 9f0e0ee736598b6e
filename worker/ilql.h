// ilql.h - ILQL (Implicit Language Q-Learning, Snell et al. 2022; trlx's
// ILQL): offline RL from scored samples with heads on the LM trunk's final
// hidden state lnf (C):
//   two Q heads      Q_k(s, .) = W_k lnf + b_k            W_k (V,C), b_k (V)
//   two target heads Qt_k: Polyak averages of the Q heads (targets and decoding)
//   a V head         V(s) = w . lnf + c                   w (C), c (1)
// Loss over the N positions of a (B,T) batch flattened, mean over the K
// positions n that take an action a_n (the response tokens and the eot):
//   y_n       = r_n + gamma * V(s_{n+1})     V(s_{n+1}) = 0 at the last action
//                                            (done_n), else the next position's V,
//                                            detached (no gradient through it)
//   loss_q    = sum_k mean_n (Q_k(s_n, a_n) - y_n)^2
//   loss_v    = mean_n |tau - 1[u_n < 0]| u_n^2,  u_n = min_k Qt_k(s_n, a_n) - V(s_n)
//               (expectile regression of V toward the target Q; Qt detached)
//   loss_cql  = sum_k mean_n CE(Q_k(s_n, .), a_n)   (CQL-style: Q logits as a
//               softmax over actions, pushed toward the data's actions)
//   loss_awac = mean_n -log pi(a_n | s_n)         (the LM loss on the data)
//   loss      = loss_q + loss_v + cql_weight * loss_cql + awac_weight * loss_awac
// Decoding (trlx): sample from logits + beta * (min_k Qt_k(s, .) - V(s)).
// Parameters, gradients and AdamW moments live on the ops device; per-action
// scalars (N floats) cross to the host. Checked against PyTorch (autograd)
// for the loss and every gradient: heads and d lnf (tests/nlpo_ilql).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "generate.h"
#include "gpt.h"
#include "../common/safetensors.h"

typedef struct {
    float gamma, tau, cql_weight, awac_weight;
} IlqlLossConfig;

typedef struct {
    double loss, loss_q, loss_v, loss_cql, loss_awac;
    double q_mean, target_q_mean, v_mean; // means over the actions (Q: over both heads)
    int actions;                          // K
} IlqlStats;

#define ILQL_NUM_TENSORS 10

typedef struct {
    int C, V;
    const Ops* ops;
    size_t qn;          // floats per Q head: V*C + V
    float* q;           // (2*qn) device: W_1, b_1, W_2, b_2
    float* q_target;    // (2*qn) device, same layout
    float* q_grad;      // (2*qn)
    float* q_m;         // (2*qn) AdamW moments
    float* q_v;
    float* vh;          // (C+1) device: w, c
    float* vh_grad;
    float* vh_m;
    float* vh_v;
    int step;           // AdamW updates taken
    // scratch, grown on demand
    size_t cap;         // rows
    float* logits[2];   // (cap, V) device: Q_k logits, then their gradient
    float* losses[2];   // (cap) device: CE of each head
    float* dlosses;     // (cap) device
    int* targets;       // (cap) device
    float* vals;        // (cap) device: V of the rows / its gradient
    float* host_lnf;    // (cap, C) host
    float last_grad_norm;
} IlqlHeads;

// Q heads N(0, init_std) (head k from seed + k; biases 0), targets = copies, V head 0.
void ilql_heads_init(IlqlHeads* h, int C, int V, const Ops* ops, uint64_t seed, float init_std);
void ilql_heads_free(IlqlHeads* h);
void ilql_heads_zero_grad(IlqlHeads* h);

// The loss of one batch and its gradient. lnf (N,C) on the device: the
// trunk's final hidden state of B rows of T positions (N = B*T; the next
// state of position n is n+1). Host arrays (N): actions a_n (-1: no action
// here), rewards r_n, done_n (1: the last action of its sequence),
// lm_logp = log pi(a_n | s_n) of the LM (0 where no action).
// Accumulates the heads' gradients into h, adds d loss / d lnf into dlnf
// (N,C, device; NULL = skip), writes d loss / d lm_logp into dlm_logp (N,
// host; NULL = skip). Returns the loss (0 with no action).
double ilql_loss(IlqlHeads* h, const float* lnf, int N, const int* actions, const float* rewards,
                 const unsigned char* done, const float* lm_logp, const IlqlLossConfig* cfg, float* dlnf,
                 float* dlm_logp, IlqlStats* stats);
// Global-norm clipping over every head gradient (cfg->grad_clip > 0) and one
// AdamW step (weight decay on the Q weight matrices only). Returns the norm.
float ilql_heads_update(IlqlHeads* h, const AdamWConfig* cfg);
// target <- alpha * Q + (1 - alpha) * target (Polyak averaging).
void ilql_heads_sync_targets(IlqlHeads* h, float alpha);

// ---- decoding: a LogitsHook adding beta * (min_k Qt_k - V) to the policy's logits
typedef struct {
    IlqlHeads* heads;
    float beta;
    float* host_q;      // (rows, V) x 2 host
    float* host_v;      // (rows)
    size_t rows;
    LogitsHook hook;
} IlqlDecoder;
void ilql_decoder_init(IlqlDecoder* d, IlqlHeads* h, float beta);
void ilql_decoder_free(IlqlDecoder* d);

// ---- checkpoints: the heads as extra tensors of the policy's model.safetensors
// Host copies (malloc'd in *host, free it) of every tensor, named
// ilql.q1.w (V,C), ilql.q1.b (V), ilql.q2.*, ilql.q1_target.*, ilql.q2_target.*,
// ilql.v.w (C), ilql.v.b (1); out gets ILQL_NUM_TENSORS entries.
void ilql_heads_to_tensors(const IlqlHeads* h, float** host, StWriteTensor out[ILQL_NUM_TENSORS]);
// Heads from a native checkpoint directory saved with them (fatal, naming
// the file, if one is missing or has the wrong shape for (C, V)).
void ilql_heads_load(IlqlHeads* h, const char* checkpoint_dir, int C, int V, const Ops* ops);
// 1 if the checkpoint directory's model.safetensors holds ILQL heads.
int ilql_checkpoint_has_heads(const char* checkpoint_dir);
