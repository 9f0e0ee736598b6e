// cmd_sft.c - `rlhfd sft`: supervised fine-tuning of a pretrained GPT on
// demonstrations {"prompt", "response"} (InstructGPT's first stage).
//
// One step: the next batch of the length-bucketed shuffled order
// (sft_data.h), padded to its longest example, forward + backward on the
// mean cross-entropy over the response tokens only (prompt and pads masked),
// AdamW with global-norm clipping, LR from warmup+cosine. Outputs in run.dir
// as for pretrain: metrics.jsonl, config.json, ckpt-NNNNNNNN/; the last
// stdout line is a JSON summary.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
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

// The model to fine-tune: --model / model.init, required.
static void load_model(GPT* model, Config* cfg, const Ops* ops) {
    const char* init = config_str(cfg, "model.init");
    if (!init[0])
        fatalf("sft needs a pretrained model: pass --model PATH (or set model.init)");
    json_t* init_state = NULL;
    model_load(model, init, ops, &init_state);
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

    ops_cpu_set_threads(config_int(cfg, "train.threads"));
    const Ops* ops = ops_cpu();

    // ---- model and tokenizer
    GPT model;
    memset(&model, 0, sizeof model);
    load_model(&model, cfg, ops);
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
    SftSampler sampler;
    sft_sampler_init(&sampler, &train_data, B, (uint64_t)config_int(cfg, "train.seed") ^ 0xD1B54A32D192ED03ull);
    const int steps = sft_steps(cfg, sampler.num_batches);
    int max_T = train_data.max_len - 1; // a row feeds len-1 tokens
    if (has_val && val_data.max_len - 1 > max_T) max_T = val_data.max_len - 1;
    SftBatch batch;
    sft_batch_alloc(&batch, B, max_T);
    {   // size the activations once for the largest batch (later ones fit in it)
        memset(batch.inputs, 0, (size_t)B * max_T * sizeof(int));
        gpt_forward_trunk(&model, batch.inputs, B, max_T);
    }

    // ---- run dir
    const char* run_dir = config_str(cfg, "run.dir");
    char metrics_path[4096];
    FILE* metrics = run_dir_start(run_dir, cfg, cli.overwrite, metrics_path, sizeof metrics_path);

    fprintf(stderr,
            "sft: L=%d NH=%d C=%d V=%d ctx=%d (%zu params, %s) | B=%d steps=%d (%.2f epochs) | "
            "train %zu examples (%zu response tokens, longest %d)%s | val %zu examples | run dir %s\n",
            model.config.num_layers, model.config.num_heads, model.config.channels,
            model.config.vocab_size, ctx, model.num_parameters, config_str(cfg, "model.init"), B,
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

    const double t_start = now_seconds();
    double train_seconds = 0.0, loss = 0.0, val_loss = NAN;
    size_t tokens = 0, real_tokens = 0;
    char ckpt_path[4200] = "";
    for (int step = 1; step <= steps; step++) {
        double t0 = now_seconds();
        int rows = 0;
        const size_t* idx = sft_sampler_next(&sampler, &rows);
        sft_batch_fill(&batch, &train_data, idx, rows, eot);
        adamw.lr = lr_schedule(step, steps, warmup, peak_lr, min_lr);
        gpt_forward(&model, batch.inputs, batch.targets, batch.mask, batch.B, batch.T);
        loss = model.mean_loss;
        if (!isfinite(loss)) fatalf("loss is %g at step %d (try a lower train.lr)", loss, step);
        gpt_zero_grad(&model);
        gpt_backward(&model);
        float grad_norm = gpt_update(&model, &adamw);
        double dt = now_seconds() - t0;
        train_seconds += dt;
        tokens += batch.loss_tokens;
        real_tokens += batch.real_tokens;

        int is_last = step == steps;
        int eval_now = has_val && (is_last || (eval_every > 0 && step % eval_every == 0));
        if (eval_now) val_loss = sft_eval(&model, &val_data, &batch, eot, NULL);

        json_t* row = json_object();
        json_object_set_new(row, "step", json_integer(step));
        json_object_set_new(row, "epoch", json_integer(sampler.epoch));
        json_object_set_new(row, "loss", json_real(loss));
        json_object_set_new(row, "lr", json_real(adamw.lr));
        json_object_set_new(row, "grad_norm", json_real(grad_norm));
        json_object_set_new(row, "tokens", json_integer((json_int_t)tokens));
        if (eval_now) json_object_set_new(row, "val_loss", json_real(val_loss));
        json_object_set_new(row, "ms", json_real(dt * 1e3));
        json_object_set_new(row, "tokens_per_s", json_real(dt > 0 ? batch.real_tokens / dt : 0.0));
        write_json_line(metrics, row);
        json_decref(row);
        fflush(metrics);

        if (step == 1 || is_last || step % log_every == 0)
            log_step(step, steps, sampler.epoch, loss, val_loss, eval_now, adamw.lr, grad_norm,
                     real_tokens, train_seconds);
        if (is_last || (ckpt_every > 0 && step % ckpt_every == 0))
            train_checkpoint_save(&model, cfg, run_dir, "sft", step, loss, val_loss, tokens,
                                  ckpt_path, sizeof ckpt_path);
    }
    if (fclose(metrics) != 0) fatalf("cannot write '%s'", metrics_path);

    // ---- summary: the last stdout line
    json_t* summary = json_object();
    json_object_set_new(summary, "steps", json_integer(steps));
    json_object_set_new(summary, "epochs", json_real((double)steps / (double)sampler.num_batches));
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

    sft_batch_free(&batch);
    sft_sampler_free(&sampler);
    sft_data_free(&train_data);
    if (has_val) sft_data_free(&val_data);
    gpt_free(&model);
    config_free(cfg);
    return 0;
}
