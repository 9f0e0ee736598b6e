// rewards.c - reward sources behind one call (see rewards.h).
//
// A RewardFn is a tagged union: a lexicon, an external command, a reward
// model, or a weighted sum of other RewardFns.
//
// The command source keeps one child process for the whole run, with its
// stdin and stdout on pipes. A batch writes every request and reads every
// reply through poll(), so a program that answers while we are still
// writing never deadlocks against full pipe buffers, and a silent one runs
// into the timeout instead of hanging us.
#define _GNU_SOURCE // pipe2, strsignal
#include "rewards.h"
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <jansson.h>
#include "labelers.h"
#include "reward_model.h"
#include "../common/check.h"
#include "../common/hfdata.h"
#include "../common/tokenizer.h"

#define DEFAULT_TIMEOUT_S 60.0
#define MAX_TERMS 16

typedef enum { REWARD_LEXICON, REWARD_COMMAND, REWARD_RM, REWARD_SUM } RewardKind;

typedef struct {
    char* prog;       // the command line, run by /bin/sh -c
    pid_t pid;
    int to_child;     // its stdin (non-blocking)
    int from_child;   // its stdout (non-blocking)
    char* rbuf;       // bytes read, not yet consumed
    size_t rlen, rcap;
    double timeout_s; // per batch
} Command;

struct RewardFn {
    RewardKind kind;
    char* name;
    Lexicon* lex;          // LEXICON
    Command cmd;           // COMMAND
    RewardModel* rm;       // RM
    Tokenizer* tok;        // RM
    int num_terms;         // SUM
    RewardFn* terms[MAX_TERMS];
    float weights[MAX_TERMS];
};

static char* dup_str(const char* s) {
    size_t n = strlen(s) + 1;
    char* d = mallocCheck(n);
    memcpy(d, s, n);
    return d;
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ----------------------------------------------------------------------------
// command: an external program speaking JSON Lines

static double timeout_from_env(void) {
    const char* s = getenv("RLHFD_REWARD_TIMEOUT");
    if (!s || !*s) return DEFAULT_TIMEOUT_S;
    char* end;
    double t = strtod(s, &end);
    if (end == s || *end || !(t > 0) || !isfinite(t))
        fatalf("RLHFD_REWARD_TIMEOUT must be a number of seconds > 0, got '%s'", s);
    return t;
}

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) fatalf("fcntl: %s", strerror(errno));
}

static void command_start(Command* c, const char* prog) {
    memset(c, 0, sizeof *c);
    c->to_child = c->from_child = -1;
    c->prog = dup_str(prog);
    c->timeout_s = timeout_from_env();
    // a child that stops reading makes write() fail with EPIPE instead of
    // killing us, so the error can name it
    signal(SIGPIPE, SIG_IGN);
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC))
        fatalf("reward command '%s': pipe: %s", prog, strerror(errno));
    fflush(NULL); // nothing buffered gets written twice
    pid_t pid = fork();
    if (pid < 0) fatalf("reward command '%s': fork: %s", prog, strerror(errno));
    if (pid == 0) { // child: stdin <- in[0], stdout -> out[1]
        if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0) _exit(127);
        execl("/bin/sh", "sh", "-c", prog, (char*)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    c->pid = pid;
    c->to_child = in[1];
    c->from_child = out[0];
    set_nonblocking(c->to_child);
    set_nonblocking(c->from_child);
}

// "exited with status 3" / "was killed by signal 11 (Segmentation fault)" /
// "closed its output" (still running) into buf; reaps the child if it ended.
static void describe_end(Command* c, char* buf, size_t cap) {
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 100 && (r = waitpid(c->pid, &status, WNOHANG)) == 0; i++) { // up to 1 s
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (r == c->pid) {
        c->pid = 0;
        if (WIFEXITED(status))
            snprintf(buf, cap, "exited with status %d%s", WEXITSTATUS(status),
                     WEXITSTATUS(status) == 127 ? " (command not found?)" : "");
        else if (WIFSIGNALED(status))
            snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
        else
            snprintf(buf, cap, "ended");
    } else {
        snprintf(buf, cap, "closed its output");
    }
}

static void command_kill(Command* c) {
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        c->pid = 0;
    }
}

// A fatal error about the command: kills it first so nothing is left behind.
__attribute__((noreturn, format(printf, 2, 3)))
static void command_fail(Command* c, const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    command_kill(c);
    fatalf("reward command '%s': %s", c->prog, msg);
}

// One reply line -> its reward.
static float parse_reply(Command* c, const char* line, size_t len, int index, int n) {
    json_error_t err;
    json_t* obj = json_loadb(line, len, 0, &err);
    const json_t* v = obj && json_is_object(obj) ? json_object_get(obj, "reward") : NULL;
    double x = v && json_is_number(v) ? json_number_value(v) : NAN;
    json_decref(obj);
    if (!isfinite(x)) {
        char shown[81];
        size_t m = len < 80 ? len : 80;
        memcpy(shown, line, m);
        shown[m] = '\0';
        for (size_t i = 0; i < m; i++)
            if ((unsigned char)shown[i] < 32) shown[i] = ' ';
        command_fail(c, "reply %d of %d is not {\"reward\": finite number}: '%s%s'", index + 1, n, shown,
                     len > 80 ? "..." : "");
    }
    return (float)x;
}

