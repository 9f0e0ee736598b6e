// status_server.c - HTTP/1.1 status server: a libuv loop on its own thread,
// http-parser for requests, one response per connection.
//
// Threads: the caller's thread (training) only calls publish/take_actions/
// wait_actions/stop; everything else runs on the server thread, which owns
// the loop, the listeners and the connections. The two share:
//   - the current snapshot: a refcounted holder swapped under `snap_mu`
//     (held for a pointer exchange; rendering happens outside it);
//   - the action bits: an atomic word (plus a condvar for wait_actions);
//   - the stop request: uv_async_send.
//
// A connection: READING (parse, at most max_request_bytes, deadline
// idle_timeout_ms from accept) -> RESPONDING (one uv_write) -> LINGER
// (shutdown sent; keep reading and discarding until the client closes, so
// the kernel does not answer unread bytes with a reset that would eat our
// response) -> closed. Over max_connections a new client gets a 503 and is
// closed at once.
#include "status_server.h"
#include "status_render.h"
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "common/check.h"

#define READ_BUF 4096
#define URL_MAX 512
#define AUTH_MAX 512
#define LINGER_MS 2000

typedef struct {
    atomic_int refs;
    json_t* json;          // immutable once published
    double published_unix;
} Snapshot;

typedef enum { CONN_READING, CONN_RESPONDING, CONN_LINGER, CONN_CLOSING } ConnState;

typedef struct Conn {
    union { uv_stream_t stream; uv_pipe_t pipe; uv_tcp_t tcp; } h; // first: h.stream.data == conn
    uv_timer_t timer;
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    http_parser parser;
    struct StatusServer* srv;
    struct Conn *prev, *next;  // live connections (not the rejected ones)
    ConnState state;
    int is_tcp, counted, peer_eof, open_handles, message_done;
    size_t received;
    char url[URL_MAX];
    size_t url_len;
    int url_overflow;
    char field[16];            // current header name, enough for "authorization"
    size_t field_len;
    int field_overflow, in_value, field_is_auth;
    char auth[AUTH_MAX];
    size_t auth_len;
    int auth_overflow, has_auth;
    char* response;
    char readbuf[READ_BUF];
} Conn;

struct StatusServer {
    uv_loop_t loop;
    uv_pipe_t pipe;
    uv_tcp_t tcp;
    uv_async_t wake;
    int has_pipe, has_tcp, tcp_port;
    pthread_t thread;
    char* socket_path;
    char* token;
    int max_conns, max_req, idle_ms;
    // server thread only
    Conn* conns;
    int nconns, stopping;
    unsigned long long requests;
    http_parser_settings settings;
    // shared with the caller's thread
    pthread_mutex_t snap_mu;
    Snapshot* snap;
    atomic_uint actions;
    pthread_mutex_t act_mu;
    pthread_cond_t act_cv;
};

static void snap_release(Snapshot* sn) {
    if (sn && atomic_fetch_sub_explicit(&sn->refs, 1, memory_order_acq_rel) == 1) {
        json_decref(sn->json);
        free(sn);
    }
}

static Snapshot* snap_acquire(StatusServer* s) {
    pthread_mutex_lock(&s->snap_mu);
    Snapshot* sn = s->snap;
    if (sn) atomic_fetch_add_explicit(&sn->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&s->snap_mu);
    return sn;
}

// ---------------------------------------------------------------------------
// connections

static void on_handle_closed(uv_handle_t* h) {
    Conn* c = h->data;
    if (--c->open_handles == 0) {
        free(c->response);
        free(c);
    }
}

static void conn_close(Conn* c) {
    if (c->state == CONN_CLOSING) return;
    c->state = CONN_CLOSING;
    StatusServer* s = c->srv;
    if (c->counted) {
        if (c->prev) c->prev->next = c->next;
        else s->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        s->nconns--;
    }
    uv_close((uv_handle_t*)&c->h.stream, on_handle_closed);
    uv_close((uv_handle_t*)&c->timer, on_handle_closed);
}

static void on_timer(uv_timer_t* t) { conn_close(t->data); }

