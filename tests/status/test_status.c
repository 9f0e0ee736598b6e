// test_status.c - the status server (coordinator/status_server.c) and rlhfctl.
//
//   test_status [PATH/TO/rlhfctl]
//
// Starts servers on temporary Unix sockets and a free 127.0.0.1 port, then:
// start-up errors; mode 0600; /status JSON fields; /metrics parsed line by
// line as Prometheus text; control actions through take_actions and
// wait_actions; 400/401/404/405/413/414; 320 concurrent client threads for
// several rounds over both listeners while the main thread keeps publishing
// (max publish latency is printed, not asserted); the connection limit and
// the idle timeout; curl as a real client; rlhfctl's table, --json, exit codes.
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "common/config.h"
#include "coordinator/status_render.h"
#include "coordinator/status_server.h"

extern char** environ;

static atomic_int failures;
#define EXPECT(cond) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); atomic_fetch_add(&failures, 1); } } while (0)

static const char* TOKEN = "s3cret-token";
static char g_dir[256], g_sock[512];
static int g_port;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

// ---------------------------------------------------------------------------
// a minimal HTTP client

static int connect_unix(const char* path) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) { close(fd); return -1; }
    memcpy(a.sun_path, path, strlen(path) + 1);
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr*)&a, sizeof a) != 0) { close(fd); return -1; }
    return fd;
}

static int connect_tcp(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr*)&a, sizeof a) != 0) { close(fd); return -1; }
    return fd;
}

static int send_all(int fd, const char* p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

typedef struct {
    int status;        // HTTP status, 0 if none, -1 on a transport error
    char head[2048];   // status line + headers
    char* body;        // malloc'd, NUL-terminated
} Resp;

// Reads until EOF; splits the head from the body.
static Resp read_resp(int fd) {
    Resp r = {0};
    size_t cap = 8192, len = 0;
    char* buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap) buf = realloc(buf, cap *= 2);
        ssize_t got = recv(fd, buf + len, cap - len - 1, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) { if (len == 0) r.status = -1; break; } // a reset after the response is fine
        if (got == 0) break;
        len += (size_t)got;
    }
    buf[len] = '\0';
    close(fd);
    char* sep = strstr(buf, "\r\n\r\n");
    if (r.status == 0 && sep && !strncmp(buf, "HTTP/1.", 7)) {
        r.status = atoi(buf + 9);
        size_t hl = (size_t)(sep - buf);
        if (hl >= sizeof r.head) hl = sizeof r.head - 1;
        memcpy(r.head, buf, hl);
        r.head[hl] = '\0';
        r.body = strdup(sep + 4);
    } else {
        r.body = strdup("");
    }
    free(buf);
    return r;
}

// One raw request over the Unix socket (tcp_port 0) or TCP.
static Resp raw(int tcp_port, const char* path, const char* bytes, size_t n) {
    int fd = tcp_port ? connect_tcp(tcp_port) : connect_unix(path);
    if (fd < 0) { Resp r = {.status = -1, .body = strdup("")}; return r; }
    if (send_all(fd, bytes, n) != 0) { close(fd); Resp r = {.status = -1, .body = strdup("")}; return r; }
    return read_resp(fd);
}

static size_t format_req(char* b, size_t cap, const char* method, const char* url, const char* auth) {
    snprintf(b, cap, "%s %s HTTP/1.1\r\nHost: x\r\n%s%s%s%s\r\n", method, url,
             auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "",
             strcmp(method, "POST") ? "" : "Content-Length: 0\r\n");
    return strlen(b);
}

static Resp req(int tcp_port, const char* method, const char* url, const char* auth) {
    char b[1024];
    size_t n = format_req(b, sizeof b, method, url, auth);
    return raw(tcp_port, g_sock, b, n);
}

static int status_of(Resp r) {
    free(r.body);
    return r.status;
}

// ---------------------------------------------------------------------------
// Prometheus text exposition 0.0.4, checked line by line.

static int is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':'; }
static int is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

