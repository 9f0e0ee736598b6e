// rl_common.c - plumbing shared by the RL commands (rl_common.h).
#include "rl_common.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/hfdata.h"
#include "../common/rng.h"
#include "../worker/model_io.h"
#include "../worker/rl_math.h"
#include "run_state.h"

int rl_run_parse(RLRun* run, const char* cmd, const char* synopsis, int argc, char** argv) {
    memset(run, 0, sizeof *run);
    run->cmd = cmd;
    char run_dir[256];
    snprintf(run_dir, sizeof run_dir, "runs/%s", cmd);
    TrainCli cli;
    run->cfg = train_cli_config(cmd, synopsis, "PATH: the SFT policy (= model.init): policy and reference start from it",
                                run_dir, 0, &cli, argc, argv);
    run->overwrite = cli.overwrite;
    run->resume_spec = cli.resume;
    return run->cfg ? 0 : 1; // 1: --help-config / --print-config done
}

// Drops prompts that encode to nothing or leave no room for a response.
static void filter_prompts(RLRun* run, char** prompts, size_t* n, const char* path) {
    const int ctx = run->policy.config.max_seq_len;
    size_t kept = 0, dropped = 0;
    int* ids = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < *n; i++) {
        size_t len = 0;
        tokenizer_encode(run->tok, prompts[i], strlen(prompts[i]), &ids, &len, &cap);
        if (len == 0 || (int)len >= ctx) {
            free(prompts[i]);
            dropped++;
            continue;
        }
        prompts[kept++] = prompts[i];
    }
    free(ids);
    if (dropped)
        fprintf(stderr, "%s: warning: %s: dropped %zu prompt(s) that are empty or fill the context (%d)\n",
                run->cmd, path, dropped, ctx);
    if (kept == 0) fatalf("%s: no usable prompt (all empty or longer than the context %d)", path, ctx);
    *n = kept;
}

static void print_banner(RLRun* run, const char* init, const char* reward_spec, const char* gold_spec);