static void on_shutdown(uv_shutdown_t* req, int status) {
    Conn* c = req->data;
    if (c->state == CONN_CLOSING) return;
    if (status < 0 || c->peer_eof || c->srv->stopping) { conn_close(c); return; }
    c->state = CONN_LINGER;
    int ms = c->srv->idle_ms < LINGER_MS ? c->srv->idle_ms : LINGER_MS;
    uv_timer_start(&c->timer, on_timer, (uint64_t)ms, 0);
}

static void on_write(uv_write_t* req, int status) {
    Conn* c = req->data;
    if (c->state == CONN_CLOSING) return;
    if (status < 0 || c->srv->stopping) { conn_close(c); return; }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, &c->h.stream, on_shutdown) < 0) conn_close(c);
}

static const char* reason(int code) {
    switch (code) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

// Formats a whole response (headers + body) into a malloc'd buffer.
static char* format_response(int code, const char* ctype, const char* body, const char* extra, size_t* len) {
    size_t blen = strlen(body);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                     code, reason(code), ctype, blen, extra ? extra : "");
    assertCheck(n > 0 && (size_t)n < sizeof head);
    char* out = mallocCheck((size_t)n + blen);
    memcpy(out, head, (size_t)n);
    memcpy(out + n, body, blen);
    *len = (size_t)n + blen;
    return out;
}

// Queues the response; the connection closes once it is sent.
static void respond(Conn* c, int code, const char* ctype, const char* body, const char* extra) {
    if (c->state != CONN_READING) return;
    c->state = CONN_RESPONDING;
    c->srv->requests++;
    size_t len;
    c->response = format_response(code, ctype, body, extra, &len);
    uv_buf_t buf = uv_buf_init(c->response, (unsigned)len);
    c->write_req.data = c;
    // the idle timeout also bounds a client that never reads its response
    uv_timer_start(&c->timer, on_timer, (uint64_t)c->srv->idle_ms, 0);
    if (uv_write(&c->write_req, &c->h.stream, &buf, 1, on_write) < 0) conn_close(c);
}

static void respond_error(Conn* c, int code, const char* msg, const char* extra) {
    char body[256];
    json_t* o = json_pack("{s:i, s:s}", "status", code, "error", msg);
    char* t = json_dumps(o, JSON_COMPACT);
    snprintf(body, sizeof body, "%s\n", t ? t : "{}");
    free(t);
    json_decref(o);
    respond(c, code, "application/json", body, extra);
}

// Compares the bearer token without an early exit (no timing oracle).
static int token_ok(const StatusServer* s, const Conn* c) {
    if (!s->token || !c->has_auth || c->auth_overflow) return 0;
    const char* a = c->auth;
    if (strncasecmp(a, "Bearer ", 7) != 0) return 0;
    a += 7;
    while (*a == ' ') a++;
    size_t n = strlen(a), m = strlen(s->token);
    unsigned diff = (unsigned)(n != m);
    for (size_t i = 0; i < m; i++) diff |= (unsigned char)s->token[i] ^ (unsigned char)(i < n ? a[i] : 0);
    return diff == 0;
}

typedef enum { EP_STATUS, EP_METRICS, EP_HEALTHZ, EP_ACTION } Endpoint;
static const struct { const char* path; int method; Endpoint ep; unsigned action; } ROUTES[] = {
    {"/status", HTTP_GET, EP_STATUS, 0},
    {"/metrics", HTTP_GET, EP_METRICS, 0},
    {"/healthz", HTTP_GET, EP_HEALTHZ, 0},
    {"/checkpoint", HTTP_POST, EP_ACTION, STATUS_ACTION_CHECKPOINT},
    {"/pause", HTTP_POST, EP_ACTION, STATUS_ACTION_PAUSE},
    {"/resume", HTTP_POST, EP_ACTION, STATUS_ACTION_RESUME},
    {"/stop", HTTP_POST, EP_ACTION, STATUS_ACTION_STOP},
};