// 1 if valid; else 0 with the offending line in why.
static int prom_valid(const char* text, char* why, size_t whylen) {
    char typed[128][128];
    int ntyped = 0;
    size_t tl = strlen(text);
    if (tl == 0 || text[tl - 1] != '\n') { snprintf(why, whylen, "does not end with a newline"); return 0; }
    const char* line = text;
    while (*line) {
        const char* eol = strchr(line, '\n');
        size_t n = (size_t)(eol - line);
        char l[1024];
        if (n >= sizeof l) { snprintf(why, whylen, "line too long"); return 0; }
        memcpy(l, line, n);
        l[n] = '\0';
        line = eol + 1;
        snprintf(why, whylen, "%s", l);
        if (l[0] == '#') {
            char kw[16], name[128], rest[512];
            int k = sscanf(l, "# %15s %127s %511[^\n]", kw, name, rest);
            if (k >= 2 && !strcmp(kw, "TYPE")) {
                if (k != 3) return 0;
                if (strcmp(rest, "gauge") && strcmp(rest, "counter") && strcmp(rest, "untyped") &&
                    strcmp(rest, "histogram") && strcmp(rest, "summary")) return 0;
                for (int i = 0; i < ntyped; i++) if (!strcmp(typed[i], name)) return 0; // twice
                if (ntyped < 128) snprintf(typed[ntyped++], sizeof typed[0], "%s", name);
            }
            if (k >= 2 && !strcmp(kw, "HELP")) { // only \\ and \n escapes
                for (const char* p = strstr(l, name) + strlen(name); *p; p++)
                    if (*p == '\\' && p[1] != '\\' && p[1] != 'n') return 0;
                    else if (*p == '\\') p++;
            }
            continue;
        }
        const char* p = l;
        if (!is_name_start(*p)) return 0;
        char name[128];
        size_t nl = 0;
        while (is_name_char(*p) && nl < sizeof name - 1) name[nl++] = *p++;
        name[nl] = '\0';
        if (*p == '{') {
            p++;
            while (*p != '}') {
                if (!(is_name_start(*p) && *p != ':')) return 0;
                while (is_name_char(*p) && *p != ':') p++;
                if (*p++ != '=' || *p++ != '"') return 0;
                while (*p != '"') {
                    if (!*p) return 0;
                    if (*p == '\\') {
                        if (p[1] != '\\' && p[1] != '"' && p[1] != 'n') return 0;
                        p += 2;
                    } else {
                        p++;
                    }
                }
                p++;
                if (*p == ',') p++;
                else if (*p != '}') return 0;
            }
            p++;
        }
        if (*p++ != ' ') return 0;
        char* end;
        if (!strncmp(p, "NaN", 3) || !strncmp(p, "+Inf", 4) || !strncmp(p, "-Inf", 4)) {
            end = (char*)p + (p[0] == 'N' ? 3 : 4);
        } else {
            strtod(p, &end);
            if (end == p) return 0;
        }
        if (*end == ' ') { // optional timestamp (ms)
            p = end + 1;
            strtoll(p, &end, 10);
            if (end == p) return 0;
        }
        if (*end) return 0;
        int found = 0; // a sample belongs to a family declared before it
        for (int i = 0; i < ntyped; i++) found |= !strcmp(typed[i], name);
        if (!found) return 0;
    }
    why[0] = '\0';
    return 1;
}

// The value of the sample line that starts with `prefix` (NAN if none).
static double prom_value(const char* text, const char* prefix) {
    size_t pl = strlen(prefix);
    for (const char* l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, prefix, pl) && l[pl] == ' ') return strtod(l + pl + 1, NULL);
    return NAN;
}

// ---------------------------------------------------------------------------
// snapshots

static json_t* make_snapshot(long long step, const char* host1) {
    double now = status_now_unix();
    StatusRank ranks[2] = {{0, "node-a", now - 0.25}, {1, host1, now - 3.0}};
    json_t* m = json_object();
    json_object_set_new(m, "loss", json_real(2.5 - 0.001 * (double)step));
    json_object_set_new(m, "kl/mean", json_real(0.0125));
    json_object_set_new(m, "a b", json_integer(3));
    json_object_set_new(m, "note", json_string("not a number"));
    StatusInfo info = {
        .run_id = "test-run", .command = "ppo", .algorithm = "ppo", .phase = "train",
        .step = step, .total_steps = 100, .paused = 0, .world_size = 2, .dp = 2, .tp = 1,
        .ranks = ranks, .nranks = 2, .tokens_per_s = 1540.5, .steps_per_s = 0.25, .eta_s = 300,
        .started_unix = now - 60, .run_dir = g_dir, .socket = g_sock, .metrics = m};
    json_t* s = status_snapshot_json(&info, now);
    json_decref(m);
    return s;
}

