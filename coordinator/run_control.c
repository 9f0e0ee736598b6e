// run_control.c - per-step coordination: reports, heartbeats, the status
// socket and the decision broadcast (run_control.h).
#include "run_control.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "../common/check.h"
#include "../common/signals.h"
#include "../proto/control.h"

static Rlhfd__Command__Kind decide(RunControl* rc, unsigned actions, int stop_signal) {
    if (actions & STATUS_ACTION_PAUSE) rc->paused = 1;
    if (actions & STATUS_ACTION_RESUME) rc->paused = 0;
    if (stop_signal) rc->stopped_by_signal = 1;
    if ((actions & STATUS_ACTION_STOP) || stop_signal) return RLHFD__COMMAND__KIND__STOP;
    if (actions & STATUS_ACTION_CHECKPOINT) return RLHFD__COMMAND__KIND__CHECKPOINT;
    if (rc->paused) return RLHFD__COMMAND__KIND__PAUSE;
    return RLHFD__COMMAND__KIND__GO;
}

static void publish(RunControl* rc, long long step) {
    if (!rc->server) return;
    TrainWorld* w = rc->world;
    double elapsed = now_seconds() - rc->t_start;
    StatusInfo info = {
        .run_id = rc->run_id,
        .command = rc->command,
        .phase = rc->paused ? "paused" : rc->phase,
        .step = step,
        .total_steps = rc->total_steps,
        .paused = rc->paused,
        .world_size = w->par.size,
        .dp = w->par.dp_size,
        .tp = w->par.tp_size,
        .ranks = rc->ranks,
        .nranks = w->par.size,
        .tokens_per_s = elapsed > 0 ? rc->tokens / elapsed : 0.0,
        .steps_per_s = elapsed > 0 ? (double)step / elapsed : 0.0,
        .eta_s = step > 0 ? elapsed / (double)step * (double)(rc->total_steps - step) : -1.0,
        .started_unix = rc->started_unix,
        .run_dir = rc->run_dir,
        .socket = rc->socket_path,
        .metrics = rc->metrics,
    };
    json_t* snap = status_snapshot_json(&info, 0);
    status_server_publish(rc->server, snap);
    json_decref(snap);
}

void run_control_start(RunControl* rc, TrainWorld* w, const Config* cfg, const char* command, const char* run_dir,
                       long long total_steps) {
    memset(rc, 0, sizeof *rc);
    rc->world = w;
    rc->command = command;
    rc->run_dir = run_dir;
    rc->total_steps = total_steps;
    rc->phase = "start";
    rc->t_start = rc->t_last = now_seconds();
    rc->started_unix = status_now_unix();
    signals_install();

    // every rank runs the same protocol, config, world size and tp
    char digest[CONTROL_DIGEST_LEN + 1];
    control_config_digest(cfg, digest);
    control_handshake(&w->par, digest);

    // hosts of every rank, for /status
    uint8_t** hosts = NULL;
    size_t* lens = NULL;
    comm_gather_bytes(w->par.world, w->par.host, strlen(w->par.host) + 1, 0, &hosts, &lens);
    if (!w->is_root) return;
    int n = w->par.size;
    rc->ranks = callocCheck((size_t)n, sizeof(StatusRank));
    rc->hosts = callocCheck((size_t)n, sizeof *rc->hosts);
    double now = status_now_unix();
    for (int r = 0; r < n; r++) {
        snprintf(rc->hosts[r], sizeof rc->hosts[r], "%.*s", (int)(lens[r] ? lens[r] - 1 : 0), (char*)hosts[r]);
        rc->ranks[r] = (StatusRank){.rank = r, .host = rc->hosts[r], .last_heartbeat_unix = now};
        free(hosts[r]);
    }
    free(hosts);
    free(lens);
    time_t t = time(NULL);
    struct tm tmv;
    gmtime_r(&t, &tmv);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tmv);
    snprintf(rc->run_id, sizeof rc->run_id, "%s-%s-%d", stamp, command, (int)getpid());

    StatusServerOptions o;
    if (!status_options_from_config(cfg, run_dir, &o, rc->socket_path, sizeof rc->socket_path)) return;
    char err[512];
    rc->server = status_server_start(&o, err, sizeof err);
    if (!rc->server) fatalf("%s", err);
    if (rc->socket_path[0])
        fprintf(stderr, "status: curl --unix-socket %s http://rlhfd/status  (or build/rlhfctl status --socket %s)\n",
                rc->socket_path, rc->socket_path);
    if (o.listen && o.listen[0]) fprintf(stderr, "status: also on TCP %s (port %d)\n", o.listen, status_server_tcp_port(rc->server));
    publish(rc, 0);
}