void rl_run_open(RLRun* run) {
    Config* cfg = run->cfg;
    const char* init = config_str(cfg, "model.init");
    if (!init[0]) fatalf("rlhfd %s: no policy: give --model SFT_MODEL (or model.init)", run->cmd);
    const char* reward_spec = config_str(cfg, "rl.reward");
    if (!reward_spec[0])
        fatalf("rlhfd %s: no reward: set rl.reward (rm:PATH, lexicon:FILE, command:PROG or W*SPEC+...)", run->cmd);

    run->ops = ops_from_config(cfg); // run.device, run.precision, train.threads
    train_world_init(&run->world, cfg);
    run->t_start = now_seconds();
    run->seed = (uint64_t)config_int(cfg, "train.seed");
    run->iterations = config_int(cfg, "rl.iterations");
    run->batch = config_int(cfg, "rl.batch");
    run->eval_every = config_int(cfg, "rl.eval_every");
    train_world_share(&run->world, run->batch, "rl.batch", &run->seq0, &run->nloc);

    // --resume: the policy, its AdamW state and the run state from a
    // checkpoint; the reference stays model.init (the SFT model)
    run->first_iter = 1;
    const int resuming = train_resume_resolve(run->world.par.world, run->resume_spec, config_str(cfg, "run.dir"),
                                              run->resume_ckpt, sizeof run->resume_ckpt);
    run_state_init(&run->resume);

    // policy and frozen reference from the same model
    json_t* state = NULL;
    model_load_tp(&run->policy, resuming ? run->resume_ckpt : init, run->ops, run->world.par.tp, &state);
    json_decref(state);
    model_load_tp(&run->ref, init, run->ops, run->world.par.tp, NULL);
    config_adopt_model_shape(cfg, run->ref.config, init);
    if (resuming) {
        gpt_config_expect(&run->ref.config, &run->policy.config, run->resume_ckpt);
        checkpoint_load_optimizer(&run->policy, run->resume_ckpt);
        dp_scatter_optimizer(&run->world.dp, &run->policy);
        run_state_load(&run->resume, run->resume_ckpt);
        run->resuming = 1;
        run->first_iter = (int)run_state_get_i64(&run->resume, "iter") + 1;
    }

    run->tok = tokenizer_load(NULL);
    if (tokenizer_vocab_size(run->tok) > run->policy.config.vocab_size)
        fatalf("%s: vocab %d is smaller than the GPT-2 tokenizer's %d", init, run->policy.config.vocab_size,
               tokenizer_vocab_size(run->tok));
    run->reward = reward_open(reward_spec, run->ops);
    const char* gold_spec = config_str(cfg, "rl.gold");
    run->gold = gold_spec[0] ? reward_open(gold_spec, run->ops) : NULL;

    // prompts
    const char* ppath = config_str(cfg, "rl.prompts");
    if (!ppath[0]) fatalf("rlhfd %s: rl.prompts is empty", run->cmd);
    size_t skipped = 0;
    run->prompts = hf_read_prompts(ppath, 1, &run->num_prompts, &skipped);
    filter_prompts(run, run->prompts, &run->num_prompts, ppath);
    const char* vpath = config_str(cfg, "rl.val_prompts");
    if (vpath[0]) {
        run->val_prompts = hf_read_prompts(vpath, 1, &run->num_val, &skipped);
        filter_prompts(run, run->val_prompts, &run->num_val, vpath);
        size_t keep = (size_t)config_int(cfg, "rl.eval_prompts");
        if (keep > 0 && keep < run->num_val) {
            for (size_t i = keep; i < run->num_val; i++) free(run->val_prompts[i]);
            run->num_val = keep;
        }
    }
    run->order = mallocCheck(run->num_prompts * sizeof(size_t));
    run->order_pos = run->num_prompts; // shuffle on first use
    if (resuming) { // the data cursor and the totals where the checkpoint left them
        size_t* order = NULL;
        run_state_get_order(&run->resume, "prompts", run->num_prompts, &order, &run->order_pos, &run->order_pass);
        if (order) memcpy(run->order, order, run->num_prompts * sizeof(size_t));
        free(order);
        run->t_generate = run_state_get_f64(&run->resume, "t_generate");
        run->t_score = run_state_get_f64(&run->resume, "t_score");
        run->t_logprobs = run_state_get_f64(&run->resume, "t_logprobs");
        run->t_train = run_state_get_f64(&run->resume, "t_train");
        run->t_eval = run_state_get_f64(&run->resume, "t_eval");
        run->rollout_tokens = (size_t)run_state_get_i64(&run->resume, "rollout_tokens");
    }
    run->ckpt_every = config_int(cfg, "train.checkpoint_every");

    run->rollout = rollout_config_default();
    run->rollout.max_new_tokens = config_int(cfg, "rl.max_new_tokens");
    run->rollout.temperature = config_float(cfg, "rl.temperature");
    run->rollout.top_k = config_int(cfg, "rl.top_k");
    run->adamw = config_adamw(cfg);

    run->run_dir = config_str(cfg, "run.dir");
    if (run->world.is_root && resuming) { // metrics.jsonl cut back to the checkpoint, then appended to
        run->metrics = run_dir_open(run->run_dir, cfg, 0, &run->resume, run->metrics_path, sizeof run->metrics_path);
        print_banner(run, run->resume_ckpt, reward_spec, gold_spec);
    } else if (run->world.is_root) { // rank 0 alone writes the run dir
        run->metrics = run_dir_start(run->run_dir, cfg, run->overwrite, run->metrics_path, sizeof run->metrics_path);
        print_banner(run, init, reward_spec, gold_spec);
    }
    run_control_start(&run->control, &run->world, cfg, run->cmd, run->run_dir, run->iterations);
}

static void print_banner(RLRun* run, const char* init, const char* reward_spec, const char* gold_spec) {
    const GPTConfig* c = &run->policy.config;
    fprintf(stderr,
            "%s: policy %s (L=%d C=%d ctx=%d, %zu params) | reward %s | gold %s | %zu prompts, %zu held out | "
            "%d iterations x %d prompts | run dir %s\n",
            run->cmd, init, c->num_layers, c->channels, c->max_seq_len, run->policy.num_parameters,
            reward_spec, gold_spec[0] ? gold_spec : "(none)", run->num_prompts, run->num_val,
            run->iterations, run->batch, run->run_dir);
}

RunState* rl_resume_state(RLRun* run) { return run->resuming ? &run->resume : NULL; }

void rl_run_close(RLRun* run) {
    run_state_free(&run->resume);
    const int exit_code = run->stop ? run_control_exit_code(&run->control) : 0;
    run_control_finish(&run->control);
    gpt_free(&run->policy);
    gpt_free(&run->ref);
    if (run->reward) reward_close(run->reward);
    if (run->gold) reward_close(run->gold);
    if (run->tok) tokenizer_free(run->tok);
    if (run->prompts) hf_free_prompts(run->prompts, run->num_prompts);
    if (run->val_prompts) hf_free_prompts(run->val_prompts, run->num_val);
    free(run->order);
    if (run->metrics) fclose(run->metrics);
    if (run->cfg) config_free(run->cfg);
    train_world_free(&run->world);
    memset(run, 0, sizeof *run);
    if (exit_code != 0) { // stopped by a signal: tell the launcher to requeue and resume
        comm_mpi_finalize();
        exit(exit_code);
    }
}

