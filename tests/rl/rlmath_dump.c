// rlmath_dump.c - runs every function of worker/rl_math.h on random inputs
// (several sizes, masks with zeros, clipping actually active, ties) and dumps
// inputs and outputs as .npy files plus meta.json, so that rlmath_torch.py can
// recompute each case in PyTorch (autograd for the gradients) and compare.
//
// usage: rlmath_dump --out DIR [--seed N] [--perturb]
// --perturb flips one output value slightly, to check that the reference
// comparison can fail.
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "npy.h"
#include "common/check.h"
#include "worker/rl_math.h"

// ----------------------------------------------------------------------------
// random numbers: splitmix64, independent of the library's RNG

static uint64_t rng_state = 1;

static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_uniform(void) { return (float)(rng_next() >> 40) / 16777216.0f; }

static float rng_normal(void) {
    float u1 = rng_uniform(), u2 = rng_uniform();
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static float* normal_array(size_t n, float mean, float std) {
    float* x = mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = mean + std * rng_normal();
    return x;
}

// a 0/1 mask with about `zero_frac` zeros, never all zeros
static float* mask_array(size_t n, float zero_frac) {
    float* m = mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) m[i] = rng_uniform() < zero_frac ? 0.0f : 1.0f;
    m[0] = 1.0f;
    return m;
}

// ----------------------------------------------------------------------------
// .npy output (tests/common/npy.h) and the meta.json case list

static const char* out_dir = NULL;
static json_t* cases = NULL;
static int perturb = 0;

static void npy_write(const char* name, const char* descr, const void* data, size_t elem_size, size_t count) {
    int shape[1] = {(int)count};
    npy_save(out_dir, name, descr, data, elem_size, shape, 1);
}

static json_t* case_begin(const char* fn, int index) {
    json_t* c = json_object();
    char name[128];
    snprintf(name, sizeof name, "%s_%d", fn, index);
    json_object_set_new(c, "name", json_string(name));
    json_object_set_new(c, "fn", json_string(fn));
    json_array_append_new(cases, c);
    return c;
}

static void dump_f32(json_t* c, const char* field, const float* x, size_t n) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", json_string_value(json_object_get(c, "name")), field);
    npy_write(name, "<f4", x, sizeof(float), n);
}

static void dump_i32(json_t* c, const char* field, const int* x, size_t n) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", json_string_value(json_object_get(c, "name")), field);
    npy_write(name, "<i4", x, sizeof(int), n);
}

static void set_num(json_t* c, const char* key, double v) { json_object_set_new(c, key, json_real(v)); }
static void set_int(json_t* c, const char* key, long long v) { json_object_set_new(c, key, json_integer(v)); }

// ----------------------------------------------------------------------------
// the cases

static const size_t SIZES[] = {1, 7, 64, 1000};
#define NUM_SIZES (sizeof SIZES / sizeof SIZES[0])

static void cases_gae(void) {
    const float gammas[] = {1.0f, 0.99f, 0.9f, 0.5f};
    const float lams[] = {0.95f, 1.0f, 0.0f, 0.8f};
    for (size_t k = 0; k < NUM_SIZES; k++) {
        int n = (int)SIZES[k];
        float* r = normal_array((size_t)n, 0.0f, 1.0f);
        float* v = normal_array((size_t)n, 0.2f, 0.7f);
        float* adv = mallocCheck((size_t)n * sizeof(float));
        float* ret = mallocCheck((size_t)n * sizeof(float));
        rl_gae(r, v, n, gammas[k], lams[k], adv, ret);
        if (perturb && k == 2) adv[n / 2] *= 1.001f;
        json_t* c = case_begin("gae", (int)k);
        set_num(c, "gamma", gammas[k]);
        set_num(c, "lam", lams[k]);
        dump_f32(c, "rewards", r, (size_t)n);
        dump_f32(c, "values", v, (size_t)n);
        dump_f32(c, "adv", adv, (size_t)n);
        dump_f32(c, "ret", ret, (size_t)n);
        free(r); free(v); free(adv); free(ret);
    }
}

