// status_render.h - what the status server sends, rendered from a published
// snapshot (schema in status_server.h). Pure functions: no sockets, no
// locks, so they are tested on their own and run on the server's thread.
#pragma once
#include <jansson.h>

// GET /status body: the snapshot with each rank's heartbeat_age_s
// recomputed against now_unix and "snapshot_age_s" added; malloc'd, pretty
// printed, ends with a newline.
char* status_render_json(const json_t* snap, double published_unix, double now_unix);

// GET /metrics body: Prometheus text exposition format 0.0.4. snap may be
// NULL (before the first publish: only rlhfd_up and the request counter).
// requests_total: HTTP requests the server has answered. malloc'd.
char* status_render_prometheus(const json_t* snap, double published_unix, double now_unix,
                               unsigned long long requests_total);