void rl_next_prompts(RLRun* run, const char** out, int n) {
    for (int k = 0; k < n; k++) {
        if (run->order_pos >= run->num_prompts) { // new pass: Fisher-Yates with a per-pass stream
            Rng rng;
            rng_seed(&rng, run->seed ^ (0x9E3779B97F4A7C15ull * (run->order_pass + 1)));
            for (size_t i = 0; i < run->num_prompts; i++) run->order[i] = i;
            for (size_t i = run->num_prompts; i > 1; i--) {
                size_t j = (size_t)rng_below(&rng, i);
                size_t t = run->order[i - 1]; run->order[i - 1] = run->order[j]; run->order[j] = t;
            }
            run->order_pos = 0;
            run->order_pass++;
        }
        out[k] = run->prompts[run->order[run->order_pos++]];
    }
}

void rl_local_prompts(RLRun* run, int iter, const char** prompts, uint64_t* seeds) {
    run_control_phase(&run->control, "generate");
    const char** all = mallocCheck((size_t)run->batch * sizeof(char*));
    rl_next_prompts(run, all, run->batch);
    for (int i = 0; i < run->nloc; i++) {
        prompts[i] = all[run->seq0 + i];
        seeds[i] = rl_sample_seed(run, iter, run->seq0 + i);
    }
    free(all);
}

double rl_global_mean(RLRun* run, double local_mean, double local_weight) {
    return train_world_mean(&run->world, local_mean, local_weight);
}

void rl_reduce_stats(RLRun* run, RLIterStats* st) {
    Comm* dp = run->world.par.dp;
    if (!dp || dp->size == 1) return;
    run_control_phase(&run->control, "train");
    const char* old = comm_set_phase(dp, "iteration statistics");
    double n = st->n_seq, nt = st->n_tok;
    double sums[8] = {st->reward * n, st->gold * n, st->kl * n, st->response_len * n, n,
                      st->entropy * nt, nt, (double)st->rollout_tokens};
    comm_allreduce_f64(dp, sums, 8);
    double times[4] = {st->t_generate, st->t_score, st->t_logprobs, st->t_train};
    comm_allreduce(dp, times, 4, COMM_F64, COMM_MAX);
    comm_set_phase(dp, old);
    double N = sums[4] > 0 ? sums[4] : 1, NT = sums[6] > 0 ? sums[6] : 1;
    st->reward = sums[0] / N;
    st->gold = sums[1] / N;
    st->kl = sums[2] / N;
    st->response_len = sums[3] / N;
    st->n_seq = sums[4];
    st->entropy = sums[5] / NT;
    st->n_tok = sums[6];
    st->rollout_tokens = (size_t)sums[7];
    st->t_generate = times[0];
    st->t_score = times[1];
    st->t_logprobs = times[2];
    st->t_train = times[3];
}

uint64_t rl_sample_seed(const RLRun* run, int iter, int i) {
    return run->seed * 1000003ull + (uint64_t)iter * 100000ull + (uint64_t)i;
}

float** rl_alloc_per_token(const Rollout* r) {
    float** a = mallocCheck((size_t)(r->n > 0 ? r->n : 1) * sizeof(float*));
    for (int i = 0; i < r->n; i++)
        a[i] = callocCheck((size_t)(r->resp_len[i] > 0 ? r->resp_len[i] : 1), sizeof(float));
    return a;
}

void rl_free_per_token(float** a, int n) {
    if (!a) return;
    for (int i = 0; i < n; i++) free(a[i]);
    free(a);
}

double rl_gold_mean(RLRun* run, const Rollout* r, double* t_score) {
    if (!run->gold || r->n == 0) return 0.0;
    double t0 = now_seconds();
    float* s = mallocCheck((size_t)r->n * sizeof(float));
    rollout_score(r, run->gold, s);
    double sum = 0.0;
    for (int i = 0; i < r->n; i++) sum += s[i];
    free(s);
    if (t_score) *t_score += now_seconds() - t0;
    return sum / r->n;
}