static void dispatch(Conn* c) {
    StatusServer* s = c->srv;
    if (c->url_overflow) { respond_error(c, 414, "URL too long", NULL); return; }
    size_t plen = strcspn(c->url, "?#");
    int r = -1;
    for (int i = 0; i < (int)(sizeof ROUTES / sizeof ROUTES[0]); i++)
        if (strlen(ROUTES[i].path) == plen && !strncmp(ROUTES[i].path, c->url, plen)) r = i;
    if (r < 0) { respond_error(c, 404, "unknown path (try /status, /metrics, /healthz)", NULL); return; }
    if ((int)c->parser.method != ROUTES[r].method) {
        respond_error(c, 405, ROUTES[r].method == HTTP_GET ? "use GET" : "use POST",
                      ROUTES[r].method == HTTP_GET ? "Allow: GET\r\n" : "Allow: POST\r\n");
        return;
    }
    Endpoint ep = ROUTES[r].ep;
    int need_token = c->is_tcp && (ep == EP_ACTION || (s->token && ep != EP_HEALTHZ));
    if (need_token && !token_ok(s, c)) {
        respond_error(c, 401, s->token ? "missing or wrong bearer token"
                                       : "control over TCP needs status.token (use the Unix socket)",
                      "WWW-Authenticate: Bearer realm=\"rlhfd\"\r\n");
        return;
    }
    switch (ep) {
    case EP_HEALTHZ: respond(c, 200, "text/plain; charset=utf-8", "ok\n", NULL); break;
    case EP_STATUS: {
        Snapshot* sn = snap_acquire(s);
        if (!sn) { respond_error(c, 503, "no status published yet", NULL); break; }
        char* body = status_render_json(sn->json, sn->published_unix, status_now_unix());
        snap_release(sn);
        respond(c, 200, "application/json", body, NULL);
        free(body);
        break;
    }
    case EP_METRICS: {
        Snapshot* sn = snap_acquire(s);
        // counts this request too: the counter is what a scraper sees after it
        char* body = status_render_prometheus(sn ? sn->json : NULL, sn ? sn->published_unix : 0,
                                              status_now_unix(), s->requests + 1);
        snap_release(sn);
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body, NULL);
        free(body);
        break;
    }
    case EP_ACTION: {
        atomic_fetch_or(&s->actions, ROUTES[r].action);
        pthread_mutex_lock(&s->act_mu);
        pthread_cond_broadcast(&s->act_cv);
        pthread_mutex_unlock(&s->act_mu);
        char body[64];
        snprintf(body, sizeof body, "{\"accepted\": \"%s\"}\n", ROUTES[r].path + 1);
        respond(c, 202, "application/json", body, NULL);
        break;
    }
    }
}

// http-parser callbacks: collect the URL and the Authorization header.
static int on_url(http_parser* p, const char* at, size_t n) {
    Conn* c = p->data;
    if (c->url_len + n >= URL_MAX) { c->url_overflow = 1; return 0; }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    c->url[c->url_len] = '\0';
    return 0;
}

