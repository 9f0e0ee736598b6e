// ilql.c - ILQL heads, loss and gradients, target sync, decoding hook and
// checkpoint tensors (ilql.h).
#include "ilql.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../common/check.h"
#include "../common/rng.h"

// Q head k's weight (V,C) and bias (V) inside a 2-head buffer.
static float* head_w(const IlqlHeads* h, float* base, int k) { return base + (size_t)k * h->qn; }
static float* head_b(const IlqlHeads* h, float* base, int k) { return base + (size_t)k * h->qn + (size_t)h->V * h->C; }

void ilql_heads_init(IlqlHeads* h, int C, int V, const Ops* ops, uint64_t seed, float init_std) {
    memset(h, 0, sizeof *h);
    h->C = C;
    h->V = V;
    h->ops = ops;
    h->qn = (size_t)V * C + (size_t)V;
    size_t qbytes = 2 * h->qn * sizeof(float), vbytes = ((size_t)C + 1) * sizeof(float);
    h->q = ops->alloc(qbytes); // zero-filled: biases 0
    h->q_target = ops->alloc(qbytes);
    h->q_grad = ops->alloc(qbytes);
    h->q_m = ops->alloc(qbytes);
    h->q_v = ops->alloc(qbytes);
    h->vh = ops->alloc(vbytes); // V starts at 0
    h->vh_grad = ops->alloc(vbytes);
    h->vh_m = ops->alloc(vbytes);
    h->vh_v = ops->alloc(vbytes);
    size_t nw = (size_t)V * C;
    float* w = mallocCheck(nw * sizeof(float));
    for (int k = 0; k < 2; k++) { // two independently initialised heads: min over them means something
        Rng rng;
        rng_seed(&rng, seed + (uint64_t)k);
        for (size_t i = 0; i < nw; i++) w[i] = init_std * rng_normal(&rng);
        ops->to_device(head_w(h, h->q, k), w, nw * sizeof(float));
        ops->to_device(head_w(h, h->q_target, k), w, nw * sizeof(float));
    }
    free(w);
}

static void free_scratch(IlqlHeads* h) {
    const Ops* o = h->ops;
    for (int k = 0; k < 2; k++) {
        if (h->logits[k]) o->free(h->logits[k]);
        if (h->losses[k]) o->free(h->losses[k]);
        h->logits[k] = h->losses[k] = NULL;
    }
    if (h->dlosses) o->free(h->dlosses);
    if (h->targets) o->free(h->targets);
    if (h->vals) o->free(h->vals);
    free(h->host_lnf);
    h->dlosses = h->vals = h->host_lnf = NULL;
    h->targets = NULL;
    h->cap = 0;
}

static void ensure_rows(IlqlHeads* h, size_t rows) {
    if (rows <= h->cap) return;
    free_scratch(h);
    const Ops* o = h->ops;
    for (int k = 0; k < 2; k++) {
        h->logits[k] = o->alloc(rows * h->V * sizeof(float));
        h->losses[k] = o->alloc(rows * sizeof(float));
    }
    h->dlosses = o->alloc(rows * sizeof(float));
    h->targets = o->alloc(rows * sizeof(int));
    h->vals = o->alloc(rows * sizeof(float));
    h->host_lnf = mallocCheck(rows * h->C * sizeof(float));
    h->cap = rows;
}

void ilql_heads_free(IlqlHeads* h) {
    const Ops* o = h->ops;
    if (!o) return;
    free_scratch(h);
    float* bufs[] = {h->q, h->q_target, h->q_grad, h->q_m, h->q_v, h->vh, h->vh_grad, h->vh_m, h->vh_v};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) o->free(bufs[i]);
    memset(h, 0, sizeof *h);
}

void ilql_heads_zero_grad(IlqlHeads* h) {
    h->ops->zero(h->q_grad, 2 * h->qn * sizeof(float));
    h->ops->zero(h->vh_grad, ((size_t)h->C + 1) * sizeof(float));
}

// One float of device memory (host round trip: the per-action gathers).
static float get1(const Ops* o, const float* p) {
    float x;
    o->to_host(&x, p, sizeof x);
    return x;
}

// Target head k at (row n, action a) from the host copy of lnf: W[a] . lnf[n] + b[a].
static double target_q(IlqlHeads* h, int k, const float* lnf_row, int a, float* wrow) {
    h->ops->to_host(wrow, head_w(h, h->q_target, k) + (size_t)a * h->C, (size_t)h->C * sizeof(float));
    double s = get1(h->ops, head_b(h, h->q_target, k) + a);
    for (int c = 0; c < h->C; c++) s += (double)wrow[c] * lnf_row[c];
    return s;
}

