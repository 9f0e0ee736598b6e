// test_signals.c - common/signals.c in one process (forked children):
// the first SIGTERM / SIGUSR1 / SIGINT only sets the flag (and names itself on
// stderr); a repeated SIGUSR1 is ignored; a second SIGTERM or SIGINT exits at
// once with 128 + signal; SA_RESTART: a blocking read interrupted by the
// signal carries on and returns its data instead of failing with EINTR.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "common/signals.h"

static int failures = 0;
#define CHECK(cond, ...) do { \
    printf("%s ", (cond) ? "ok  " : "FAIL"); printf(__VA_ARGS__); printf("\n"); fflush(stdout); \
    if (!(cond)) failures++; } while (0)

// Child: install, raise first then second; report the flag through the exit code.
static int child_two(int first, int second) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        signals_install();
        raise(first);
        if (signals_stop_requested() != first) _exit(10);
        if (second) raise(second);
        _exit(signals_stop_requested() == first ? RLHFD_EXIT_RESUMABLE : 11);
    }
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(void) {
    CHECK(signals_stop_requested() == 0, "no request before any signal");
    signals_install();
    signals_install(); // idempotent
    raise(SIGUSR1);
    CHECK(signals_stop_requested() == SIGUSR1, "SIGUSR1 sets the flag (%s)", signals_name(signals_stop_requested()));
    raise(SIGUSR1);
    CHECK(signals_stop_requested() == SIGUSR1, "a second SIGUSR1 is ignored (still running)");
    signals_clear();
    CHECK(signals_stop_requested() == 0, "signals_clear");
    signals_request_stop(SIGTERM);
    CHECK(signals_stop_requested() == SIGTERM, "signals_request_stop");
    signals_clear();
    CHECK(!strcmp(signals_name(SIGTERM), "SIGTERM") && !strcmp(signals_name(40), "signal 40"), "signals_name");

    int rc = child_two(SIGTERM, 0);
    CHECK(rc == RLHFD_EXIT_RESUMABLE, "SIGTERM alone: flag only, the loop decides (exit %d)", rc);
    rc = child_two(SIGINT, 0);
    CHECK(rc == RLHFD_EXIT_RESUMABLE, "SIGINT alone: flag only (exit %d)", rc);
    rc = child_two(SIGUSR1, SIGUSR1);
    CHECK(rc == RLHFD_EXIT_RESUMABLE, "USR1 then USR1: still graceful (exit %d)", rc);
    rc = child_two(SIGUSR1, SIGTERM);
    CHECK(rc == 128 + SIGTERM, "USR1 then TERM: exits at once with %d (got %d)", 128 + SIGTERM, rc);
    rc = child_two(SIGTERM, SIGTERM);
    CHECK(rc == 128 + SIGTERM, "TERM then TERM: exits at once (%d)", rc);
    rc = child_two(SIGTERM, SIGINT);
    CHECK(rc == 128 + SIGINT, "TERM then INT: exits at once (%d)", rc);

    // SA_RESTART: the child blocks in read(); the signal arrives first, the data later.
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); return 1; }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[1]);
        signals_install();
        char c = 0;
        ssize_t got = read(fds[0], &c, 1);
        int ok = got == 1 && c == 'x' && signals_stop_requested() == SIGUSR1;
        _exit(ok ? 0 : (got < 0 && errno == EINTR ? 20 : 21));
    }
    close(fds[0]);
    sleep_ms(200); // let it block in read
    kill(pid, SIGUSR1);
    sleep_ms(200);
    if (write(fds[1], "x", 1) != 1) perror("write");
    int status;
    waitpid(pid, &status, 0);
    rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1000;
    CHECK(rc == 0, "read() interrupted by SIGUSR1 resumes and returns the data (child %d; 20 = EINTR)", rc);
    close(fds[1]);

    printf("%s\n", failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}
