// rlhfctl - talks to a running rlhfd's status socket (coordinator/status_server.h).
//
//   rlhfctl status|metrics|healthz|checkpoint|pause|resume|stop
//           [--socket PATH | --run-dir DIR | --url http://127.0.0.1:PORT [--token T]] [--json]
//
// One HTTP/1.1 request per call over plain POSIX sockets (Unix or TCP); the
// response is parsed with http-parser. Exit codes: 0 ok, 1 the server
// answered an error (or nonsense), 2 usage, 3 cannot connect.
#include <errno.h>
#include <http_parser.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXIT_SERVER 1
#define EXIT_USAGE 2
#define EXIT_CONNECT 3
#define MAX_RESPONSE (64u << 20)

static const char* USAGE =
    "usage: rlhfctl ACTION [--socket PATH | --run-dir DIR | --url URL [--token T]] [--json]\n"
    "\n"
    "Talks to a running rlhfd through its status socket (RUN_DIR/status.sock).\n"
    "\n"
    "actions:\n"
    "  status       step, phase, ETA, throughput, layout, per-rank heartbeats, metrics\n"
    "  metrics      the Prometheus text of GET /metrics (--json: the metrics object)\n"
    "  healthz      prints ok when the server answers\n"
    "  checkpoint   write a checkpoint after the current step\n"
    "  pause        pause training after the current step\n"
    "  resume       resume a paused run\n"
    "  stop         graceful stop: finish the step, checkpoint, exit 0\n"
    "\n"
    "options:\n"
    "  --socket PATH    the run's Unix socket (default: $RLHFD_SOCKET)\n"
    "  --run-dir DIR    same as --socket DIR/status.sock\n"
    "  --url URL        http://HOST:PORT of the run's TCP listener (status.listen)\n"
    "  --token T        bearer token for --url (default: $RLHFD_TOKEN)\n"
    "  --json           print the server's JSON as is\n"
    "  --timeout S      seconds to wait for the server (default 10)\n"
    "  --help           show this help\n"
    "\n"
    "exit codes: 0 ok, 1 the server answered an error, 2 usage, 3 cannot connect\n";

__attribute__((noreturn, format(printf, 2, 3)))
static void die(int code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("rlhfctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    if (code == EXIT_USAGE) fputs(" (see rlhfctl --help)", stderr);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static void* xrealloc(void* p, size_t n) {
    void* q = realloc(p, n ? n : 1);
    if (!q) die(EXIT_SERVER, "out of memory");
    return q;
}

// ---------------------------------------------------------------------------
// transport

typedef struct {
    const char* socket_path; // Unix socket, or NULL for TCP
    char host[256];
    int port;
    char prefix[256];        // path prefix from --url ("" or "/x")
    const char* token;
    double timeout_s;
    char where[4200];        // for messages: the socket path or the URL
} Target;

static void set_timeouts(int fd, double s) {
    struct timeval tv = {.tv_sec = (time_t)s, .tv_usec = (suseconds_t)((s - floor(s)) * 1e6)};
    // SO_SNDTIMEO also bounds connect() on Linux
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int connect_target(const Target* t) {
    if (t->socket_path) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(t->socket_path) >= sizeof a.sun_path)
            die(EXIT_CONNECT, "cannot connect to status socket %s: path longer than %zu bytes", t->socket_path,
                sizeof a.sun_path - 1);
        strcpy(a.sun_path, t->socket_path);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) die(EXIT_CONNECT, "socket: %s", strerror(errno));
        set_timeouts(fd, t->timeout_s);
        if (connect(fd, (struct sockaddr*)&a, sizeof a) != 0)
            die(EXIT_CONNECT, "cannot connect to status socket %s: %s (is the run alive?)", t->socket_path,
                strerror(errno));
        return fd;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", t->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(t->host, port, &hints, &res);
    if (rc != 0) die(EXIT_CONNECT, "cannot connect to %s: %s", t->where, gai_strerror(rc));
    int fd = -1, err = 0;
    for (struct addrinfo* ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) { err = errno; continue; }
        set_timeouts(fd, t->timeout_s);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) die(EXIT_CONNECT, "cannot connect to %s: %s (is the run alive?)", t->where, strerror(err));
    return fd;
}

typedef struct {
    int status;
    char* body;
    size_t body_len;
    int done;
} Response;