// The renderer alone: odd snapshots still give valid exposition text.
static void test_render(void) {
    char why[1024];
    char* t = status_render_prometheus(NULL, 0, 1, 5);
    EXPECT(prom_valid(t, why, sizeof why) && prom_value(t, "rlhfd_status_requests_total") == 5);
    free(t);
    json_t* empty = json_object();
    t = status_render_prometheus(empty, 10, 12, 0);
    EXPECT(prom_valid(t, why, sizeof why) && prom_value(t, "rlhfd_snapshot_age_seconds") == 2);
    free(t);
    json_decref(empty);
    // names that collide after sanitising, a metric called like a fixed
    // family, a rank that never reported, huge and tiny numbers
    json_t* snap = json_pack("{s:I, s:{s:[{s:i, s:s, s:n}, {s:i, s:n, s:f}]}, s:{s:i, s:i, s:f, s:f, s:b}}",
                             "step", (json_int_t)3, "world", "ranks", "rank", 0, "host", "h0",
                             "last_heartbeat_unix", "rank", 1, "host", "last_heartbeat_unix", 99.5,
                             "metrics", "a b", 1, "a_b", 2, "big", 1e300, "tiny", -2.5e-300, "flag", 1);
    EXPECT(snap != NULL);
    t = status_render_prometheus(snap, 100, 100.5, 0);
    int ok = prom_valid(t, why, sizeof why);
    if (!ok) fprintf(stderr, "  invalid Prometheus line: '%s'\n%s", why, t);
    EXPECT(ok);
    EXPECT(prom_value(t, "rlhfd_metric_a_b") == 1); // the first one wins
    EXPECT(prom_value(t, "rlhfd_metric_big") == 1e300 && prom_value(t, "rlhfd_metric_tiny") == -2.5e-300);
    EXPECT(prom_value(t, "rlhfd_rank_heartbeat_age_seconds{rank=\"1\",host=\"\"}") == 1);
    EXPECT(!strstr(t, "rank=\"0\"")); // never reported: no sample
    EXPECT(!strstr(t, "rlhfd_metric_flag"));
    free(t);
    char* js = status_render_json(snap, 100, 100.5);
    json_t* back = json_loads(js, 0, NULL);
    EXPECT(json_number_value(json_object_get(back, "snapshot_age_s")) == 0.5);
    json_t* r1 = json_array_get(json_object_get(json_object_get(back, "world"), "ranks"), 1);
    EXPECT(json_number_value(json_object_get(r1, "heartbeat_age_s")) == 1);
    json_decref(back);
    free(js);
    json_decref(snap);
}

static void test_options_from_config(void) {
    Config* c = config_new();
    StatusServerOptions o;
    char path[512];
    EXPECT(status_options_from_config(c, "/tmp/run", &o, path, sizeof path) == 1);
    EXPECT(!strcmp(o.socket_path, "/tmp/run/status.sock") && !o.listen && !o.token);
    EXPECT(status_options_from_config(c, NULL, &o, path, sizeof path) == 0); // no run dir, nothing set
    config_set(c, "status.socket=none", "test");
    EXPECT(status_options_from_config(c, "/tmp/run", &o, path, sizeof path) == 0 && !o.socket_path);
    config_set(c, "status.listen=127.0.0.1:9100", "test");
    config_set(c, "status.token=abc", "test");
    EXPECT(status_options_from_config(c, "/tmp/run", &o, path, sizeof path) == 1);
    EXPECT(!o.socket_path && !strcmp(o.listen, "127.0.0.1:9100") && !strcmp(o.token, "abc"));
    config_set(c, "status.socket=/x/y.sock", "test");
    EXPECT(status_options_from_config(c, "/tmp/run", &o, path, sizeof path) == 1 && !strcmp(o.socket_path, "/x/y.sock"));
    config_free(c);
}

// ---------------------------------------------------------------------------