// The requests of a batch, one JSON line each. malloc'd; *len its size.
static char* build_requests(const char* const* prompts, const char* const* responses, int n, size_t* len) {
    size_t cap = 4096, used = 0;
    char* buf = mallocCheck(cap);
    for (int i = 0; i < n; i++) {
        char* p = hf_valid_utf8(prompts[i], strlen(prompts[i]), NULL);
        char* r = hf_valid_utf8(responses[i], strlen(responses[i]), NULL);
        json_t* obj = json_pack("{s:s, s:s}", "prompt", p, "response", r);
        char* line = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
        if (!line) fatalf("reward command: could not encode request %d as JSON", i);
        size_t m = strlen(line);
        if (used + m + 1 > cap) {
            while (used + m + 1 > cap) cap *= 2;
            buf = reallocCheck(buf, cap);
        }
        memcpy(buf + used, line, m);
        buf[used + m] = '\n';
        used += m + 1;
        free(line);
        json_decref(obj);
        free(p);
        free(r);
    }
    *len = used;
    return buf;
}

static void command_score(Command* c, const char* const* prompts, const char* const* responses, int n,
                          float* out) {
    if (c->pid == 0) command_fail(c, "is no longer running");
    size_t wlen = 0, wpos = 0;
    char* wbuf = build_requests(prompts, responses, n, &wlen);
    int got = 0;
    double deadline = seconds_now() + c->timeout_s;
    while (got < n) {
        struct pollfd fds[2] = {{.fd = c->from_child, .events = POLLIN}, {.fd = c->to_child, .events = POLLOUT}};
        int nfds = wpos < wlen ? 2 : 1;
        double left = deadline - seconds_now();
        if (left <= 0)
            command_fail(c, "no reply within %g s (RLHFD_REWARD_TIMEOUT): got %d of %d replies", c->timeout_s, got,
                         n);
        int r = poll(fds, (nfds_t)nfds, (int)(left * 1000) + 1);
        if (r < 0) {
            if (errno == EINTR) continue;
            command_fail(c, "poll: %s", strerror(errno));
        }
        if (nfds == 2 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = write(c->to_child, wbuf + wpos, wlen - wpos);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                char how[128];
                describe_end(c, how, sizeof how);
                command_fail(c, "stopped reading its input (%s) after %d of %d replies", how, got, n);
            }
            if (w > 0) wpos += (size_t)w;
        }
        if (fds[0].revents & (POLLIN | POLLERR | POLLHUP)) {
            if (c->rcap - c->rlen < 65536) c->rbuf = reallocCheck(c->rbuf, c->rcap = c->rcap * 2 + 65536);
            ssize_t k = read(c->from_child, c->rbuf + c->rlen, c->rcap - c->rlen);
            if (k < 0 && errno != EAGAIN && errno != EINTR) command_fail(c, "read: %s", strerror(errno));
            if (k == 0) { // EOF: it died or closed stdout
                char how[128];
                describe_end(c, how, sizeof how);
                command_fail(c, "%s after %d of %d replies", how, got, n);
            }
            if (k > 0) c->rlen += (size_t)k;
            // consume complete lines
            size_t start = 0;
            char* nl;
            while (got < n && (nl = memchr(c->rbuf + start, '\n', c->rlen - start))) {
                size_t len = (size_t)(nl - (c->rbuf + start));
                out[got] = parse_reply(c, c->rbuf + start, len, got, n);
                got++;
                start += len + 1;
            }
            memmove(c->rbuf, c->rbuf + start, c->rlen - start);
            c->rlen -= start;
        }
    }
    free(wbuf);
    if (c->rlen) command_fail(c, "sent more reply lines than the %d requests", n);
}

static void command_stop(Command* c) {
    if (c->to_child >= 0) close(c->to_child);
    if (c->from_child >= 0) close(c->from_child);
    // EOF on its stdin asks it to finish; give it 2 s, then end it
    if (c->pid > 0) {
        int status;
        pid_t r = 0;
        for (int i = 0; i < 200 && (r = waitpid(c->pid, &status, WNOHANG)) == 0; i++) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (r == 0) command_kill(c);
    }
    free(c->rbuf);
    free(c->prog);
}

// ----------------------------------------------------------------------------
// the spec

static const char* const KINDS[] = {"lexicon:", "command:", "rm:"};
#define NUM_KINDS 3

static int starts_with_kind(const char* s) {
    for (int i = 0; i < NUM_KINDS; i++)
        if (!strncmp(s, KINDS[i], strlen(KINDS[i]))) return 1;
    return 0;
}

