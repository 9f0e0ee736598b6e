// status_render.c - the status snapshot: built from a StatusInfo by every
// command (one schema), and rendered for GET /status (JSON) and GET /metrics
// (Prometheus text exposition format 0.0.4).
#include "status_render.h"
#include "status_server.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "common/check.h"

double status_now_unix(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static json_t* str_or_null(const char* s) { return s ? json_string(s) : json_null(); }

// jansson refuses non-finite reals (json_real returns NULL): map them to null
// so a diverged loss still leaves a valid snapshot.
static json_t* num(double x) { return isfinite(x) ? json_real(x) : json_null(); }

json_t* status_snapshot_json(const StatusInfo* in, double now_unix) {
    if (now_unix <= 0) now_unix = status_now_unix();
    json_t* o = json_object();
    json_object_set_new(o, "run_id", str_or_null(in->run_id));
    json_object_set_new(o, "command", str_or_null(in->command));
    json_object_set_new(o, "algorithm", str_or_null(in->algorithm ? in->algorithm : in->command));
    json_object_set_new(o, "step", json_integer(in->step));
    json_object_set_new(o, "total_steps", json_integer(in->total_steps));
    json_object_set_new(o, "phase", str_or_null(in->phase));
    json_object_set_new(o, "paused", json_boolean(in->paused));

    json_t* world = json_object();
    json_object_set_new(world, "size", json_integer(in->world_size));
    json_object_set_new(world, "dp", json_integer(in->dp));
    json_object_set_new(world, "tp", json_integer(in->tp));
    json_t* ranks = json_array();
    for (int i = 0; in->ranks && i < in->nranks; i++) {
        const StatusRank* r = &in->ranks[i];
        json_t* jr = json_object();
        json_object_set_new(jr, "rank", json_integer(r->rank));
        json_object_set_new(jr, "host", str_or_null(r->host));
        if (r->last_heartbeat_unix > 0) {
            json_object_set_new(jr, "last_heartbeat_unix", num(r->last_heartbeat_unix));
            json_object_set_new(jr, "heartbeat_age_s", num(now_unix - r->last_heartbeat_unix));
        } else { // never heard from: shown, not hidden
            json_object_set_new(jr, "last_heartbeat_unix", json_null());
            json_object_set_new(jr, "heartbeat_age_s", json_null());
        }
        json_array_append_new(ranks, jr);
    }
    json_object_set_new(world, "ranks", ranks);
    json_object_set_new(o, "world", world);

    json_t* tp = json_object();
    json_object_set_new(tp, "tokens_per_s", num(in->tokens_per_s));
    json_object_set_new(tp, "steps_per_s", num(in->steps_per_s));
    json_object_set_new(o, "throughput", tp);

    json_t* m = json_object();
    if (json_is_object(in->metrics)) {
        const char* k;
        json_t* v;
        json_object_foreach(in->metrics, k, v)
            if (json_is_number(v)) json_object_set_new(m, k, num(json_number_value(v)));
    }
    json_object_set_new(o, "metrics", m);
    json_object_set_new(o, "eta_s", in->eta_s >= 0 ? num(in->eta_s) : json_null());
    json_object_set_new(o, "started_unix", num(in->started_unix));
    json_object_set_new(o, "run_dir", str_or_null(in->run_dir));
    json_object_set_new(o, "socket", str_or_null(in->socket));
    return o;
}

char* status_render_json(const json_t* snap, double published_unix, double now_unix) {
    // deep copy: the published snapshot is shared with in-flight requests
    // and must stay immutable
    json_t* o = json_deep_copy(snap);
    if (!o) o = json_object();
    json_t* ranks = json_object_get(json_object_get(o, "world"), "ranks");
    size_t i;
    json_t* r;
    json_array_foreach(ranks, i, r) {
        json_t* hb = json_object_get(r, "last_heartbeat_unix");
        if (json_is_number(hb) && json_number_value(hb) > 0)
            json_object_set_new(r, "heartbeat_age_s", num(now_unix - json_number_value(hb)));
    }
    json_object_set_new(o, "snapshot_age_s", num(now_unix - published_unix));
    char* text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    assertCheck(text != NULL);
    size_t n = strlen(text);
    char* out = mallocCheck(n + 2);
    memcpy(out, text, n);
    out[n] = '\n';
    out[n + 1] = '\0';
    free(text);
    return out;
}

// ---------------------------------------------------------------------------
// Prometheus text format 0.0.4: "# HELP name text", "# TYPE name type", then
// samples "name{label="value",...} number". HELP text escapes \ and newline;
// label values escape \, " and newline.

typedef struct {
    char* buf;
    size_t len, cap;
    char** families; // names already emitted: a family may appear only once
    int nfam, capfam;
} Out;

__attribute__((format(printf, 2, 3)))
static void outf(Out* o, const char* fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        assertCheck(n >= 0);
        if ((size_t)n < o->cap - o->len) { o->len += (size_t)n; return; }
        o->cap = 2 * o->cap + (size_t)n + 1;
        o->buf = reallocCheck(o->buf, o->cap);
    }
}