static void test_start_errors(void) {
    char err[512];
    StatusServerOptions o = {0};
    char p[1024];
    snprintf(p, sizeof p, "%s/no/such/dir/status.sock", g_dir);
    o.socket_path = p;
    EXPECT(status_server_start(&o, err, sizeof err) == NULL && strstr(err, "does not exist"));
    char longp[300];
    memset(longp, 'x', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    o.socket_path = longp;
    EXPECT(status_server_start(&o, err, sizeof err) == NULL && strstr(err, "at most 107"));
    snprintf(p, sizeof p, "%s/regular", g_dir);
    FILE* f = fopen(p, "w");
    fclose(f);
    o.socket_path = p;
    EXPECT(status_server_start(&o, err, sizeof err) == NULL && strstr(err, "not a socket"));
    unlink(p);
    o.socket_path = NULL;
    o.listen = "0.0.0.0:0";
    EXPECT(status_server_start(&o, err, sizeof err) == NULL && strstr(err, "not a loopback"));
    o.listen = "127.0.0.1";
    EXPECT(status_server_start(&o, err, sizeof err) == NULL && strstr(err, "HOST:PORT"));
    o.listen = "example.com:80";
    EXPECT(status_server_start(&o, err, sizeof err) == NULL && strstr(err, "not an IP address"));
    o.listen = NULL;
    EXPECT(status_server_start(&o, err, sizeof err) == NULL);
    // a non-loopback address is fine with a token
    o.listen = "0.0.0.0:0";
    o.token = "t";
    StatusServer* s = status_server_start(&o, err, sizeof err);
    EXPECT(s != NULL && status_server_tcp_port(s) > 0);
    status_server_stop(s);

    // a stale socket file (its process died) is replaced; a live one is refused
    snprintf(p, sizeof p, "%s/stale.sock", g_dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, p, strlen(p) + 1); // g_dir is short: fits
    EXPECT(bind(fd, (struct sockaddr*)&a, sizeof a) == 0);
    close(fd);
    StatusServerOptions o2 = {.socket_path = p};
    s = status_server_start(&o2, err, sizeof err);
    EXPECT(s != NULL);
    if (!s) fprintf(stderr, "  %s\n", err);
    EXPECT(status_server_start(&o2, err, sizeof err) == NULL && strstr(err, "another process"));
    status_server_stop(s);
    struct stat st;
    EXPECT(stat(p, &st) != 0); // unlinked on stop
}

static void test_endpoints(StatusServer* s) {
    struct stat st;
    EXPECT(stat(g_sock, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600);

    // before the first publish
    EXPECT(status_of(req(0, "GET", "/status", NULL)) == 503);
    Resp r = req(0, "GET", "/metrics", NULL);
    EXPECT(r.status == 200 && prom_value(r.body, "rlhfd_up") == 1);
    free(r.body);
    r = req(0, "GET", "/healthz", NULL);
    EXPECT(r.status == 200 && !strcmp(r.body, "ok\n"));
    free(r.body);

    json_t* snap = make_snapshot(7, "we\"ird\\host\nx");
    status_server_publish(s, snap);
    json_decref(snap);

    r = req(0, "GET", "/status?pretty=1", NULL);
    EXPECT(r.status == 200 && strstr(r.head, "Content-Type: application/json"));
    json_error_t e;
    json_t* j = json_loads(r.body, 0, &e);
    EXPECT(json_is_object(j));
    static const char* keys[] = {"run_id", "command", "algorithm", "step", "total_steps", "phase", "paused",
                                 "world", "throughput", "metrics", "eta_s", "started_unix", "run_dir",
                                 "socket", "snapshot_age_s"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (!json_object_get(j, keys[i])) fprintf(stderr, "  missing %s\n", keys[i]);
        EXPECT(json_object_get(j, keys[i]) != NULL);
    }
    EXPECT(json_integer_value(json_object_get(j, "step")) == 7);
    EXPECT(json_integer_value(json_object_get(j, "total_steps")) == 100);
    EXPECT(!strcmp(json_string_value(json_object_get(j, "socket")), g_sock));
    json_t* w = json_object_get(j, "world");
    EXPECT(json_integer_value(json_object_get(w, "dp")) == 2 && json_integer_value(json_object_get(w, "tp")) == 1);
    json_t* r1 = json_array_get(json_object_get(w, "ranks"), 1);
    EXPECT(!strcmp(json_string_value(json_object_get(r1, "host")), "we\"ird\\host\nx"));
    double age = json_number_value(json_object_get(r1, "heartbeat_age_s"));
    EXPECT(age >= 2.9 && age < 60);
    json_t* m = json_object_get(j, "metrics");
    EXPECT(fabs(json_number_value(json_object_get(m, "loss")) - 2.493) < 1e-9);
    EXPECT(json_object_get(m, "note") == NULL); // numbers only
    EXPECT(json_number_value(json_object_get(json_object_get(j, "throughput"), "tokens_per_s")) == 1540.5);
    json_decref(j);
    free(r.body);

    r = req(0, "GET", "/metrics", NULL);
    char why[1024];
    EXPECT(r.status == 200 && strstr(r.head, "Content-Type: text/plain; version=0.0.4"));
    int ok = prom_valid(r.body, why, sizeof why);
    if (!ok) fprintf(stderr, "  invalid Prometheus line: '%s'\n%s", why, r.body);
    EXPECT(ok);
    EXPECT(prom_value(r.body, "rlhfd_step") == 7);
    EXPECT(prom_value(r.body, "rlhfd_total_steps") == 100);
    EXPECT(prom_value(r.body, "rlhfd_tokens_per_second") == 1540.5);
    EXPECT(prom_value(r.body, "rlhfd_metric_kl_mean") == 0.0125);
    EXPECT(prom_value(r.body, "rlhfd_metric_a_b") == 3);
    EXPECT(prom_value(r.body, "rlhfd_dp_size") == 2);
    EXPECT(strstr(r.body, "rlhfd_rank_heartbeat_age_seconds{rank=\"1\",host=\"we\\\"ird\\\\host\\nx\"} "));
    EXPECT(strstr(r.body, "# TYPE rlhfd_status_requests_total counter\n"));
    EXPECT(!strstr(r.body, "note"));
    free(r.body);

    // errors
    static const char garbage[] = "HELLO THERE\r\n\r\n";
    EXPECT(status_of(raw(0, g_sock, garbage, sizeof garbage - 1)) == 400);
    static const char bad_version[] = "GET /status HTTP/9.x\r\n\r\n";
    EXPECT(status_of(raw(0, g_sock, bad_version, sizeof bad_version - 1)) == 400);
    EXPECT(status_of(req(0, "GET", "/nope", NULL)) == 404);
    EXPECT(status_of(req(0, "POST", "/status", NULL)) == 405);
    EXPECT(status_of(req(0, "GET", "/stop", NULL)) == 405);
    EXPECT(status_of(req(0, "DELETE", "/metrics", NULL)) == 405);
    char big[12000];
    int n = snprintf(big, sizeof big, "GET /status HTTP/1.1\r\nX-Pad: ");
    memset(big + n, 'a', sizeof big - (size_t)n - 5);
    memcpy(big + sizeof big - 5, "\r\n\r\n", 4);
    EXPECT(status_of(raw(0, g_sock, big, sizeof big - 1)) == 413);
    char url[700] = "/status?";
    memset(url + 8, 'q', 600);
    url[608] = '\0';
    EXPECT(status_of(req(0, "GET", url, NULL)) == 414);
    static const char http10[] = "GET /healthz HTTP/1.0\r\n\r\n";
    EXPECT(status_of(raw(0, g_sock, http10, sizeof http10 - 1)) == 200);
    static const char incomplete[] = "GET /status HTTP/1.1\r\nHost: x\r\n"; // then EOF
    int fd = connect_unix(g_sock);
    send_all(fd, incomplete, sizeof incomplete - 1);
    shutdown(fd, SHUT_WR);
    EXPECT(status_of(read_resp(fd)) == 400);

    // TCP: the token guards control always, and everything but /healthz when set
    char bearer[128], wrong[128];
    snprintf(bearer, sizeof bearer, "Bearer %s", TOKEN);
    snprintf(wrong, sizeof wrong, "Bearer %sx", TOKEN);
    EXPECT(status_of(req(g_port, "POST", "/stop", NULL)) == 401);
    EXPECT(status_of(req(g_port, "POST", "/stop", wrong)) == 401);
    EXPECT(status_of(req(g_port, "POST", "/stop", "Basic czNjcmV0")) == 401);
    EXPECT(status_of(req(g_port, "GET", "/status", NULL)) == 401);
    EXPECT(status_of(req(g_port, "GET", "/healthz", NULL)) == 200);
    EXPECT(status_of(req(g_port, "GET", "/status", bearer)) == 200);
    EXPECT(status_of(req(g_port, "GET", "/metrics", bearer)) == 200);
    EXPECT(status_server_take_actions(s) == 0); // refused requests set nothing

    // control actions
    r = req(g_port, "POST", "/checkpoint", bearer);
    EXPECT(r.status == 202);
    free(r.body);
    r = req(0, "POST", "/pause", NULL);
    EXPECT(r.status == 202 && strstr(r.body, "\"accepted\": \"pause\""));
    free(r.body);
    EXPECT(status_server_take_actions(s) == (STATUS_ACTION_CHECKPOINT | STATUS_ACTION_PAUSE));
    EXPECT(status_server_take_actions(s) == 0);
    double t0 = now_s();
    EXPECT(status_server_wait_actions(s, 100) == 0);
    EXPECT(now_s() - t0 >= 0.09);
}

// wait_actions wakes as soon as a request arrives
static void* post_resume_later(void* arg) {
    (void)arg;
    sleep_ms(100);
    status_of(req(0, "POST", "/resume", NULL));
    return NULL;
}

static void test_wait_actions(StatusServer* s) {
    pthread_t th;
    pthread_create(&th, NULL, post_resume_later, NULL);
    double t0 = now_s();
    unsigned a = status_server_wait_actions(s, 20000);
    double dt = now_s() - t0;
    pthread_join(th, NULL);
    EXPECT(a == STATUS_ACTION_RESUME);
    EXPECT(dt < 10);
    EXPECT(status_server_take_actions(s) == STATUS_ACTION_RESUME);
}

// ---------------------------------------------------------------------------
// load: NCLIENTS threads x ROUNDS, each round starting together

#define NCLIENTS 320
#define ROUNDS 6

static pthread_barrier_t g_barrier;
static atomic_int g_done, g_ok, g_requests;

static void* client_main(void* arg) {
    int id = (int)(intptr_t)arg;
    long long last_step = -1;
    char bearer[128], why[1024];
    snprintf(bearer, sizeof bearer, "Bearer %s", TOKEN);
    for (int round = 0; round < ROUNDS; round++) {
        int tcp = (id + round) % 2;
        int kind = (id + round) % 3;
        if (id % 64 == 0 && round == ROUNDS - 1) kind = 3; // a few control requests
        const char* path = kind == 0 ? "/status" : kind == 1 ? "/metrics" : kind == 2 ? "/healthz" : "/checkpoint";
        // every client connects, then all send together: NCLIENTS open
        // connections at once on the server
        int fd = tcp ? connect_tcp(g_port) : connect_unix(g_sock);
        pthread_barrier_wait(&g_barrier);
        char b[1024];
        size_t n = format_req(b, sizeof b, kind == 3 ? "POST" : "GET", path, tcp ? bearer : NULL);
        Resp r = {.status = -1};
        if (fd >= 0 && send_all(fd, b, n) == 0) r = read_resp(fd);
        else if (fd >= 0) close(fd);
        if (!r.body) r.body = strdup("");
        atomic_fetch_add(&g_requests, 1);
        int good = 0;
        if (kind == 0 && r.status == 200) {
            json_t* j = json_loads(r.body, 0, NULL);
            long long step = json_integer_value(json_object_get(j, "step"));
            good = json_is_object(j) && step >= last_step &&
                   json_array_size(json_object_get(json_object_get(j, "world"), "ranks")) == 2;
            last_step = step;
            json_decref(j);
        } else if (kind == 1 && r.status == 200) {
            good = prom_valid(r.body, why, sizeof why) && prom_value(r.body, "rlhfd_step") >= 0;
        } else if (kind == 2) {
            good = r.status == 200 && !strcmp(r.body, "ok\n");
        } else if (kind == 3) {
            good = r.status == 202;
        }
        if (good) atomic_fetch_add(&g_ok, 1);
        else fprintf(stderr, "  client %d round %d %s -> %d\n", id, round, path, r.status);
        free(r.body);
    }
    atomic_fetch_add(&g_done, 1);
    return NULL;
}

static void test_load(StatusServer* s) {
    pthread_barrier_init(&g_barrier, NULL, NCLIENTS);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t th[NCLIENTS];
    double t0 = now_s();
    for (int i = 0; i < NCLIENTS; i++) EXPECT(pthread_create(&th[i], &attr, client_main, (void*)(intptr_t)i) == 0);
    pthread_attr_destroy(&attr);
    // the training loop: publish as fast as it can while the clients hammer
    long long step = 10;
    double max_pub = 0, sum_pub = 0;
    long npub = 0;
    unsigned actions = 0;
    while (atomic_load(&g_done) < NCLIENTS) {
        json_t* snap = make_snapshot(step++, "node-b");
        double a = now_s();
        status_server_publish(s, snap);
        double dt = now_s() - a;
        json_decref(snap);
        if (dt > max_pub) max_pub = dt;
        sum_pub += dt;
        npub++;
        actions |= status_server_take_actions(s);
        sleep_ms(1);
    }
    for (int i = 0; i < NCLIENTS; i++) pthread_join(th[i], NULL);
    double wall = now_s() - t0;
    actions |= status_server_take_actions(s);
    pthread_barrier_destroy(&g_barrier);
    int total = atomic_load(&g_requests), ok = atomic_load(&g_ok);
    printf("load: %d clients x %d rounds: %d/%d requests ok in %.2f s (%.0f req/s); "
           "%ld publishes, publish latency mean %.1f us, max %.1f us\n",
           NCLIENTS, ROUNDS, ok, total, wall, total / wall, npub, 1e6 * sum_pub / (double)npub, 1e6 * max_pub);
    EXPECT(total == NCLIENTS * ROUNDS);
    EXPECT(ok == total);
    EXPECT(actions == STATUS_ACTION_CHECKPOINT);
    EXPECT(npub > 0);
}

// Over the connection limit: 503 (or closed); idle clients are closed after
// the idle timeout, which frees their slots.
static void test_limits(void) {
    char p[600], err[512];
    snprintf(p, sizeof p, "%s/limit.sock", g_dir);
    StatusServerOptions o = {.socket_path = p, .max_connections = 4, .idle_timeout_ms = 1500};
    StatusServer* s = status_server_start(&o, err, sizeof err);
    EXPECT(s != NULL);
    if (!s) return;
    int fds[4];
    for (int i = 0; i < 4; i++) fds[i] = connect_unix(p);
    sleep_ms(200); // let the server accept them
    int fd = connect_unix(p);
    EXPECT(fd >= 0);
    Resp r = read_resp(fd); // sent nothing: the server answers 503 and closes at once
    EXPECT(r.status == 503 || r.status == -1 || r.status == 0);
    EXPECT(r.status != 200);
    free(r.body);
    // the silent clients: closed by the server after ~1.5 s
    double t0 = now_s();
    for (int i = 0; i < 4; i++) {
        char b[16];
        ssize_t got = recv(fds[i], b, sizeof b, 0);
        EXPECT(got == 0 || (got < 0 && errno == ECONNRESET));
        close(fds[i]);
    }
    double dt = now_s() - t0 + 0.2;
    printf("idle timeout 1.5 s: silent clients closed after %.2f s\n", dt);
    EXPECT(dt < 15);
    // a client that sent half a request and went quiet: closed too
    fd = connect_unix(p);
    send_all(fd, "GET /sta", 8);
    r = read_resp(fd);
    EXPECT(r.status == 0 || r.status == -1);
    free(r.body);
    r = (Resp){0};
    char b[] = "GET /healthz HTTP/1.1\r\n\r\n";
    r = raw(0, p, b, sizeof b - 1);
    EXPECT(r.status == 200);
    free(r.body);
    status_server_stop(s);
}

// Mutated and truncated requests: every answer is a well-formed response or
// a close, and the server keeps answering afterwards.
static void test_fuzz(void) {
    static const char* seeds[] = {
        "GET /status HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /checkpoint HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "GET /metrics HTTP/1.0\r\nAuthorization: Bearer abc\r\n\r\n",
        "POST /stop HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    };
    unsigned long long x = 88172645463325252ull;
    int answered = 0, closed = 0;
    for (int i = 0; i < 300; i++) {
        char b[512];
        const char* seed = seeds[i % 4];
        size_t n = strlen(seed);
        memcpy(b, seed, n);
        for (int k = 0; k < 1 + i % 5; k++) { // xorshift mutations
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            size_t at = (size_t)(x % n);
            switch ((x >> 32) % 3) {
            case 0: b[at] = (char)(x >> 40); break;           // flip a byte
            case 1: n = at + 1; break;                         // truncate
            case 2: if (n < sizeof b - 1) b[n++] = (char)(x >> 48); break; // append
            }
        }
        int fd = connect_unix(g_sock);
        send_all(fd, b, n);
        shutdown(fd, SHUT_WR); // so a truncated request ends instead of idling
        Resp r = read_resp(fd);
        if (r.status >= 200 && r.status < 600) answered++;
        else if (r.status == 0) closed++;
        else EXPECT(r.status >= 200 || r.status == 0);
        // mutated control requests may be accepted: drop those bits
        free(r.body);
    }
    printf("fuzz: 300 mutated requests, %d answered, %d closed without an answer\n", answered, closed);
    EXPECT(answered + closed == 300);
    EXPECT(status_of(req(0, "GET", "/healthz", NULL)) == 200);
}

// ---------------------------------------------------------------------------
// child processes: rlhfctl and curl

typedef struct {
    int rc;
    char out[65536], err[8192];
} Run;

static void slurp(const char* path, char* dst, size_t cap) {
    FILE* f = fopen(path, "r");
    size_t n = f ? fread(dst, 1, cap - 1, f) : 0;
    dst[n] = '\0';
    if (f) fclose(f);
}

// Runs argv with environ minus RLHFD_SOCKET/RLHFD_TOKEN plus `extra_env`.
static Run* run(const char* extra_env, char* const argv[]) {
    static Run r;
    char out[600], errp[600];
    snprintf(out, sizeof out, "%s/out.txt", g_dir);
    snprintf(errp, sizeof errp, "%s/err.txt", g_dir);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    char* env[256];
    int ne = 0;
    for (char** e = environ; *e && ne < 250; e++)
        if (strncmp(*e, "RLHFD_SOCKET=", 13) && strncmp(*e, "RLHFD_TOKEN=", 12)) env[ne++] = *e;
    if (extra_env) env[ne++] = (char*)extra_env;
    env[ne] = NULL;
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    r.rc = -1;
    if (rc == 0) {
        int st;
        waitpid(pid, &st, 0);
        r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    }
    slurp(out, r.out, sizeof r.out);
    slurp(errp, r.err, sizeof r.err);
    return &r;
}

static void test_rlhfctl(StatusServer* s, const char* ctl) {
    json_t* snap = make_snapshot(42, "node-b");
    status_server_publish(s, snap);
    json_decref(snap);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", g_port);
    char* C = (char*)ctl;

    Run* r = run(NULL, (char*[]){C, "status", "--socket", g_sock, NULL});
    EXPECT(r->rc == 0);
    EXPECT(strstr(r->out, "42 / 100 (42.0%)") && strstr(r->out, "phase train"));
    EXPECT(strstr(r->out, "test-run") && strstr(r->out, "dp 2 x tp 1"));
    EXPECT(strstr(r->out, "node-b") && strstr(r->out, "kl/mean") && strstr(r->out, "1540.5 tokens/s"));
    EXPECT(strstr(r->out, "eta         5m 00s"));
    printf("rlhfctl status:\n%s", r->out);

    r = run(NULL, (char*[]){C, "status", "--json", "--socket", g_sock, NULL});
    json_t* j = json_loads(r->out, 0, NULL);
    EXPECT(r->rc == 0 && json_integer_value(json_object_get(j, "step")) == 42);
    json_decref(j);
    r = run(NULL, (char*[]){C, "status", "--run-dir", g_dir, NULL});
    EXPECT(r->rc == 0 && strstr(r->out, "42 / 100"));
    char env[700];
    snprintf(env, sizeof env, "RLHFD_SOCKET=%s", g_sock);
    r = run(env, (char*[]){C, "status", NULL});
    EXPECT(r->rc == 0 && strstr(r->out, "42 / 100"));
    r = run(NULL, (char*[]){C, "metrics", "--socket", g_sock, NULL});
    EXPECT(r->rc == 0 && prom_value(r->out, "rlhfd_step") == 42);
    r = run(NULL, (char*[]){C, "metrics", "--json", "--socket", g_sock, NULL});
    j = json_loads(r->out, 0, NULL);
    EXPECT(r->rc == 0 && json_is_number(json_object_get(j, "loss")));
    json_decref(j);
    r = run(NULL, (char*[]){C, "healthz", "--socket", g_sock, NULL});
    EXPECT(r->rc == 0 && !strcmp(r->out, "ok\n"));

    // control
    r = run(NULL, (char*[]){C, "checkpoint", "--socket", g_sock, NULL});
    EXPECT(r->rc == 0 && strstr(r->out, "checkpoint accepted"));
    EXPECT(status_server_take_actions(s) == STATUS_ACTION_CHECKPOINT);
    r = run(NULL, (char*[]){C, "pause", "--json", "--socket", g_sock, NULL});
    EXPECT(r->rc == 0 && strstr(r->out, "\"accepted\": \"pause\""));
    EXPECT(status_server_take_actions(s) == STATUS_ACTION_PAUSE);
    r = run(NULL, (char*[]){C, "stop", "--url", url, NULL});
    EXPECT(r->rc == 1 && strstr(r->err, "401"));
    EXPECT(status_server_take_actions(s) == 0);
    r = run(NULL, (char*[]){C, "stop", "--url", url, "--token", (char*)TOKEN, NULL});
    EXPECT(r->rc == 0);
    EXPECT(status_server_take_actions(s) == STATUS_ACTION_STOP);
    snprintf(env, sizeof env, "RLHFD_TOKEN=%s", TOKEN);
    r = run(env, (char*[]){C, "resume", "--url", url, NULL});
    EXPECT(r->rc == 0);
    EXPECT(status_server_take_actions(s) == STATUS_ACTION_RESUME);
    r = run(NULL, (char*[]){C, "status", "--url", url, "--token", (char*)TOKEN, NULL});
    EXPECT(r->rc == 0 && strstr(r->out, "42 / 100"));

    // exit codes: cannot connect (3, naming the socket), usage (2)
    char missing[600];
    snprintf(missing, sizeof missing, "%s/missing.sock", g_dir);
    r = run(NULL, (char*[]){C, "status", "--socket", missing, NULL});
    EXPECT(r->rc == 3 && strstr(r->err, missing));
    r = run(NULL, (char*[]){C, "status", "--url", "http://127.0.0.1:1", NULL});
    EXPECT(r->rc == 3);
    r = run(NULL, (char*[]){C, "frobnicate", "--socket", g_sock, NULL});
    EXPECT(r->rc == 2);
    r = run(NULL, (char*[]){C, "status", NULL});
    EXPECT(r->rc == 2 && strstr(r->err, "RLHFD_SOCKET"));
    r = run(NULL, (char*[]){C, "status", "--bogus", NULL});
    EXPECT(r->rc == 2);
    r = run(NULL, (char*[]){C, "status", "--url", "https://x:1", NULL});
    EXPECT(r->rc == 2);
    r = run(NULL, (char*[]){C, "--help", NULL});
    EXPECT(r->rc == 0 && strstr(r->out, "usage: rlhfctl"));
}

// curl, a real client, where it is installed
static void test_curl(StatusServer* s) {
    if (access("/usr/bin/curl", X_OK) != 0) { printf("curl: not installed, skipped\n"); return; }
    json_t* snap = make_snapshot(42, "node-b");
    status_server_publish(s, snap);
    json_decref(snap);
    Run* r = run(NULL, (char*[]){"curl", "-sS", "--fail", "--unix-socket", g_sock, "http://rlhfd/status", NULL});
    json_t* j = json_loads(r->out, 0, NULL);
    EXPECT(r->rc == 0 && json_integer_value(json_object_get(j, "step")) == 42);
    json_decref(j);
    r = run(NULL, (char*[]){"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{content_type}",
                            "--unix-socket", g_sock, "http://rlhfd/metrics", NULL});
    EXPECT(r->rc == 0 && !strcmp(r->out, "200 text/plain; version=0.0.4; charset=utf-8"));
    r = run(NULL, (char*[]){"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                            "--unix-socket", g_sock, "http://rlhfd/nowhere", NULL});
    EXPECT(r->rc == 0 && !strcmp(r->out, "404"));
}

int main(int argc, char** argv) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096) { // both ends of every client live here
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhfd_status_XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    snprintf(g_sock, sizeof g_sock, "%s/status.sock", g_dir);

    test_render();
    test_options_from_config();
    test_start_errors();

    char err[512];
    StatusServerOptions o = {.socket_path = g_sock, .listen = "127.0.0.1:0", .token = TOKEN,
                             .max_connections = 1024, .max_request_bytes = 8192, .idle_timeout_ms = 10000};
    StatusServer* s = status_server_start(&o, err, sizeof err);
    if (!s) { fprintf(stderr, "FAIL: %s\n", err); return 1; }
    g_port = status_server_tcp_port(s);
    EXPECT(g_port > 0);
    test_endpoints(s);
    test_wait_actions(s);
    test_load(s);
    test_limits();
    if (argc > 1) test_rlhfctl(s, argv[1]);
    test_curl(s);
    test_fuzz();
    status_server_take_actions(s);
    // stop with clients still connected: they see the connection close
    int idle[3];
    for (int i = 0; i < 3; i++) idle[i] = connect_unix(g_sock);
    sleep_ms(100);
    double t0 = now_s();
    status_server_stop(s);
    for (int i = 0; i < 3; i++) {
        char b[8];
        EXPECT(idle[i] >= 0 && recv(idle[i], b, sizeof b, 0) <= 0);
        close(idle[i]);
    }
    EXPECT(now_s() - t0 < 5);
    struct stat st;
    EXPECT(stat(g_sock, &st) != 0); // the socket file is gone

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    int f = atomic_load(&failures);
    if (f) { fprintf(stderr, "%d check(s) failed\n", f); return 1; }
    printf("status server: all checks passed\n");
    return 0;
}