double ilql_loss(IlqlHeads* h, const float* lnf, int N, const int* actions, const float* rewards,
                 const unsigned char* done, const float* lm_logp, const IlqlLossConfig* cfg, float* dlnf,
                 float* dlm_logp, IlqlStats* stats) {
    const Ops* o = h->ops;
    const int C = h->C, V = h->V;
    IlqlStats st;
    memset(&st, 0, sizeof st);
    if (dlm_logp) memset(dlm_logp, 0, (size_t)N * sizeof(float));
    int K = 0;
    for (int n = 0; n < N; n++) {
        if (actions[n] >= V) fatalf("ilql: action %d at position %d is outside the vocab (%d)", actions[n], n, V);
        K += actions[n] >= 0;
    }
    if (stats) *stats = st;
    if (K == 0) return 0.0;
    ensure_rows(h, (size_t)N);
    o->to_device(h->targets, actions, (size_t)N * sizeof(int));
    o->to_host(h->host_lnf, lnf, (size_t)N * C * sizeof(float));

    // forward: both Q heads (N,V), their CE at the actions, V (N)
    double* q = mallocCheck(2 * (size_t)N * sizeof(double));
    float* ce = mallocCheck(2 * (size_t)N * sizeof(float));
    for (int k = 0; k < 2; k++) {
        o->matmul_forward(h->logits[k], lnf, head_w(h, h->q, k), head_b(h, h->q, k), N, C, V);
        o->crossentropy_forward(h->losses[k], h->logits[k], h->targets, N, V);
        o->to_host(ce + (size_t)k * N, h->losses[k], (size_t)N * sizeof(float));
        for (int n = 0; n < N; n++)
            q[(size_t)k * N + n] = actions[n] >= 0 ? get1(o, h->logits[k] + (size_t)n * V + actions[n]) : 0.0;
    }
    float* v = mallocCheck((size_t)N * sizeof(float));
    o->matmul_forward(h->vals, lnf, h->vh, h->vh + C, N, C, 1);
    o->to_host(v, h->vals, (size_t)N * sizeof(float));

    // per-action scalars (double) and their gradients
    float* wrow = mallocCheck((size_t)C * sizeof(float));
    float* dq = callocCheck(2 * (size_t)N, sizeof(float)); // d loss / d Q_k(s_n, a_n)
    float* dce = callocCheck((size_t)N, sizeof(float));    // d loss / d CE_k(n), the same for both heads
    float* dv = callocCheck((size_t)N, sizeof(float));
    const double invK = 1.0 / K;
    for (int n = 0; n < N; n++) {
        int a = actions[n];
        if (a < 0) continue;
        const float* x = h->host_lnf + (size_t)n * C;
        double tq0 = target_q(h, 0, x, a, wrow), tq1 = target_q(h, 1, x, a, wrow);
        double tq = tq0 < tq1 ? tq0 : tq1;
        double vnext = done[n] || n + 1 >= N ? 0.0 : (double)v[n + 1];
        double y = (double)rewards[n] + (double)cfg->gamma * vnext;
        for (int k = 0; k < 2; k++) {
            double e = q[(size_t)k * N + n] - y;
            st.loss_q += e * e * invK;
            dq[(size_t)k * N + n] = (float)(2.0 * e * invK);
            st.loss_cql += (double)ce[(size_t)k * N + n] * invK;
            st.q_mean += q[(size_t)k * N + n] * 0.5 * invK;
        }
        double u = tq - (double)v[n];
        double w = u < 0 ? 1.0 - cfg->tau : cfg->tau;
        st.loss_v += w * u * u * invK;
        dv[n] = (float)(-2.0 * w * u * invK);
        dce[n] = (float)(cfg->cql_weight * invK);
        st.loss_awac -= (double)lm_logp[n] * invK;
        if (dlm_logp) dlm_logp[n] = (float)(-cfg->awac_weight * invK);
        st.target_q_mean += tq * invK;
        st.v_mean += v[n] * invK;
    }
    st.actions = K;
    st.loss = st.loss_q + st.loss_v + cfg->cql_weight * st.loss_cql + cfg->awac_weight * st.loss_awac;

    // backward: each Q head's logits gradient = CQL's softmax - onehot, plus
    // the Bellman term at the action; then into W_k, b_k and lnf
    o->to_device(h->dlosses, dce, (size_t)N * sizeof(float));
    for (int k = 0; k < 2; k++) {
        o->crossentropy_backward(h->logits[k], h->logits[k], h->losses[k], h->dlosses, h->targets, N, V);
        for (int n = 0; n < N; n++) {
            if (actions[n] < 0) continue;
            float* p = h->logits[k] + (size_t)n * V + actions[n];
            float g = get1(o, p) + dq[(size_t)k * N + n];
            o->to_device(p, &g, sizeof g);
        }
        o->matmul_backward(dlnf, head_w(h, h->q_grad, k), head_b(h, h->q_grad, k), h->logits[k], lnf,
                           head_w(h, h->q, k), N, C, V);
    }
    o->to_device(h->vals, dv, (size_t)N * sizeof(float));
    o->matmul_backward(dlnf, h->vh_grad, h->vh_grad + C, h->vals, lnf, h->vh, N, C, 1);

    free(q); free(ce); free(v); free(wrow); free(dq); free(dce); free(dv);
    if (stats) *stats = st;
    return st.loss;
}

