// cmd_evaluate.c - `rlhfd evaluate`: the held-out numbers of one policy, the
// same way for the SFT model and every RL policy (the demo's before/after
// table): sample one response per prompt (prompt i with seed + i, so two
// policies answer the same prompts with the same random stream), then
//   gold   = mean gold score of the responses (AFINN: never trained on)
//   reward = mean reward (the RM the RL stages optimise)
//   kl     = mean over responses of sum_t (log pi - log pi_ref) of the
//            sampled tokens (nats per sequence; an unbiased estimate of
//            KL(pi || ref) only when sampling from pi itself: temperature 1,
//            no top-k/top-p, the defaults).
// All of it is rollout_evaluate (worker/rollout.h), which the RL commands
// use for their own final evaluation. The first --show prompts are sampled
// again with the same seeds (so they are exactly the evaluated responses) and
// returned in "samples" for the demo's side-by-side view.
//
// A Quark policy (its checkpoint state names "best_token") answers the prompt
// prefixed with its best-quantile control token, as Quark is meant to be used;
// its KL is then log pi(y | ctrl, x) - log ref(y | x), the reference seeing
// the plain prompt (as in `rlhfd quark`). --control-token overrides this.
//
// An ILQL policy (its checkpoint holds the ilql.* heads and its state names
// "ilql_beta") samples from logits + beta * (min Qt - V), as ILQL decodes;
// its KL is then that of the distribution sampled from (rollout_evaluate with
// a hook). --ilql-beta overrides beta (0: the LM alone).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/hfdata.h"
#include "../common/tokenizer.h"
#include "../kernels/ops.h"
#include "../worker/generate.h"
#include "../worker/ilql.h"
#include "../worker/model_io.h"
#include "../worker/rewards.h"
#include "../worker/rollout.h"

#define CMD "evaluate"

static const char* const SYNOPSIS =
    "--model POLICY --prompts FILE [--ref MODEL] [--reward SPEC] [--gold SPEC] [options]\n"
    "\n"
    "Held-out evaluation of a policy: one sampled response per prompt of FILE\n"
    "({\"prompt\": ...} JSON lines; prompt i uses seed S+i), scored by --reward and\n"
    "--gold (reward specs: rm:PATH, lexicon:FILE, command:PROG, weighted sums),\n"
    "and its KL to --ref (nats per sequence, summed over the sampled tokens).\n"
    "Prints one JSON line: gold, reward, kl, response_len, n, checkpoint, seconds,\n"
    "tokens_per_s, and the first --show samples {prompt, response, reward, gold}.";

// {prompt, response, reward, gold} appended to arr.
static void append_sample(json_t* arr, const char* prompt_text, const char* response_text, float reward,
                          float gold) {
    // a response may end inside a UTF-8 sequence: JSON needs valid text
    char* prompt = hf_valid_utf8(prompt_text, strlen(prompt_text), NULL);
    char* response = hf_valid_utf8(response_text, strlen(response_text), NULL);
    json_array_append_new(arr, json_pack("{s:s, s:s, s:f, s:f}", "prompt", prompt, "response", response, "reward",
                                         (double)reward, "gold", (double)gold));
    free(prompt);
    free(response);
}

// The first n prompts of samples, scored, as a JSON array (same seeds as the evaluation).
static json_t* sample_json(GPT* policy, Tokenizer* tok, RewardFn* reward, RewardFn* gold,
                           const char* const* prompts, int n, uint64_t seed, const RolloutConfig* rcfg) {
    json_t* arr = json_array();
    if (n <= 0) return arr;
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) seeds[i] = seed + (uint64_t)i;
    Rollout ro;
    rollout_generate(policy, tok, prompts, n, seeds, rcfg, &ro);
    float* r = callocCheck((size_t)n, sizeof(float));
    float* g = callocCheck((size_t)n, sizeof(float));
    if (reward) rollout_score(&ro, reward, r);
    if (gold) rollout_score(&ro, gold, g);
    for (int i = 0; i < n; i++) append_sample(arr, ro.prompts[i], ro.responses[i], r[i], g[i]);
    free(r);
    free(g);
    free(seeds);
    rollout_free(&ro);
    return arr;
}