void rl_log_iteration(RLRun* run, int iter, const RLIterStats* st, json_t* extra) {
    double t_iter = st->t_generate + st->t_score + st->t_logprobs + st->t_train;
    run->t_generate += st->t_generate;
    run->t_score += st->t_score;
    run->t_logprobs += st->t_logprobs;
    run->t_train += st->t_train;
    run->rollout_tokens += st->rollout_tokens;
    run->iter_done = iter;

    json_t* row = json_object();
    json_object_set_new(row, "iter", json_integer(iter));
    json_object_set_new(row, "reward", json_real(st->reward));
    json_object_set_new(row, "gold", json_real(st->gold));
    json_object_set_new(row, "kl", json_real(st->kl));
    json_object_set_new(row, "entropy", json_real(st->entropy));
    json_object_set_new(row, "response_len", json_real(st->response_len));
    if (extra) {
        const char* key;
        json_t* value;
        json_object_foreach(extra, key, value) json_object_set(row, key, value);
        json_decref(extra);
    }
    json_object_set_new(row, "t_generate", json_real(st->t_generate));
    json_object_set_new(row, "t_score", json_real(st->t_score));
    json_object_set_new(row, "t_logprobs", json_real(st->t_logprobs));
    json_object_set_new(row, "t_train", json_real(st->t_train));
    double comm = train_world_comm_seconds(&run->world); // time in collectives since the last row
    json_object_set_new(row, "t_comm", json_real(comm - run->comm_seconds));
    run->comm_seconds = comm;
    json_object_set_new(row, "rollout_tokens_per_s",
                        json_real(st->t_generate > 0 ? (double)st->rollout_tokens / st->t_generate : 0.0));
    if (run->world.is_root) {
        write_json_line(run->metrics, row);
        fflush(run->metrics);
    }
    unsigned decision = run_control_step(&run->control, iter, "train", row, (double)st->rollout_tokens);
    json_decref(row);
    if (decision & RUN_STOP) run->stop = 1;
    // the command writes it (with its own state) once the iteration is complete
    run->ckpt_due = (decision & (RUN_STOP | RUN_CHECKPOINT)) != 0 ||
                    (run->ckpt_every > 0 && iter % run->ckpt_every == 0 && iter < run->iterations);
    if (!run->world.is_root) return;

    char eta[32];
    format_duration((now_seconds() - run->t_start) / iter * (run->iterations - iter), eta, sizeof eta);
    fprintf(stderr,
            "%s iter %*d/%d | reward %+.4f | gold %+.4f | kl %.3f | len %.1f | gen %.1fs (%.0f tok/s) score %.1fs "
            "logp %.1fs train %.1fs | ETA %s\n",
            run->cmd, snprintf(NULL, 0, "%d", run->iterations), iter, run->iterations, st->reward, st->gold,
            st->kl, st->response_len, st->t_generate,
            st->t_generate > 0 ? (double)st->rollout_tokens / st->t_generate : 0.0, st->t_score,
            st->t_logprobs, st->t_train, eta);
    (void)t_iter;
}

RolloutEval rl_evaluate(RLRun* run) {
    run_control_phase(&run->control, "eval");
    double t0 = now_seconds();
    RolloutEval ev = {0};
    // each dp rank samples its share of the prompts (prompt i keeps seed + i)
    size_t first = 0, last = run->num_val;
    Comm* dp = run->world.par.dp;
    if (dp) parallel_share(run->num_val, dp->rank, dp->size, &first, &last);
    if (last > first)
        ev = rollout_evaluate(&run->policy, &run->ref, run->reward, run->gold, run->tok,
                              (const char* const*)run->val_prompts + first, (int)(last - first),
                              run->seed + 7777 + first, &run->rollout);
    if (dp && dp->size > 1) {
        double n = ev.n, sums[5] = {ev.gold * n, ev.reward * n, ev.kl * n, ev.response_len * n, n};
        comm_allreduce_f64(dp, sums, 5);
        double N = sums[4] > 0 ? sums[4] : 1;
        ev.gold = sums[0] / N;
        ev.reward = sums[1] / N;
        ev.kl = sums[2] / N;
        ev.response_len = sums[3] / N;
        ev.n = (int)sums[4];
    }
    run->t_eval += now_seconds() - t0;
    return ev;
}

int rl_eval_due(const RLRun* run, int iter) {
    return run->eval_every > 0 && iter % run->eval_every == 0 && iter != run->iterations && run->num_val > 0;
}

