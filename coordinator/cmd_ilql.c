// cmd_ilql.c - `rlhfd ilql`: ILQL (Implicit Language Q-Learning, Snell et
// al. 2022, as in trlx) - offline RL from a fixed set of scored samples.
//
// Data (ilql.train): JSONL {"prompt", "response", "reward"} (a record without
// "reward" is scored with rl.reward), or rankings {"prompt", "responses",
// "ranking"} / pairs - the demo's label stage output - whose every response
// is scored with rl.reward. A sample is tokenized like an SFT demonstration:
// encode(prompt) ++ encode(response) ++ [eot]; its actions are the response
// tokens and the eot, its reward comes at the last action (sparse, as in trlx).
//
// Model: the policy (from --model) with two Q heads, two Polyak-averaged
// target Q heads and a V head on its trunk (worker/ilql.h); one step takes
// train.batch samples (SFT's length-bucketed shuffle), one forward, the ILQL
// loss (Bellman, expectile V, CQL, AWAC/LM), one backward through the heads,
// the LM head and the trunk, AdamW on all of it (train.lr with warmup +
// cosine; the heads at ilql.head_lr), then target <- ilql.alpha * Q +
// (1 - ilql.alpha) * target. ilql.trunk_grad scales the heads' gradient into
// the trunk (1: one shared trunk as in trlx; 0: the heads learn on the
// trunk's features and only the LM loss trains the trunk).
// Decoding - the held-out evaluation here and `rlhfd evaluate` on the
// checkpoint - samples from logits + ilql.beta * (min Qt - V).
// The checkpoint holds the heads next to the model (ilql.* tensors) and
// ilql_beta in its state.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "rl_common.h"
#include "sft_data.h"
#include "train_util.h"
#include "../common/check.h"
#include "../common/hfdata.h"
#include "../worker/data_parallel.h"
#include "../worker/ilql.h"

#define CMD "ilql"

static const char* const SYNOPSIS =
    "--model SFT [--config FILE] [--set KEY=VALUE]... [--overwrite]\n"
    "\n"
    "ILQL (Snell et al. 2022, trlx): offline RL on scored samples ilql.train (JSONL\n"
    "{\"prompt\", \"response\", \"reward\"}; records without a reward, and rankings such as\n"
    "the label stage's, are scored with rl.reward). Q heads (two, and their\n"
    "Polyak-averaged targets, rate ilql.alpha) and a V head on the policy's trunk:\n"
    "Bellman targets Q(s,a) <- r + ilql.gamma * V(s'), expectile regression of V\n"
    "(ilql.tau) toward min target Q, a CQL term (ilql.cql_weight) and the LM loss on\n"
    "the data (ilql.awac_weight); ilql.trunk_grad scales the heads' gradient into the\n"
    "trunk. train.steps steps of train.batch samples. Decoding\n"
    "samples logits + ilql.beta * (Q - V). Writes run.dir/metrics.jsonl, a checkpoint\n"
    "with the heads, and a JSON summary (held-out gold, reward, kl) as the last stdout line.\n"
    "Example: rlhfd ilql --config deploy/configs/ilql.ini --model runs/sft --set rl.reward=rm:runs/rm\n"
    "Keys: rlhfd ilql --help-config (sections rl, ilql, train).";

typedef struct {
    SftData seqs;    // tokenized samples
    float* rewards;  // (seqs.n)
} IlqlData;

// 1 if the first record of path looks like a ranking or a preference pair.
static int looks_like_rankings(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) return 0; // the reader reports it
    char* line = NULL;
    size_t cap = 0;
    int ranked = 0;
    while (getline(&line, &cap, f) >= 0) {
        json_t* obj = json_loads(line, 0, NULL);
        if (!obj && strspn(line, " \t\r\n") == strlen(line)) continue; // blank
        ranked = json_is_object(obj) && (json_object_get(obj, "responses") || json_object_get(obj, "chosen"));
        json_decref(obj);
        break;
    }
    free(line);
    fclose(f);
    return ranked;
}

// Appends (prompt, response) tokenized if it fits the context; returns 1 if added.
static int add_sample(IlqlData* d, Tokenizer* tok, const char* prompt, const char* response, int ctx, int line,
                      HfBadReport* bad) {
    int len, P;
    int* ids = hf_encode_pair(tok, prompt, response, &len, &P);
    int ok = len <= ctx;
    if (ok) sft_data_add(&d->seqs, ids, P, ids + P, len - P - 1, tokenizer_eot(tok), line); // eot re-appended
    else hf_bad_record(bad, line, "prompt+response is %d tokens, longer than the context (%d)", len, ctx);
    free(ids);
    return ok;
}