float ilql_heads_update(IlqlHeads* h, const AdamWConfig* cfg) {
    const Ops* o = h->ops;
    size_t nv = (size_t)h->C + 1, nw = (size_t)h->V * h->C;
    double ss = o->sum_squares(h->q_grad, 2 * h->qn) + o->sum_squares(h->vh_grad, nv);
    float norm = (float)sqrt(ss);
    float scale = 1.0f;
    if (cfg->grad_clip > 0 && norm > cfg->grad_clip) scale = cfg->grad_clip / (norm + 1e-6f);
    int t = ++h->step;
    for (int k = 0; k < 2; k++) {
        size_t off = (size_t)k * h->qn;
        o->adamw_update(h->q + off, h->q_grad + off, h->q_m + off, h->q_v + off, nw, cfg->lr, cfg->beta1,
                        cfg->beta2, cfg->eps, cfg->weight_decay, scale, t);
        off += nw;
        o->adamw_update(h->q + off, h->q_grad + off, h->q_m + off, h->q_v + off, (size_t)h->V, cfg->lr,
                        cfg->beta1, cfg->beta2, cfg->eps, 0.0f, scale, t);
    }
    o->adamw_update(h->vh, h->vh_grad, h->vh_m, h->vh_v, nv, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, 0.0f,
                    scale, t);
    h->last_grad_norm = norm;
    return norm;
}

void ilql_heads_sync_targets(IlqlHeads* h, float alpha) {
    // through the host in chunks: the ops table has no device-to-device axpby
    const Ops* o = h->ops;
    const size_t n = 2 * h->qn, chunk = (size_t)1 << 20;
    float* a = mallocCheck(chunk * sizeof(float));
    float* b = mallocCheck(chunk * sizeof(float));
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        o->to_host(a, h->q + off, m * sizeof(float));
        o->to_host(b, h->q_target + off, m * sizeof(float));
        for (size_t i = 0; i < m; i++) b[i] = alpha * a[i] + (1.0f - alpha) * b[i];
        o->to_device(h->q_target + off, b, m * sizeof(float));
    }
    free(a);
    free(b);
}

// ---------------------------------------------------------------- decoding

static void decode_hook(void* ctx, const int* seq, const int* pos, const int* tok, const int* want, int R,
                        const float* hidden, float* logits, int W, int V) {
    (void)seq; (void)pos; (void)tok; (void)want; (void)R;
    IlqlDecoder* d = ctx;
    IlqlHeads* h = d->heads;
    if (V != h->V) fatalf("ilql: the policy's vocab (%d) differs from the heads' (%d)", V, h->V);
    if (d->beta == 0.0f) return;
    const Ops* o = h->ops;
    const int C = h->C;
    ensure_rows(h, (size_t)W);
    if ((size_t)W > d->rows) {
        free(d->host_q);
        free(d->host_v);
        d->host_q = mallocCheck(2 * (size_t)W * V * sizeof(float));
        d->host_v = mallocCheck((size_t)W * sizeof(float));
        d->rows = (size_t)W;
    }
    for (int k = 0; k < 2; k++) {
        o->matmul_forward(h->logits[k], hidden, head_w(h, h->q_target, k), head_b(h, h->q_target, k), W, C, V);
        o->to_host(d->host_q + (size_t)k * W * V, h->logits[k], (size_t)W * V * sizeof(float));
    }
    o->matmul_forward(h->vals, hidden, h->vh, h->vh + C, W, C, 1);
    o->to_host(d->host_v, h->vals, (size_t)W * sizeof(float));
    const float* q0 = d->host_q;
    const float* q1 = d->host_q + (size_t)W * V;
    for (int r = 0; r < W; r++) {
        float* l = logits + (size_t)r * V;
        const float* a = q0 + (size_t)r * V;
        const float* b = q1 + (size_t)r * V;
        float vr = d->host_v[r];
        for (int i = 0; i < V; i++) l[i] += d->beta * ((a[i] < b[i] ? a[i] : b[i]) - vr);
    }
}