static int on_body(http_parser* p, const char* at, size_t n) {
    Response* r = p->data;
    if (r->body_len + n > MAX_RESPONSE) return 1;
    r->body = xrealloc(r->body, r->body_len + n + 1);
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

static int on_complete(http_parser* p) {
    Response* r = p->data;
    r->status = (int)p->status_code;
    r->done = 1;
    return 0;
}

// One request; the whole response is read (the server closes after it).
static Response request(const Target* t, const char* method, const char* path) {
    int fd = connect_target(t);
    char req[2048];
    char auth[600] = "";
    if (!t->socket_path && t->token && t->token[0]) {
        if (strlen(t->token) > 500) die(EXIT_USAGE, "--token is too long");
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", t->token);
    }
    int n = snprintf(req, sizeof req,
                     "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: rlhfctl\r\nAccept: */*\r\n"
                     "Connection: close\r\n%s%s\r\n",
                     method, t->prefix, path, t->socket_path ? "localhost" : t->host, auth,
                     strcmp(method, "POST") ? "" : "Content-Length: 0\r\n");
    if (n < 0 || (size_t)n >= sizeof req) die(EXIT_USAGE, "request too long");
    for (int off = 0; off < n;) {
        ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die(EXIT_CONNECT, "cannot send to %s: %s", t->where, strerror(errno));
        off += (int)w;
    }
    Response r = {0};
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = &r;
    http_parser_settings st;
    http_parser_settings_init(&st);
    st.on_body = on_body;
    st.on_message_complete = on_complete;
    char buf[16384];
    for (;;) {
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                die(EXIT_SERVER, "%s did not answer within %g s", t->where, t->timeout_s);
            if (r.done) break; // a reset after the whole response: fine
            die(EXIT_SERVER, "reading from %s: %s", t->where, strerror(errno));
        }
        size_t used = http_parser_execute(&p, &st, buf, (size_t)got); // got == 0 signals EOF
        if (HTTP_PARSER_ERRNO(&p) != HPE_OK || used != (size_t)got)
            die(EXIT_SERVER, "malformed HTTP response from %s: %s", t->where,
                http_errno_description(HTTP_PARSER_ERRNO(&p)));
        if (got == 0 || r.done) break;
    }
    close(fd);
    if (!r.done) die(EXIT_SERVER, "%s closed the connection before a whole response", t->where);
    if (!r.body) r.body = xrealloc(NULL, 1), r.body[0] = '\0';
    return r;
}

// A 4xx/5xx: the server's {"error": ...} message, exit 1.
static void check_status(const Target* t, const Response* r) {
    if (r->status >= 200 && r->status < 300) return;
    json_t* j = json_loads(r->body, 0, NULL);
    const char* msg = json_string_value(json_object_get(j, "error"));
    fprintf(stderr, "rlhfctl: %s answered HTTP %d: %s\n", t->where, r->status,
            msg ? msg : (r->body_len ? r->body : "(no body)"));
    json_decref(j);
    exit(EXIT_SERVER);
}

static json_t* parse_json(const Target* t, const Response* r) {
    json_error_t e;
    json_t* j = json_loads(r->body, 0, &e);
    if (!json_is_object(j)) die(EXIT_SERVER, "%s sent invalid JSON: %s", t->where, e.text);
    return j;
}

// ---------------------------------------------------------------------------
// the status table

static void fmt_duration(char* out, size_t n, double s) {
    if (s < 0 || !isfinite(s)) { snprintf(out, n, "?"); return; }
    long long t = (long long)(s + 0.5);
    if (s < 60) snprintf(out, n, "%.1fs", s);
    else if (t < 3600) snprintf(out, n, "%lldm %02llds", t / 60, t % 60);
    else if (t < 86400) snprintf(out, n, "%lldh %02lldm", t / 3600, (t % 3600) / 60);
    else snprintf(out, n, "%lldd %02lldh", t / 86400, (t % 86400) / 3600);
}

