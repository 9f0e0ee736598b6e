// cmd_demo.c - `rlhfd demo`: the ChatGPT recipe end to end with shipped
// configs and no other input: pretrain -> SFT -> label -> reward model ->
// held-out evaluation of the SFT policy -> RL fine-tuning (PPO by default, or
// any of quark, pg, grpo, rloo, dpo, nlpo, ilql, or all of them) -> the same evaluation of
// every RL policy, a before/after table, side-by-side samples and the curves.
//
// Each stage is this same binary run as a child process with the stage's
// shipped config (deploy/configs/<stage>.ini) and its paths pointed into
// OUT/<stage>/: a stage is exactly what a user would run by hand, and a
// crash in one stage cannot corrupt the others' state. The child's progress
// goes straight to our stderr; the last line of its stdout (a JSON summary)
// is captured for OUT/summary.json.
//
// Every policy (SFT and each RL result) is evaluated by the same child,
// `rlhfd evaluate`, on the same held-out prompts with the same seeds and
// sampling settings, so the table compares like with like: gold (AFINN, never
// trained on), reward (the RM) and KL to the SFT policy (nats per sequence).
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
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

// Stage order: the four supervised stages, the SFT evaluation, then the RL
// algorithms (in this order when several are asked for).
static const char* const STAGES[] = {"pretrain", "sft", "label", "rm", "evaluate",
                                     "ppo", "quark", "pg", "grpo", "rloo", "dpo", "nlpo", "ilql"};
#define NUM_STAGES 13
#define STAGE_EVALUATE 4
#define FIRST_ALGO 5

typedef struct {
    const char* out;       // OUT dir
    const char* configs;   // dir with pretrain.ini, sft.ini, rm.ini, <algo>.ini
    const char* data;      // dir with the prepared data
    char self[PATH_MAX];   // this binary
    json_t* summary;       // OUT/summary.json contents
    int threads;           // per stage (0 = all cores)
    const char* reward_spec;    // rm:OUT/rm
    const char* gold_spec;      // lexicon:<data>/sentiment/languages/en/labels.json
    const char* prompts_train;  // RL prompts
    const char* prompts_val;    // held-out prompts (evaluation)
    int eval_n, eval_tokens, eval_seed, show; // evaluation settings, the same for every policy
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
// as JSON), stderr inherited. A failed stage is fatal, or with may_fail
// returns NULL (why on stderr) so that the other algorithms still run.
static json_t* run_stage_opt(const Demo* d, const char* stage, char** argv, int may_fail) {
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
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        const char* how = WIFEXITED(status) ? "exit code" : "signal";
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status);
        if (!may_fail) fatalf("demo: stage '%s' failed (%s %d); its output is above", stage, how, code);
        fprintf(stderr, "demo: stage '%s' failed (%s %d); going on with the others\n", stage, how, code);
        return NULL;
    }
    json_error_t err;
    json_t* j = json_loads(last, 0, &err);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        if (!may_fail) fatalf("demo: stage '%s' did not end with a JSON summary line", stage);
        fprintf(stderr, "demo: stage '%s' did not end with a JSON summary line; going on\n", stage);
        return NULL;
    }
    return j;
}