// Parses an optional "W*" at s: returns the text after it, *weight = W (1 if none).
static const char* parse_weight(const char* s, float* weight) {
    *weight = 1.0f;
    if (starts_with_kind(s)) return s;
    char* end;
    double w = strtod(s, &end);
    if (end == s || *end != '*' || !isfinite(w)) return s;
    *weight = (float)w;
    return end + 1;
}

static int starts_term(const char* s) {
    float w;
    return starts_with_kind(parse_weight(s, &w));
}

static RewardFn* open_leaf(const char* spec, const char* whole, const Ops* ops) {
    RewardFn* f = callocCheck(1, sizeof(RewardFn));
    if (!starts_with_kind(spec))
        fatalf("reward spec '%s': '%s' is not lexicon:FILE, command:PROG, rm:PATH or a weighted sum "
               "W*SPEC+W*SPEC", whole, spec);
    f->name = dup_str(spec);
    const char* arg = strchr(spec, ':') + 1;
    if (*arg == '\0') fatalf("reward spec '%s': nothing after '%.*s'", whole, (int)(arg - spec), spec);
    if (!strncmp(spec, "lexicon:", 8)) {
        f->kind = REWARD_LEXICON;
        f->lex = lexicon_load(arg);
    } else if (!strncmp(spec, "command:", 8)) {
        f->kind = REWARD_COMMAND;
        command_start(&f->cmd, arg);
    } else {
        f->kind = REWARD_RM;
        f->rm = callocCheck(1, sizeof(RewardModel));
        rm_load(f->rm, arg, ops);
        f->tok = tokenizer_load(NULL);
        if (f->rm->gpt.config.vocab_size != tokenizer_vocab_size(f->tok))
            fatalf("reward spec '%s': reward model %s has vocab %d, not GPT-2's (%d)", whole, arg,
                   f->rm->gpt.config.vocab_size, tokenizer_vocab_size(f->tok));
    }
    return f;
}

RewardFn* reward_open(const char* spec, const Ops* ops) {
    if (!spec || !*spec) fatalf("reward spec is empty (expected lexicon:FILE, command:PROG, rm:PATH or W*SPEC+...)");
    // split into terms at each '+' that starts a new term
    const char* starts[MAX_TERMS + 1];
    int n = 0;
    starts[n++] = spec;
    for (const char* p = spec; *p; p++) {
        if (*p == '+' && starts_term(p + 1)) {
            if (n == MAX_TERMS) fatalf("reward spec '%s': more than %d terms", spec, MAX_TERMS);
            starts[n++] = p + 1;
        }
    }
    starts[n] = spec + strlen(spec) + 1;
    float w0;
    if (n == 1 && parse_weight(spec, &w0) == spec) return open_leaf(spec, spec, ops);

    RewardFn* f = callocCheck(1, sizeof(RewardFn));
    f->kind = REWARD_SUM;
    f->name = dup_str(spec);
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)(starts[i + 1] - 1 - starts[i]); // without the '+' (or NUL)
        char* term = mallocCheck(len + 1);
        memcpy(term, starts[i], len);
        term[len] = '\0';
        const char* rest = parse_weight(term, &f->weights[i]);
        f->terms[i] = open_leaf(rest, spec, ops);
        f->num_terms++;
        free(term);
    }
    return f;
}

void reward_score(RewardFn* f, const char* const* prompts, const char* const* responses, int n, float* out) {
    if (n <= 0) return;
    switch (f->kind) {
    case REWARD_LEXICON:
        for (int i = 0; i < n; i++) out[i] = lexicon_comparative(f->lex, 0, responses[i]);
        break;
    case REWARD_COMMAND:
        command_score(&f->cmd, prompts, responses, n, out);
        break;
    case REWARD_RM:
        rm_score_texts(f->rm, f->tok, prompts, responses, n, out);
        break;
    case REWARD_SUM: {
        float* part = mallocCheck((size_t)n * sizeof(float));
        for (int i = 0; i < n; i++) out[i] = 0.0f;
        for (int t = 0; t < f->num_terms; t++) {
            reward_score(f->terms[t], prompts, responses, n, part);
            for (int i = 0; i < n; i++) out[i] += f->weights[t] * part[i];
        }
        free(part);
        break;
    }
    }
}

const char* reward_name(const RewardFn* f) { return f->name; }

void reward_close(RewardFn* f) {
    if (!f) return;
    switch (f->kind) {
    case REWARD_LEXICON: lexicon_free(f->lex); break;
    case REWARD_COMMAND: command_stop(&f->cmd); break;
    case REWARD_RM:
        rm_free(f->rm);
        free(f->rm);
        tokenizer_free(f->tok);
        break;
    case REWARD_SUM:
        for (int t = 0; t < f->num_terms; t++) reward_close(f->terms[t]);
        break;
    }
    free(f->name);
    free(f);
}
