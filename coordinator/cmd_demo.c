// cmd_demo.c - `rlhfd demo`: the ChatGPT recipe end to end with shipped
// configs and no other input: pretrain -> SFT -> label -> reward model.
//
// Each stage is this same binary run as a child process with the stage's
// shipped config (deploy/configs/<stage>.ini) and its paths pointed into
// OUT/<stage>/: a stage is exactly what a user would run by hand, and a
// crash in one stage cannot corrupt the others' state. The child's progress
// goes straight to our stderr; the last line of its stdout (a JSON summary)
// is captured for OUT/summary.json.
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/args.h"
#include "common/check.h"
#include "coordinator/commands.h"
#include "coordinator/train_util.h"

extern char** environ;

static const char* const STAGES[] = {"pretrain", "sft", "label", "rm"};
#define NUM_STAGES 4

typedef struct {
    const char* out;       // OUT dir
    const char* configs;   // dir with pretrain.ini, sft.ini, rm.ini
    const char* data;      // dir with the prepared data
    char self[PATH_MAX];   // this binary
    json_t* summary;       // OUT/summary.json contents
} Demo;

static int file_exists(const char* p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// <dir of this binary>/../REL, if it exists; else REL relative to the cwd.
static char* default_path(const char* self, const char* rel) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", self);
    char* slash = strrchr(buf, '/');
    if (slash) {
        *slash = '\0';
        char cand[PATH_MAX + 64];
        snprintf(cand, sizeof cand, "%s/../%s", buf, rel);
        char* real = realpath(cand, NULL);
        if (real) return real;
    }
    return strdup(rel);
}

// Writes OUT/summary.json atomically (temp file + rename).
static void write_summary(const Demo* d) {
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/summary.json", d->out);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (json_dump_file(d->summary, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 || rename(tmp, path) != 0)
        fatalf("%s: cannot write: %s", path, strerror(errno));
}