static json_t* run_stage(const Demo* d, const char* stage, char** argv) {
    return run_stage_opt(d, stage, argv, 0);
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

// ---- evaluation, RL stages, the report

// Runs `rlhfd evaluate` on a policy with the demo's evaluation settings (the
// same for every policy; KL against OUT/sft), keeps its whole output (samples
// included) in OUT/eval/<name>.json and returns it (NULL if it failed and
// may_fail).
static json_t* evaluate_policy(const Demo* d, const char* name, const char* policy, int may_fail) {
    char ref[PATH_MAX + 16], n[32], tokens[32], seed[32], show[32], thr[32], stage[64];
    snprintf(ref, sizeof ref, "%s/sft", d->out);
    snprintf(n, sizeof n, "%d", d->eval_n);
    snprintf(tokens, sizeof tokens, "%d", d->eval_tokens);
    snprintf(seed, sizeof seed, "%d", d->eval_seed);
    snprintf(show, sizeof show, "%d", d->show);
    snprintf(thr, sizeof thr, "%d", d->threads);
    snprintf(stage, sizeof stage, "evaluate %s", name);
    char* args[] = {(char*)d->self, "evaluate", "--model", (char*)policy, "--ref", ref, "--reward",
                    (char*)d->reward_spec, "--gold", (char*)d->gold_spec, "--prompts", (char*)d->prompts_val,
                    "--n", n, "--seed", seed, "--max-new-tokens", tokens, "--show", show, "--threads", thr, NULL};
    json_t* r = run_stage_opt(d, stage, args, may_fail);
    if (!r) return NULL;
    char dir[PATH_MAX + 16], path[PATH_MAX + 96];
    snprintf(dir, sizeof dir, "%s/eval", d->out);
    make_dirs(dir);
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    if (json_dump_file(r, path, JSON_INDENT(2)) != 0) fatalf("%s: cannot write: %s", path, strerror(errno));
    return r;
}

// The stage's object in summary.json (created empty if missing).
static json_t* summary_stage(Demo* d, const char* stage) {
    json_t* s = json_object_get(d->summary, stage);
    if (!json_is_object(s)) {
        s = json_object();
        json_object_set_new(d->summary, stage, s);
    }
    return s;
}

// Puts the evaluation's numbers into a stage's summary object.
static void record_eval(json_t* s, json_t* ev) {
    const char* keys[] = {"gold", "reward", "kl", "response_len", "n"};
    for (int i = 0; i < 5; i++) json_object_set(s, keys[i], json_object_get(ev, keys[i]));
    json_object_set(s, "eval_seconds", json_object_get(ev, "t_evaluate"));
    if (!json_object_get(s, "checkpoint")) json_object_set(s, "checkpoint", json_object_get(ev, "checkpoint"));
}

// One RL stage: `rlhfd ALGO` from OUT/sft against the RM, then the shared
// evaluation of its policy. Returns 0 on success.
static int run_algo(Demo* d, const char* algo, int may_fail) {
    double t0 = now_seconds();
    char cfg[PATH_MAX + 32], model[PATH_MAX + 32], rundir[PATH_MAX + 32], reward[PATH_MAX + 32],
        prompts[PATH_MAX + 32], val[PATH_MAX + 32], gold[PATH_MAX + 32], threads[64], dpo[PATH_MAX + 64],
        dpo_val[PATH_MAX + 64], ilql[PATH_MAX + 64],
        policy[PATH_MAX + 32];
    snprintf(cfg, sizeof cfg, "%s/%s.ini", d->configs, algo);
    need_file(cfg, "the RL stage's config");
    snprintf(model, sizeof model, "%s/sft", d->out);
    snprintf(rundir, sizeof rundir, "run.dir=%s/%s", d->out, algo);
    snprintf(reward, sizeof reward, "rl.reward=%s", d->reward_spec);
    snprintf(prompts, sizeof prompts, "rl.prompts=%s", d->prompts_train);
    snprintf(val, sizeof val, "rl.val_prompts=%s", d->prompts_val);
    snprintf(gold, sizeof gold, "rl.gold=%s", d->gold_spec);
    snprintf(threads, sizeof threads, "train.threads=%d", d->threads);
    snprintf(dpo, sizeof dpo, "dpo.train=%s/label/rankings_train.jsonl", d->out);
    snprintf(dpo_val, sizeof dpo_val, "dpo.val=%s/label/rankings_val.jsonl", d->out);
    snprintf(ilql, sizeof ilql, "ilql.train=%s/label/rankings_train.jsonl", d->out);
    char* args[28] = {(char*)d->self, (char*)algo, "--config", cfg, "--model", model, "--set", rundir,
                      "--set", reward, "--set", prompts, "--set", val, "--set", gold, "--set", threads};
    int a = 18;
    if (!strcmp(algo, "dpo")) { // DPO learns from the labelers' rankings, not from samples
        args[a++] = "--set";
        args[a++] = dpo;
        args[a++] = "--set";
        args[a++] = dpo_val;
    }
    if (!strcmp(algo, "ilql")) { // ILQL learns offline from the labelled samples, scored by the RM
        args[a++] = "--set";
        args[a++] = ilql;
    }
    args[a++] = "--overwrite";
    args[a] = NULL;
    json_t* r = run_stage_opt(d, algo, args, may_fail);
    json_t* s = json_object();
    json_object_set_new(d->summary, algo, s);
    if (!r) {
        json_object_set_new(s, "error", json_string("the stage failed; see its output"));
        write_summary(d);
        return 1;
    }
    // every scalar of the command's own summary (time per phase, tokens/s,
    // losses); its own final evaluation is kept apart under "final_eval"
    const char* key;
    json_t* v;
    json_object_foreach(r, key, v) {
        if (json_is_object(v) || json_is_array(v)) continue;
        json_object_set(s, key, v);
    }
    json_t* own = json_object();
    const char* evk[] = {"gold", "reward", "kl"};
    for (int i = 0; i < 3; i++)
        if (json_object_get(r, evk[i])) json_object_set(own, evk[i], json_object_get(r, evk[i]));
    json_object_set_new(s, "final_eval", own);
    json_object_set_new(s, "seconds", json_real(now_seconds() - t0));
    json_decref(r);
    write_summary(d);

    snprintf(policy, sizeof policy, "%s/%s", d->out, algo);
    json_t* ev = evaluate_policy(d, algo, policy, may_fail);
    if (!ev) {
        json_object_set_new(s, "error", json_string("its evaluation failed; see its output"));
        write_summary(d);
        return 1;
    }
    record_eval(s, ev);
    json_decref(ev);
    write_summary(d);
    return 0;
}

static double num(json_t* obj, const char* key) {
    json_t* v = json_object_get(obj, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

// The before/after table and the side-by-side samples, on stdout.
static void print_report(const Demo* d) {
    const char* rows[NUM_STAGES];
    int nrows = 0;
    for (int i = 1; i < NUM_STAGES; i++) {
        if (i != 1 && i < FIRST_ALGO) continue;
        json_t* s = json_object_get(d->summary, STAGES[i]);
        if (s && json_object_get(s, "gold")) rows[nrows++] = STAGES[i];
    }
    if (nrows == 0) return;
    printf("\n== held-out evaluation: %.0f prompts of %s, seed %d, %d new tokens, temperature 1\n",
           num(json_object_get(d->summary, rows[0]), "n"), d->prompts_val, d->eval_seed, d->eval_tokens);
    printf("   gold = AFINN comparative (never trained on), reward = the RM, kl = to the SFT policy, nats/seq\n");
    printf("%-6s | %8s | %8s | %7s | %8s | %s\n", "stage", "gold", "reward", "kl", "seconds", "rollout tok/s");
    printf("-------+----------+----------+---------+----------+---------\n");
    for (int i = 0; i < nrows; i++) {
        json_t* s = json_object_get(d->summary, rows[i]);
        double tps = num(s, "rollout_tokens_per_s"); // RL stages only
        char tps_text[32] = "-";
        if (!isnan(tps)) snprintf(tps_text, sizeof tps_text, "%.0f", tps);
        printf("%-6s | %+8.4f | %+8.4f | %7.2f | %8.1f | %8s\n", rows[i], num(s, "gold"), num(s, "reward"),
               num(s, "kl"), num(s, "seconds"), tps_text);
    }
    // samples: the same prompts and seeds for every policy
    json_t* evals[NUM_STAGES];
    int show = d->show;
    for (int i = 0; i < nrows; i++) {
        char path[PATH_MAX + 96];
        snprintf(path, sizeof path, "%s/eval/%s.json", d->out, rows[i]);
        json_error_t err;
        evals[i] = json_load_file(path, 0, &err);
        int m = (int)json_array_size(json_object_get(evals[i], "samples"));
        if (m < show) show = m;
    }
    if (show > 0) printf("\n== samples (the same held-out prompts and seeds; r = reward, g = gold)\n");
    for (int k = 0; k < show; k++) {
        json_t* first = json_array_get(json_object_get(evals[0], "samples"), (size_t)k);
        printf("\"%s\" ...\n", json_string_value(json_object_get(first, "prompt")));
        for (int i = 0; i < nrows; i++) {
            json_t* smp = json_array_get(json_object_get(evals[i], "samples"), (size_t)k);
            printf("  %-6s r %+6.2f g %+6.2f |%s\n", rows[i], num(smp, "reward"), num(smp, "gold"),
                   json_string_value(json_object_get(smp, "response")));
        }
    }
    for (int i = 0; i < nrows; i++) json_decref(evals[i]);
    fflush(stdout);
}

// deploy/plot-curves.sh OUT -> OUT/curves.png; a missing gnuplot (exit 3) or
// any other failure is a warning: the numbers are in summary.json anyway.
static void plot_curves(Demo* d) {
    char* script = default_path(d->self, "deploy/plot-curves.sh");
    char png[PATH_MAX + 16];
    snprintf(png, sizeof png, "%s/curves.png", d->out);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO); // keep our stdout for the summary
    char* args[] = {"bash", script, (char*)d->out, png, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "bash", &fa, NULL, args, environ);
    posix_spawn_file_actions_destroy(&fa);
    int status = 0;
    if (rc == 0)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (rc == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        json_object_set_new(d->summary, "curves", json_string(png));
    } else {
        const char* why = rc != 0 ? "cannot run bash"
                          : (WIFEXITED(status) && WEXITSTATUS(status) == 3) ? "gnuplot is not installed"
                                                                            : "the plot failed";
        fprintf(stderr, "demo: warning: no %s (%s: %s); going on\n", png, script, why);
        json_object_set_new(d->summary, "curves", json_null());
    }
    free(script);
}

static int stage_index(const char* name) {
    for (int i = 0; i < NUM_STAGES; i++)
        if (!strcmp(name, STAGES[i])) return i;
    return -1;
}

// --algo: "all", or comma-separated algorithm names -> selected[FIRST_ALGO..].
static void parse_algos(const char* spec, int* selected) {
    if (!strcmp(spec, "all")) {
        for (int i = FIRST_ALGO; i < NUM_STAGES; i++) selected[i] = 1;
        return;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char* save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int i = stage_index(t);
        if (i < FIRST_ALGO) args_fail("demo", "--algo must be all or some of ppo,quark,pg,grpo,rloo,dpo,nlpo,ilql (got '%s')", t);
        selected[i] = 1;
    }
}

int cmd_demo(int argc, char** argv) {
    Demo d = {0};
    const char* until = NULL;
    const char* from = "pretrain";
    const char* algo = NULL;
    const char* configs = NULL;
    const char* data = NULL;
    int max_prompts = 0;
    d.eval_tokens = 24;
    d.eval_seed = 1;
    d.show = 4;
    ArgSpec specs[] = {
        {"out", ARG_STR, &d.out, "DIR: where every stage's run directory and summary.json go (required)"},
        {"algo", ARG_STR, &algo, "ALGOS: RL stage(s): ppo (default), quark, pg, grpo, rloo, dpo, nlpo, ilql, a,b,... or all"},
        {"until", ARG_STR, &until,
         "STAGE: stop after pretrain | sft | label | rm | evaluate (the SFT policy) | an algorithm (default: all)"},
        {"from", ARG_STR, &from, "STAGE: skip the stages before STAGE (in the order above), reusing their outputs in DIR"},
        {"configs", ARG_STR, &configs, "DIR: stage configs (default <repo>/deploy/configs)"},
        {"data", ARG_STR, &data, "DIR: prepared data (default <repo>/data/dl; see deploy/prepare-data.sh)"},
        {"threads", ARG_INT, &d.threads, "N: threads per stage (default: all cores)"},
        {"label-prompts", ARG_INT, &max_prompts, "N: label only the first N prompts of each split (default: all)"},
        {"eval-prompts", ARG_INT, &d.eval_n, "N: evaluate policies on the first N held-out prompts (default 0 = all)"},
        {"eval-tokens", ARG_INT, &d.eval_tokens, "N: new tokens per evaluation response (default 24)"},
        {"eval-seed", ARG_INT, &d.eval_seed, "S: sampling seed of the evaluation (default 1)"},
        {"show", ARG_INT, &d.show, "N: held-out samples shown side by side (default 4)"},
    };
    args_parse("demo", "--out DIR [--algo ALGOS] [--until STAGE] [--from STAGE]", specs,
               sizeof specs / sizeof specs[0], argc, argv);
    if (!d.out) args_fail("demo", "--out DIR is required");
    int selected[NUM_STAGES] = {0};
    int last = until ? stage_index(until) : -1;
    int first = stage_index(from);
    if (until && last < 0)
        args_fail("demo", "--until must be one of pretrain, sft, label, rm, evaluate, ppo, quark, pg, grpo, rloo, dpo, nlpo, ilql "
                          "(got '%s')", until);
    if (first < 0)
        args_fail("demo", "--from must be one of pretrain, sft, label, rm, evaluate, ppo, quark, pg, grpo, rloo, dpo, nlpo, ilql "
                          "(got '%s')", from);
    if (algo) parse_algos(algo, selected);
    else if (last >= FIRST_ALGO) selected[last] = 1;
    else if (first >= FIRST_ALGO) selected[first] = 1;
    else selected[FIRST_ALGO] = 1; // ppo
    if (last >= FIRST_ALGO && !selected[last]) args_fail("demo", "--until %s is not among --algo %s", until, algo);
    if (last < 0) last = NUM_STAGES - 1;
    if (first > last) args_fail("demo", "--from %s comes after --until %s", from, until);
    if (d.threads < 0 || max_prompts < 0 || d.eval_n < 0 || d.show < 0)
        args_fail("demo", "--threads, --label-prompts, --eval-prompts and --show must be >= 0");
    if (d.eval_tokens < 1) args_fail("demo", "--eval-tokens must be >= 1");
    int num_algos = 0;
    for (int i = FIRST_ALGO; i <= last; i++) num_algos += selected[i] && i >= first;
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
        pr_val[PATH_MAX], afinn[PATH_MAX];
    snprintf(p_train, sizeof p_train, "%s/fortunes_train.bin", d.data);
    snprintf(p_val, sizeof p_val, "%s/fortunes_val.bin", d.data);
    snprintf(sft_train, sizeof sft_train, "%s/reviews_sft_train.jsonl", d.data);
    snprintf(sft_val, sizeof sft_val, "%s/reviews_sft_val.jsonl", d.data);
    snprintf(pr_train, sizeof pr_train, "%s/reviews_prompts_train.jsonl", d.data);
    snprintf(pr_val, sizeof pr_val, "%s/reviews_prompts_val.jsonl", d.data);
    snprintf(afinn, sizeof afinn, "%s/sentiment/languages/en/labels.json", d.data);
    const char* need[] = {p_train, p_val, sft_train, sft_val, pr_train, pr_val, afinn};
    for (int i = 0; i < 7; i++) need_file(need[i], prep);
    char reward_spec[PATH_MAX + 16], gold_spec[PATH_MAX + 16];
    snprintf(reward_spec, sizeof reward_spec, "rm:%s/rm", d.out);
    snprintf(gold_spec, sizeof gold_spec, "lexicon:%s", afinn);
    d.reward_spec = reward_spec;
    d.gold_spec = gold_spec;
    d.prompts_train = pr_train;
    d.prompts_val = pr_val;

    // --from: the skipped stages' numbers stay in summary.json, their outputs must be there
    d.summary = NULL;
    char summary_path[PATH_MAX + 16];
    snprintf(summary_path, sizeof summary_path, "%s/summary.json", d.out);
    if (first > 0 && file_exists(summary_path)) {
        json_error_t err;
        d.summary = json_load_file(summary_path, 0, &err);
        if (!json_is_object(d.summary)) fatalf("%s:%d: %s", summary_path, err.line, err.text);
    }
    if (!d.summary) d.summary = json_object();
    const char* hint = "run the earlier stages first (without --from)";
    char prev[PATH_MAX + 48];
    if (first == 1) {
        snprintf(prev, sizeof prev, "%s/pretrain", d.out);
        need_file(prev, hint);
    }
    if (first >= 2) {
        snprintf(prev, sizeof prev, "%s/sft", d.out);
        need_file(prev, hint);
    }
    if (first == 3 || (first > 3 && (selected[stage_index("dpo")] || selected[stage_index("ilql")]))) {
        // the RM, DPO and ILQL train on the rankings
        snprintf(prev, sizeof prev, "%s/label/rankings_train.jsonl", d.out);
        need_file(prev, hint);
    }
    if (first >= 4) {
        snprintf(prev, sizeof prev, "%s/rm", d.out);
        need_file(prev, hint);
    }

    char threads_set[64];
    snprintf(threads_set, sizeof threads_set, "train.threads=%d", d.threads);
    char cfg[PATH_MAX + 32], rundir[PATH_MAX + 32], model[PATH_MAX + 32], set1[PATH_MAX + 64], set2[PATH_MAX + 64],
        set3[PATH_MAX + 64], set4[PATH_MAX + 64];
    double t_all = now_seconds();

    // 1. pretrain on the fortunes
    if (first <= 0) {
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
    if (first <= 1 && last >= 1) {
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
    if (first <= 2 && last >= 2) {
        double t0 = now_seconds();
        char dir[PATH_MAX + 16], thr[32], maxp[32];
        snprintf(dir, sizeof dir, "%s/label", d.out);
        make_dirs(dir);
        snprintf(model, sizeof model, "%s/sft", d.out);
        snprintf(thr, sizeof thr, "%d", d.threads);
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
    if (first <= 3 && last >= 3) {
        double t0 = now_seconds();
        snprintf(cfg, sizeof cfg, "%s/rm.ini", d.configs);
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
    // 5. the SFT policy on the held-out prompts: the "before" of every RL stage
    if (first <= STAGE_EVALUATE && last >= STAGE_EVALUATE) {
        snprintf(model, sizeof model, "%s/sft", d.out);
        json_t* ev = evaluate_policy(&d, "sft", model, 0);
        record_eval(summary_stage(&d, "sft"), ev);
        json_decref(ev);
        write_summary(&d);
    }
    // 6. RL fine-tuning from the SFT policy against the RM, then the same evaluation
    int failed = 0, ran_algos = 0;
    for (int i = FIRST_ALGO; i <= last; i++) {
        if (!selected[i] || i < first) continue;
        failed += run_algo(&d, STAGES[i], num_algos > 1);
        ran_algos++;
    }
    if (ran_algos) plot_curves(&d);
    json_object_set_new(d.summary, "total_seconds", json_real(now_seconds() - t_all));
    write_summary(&d);
    print_report(&d);
    char* text = json_dumps(d.summary, JSON_COMPACT | JSON_SORT_KEYS);
    fprintf(stderr, "\n== demo: done in %.0f s; summary in %s/summary.json%s\n", now_seconds() - t_all, d.out,
            failed ? " (some RL stages FAILED: see above)" : "");
    printf("%s\n", text);
    free(text);
    json_decref(d.summary);
    free(cfg_dir);
    free(data_dir);
    return failed ? 1 : 0;
}