static void out_escaped(Out* o, const char* s, int label) {
    for (; *s; s++) {
        if (*s == '\\') outf(o, "\\\\");
        else if (*s == '\n') outf(o, "\\n");
        else if (*s == '"' && label) outf(o, "\\\"");
        else outf(o, "%c", *s);
    }
}

// Numbers: integers exactly, others with enough digits for timestamps.
static void out_value(Out* o, double v) {
    if (!isfinite(v)) outf(o, "%s", isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"));
    else if (v == floor(v) && fabs(v) < 9e15) outf(o, "%.0f", v);
    else outf(o, "%.15g", v);
}

// Starts a family; 0 (and nothing written) if the name was already used.
static int family(Out* o, const char* name, const char* type, const char* help) {
    for (int i = 0; i < o->nfam; i++)
        if (!strcmp(o->families[i], name)) return 0;
    if (o->nfam == o->capfam) {
        o->capfam = o->capfam ? 2 * o->capfam : 32;
        o->families = reallocCheck(o->families, (size_t)o->capfam * sizeof(char*));
    }
    o->families[o->nfam++] = strdup(name);
    outf(o, "# HELP %s ", name);
    out_escaped(o, help, 0);
    outf(o, "\n# TYPE %s %s\n", name, type);
    return 1;
}

static void gauge(Out* o, const char* name, const char* help, double v) {
    if (!family(o, name, "gauge", help)) return;
    outf(o, "%s ", name);
    out_value(o, v);
    outf(o, "\n");
}

// A gauge from a numeric snapshot field; absent or null fields are skipped.
static void gauge_field(Out* o, const char* name, const char* help, const json_t* v) {
    if (json_is_number(v)) gauge(o, name, help, json_number_value(v));
    else if (json_is_boolean(v)) gauge(o, name, help, json_is_true(v) ? 1 : 0);
}

static void label(Out* o, const char* key, const char* value, int first) {
    outf(o, "%s%s=\"", first ? "" : ",", key);
    out_escaped(o, value ? value : "", 1);
    outf(o, "\"");
}

char* status_render_prometheus(const json_t* snap, double published_unix, double now_unix,
                               unsigned long long requests_total) {
    Out o = {0};
    o.cap = 4096;
    o.buf = mallocCheck(o.cap);
    o.buf[0] = '\0';
    gauge(&o, "rlhfd_up", "1 while the coordinator's status server answers.", 1);
    if (family(&o, "rlhfd_status_requests_total", "counter", "HTTP requests answered by the status server."))
        outf(&o, "rlhfd_status_requests_total %llu\n", requests_total);
    if (json_is_object(snap)) {
        gauge(&o, "rlhfd_snapshot_age_seconds", "Seconds since the coordinator last published its status.",
              now_unix - published_unix);
        if (family(&o, "rlhfd_info", "gauge", "The run's identity and phase as labels (value always 1).")) {
            outf(&o, "rlhfd_info{");
            static const char* keys[] = {"run_id", "command", "algorithm", "phase", "run_dir"};
            for (int i = 0; i < 5; i++) {
                const char* v = json_string_value(json_object_get(snap, keys[i]));
                label(&o, keys[i], v, i == 0);
            }
            outf(&o, "} 1\n");
        }
        gauge_field(&o, "rlhfd_step", "Training step (iteration) reached.", json_object_get(snap, "step"));
        gauge_field(&o, "rlhfd_total_steps", "Steps (iterations) the run will take.",
                    json_object_get(snap, "total_steps"));
        gauge_field(&o, "rlhfd_paused", "1 while training is paused.", json_object_get(snap, "paused"));
        gauge_field(&o, "rlhfd_eta_seconds", "Estimated seconds until the run ends.",
                    json_object_get(snap, "eta_s"));
        gauge_field(&o, "rlhfd_start_time_seconds", "Start time of the run since the epoch in seconds.",
                    json_object_get(snap, "started_unix"));
        const json_t* tput = json_object_get(snap, "throughput");
        gauge_field(&o, "rlhfd_tokens_per_second", "Training throughput in tokens per second.",
                    json_object_get(tput, "tokens_per_s"));
        gauge_field(&o, "rlhfd_steps_per_second", "Training steps per second.",
                    json_object_get(tput, "steps_per_s"));
        const json_t* world = json_object_get(snap, "world");
        gauge_field(&o, "rlhfd_world_size", "Processes (ranks) in the run.", json_object_get(world, "size"));
        gauge_field(&o, "rlhfd_dp_size", "Data-parallel degree.", json_object_get(world, "dp"));
        gauge_field(&o, "rlhfd_tp_size", "Tensor-parallel degree.", json_object_get(world, "tp"));

        // per-rank heartbeats: a family with one sample per rank that has
        // ever reported (a silent rank's age keeps growing between publishes)
        const json_t* ranks = json_object_get(world, "ranks");
        for (int pass = 0; pass < 2; pass++) {
            const char* name = pass == 0 ? "rlhfd_rank_heartbeat_age_seconds"
                                         : "rlhfd_rank_last_heartbeat_timestamp_seconds";
            const char* help = pass == 0 ? "Seconds since each rank's last heartbeat."
                                         : "Time of each rank's last heartbeat since the epoch in seconds.";
            int started = 0;
            size_t i;
            const json_t* r;
            json_array_foreach(ranks, i, r) {
                const json_t* hb = json_object_get(r, "last_heartbeat_unix");
                const json_t* rk = json_object_get(r, "rank");
                if (!json_is_number(hb) || !json_is_integer(rk)) continue;
                if (!started && !family(&o, name, "gauge", help)) break;
                started = 1;
                char rank[32];
                snprintf(rank, sizeof rank, "%lld", (long long)json_integer_value(rk));
                outf(&o, "%s{", name);
                label(&o, "rank", rank, 1);
                label(&o, "host", json_string_value(json_object_get(r, "host")), 0);
                outf(&o, "} ");
                out_value(&o, pass == 0 ? now_unix - json_number_value(hb) : json_number_value(hb));
                outf(&o, "\n");
            }
        }

        // every numeric training metric as its own gauge: rlhfd_metric_<name>
        // with characters outside [a-zA-Z0-9_] replaced by '_'
        const json_t* metrics = json_object_get(snap, "metrics");
        const char* k;
        const json_t* v;
        json_object_foreach((json_t*)metrics, k, v) {
            if (!json_is_number(v)) continue;
            size_t kl = strlen(k);
            char* name = mallocCheck(kl + 16);
            memcpy(name, "rlhfd_metric_", 13);
            for (size_t i = 0; i < kl; i++) {
                char ch = k[i];
                int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
                name[13 + i] = ok ? ch : '_';
            }
            name[13 + kl] = '\0';
            char help[64 + 256];
            snprintf(help, sizeof help, "Training metric \"%.256s\" at the last step.", k);
            gauge(&o, name, help, json_number_value(v));
            free(name);
        }
    }
    for (int i = 0; i < o.nfam; i++) free(o.families[i]);
    free(o.families);
    return o.buf;
}
