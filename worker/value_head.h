// value_head.h - PPO's critic: a scalar value per position on a GPT trunk's
// final hidden state,
//   values[b,t] = w . lnf[b,t] + b          w (C), b (1)
// It runs on either trunk: the policy's own (trlx: one backward for policy
// loss + vf_coef * value loss) or a separate critic GPT initialised from the
// reward model (InstructGPT). It never runs the trunk itself: call it after
// gpt_forward / gpt_forward_trunk of that trunk, and add its backward into
// gpt_hidden_grad()'s buffer before gpt_backward_trunk.
// Parameters, gradients and AdamW moments live on the trunk's device; the
// values and their gradient cross to the host (B*T floats).
#pragma once
#include "gpt.h"

typedef struct {
    int C;
    const Ops* ops;
    float* params;   // (C+1) device: w then b
    float* grads;    // (C+1) device
    float* m;        // (C+1) AdamW moments
    float* v;
    int step;        // AdamW updates taken
    float* out;      // (cap) device scratch: values of the last forward
    float* dout;     // (cap) device scratch: their gradient
    size_t cap;      // rows of out/dout
    float last_grad_norm;
} ValueHead;

// Zero weights and bias (the value starts at 0 everywhere; the trunk gets
// gradient once w moves off 0).
void value_head_init(ValueHead* h, int C, const Ops* ops);
// Sets w (C) and b from the host (e.g. the reward model's head, b - offset).
void value_head_set(ValueHead* h, const float* w, float b);
// Host copies of w (C) and b.
void value_head_get(const ValueHead* h, float* w, float* b);
// values (trunk->B, trunk->T) on the host, from trunk->acts.lnf of its last forward.
void value_head_forward(ValueHead* h, const GPT* trunk, float* values);
// dvalues (B,T) host = d loss / d values of the last forward: accumulates
// d w, d b into h->grads and d lnf into dlnf (gpt_hidden_grad(trunk)).
void value_head_backward(ValueHead* h, const GPT* trunk, const float* dvalues, float* dlnf);
void value_head_zero_grad(ValueHead* h);
// Global-norm clipping of the head's own gradient (cfg->grad_clip > 0) and an
// AdamW step (no weight decay on a 1-output head). Returns the norm before clipping.
float value_head_update(ValueHead* h, const AdamWConfig* cfg);
void value_head_free(ValueHead* h);
