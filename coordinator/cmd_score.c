// cmd_score.c - `rlhfd score`: scores {prompt, response} records with a
// reward model. One JSON line {"reward": x} per good record, in input order;
// x is the normalised reward (raw - the model's offset).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/hfdata.h"
#include "../common/tokenizer.h"
#include "../kernels/ops.h"
#include "../worker/reward_model.h"

#define CMD "score"

static const char* const SYNOPSIS =
    "--model PATH --in FILE.jsonl [--skip-bad] [--batch N] [--threads N]\n"
    "\n"
    "Scores each record {\"prompt\", \"response\"} of FILE.jsonl (other fields are\n"
    "ignored) with the reward model at PATH (a checkpoint or run dir written by\n"
    "`rlhfd rm`) and prints one line {\"reward\": x} per record, in input order.\n"
    "The text scored is encode(prompt) ++ encode(response) ++ [eot]. A bad record\n"
    "(bad JSON, missing field, too long for the context) is a PATH:LINE error, or\n"
    "with --skip-bad is skipped (no output line) and counted on stderr.";

int cmd_score(int argc, char** argv) {
    const char* model_path = NULL;
    const char* in_path = NULL;
    int skip_bad = 0, batch = 16, threads = 0;
    const ArgSpec specs[] = {
        {"model", ARG_STR, &model_path, "PATH: the reward model (checkpoint or run dir)"},
        {"in", ARG_STR, &in_path, "FILE: JSONL records {\"prompt\", \"response\"}"},
        {"skip-bad", ARG_FLAG, &skip_bad, "skip bad records (warn, count) instead of failing"},
        {"batch", ARG_INT, &batch, "N: sequences per forward (default 16)"},
        {"threads", ARG_INT, &threads, "N: CPU threads (0 = default)"},
    };
    args_parse(CMD, SYNOPSIS, specs, (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (!model_path) args_fail(CMD, "--model is required");
    if (!in_path) args_fail(CMD, "--in is required");
    if (batch < 1) args_fail(CMD, "--batch must be >= 1 (got %d)", batch);

    ops_cpu_set_threads(threads);
    RewardModel rm;
    rm_load(&rm, model_path, ops_cpu());
    Tokenizer* tok = tokenizer_load(NULL);
    const int ctx = rm.gpt.config.max_seq_len;
    if (rm.gpt.config.vocab_size < tokenizer_vocab_size(tok))
        fatalf("%s: model vocab %d is smaller than the GPT-2 tokenizer's %d", model_path,
               rm.gpt.config.vocab_size, tokenizer_vocab_size(tok));

    size_t n = 0, skipped = 0;
    HfDemo* records = hf_read_demos(in_path, skip_bad, &n, &skipped);
    HfBadReport report = {.path = in_path, .skip_bad = skip_bad, .skipped = 0};
    int** seqs = mallocCheck(n * sizeof(int*));
    int* lens = mallocCheck(n * sizeof(int));
    int m = 0; // records that fit
    for (size_t i = 0; i < n; i++) {
        int len;
        int* ids = rm_encode_pair(tok, records[i].prompt, records[i].response, &len);
        if (len > ctx) {
            hf_bad_record(&report, records[i].line,
                          "prompt+response is %d tokens, longer than the context (%d)", len, ctx);
            free(ids);
            continue;
        }
        seqs[m] = ids;
        lens[m++] = len;
    }
    hf_bad_report_finish(&report);
    skipped += report.skipped;

    float* rewards = mallocCheck((size_t)(m > 0 ? m : 1) * sizeof(float));
    rm_score_tokens(&rm, (const int* const*)seqs, lens, m, batch, rewards);
    for (int i = 0; i < m; i++) {
        json_t* line = json_pack("{s:f}", "reward", (double)rewards[i]);
        char* text = json_dumps(line, 0); // {"reward": x}
        if (!text) fatalf("cannot format JSON (out of memory)");
        puts(text);
        free(text);
        json_decref(line);
    }
    if (fflush(stdout) != 0) fatalf("cannot write the scores to stdout");
    if (skipped) fprintf(stderr, "score: %zu bad records skipped, %d scored\n", skipped, m);

    for (int i = 0; i < m; i++) free(seqs[i]);
    free(seqs);
    free(lens);
    free(rewards);
    hf_free_demos(records, n);
    tokenizer_free(tok);
    rm_free(&rm);
    return 0;
}
