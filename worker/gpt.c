// gpt.c - GPT-2: forward, backward and AdamW over one contiguous parameter
// buffer. All tensor math goes through model->ops (kernels/ops.h).
#include <math.h>
#include <string.h>
#include "common/check.h"
#include "common/rng.h"
#include "worker/gpt.h"

const char* const GPT_PARAM_NAMES[NUM_PARAMETER_TENSORS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"};

void gpt_config_check(const GPTConfig* c) {
    if (c->max_seq_len <= 0 || c->vocab_size <= 0 || c->num_layers <= 0 || c->num_heads <= 0 || c->channels <= 0)
        fatalf("model shape must be positive: ctx=%d vocab=%d layers=%d heads=%d embd=%d", c->max_seq_len,
               c->vocab_size, c->num_layers, c->num_heads, c->channels);
    if (c->channels % c->num_heads != 0)
        fatalf("model.embd (%d) must be divisible by model.heads (%d)", c->channels, c->num_heads);
}

void gpt_param_sizes(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig* c) {
    size_t V = c->vocab_size, maxT = c->max_seq_len, L = c->num_layers, C = c->channels;
    sizes[0] = V * C;           // wte
    sizes[1] = maxT * C;        // wpe
    sizes[2] = L * C;           // ln1w
    sizes[3] = L * C;           // ln1b
    sizes[4] = L * 3 * C * C;   // qkvw
    sizes[5] = L * 3 * C;       // qkvb
    sizes[6] = L * C * C;       // attprojw
    sizes[7] = L * C;           // attprojb
    sizes[8] = L * C;           // ln2w
    sizes[9] = L * C;           // ln2b
    sizes[10] = L * 4 * C * C;  // fcw
    sizes[11] = L * 4 * C;      // fcb
    sizes[12] = L * C * 4 * C;  // fcprojw
    sizes[13] = L * C;          // fcprojb
    sizes[14] = C;              // lnfw
    sizes[15] = C;              // lnfb
}

// The 2-D weight matrices (embeddings and linear weights) get weight decay;
// biases and LayerNorm parameters do not (GPT-2 / nanoGPT convention).
int gpt_param_decays(int i) { return i == 0 || i == 1 || i == 4 || i == 6 || i == 10 || i == 12; }

// Points the named tensors into one buffer, in GPT_PARAM_NAMES order.
static void point_parameters(ParameterTensors* p, float* memory, const size_t* sizes) {
    float** ptrs[] = {&p->wte, &p->wpe, &p->ln1w, &p->ln1b, &p->qkvw, &p->qkvb, &p->attprojw, &p->attprojb,
                      &p->ln2w, &p->ln2b, &p->fcw, &p->fcb, &p->fcprojw, &p->fcprojb, &p->lnfw, &p->lnfb};
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

void gpt_build(GPT* model, GPTConfig config, const Ops* ops) {
    gpt_config_check(&config);
    memset(model, 0, sizeof *model);
    model->config = config;
    model->ops = ops;
    gpt_param_sizes(model->param_sizes, &config);
    size_t n = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) n += model->param_sizes[i];
    model->num_parameters = n;
    model->params_memory = ops->alloc(n * sizeof(float));
    point_parameters(&model->params, model->params_memory, model->param_sizes);
    model->mean_loss = -1.0f;
}

void gpt_init_random(GPT* model, uint64_t seed) {
    const GPTConfig* c = &model->config;
    Rng rng;
    rng_seed(&rng, seed);
    float* host = mallocCheck(model->num_parameters * sizeof(float));
    float resid_std = 0.02f / sqrtf(2.0f * c->num_layers);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t sz = model->param_sizes[i];
        float* p = host + off;
        int is_ln_weight = (i == 2 || i == 8 || i == 14);
        if (is_ln_weight) {
            for (size_t k = 0; k < sz; k++) p[k] = 1.0f;
        } else if (gpt_param_decays(i)) {
            float std = (i == 6 || i == 12) ? resid_std : 0.02f; // residual projections
            for (size_t k = 0; k < sz; k++) p[k] = std * rng_normal(&rng);
        } else {
            memset(p, 0, sz * sizeof(float)); // biases
        }
        off += sz;
    }
    model->ops->to_device(model->params_memory, host, model->num_parameters * sizeof(float));
    free(host);
}

// ---------------------------------------------------------------------------
// activations