static void cases_whiten(void) {
    int index = 0;
    for (size_t k = 0; k < NUM_SIZES; k++) {
        size_t n = SIZES[k];
        for (int variant = 0; variant < 4; variant++) { // (mask?, shift_mean)
            int use_mask = variant & 1, shift_mean = variant >> 1;
            float* x = normal_array(n, 1.5f, 2.0f);
            float* mask = use_mask ? mask_array(n, 0.3f) : NULL;
            float* y = mallocCheck(n * sizeof(float));
            memcpy(y, x, n * sizeof(float));
            rl_whiten(y, mask, n, shift_mean);
            json_t* c = case_begin("whiten", index++);
            set_int(c, "shift_mean", shift_mean);
            set_int(c, "has_mask", use_mask);
            dump_f32(c, "x", x, n);
            if (mask) dump_f32(c, "mask", mask, n);
            dump_f32(c, "y", y, n);
            free(x); free(mask); free(y);
        }
    }
}

static void cases_ppo(void) {
    const float clips[] = {0.2f, 0.1f, 0.3f};
    int index = 0;
    for (size_t k = 0; k < NUM_SIZES; k++) {
        for (int ci = 0; ci < 3; ci++) {
            size_t n = SIZES[k];
            float* old = normal_array(n, -2.0f, 1.0f);
            float* lp = mallocCheck(n * sizeof(float));
            for (size_t i = 0; i < n; i++) lp[i] = old[i] + 0.3f * rng_normal(); // ratios well outside 1 +- c
            float* adv = normal_array(n, 0.0f, 1.0f);
            float* mask = ci == 2 ? NULL : mask_array(n, 0.25f);
            float* dlogp = mallocCheck(n * sizeof(float));
            float clipfrac = -1.0f, approx_kl = -1.0f;
            double loss = rl_ppo_policy_loss(lp, old, adv, mask, n, clips[ci], dlogp, &clipfrac, &approx_kl);
            if (perturb && k == 3 && ci == 0) dlogp[3] += 1e-4f;
            json_t* c = case_begin("ppo", index++);
            set_num(c, "clip", clips[ci]);
            set_num(c, "loss", loss);
            set_num(c, "clipfrac", clipfrac);
            set_num(c, "approx_kl", approx_kl);
            set_int(c, "has_mask", mask != NULL);
            dump_f32(c, "logp_new", lp, n);
            dump_f32(c, "logp_old", old, n);
            dump_f32(c, "adv", adv, n);
            if (mask) dump_f32(c, "mask", mask, n);
            dump_f32(c, "dlogp", dlogp, n);
            free(old); free(lp); free(adv); free(mask); free(dlogp);
        }
    }
}

static void cases_value(void) {
    const float clips[] = {0.2f, 0.5f, 0.05f};
    int index = 0;
    for (size_t k = 0; k < NUM_SIZES; k++) {
        for (int ci = 0; ci < 3; ci++) {
            size_t n = SIZES[k];
            float* v_old = normal_array(n, 0.0f, 1.0f);
            float* v = mallocCheck(n * sizeof(float));
            for (size_t i = 0; i < n; i++) v[i] = v_old[i] + 0.4f * rng_normal();
            float* ret = normal_array(n, 0.0f, 1.0f);
            float* mask = ci == 1 ? NULL : mask_array(n, 0.3f);
            float* dv = mallocCheck(n * sizeof(float));
            float vf_clipfrac = -1.0f;
            double loss = rl_value_loss(v, v_old, ret, mask, n, clips[ci], dv, &vf_clipfrac);
            json_t* c = case_begin("value", index++);
            set_num(c, "clip", clips[ci]);
            set_num(c, "loss", loss);
            set_num(c, "vf_clipfrac", vf_clipfrac);
            set_int(c, "has_mask", mask != NULL);
            dump_f32(c, "v", v, n);
            dump_f32(c, "v_old", v_old, n);
            dump_f32(c, "ret", ret, n);
            if (mask) dump_f32(c, "mask", mask, n);
            dump_f32(c, "dv", dv, n);
            free(v_old); free(v); free(ret); free(mask); free(dv);
        }
    }
}