static int on_header_field(http_parser* p, const char* at, size_t n) {
    Conn* c = p->data;
    if (c->in_value) { c->in_value = 0; c->field_len = 0; c->field_overflow = 0; }
    if (c->field_len + n >= sizeof c->field) { c->field_overflow = 1; return 0; }
    memcpy(c->field + c->field_len, at, n);
    c->field_len += n;
    c->field[c->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser* p, const char* at, size_t n) {
    Conn* c = p->data;
    if (!c->in_value) { // first piece of this value: is it Authorization?
        c->in_value = 1;
        c->field_is_auth = !c->field_overflow && !strcasecmp(c->field, "authorization");
        if (c->field_is_auth) { c->has_auth = 1; c->auth_len = 0; c->auth_overflow = 0; c->auth[0] = '\0'; }
    }
    if (!c->field_is_auth) return 0;
    if (c->auth_len + n >= AUTH_MAX) { c->auth_overflow = 1; return 0; }
    memcpy(c->auth + c->auth_len, at, n);
    c->auth_len += n;
    c->auth[c->auth_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser* p) {
    Conn* c = p->data;
    c->message_done = 1;
    http_parser_pause(p, 1); // one request per connection: ignore what follows
    return 0;
}

static void on_alloc(uv_handle_t* h, size_t hint, uv_buf_t* buf) {
    (void)hint;
    Conn* c = h->data;
    *buf = uv_buf_init(c->readbuf, sizeof c->readbuf);
}

static void on_read(uv_stream_t* st, ssize_t nread, const uv_buf_t* buf) {
    Conn* c = st->data;
    if (nread == 0 || c->state == CONN_CLOSING) return;
    if (nread < 0) {
        if (nread != UV_EOF) { conn_close(c); return; }
        c->peer_eof = 1;
        if (c->state == CONN_READING) {
            if (c->received == 0) conn_close(c); // connected and left
            else respond_error(c, 400, "incomplete request", NULL);
        } else if (c->state == CONN_LINGER) {
            conn_close(c);
        } // RESPONDING: closes once the response is out
        return;
    }
    if (c->state != CONN_READING) return; // discard what follows the request
    c->received += (size_t)nread;
    if (c->received > (size_t)c->srv->max_req) {
        char msg[96];
        snprintf(msg, sizeof msg, "request over %d bytes", c->srv->max_req);
        respond_error(c, 413, msg, NULL);
        return;
    }
    size_t used = http_parser_execute(&c->parser, &c->srv->settings, buf->base, (size_t)nread);
    if (c->message_done) { dispatch(c); return; }
    if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || used != (size_t)nread || c->parser.upgrade)
        respond_error(c, 400, "malformed HTTP request", NULL);
}

static void on_connection(uv_stream_t* server, int status) {
    StatusServer* s = server->data;
    if (status < 0 || s->stopping) return;
    Conn* c = callocCheck(1, sizeof(Conn));
    c->srv = s;
    c->is_tcp = server->type == UV_TCP;
    if (c->is_tcp) uv_tcp_init(&s->loop, &c->h.tcp);
    else uv_pipe_init(&s->loop, &c->h.pipe, 0);
    uv_timer_init(&s->loop, &c->timer);
    c->h.stream.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->state = CONN_READING;
    if (uv_accept(server, &c->h.stream) < 0) { conn_close(c); return; }
    if (s->nconns >= s->max_conns) {
        // best effort, never waits: the socket buffer of a fresh connection
        // always has room for this
        size_t len;
        c->response = format_response(503, "application/json",
                                      "{\"status\": 503, \"error\": \"too many connections\"}\n", NULL, &len);
        uv_buf_t b = uv_buf_init(c->response, (unsigned)len);
        uv_try_write(&c->h.stream, &b, 1);
        s->requests++;
        conn_close(c);
        return;
    }
    c->counted = 1;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    uv_timer_start(&c->timer, on_timer, (uint64_t)s->idle_ms, 0);
    if (uv_read_start(&c->h.stream, on_alloc, on_read) < 0) conn_close(c);
}

// ---------------------------------------------------------------------------
// lifecycle

static void on_wake(uv_async_t* a) {
    StatusServer* s = a->data;
    s->stopping = 1;
    if (s->has_pipe) uv_close((uv_handle_t*)&s->pipe, NULL);
    if (s->has_tcp) uv_close((uv_handle_t*)&s->tcp, NULL);
    while (s->conns) conn_close(s->conns);
    uv_close((uv_handle_t*)&s->wake, NULL);
}

static void* server_main(void* arg) {
    StatusServer* s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

__attribute__((format(printf, 3, 4)))
static void set_err(char* err, size_t errlen, const char* fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

// Frees a server whose thread never started (start failed half way).
static void destroy_unstarted(StatusServer* s) {
    if (s->has_pipe) uv_close((uv_handle_t*)&s->pipe, NULL);
    if (s->has_tcp) uv_close((uv_handle_t*)&s->tcp, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT); // runs the close callbacks
    uv_loop_close(&s->loop);
    free(s->socket_path);
    free(s->token);
    free(s);
}

// Replaces a stale socket file; refuses a live one and anything not a socket.
static int clear_socket_path(const char* path, char* err, size_t errlen) {
    struct stat st;
    if (lstat(path, &st) != 0) return 0;
    if (!S_ISSOCK(st.st_mode)) {
        set_err(err, errlen, "status socket %s: the path exists and is not a socket", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        memcpy(a.sun_path, path, strlen(path) + 1);
        int live = connect(fd, (struct sockaddr*)&a, sizeof a) == 0;
        close(fd);
        if (live) {
            set_err(err, errlen, "status socket %s: another process is serving it (a run in the same directory?)",
                    path);
            return -1;
        }
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        set_err(err, errlen, "status socket %s: cannot remove the stale socket: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int bind_unix(StatusServer* s, const char* path, char* err, size_t errlen) {
    size_t max = sizeof(((struct sockaddr_un*)0)->sun_path) - 1;
    if (strlen(path) > max) {
        set_err(err, errlen, "status socket %s: path is %zu bytes, a Unix socket path may have at most %zu "
                "(use a shorter run directory)", path, strlen(path), max);
        return -1;
    }
    // libuv reports a missing directory as EACCES: look first, say it plainly
    char dir[sizeof(((struct sockaddr_un*)0)->sun_path)];
    const char* slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (slash == path ? 1 : (int)(slash - path)) : 1, slash ? path : ".");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "status socket %s: directory %s does not exist", path, dir);
        return -1;
    }
    if (clear_socket_path(path, err, errlen) != 0) return -1;
    uv_pipe_init(&s->loop, &s->pipe, 0);
    s->pipe.data = s;
    s->has_pipe = 1;
    int rc = uv_pipe_bind(&s->pipe, path);
    if (rc < 0) {
        set_err(err, errlen, "status socket %s: cannot bind: %s", path, uv_strerror(rc));
        return -1;
    }
    s->socket_path = strdup(path);
    // 0600 before listen(): nobody can connect before the mode is right
    if (chmod(path, 0600) != 0) {
        set_err(err, errlen, "status socket %s: chmod 0600: %s", path, strerror(errno));
        return -1;
    }
    rc = uv_listen((uv_stream_t*)&s->pipe, 511, on_connection);
    if (rc < 0) {
        set_err(err, errlen, "status socket %s: cannot listen: %s", path, uv_strerror(rc));
        return -1;
    }
    return 0;
}

static int bind_tcp(StatusServer* s, const char* listen, char* err, size_t errlen) {
    // HOST:PORT, [V6]:PORT; "localhost" means 127.0.0.1
    char host[128];
    const char* colon = strrchr(listen, ':');
    const char* h = listen;
    size_t hlen = colon ? (size_t)(colon - listen) : 0;
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') { h++; hlen -= 2; }
    char* end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || hlen == 0 || hlen >= sizeof host || !end || end == colon + 1 || *end || port < 0 ||
        port > 65535) {
        set_err(err, errlen, "status.listen=%s: expected HOST:PORT, e.g. 127.0.0.1:9100", listen);
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
    struct sockaddr_storage addr;
    int loopback = 0;
    struct sockaddr_in* a4 = (struct sockaddr_in*)&addr;
    struct sockaddr_in6* a6 = (struct sockaddr_in6*)&addr;
    memset(&addr, 0, sizeof addr);
    if (uv_ip4_addr(host, (int)port, a4) == 0) {
        loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    } else if (uv_ip6_addr(host, (int)port, a6) == 0) {
        static const unsigned char lo6[16] = {[15] = 1};
        loopback = !memcmp(&a6->sin6_addr, lo6, 16) ||
                   (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr) && a6->sin6_addr.s6_addr[12] == 127);
    } else {
        set_err(err, errlen, "status.listen=%s: '%s' is not an IP address", listen, host);
        return -1;
    }
    if (!loopback && !s->token) {
        set_err(err, errlen, "status.listen=%s is not a loopback address: set status.token to serve it", listen);
        return -1;
    }
    uv_tcp_init(&s->loop, &s->tcp);
    s->tcp.data = s;
    s->has_tcp = 1;
    int rc = uv_tcp_bind(&s->tcp, (struct sockaddr*)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t*)&s->tcp, 511, on_connection);
    if (rc < 0) {
        set_err(err, errlen, "status.listen=%s: %s", listen, uv_strerror(rc));
        return -1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&s->tcp, (struct sockaddr*)&bound, &blen);
    s->tcp_port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6*)&bound)->sin6_port
                                                    : ((struct sockaddr_in*)&bound)->sin_port);
    return 0;
}