static void activation_sizes(size_t* s, const GPTConfig* c, int B, int T) {
    size_t L = c->num_layers, C = c->channels, NH = c->num_heads, V = c->vocab_size;
    size_t BT = (size_t)B * T;
    s[0] = BT * C;                  // encoded
    s[1] = L * BT * C;              // ln1
    s[2] = L * BT;                  // ln1_mean
    s[3] = L * BT;                  // ln1_rstd
    s[4] = L * BT * 3 * C;          // qkv
    s[5] = L * BT * C;              // atty
    s[6] = L * B * NH * T * T;      // att
    s[7] = L * BT * C;              // attproj
    s[8] = L * BT * C;              // residual2
    s[9] = L * BT * C;              // ln2
    s[10] = L * BT;                 // ln2_mean
    s[11] = L * BT;                 // ln2_rstd
    s[12] = L * BT * 4 * C;         // fch
    s[13] = L * BT * 4 * C;         // fch_gelu
    s[14] = L * BT * C;             // fcproj
    s[15] = L * BT * C;             // residual3
    s[16] = BT * C;                 // lnf
    s[17] = BT;                     // lnf_mean
    s[18] = BT;                     // lnf_rstd
    s[19] = BT * V;                 // logits
    s[20] = BT;                     // losses
}

static void point_activations(ActivationTensors* a, float* memory, const size_t* sizes) {
    float** ptrs[] = {&a->encoded, &a->ln1, &a->ln1_mean, &a->ln1_rstd, &a->qkv, &a->atty, &a->att,
                      &a->attproj, &a->residual2, &a->ln2, &a->ln2_mean, &a->ln2_rstd, &a->fch,
                      &a->fch_gelu, &a->fcproj, &a->residual3, &a->lnf, &a->lnf_mean, &a->lnf_rstd,
                      &a->logits, &a->losses};
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

static void free_activations(GPT* model) {
    const Ops* ops = model->ops;
    ops->free(model->acts_memory);
    ops->free(model->scratch_memory);
    ops->free(model->inputs);
    ops->free(model->targets);
    ops->free(model->dlosses);
    model->acts_memory = model->scratch_memory = model->dlosses = NULL;
    model->inputs = model->targets = NULL;
    model->d_residual = model->d_ln = model->d_atty = model->d_qkv = model->d_fch = model->d_att = NULL;
    model->batch_size = model->seq_len = 0;
}

void gpt_reserve(GPT* model, int B, int T) {
    if (B <= 0 || T <= 0) fatalf("empty batch (%dx%d)", B, T);
    if (T > model->config.max_seq_len)
        fatalf("sequence length %d exceeds the model's context %d", T, model->config.max_seq_len);
    if (model->acts_memory) {
        if (B <= model->batch_size && T <= model->seq_len) return;
        // grow to cover both the old and the new shape
        if (B < model->batch_size) B = model->batch_size;
        if (T < model->seq_len) T = model->seq_len;
        free_activations(model);
    }
    const Ops* ops = model->ops;
    model->batch_size = B;
    model->seq_len = T;
    activation_sizes(model->act_sizes, &model->config, B, T);
    size_t n = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) n += model->act_sizes[i];
    model->num_activations = n;
    model->acts_memory = ops->alloc(n * sizeof(float));
    point_activations(&model->acts, model->acts_memory, model->act_sizes);
    model->inputs = ops->alloc((size_t)B * T * sizeof(int));
    model->targets = ops->alloc((size_t)B * T * sizeof(int));
    model->dlosses = ops->alloc((size_t)B * T * sizeof(float));
}