// Controlled sampling (Quark): the policy sees [ctrl] ++ prompt, the scorers
// and the reference see the plain prompt. Same seeds (seed + i) and sampling
// as rollout_evaluate; the first `show` samples go into *samples.
static RolloutEval evaluate_with_control(GPT* policy, GPT* ref, RewardFn* reward, RewardFn* gold, Tokenizer* tok,
                                         const char* const* prompts, int n, uint64_t seed, const RolloutConfig* rcfg,
                                         int ctrl, int show, json_t* samples) {
    RolloutEval ev = {0};
    if (n <= 0) return ev;
    const int ctx = policy->config.max_seq_len, eot = tokenizer_eot(tok);
    int** ptoks = mallocCheck((size_t)n * sizeof(int*));
    int* plens = mallocCheck((size_t)n * sizeof(int));
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) {
        int* ids = mallocCheck(sizeof(int));
        size_t len = 1, cap = 1;
        ids[0] = ctrl;
        tokenizer_encode(tok, prompts[i], strlen(prompts[i]), &ids, &len, &cap);
        if (len < 2) fatalf("evaluate: prompt %d is empty", i);
        if ((int)len >= ctx)
            fatalf("evaluate: prompt %d is %zu tokens with the control token, leaving no room for a response "
                   "in the context (%d)", i, len, ctx);
        ptoks[i] = ids;
        plens[i] = (int)len;
        seeds[i] = seed + (uint64_t)i;
    }
    SampleConfig sc = sample_config_default();
    sc.max_new_tokens = rcfg->max_new_tokens;
    sc.temperature = rcfg->temperature;
    sc.top_k = rcfg->top_k;
    sc.top_p = rcfg->top_p;
    sc.eot = eot;
    Generation g;
    gpt_generate(policy, (const int* const*)ptoks, plens, n, seeds, &sc, &g);

    // the same samples without the control token, as a Rollout (scorers, reference)
    Rollout ro = {0};
    ro.n = n;
    ro.prompts = mallocCheck((size_t)n * sizeof(char*));
    ro.responses = mallocCheck((size_t)n * sizeof(char*));
    ro.tokens = mallocCheck((size_t)n * sizeof(int*));
    ro.len = mallocCheck((size_t)n * sizeof(int));
    ro.prompt_len = mallocCheck((size_t)n * sizeof(int));
    ro.resp_len = mallocCheck((size_t)n * sizeof(int));
    ro.hit_eot = mallocCheck((size_t)n * sizeof(int));
    ro.scores = callocCheck((size_t)n, sizeof(float));
    for (int i = 0; i < n; i++) {
        ro.prompts[i] = strdup(prompts[i]);
        if (!ro.prompts[i]) fatalf("out of memory");
        ro.len[i] = g.len[i] - 1;
        ro.prompt_len[i] = g.prompt_len[i] - 1;
        ro.resp_len[i] = g.len[i] - g.prompt_len[i];
        ro.hit_eot[i] = g.hit_eot[i];
        ro.tokens[i] = mallocCheck((size_t)ro.len[i] * sizeof(int));
        memcpy(ro.tokens[i], g.tokens[i] + 1, (size_t)ro.len[i] * sizeof(int));
        size_t text_len = 0;
        ro.responses[i] = tokenizer_decode(tok, g.tokens[i] + g.prompt_len[i],
                                           (size_t)(ro.resp_len[i] - (g.hit_eot[i] ? 1 : 0)), &text_len);
        ro.new_tokens += (size_t)ro.resp_len[i];
    }
    float* r = callocCheck((size_t)n, sizeof(float));
    float* gs = callocCheck((size_t)n, sizeof(float));
    if (reward) rollout_score(&ro, reward, r);
    if (gold) rollout_score(&ro, gold, gs);
    float** lp = mallocCheck((size_t)n * sizeof(float*));
    float** lr = mallocCheck((size_t)n * sizeof(float*));
    for (int i = 0; i < n; i++) {
        lp[i] = callocCheck((size_t)ro.resp_len[i] + 1, sizeof(float));
        lr[i] = callocCheck((size_t)ro.resp_len[i] + 1, sizeof(float));
    }
    if (ref) {
        sequence_logprobs(policy, (const int* const*)g.tokens, g.len, g.prompt_len, n, 16, lp, NULL);
        rollout_logprobs(ref, &ro, 16, lr, NULL);
    }
    ev.n = n;
    for (int i = 0; i < n; i++) {
        double kl = 0.0;
        for (int j = 0; j < ro.resp_len[i]; j++) kl += (double)lp[i][j] - (double)lr[i][j];
        ev.kl += kl / n;
        ev.reward += (double)r[i] / n;
        ev.gold += (double)gs[i] / n;
        ev.response_len += (double)ro.resp_len[i] / n;
        if (i < show) append_sample(samples, ro.prompts[i], ro.responses[i], r[i], gs[i]);
    }
    for (int i = 0; i < n; i++) {
        free(lp[i]);
        free(lr[i]);
        free(ptoks[i]);
    }
    free(lp);
    free(lr);
    free(ptoks);
    free(plens);
    free(seeds);
    free(r);
    free(gs);
    generation_free(&g);
    rollout_free(&ro);
    return ev;
}

