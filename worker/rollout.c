// rollout.c - sampling, scoring and teacher-forced log-probs for RL (rollout.h).
#include "rollout.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "generate.h"
#include "../common/check.h"

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char* dup_string(const char* s) {
    size_t n = strlen(s) + 1;
    char* d = mallocCheck(n);
    memcpy(d, s, n);
    return d;
}

RolloutConfig rollout_config_default(void) {
    return (RolloutConfig){.max_new_tokens = 24, .temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
}

void rollout_generate(GPT* policy, Tokenizer* tok, const char* const* prompts, int n,
                      const uint64_t* seeds, const RolloutConfig* cfg, Rollout* out) {
    memset(out, 0, sizeof *out);
    if (n <= 0) fatalf("rollout: no prompts");
    const int ctx = policy->config.max_seq_len, eot = tokenizer_eot(tok);
    const double t0 = seconds_now();

    // encode the prompts
    int** ptoks = mallocCheck((size_t)n * sizeof(int*));
    int* plens = mallocCheck((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        int* ids = NULL;
        size_t len = 0, cap = 0;
        tokenizer_encode(tok, prompts[i], strlen(prompts[i]), &ids, &len, &cap);
        if (len == 0) fatalf("rollout: prompt %d is empty", i);
        if ((int)len >= ctx)
            fatalf("rollout: prompt %d is %zu tokens, leaving no room for a response in the context (%d)",
                   i, len, ctx);
        ptoks[i] = ids;
        plens[i] = (int)len;
    }

    // one batched generation for all prompts
    SampleConfig sc = sample_config_default();
    sc.max_new_tokens = cfg->max_new_tokens;
    sc.temperature = cfg->temperature;
    sc.top_k = cfg->top_k;
    sc.top_p = cfg->top_p;
    sc.eot = eot;
    sc.hook = cfg->hook;
    Generation g;
    gpt_generate(policy, (const int* const*)ptoks, plens, n, seeds, &sc, &g);

    out->n = n;
    out->prompts = mallocCheck((size_t)n * sizeof(char*));
    out->responses = mallocCheck((size_t)n * sizeof(char*));
    out->tokens = mallocCheck((size_t)n * sizeof(int*));
    out->len = mallocCheck((size_t)n * sizeof(int));
    out->prompt_len = mallocCheck((size_t)n * sizeof(int));
    out->resp_len = mallocCheck((size_t)n * sizeof(int));
    out->hit_eot = mallocCheck((size_t)n * sizeof(int));
    out->sample_logp = mallocCheck((size_t)n * sizeof(float*));
    out->scores = callocCheck((size_t)n, sizeof(float));
    for (int i = 0; i < n; i++) {
        out->prompts[i] = dup_string(prompts[i]);
        out->len[i] = g.len[i];
        out->prompt_len[i] = g.prompt_len[i];
        out->resp_len[i] = g.len[i] - g.prompt_len[i];
        out->hit_eot[i] = g.hit_eot[i];
        out->tokens[i] = mallocCheck((size_t)(g.len[i] > 0 ? g.len[i] : 1) * sizeof(int));
        memcpy(out->tokens[i], g.tokens[i], (size_t)g.len[i] * sizeof(int));
        out->sample_logp[i] = mallocCheck((size_t)(out->resp_len[i] > 0 ? out->resp_len[i] : 1) * sizeof(float));
        memcpy(out->sample_logp[i], g.logprobs[i], (size_t)out->resp_len[i] * sizeof(float));
        int text_tokens = out->resp_len[i] - (g.hit_eot[i] ? 1 : 0);
        size_t text_len = 0;
        out->responses[i] = tokenizer_decode(tok, g.tokens[i] + g.prompt_len[i], (size_t)text_tokens, &text_len);
        out->new_tokens += (size_t)out->resp_len[i];
    }
    generation_free(&g);
    for (int i = 0; i < n; i++) free(ptoks[i]);
    free(ptoks);
    free(plens);
    out->t_generate = seconds_now() - t0;
    out->tokens_per_s = out->t_generate > 0 ? (double)out->new_tokens / out->t_generate : 0.0;
}

void rollout_score(const Rollout* r, RewardFn* reward, float* out) {
    reward_score(reward, (const char* const*)r->prompts, (const char* const*)r->responses, r->n, out);
    for (int i = 0; i < r->n; i++)
        if (!isfinite(out[i]))
            fatalf("reward '%s' gave %g for response %d", reward_name(reward), (double)out[i], i);
}

void rollout_free(Rollout* r) {
    for (int i = 0; i < r->n; i++) {
        free(r->prompts[i]);
        free(r->responses[i]);
        free(r->tokens[i]);
        if (r->sample_logp) free(r->sample_logp[i]);
    }
    free(r->sample_logp);
    free(r->prompts);
    free(r->responses);
    free(r->tokens);
    free(r->len);
    free(r->prompt_len);
    free(r->resp_len);
    free(r->hit_eot);
    free(r->scores);
    memset(r, 0, sizeof *r);
}

int rollout_pack(const int* const* seqs, const int* lens, const int* prompt_lens, const int* idx,
                 int nb, int pad_token, int* inputs, int* targets) {
    int T = 1;
    for (int b = 0; b < nb; b++)
        if (lens[idx[b]] - 1 > T) T = lens[idx[b]] - 1;
    for (int b = 0; b < nb; b++) {
        const int i = idx[b], len = lens[i], P = prompt_lens[i];
        int* in = inputs + (size_t)b * T;
        int* tg = targets + (size_t)b * T;
        for (int t = 0; t < T; t++) {
            in[t] = t < len - 1 ? seqs[i][t] : pad_token;
            tg[t] = (t >= P - 1 && t < len - 1) ? seqs[i][t + 1] : -1;
        }
        if (len == 1) in[0] = seqs[i][0]; // a lone prompt token: nothing to predict
    }
    return T;
}

// Entropy (nats) of softmax(logits) over V, in double.
static double softmax_entropy(const float* logits, int V) {
    double mx = logits[0];
    for (int v = 1; v < V; v++) if (logits[v] > mx) mx = logits[v];
    double z = 0.0, s = 0.0;
    for (int v = 0; v < V; v++) {
        double e = exp((double)logits[v] - mx);
        z += e;
        s += e * ((double)logits[v] - mx);
    }
    return log(z) - s / z;
}

void sequence_logprobs(GPT* model, const int* const* seqs, const int* lens, const int* prompt_lens,
                       int n, int batch, float** logp, double* entropy) {
    if (batch <= 0) batch = 16;
    const int V = model->config.vocab_size;
    int max_len = 2;
    for (int i = 0; i < n; i++) {
        if (prompt_lens[i] < 1 || lens[i] < prompt_lens[i])
            fatalf("sequence %d: prompt of %d tokens in a sequence of %d", i, prompt_lens[i], lens[i]);
        if (lens[i] > max_len) max_len = lens[i];
    }
    gpt_reserve(model, n < batch ? (n > 0 ? n : 1) : batch, max_len - 1);
    int* idx = mallocCheck((size_t)batch * sizeof(int));
    int* inputs = mallocCheck((size_t)batch * max_len * sizeof(int));
    int* targets = mallocCheck((size_t)batch * max_len * sizeof(int));
    float* lp = mallocCheck((size_t)batch * max_len * sizeof(float));
    float* row = entropy ? mallocCheck((size_t)V * sizeof(float)) : NULL;
    double ent_sum = 0.0;
    size_t ent_count = 0;
    for (int start = 0; start < n; start += batch) {
        int nb = n - start < batch ? n - start : batch;
        for (int b = 0; b < nb; b++) idx[b] = start + b;
        int T = rollout_pack(seqs, lens, prompt_lens, idx, nb, 0, inputs, targets);
        gpt_forward(model, inputs, targets, NULL, nb, T);
        gpt_token_logprobs(model, lp); // (nb,T)
        for (int b = 0; b < nb; b++) {
            const int i = idx[b], P = prompt_lens[i], R = lens[i] - P;
            for (int j = 0; j < R; j++) {
                size_t pos = (size_t)b * T + (size_t)(P - 1 + j);
                logp[i][j] = lp[pos];
                if (entropy) {
                    gpt_logits_rows(model, &pos, 1, row); // whole vocab, also under tp
                    ent_sum += softmax_entropy(row, V);
                    ent_count++;
                }
            }
        }
    }
    if (entropy) *entropy = ent_count ? ent_sum / (double)ent_count : 0.0;
    free(idx);
    free(inputs);
    free(targets);
    free(lp);
    free(row);
}

void rollout_logprobs(GPT* model, const Rollout* r, int batch, float** logp, double* entropy) {
    sequence_logprobs(model, (const int* const*)r->tokens, r->len, r->prompt_len, r->n, batch, logp,
                      entropy);
}

// (n) arrays of resp_len[i] floats.
static float** alloc_per_token(const Rollout* r) {
    float** a = mallocCheck((size_t)r->n * sizeof(float*));
    for (int i = 0; i < r->n; i++) a[i] = callocCheck((size_t)(r->resp_len[i] > 0 ? r->resp_len[i] : 1), sizeof(float));
    return a;
}

static void free_per_token(float** a, int n) {
    for (int i = 0; i < n; i++) free(a[i]);
    free(a);
}

RolloutEval rollout_evaluate(GPT* policy, GPT* ref, RewardFn* reward, RewardFn* gold,
                             Tokenizer* tok, const char* const* prompts, int n, uint64_t seed,
                             const RolloutConfig* cfg) {
    RolloutEval ev = {0};
    if (n <= 0) return ev;
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) seeds[i] = seed + (uint64_t)i;
    Rollout ro;
    rollout_generate(policy, tok, prompts, n, seeds, cfg, &ro);
    float* s = mallocCheck((size_t)n * sizeof(float));
    ev.n = n;
    if (reward) {
        rollout_score(&ro, reward, s);
        for (int i = 0; i < n; i++) ev.reward += s[i];
        ev.reward /= n;
    }
    if (gold) {
        rollout_score(&ro, gold, s);
        for (int i = 0; i < n; i++) ev.gold += s[i];
        ev.gold /= n;
    }
    if (ref) {
        float** lp = alloc_per_token(&ro);
        float** lr = alloc_per_token(&ro);
        if (cfg->hook) // the hooked distribution is what was sampled: its own log-probs
            for (int i = 0; i < n; i++) memcpy(lp[i], ro.sample_logp[i], (size_t)ro.resp_len[i] * sizeof(float));
        else
            rollout_logprobs(policy, &ro, 16, lp, NULL);
        rollout_logprobs(ref, &ro, 16, lr, NULL);
        for (int i = 0; i < n; i++) {
            double kl = 0.0;
            for (int j = 0; j < ro.resp_len[i]; j++) kl += (double)lp[i][j] - (double)lr[i][j];
            ev.kl += kl;
        }
        ev.kl /= n;
        free_per_token(lp, n);
        free_per_token(lr, n);
    }
    for (int i = 0; i < n; i++) ev.response_len += ro.resp_len[i];
    ev.response_len /= n;
    free(s);
    free(seeds);
    rollout_free(&ro);
    return ev;
}