void gpt_forward_trunk(GPT* model, const int* inputs, int B, int T) {
    const GPTConfig* c = &model->config;
    const Ops* ops = model->ops;
    int V = c->vocab_size, L = c->num_layers, NH = c->num_heads, C = c->channels;
    if (B <= 0 || T <= 0) fatalf("empty batch (%dx%d)", B, T);
    if (T > c->max_seq_len) fatalf("sequence length %d exceeds the model's context %d", T, c->max_seq_len);
    size_t BT = (size_t)B * T;
    for (size_t i = 0; i < BT; i++)
        if (inputs[i] < 0 || inputs[i] >= V) fatalf("input token %d at position %zu is outside the vocab [0,%d)", inputs[i], i, V);
    if (!model->acts_memory) gpt_reserve(model, B, T);
    if (B > model->batch_size || T > model->seq_len)
        fatalf("batch %dx%d exceeds the %dx%d the model's activations were sized for (gpt_reserve)", B, T,
               model->batch_size, model->seq_len);
    model->B = B;
    model->T = T;
    ops->to_device(model->inputs, inputs, BT * sizeof(int));

    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    ops->encoder_forward(a.encoded, model->inputs, p.wte, p.wpe, B, T, C); // (B,T,C)
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * BT * C;
        float* ln1 = a.ln1 + l * BT * C;
        float* ln1_mean = a.ln1_mean + l * BT;
        float* ln1_rstd = a.ln1_rstd + l * BT;
        float* qkv = a.qkv + l * BT * 3 * C;
        float* atty = a.atty + l * BT * C;
        float* att = a.att + (size_t)l * B * NH * T * T;
        float* attproj = a.attproj + l * BT * C;
        float* residual2 = a.residual2 + l * BT * C;
        float* ln2 = a.ln2 + l * BT * C;
        float* ln2_mean = a.ln2_mean + l * BT;
        float* ln2_rstd = a.ln2_rstd + l * BT;
        float* fch = a.fch + l * BT * 4 * C;
        float* fch_gelu = a.fch_gelu + l * BT * 4 * C;
        float* fcproj = a.fcproj + l * BT * C;
        float* residual3 = a.residual3 + l * BT * C;

        ops->layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, p.ln1w + l * C, p.ln1b + l * C, BT, C);
        ops->matmul_forward(qkv, ln1, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, BT, C, 3 * C);
        ops->attention_forward(atty, att, qkv, B, T, C, NH);
        ops->matmul_forward(attproj, atty, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, BT, C, C);
        ops->residual_forward(residual2, residual, attproj, BT * C);
        ops->layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, p.ln2w + l * C, p.ln2b + l * C, BT, C);
        ops->matmul_forward(fch, ln2, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, BT, C, 4 * C);
        ops->gelu_forward(fch_gelu, fch, BT * 4 * C);
        ops->matmul_forward(fcproj, fch_gelu, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, BT, 4 * C, C);
        ops->residual_forward(residual3, residual2, fcproj, BT * C);
    }
    const float* last = a.residual3 + (size_t)(L - 1) * BT * C;
    ops->layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, BT, C);
    model->mean_loss = -1.0f;
}

void gpt_forward(GPT* model, const int* inputs, const int* targets, const float* mask, int B, int T) {
    const Ops* ops = model->ops;
    int V = model->config.vocab_size, C = model->config.channels;
    size_t BT = (size_t)B * T;
    if (targets)
        for (size_t i = 0; i < BT; i++)
            if (targets[i] >= V) fatalf("target token %d at position %zu is outside the vocab [0,%d)", targets[i], i, V);
    gpt_forward_trunk(model, inputs, B, T);
    ActivationTensors a = model->acts;
    ops->matmul_forward(a.logits, a.lnf, model->params.wte, NULL, BT, C, V); // tied LM head, (B,T,V)

    if (!targets) {
        model->mean_loss = -1.0f;
        return;
    }
    // per-position weights: mask (default 1), 0 where there is no target;
    // d(mean)/d(loss_i) = w_i / sum(w)
    float* dl = mallocCheck(BT * sizeof(float));
    double wsum = 0.0;
    for (size_t i = 0; i < BT; i++) {
        float w = targets[i] < 0 ? 0.0f : (mask ? mask[i] : 1.0f);
        dl[i] = w;
        wsum += w;
    }
    for (size_t i = 0; i < BT; i++) dl[i] = wsum > 0 ? (float)(dl[i] / wsum) : 0.0f;
    ops->to_device(model->targets, targets, BT * sizeof(int));
    ops->to_device(model->dlosses, dl, BT * sizeof(float));
    ops->crossentropy_forward(a.losses, a.logits, model->targets, BT, V);
    float* losses = mallocCheck(BT * sizeof(float));
    ops->to_host(losses, a.losses, BT * sizeof(float));
    double mean = 0.0;
    for (size_t i = 0; i < BT; i++) mean += (double)dl[i] * losses[i];
    model->mean_loss = wsum > 0 ? (float)mean : 0.0f;
    free(losses);
    free(dl);
}

void gpt_zero_grad(GPT* model) {
    if (model->grads_memory) model->ops->zero(model->grads_memory, model->num_parameters * sizeof(float));
}