// The decoding beta an ILQL checkpoint asks for ("ilql_beta" in its state), or -1.
static double ilql_beta_of(json_t* state_json) {
    json_t* b = json_object_get(json_object_get(state_json, "state"), "ilql_beta");
    return json_is_number(b) ? json_number_value(b) : -1.0;
}

// The control token a Quark checkpoint asks for ("best_token" in its state), or -1.
static int quark_best_token(json_t* state_json) {
    json_t* t = json_object_get(json_object_get(state_json, "state"), "best_token");
    return json_is_integer(t) ? (int)json_integer_value(t) : -1;
}

int cmd_evaluate(int argc, char** argv) {
    const char* model_path = NULL;
    const char* ref_path = NULL;
    const char* reward_spec = NULL;
    const char* gold_spec = NULL;
    const char* prompts_path = NULL;
    int max_prompts = 0, show = 4, threads = 0, control = -2;
    float ilql_beta = -1.0f;
    uint64_t seed = 1;
    RolloutConfig rcfg = rollout_config_default();
    const ArgSpec specs[] = {
        {"model", ARG_STR, &model_path, "PATH: the policy (checkpoint or run dir; required)"},
        {"ref", ARG_STR, &ref_path, "PATH: reference model for the KL (default: none, kl = 0)"},
        {"reward", ARG_STR, &reward_spec, "SPEC: reward source, e.g. rm:runs/rm (default: none, reward = 0)"},
        {"gold", ARG_STR, &gold_spec, "SPEC: gold scorer, e.g. lexicon:labels.json (default: none, gold = 0)"},
        {"prompts", ARG_STR, &prompts_path, "FILE: held-out prompts, JSON lines {\"prompt\": ...} (required)"},
        {"n", ARG_INT, &max_prompts, "N: evaluate the first N prompts only (default 0 = all)"},
        {"seed", ARG_U64, &seed, "S: sampling seed of prompt 0; prompt i uses S+i (default 1)"},
        {"max-new-tokens", ARG_INT, &rcfg.max_new_tokens, "N: response length limit, eot included (default 24)"},
        {"temperature", ARG_FLOAT, &rcfg.temperature, "T: sampling temperature (default 1: the policy itself)"},
        {"top-k", ARG_INT, &rcfg.top_k, "K: sample from the K most likely tokens (default 0 = off)"},
        {"top-p", ARG_FLOAT, &rcfg.top_p, "P: nucleus sampling (default 1 = off)"},
        {"control-token", ARG_INT, &control,
         "ID: prefix every prompt with this token for the policy (default: a Quark checkpoint's best_token; -1 = none)"},
        {"ilql-beta", ARG_FLOAT, &ilql_beta,
         "B: ILQL decoding logits + B*(Q - V) (default: an ILQL checkpoint's own beta; 0 = the LM alone)"},
        {"show", ARG_INT, &show, "N: include the first N samples in the output (default 4)"},
        {"threads", ARG_INT, &threads, "N: CPU threads (0 = default)"},
    };
    args_parse(CMD, SYNOPSIS, specs, (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (!model_path) args_fail(CMD, "--model is required");
    if (!prompts_path) args_fail(CMD, "--prompts is required");
    if (max_prompts < 0 || show < 0 || threads < 0) args_fail(CMD, "--n, --show and --threads must be >= 0");
    if (rcfg.max_new_tokens < 1) args_fail(CMD, "--max-new-tokens must be >= 1 (got %d)", rcfg.max_new_tokens);
    if (!(rcfg.temperature >= 0.0f)) args_fail(CMD, "--temperature must be >= 0");
    if (rcfg.top_k < 0) args_fail(CMD, "--top-k must be >= 0 (got %d)", rcfg.top_k);
    if (!(rcfg.top_p > 0.0f && rcfg.top_p <= 1.0f)) args_fail(CMD, "--top-p must be in (0, 1]");

    double t0 = now_seconds();
    ops_cpu_set_threads(threads);
    const Ops* ops = ops_cpu();
    size_t n = 0, skipped = 0;
    char** prompts = hf_read_prompts(prompts_path, 0, &n, &skipped);
    int num = (max_prompts > 0 && (size_t)max_prompts < n) ? max_prompts : (int)n;
    if (show > num) show = num;

    GPT policy, ref;
    json_t* state = NULL;
    model_load(&policy, model_path, ops, &state);
    if (control == -2) control = quark_best_token(state);
    double ckpt_beta = ilql_beta_of(state);
    json_decref(state);
    if (control < -1 || control >= policy.config.vocab_size)
        args_fail(CMD, "--control-token must be -1 or a token id below %d (got %d)", policy.config.vocab_size, control);
    char* checkpoint = model_resolve(model_path);
    IlqlHeads heads;
    IlqlDecoder dec;
    memset(&heads, 0, sizeof heads);
    memset(&dec, 0, sizeof dec);
    if (ilql_beta < 0.0f) ilql_beta = ckpt_beta >= 0 ? (float)ckpt_beta : 0.0f;
    if (ilql_beta > 0.0f) {
        ilql_heads_load(&heads, checkpoint, policy.config.channels, policy.config.vocab_size, ops);
        ilql_decoder_init(&dec, &heads, ilql_beta);
        rcfg.hook = &dec.hook;
        fprintf(stderr, "evaluate: ILQL decoding, logits + %g * (Q - V)\n", (double)ilql_beta);
    }
    if (ref_path) {
        model_load(&ref, ref_path, ops, NULL);
        gpt_config_expect(&policy.config, &ref.config, ref_path);
    }
    Tokenizer* tok = tokenizer_load(NULL);
    if (policy.config.vocab_size < tokenizer_vocab_size(tok))
        fatalf("%s: model vocab %d is smaller than the GPT-2 tokenizer's %d", model_path, policy.config.vocab_size,
               tokenizer_vocab_size(tok));
    RewardFn* reward = reward_spec ? reward_open(reward_spec, ops) : NULL;
    RewardFn* gold = gold_spec ? reward_open(gold_spec, ops) : NULL;

    fprintf(stderr, "evaluate: %s on %d prompts of %s (seed %llu, %d new tokens, temperature %g)\n", checkpoint,
            num, prompts_path, (unsigned long long)seed, rcfg.max_new_tokens, (double)rcfg.temperature);
    double t_eval0 = now_seconds();
    RolloutEval ev;
    json_t* samples;
    if (control >= 0) {
        fprintf(stderr, "evaluate: the policy sees control token %d before every prompt\n", control);
        samples = json_array();
        ev = evaluate_with_control(&policy, ref_path ? &ref : NULL, reward, gold, tok, (const char* const*)prompts,
                                   num, seed, &rcfg, control, show, samples);
    } else {
        ev = rollout_evaluate(&policy, ref_path ? &ref : NULL, reward, gold, tok, (const char* const*)prompts, num,
                              seed, &rcfg);
        samples = sample_json(&policy, tok, reward, gold, (const char* const*)prompts, show, seed, &rcfg);
    }
    double t_eval = now_seconds() - t_eval0;

    json_t* out = json_object();
    json_object_set_new(out, "gold", json_real(ev.gold));
    json_object_set_new(out, "reward", json_real(ev.reward));
    json_object_set_new(out, "kl", json_real(ev.kl));
    json_object_set_new(out, "response_len", json_real(ev.response_len));
    json_object_set_new(out, "n", json_integer(ev.n));
    json_object_set_new(out, "checkpoint", json_string(checkpoint));
    json_object_set_new(out, "ref", ref_path ? json_string(ref_path) : json_null());
    json_object_set_new(out, "reward_spec", reward_spec ? json_string(reward_spec) : json_null());
    json_object_set_new(out, "gold_spec", gold_spec ? json_string(gold_spec) : json_null());
    json_object_set_new(out, "seed", json_integer((json_int_t)seed));
    json_object_set_new(out, "max_new_tokens", json_integer(rcfg.max_new_tokens));
    json_object_set_new(out, "temperature", json_real(rcfg.temperature));
    json_object_set_new(out, "control_token", control >= 0 ? json_integer(control) : json_null());
    json_object_set_new(out, "ilql_beta", ilql_beta > 0.0f ? json_real(ilql_beta) : json_null());
    json_object_set_new(out, "t_evaluate", json_real(t_eval));
    json_object_set_new(out, "eval_tokens_per_s",
                        json_real(t_eval > 0 ? ev.response_len * ev.n / t_eval : 0.0));
    json_object_set_new(out, "samples", samples);
    json_object_set_new(out, "seconds", json_real(now_seconds() - t0));
    fprintf(stderr, "evaluate: gold %.4f  reward %.4f  kl %.3f nats/seq  response %.1f tokens  (%.1f s)\n", ev.gold,
            ev.reward, ev.kl, ev.response_len, t_eval);
    write_json_line(stdout, out);
    if (fflush(stdout) != 0) fatalf("cannot write to stdout");

    json_decref(out);
    if (reward) reward_close(reward);
    if (gold) reward_close(gold);
    tokenizer_free(tok);
    if (ref_path) gpt_free(&ref);
    if (ilql_beta > 0.0f) {
        ilql_decoder_free(&dec);
        ilql_heads_free(&heads);
    }
    gpt_free(&policy);
    free(checkpoint);
    hf_free_prompts(prompts, n);
    return 0;
}