static void cases_kl_token(void) {
    size_t n = 500;
    float* lp = normal_array(n, -3.0f, 1.5f);
    float* ref = mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) ref[i] = lp[i] + (i % 5 == 0 ? 2.0f : 0.5f) * rng_normal();
    float* kl = mallocCheck(n * sizeof(float));
    for (int est = 1; est <= 3; est++) {
        for (size_t i = 0; i < n; i++) kl[i] = rl_kl_token(lp[i], ref[i], est);
        json_t* c = case_begin("kl_token", est);
        set_int(c, "estimator", est);
        dump_f32(c, "logp", lp, n);
        dump_f32(c, "logp_ref", ref, n);
        dump_f32(c, "kl", kl, n);
    }
    free(lp); free(ref); free(kl);
}

static void cases_kl_controller(void) {
    // several updates with KLs below, near and far above the target (the clip at +-0.2 active)
    const int steps = 40;
    float kls[40], values[40];
    int n_steps[40];
    for (int adaptive = 0; adaptive <= 1; adaptive++) {
        for (int variant = 0; variant < 2; variant++) {
            KLController ctl;
            float init = variant ? 0.2f : 0.05f, target = variant ? 6.0f : 1.0f;
            float horizon = variant ? 10000.0f : 500.0f;
            kl_controller_init(&ctl, init, adaptive, target, horizon);
            for (int s = 0; s < steps; s++) {
                kls[s] = target * (float)exp(1.2 * rng_normal());
                n_steps[s] = 1 + (int)(rng_next() % 256);
                kl_controller_update(&ctl, kls[s], n_steps[s]);
                values[s] = ctl.value;
            }
            json_t* c = case_begin("kl_controller", adaptive * 2 + variant);
            set_int(c, "adaptive", adaptive);
            set_num(c, "init", init);
            set_num(c, "target", target);
            set_num(c, "horizon", horizon);
            dump_f32(c, "kls", kls, (size_t)steps);
            dump_i32(c, "n_steps", n_steps, (size_t)steps);
            dump_f32(c, "values", values, (size_t)steps);
        }
    }
}

static void cases_entropy(void) {
    const int Vs[] = {1, 2, 50, 50257};
    const float scales[] = {1.0f, 30.0f, 3.0f, 2.0f}; // 30: nearly one-hot, logits far from 0
    for (int k = 0; k < 4; k++) {
        int V = Vs[k], rows = 4;
        float* logits = normal_array((size_t)V * rows, 5.0f, scales[k]);
        float ent[4];
        for (int r = 0; r < rows; r++) ent[r] = (float)rl_entropy(logits + (size_t)r * V, V);
        json_t* c = case_begin("entropy", k);
        set_int(c, "V", V);
        set_int(c, "rows", rows);
        dump_f32(c, "logits", logits, (size_t)V * rows);
        dump_f32(c, "entropy", ent, (size_t)rows);
        free(logits);
    }
}

static void cases_explained_variance(void) {
    int index = 0;
    for (size_t k = 1; k < NUM_SIZES; k++) {
        for (int use_mask = 0; use_mask <= 1; use_mask++) {
            size_t n = SIZES[k];
            float* ret = normal_array(n, 1.0f, 2.0f);
            float* v = mallocCheck(n * sizeof(float));
            for (size_t i = 0; i < n; i++) v[i] = 0.7f * ret[i] + 0.8f * rng_normal();
            float* mask = use_mask ? mask_array(n, 0.3f) : NULL;
            double ev = rl_explained_variance(v, ret, mask, n);
            json_t* c = case_begin("explained_variance", index++);
            set_num(c, "ev", ev);
            set_int(c, "has_mask", use_mask);
            dump_f32(c, "v", v, n);
            dump_f32(c, "ret", ret, n);
            if (mask) dump_f32(c, "mask", mask, n);
            free(ret); free(v); free(mask);
        }
    }
}