StatusServer* status_server_start(const StatusServerOptions* o, char* err, size_t errlen) {
    set_err(err, errlen, "status server: no error");
    int has_sock = o->socket_path && o->socket_path[0], has_listen = o->listen && o->listen[0];
    if (!has_sock && !has_listen) {
        set_err(err, errlen, "status server: neither a socket path nor a TCP address to listen on");
        return NULL;
    }
    StatusServer* s = callocCheck(1, sizeof(StatusServer));
    s->max_conns = o->max_connections > 0 ? o->max_connections : 256;
    s->max_req = o->max_request_bytes > 0 ? o->max_request_bytes : 8192;
    s->idle_ms = o->idle_timeout_ms > 0 ? o->idle_timeout_ms : 10000;
    s->token = o->token && o->token[0] ? strdup(o->token) : NULL;
    http_parser_settings_init(&s->settings);
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_message_complete = on_message_complete;
    int rc = uv_loop_init(&s->loop);
    if (rc < 0) {
        set_err(err, errlen, "status server: uv_loop_init: %s", uv_strerror(rc));
        free(s->token);
        free(s);
        return NULL;
    }
    if ((has_sock && bind_unix(s, o->socket_path, err, errlen) != 0) ||
        (has_listen && bind_tcp(s, o->listen, err, errlen) != 0)) {
        destroy_unstarted(s);
        return NULL;
    }
    uv_async_init(&s->loop, &s->wake, on_wake);
    s->wake.data = s;
    pthread_mutex_init(&s->snap_mu, NULL);
    pthread_mutex_init(&s->act_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->act_cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&s->actions, 0u);

    // The server thread blocks every signal: SIGPIPE from a vanished client
    // becomes EPIPE there, and SIGINT/SIGTERM keep going to the training
    // thread, whatever handlers the command installs.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&s->thread, NULL, server_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        set_err(err, errlen, "status server: cannot start its thread: %s", strerror(rc));
        uv_close((uv_handle_t*)&s->wake, NULL);
        pthread_mutex_destroy(&s->snap_mu);
        pthread_mutex_destroy(&s->act_mu);
        pthread_cond_destroy(&s->act_cv);
        destroy_unstarted(s);
        return NULL;
    }
    return s;
}