void run_control_phase(RunControl* rc, const char* phase) {
    rc->phase = phase;
    if (rc->world) { // named in collective timeout errors
        comm_set_phase(rc->world->par.world, phase);
        comm_set_phase(rc->world->par.dp, phase);
        comm_set_phase(rc->world->par.tp, phase);
    }
    if (rc->server) publish(rc, rc->last_step);
}

unsigned run_control_step(RunControl* rc, long long step, const char* phase, json_t* metrics, double tokens) {
    TrainWorld* w = rc->world;
    rc->phase = phase;
    rc->last_step = step;
    rc->tokens += tokens;
    double now = now_seconds();
    double step_s = now - rc->t_last;
    rc->t_last = now;

    // every rank reports: its heartbeat, the step time, and whether a signal asked it to stop
    Rlhfd__Metric m_time = RLHFD__METRIC__INIT, m_sig = RLHFD__METRIC__INIT;
    m_time.name = "step_seconds";
    m_time.value = step_s;
    m_sig.name = "stop_signal";
    m_sig.value = signals_stop_requested();
    Rlhfd__Metric* timings[1] = {&m_time};
    Rlhfd__Metric* counts[1] = {&m_sig};
    Rlhfd__Report rep = RLHFD__REPORT__INIT;
    rep.rank = w->par.rank;
    rep.step = step;
    rep.phase = RLHFD__COMMAND__KIND__TRAIN;
    rep.n_timings = 1;
    rep.timings = timings;
    rep.n_counts = 1;
    rep.counts = counts;
    Rlhfd__Report** reports = NULL;
    char err[512];
    if (control_gather_reports(w->par.world, &rep, &reports, err, sizeof err) != 0)
        fatalf("control plane: %s", err); // rank 0: a malformed report is refused, never trusted

    Rlhfd__Command cmd = RLHFD__COMMAND__INIT;
    if (w->is_root) {
        int stop_signal = 0;
        double hb = status_now_unix();
        for (int r = 0; r < w->par.size; r++) {
            rc->ranks[r].last_heartbeat_unix = hb;
            for (size_t k = 0; k < reports[r]->n_counts; k++)
                if (!strcmp(reports[r]->counts[k]->name, "stop_signal") && reports[r]->counts[k]->value != 0)
                    stop_signal = 1;
        }
        control_reports_free(reports, w->par.size);
        if (metrics) {
            json_decref(rc->metrics);
            rc->metrics = json_deep_copy(metrics);
        }
        unsigned actions = rc->server ? status_server_take_actions(rc->server) : 0;
        cmd.kind = decide(rc, actions, stop_signal);
        cmd.step = step;
        publish(rc, step);
        if (cmd.kind == RLHFD__COMMAND__KIND__STOP)
            fprintf(stderr, "%s: stopping after step %lld (%s): checkpointing\n", rc->command, step,
                    stop_signal ? "signal" : "POST /stop");
    }
    unsigned out = 0;
    while (1) {
        Rlhfd__Command* got = control_broadcast_command(w->par.world, w->is_root ? &cmd : NULL, err, sizeof err);
        if (!got) fatalf("control plane: %s", err);
        Rlhfd__Command__Kind kind = got->kind;
        rlhfd__command__free_unpacked(got, NULL);
        if (kind == RLHFD__COMMAND__KIND__STOP) out |= RUN_STOP | RUN_CHECKPOINT;
        if (kind == RLHFD__COMMAND__KIND__CHECKPOINT) out |= RUN_CHECKPOINT;
        if (kind != RLHFD__COMMAND__KIND__PAUSE) break;
        // paused: rank 0 waits for /resume or /stop, re-broadcasting PAUSE every second
        if (w->is_root) {
            if (rc->server) status_server_wait_actions(rc->server, 1000);
            else sleep(1);
            unsigned actions = rc->server ? status_server_take_actions(rc->server) : 0;
            cmd.kind = decide(rc, actions, signals_stop_requested());
            publish(rc, step);
        }
    }
    return out;
}

int run_control_exit_code(const RunControl* rc) {
    int sig = signals_stop_requested();
    return (rc->stopped_by_signal || sig) ? RLHFD_EXIT_RESUMABLE : 0;
}

void run_control_finish(RunControl* rc) {
    if (rc->server) {
        rc->phase = "done";
        publish(rc, rc->last_step);
        status_server_stop(rc->server);
    }
    json_decref(rc->metrics);
    free(rc->ranks);
    free(rc->hosts);
    memset(rc, 0, sizeof *rc);
}