// Runs `self argv...`, stdout captured (last non-empty line returned, parsed
// as JSON), stderr inherited. Fatal if the stage fails.
static json_t* run_stage(const Demo* d, const char* stage, char** argv) {
    fprintf(stderr, "\n== demo: %s:", stage);
    for (int i = 0; argv[i]; i++) fprintf(stderr, " %s", argv[i]);
    fprintf(stderr, "\n");
    int fds[2];
    if (pipe(fds) != 0) fatalf("pipe: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    pid_t pid;
    int rc = posix_spawn(&pid, d->self, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) fatalf("demo: cannot start %s: %s", d->self, strerror(rc));
    FILE* f = fdopen(fds[0], "r");
    char line[1 << 16], last[1 << 16] = "";
    while (fgets(line, sizeof line, f)) {
        fputs(line, stdout); // the stage's own stdout stays visible
        if (line[0] != '\n') snprintf(last, sizeof last, "%s", line);
    }
    fflush(stdout);
    fclose(f);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fatalf("demo: stage '%s' failed (%s %d); its output is above", stage,
               WIFEXITED(status) ? "exit code" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    json_error_t err;
    json_t* j = json_loads(last, 0, &err);
    if (!j || !json_is_object(j)) fatalf("demo: stage '%s' did not end with a JSON summary line", stage);
    return j;
}

// Copies the listed fields of a stage's summary (when present) into summary.json.
static void record_stage(Demo* d, const char* stage, json_t* result, double seconds, const char* const* keys) {
    json_t* s = json_object();
    for (int i = 0; keys[i]; i++) {
        json_t* v = json_object_get(result, keys[i]);
        if (v) json_object_set(s, keys[i], v);
    }
    json_object_set_new(s, "seconds", json_real(seconds));
    json_object_set_new(d->summary, stage, s);
    write_summary(d);
}

static void need_file(const char* path, const char* hint) {
    if (!file_exists(path)) fatalf("demo: %s is missing (%s)", path, hint);
}

int cmd_demo(int argc, char** argv) {
    Demo d = {0};
    const char* until = "rm";
    const char* configs = NULL;
    const char* data = NULL;
    int threads = 0, max_prompts = 0;
    ArgSpec specs[] = {
        {"out", ARG_STR, &d.out, "DIR: where every stage's run directory and summary.json go (required)"},
        {"until", ARG_STR, &until, "STAGE: stop after pretrain | sft | label | rm (default rm)"},
        {"configs", ARG_STR, &configs, "DIR: stage configs (default <repo>/deploy/configs)"},
        {"data", ARG_STR, &data, "DIR: prepared data (default <repo>/data/dl; see deploy/prepare-data.sh)"},
        {"threads", ARG_INT, &threads, "N: threads per stage (default: all cores)"},
        {"label-prompts", ARG_INT, &max_prompts, "N: label only the first N prompts of each split (default: all)"},
    };
    args_parse("demo", "--out DIR [--until STAGE]", specs, sizeof specs / sizeof specs[0], argc, argv);
    if (!d.out) args_fail("demo", "--out DIR is required");
    int last = -1;
    for (int i = 0; i < NUM_STAGES; i++)
        if (!strcmp(until, STAGES[i])) last = i;
    if (last < 0) args_fail("demo", "--until must be one of pretrain, sft, label, rm (got '%s')", until);
    if (threads < 0 || max_prompts < 0) args_fail("demo", "--threads and --label-prompts must be >= 0");
    ssize_t n = readlink("/proc/self/exe", d.self, sizeof d.self - 1);
    if (n <= 0) fatalf("demo: cannot find this binary: %s", strerror(errno));
    d.self[n] = '\0';
    char* cfg_dir = configs ? strdup(configs) : default_path(d.self, "deploy/configs");
    char* data_dir = data ? strdup(data) : default_path(d.self, "data/dl");
    d.configs = cfg_dir;
    d.data = data_dir;
    make_dirs(d.out);

    const char* prep = "run deploy/fetch-data.sh data/dl && deploy/prepare-data.sh build/rlhfd data/dl";
    char p_train[PATH_MAX], p_val[PATH_MAX], sft_train[PATH_MAX], sft_val[PATH_MAX], pr_train[PATH_MAX],
        pr_val[PATH_MAX];
    snprintf(p_train, sizeof p_train, "%s/fortunes_train.bin", d.data);
    snprintf(p_val, sizeof p_val, "%s/fortunes_val.bin", d.data);
    snprintf(sft_train, sizeof sft_train, "%s/reviews_sft_train.jsonl", d.data);
    snprintf(sft_val, sizeof sft_val, "%s/reviews_sft_val.jsonl", d.data);
    snprintf(pr_train, sizeof pr_train, "%s/reviews_prompts_train.jsonl", d.data);
    snprintf(pr_val, sizeof pr_val, "%s/reviews_prompts_val.jsonl", d.data);
    const char* need[] = {p_train, p_val, sft_train, sft_val, pr_train, pr_val};
    for (int i = 0; i < 6; i++) need_file(need[i], prep);

    d.summary = json_object();
    char threads_set[64];
    snprintf(threads_set, sizeof threads_set, "train.threads=%d", threads);
    char cfg[PATH_MAX + 32], rundir[PATH_MAX + 32], model[PATH_MAX + 32], set1[PATH_MAX + 64], set2[PATH_MAX + 64],
        set3[PATH_MAX + 64], set4[PATH_MAX + 64];
    double t_all = now_seconds();

    // 1. pretrain on the fortunes
    {
        double t0 = now_seconds();
        snprintf(cfg, sizeof cfg, "%s/pretrain.ini", d.configs);
        snprintf(rundir, sizeof rundir, "run.dir=%s/pretrain", d.out);
        snprintf(set1, sizeof set1, "data.train=%s", p_train);
        snprintf(set2, sizeof set2, "data.val=%s", p_val);
        char* args[] = {d.self, "pretrain", "--config", cfg, "--set", rundir, "--set", set1, "--set", set2,
                        "--set", threads_set, "--overwrite", NULL};
        json_t* r = run_stage(&d, "pretrain", args);
        const char* keys[] = {"loss", "val_loss", "tokens", "checkpoint", "steps", NULL};
        record_stage(&d, "pretrain", r, now_seconds() - t0, keys);
        json_decref(r);
    }
    // 2. SFT on review demonstrations
    if (last >= 1) {
        double t0 = now_seconds();
        snprintf(cfg, sizeof cfg, "%s/sft.ini", d.configs);
        snprintf(rundir, sizeof rundir, "run.dir=%s/sft", d.out);
        snprintf(model, sizeof model, "%s/pretrain", d.out);
        snprintf(set1, sizeof set1, "sft.train=%s", sft_train);
        snprintf(set2, sizeof set2, "sft.val=%s", sft_val);
        char* args[] = {d.self, "sft", "--config", cfg, "--model", model, "--set", rundir, "--set", set1,
                        "--set", set2, "--set", threads_set, "--overwrite", NULL};
        json_t* r = run_stage(&d, "sft", args);
        const char* keys[] = {"loss", "val_loss", "tokens", "examples", "checkpoint", NULL};
        record_stage(&d, "sft", r, now_seconds() - t0, keys);
        json_decref(r);
    }
    // 3. sample K responses per prompt, simulated labelers rank them
    char rank_train[PATH_MAX + 32], rank_val[PATH_MAX + 32];
    snprintf(rank_train, sizeof rank_train, "%s/label/rankings_train.jsonl", d.out);
    snprintf(rank_val, sizeof rank_val, "%s/label/rankings_val.jsonl", d.out);
    if (last >= 2) {
        double t0 = now_seconds();
        char dir[PATH_MAX + 16], thr[32], maxp[32];
        snprintf(dir, sizeof dir, "%s/label", d.out);
        make_dirs(dir);
        snprintf(model, sizeof model, "%s/sft", d.out);
        snprintf(thr, sizeof thr, "%d", threads);
        snprintf(maxp, sizeof maxp, "%d", max_prompts);
        char* args_train[] = {d.self, "label", "--model", model, "--prompts", pr_train, "--out", rank_train,
                              "--k", "4", "--labelers", "5", "--seed", "1", "--threads", thr,
                              "--max-prompts", maxp, NULL};
        json_t* r = run_stage(&d, "label", args_train);
        char* args_val[] = {d.self, "label", "--model", model, "--prompts", pr_val, "--out", rank_val,
                            "--k", "4", "--labelers", "5", "--seed", "2", "--threads", thr,
                            "--max-prompts", maxp, NULL};
        json_t* rv = run_stage(&d, "label (held-out prompts)", args_val);
        json_object_set(r, "val_records", json_object_get(rv, "records"));
        json_object_set_new(r, "rankings", json_string(rank_train));
        json_object_set_new(r, "rankings_val", json_string(rank_val));
        const char* keys[] = {"records", "val_records", "prompts", "kendall_tau", "pair_agreement",
                              "consensus_pair_agreement", "rankings", "rankings_val", NULL};
        record_stage(&d, "label", r, now_seconds() - t0, keys);
        json_decref(r);
        json_decref(rv);
    }
    // 4. reward model from the rankings, trunk initialised from the SFT model
    if (last >= 3) {
        double t0 = now_seconds();
        snprintf(cfg, sizeof cfg, "%s/rm.ini", d.configs);
        snprintf(rundir, sizeof rundir, "run.dir=%s/rm", d.out);
        snprintf(model, sizeof model, "%s/sft", d.out);
        snprintf(set1, sizeof set1, "rm.train=%s", rank_train);
        snprintf(set2, sizeof set2, "rm.val=%s", rank_val);
        snprintf(set3, sizeof set3, "%s", threads_set);
        snprintf(set4, sizeof set4, "run.dir=%s/rm", d.out);
        char* args[] = {d.self, "rm", "--config", cfg, "--model", model, "--set", set4, "--set", set1,
                        "--set", set2, "--set", set3, "--overwrite", NULL};
        json_t* r = run_stage(&d, "rm", args);
        const char* keys[] = {"loss", "val_accuracy", "val_loss", "offset", "tokens", "checkpoint", NULL};
        record_stage(&d, "rm", r, now_seconds() - t0, keys);
        json_decref(r);
    }
    json_object_set_new(d.summary, "total_seconds", json_real(now_seconds() - t_all));
    write_summary(&d);
    char* text = json_dumps(d.summary, JSON_COMPACT | JSON_SORT_KEYS);
    fprintf(stderr, "\n== demo: done in %.0f s; summary in %s/summary.json\n", now_seconds() - t_all, d.out);
    printf("%s\n", text);
    free(text);
    json_decref(d.summary);
    free(cfg_dir);
    free(data_dir);
    return 0;
}