void status_server_publish(StatusServer* s, json_t* snapshot) {
    if (!s || !json_is_object(snapshot)) return;
    Snapshot* sn = mallocCheck(sizeof(Snapshot));
    atomic_init(&sn->refs, 1);
    sn->json = json_deep_copy(snapshot); // the caller may keep editing its object
    assertCheck(sn->json != NULL);
    sn->published_unix = status_now_unix();
    pthread_mutex_lock(&s->snap_mu);
    Snapshot* old = s->snap;
    s->snap = sn;
    pthread_mutex_unlock(&s->snap_mu);
    snap_release(old);
}

unsigned status_server_take_actions(StatusServer* s) {
    return s ? atomic_exchange(&s->actions, 0u) : 0u;
}

unsigned status_server_wait_actions(StatusServer* s, int timeout_ms) {
    if (!s) return 0;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) { dl.tv_sec++; dl.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&s->act_mu);
    unsigned a;
    while ((a = atomic_load(&s->actions)) == 0)
        if (pthread_cond_timedwait(&s->act_cv, &s->act_mu, &dl) == ETIMEDOUT) {
            a = atomic_load(&s->actions);
            break;
        }
    pthread_mutex_unlock(&s->act_mu);
    return a;
}

int status_server_tcp_port(const StatusServer* s) { return s && s->has_tcp ? s->tcp_port : 0; }

void status_server_stop(StatusServer* s) {
    if (!s) return;
    uv_async_send(&s->wake);
    pthread_join(s->thread, NULL);
    // every handle is closed by now; a second run only drains leftovers
    if (uv_loop_close(&s->loop) == UV_EBUSY) {
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
    }
    if (s->socket_path) unlink(s->socket_path); // libuv may have done it already
    snap_release(s->snap);
    pthread_mutex_destroy(&s->snap_mu);
    pthread_mutex_destroy(&s->act_mu);
    pthread_cond_destroy(&s->act_cv);
    free(s->socket_path);
    free(s->token);
    free(s);
}
