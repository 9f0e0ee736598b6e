// cmd_sft.c - `rlhfd sft`: supervised fine-tuning of a pretrained GPT on
// demonstrations {"prompt", "response"} (InstructGPT's first stage).
//
// One step: the next batch of the length-bucketed shuffled order
// (sft_data.h), padded to its longest example, forward + backward on the
// mean cross-entropy over the response tokens only (prompt and pads masked),
// AdamW with global-norm clipping, LR from warmup+cosine. Outputs in run.dir
// as for pretrain: metrics.jsonl, config.json, ckpt-NNNNNNNN/; the last
// stdout line is a JSON summary.
// Data parallel under mpirun (coordinator/train_util.h): every rank draws the
// same global batch and trains on its share of the rows (a short last batch
// may leave a rank none: it adds a zero gradient); the gradient is weighed by
// each rank's response tokens, so any dp size gives the dp=1 run. Held-out
// examples are shared over the ranks too. Rank 0 alone writes run.dir.
// Tensor parallel with parallel.tp (worker/gpt.h): the model is sharded over
// the tp ranks of each dp replica, which take the same rows and make every
// model call together (checkpoints too: the shards are gathered).
// Exact resume (--resume): the checkpoint's run state holds the sampler
// (generator, epoch order, position), the counters and the metrics mark, so
// a stopped run continues bit for bit (coordinator/run_state.h).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "run_control.h"
#include "run_state.h"
#include "sft_data.h"
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/config.h"
#include "../common/tokenizer.h"
#include "../kernels/ops.h"
#include "../worker/gpt.h"
#include "../worker/model_io.h"

#define CMD "sft"

static const char* const SYNOPSIS =
    "--config FILE [--set KEY=VALUE]... [--model PATH] [--overwrite] [--skip-bad]\n"
    "\n"
    "Fine-tunes a pretrained GPT (--model or model.init: required; any format\n"
    "`rlhfd pretrain --model` takes) on demonstrations, JSONL {\"prompt\", \"response\"}\n"
    "per line (sft.train; sft.val for the held-out loss). Each demonstration is\n"
    "encode(prompt) ++ encode(response) ++ [eot]; the loss is the mean cross-entropy\n"
    "over the response tokens and the eot of the batch only: prompt positions\n"
    "and padding are masked out.\n"
    "Batches: one example per row, padded to the batch's longest example (causal\n"
    "attention: a pad never reaches a real position). To keep padding low the\n"
    "order is bucketed by length: each epoch shuffles all examples (seeded by\n"
    "train.seed), sorts every bucket of 16 batches' worth by length, cuts it into\n"
    "batches of train.batch and shuffles the batches. Packing several examples\n"
    "into one row is not supported (it needs block-diagonal attention masks,\n"
    "which the kernels do not have).\n"
    "Steps: train.steps, or sft.epochs passes over sft.train when sft.epochs > 0.\n"
    "Val loss: at every train.eval_every steps and at the end, the mean masked\n"
    "loss over all of sft.val. An example longer than the model's context is an\n"
    "error naming PATH:LINE (with --skip-bad: skipped and counted, as are bad\n"
    "records). metrics.jsonl: step, epoch, loss, lr, grad_norm, tokens (response\n"
    "tokens trained on so far), ms, tokens_per_s (non-pad tokens processed),\n"
    "val_loss. run.dir defaults to runs/sft. train.seq is not used (T = the\n"
    "batch's longest example). Keys: rlhfd pretrain --help-config.";

// Steps of the run: sft.epochs passes when set, else train.steps.
static int sft_steps(const Config* cfg, size_t batches_per_epoch) {
    double epochs = config_double(cfg, "sft.epochs");
    if (epochs <= 0) return config_int(cfg, "train.steps");
    double steps = ceil(epochs * (double)batches_per_epoch);
    if (steps > 1e9) fatalf("%s: sft.epochs = %g is too many steps", config_origin(cfg, "sft.epochs"), epochs);
    return steps < 1 ? 1 : (int)steps;
}

// The model to fine-tune: --model / model.init, required (init: that, or the
// checkpoint a resumed run continues from); this rank's shard under tensor
// parallelism (tp: NULL or size 1 = the whole model).
static void load_model(GPT* model, Config* cfg, const Ops* ops, Comm* tp, const char* init) {
    if (!init[0])
        fatalf("sft needs a pretrained model: pass --model PATH (or set model.init)");
    json_t* init_state = NULL;
    model_load_tp(model, init, ops, tp, &init_state);
    json_decref(init_state);
    config_adopt_model_shape(cfg, model->config, init);
}