// Allocates gradients and backward scratch on first use.
static void ensure_backward_buffers(GPT* model) {
    const Ops* ops = model->ops;
    if (!model->grads_memory) {
        model->grads_memory = ops->alloc(model->num_parameters * sizeof(float));
        point_parameters(&model->grads, model->grads_memory, model->param_sizes);
    }
    if (!model->scratch_memory) {
        size_t BT = (size_t)model->batch_size * model->seq_len, C = model->config.channels;
        size_t att = (size_t)model->batch_size * model->config.num_heads * model->seq_len * model->seq_len;
        size_t n = BT * C * 3 + BT * 3 * C + BT * 4 * C + att;
        float* m = model->scratch_memory = ops->alloc(n * sizeof(float));
        model->d_residual = m; m += BT * C;
        model->d_ln = m;       m += BT * C;
        model->d_atty = m;     m += BT * C;
        model->d_qkv = m;      m += BT * 3 * C;
        model->d_fch = m;      m += BT * 4 * C;
        model->d_att = m;
    }
}

void gpt_ensure_grads(GPT* model) {
    if (!model->grads_memory) {
        model->grads_memory = model->ops->alloc(model->num_parameters * sizeof(float));
        point_parameters(&model->grads, model->grads_memory, model->param_sizes);
    }
}

float* gpt_hidden_grad(GPT* model) {
    if (!model->acts_memory) fatalf("gpt_hidden_grad needs a forward pass first");
    ensure_backward_buffers(model);
    size_t BT = (size_t)model->B * model->T;
    model->ops->zero(model->d_ln, BT * model->config.channels * sizeof(float));
    return model->d_ln;
}

// LM head backward: d(loss_i) = dlosses[i] (on the device) into d_ln and wte.
static void lm_head_backward(GPT* model, const float* dlosses) {
    const Ops* ops = model->ops;
    int V = model->config.vocab_size, C = model->config.channels;
    size_t BT = (size_t)model->B * model->T;
    ActivationTensors a = model->acts;
    // logits become their own gradient (B,T,V)
    ops->crossentropy_backward(a.logits, a.logits, a.losses, dlosses, model->targets, BT, V);
    ops->matmul_backward(model->d_ln, model->grads.wte, NULL, a.logits, a.lnf, model->params.wte, BT, C, V);
}

void gpt_backward(GPT* model) {
    if (model->mean_loss < 0) fatalf("gpt_backward needs a forward pass with targets first");
    gpt_hidden_grad(model); // zeroed d(lnf) (B,T,C)
    lm_head_backward(model, model->dlosses);
    gpt_backward_trunk(model);
}

void gpt_token_logprobs(const GPT* model, float* logp) {
    if (model->mean_loss < 0) fatalf("gpt_token_logprobs needs a forward pass with targets first");
    size_t BT = (size_t)model->B * model->T;
    int* targets = mallocCheck(BT * sizeof(int));
    model->ops->to_host(logp, model->acts.losses, BT * sizeof(float));
    model->ops->to_host(targets, model->targets, BT * sizeof(int));
    for (size_t i = 0; i < BT; i++) logp[i] = targets[i] < 0 ? 0.0f : -logp[i];
    free(targets);
}

void gpt_lm_head_backward(GPT* model, const float* dlogp) {
    if (model->mean_loss < 0) fatalf("gpt_lm_head_backward needs a forward pass with targets first");
    if (!model->scratch_memory) fatalf("gpt_lm_head_backward needs gpt_hidden_grad first");
    size_t BT = (size_t)model->B * model->T;
    float* dl = mallocCheck(BT * sizeof(float));
    for (size_t i = 0; i < BT; i++) dl[i] = -dlogp[i]; // loss_i = -logp_i
    model->ops->to_device(model->dlosses, dl, BT * sizeof(float));
    free(dl);
    lm_head_backward(model, model->dlosses);
}

