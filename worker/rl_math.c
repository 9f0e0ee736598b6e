// rl_math.c - the host-side math of RL fine-tuning: advantages, losses and
// their gradients, KL estimators and controllers, statistics. Pure functions
// on float arrays; accumulations are in double. Each function mirrors the
// formula of its reference implementation (trlx / Ziegler et al. / DeepSeek
// GRPO / RLOO / Rafailov et al. DPO) and is checked against PyTorch by
// tests/rl/rlmath_torch.py.
#include "worker/rl_math.h"

#include <math.h>
#include <stdlib.h>

#include "common/check.h"

static inline int mask_on(const float* mask, size_t i) { return mask == NULL || mask[i] != 0.0f; }

static size_t mask_count(const float* mask, size_t n) {
    if (mask == NULL) return n;
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += mask[i] != 0.0f;
    return count;
}

// ----------------------------------------------------------------------------
// advantages

void rl_gae(const float* rewards, const float* values, int n, float gamma, float lam, float* adv, float* ret) {
    // reverse scan: A[t] = delta[t] + gamma*lam*A[t+1], with V[n] = 0 (the episode ends)
    double last_gae = 0.0;
    for (int t = n - 1; t >= 0; t--) {
        double next_value = (t + 1 < n) ? values[t + 1] : 0.0;
        double delta = (double)rewards[t] + (double)gamma * next_value - (double)values[t];
        last_gae = delta + (double)gamma * (double)lam * last_gae;
        adv[t] = (float)last_gae;
        ret[t] = (float)(last_gae + (double)values[t]);
    }
}

void rl_whiten(float* x, const float* mask, size_t n, int shift_mean) {
    size_t count = mask_count(mask, n);
    if (count == 0) return;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        if (mask_on(mask, i)) sum += x[i];
    double mean = sum / (double)count;
    double sq = 0.0;
    for (size_t i = 0; i < n; i++)
        if (mask_on(mask, i)) sq += ((double)x[i] - mean) * ((double)x[i] - mean);
    // unbiased variance as torch.var / trlx's masked_var; one entry has no spread
    double std = count > 1 ? sqrt(sq / (double)(count - 1)) : 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!mask_on(mask, i)) continue;
        double w = ((double)x[i] - mean) / (std + 1e-8);
        if (!shift_mean) w += mean;
        x[i] = (float)w;
    }
}

void rl_grpo_advantages(const float* r, size_t n_groups, int G, int scale_std, float* adv) {
    for (size_t g = 0; g < n_groups; g++) {
        const float* rg = r + g * (size_t)G;
        float* ag = adv + g * (size_t)G;
        double sum = 0.0;
        for (int i = 0; i < G; i++) sum += rg[i];
        double mean = sum / G;
        double sq = 0.0;
        for (int i = 0; i < G; i++) sq += ((double)rg[i] - mean) * ((double)rg[i] - mean);
        double std = G > 1 ? sqrt(sq / (G - 1)) : 0.0;
        for (int i = 0; i < G; i++) {
            double a = (double)rg[i] - mean;
            ag[i] = (float)(scale_std ? a / (std + 1e-8) : a);
        }
    }
}

void rl_rloo_advantages(const float* r, size_t n_groups, int G, float* adv) {
    for (size_t g = 0; g < n_groups; g++) {
        const float* rg = r + g * (size_t)G;
        float* ag = adv + g * (size_t)G;
        double sum = 0.0;
        for (int i = 0; i < G; i++) sum += rg[i];
        for (int i = 0; i < G; i++) {
            // leave-one-out baseline: the mean reward of the group's other samples
            double baseline = G > 1 ? (sum - rg[i]) / (G - 1) : 0.0;
            ag[i] = (float)((double)rg[i] - baseline);
        }
    }
}

typedef struct { float value; size_t index; } RankedReward;

static int ranked_reward_cmp(const void* a, const void* b) {
    const RankedReward* x = a;
    const RankedReward* y = b;
    if (x->value < y->value) return -1;
    if (x->value > y->value) return 1;
    return (x->index > y->index) - (x->index < y->index); // ties: by index, i.e. a stable sort
}

void rl_quantile_bins(const float* rewards, size_t n, int K, int* bins) {
    if (n == 0) return;
    RankedReward* ranked = mallocCheck(n * sizeof *ranked);
    for (size_t i = 0; i < n; i++) ranked[i] = (RankedReward){rewards[i], i};
    qsort(ranked, n, sizeof *ranked, ranked_reward_cmp);
    for (size_t rank = 0; rank < n; rank++)
        bins[ranked[rank].index] = (int)(rank * (size_t)K / n); // equal-size bins by rank
    free(ranked);
}

// ----------------------------------------------------------------------------
// losses

double rl_ppo_policy_loss(const float* logp_new, const float* logp_old, const float* adv, const float* mask,
                          size_t n, float clip, float* dlogp, float* clipfrac, float* approx_kl) {
    size_t count = mask_count(mask, n);
    double loss = 0.0, clipped = 0.0, kl = 0.0;
    double inv = count ? 1.0 / (double)count : 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!mask_on(mask, i)) {
            if (dlogp) dlogp[i] = 0.0f;
            continue;
        }
        double log_ratio = (double)logp_new[i] - (double)logp_old[i];
        double ratio = exp(log_ratio);
        double ratio_clipped = fmin(fmax(ratio, 1.0 - clip), 1.0 + clip);
        double a = adv[i];
        double pg_loss1 = -a * ratio;
        double pg_loss2 = -a * ratio_clipped;
        // the pessimistic branch is active; when the ratio is inside the clip
        // range both branches are equal and carry the same gradient
        int clip_active = pg_loss2 > pg_loss1;
        loss += clip_active ? pg_loss2 : pg_loss1;
        clipped += clip_active;
        kl += 0.5 * log_ratio * log_ratio;
        if (dlogp) {
            // d(-A*ratio)/dlogp = -A*ratio; the clipped branch is constant in logp
            // unless the ratio lies inside [1-c, 1+c]
            int inside = ratio >= 1.0 - clip && ratio <= 1.0 + clip;
            double g = (!clip_active || inside) ? -a * ratio : 0.0;
            dlogp[i] = (float)(g * inv);
        }
    }
    if (clipfrac) *clipfrac = (float)(clipped * inv);
    if (approx_kl) *approx_kl = (float)(kl * inv);
    return loss * inv;
}

