// signals.c - see signals.h.
#include "signals.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "check.h"

// The only state the handler touches: a sig_atomic_t written once per signal.
static volatile sig_atomic_t stop_signal = 0;
static int installed = 0;

// write(2) of a string literal: the only output that is async-signal-safe.
#define SAFE_MSG(s) do { ssize_t w_ = write(STDERR_FILENO, s, sizeof(s) - 1); (void)w_; } while (0)

static void on_signal(int sig) {
    int saved = errno; // the interrupted code may be about to read errno
    if (stop_signal == 0) {
        stop_signal = sig;
        switch (sig) {
        case SIGTERM: SAFE_MSG("rlhfd: SIGTERM: finishing the step, then checkpoint and exit 75 (again: exit now)\n"); break;
        case SIGUSR1: SAFE_MSG("rlhfd: SIGUSR1: finishing the step, then checkpoint and exit 75\n"); break;
        default:      SAFE_MSG("rlhfd: SIGINT: finishing the step, then checkpoint and exit 75 (again: exit now)\n"); break;
        }
    } else if (sig == SIGTERM || sig == SIGINT) {
        // The user (or the cluster) insists: no checkpoint, no cleanup that
        // could block (stdio locks, MPI): leave now, the shell's way.
        SAFE_MSG("rlhfd: second stop signal: exiting now without a checkpoint\n");
        _exit(128 + sig);
    }
    // a repeated SIGUSR1: already stopping
    errno = saved;
}

void signals_install(void) {
    if (installed) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    // One handler at a time: a TERM arriving while the USR1 handler runs
    // waits, so the "first or second" decision never races with itself.
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaddset(&sa.sa_mask, SIGUSR1);
    sigaddset(&sa.sa_mask, SIGINT);
    const int sigs[3] = {SIGTERM, SIGUSR1, SIGINT};
    for (int i = 0; i < 3; i++)
        if (sigaction(sigs[i], &sa, NULL) != 0) fatalf("sigaction(%s): %s", signals_name(sigs[i]), strerror(errno));
    installed = 1;
}

int signals_stop_requested(void) { return stop_signal; }

void signals_request_stop(int sig) {
    if (stop_signal == 0) stop_signal = sig;
}

void signals_clear(void) { stop_signal = 0; }

const char* signals_name(int sig) {
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGINT: return "SIGINT";
    case SIGKILL: return "SIGKILL";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "signal %d", sig);
        return buf;
    }
    }
}