void rl_log_evaluation(RLRun* run, int iter, const RolloutEval* ev) {
    if (!run->world.is_root) return;
    json_t* row = json_object();
    json_object_set_new(row, "iter", json_integer(iter));
    json_object_set_new(row, "eval", json_true());
    json_object_set_new(row, "eval_gold", json_real(ev->gold));
    json_object_set_new(row, "eval_reward", json_real(ev->reward));
    json_object_set_new(row, "eval_kl", json_real(ev->kl));
    json_object_set_new(row, "eval_response_len", json_real(ev->response_len));
    write_json_line(run->metrics, row);
    json_decref(row);
    fflush(run->metrics);
    fprintf(stderr, "%s eval @ iter %d | held-out gold %+.4f | reward %+.4f | kl %.3f (%d prompts)\n", run->cmd,
            iter, ev->gold, ev->reward, ev->kl, ev->n);
}

void rl_maybe_evaluate(RLRun* run, int iter) {
    if (!rl_eval_due(run, iter)) return;
    RolloutEval ev = rl_evaluate(run);
    rl_log_evaluation(run, iter, &ev);
}

void rl_checkpoint(RLRun* run, int iter, const StWriteTensor* extra, int num_extra, json_t* state_extra,
                   RunState* rs) {
    // world rank 0 writes; the model's other tp ranks take part in the gather
    // (ZeRO-1: the moments are gathered from every dp rank first)
    run_control_phase(&run->control, "checkpoint");
    dp_gather_optimizer(&run->world.dp, &run->policy);
    run->ckpt_due = 0;
    run->last_ckpt_iter = iter;
    int ok = 1;
    RunState own;
    run_state_init(&own);
    if (!rs) rs = &own;
    if (run->world.is_root) { // what the next iteration needs beyond the weights and AdamW state
        char err[512];
        run_state_put_i64(rs, "iter", iter);
        run_state_put_order(rs, "prompts", run->order, run->num_prompts, run->order_pos, run->order_pass);
        run_state_put_f64(rs, "t_generate", run->t_generate);
        run_state_put_f64(rs, "t_score", run->t_score);
        run_state_put_f64(rs, "t_logprobs", run->t_logprobs);
        run_state_put_f64(rs, "t_train", run->t_train);
        run_state_put_f64(rs, "t_eval", run->t_eval);
        run_state_put_i64(rs, "rollout_tokens", (int64_t)run->rollout_tokens);
        if (run->metrics && run_state_put_metrics(rs, run->metrics_path, run->metrics, err, sizeof err) != 0) {
            fprintf(stderr, "rlhfd: warning: checkpoint of iteration %d skipped: %s\n", iter, err);
            ok = 0;
        }
    }
    comm_broadcast(run->world.par.world, &ok, 1, COMM_I32, 0);
    if (ok && run->world.par.dp_rank == 0) {
        char* path = run_dir_checkpoint_path(run->run_dir, iter);
        snprintf(run->checkpoint, sizeof run->checkpoint, "%s", path);
        free(path);
        json_t* state = json_object();
        json_object_set_new(state, "kind", json_string(run->cmd));
        json_object_set_new(state, "iterations", json_integer(iter));
        if (run->stop) json_object_set_new(state, "stopped", json_true());
        if (state_extra) {
            const char* key;
            json_t* value;
            json_object_foreach(state_extra, key, value) json_object_set(state, key, value);
        }
        json_object_set_new(state, "config", config_to_json(run->cfg));
        CheckpointSaveOptions o = {.state = state, .with_optimizer = 1, .extra = extra, .num_extra = num_extra};
        run_state_attach(rs, &o);
        char err[1024];
        int rc = checkpoint_try_save(&run->policy, run->checkpoint, &o, err, sizeof err);
        json_decref(state);
        if (run->world.is_root && rc != 0) {
            fprintf(stderr, "rlhfd: warning: checkpoint of iteration %d not written: %s (the previous ones stay "
                            "valid)\n", iter, err);
        } else if (run->world.is_root) {
            run_dir_prune(run->run_dir, config_int(run->cfg, "train.keep_checkpoints"));
            fprintf(stderr, "%s: checkpoint %s\n", run->cmd, run->checkpoint);
        }
    }
    run_state_free(&own);
    json_decref(state_extra);
    dp_scatter_optimizer(&run->world.dp, &run->policy);
}

