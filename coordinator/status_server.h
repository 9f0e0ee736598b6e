// status_server.h - the coordinator's status socket: HTTP/1.1 on a Unix
// socket (and optionally TCP) served by a libuv loop in its own thread.
//
// The training loop never waits for it. The coordinator publishes a snapshot
// (a JSON object) once per step; the server keeps its own copy, swapped under
// a mutex held only for a pointer exchange, and renders each response from
// it. Control requests only set bits that the loop polls once per step.
//
//   StatusServerOptions o = {.socket_path = "RUN_DIR/status.sock"};
//   char err[256];
//   StatusServer* s = status_server_start(&o, err, sizeof err);
//   if (!s) fatalf("%s", err);
//   for (step ...) {
//       json_t* snap = status_snapshot_json(&info);   // same schema everywhere
//       status_server_publish(s, snap); json_decref(snap);
//       unsigned a = status_server_take_actions(s);
//       if (a & STATUS_ACTION_STOP) ...               // finish step, checkpoint, exit 0
//       while (paused) status_server_wait_actions(s, 1000); ...
//   }
//   status_server_stop(s);
//
// Endpoints (responses close the connection):
//   GET  /status      200 the snapshot JSON (heartbeat_age_s recomputed at
//                     request time, plus "snapshot_age_s"); 503 before the
//                     first publish
//   GET  /metrics     200 Prometheus text exposition 0.0.4 (rlhfd_* families)
//   GET  /healthz     200 "ok"
//   POST /checkpoint, /pause, /resume, /stop
//                     202 {"accepted": "stop"}; sets the action bit
//   errors            400 malformed, 404 unknown path, 405 wrong method,
//                     413 request over max_request_bytes, 414 URL too long,
//                     401 TCP request without the right bearer token,
//                     503 over max_connections
// Authentication: the Unix socket is mode 0600 (the file system is the
// check). Over TCP, control actions always need "Authorization: Bearer
// TOKEN"; when a token is set, every TCP endpoint but /healthz needs it. A
// listener on anything but a loopback address is refused without a token.
//
// Snapshot schema (status_snapshot_json builds it; every command fills it):
//   {
//     "run_id": "20261204-101500-ppo",   "command": "ppo",  "algorithm": "ppo",
//     "step": 120, "total_steps": 600,    "phase": "train",  "paused": false,
//     "world": {"size": 2, "dp": 2, "tp": 1,
//               "ranks": [{"rank": 0, "host": "node1",
//                          "last_heartbeat_unix": 1764843300.5,
//                          "heartbeat_age_s": 0.2}, ...]},
//     "throughput": {"tokens_per_s": 1540.0, "steps_per_s": 0.33},
//     "metrics": {"loss": 2.31, "kl": 0.012, ...},     (numbers only)
//     "eta_s": 1440.0,                                  (null when unknown)
//     "started_unix": 1764843000.0,
//     "run_dir": "runs/demo/ppo",  "socket": "runs/demo/ppo/status.sock"
//   }
#pragma once
#include <stddef.h>
#include <jansson.h>

// Control actions: a bit set, OR-ed as requests arrive.
enum {
    STATUS_ACTION_CHECKPOINT = 1u << 0,
    STATUS_ACTION_PAUSE      = 1u << 1,
    STATUS_ACTION_RESUME     = 1u << 2,
    STATUS_ACTION_STOP       = 1u << 3,
};

typedef struct {
    const char* socket_path;  // Unix socket (0600; a stale socket file is replaced;
                              // the directory must exist); NULL or "": none
    const char* listen;       // "127.0.0.1:PORT", "[::1]:PORT", "localhost:PORT";
                              // PORT 0 picks a free one; NULL or "": no TCP
    const char* token;        // bearer token for TCP; NULL or "": none
    int max_connections;      // open connections at once; <= 0: 256
    int max_request_bytes;    // request line + headers + body; <= 0: 8192
    int idle_timeout_ms;      // a request must arrive within this; <= 0: 10000
} StatusServerOptions;

typedef struct StatusServer StatusServer;

// Binds and starts serving. NULL on failure with a one-line reason in err
// (which names the socket path or address).
StatusServer* status_server_start(const StatusServerOptions* o, char* err, size_t errlen);
// Publishes the latest snapshot (an object). The server copies it: the caller
// keeps its reference. Never waits for clients.
void status_server_publish(StatusServer* s, json_t* snapshot);
// Returns and clears the STATUS_ACTION_* bits requested since the last call.
unsigned status_server_take_actions(StatusServer* s);
// Waits up to timeout_ms for an action to be pending (for a paused loop);
// returns the pending bits without clearing them (0 on timeout).
unsigned status_server_wait_actions(StatusServer* s, int timeout_ms);
// The TCP port actually bound (useful with PORT 0); 0 without TCP.
int status_server_tcp_port(const StatusServer* s);
// Stops the loop, closes every connection, joins the thread, unlinks the
// socket file and frees everything. NULL is a no-op.
void status_server_stop(StatusServer* s);

// Options from the run's config: status.socket ("" -> RUN_DIR/status.sock,
// "none" -> no socket), status.listen, status.token. The socket path is
// written to path (pathlen bytes; "" for none) and o points into it and into
// cfg. Returns 0 when neither a socket nor TCP is configured (serve nothing).
typedef struct Config Config;
int status_options_from_config(const Config* cfg, const char* run_dir, StatusServerOptions* o,
                               char* path, size_t pathlen);

// ---------------------------------------------------------------------------
// The standard snapshot, built from plain fields.

typedef struct {
    int rank;
    const char* host;
    double last_heartbeat_unix;    // 0: never heard from
} StatusRank;

typedef struct {
    const char* run_id;
    const char* command;           // "ppo", "pretrain", ...
    const char* algorithm;         // NULL: same as command
    const char* phase;             // "generate", "score", "train", "eval", "checkpoint", ...
    long long step, total_steps;
    int paused;
    int world_size, dp, tp;
    const StatusRank* ranks;       // nranks entries; NULL: no rank list
    int nranks;
    double tokens_per_s, steps_per_s;
    double eta_s;                  // < 0: unknown (null in the JSON)
    double started_unix;
    const char* run_dir;
    const char* socket;
    json_t* metrics;               // borrowed object; its numeric fields are copied; may be NULL
} StatusInfo;

// New reference to the snapshot object (schema above); heartbeat ages are
// computed against now_unix (<= 0: the current time).
json_t* status_snapshot_json(const StatusInfo* info, double now_unix);
// Wall clock in seconds since the epoch (for heartbeats and started_unix).
double status_now_unix(void);
