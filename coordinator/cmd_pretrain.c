// cmd_pretrain.c - `rlhfd pretrain`: next-token training of a GPT on token shards.
//
// One step: sample B random windows of T+1 tokens, forward + backward on the
// mean cross-entropy, AdamW with global-norm clipping, LR from warmup+cosine.
// Outputs in run.dir: metrics.jsonl (a JSON object per step), config.json,
// ckpt-NNNNNNNN/ (every train.checkpoint_every steps and at the end, keeping
// the last train.keep_checkpoints). Last stdout line: a JSON summary.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "run_control.h"
#include "run_state.h"
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/config.h"
#include "../common/rng.h"
#include "../kernels/ops.h"
#include "../worker/gpt.h"
#include "../worker/model_io.h"

#define CMD "pretrain"

static const char* const SYNOPSIS =
    "[--config FILE] [--set KEY=VALUE]... [--model PATH] [--print-config]\n"
    "\n"
    "Trains a GPT on token shards (data.train) with AdamW, linear warmup then cosine\n"
    "decay to train.min_lr. Config sources apply in order, later wins: defaults,\n"
    "--config FILE, each --set, --model. From scratch the model is randomly\n"
    "initialised from train.seed. With --model (or model.init) training starts from\n"
    "that model's weights (only: AdamW moments start at zero, steps count from 1)\n"
    "and its shape is taken from it: model.* keys left unset are filled in from\n"
    "the model, ones set explicitly must agree.\n"
    "Batches: each row is a window of train.seq+1 tokens at a start drawn uniformly\n"
    "from all positions of all shards, from a generator seeded by train.seed, so the\n"
    "same config and seed give the same metrics (except timings). Val loss (if\n"
    "data.val is set) is over the first train.eval_batches batches of consecutive\n"
    "windows of data.val. Relative paths are relative to the working directory.\n"
    "Keys: rlhfd pretrain --help-config.";