static const char* str(const json_t* o, const char* k) {
    const char* s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

static double number(const json_t* o, const char* k, double dflt) {
    const json_t* v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static void print_status_table(json_t* j) {
    char a[64], b[96];
    const char* cmd = str(j, "command");
    const char* algo = str(j, "algorithm");
    printf("run         %s   %s", str(j, "run_id"), cmd);
    if (strcmp(cmd, algo)) printf(" (%s)", algo);
    printf("\n");
    double step = number(j, "step", -1), total = number(j, "total_steps", 0);
    printf("step        %.0f / %.0f", step, total);
    if (total > 0 && step >= 0) printf(" (%.1f%%)", 100.0 * step / total);
    printf("   phase %s%s\n", str(j, "phase"), json_is_true(json_object_get(j, "paused")) ? "   PAUSED" : "");
    double eta = number(j, "eta_s", -1);
    fmt_duration(a, sizeof a, eta);
    printf("eta         %s\n", eta >= 0 ? a : "unknown");
    const json_t* tp = json_object_get(j, "throughput");
    printf("throughput  %.1f tokens/s   %.3g steps/s\n", number(tp, "tokens_per_s", 0),
           number(tp, "steps_per_s", 0));
    const json_t* w = json_object_get(j, "world");
    printf("layout      world %.0f = dp %.0f x tp %.0f\n", number(w, "size", 1), number(w, "dp", 1),
           number(w, "tp", 1));
    double started = number(j, "started_unix", 0);
    if (started > 0) {
        time_t st = (time_t)started;
        struct tm tm;
        localtime_r(&st, &tm);
        strftime(a, sizeof a, "%Y-%m-%d %H:%M:%S", &tm);
        struct timeval now;
        gettimeofday(&now, NULL);
        double ago = (double)now.tv_sec + 1e-6 * (double)now.tv_usec - started;
        fmt_duration(b, sizeof b, ago > 0 ? ago : 0); // clocks of two hosts may disagree a little
        printf("started     %s (%s ago)\n", a, b);
    }
    printf("run dir     %s\n", str(j, "run_dir"));
    double age = number(j, "snapshot_age_s", -1);
    if (age >= 0) {
        fmt_duration(a, sizeof a, age);
        printf("updated     %s ago\n", a);
    }
    const json_t* ranks = json_object_get(w, "ranks");
    if (json_array_size(ranks)) {
        printf("\n%-6s %-24s %s\n", "rank", "host", "last heartbeat");
        size_t i;
        const json_t* r;
        json_array_foreach(ranks, i, r) {
            const json_t* hb = json_object_get(r, "heartbeat_age_s");
            if (json_is_number(hb)) {
                fmt_duration(a, sizeof a, json_number_value(hb));
                snprintf(b, sizeof b, "%s ago", a);
            } else {
                snprintf(b, sizeof b, "never");
            }
            printf("%-6.0f %-24s %s\n", number(r, "rank", -1), str(r, "host"), b);
        }
    }
    const json_t* m = json_object_get(j, "metrics");
    if (json_object_size(m)) {
        size_t width = 6;
        const char* k;
        json_t* v;
        json_object_foreach((json_t*)m, k, v) if (strlen(k) > width) width = strlen(k);
        if (width > 40) width = 40;
        printf("\n%-*s  %s\n", (int)width, "metric", "value");
        json_object_foreach((json_t*)m, k, v) {
            if (json_is_number(v)) printf("%-*s  %.6g\n", (int)width, k, json_number_value(v));
            else printf("%-*s  -\n", (int)width, k);
        }
    }
}

// ---------------------------------------------------------------------------

static void parse_url(Target* t, const char* url) {
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, strlen(url), 0, &u) != 0 || !(u.field_set & (1 << UF_HOST)))
        die(EXIT_USAGE, "--url %s: expected http://HOST:PORT", url);
    if (u.field_set & (1 << UF_SCHEMA)) {
        size_t n = u.field_data[UF_SCHEMA].len;
        if (n != 4 || strncasecmp(url + u.field_data[UF_SCHEMA].off, "http", 4))
            die(EXIT_USAGE, "--url %s: only http:// is supported (use an SSH tunnel for remote runs)", url);
    }
    size_t hl = u.field_data[UF_HOST].len;
    if (hl >= sizeof t->host) die(EXIT_USAGE, "--url %s: host too long", url);
    memcpy(t->host, url + u.field_data[UF_HOST].off, hl);
    t->host[hl] = '\0';
    t->port = (u.field_set & (1 << UF_PORT)) ? u.port : 80;
    if (u.field_set & (1 << UF_PATH)) {
        size_t pl = u.field_data[UF_PATH].len;
        const char* p = url + u.field_data[UF_PATH].off;
        while (pl > 0 && p[pl - 1] == '/') pl--;
        if (pl >= sizeof t->prefix) die(EXIT_USAGE, "--url %s: path too long", url);
        memcpy(t->prefix, p, pl);
        t->prefix[pl] = '\0';
    }
    snprintf(t->where, sizeof t->where, "%s", url);
}

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    const char *action = NULL, *sock = NULL, *run_dir = NULL, *url = NULL, *token = NULL, *timeout = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(USAGE, stdout); return 0; }
        if (!strcmp(a, "--json")) { json = 1; continue; }
        const char** dest = !strcmp(a, "--socket") ? &sock : !strcmp(a, "--run-dir") ? &run_dir
                          : !strcmp(a, "--url") ? &url : !strcmp(a, "--token") ? &token
                          : !strcmp(a, "--timeout") ? &timeout : NULL;
        if (dest) {
            if (i + 1 >= argc) die(EXIT_USAGE, "%s needs a value", a);
            *dest = argv[++i];
            continue;
        }
        if (a[0] == '-') die(EXIT_USAGE, "unknown option '%s'", a);
        if (action) die(EXIT_USAGE, "one action at a time ('%s' and '%s')", action, a);
        action = a;
    }
    if (!action) die(EXIT_USAGE, "no action (status, metrics, healthz, checkpoint, pause, resume, stop)");
    static const char* ACTIONS[] = {"status", "metrics", "healthz", "checkpoint", "pause", "resume", "stop"};
    int known = 0;
    for (int i = 0; i < 7; i++) known |= !strcmp(action, ACTIONS[i]);
    if (!known) die(EXIT_USAGE, "unknown action '%s' (status, metrics, healthz, checkpoint, pause, resume, stop)",
                    action);
    if ((sock != NULL) + (run_dir != NULL) + (url != NULL) > 1)
        die(EXIT_USAGE, "give one of --socket, --run-dir, --url");

    Target t = {.timeout_s = 10};
    if (timeout) {
        char* end;
        t.timeout_s = strtod(timeout, &end);
        if (*end || end == timeout || !(t.timeout_s > 0) || t.timeout_s > 1e6)
            die(EXIT_USAGE, "--timeout expects seconds > 0, got '%s'", timeout);
    }
    char path[4096];
    if (url) {
        parse_url(&t, url);
        t.token = token ? token : getenv("RLHFD_TOKEN");
    } else {
        if (token) die(EXIT_USAGE, "--token goes with --url (the Unix socket needs none)");
        if (run_dir) snprintf(path, sizeof path, "%s/status.sock", run_dir);
        else if (sock) snprintf(path, sizeof path, "%s", sock);
        else if (getenv("RLHFD_SOCKET") && getenv("RLHFD_SOCKET")[0]) snprintf(path, sizeof path, "%s", getenv("RLHFD_SOCKET"));
        else die(EXIT_USAGE, "which run? give --socket PATH, --run-dir DIR or --url URL, or set RLHFD_SOCKET");
        t.socket_path = path;
        snprintf(t.where, sizeof t.where, "status socket %s", path);
    }

    if (!strcmp(action, "status") || (!strcmp(action, "metrics") && json)) {
        Response r = request(&t, "GET", "/status");
        check_status(&t, &r);
        json_t* j = parse_json(&t, &r);
        if (!strcmp(action, "metrics")) {
            json_t* m = json_object_get(j, "metrics");
            char* s = m ? json_dumps(m, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
            printf("%s\n", s ? s : "{}");
            free(s);
        } else if (json) {
            fwrite(r.body, 1, r.body_len, stdout);
            if (r.body_len && r.body[r.body_len - 1] != '\n') putchar('\n');
        } else {
            print_status_table(j);
        }
        json_decref(j);
        free(r.body);
        return 0;
    }
    if (!strcmp(action, "metrics") || !strcmp(action, "healthz")) {
        Response r = request(&t, "GET", !strcmp(action, "metrics") ? "/metrics" : "/healthz");
        check_status(&t, &r);
        fwrite(r.body, 1, r.body_len, stdout);
        free(r.body);
        return 0;
    }
    // control actions
    char p[32];
    snprintf(p, sizeof p, "/%s", action);
    Response r = request(&t, "POST", p);
    check_status(&t, &r);
    if (json) {
        fwrite(r.body, 1, r.body_len, stdout);
    } else {
        const char* what = !strcmp(action, "checkpoint") ? "a checkpoint is written after the current step"
                         : !strcmp(action, "pause")      ? "training pauses after the current step"
                         : !strcmp(action, "resume")     ? "a paused run resumes"
                                                         : "the run finishes its step, checkpoints and exits";
        printf("%s accepted: %s\n", action, what);
    }
    free(r.body);
    return 0;
}