static void cases_quantile_bins(void) {
    const int Ks[] = {1, 3, 5, 4};
    int index = 0;
    for (size_t k = 0; k < NUM_SIZES; k++) {
        for (int with_ties = 0; with_ties <= 1; with_ties++) {
            size_t n = SIZES[k];
            float* r = normal_array(n, 0.0f, 1.0f);
            if (with_ties)
                for (size_t i = 0; i < n; i++) r[i] = roundf(r[i] * 2.0f) / 2.0f; // many equal rewards
            int K = Ks[k];
            int* bins = mallocCheck(n * sizeof(int));
            rl_quantile_bins(r, n, K, bins);
            json_t* c = case_begin("quantile_bins", index++);
            set_int(c, "K", K);
            dump_f32(c, "rewards", r, n);
            dump_i32(c, "bins", bins, n);
            free(r); free(bins);
        }
    }
}

static void cases_group_advantages(void) {
    const int Gs[] = {1, 2, 4, 8};
    const size_t groups[] = {3, 5, 16, 2};
    int index = 0;
    for (int k = 0; k < 4; k++) {
        size_t n = groups[k] * (size_t)Gs[k];
        float* r = normal_array(n, 0.5f, 1.0f);
        if (k == 2) // one group with identical rewards: zero std
            for (int i = 0; i < Gs[k]; i++) r[i] = 0.25f;
        float* grpo_std = mallocCheck(n * sizeof(float));
        float* grpo_nostd = mallocCheck(n * sizeof(float));
        float* rloo = mallocCheck(n * sizeof(float));
        rl_grpo_advantages(r, groups[k], Gs[k], 1, grpo_std);
        rl_grpo_advantages(r, groups[k], Gs[k], 0, grpo_nostd);
        rl_rloo_advantages(r, groups[k], Gs[k], rloo);
        json_t* c = case_begin("group_adv", index++);
        set_int(c, "G", Gs[k]);
        set_int(c, "groups", (long long)groups[k]);
        dump_f32(c, "r", r, n);
        dump_f32(c, "grpo_std", grpo_std, n);
        dump_f32(c, "grpo_nostd", grpo_nostd, n);
        dump_f32(c, "rloo", rloo, n);
        free(r); free(grpo_std); free(grpo_nostd); free(rloo);
    }
}

static void cases_dpo(void) {
    const float betas[] = {0.1f, 0.5f, 0.05f, 2.0f};
    for (size_t k = 0; k < NUM_SIZES; k++) {
        size_t n = SIZES[k];
        float* pc = normal_array(n, -40.0f, 10.0f);
        float* pr = normal_array(n, -40.0f, 10.0f);
        float* rc = mallocCheck(n * sizeof(float));
        float* rr = mallocCheck(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            rc[i] = pc[i] + 3.0f * rng_normal();
            rr[i] = pr[i] + 3.0f * rng_normal();
        }
        float* dpc = mallocCheck(n * sizeof(float));
        float* dpr = mallocCheck(n * sizeof(float));
        float acc = -1.0f;
        double loss = rl_dpo_loss(pc, pr, rc, rr, n, betas[k], dpc, dpr, &acc);
        json_t* c = case_begin("dpo", (int)k);
        set_num(c, "beta", betas[k]);
        set_num(c, "loss", loss);
        set_num(c, "acc", acc);
        dump_f32(c, "pc", pc, n);
        dump_f32(c, "pr", pr, n);
        dump_f32(c, "rc", rc, n);
        dump_f32(c, "rr", rr, n);
        dump_f32(c, "dpc", dpc, n);
        dump_f32(c, "dpr", dpr, n);
        free(pc); free(pr); free(rc); free(rr); free(dpc); free(dpr);
    }
}

int main(int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out_dir = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) rng_state = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--perturb") == 0) perturb = 1;
        else fatalf("rlmath_dump: unknown argument '%s' (usage: --out DIR [--seed N] [--perturb])", argv[i]);
    }
    if (out_dir == NULL) fatalf("rlmath_dump: --out DIR is required");
    cases = json_array();
    cases_gae();
    cases_whiten();
    cases_ppo();
    cases_value();
    cases_kl_token();
    cases_kl_controller();
    cases_entropy();
    cases_explained_variance();
    cases_quantile_bins();
    cases_group_advantages();
    cases_dpo();
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", out_dir);
    json_t* meta = json_pack("{s:o}", "cases", cases);
    if (json_dump_file(meta, path, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) != 0)
        fatalf("%s: cannot write", path);
    json_decref(meta);
    return 0;
}
