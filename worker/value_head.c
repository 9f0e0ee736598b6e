// value_head.c - scalar value head on a trunk's final hidden state (value_head.h).
#include "value_head.h"
#include <math.h>
#include <string.h>
#include "../common/check.h"

void value_head_init(ValueHead* h, int C, const Ops* ops) {
    memset(h, 0, sizeof *h);
    h->C = C;
    h->ops = ops;
    size_t bytes = (size_t)(C + 1) * sizeof(float);
    h->params = ops->alloc(bytes); // zero-filled
    h->grads = ops->alloc(bytes);
    h->m = ops->alloc(bytes);
    h->v = ops->alloc(bytes);
}

void value_head_set(ValueHead* h, const float* w, float b) {
    h->ops->to_device(h->params, w, (size_t)h->C * sizeof(float));
    h->ops->to_device(h->params + h->C, &b, sizeof(float));
}

void value_head_get(const ValueHead* h, float* w, float* b) {
    h->ops->to_host(w, h->params, (size_t)h->C * sizeof(float));
    h->ops->to_host(b, h->params + h->C, sizeof(float));
}

static void ensure_rows(ValueHead* h, size_t rows) {
    if (rows <= h->cap) return;
    if (h->out) h->ops->free(h->out);
    if (h->dout) h->ops->free(h->dout);
    h->out = h->ops->alloc(rows * sizeof(float));
    h->dout = h->ops->alloc(rows * sizeof(float));
    h->cap = rows;
}

void value_head_forward(ValueHead* h, const GPT* trunk, float* values) {
    if (trunk->config.channels != h->C)
        fatalf("value head of %d channels on a trunk of %d", h->C, trunk->config.channels);
    size_t BT = (size_t)trunk->B * trunk->T;
    ensure_rows(h, BT);
    // (BT,1) = lnf (BT,C) @ w (1,C)^T + b
    h->ops->matmul_forward(h->out, trunk->acts.lnf, h->params, h->params + h->C, (int)BT, h->C, 1);
    h->ops->to_host(values, h->out, BT * sizeof(float));
}

void value_head_backward(ValueHead* h, const GPT* trunk, const float* dvalues, float* dlnf) {
    size_t BT = (size_t)trunk->B * trunk->T;
    ensure_rows(h, BT);
    h->ops->to_device(h->dout, dvalues, BT * sizeof(float));
    // dlnf (BT,C) += dv @ w ; dw += dv^T @ lnf ; db += sum dv
    h->ops->matmul_backward(dlnf, h->grads, h->grads + h->C, h->dout, trunk->acts.lnf, h->params,
                            (int)BT, h->C, 1);
}

void value_head_zero_grad(ValueHead* h) {
    h->ops->zero(h->grads, (size_t)(h->C + 1) * sizeof(float));
}

float value_head_update(ValueHead* h, const AdamWConfig* cfg) {
    size_t n = (size_t)h->C + 1;
    float norm = (float)sqrt(h->ops->sum_squares(h->grads, n));
    float scale = 1.0f;
    if (cfg->grad_clip > 0 && norm > cfg->grad_clip) scale = cfg->grad_clip / (norm + 1e-6f);
    h->step++;
    h->ops->adamw_update(h->params, h->grads, h->m, h->v, n, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps,
                         0.0f, scale, h->step);
    h->last_grad_norm = norm;
    return norm;
}

void value_head_free(ValueHead* h) {
    const Ops* ops = h->ops;
    if (!ops) return;
    ops->free(h->params);
    ops->free(h->grads);
    ops->free(h->m);
    ops->free(h->v);
    if (h->out) ops->free(h->out);
    if (h->dout) ops->free(h->dout);
    memset(h, 0, sizeof *h);
}