void gpt_backward_trunk(GPT* model) {
    if (!model->scratch_memory) fatalf("gpt_backward_trunk needs gpt_hidden_grad first");
    const GPTConfig* c = &model->config;
    const Ops* ops = model->ops;
    int B = model->B, T = model->T, L = c->num_layers, NH = c->num_heads, C = c->channels;
    size_t BT = (size_t)B * T;
    ParameterTensors p = model->params, g = model->grads;
    ActivationTensors a = model->acts;
    float* dres = model->d_residual; // gradient of the residual stream, accumulated in place

    // final LayerNorm: d(lnf) is in d_ln
    ops->zero(dres, BT * C * sizeof(float));
    const float* last = a.residual3 + (size_t)(L - 1) * BT * C;
    ops->layernorm_backward(dres, g.lnfw, g.lnfb, model->d_ln, last, p.lnfw, a.lnf_mean, a.lnf_rstd, BT, C);

    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * BT * C;
        const float* ln1 = a.ln1 + l * BT * C;
        const float* qkv = a.qkv + l * BT * 3 * C;
        const float* atty = a.atty + l * BT * C;
        const float* att = a.att + (size_t)l * B * NH * T * T;
        const float* residual2 = a.residual2 + l * BT * C;
        const float* ln2 = a.ln2 + l * BT * C;
        const float* fch = a.fch + l * BT * 4 * C;
        const float* fch_gelu = a.fch_gelu + l * BT * 4 * C;

        // MLP block: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        // dres is d(residual3) = d(fcproj); the skip path keeps it for residual2.
        ops->zero(model->d_fch, BT * 4 * C * sizeof(float));
        ops->matmul_backward(model->d_fch, g.fcprojw + (size_t)l * C * 4 * C, g.fcprojb + l * C, dres, fch_gelu,
                             p.fcprojw + (size_t)l * C * 4 * C, BT, 4 * C, C);
        ops->gelu_backward(model->d_fch, fch, model->d_fch, BT * 4 * C);
        ops->zero(model->d_ln, BT * C * sizeof(float));
        ops->matmul_backward(model->d_ln, g.fcw + (size_t)l * 4 * C * C, g.fcb + l * 4 * C, model->d_fch, ln2,
                             p.fcw + (size_t)l * 4 * C * C, BT, C, 4 * C);
        ops->layernorm_backward(dres, g.ln2w + l * C, g.ln2b + l * C, model->d_ln, residual2, p.ln2w + l * C,
                                a.ln2_mean + l * BT, a.ln2_rstd + l * BT, BT, C);
        // attention block: residual2 = residual + attproj(attn(qkv(ln1(residual))))
        ops->zero(model->d_atty, BT * C * sizeof(float));
        ops->matmul_backward(model->d_atty, g.attprojw + (size_t)l * C * C, g.attprojb + l * C, dres, atty,
                             p.attprojw + (size_t)l * C * C, BT, C, C);
        ops->zero(model->d_qkv, BT * 3 * C * sizeof(float));
        ops->attention_backward(model->d_qkv, model->d_att, model->d_atty, qkv, att, B, T, C, NH);
        ops->zero(model->d_ln, BT * C * sizeof(float));
        ops->matmul_backward(model->d_ln, g.qkvw + (size_t)l * 3 * C * C, g.qkvb + l * 3 * C, model->d_qkv, ln1,
                             p.qkvw + (size_t)l * 3 * C * C, BT, C, 3 * C);
        ops->layernorm_backward(dres, g.ln1w + l * C, g.ln1b + l * C, model->d_ln, residual, p.ln1w + l * C,
                                a.ln1_mean + l * BT, a.ln1_rstd + l * BT, BT, C);
    }
    ops->encoder_backward(g.wte, g.wpe, dres, model->inputs, B, T, C);
}

float gpt_update(GPT* model, const AdamWConfig* cfg) {
    const Ops* ops = model->ops;
    if (!model->grads_memory) fatalf("gpt_update needs gradients (call gpt_backward first)");
    size_t n = model->num_parameters;
    if (!model->m_memory) {
        model->m_memory = ops->alloc(n * sizeof(float));
        model->v_memory = ops->alloc(n * sizeof(float));
    }
    float norm = (float)sqrt(ops->sum_squares(model->grads_memory, n));
    model->last_grad_norm = norm;
    float grad_scale = 1.0f; // clipping is applied inside the AdamW pass
    if (cfg->grad_clip > 0.0f) {
        float coef = cfg->grad_clip / (norm + 1e-6f); // as torch.nn.utils.clip_grad_norm_
        if (coef < 1.0f) grad_scale = coef;
    }
    int t = ++model->adam_step;
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t sz = model->param_sizes[i];
        float wd = gpt_param_decays(i) ? cfg->weight_decay : 0.0f;
        ops->adamw_update(model->params_memory + off, model->grads_memory + off, model->m_memory + off,
                          model->v_memory + off, sz, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, wd, grad_scale, t);
        off += sz;
    }
    return norm;
}

void gpt_free(GPT* model) {
    const Ops* ops = model->ops;
    if (!ops) return;
    ops->free(model->params_memory);
    ops->free(model->grads_memory);
    ops->free(model->m_memory);
    ops->free(model->v_memory);
    free_activations(model);
    memset(model, 0, sizeof *model);
}