int cmd_pretrain(int argc, char** argv) {
    TrainCli cli;
    Config* cfg = train_cli_config(CMD, SYNOPSIS, "PATH: start from this model (= model.init); shape from it", NULL, 0,
                                   &cli, argc, argv);
    if (!cfg) return 0;

    const Ops* ops = ops_from_config(cfg); // run.device, run.precision, train.threads
    TrainWorld world;
    train_world_init(&world, cfg);
    const int root = world.is_root;
    int stopped = 0; // a graceful stop (POST /stop, SIGTERM/SIGUSR1) after a checkpoint

    // ---- resume: the model, AdamW state, step, data RNG and metrics from a checkpoint
    char resume_ckpt[4096] = "";
    RunState rs;
    const int resuming = train_resume_begin(&world, cli.resume, cfg, resume_ckpt, sizeof resume_ckpt, &rs);

    // ---- model
    GPT model;
    memset(&model, 0, sizeof model);
    const char* init = resuming ? resume_ckpt : config_str(cfg, "model.init");
    if (init[0]) {
        json_t* init_state = NULL;
        model_load_tp(&model, init, ops, world.par.tp, &init_state); // this rank's shard under tp
        json_decref(init_state);
        config_adopt_model_shape(cfg, model.config, init);
    } else {
        GPTConfig shape = config_model_shape(cfg);
        gpt_config_check(&shape);
        gpt_build_tp(&model, shape, ops, world.par.tp);
        gpt_init_random(&model, (uint64_t)config_int(cfg, "train.seed"));
    }
    const int V = model.config.vocab_size;
    const int B = config_int(cfg, "train.batch");
    const int T = config_int(cfg, "train.seq") ? config_int(cfg, "train.seq") : model.config.max_seq_len;
    if (T > model.config.max_seq_len)
        fatalf("%s: train.seq = %d exceeds the model's context %d (model.ctx)",
               config_origin(cfg, "train.seq"), T, model.config.max_seq_len);
    const int steps = config_int(cfg, "train.steps");
    int row0, Bl; // this dp rank's rows of the global batch
    train_world_share(&world, B, "train.batch", &row0, &Bl);

    // ---- data
    TokenData train_data, val_data;
    token_data_open(&train_data, config_str(cfg, "data.train"), V, "data.train");
    token_data_require_window(&train_data, T, "data.train");
    const int has_val = config_str(cfg, "data.val")[0] != '\0';
    if (has_val) {
        token_data_open(&val_data, config_str(cfg, "data.val"), V, "data.val");
        if (token_data_num_windows(&val_data, T) == 0)
            fatalf("data.val: %zu tokens, fewer than one window of %d (seq + 1)", val_data.num_tokens, T + 1);
    }

    // ---- run dir
    const char* run_dir = config_str(cfg, "run.dir");
    char metrics_path[4096];
    FILE* metrics = root ? run_dir_open(run_dir, cfg, cli.overwrite, resuming ? &rs : NULL, metrics_path,
                                        sizeof metrics_path)
                         : NULL;

    if (root) fprintf(stderr,
            "pretrain: L=%d NH=%d C=%d V=%d ctx=%d (%zu params, %s) | B=%d T=%d steps=%d | "
            "train %zu tokens in %d shard(s) | run dir %s\n",
            model.config.num_layers, model.config.num_heads, model.config.channels, V,
            model.config.max_seq_len, model.num_parameters, init[0] ? init : "random init", B, T,
            steps, train_data.num_tokens, train_data.num_shards, run_dir);

    // ---- train
    AdamWConfig adamw = config_adamw(cfg);
    const float peak_lr = adamw.lr, min_lr = config_float(cfg, "train.min_lr");
    const int warmup = config_int(cfg, "train.warmup");
    const int eval_every = config_int(cfg, "train.eval_every");
    const int eval_batches = config_int(cfg, "train.eval_batches");
    const int ckpt_every = config_int(cfg, "train.checkpoint_every");
    const int log_every = config_int(cfg, "train.log_every");

    Rng data_rng; // its own stream: the data order does not depend on the init
    rng_seed(&data_rng, (uint64_t)config_int(cfg, "train.seed") ^ 0xD1B54A32D192ED03ull);
    int* inputs = mallocCheck((size_t)B * T * sizeof(int));  // (B,T)
    int* targets = mallocCheck((size_t)B * T * sizeof(int)); // (B,T)

    RunControl control;
    run_control_start(&control, &world, cfg, "pretrain", run_dir, steps);
    int steps_done = steps;
    const double t_start = now_seconds();
    double train_seconds = 0.0, loss = 0.0, val_loss = NAN;
    size_t tokens = 0;
    int first_step = 1;
    if (resuming) { // continue exactly where the checkpoint's step ended
        checkpoint_load_optimizer(&model, resume_ckpt);
        dp_scatter_optimizer(&world.dp, &model);
        first_step = (int)run_state_get_i64(&rs, "step") + 1;
        run_state_get_rng(&rs, "rng.data", &data_rng);
        tokens = (size_t)run_state_get_i64(&rs, "tokens");
        train_seconds = run_state_get_f64(&rs, "train_seconds");
        loss = run_state_get_f64(&rs, "loss");
        val_loss = run_state_get_f64(&rs, "val_loss");
    }
    run_state_free(&rs);
    char ckpt_path[4200] = "";
    for (int step = first_step; step <= steps; step++) {
        double t0 = now_seconds(), comm0 = train_world_comm_seconds(&world);
        run_control_phase(&control, "train");
        // every rank draws the same global batch and takes its rows: the
        // run is the same at any dp size
        token_data_random_batch(&train_data, &data_rng, inputs, targets, B, T);
        adamw.lr = lr_schedule(step, steps, warmup, peak_lr, min_lr);
        const size_t off = (size_t)row0 * T;
        gpt_forward(&model, inputs + off, targets + off, NULL, Bl, T);
        loss = train_world_mean(&world, model.mean_loss, (double)Bl * T);
        if (!isfinite(loss))
            fatalf("loss is %g at step %d (try a lower train.lr)", loss, step);
        gpt_zero_grad(&model);
        gpt_backward(&model);
        dp_allreduce_grads(&world.dp, &model, (double)Bl * T);
        float grad_norm = dp_update(&world.dp, &model, &adamw);
        double dt = now_seconds() - t0;
        train_seconds += dt;
        tokens += (size_t)B * T;

        int is_last = step == steps;
        int eval_now = has_val && (is_last || (eval_every > 0 && step % eval_every == 0));
        if (eval_now) run_control_phase(&control, "eval");
        if (eval_now)
            val_loss = eval_windows_dp(&model, &val_data, Bl, T, (size_t)eval_batches * B, world.par.dp, NULL);
        int ckpt_now = is_last || (ckpt_every > 0 && step % ckpt_every == 0);

        json_t* row = json_object();
        json_object_set_new(row, "step", json_integer(step));
        json_object_set_new(row, "loss", json_real(loss));
        json_object_set_new(row, "lr", json_real(adamw.lr));
        json_object_set_new(row, "grad_norm", json_real(grad_norm));
        json_object_set_new(row, "tokens", json_integer((json_int_t)tokens));
        if (eval_now) json_object_set_new(row, "val_loss", json_real(val_loss));
        json_object_set_new(row, "ms", json_real(dt * 1e3));
        json_object_set_new(row, "comm_ms", json_real((train_world_comm_seconds(&world) - comm0) * 1e3));
        json_object_set_new(row, "tokens_per_s", json_real(dt > 0 ? B * T / dt : 0.0));
        if (root) {
            write_json_line(metrics, row);
            fflush(metrics);
        }
        // every rank reports; rank 0 publishes /status and decides (collective)
        unsigned decision = run_control_step(&control, step, "train", row, (double)B * T);
        json_decref(row);
        if (decision & RUN_CHECKPOINT) ckpt_now = 1;
        if (decision & RUN_STOP) stopped = 1;

        if (root && (step == 1 || is_last || step % log_every == 0)) {
            char eta[32], val_text[32] = "";
            format_duration(train_seconds / step * (steps - step), eta, sizeof eta);
            if (eval_now) snprintf(val_text, sizeof val_text, " | val %.4f", val_loss);
            fprintf(stderr, "step %*d/%d | loss %.4f%s | lr %.2e | norm %.3f | %.0f tok/s | ETA %s\n",
                    snprintf(NULL, 0, "%d", steps), step, steps, loss, val_text, adamw.lr,
                    grad_norm, train_seconds > 0 ? tokens / train_seconds : 0.0, eta);
        }
        if (ckpt_now) {
            run_control_phase(&control, "checkpoint");
            dp_gather_optimizer(&world.dp, &model); // collective (ZeRO-1)
            RunState save;
            run_state_init(&save);
            if (root) { // what the next step needs beyond the weights and AdamW state
                run_state_put_i64(&save, "step", step);
                run_state_put_rng(&save, "rng.data", &data_rng);
                run_state_put_i64(&save, "tokens", (int64_t)tokens);
                run_state_put_f64(&save, "train_seconds", train_seconds);
                run_state_put_f64(&save, "loss", loss);
                run_state_put_f64(&save, "val_loss", val_loss);
            }
            // the metrics mark, and whether every rank goes on to write (collective)
            const int ok = train_checkpoint_agree(&world, root ? &save : NULL, step, metrics_path, metrics);
            if (ok && world.par.dp_rank == 0) // the model's ranks gather; rank 0 writes
                train_checkpoint_try(&model, cfg, run_dir, "pretrain", step, loss, val_loss, tokens, NULL,
                                     root ? &save : NULL, ckpt_path, sizeof ckpt_path);
            run_state_free(&save);
            dp_scatter_optimizer(&world.dp, &model);
        }
        if (stopped) {
            steps_done = step;
            break;
        }
    }
    if (!root) goto done;
    if (fclose(metrics) != 0) fatalf("cannot write '%s': %s", metrics_path, strerror(errno));

    // ---- summary: the last stdout line
    json_t* summary = json_object();
    json_object_set_new(summary, "steps", json_integer(steps_done));
    if (stopped) json_object_set_new(summary, "stopped", json_true());
    json_object_set_new(summary, "loss", json_real(loss));
    json_object_set_new(summary, "val_loss", isnan(val_loss) ? json_null() : json_real(val_loss));
    json_object_set_new(summary, "tokens", json_integer((json_int_t)tokens));
    json_object_set_new(summary, "seconds", json_real(now_seconds() - t_start));
    json_object_set_new(summary, "params", json_integer((json_int_t)model.num_parameters_full));
    json_object_set_new(summary, "checkpoint", json_string(ckpt_path));
    json_object_set_new(summary, "run_dir", json_string(run_dir));
    write_json_line(stdout, summary);
    json_decref(summary);

done:;
    const int rc = stopped ? run_control_exit_code(&control) : 0;
    run_control_finish(&control);
    free(inputs);
    free(targets);
    token_data_free(&train_data);
    if (has_val) token_data_free(&val_data);
    gpt_free(&model);
    train_world_free(&world);
    config_free(cfg);
    return rc;
}
