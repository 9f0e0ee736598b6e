// run_control.h - the coordinator's step loop shared by every training
// command: the handshake, per-step reports from every rank (heartbeats),
// the status socket, control actions (socket and signals) and the decision
// rank 0 broadcasts to all ranks, so every rank checkpoints, pauses or stops
// at the same step.
//
//   RunControl rc;
//   run_control_start(&rc, &world, cfg, "pretrain", run_dir, steps);  // collective
//   for (step = 1; step <= steps; step++) {
//       ... one step ...
//       unsigned d = run_control_step(&rc, step, "train", metrics_row, tokens);  // collective
//       if (d & RUN_CHECKPOINT) ... checkpoint now ...
//       if (d & RUN_STOP) { ... checkpoint ...; exit with run_control_exit_code(&rc) }
//   }
//   run_control_finish(&rc);
//
// Rank 0 serves RUN_DIR/status.sock (status.socket overrides; status.listen
// adds TCP; status.token) and publishes a snapshot after every step. While
// paused (POST /pause) every rank waits inside run_control_step, rank 0
// re-broadcasting PAUSE each second so no collective deadline passes.
// SIGTERM/SIGUSR1 (Slurm's warning) and POST /stop end the run gracefully:
// the command finishes the step, checkpoints and exits (RLHFD_EXIT_RESUMABLE
// after a signal, 0 after /stop).
#pragma once
#include <jansson.h>
#include "train_util.h"
#include "status_server.h"

enum {
    RUN_CHECKPOINT = 1u << 0, // write a checkpoint after this step
    RUN_STOP = 1u << 1,       // checkpoint and exit after this step
};

typedef struct {
    TrainWorld* world;
    const char* command;
    const char* run_dir;
    long long total_steps;
    StatusServer* server;       // rank 0 (NULL when status.socket = none)
    char socket_path[1024];
    char run_id[96];
    double started_unix, t_start, t_last;
    long long last_step;
    double tokens;              // total over the run
    StatusRank* ranks;          // rank 0: one per world rank
    char (*hosts)[64];
    int paused;
    int stopped_by_signal;      // the stop came from SIGTERM/SIGUSR1
    json_t* metrics;            // the last step's metrics (rank 0)
    const char* phase;
} RunControl;

void run_control_start(RunControl* rc, TrainWorld* w, const Config* cfg, const char* command, const char* run_dir,
                       long long total_steps);
// After each step (every rank): metrics (borrowed, may be NULL; read on rank
// 0) and the tokens the step processed over all ranks. Returns RUN_* bits,
// the same on every rank.
unsigned run_control_step(RunControl* rc, long long step, const char* phase, json_t* metrics, double tokens);
// Names the phase ("train", "eval", "checkpoint", "generate", ...): published
// on /status (rank 0) and named in collective timeout errors. No collective.
void run_control_phase(RunControl* rc, const char* phase);
// Exit code of a stopped run: RLHFD_EXIT_RESUMABLE after a signal, else 0.
int run_control_exit_code(const RunControl* rc);
void run_control_finish(RunControl* rc);