static void ilql_data_load(IlqlData* d, const char* path, Tokenizer* tok, int ctx, RewardFn* reward) {
    memset(d, 0, sizeof *d);
    HfBadReport bad = {.path = path, .skip_bad = 0};
    size_t n = 0, skipped = 0, cap = 0, scored = 0;
    const char** prompts = NULL;
    const char** responses = NULL;
    int* need = NULL; // sample indices to score with rl.reward
    HfRanking* ranks = NULL;
    HfScored* recs = NULL;
    if (looks_like_rankings(path)) {
        ranks = hf_read_rankings(path, 0, &n, &skipped);
        for (size_t i = 0; i < n; i++) cap += (size_t)ranks[i].k;
    } else {
        recs = hf_read_scored(path, 0, &n, &skipped);
        cap = n;
    }
    d->rewards = mallocCheck(cap * sizeof(float));
    prompts = mallocCheck(cap * sizeof(char*));
    responses = mallocCheck(cap * sizeof(char*));
    need = mallocCheck(cap * sizeof(int));
    for (size_t i = 0; i < n; i++) {
        if (ranks) { // every response of a ranking is a sample, scored by rl.reward
            for (int r = 0; r < ranks[i].k; r++) {
                if (!add_sample(d, tok, ranks[i].prompt, ranks[i].responses[r], ctx, ranks[i].line, &bad)) continue;
                prompts[scored] = ranks[i].prompt;
                responses[scored] = ranks[i].responses[r];
                need[scored++] = (int)(d->seqs.n - 1);
            }
        } else {
            if (!add_sample(d, tok, recs[i].prompt, recs[i].response, ctx, recs[i].line, &bad)) continue;
            d->rewards[d->seqs.n - 1] = (float)recs[i].reward;
            if (!recs[i].has_reward) {
                prompts[scored] = recs[i].prompt;
                responses[scored] = recs[i].response;
                need[scored++] = (int)(d->seqs.n - 1);
            }
        }
    }
    if (scored > 0) { // one call: a reward model batches them
        float* s = mallocCheck(scored * sizeof(float));
        double t0 = now_seconds();
        reward_score(reward, prompts, responses, (int)scored, s);
        for (size_t j = 0; j < scored; j++) {
            if (!isfinite(s[j])) fatalf("%s: reward '%s' gave %g for a sample", path, reward_name(reward), s[j]);
            d->rewards[need[j]] = s[j];
        }
        fprintf(stderr, "ilql: scored %zu samples of %s with %s (%.1f s)\n", scored, path, reward_name(reward),
                now_seconds() - t0);
        free(s);
    }
    free(prompts);
    free(responses);
    free(need);
    if (ranks) hf_free_rankings(ranks, n);
    if (recs) hf_free_scored(recs, n);
    if (d->seqs.n == 0) fatalf("%s: no sample fits the context (%d tokens)", path, ctx);
}

// The per-position inputs of ilql_loss for a filled SFT batch: the actions
// are the response tokens and the eot (mask 1), the sample's reward comes
// with its last action.
static void batch_actions(const SftBatch* b, const IlqlData* d, const size_t* idx, int* actions, float* rewards,
                          unsigned char* done) {
    for (int r = 0; r < b->B; r++) {
        for (int t = 0; t < b->T; t++) {
            size_t n = (size_t)r * b->T + t;
            int act = b->mask[n] != 0.0f;
            int last = act && (t + 1 == b->T || b->mask[n + 1] == 0.0f);
            actions[n] = act ? b->targets[n] : -1;
            done[n] = (unsigned char)last;
            rewards[n] = last ? d->rewards[idx[r]] : 0.0f;
        }
    }
}