void rl_finish(RLRun* run, const StWriteTensor* extra, int num_extra, json_t* state_extra,
               json_t* summary_extra) {
    // the final checkpoint, unless the command wrote it already (a stop, or its last iteration)
    const int final_iter = run->stop ? run->iter_done : run->iterations;
    if (run->last_ckpt_iter != final_iter) rl_checkpoint(run, final_iter, extra, num_extra, state_extra, NULL);
    else json_decref(state_extra);
    if (!run->world.is_root) goto evaluate;
    if (fclose(run->metrics) != 0) fatalf("cannot write '%s': %s", run->metrics_path, strerror(errno));
    run->metrics = NULL;

evaluate:;
    // final held-out evaluation
    RolloutEval ev = rl_evaluate(run);
    if (!run->world.is_root) {
        json_decref(summary_extra);
        return;
    }
    fprintf(stderr, "%s final eval | held-out gold %+.4f | reward %+.4f | kl %.3f | len %.1f (%d prompts)\n",
            run->cmd, ev.gold, ev.reward, ev.kl, ev.response_len, ev.n);

    json_t* s = json_object();
    json_object_set_new(s, "gold", json_real(ev.gold));
    json_object_set_new(s, "reward", json_real(ev.reward));
    json_object_set_new(s, "kl", json_real(ev.kl));
    json_object_set_new(s, "response_len", json_real(ev.response_len));
    json_object_set_new(s, "eval_prompts", json_integer(ev.n));
    json_object_set_new(s, "iterations", json_integer(run->stop ? run->iter_done : run->iterations));
    if (run->stop) json_object_set_new(s, "stopped", json_true());
    json_object_set_new(s, "checkpoint", json_string(run->checkpoint));
    json_object_set_new(s, "run_dir", json_string(run->run_dir));
    json_object_set_new(s, "seconds", json_real(now_seconds() - run->t_start));
    json_object_set_new(s, "t_generate", json_real(run->t_generate));
    json_object_set_new(s, "t_score", json_real(run->t_score));
    json_object_set_new(s, "t_logprobs", json_real(run->t_logprobs));
    json_object_set_new(s, "t_train", json_real(run->t_train));
    json_object_set_new(s, "t_eval", json_real(run->t_eval));
    json_object_set_new(s, "rollout_tokens_per_s",
                        json_real(run->t_generate > 0 ? (double)run->rollout_tokens / run->t_generate : 0.0));
    if (summary_extra) {
        const char* key;
        json_t* value;
        json_object_foreach(summary_extra, key, value) json_object_set(s, key, value);
        json_decref(summary_extra);
    }
    write_json_line(stdout, s);
    fflush(stdout);
    json_decref(s);
}

void rl_whiten_global(RLRun* run, float* x, size_t n) {
    Comm* dp = run->world.par.dp;
    if (!dp || dp->size == 1) {
        if (n > 1) rl_whiten(x, NULL, n, 1);
        return;
    }
    // the same two passes as rl_whiten, with the sums taken over every rank
    double a[2] = {0.0, (double)n};
    for (size_t i = 0; i < n; i++) a[0] += x[i];
    comm_allreduce_f64(dp, a, 2);
    if (a[1] <= 1) return;
    double mean = a[0] / a[1], sq = 0.0;
    for (size_t i = 0; i < n; i++) sq += ((double)x[i] - mean) * ((double)x[i] - mean);
    comm_allreduce_f64(dp, &sq, 1);
    double std = sqrt(sq / (a[1] - 1));
    for (size_t i = 0; i < n; i++) x[i] = (float)(((double)x[i] - mean) / (std + 1e-8));
}

double rl_explained_variance_global(RLRun* run, const float* v, const float* ret, size_t n) {
    Comm* dp = run->world.par.dp;
    if (!dp || dp->size == 1) return rl_explained_variance(v, ret, NULL, n);
    double a[3] = {0.0, 0.0, (double)n};
    for (size_t i = 0; i < n; i++) {
        a[0] += ret[i];
        a[1] += (double)ret[i] - (double)v[i];
    }
    comm_allreduce_f64(dp, a, 3);
    if (a[2] == 0) return 0.0;
    double mean_ret = a[0] / a[2], mean_err = a[1] / a[2], var[2] = {0.0, 0.0};
    for (size_t i = 0; i < n; i++) {
        double dr = (double)ret[i] - mean_ret, de = (double)ret[i] - (double)v[i] - mean_err;
        var[0] += dr * dr;
        var[1] += de * de;
    }
    comm_allreduce_f64(dp, var, 2);
    return var[0] == 0.0 ? 0.0 : 1.0 - var[1] / var[0];
}