void ilql_decoder_init(IlqlDecoder* d, IlqlHeads* h, float beta) {
    memset(d, 0, sizeof *d);
    d->heads = h;
    d->beta = beta;
    d->hook = (LogitsHook){.fn = decode_hook, .ctx = d};
}

void ilql_decoder_free(IlqlDecoder* d) {
    free(d->host_q);
    free(d->host_v);
    memset(d, 0, sizeof *d);
}

// ---------------------------------------------------------------- checkpoints

static const char* const TENSOR_NAMES[ILQL_NUM_TENSORS] = {
    "ilql.q1.w", "ilql.q1.b", "ilql.q2.w", "ilql.q2.b", "ilql.q1_target.w", "ilql.q1_target.b",
    "ilql.q2_target.w", "ilql.q2_target.b", "ilql.v.w", "ilql.v.b"};

// Device pointer and shape of tensor i.
static float* tensor_ptr(const IlqlHeads* h, int i, int* ndim, int64_t* shape) {
    if (i < 8) {
        float* base = i < 4 ? h->q : h->q_target;
        int k = (i / 2) % 2, is_bias = i % 2;
        *ndim = is_bias ? 1 : 2;
        shape[0] = h->V;
        shape[1] = h->C;
        return is_bias ? head_b(h, base, k) : head_w(h, base, k);
    }
    *ndim = 1;
    shape[0] = i == 8 ? h->C : 1;
    return i == 8 ? h->vh : h->vh + h->C;
}

void ilql_heads_to_tensors(const IlqlHeads* h, float** host, StWriteTensor out[ILQL_NUM_TENSORS]) {
    size_t total = 4 * h->qn + (size_t)h->C + 1;
    float* buf = *host = mallocCheck(total * sizeof(float));
    for (int i = 0; i < ILQL_NUM_TENSORS; i++) {
        StWriteTensor* t = &out[i];
        memset(t, 0, sizeof *t);
        t->name = TENSOR_NAMES[i];
        const float* dev = tensor_ptr(h, i, &t->ndim, t->shape);
        size_t numel = t->ndim == 2 ? (size_t)t->shape[0] * t->shape[1] : (size_t)t->shape[0];
        h->ops->to_host(buf, dev, numel * sizeof(float));
        t->data = buf;
        buf += numel;
    }
}

int ilql_checkpoint_has_heads(const char* checkpoint_dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", checkpoint_dir);
    if (!st_sniff(path)) return 0;
    StFile f;
    st_open(&f, path);
    int has = st_find(&f, TENSOR_NAMES[0]) != NULL;
    st_close(&f);
    return has;
}

void ilql_heads_load(IlqlHeads* h, const char* checkpoint_dir, int C, int V, const Ops* ops) {
    ilql_heads_init(h, C, V, ops, 0, 0.0f);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", checkpoint_dir);
    StFile f;
    st_open(&f, path);
    float* buf = mallocCheck(h->qn * sizeof(float));
    for (int i = 0; i < ILQL_NUM_TENSORS; i++) {
        int ndim;
        int64_t shape[2];
        float* dev = tensor_ptr(h, i, &ndim, shape);
        const StTensor* t = st_find(&f, TENSOR_NAMES[i]);
        if (!t) fatalf("%s: no tensor '%s': not an ILQL checkpoint (train one with `rlhfd ilql`)", path, TENSOR_NAMES[i]);
        if (t->ndim != ndim || t->shape[0] != shape[0] || (ndim == 2 && t->shape[1] != shape[1])) {
            char got[64], want[64];
            fatalf("%s: tensor '%s' has shape %s, expected %s", path, TENSOR_NAMES[i],
                   st_shape_str(got, sizeof got, t->shape, t->ndim), st_shape_str(want, sizeof want, shape, ndim));
        }
        if (t->dtype == ST_OTHER)
            fatalf("%s: tensor '%s' has dtype %s (F32, F16 or BF16 expected)", path, TENSOR_NAMES[i], t->dtype_name);
        st_read_f32(&f, t, buf);
        ops->to_device(dev, buf, t->numel * sizeof(float));
    }
    free(buf);
    st_close(&f);
}