int cmd_ilql(int argc, char** argv) {
    RLRun run;
    if (rl_run_parse(&run, CMD, SYNOPSIS, argc, argv)) return 0;
    Config* cfg = run.cfg;
    const char* train_path = config_str(cfg, "ilql.train");
    if (!train_path[0])
        fatalf("%s: ilql.train is empty (JSONL of {\"prompt\", \"response\", \"reward\"} or rankings)",
               config_origin(cfg, "ilql.train"));
    const IlqlLossConfig lc = {.gamma = config_float(cfg, "ilql.gamma"),
                               .tau = config_float(cfg, "ilql.tau"),
                               .cql_weight = config_float(cfg, "ilql.cql_weight"),
                               .awac_weight = config_float(cfg, "ilql.awac_weight")};
    const float alpha = config_float(cfg, "ilql.alpha"), beta = config_float(cfg, "ilql.beta");
    const float trunk_grad = config_float(cfg, "ilql.trunk_grad");
    const int steps = config_int(cfg, "train.steps"), batch = config_int(cfg, "train.batch");
    const int warmup = config_int(cfg, "train.warmup");
    if (run.resume_spec && run.resume_spec[0] && strcmp(run.resume_spec, "none") != 0)
        fatalf("rlhfd ilql cannot --resume yet (its heads' optimizer state is not in the run state): start it again");
    rl_run_open(&run);
    run.iterations = steps; // the checkpoint and the evaluations count steps
    // the Q heads are whole (V, C) matrices on every rank; vocab-parallel heads
    // are not written yet, and the data-parallel path below has not been
    // checked against a single process: one process until it has
    if (run.world.par.size > 1)
        fatalf("rlhfd ilql runs as one process for now (this world has %d ranks): launch it without mpirun",
               run.world.par.size);
    const int C = run.policy.config.channels, V = run.policy.config.vocab_size;
    const int ctx = run.policy.config.max_seq_len, eot = tokenizer_eot(run.tok);

    IlqlData data;
    ilql_data_load(&data, train_path, run.tok, ctx, run.reward);
    double rmean = 0.0;
    for (size_t i = 0; i < data.seqs.n; i++) rmean += data.rewards[i] / (double)data.seqs.n;
    if (run.world.is_root)
        fprintf(stderr, "ilql: %zu samples (%zu response tokens), mean reward %+.4f | %d steps of %d | "
                "gamma %g tau %g cql %g awac %g alpha %g beta %g\n", data.seqs.n, data.seqs.num_response_tokens,
                rmean, steps, batch, lc.gamma, lc.tau, lc.cql_weight, lc.awac_weight, alpha, beta);

    IlqlHeads heads;
    ilql_heads_init(&heads, C, V, run.ops, run.seed ^ 0x1B873593ull, config_float(cfg, "ilql.init_std"));
    IlqlDecoder dec;
    ilql_decoder_init(&dec, &heads, beta);
    if (beta != 0.0f) run.rollout.hook = &dec.hook; // every evaluation decodes with beta * (Q - V)

    const int max_T = data.seqs.max_len - 1 > 1 ? data.seqs.max_len - 1 : 1;
    SftBatch b;
    sft_batch_alloc(&b, batch, max_T);
    gpt_reserve(&run.policy, batch, max_T);
    const size_t cells = (size_t)batch * max_T;
    int* actions = mallocCheck(cells * sizeof(int));
    float* rewards = mallocCheck(cells * sizeof(float));
    unsigned char* done = mallocCheck(cells);
    float* lm_logp = mallocCheck(cells * sizeof(float));
    float* dlogp = mallocCheck(cells * sizeof(float));
    SftSampler sampler;
    sft_sampler_init(&sampler, &data.seqs, batch, run.seed ^ 0xA0761D6478BD642Full);
    AdamWConfig adamw = run.adamw;
    const float peak_lr = adamw.lr, min_lr = config_float(cfg, "train.min_lr");
    // the heads start from nothing: they may need a higher rate than the trunk (the same schedule, scaled)
    const float head_peak = config_float(cfg, "ilql.head_lr") > 0 ? config_float(cfg, "ilql.head_lr") : peak_lr;
    const float head_min = peak_lr > 0 ? min_lr * head_peak / peak_lr : 0.0f;
    AdamWConfig adamw_heads = adamw;
    DataParallel* dpar = &run.world.dp;
    Comm* dpc = run.world.par.dp;

    for (int step = 1; step <= steps; step++) {
        double t0 = now_seconds();
        int nb_global = 0;
        const size_t* idx = sft_sampler_next(&sampler, &nb_global);
        size_t first = 0, last = (size_t)nb_global; // this rank's rows of the global batch
        if (dpc) parallel_share((size_t)nb_global, dpc->rank, dpc->size, &first, &last);
        const int nb = (int)(last - first);
        IlqlStats st;
        memset(&st, 0, sizeof st);
        gpt_zero_grad(&run.policy);
        ilql_heads_zero_grad(&heads);
        double rsum = 0.0;
        if (nb > 0) {
            sft_batch_fill(&b, &data.seqs, idx + first, nb, eot);
            const int N = b.B * b.T;
            for (int r = 0; r < nb; r++) rsum += data.rewards[idx[first + r]];
            gpt_forward(&run.policy, b.inputs, b.targets, b.mask, b.B, b.T);
            gpt_token_logprobs(&run.policy, lm_logp);
            batch_actions(&b, &data, idx + first, actions, rewards, done);
            float* dlnf = gpt_hidden_grad(&run.policy);
            ilql_loss(&heads, run.policy.acts.lnf, N, actions, rewards, done, lm_logp, &lc, trunk_grad > 0 ? dlnf : NULL,
                      dlogp, &st);
            if (!isfinite(st.loss)) fatalf("ILQL loss is %g at step %d (try a lower train.lr)", st.loss, step);
            if (trunk_grad > 0 && trunk_grad < 1) run.ops->scale(dlnf, trunk_grad, (size_t)N * C);
            gpt_lm_head_backward(&run.policy, dlogp);
            gpt_backward_trunk(&run.policy);
        }
        // each rank's gradients are of a mean over its actions: to the global mean
        double k_global = dp_allreduce_grads(dpar, &run.policy, st.actions);
        float scale = k_global > 0 ? (float)(st.actions / k_global) : 0.0f;
        dp_allreduce_scaled(dpar, heads.q_grad, 2 * heads.qn, scale);
        dp_allreduce_scaled(dpar, heads.vh_grad, (size_t)C + 1, scale);
        adamw.lr = lr_schedule(step, steps, warmup, peak_lr, min_lr);
        float norm = dp_update(dpar, &run.policy, &adamw);
        adamw_heads.lr = lr_schedule(step, steps, warmup, head_peak, head_min);
        float head_norm = ilql_heads_update(&heads, &adamw_heads);
        ilql_heads_sync_targets(&heads, alpha);
        double dt = now_seconds() - t0;
        run.t_train += dt;

        double w = st.actions;
        const double fields[] = {st.loss, st.loss_q, st.loss_v, st.loss_cql, st.loss_awac, st.q_mean,
                                 st.target_q_mean, st.v_mean};
        const char* names[] = {"loss", "loss_q", "loss_v", "loss_cql", "loss_awac", "q", "target_q", "v"};
        json_t* row = json_object();
        json_object_set_new(row, "step", json_integer(step));
        for (int i = 0; i < 8; i++)
            json_object_set_new(row, names[i], json_real(rl_global_mean(&run, fields[i], w)));
        json_object_set_new(row, "data_reward", json_real(rl_global_mean(&run, nb ? rsum / nb : 0.0, nb)));
        json_object_set_new(row, "lr", json_real(adamw.lr));
        json_object_set_new(row, "grad_norm", json_real(norm));
        json_object_set_new(row, "head_grad_norm", json_real(head_norm));
        json_object_set_new(row, "epoch", json_integer(sampler.epoch));
        json_object_set_new(row, "t_train", json_real(dt));
        if (run.world.is_root) {
            write_json_line(run.metrics, row);
            fflush(run.metrics);
            if (step == 1 || step == steps || step % config_int(cfg, "train.log_every") == 0) {
                char eta[32];
                format_duration(run.t_train / step * (steps - step), eta, sizeof eta);
                fprintf(stderr, "ilql step %d/%d | loss %.4f (q %.4f v %.4f cql %.3f awac %.3f) | Q %+.3f V %+.3f | "
                        "lr %.2e | norm %.3f | ETA %s\n", step, steps,
                        json_real_value(json_object_get(row, "loss")), json_real_value(json_object_get(row, "loss_q")),
                        json_real_value(json_object_get(row, "loss_v")),
                        json_real_value(json_object_get(row, "loss_cql")),
                        json_real_value(json_object_get(row, "loss_awac")),
                        json_real_value(json_object_get(row, "q")), json_real_value(json_object_get(row, "v")),
                        adamw.lr, norm, eta);
            }
        }
        // every rank reports; rank 0 publishes /status and decides (collective)
        unsigned decision = run_control_step(&run.control, step, "train", row, (double)w);
        json_decref(row);
        run.iter_done = step;
        if (decision & RUN_STOP) { // graceful stop: rl_finish checkpoints the steps done
            run.stop = 1;
            break;
        }
        if (decision & RUN_CHECKPOINT) { // on request: the policy and the heads
            float* hbuf = NULL;
            StWriteTensor ht[ILQL_NUM_TENSORS];
            ilql_heads_to_tensors(&heads, &hbuf, ht);
            rl_checkpoint(&run, step, ht, ILQL_NUM_TENSORS, NULL, NULL);
            free(hbuf);
        }
        rl_maybe_evaluate(&run, step);
    }

    // ---- checkpoint with the heads, final evaluation (decoding with beta), summary
    float* host = NULL;
    StWriteTensor tensors[ILQL_NUM_TENSORS];
    ilql_heads_to_tensors(&heads, &host, tensors);
    json_t* state_extra = json_object();
    json_object_set_new(state_extra, "ilql_beta", json_real(beta));
    json_t* summary_extra = json_object();
    json_object_set_new(summary_extra, "samples", json_integer((json_int_t)data.seqs.n));
    json_object_set_new(summary_extra, "data_reward", json_real(rmean));
    json_object_set_new(summary_extra, "ilql_beta", json_real(beta));
    rl_finish(&run, tensors, ILQL_NUM_TENSORS, state_extra, summary_extra);

    free(host);
    free(actions); free(rewards); free(done); free(lm_logp); free(dlogp);
    sft_sampler_free(&sampler);
    sft_batch_free(&b);
    sft_data_free(&data.seqs);
    free(data.rewards);
    ilql_decoder_free(&dec);
    ilql_heads_free(&heads);
    rl_run_close(&run);
    return 0;
}
