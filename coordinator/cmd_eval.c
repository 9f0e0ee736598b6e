// cmd_eval.c - `rlhfd eval`: mean next-token cross-entropy of a model on token shards.
//
// Windows of T+1 tokens with stride T: in each shard they start at 0, T,
// 2T, ... while start+T+1 <= ntok, so every window predicts T tokens and
// "tokens" = windows * T. Batches of B windows; the last stdout line is JSON.
#include <stdio.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../kernels/ops.h"
#include "../worker/gpt.h"
#include "../worker/model_io.h"

#define CMD "eval"

static const char* const SYNOPSIS =
    "--model PATH --tokens SHARD [--seq T] [--batch B] [--threads N]\n"
    "\n"
    "Mean next-token cross-entropy of the model over all full windows of T+1 tokens\n"
    "with stride T (starts 0, T, 2T, ... while start+T+1 <= ntok) of each shard.\n"
    "PATH: checkpoint dir, run dir (its latest checkpoint), HF dir or llm.c .bin.\n"
    "SHARD: a token shard; comma-separated paths and globs are read as one set.\n"
    "Last stdout line: {\"loss\": L, \"tokens\": windows*T, ...}.";

int cmd_eval(int argc, char** argv) {
    const char* model_path = NULL;
    const char* tokens_spec = NULL;
    int T = -1, B = 4, threads = 0; // T -1: the model's context
    const ArgSpec specs[] = {
        {"model", ARG_STR, &model_path, "PATH: model to evaluate (checkpoint, run dir, HF dir, .bin)"},
        {"tokens", ARG_STR, &tokens_spec, "SHARD: token shard(s) (comma-separated, globs ok)"},
        {"seq", ARG_INT, &T, "T: window length; default the model's context"},
        {"batch", ARG_INT, &B, "B: windows per forward pass (default 4)"},
        {"threads", ARG_INT, &threads, "N: CPU threads; default all"},
    };
    args_parse(CMD, SYNOPSIS, specs, (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (!model_path) args_fail(CMD, "--model is required");
    if (!tokens_spec) args_fail(CMD, "--tokens is required");
    if (B < 1) args_fail(CMD, "--batch must be >= 1, got %d", B);
    if (T != -1 && T < 1) args_fail(CMD, "--seq must be >= 1, got %d", T);
    if (threads < 0) args_fail(CMD, "--threads must be >= 0, got %d", threads);

    ops_cpu_set_threads(threads);
    GPT model;
    memset(&model, 0, sizeof model);
    json_t* state = NULL;
    model_load(&model, model_path, ops_cpu(), &state);
    json_decref(state);
    const int ctx = model.config.max_seq_len;
    if (T == -1) T = ctx;
    if (T > ctx) args_fail(CMD, "--seq %d exceeds the model's context %d", T, ctx);

    TokenData data;
    token_data_open(&data, tokens_spec, model.config.vocab_size, "--tokens");
    size_t windows = token_data_num_windows(&data, T);
    if (windows == 0)
        fatalf("--tokens: %zu tokens, fewer than one window of %d (seq + 1)", data.num_tokens, T + 1);

    double t0 = now_seconds();
    size_t predicted = 0;
    double loss = eval_windows(&model, &data, B, T, 0, &predicted);
    double seconds = now_seconds() - t0;
    fprintf(stderr, "eval: loss %.4f over %zu tokens (%zu windows of %d) in %.2fs\n", loss,
            predicted, windows, T, seconds);

    json_t* out = json_object();
    json_object_set_new(out, "loss", json_real(loss));
    json_object_set_new(out, "tokens", json_integer((json_int_t)predicted));
    json_object_set_new(out, "windows", json_integer((json_int_t)windows));
    json_object_set_new(out, "seq", json_integer(T));
    json_object_set_new(out, "batch", json_integer(B));
    json_object_set_new(out, "model", json_string(model_path));
    json_object_set_new(out, "seconds", json_real(seconds));
    char* line = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!line) fatalf("cannot format JSON (out of memory)");
    printf("%s\n", line);
    free(line);
    json_decref(out);

    token_data_free(&data);
    gpt_free(&model);
    return 0;
}