double rl_value_loss(const float* v, const float* v_old, const float* ret, const float* mask, size_t n,
                     float clip, float* dv, float* vf_clipfrac) {
    size_t count = mask_count(mask, n);
    double loss = 0.0, clipped = 0.0;
    double inv = count ? 1.0 / (double)count : 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!mask_on(mask, i)) {
            if (dv) dv[i] = 0.0f;
            continue;
        }
        double diff = (double)v[i] - (double)v_old[i];
        double diff_clipped = fmin(fmax(diff, -(double)clip), (double)clip);
        double v_clipped = (double)v_old[i] + diff_clipped;
        double err1 = (double)v[i] - (double)ret[i];
        double err2 = v_clipped - (double)ret[i];
        double vf1 = err1 * err1, vf2 = err2 * err2;
        int clip_active = vf2 > vf1;
        loss += clip_active ? vf2 : vf1;
        clipped += clip_active;
        if (dv) {
            // 0.5*d(err^2)/dv = err; the clipped branch moves with v only inside the clip range
            int inside = diff >= -(double)clip && diff <= (double)clip;
            double g = clip_active ? (inside ? err2 : 0.0) : err1;
            dv[i] = (float)(g * inv);
        }
    }
    if (vf_clipfrac) *vf_clipfrac = (float)(clipped * inv);
    return 0.5 * loss * inv;
}

double rl_dpo_loss(const float* pc, const float* pr, const float* rc, const float* rr, size_t n, float beta,
                   float* dpc, float* dpr, float* acc) {
    double loss = 0.0, correct = 0.0;
    double inv = n ? 1.0 / (double)n : 0.0;
    for (size_t i = 0; i < n; i++) {
        double logits = (double)beta * (((double)pc[i] - (double)rc[i]) - ((double)pr[i] - (double)rr[i]));
        // -log sigmoid(z) = softplus(-z), computed without overflow for large |z|
        double z = -logits;
        loss += z > 0 ? z + log1p(exp(-z)) : log1p(exp(z));
        correct += logits > 0;
        // d/dlogits of softplus(-logits) = -sigmoid(-logits)
        double sig_neg = 1.0 / (1.0 + exp(logits));
        double dlogits = -sig_neg * inv;
        if (dpc) dpc[i] = (float)(dlogits * beta);
        if (dpr) dpr[i] = (float)(-dlogits * beta);
    }
    if (acc) *acc = (float)(correct * inv);
    return loss * inv;
}

// ----------------------------------------------------------------------------
// KL

float rl_kl_token(float logp, float logp_ref, int estimator) {
    double d = (double)logp - (double)logp_ref;
    switch (estimator) {
    case 1: return (float)d;                       // k1: unbiased, high variance, can be negative
    case 2: return (float)(0.5 * d * d);           // k2: biased, low variance
    case 3: return (float)(expm1(-d) + d);         // k3: exp(r)-1-r with r = ref - logp; unbiased, >= 0
    default: fatalf("KL estimator %d: expected 1, 2 or 3", estimator);
    }
}

void kl_controller_init(KLController* c, float init, int adaptive, float target, float horizon) {
    c->adaptive = adaptive;
    c->value = init;
    c->target = target;
    c->horizon = horizon;
}

void kl_controller_update(KLController* c, float current_kl, int n_steps) {
    if (!c->adaptive) return;
    // proportional control of beta towards the KL target (Ziegler et al. 2019, trlx AdaptiveKLController)
    double error = (double)current_kl / (double)c->target - 1.0;
    error = fmin(fmax(error, -0.2), 0.2);
    double mult = 1.0 + error * (double)n_steps / (double)c->horizon;
    c->value = (float)((double)c->value * mult);
}

// ----------------------------------------------------------------------------
// statistics

double rl_entropy(const float* logits, int V) {
    double maxv = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > maxv) maxv = logits[i];
    double sum = 0.0, weighted = 0.0;
    for (int i = 0; i < V; i++) {
        double e = exp((double)logits[i] - maxv);
        sum += e;
        weighted += e * ((double)logits[i] - maxv);
    }
    // H = -sum p*log p = log Z - E_p[x] (both shifted by max)
    return log(sum) - weighted / sum;
}

double rl_explained_variance(const float* v, const float* ret, const float* mask, size_t n) {
    size_t count = mask_count(mask, n);
    if (count == 0) return 0.0;
    double sum_ret = 0.0, sum_err = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!mask_on(mask, i)) continue;
        sum_ret += ret[i];
        sum_err += (double)ret[i] - (double)v[i];
    }
    double mean_ret = sum_ret / (double)count, mean_err = sum_err / (double)count;
    double var_ret = 0.0, var_err = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!mask_on(mask, i)) continue;
        double dr = (double)ret[i] - mean_ret;
        double de = (double)ret[i] - (double)v[i] - mean_err;
        var_ret += dr * dr;
        var_err += de * de;
    }
    if (var_ret == 0.0) return 0.0;
    return 1.0 - var_err / var_ret;
}
