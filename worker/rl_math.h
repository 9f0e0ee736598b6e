// Pure host math shared by the RL fine-tuning algorithms (PPO, policy gradient, GRPO, RLOO, Quark, DPO).
// No model, no allocation beyond small scratch; every function is checked against a PyTorch reference
// (tests/rl/rlmath_torch.py). Sums are accumulated in double so results do not depend on summation noise.
#ifndef RLHFD_RL_MATH_H
#define RLHFD_RL_MATH_H

#include <stddef.h>

// GAE on one sequence of n response steps: rewards[t], values[t]; value after the last step = 0.
// adv[t] = sum_k (gamma*lam)^k delta[t+k], delta[t] = r[t] + gamma*V[t+1] - V[t]; ret[t] = adv[t] + values[t].
void rl_gae(const float* rewards, const float* values, int n, float gamma, float lam, float* adv, float* ret);
// Whitening over entries with mask != 0 (mask NULL = all): (x-mean)/(std+1e-8); shift_mean=0 adds the mean back (trlx).
// std is the unbiased (n-1) standard deviation as in trlx/torch.var; masked-out entries are left untouched.
void rl_whiten(float* x, const float* mask, size_t n, int shift_mean);
// PPO clipped surrogate, mean over mask: loss = mean(max(-A*ratio, -A*clip(ratio,1-c,1+c))), ratio=exp(new-old).
// dlogp[i] = d loss / d logp_new[i]; *clipfrac, *approx_kl (mean of 0.5*(new-old)^2) out.
// clipfrac = mean over mask of [the clipped branch is the active max] (trlx: pg_loss2 > pg_loss1).
// dlogp may be NULL; clipfrac/approx_kl may be NULL. Returns 0 (and zero grads) when the mask is empty.
double rl_ppo_policy_loss(const float* logp_new, const float* logp_old, const float* adv, const float* mask,
                          size_t n, float clip, float* dlogp, float* clipfrac, float* approx_kl);
// Clipped value loss (trlx): 0.5*mean(max((v-ret)^2, (vold+clip(v-vold,-c,c)-ret)^2)); dv out.
// vf_clipfrac = mean over mask of [the clipped branch is strictly larger]. dv / vf_clipfrac may be NULL.
double rl_value_loss(const float* v, const float* v_old, const float* ret, const float* mask, size_t n,
                     float clip, float* dv, float* vf_clipfrac);
// per-token KL estimate of policy vs reference: estimator 1 (k1 = logp - logp_ref) or 3 (k3 = exp(r)-1-r, r = ref-logp)
// (estimator 2, k2 = 0.5*(logp-logp_ref)^2, is accepted too).
float rl_kl_token(float logp, float logp_ref, int estimator);
// KL controllers (Ziegler et al. 2019): fixed, or adaptive: e = clip(kl/target - 1, -0.2, 0.2); beta *= 1 + e*n_steps/horizon
typedef struct { int adaptive; float value, target, horizon; } KLController;
void kl_controller_init(KLController* c, float init, int adaptive, float target, float horizon);
void kl_controller_update(KLController* c, float current_kl, int n_steps);
// mean entropy of softmax(logits) over V, and explained variance 1 - Var(ret - v)/Var(ret) over mask
// rl_entropy: the entropy (nats) of one distribution softmax(logits[0..V-1]).
// rl_explained_variance: population variances over mask != 0; returns 0 when Var(ret) == 0.
double rl_entropy(const float* logits, int V);
double rl_explained_variance(const float* v, const float* ret, const float* mask, size_t n);
// Quark: reward quantile bins, bins[i] in 0..K-1 (K-1 = highest rewards), equal-size by rank, ties by index
// bins[i] = floor(rank(i) * K / n) where rank 0 = lowest reward (ties: lower index ranks lower).
void rl_quantile_bins(const float* rewards, size_t n, int K, int* bins);
// GRPO: per group of G consecutive samples, (r - mean)/(std + 1e-8) (scale_std=0: r - mean); RLOO: r - mean of the other G-1
// GRPO std is the unbiased (G-1) standard deviation as in torch.std (0 when G == 1).
// RLOO with G == 1 has no baseline: adv = r.
void rl_grpo_advantages(const float* r, size_t n_groups, int G, int scale_std, float* adv);
void rl_rloo_advantages(const float* r, size_t n_groups, int G, float* adv);
// DPO (Rafailov et al.): logits = beta*((pc-rc)-(pr-rr)) over n pairs of sequence log-prob sums (policy chosen/rejected,
// reference chosen/rejected); loss = mean(-log sigmoid(logits)); dpc, dpr = d loss/d pc, pr; *acc = mean(logits > 0).
// dpc/dpr/acc may be NULL.
double rl_dpo_loss(const float* pc, const float* pr, const float* rc, const float* rr, size_t n, float beta,
                   float* dpc, float* dpr, float* acc);

#endif // RLHFD_RL_MATH_H