static void log_step(int step, int steps, int epoch, double loss, double val_loss, int eval_now,
                     float lr, float grad_norm, size_t real_tokens, double train_seconds) {
    char eta[32], val_text[32] = "";
    format_duration(train_seconds / step * (steps - step), eta, sizeof eta);
    if (eval_now) snprintf(val_text, sizeof val_text, " | val %.4f", val_loss);
    fprintf(stderr, "step %*d/%d | epoch %d | loss %.4f%s | lr %.2e | norm %.3f | %.0f tok/s | ETA %s\n",
            snprintf(NULL, 0, "%d", steps), step, steps, epoch, loss, val_text, lr, grad_norm,
            train_seconds > 0 ? real_tokens / train_seconds : 0.0, eta);
}

int cmd_sft(int argc, char** argv) {
    TrainCli cli;
    Config* cfg = train_cli_config(CMD, SYNOPSIS, "PATH: the pretrained model (= model.init); shape from it",
                                   "runs/sft", 1, &cli, argc, argv);
    if (!cfg) return 0;
    const char* train_path = config_str(cfg, "sft.train");
    const char* val_path = config_str(cfg, "sft.val");
    if (!train_path[0]) fatalf("%s: sft.train is empty (a JSONL file of {\"prompt\", \"response\"})",
                               config_origin(cfg, "sft.train"));

    const Ops* ops = ops_from_config(cfg); // run.device, run.precision, train.threads
    TrainWorld world;
    train_world_init(&world, cfg);
    const int root = world.is_root;
    Comm* dp = world.par.dp;
    int stopped = 0; // a graceful stop (POST /stop, SIGTERM/SIGUSR1) after a checkpoint

    // ---- resume: the model, AdamW state, sampler and metrics from a checkpoint
    char resume_ckpt[4096] = "";
    RunState rs;
    const int resuming = train_resume_begin(&world, cli.resume, cfg, resume_ckpt, sizeof resume_ckpt, &rs);

    // ---- model and tokenizer
    GPT model;
    memset(&model, 0, sizeof model);
    load_model(&model, cfg, ops, world.par.tp, resuming ? resume_ckpt : config_str(cfg, "model.init"));
    Tokenizer* tok = tokenizer_load(NULL);
    const int eot = tokenizer_eot(tok);
    if (model.config.vocab_size < tokenizer_vocab_size(tok))
        fatalf("model '%s' has a vocabulary of %d, smaller than the GPT-2 tokenizer's %d",
               config_str(cfg, "model.init"), model.config.vocab_size, tokenizer_vocab_size(tok));
    const int ctx = model.config.max_seq_len;

    // ---- data
    SftData train_data, val_data;
    sft_data_load(&train_data, train_path, tok, ctx, cli.skip_bad);
    const int has_val = val_path[0] != '\0';
    if (has_val) sft_data_load(&val_data, val_path, tok, ctx, cli.skip_bad);
    tokenizer_free(tok);

    const int B = config_int(cfg, "train.batch");
    // every rank walks the same global order and takes its share of each
    // batch's rows; Bcap = the largest share (rank 0's), which also sizes
    // the held-out batches (= B in a world of one)
    int row0, Bl;
    train_world_share(&world, B, "train.batch", &row0, &Bl); // fatal when B < dp ranks
    const int Bcap = (B + world.par.dp_size - 1) / world.par.dp_size;
    SftSampler sampler;
    sft_sampler_init(&sampler, &train_data, B, (uint64_t)config_int(cfg, "train.seed") ^ 0xD1B54A32D192ED03ull);
    const int steps = sft_steps(cfg, sampler.num_batches);
    int max_T = train_data.max_len - 1; // a row feeds len-1 tokens
    if (has_val && val_data.max_len - 1 > max_T) max_T = val_data.max_len - 1;
    SftBatch batch;
    sft_batch_alloc(&batch, Bcap, max_T);
    {   // size the activations once for the largest batch (later ones fit in it)
        memset(batch.inputs, 0, (size_t)Bcap * max_T * sizeof(int));
        gpt_forward_trunk(&model, batch.inputs, Bcap, max_T);
    }

    // ---- run dir
    const char* run_dir = config_str(cfg, "run.dir");
    char metrics_path[4096];
    FILE* metrics = root ? run_dir_open(run_dir, cfg, cli.overwrite, resuming ? &rs : NULL, metrics_path,
                                        sizeof metrics_path)
                         : NULL;

    if (root) fprintf(stderr,
            "sft: L=%d NH=%d C=%d V=%d ctx=%d (%zu params, %s) | B=%d steps=%d (%.2f epochs) | "
            "train %zu examples (%zu response tokens, longest %d)%s | val %zu examples | run dir %s\n",
            model.config.num_layers, model.config.num_heads, model.config.channels,
            model.config.vocab_size, ctx, model.num_parameters_full, config_str(cfg, "model.init"), B,
            steps, (double)steps / (double)sampler.num_batches, train_data.n,
            train_data.num_response_tokens, train_data.max_len,
            train_data.skipped ? " (some skipped)" : "", has_val ? val_data.n : 0, run_dir);

    // ---- train
    AdamWConfig adamw = config_adamw(cfg);
    const float peak_lr = adamw.lr, min_lr = config_float(cfg, "train.min_lr");
    const int warmup = config_int(cfg, "train.warmup");
    const int eval_every = config_int(cfg, "train.eval_every");
    const int ckpt_every = config_int(cfg, "train.checkpoint_every");
    const int log_every = config_int(cfg, "train.log_every");

    RunControl control;
    run_control_start(&control, &world, cfg, "sft", run_dir, steps);
    int steps_done = steps;
    const double t_start = now_seconds();
    double train_seconds = 0.0, loss = 0.0, val_loss = NAN;
    size_t tokens = 0, real_tokens = 0;
    int first_step = 1;
    if (resuming) { // continue exactly where the checkpoint's step ended
        checkpoint_load_optimizer(&model, resume_ckpt);
        dp_scatter_optimizer(&world.dp, &model);
        first_step = (int)run_state_get_i64(&rs, "step") + 1;
        sft_sampler_restore(&sampler, &rs, "sampler");
        tokens = (size_t)run_state_get_i64(&rs, "tokens");
        real_tokens = (size_t)run_state_get_i64(&rs, "real_tokens");
        train_seconds = run_state_get_f64(&rs, "train_seconds");
        loss = run_state_get_f64(&rs, "loss");
        val_loss = run_state_get_f64(&rs, "val_loss");
    }
    run_state_free(&rs);
    char ckpt_path[4200] = "";
    for (int step = first_step; step <= steps; step++) {
        double t0 = now_seconds();
        run_control_phase(&control, "train");
        int rows = 0;
        const size_t* idx = sft_sampler_next(&sampler, &rows);
        // this rank's rows of the global batch; the last batch of an epoch
        // may leave a rank none (it then adds a zero gradient)
        size_t r0, r1;
        parallel_share((size_t)rows, world.par.dp_rank, world.par.dp_size, &r0, &r1);
        const int nloc = (int)(r1 - r0);
        size_t step_loss_tokens, step_real_tokens; // of the global batch
        sft_count_tokens(&train_data, idx, rows, &step_loss_tokens, &step_real_tokens);
        adamw.lr = lr_schedule(step, steps, warmup, peak_lr, min_lr);
        double local_loss = 0.0, local_weight = 0.0;
        if (nloc > 0) {
            sft_batch_fill(&batch, &train_data, idx + r0, nloc, eot);
            gpt_forward(&model, batch.inputs, batch.targets, batch.mask, batch.B, batch.T);
            local_loss = model.mean_loss;
            local_weight = (double)batch.loss_tokens;
            gpt_zero_grad(&model);
            gpt_backward(&model);
        } else {
            gpt_ensure_grads(&model);
            gpt_zero_grad(&model);
        }
        // the mean over the global batch's response tokens, on every rank
        loss = train_world_mean(&world, local_loss, local_weight);
        if (!isfinite(loss)) fatalf("loss is %g at step %d (try a lower train.lr)", loss, step);
        dp_allreduce_grads(&world.dp, &model, local_weight);
        float grad_norm = dp_update(&world.dp, &model, &adamw);
        double dt = now_seconds() - t0;
        train_seconds += dt;
        tokens += step_loss_tokens;
        real_tokens += step_real_tokens;

        int is_last = step == steps;
        int eval_now = has_val && (is_last || (eval_every > 0 && step % eval_every == 0));
        if (eval_now) run_control_phase(&control, "eval");
        if (eval_now) val_loss = sft_eval_dp(&model, &val_data, &batch, eot, dp, NULL);
        int ckpt_now = is_last || (ckpt_every > 0 && step % ckpt_every == 0);

        json_t* row = json_object(); // every rank builds it; rank 0 writes and publishes it
        json_object_set_new(row, "step", json_integer(step));
        json_object_set_new(row, "epoch", json_integer(sampler.epoch));
        json_object_set_new(row, "loss", json_real(loss));
        json_object_set_new(row, "lr", json_real(adamw.lr));
        json_object_set_new(row, "grad_norm", json_real(grad_norm));
        json_object_set_new(row, "tokens", json_integer((json_int_t)tokens));
        if (eval_now) json_object_set_new(row, "val_loss", json_real(val_loss));
        json_object_set_new(row, "ms", json_real(dt * 1e3));
        json_object_set_new(row, "tokens_per_s", json_real(dt > 0 ? step_real_tokens / dt : 0.0));
        if (root) {
            write_json_line(metrics, row);
            fflush(metrics);
        }
        // every rank reports; rank 0 publishes /status and decides (collective)
        unsigned decision = run_control_step(&control, step, "train", row, (double)step_real_tokens);
        json_decref(row);
        if (decision & RUN_CHECKPOINT) ckpt_now = 1;
        if (decision & RUN_STOP) stopped = 1;

        if (root && (step == 1 || is_last || step % log_every == 0))
            log_step(step, steps, sampler.epoch, loss, val_loss, eval_now, adamw.lr, grad_norm,
                     real_tokens, train_seconds);
        if (ckpt_now) {
            run_control_phase(&control, "checkpoint");
            dp_gather_optimizer(&world.dp, &model); // collective (ZeRO-1)
            RunState save;
            run_state_init(&save);
            if (root) { // what the next step needs beyond the weights and AdamW state
                run_state_put_i64(&save, "step", step);
                sft_sampler_save(&sampler, &save, "sampler");
                run_state_put_i64(&save, "tokens", (int64_t)tokens);
                run_state_put_i64(&save, "real_tokens", (int64_t)real_tokens);
                run_state_put_f64(&save, "train_seconds", train_seconds);
                run_state_put_f64(&save, "loss", loss);
                run_state_put_f64(&save, "val_loss", val_loss);
            }
            // the metrics mark, and whether every rank goes on to write (collective)
            const int ok = train_checkpoint_agree(&world, root ? &save : NULL, step, metrics_path, metrics);
            if (ok && world.par.dp_rank == 0) // the model's ranks gather; rank 0 writes
                train_checkpoint_try(&model, cfg, run_dir, "sft", step, loss, val_loss, tokens, NULL,
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
    if (fclose(metrics) != 0) fatalf("cannot write '%s'", metrics_path);

    // ---- summary: the last stdout line
    json_t* summary = json_object();
    json_object_set_new(summary, "steps", json_integer(steps_done));
    if (stopped) json_object_set_new(summary, "stopped", json_true());
    json_object_set_new(summary, "epochs", json_real((double)steps_done / (double)sampler.num_batches));
    json_object_set_new(summary, "loss", json_real(loss));
    json_object_set_new(summary, "val_loss", isnan(val_loss) ? json_null() : json_real(val_loss));
    json_object_set_new(summary, "examples", json_integer((json_int_t)train_data.n));
    json_object_set_new(summary, "val_examples", json_integer(has_val ? (json_int_t)val_data.n : 0));
    json_object_set_new(summary, "skipped",
                        json_integer((json_int_t)(train_data.skipped + (has_val ? val_data.skipped : 0))));
    json_object_set_new(summary, "tokens", json_integer((json_int_t)tokens));
    json_object_set_new(summary, "seconds", json_real(now_seconds() - t_start));
    json_object_set_new(summary, "checkpoint", json_string(ckpt_path));
    json_object_set_new(summary, "run_dir", json_string(run_dir));
    write_json_line(stdout, summary);
    json_decref(summary);

done:;
    const int rc = stopped ? run_control_exit_code(&control) : 0;
    run_control_finish(&control);
    sft_batch_free(&batch);
    sft_sampler_free(&sampler);
    sft_data_free(&train_data);
    if (has_val) sft_data_free(&val_data);
    gpt_free(&model);
    train_world_free(&world);
    config_free(cfg);
    return rc;
}
