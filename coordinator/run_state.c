// run_state.c - see run_state.h.
#define _GNU_SOURCE // strerrorname_np
#include "run_state.h"
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../common/check.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "run_state.c stores blobs in native order and assumes a little-endian host"
#endif

#define RUN_STATE_FORMAT "rlhfd-run-state"
#define RUN_STATE_VERSION 1

// ----------------------------------------------------------------------------
// items

static void check_key(const char* key) {
    size_t n = strlen(key);
    assertCheck(n >= 1 && n <= 64);
    for (size_t i = 0; i < n; i++) {
        char c = key[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                 c == '_' || c == '-';
        assertCheck(ok);
    }
}

void run_state_init(RunState* rs) {
    memset(rs, 0, sizeof *rs);
    rs->root = json_pack("{s:s, s:i, s:{}}", "format", RUN_STATE_FORMAT, "version", RUN_STATE_VERSION, "items");
    assertCheck(rs->root != NULL);
    rs->items = json_object_get(rs->root, "items");
}

void run_state_free(RunState* rs) {
    for (int i = 0; i < rs->num_files; i++) {
        free((char*)rs->files[i].name);
        free((void*)rs->files[i].data);
    }
    free(rs->files);
    json_decref(rs->root);
    free(rs->dir);
    memset(rs, 0, sizeof *rs);
}

// Sets items[key] = item (stolen); the saving side only.
static void put_item(RunState* rs, const char* key, json_t* item) {
    check_key(key);
    assertCheck(rs->dir == NULL && item != NULL); // not on a loaded state
    for (int i = 0; i < rs->num_files; i++)        // not after run_state_attach
        assertCheck(strcmp(rs->files[i].name, RUN_STATE_FILE) != 0);
    json_object_set_new(rs->items, key, item);
}

// Adds (or replaces) the file `name` holding a copy of data.
static void put_file(RunState* rs, const char* name, const void* data, size_t n) {
    void* copy = mallocCheck(n);
    if (n) memcpy(copy, data, n);
    for (int i = 0; i < rs->num_files; i++)
        if (!strcmp(rs->files[i].name, name)) {
            free((void*)rs->files[i].data);
            rs->files[i].data = copy;
            rs->files[i].size = n;
            return;
        }
    if (rs->num_files == rs->cap_files) {
        rs->cap_files = rs->cap_files ? 2 * rs->cap_files : 8;
        rs->files = reallocCheck(rs->files, (size_t)rs->cap_files * sizeof(CheckpointFile));
    }
    rs->files[rs->num_files++] = (CheckpointFile){.name = strdup(name), .data = copy, .size = n};
}

static json_t* hex64(uint64_t v) {
    char buf[24];
    snprintf(buf, sizeof buf, "0x%016" PRIx64, v);
    return json_string(buf);
}

static int parse_hex64(json_t* j, uint64_t* out) {
    const char* s = json_string_value(j);
    if (!s || strncmp(s, "0x", 2) != 0 || strlen(s) != 18) return -1;
    char* end;
    errno = 0;
    unsigned long long v = strtoull(s + 2, &end, 16);
    if (errno || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

static uint64_t f64_bits(double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    return u;
}

static double bits_f64(uint64_t u) {
    double v;
    memcpy(&v, &u, 8);
    return v;
}

// A double, exact: {"bits": "0x...", "value": x (finite values only, for people)}.
static json_t* exact_f64(double v) {
    json_t* o = json_object();
    json_object_set_new(o, "bits", hex64(f64_bits(v)));
    json_t* readable = json_real(v); // NULL for NaN / inf
    if (readable) json_object_set_new(o, "value", readable);
    return o;
}

void run_state_put_i64(RunState* rs, const char* key, int64_t v) {
    put_item(rs, key, json_pack("{s:s, s:I}", "type", "i64", "value", (json_int_t)v));
}

void run_state_put_u64(RunState* rs, const char* key, uint64_t v) {
    put_item(rs, key, json_pack("{s:s, s:o}", "type", "u64", "value", hex64(v)));
}

void run_state_put_f64(RunState* rs, const char* key, double v) {
    put_item(rs, key, json_pack("{s:s, s:o}", "type", "f64", "value", exact_f64(v)));
}

void run_state_put_str(RunState* rs, const char* key, const char* v) {
    put_item(rs, key, json_pack("{s:s, s:s}", "type", "str", "value", v));
}

void run_state_put_rng(RunState* rs, const char* key, const Rng* r) {
    put_item(rs, key, json_pack("{s:s, s:[o,o,o,o]}", "type", "rng", "s", hex64(r->s[0]), hex64(r->s[1]),
                                hex64(r->s[2]), hex64(r->s[3])));
}

void run_state_put_kl(RunState* rs, const char* key, const KLController* kl) {
    put_item(rs, key, json_pack("{s:s, s:b, s:o, s:o, s:o}", "type", "kl", "adaptive", kl->adaptive, "value",
                                exact_f64(kl->value), "target", exact_f64(kl->target), "horizon",
                                exact_f64(kl->horizon)));
}

void run_state_put_order(RunState* rs, const char* key, const size_t* order, size_t n, size_t pos,
                         uint64_t pass) {
    char file[80];
    snprintf(file, sizeof file, "order.%s", key);
    uint64_t* idx = mallocCheck(n * sizeof(uint64_t));
    for (size_t i = 0; i < n; i++) idx[i] = (uint64_t)order[i];
    put_item(rs, key, json_pack("{s:s, s:I, s:I, s:o, s:s}", "type", "order", "n", (json_int_t)n, "pos",
                                (json_int_t)pos, "pass", hex64(pass), "file", file));
    put_file(rs, file, idx, n * sizeof(uint64_t));
    free(idx);
}

void run_state_put_blob(RunState* rs, const char* key, const void* data, size_t n) {
    char file[80];
    snprintf(file, sizeof file, "blob.%s", key);
    put_item(rs, key, json_pack("{s:s, s:I, s:s}", "type", "blob", "bytes", (json_int_t)n, "file", file));
    put_file(rs, file, data, n);
}

void run_state_attach(RunState* rs, CheckpointSaveOptions* o) {
    assertCheck(o->num_files == 0 && rs->dir == NULL);
    char* text = json_dumps(rs->root, JSON_INDENT(1) | JSON_SORT_KEYS);
    assertCheck(text != NULL);
    put_file(rs, RUN_STATE_FILE, text, strlen(text));
    free(text);
    o->files = rs->files;
    o->num_files = rs->num_files;
}

// ----------------------------------------------------------------------------
// metrics

// Counts '\n' in the first `bytes` bytes of fp (from its start); -1 on a read
// error or a short file. *last = the last byte read (0 if none).
static int64_t count_lines(FILE* fp, int64_t bytes, int* last) {
    char buf[1 << 16];
    int64_t lines = 0, left = bytes;
    *last = 0;
    while (left > 0) {
        size_t want = left < (int64_t)sizeof buf ? (size_t)left : sizeof buf;
        size_t got = fread(buf, 1, want, fp);
        if (got == 0) return -1;
        for (size_t i = 0; i < got; i++) lines += buf[i] == '\n';
        *last = (unsigned char)buf[got - 1];
        left -= (int64_t)got;
    }
    return lines;
}

static int err_errno(char* err, size_t errlen, const char* path, const char* what, int e) {
    const char* name = strerrorname_np(e);
    snprintf(err, errlen, "%s: %s: %s (%s)", path, what, strerror(e), name ? name : "?");
    return -1;
}

int metrics_mark(const char* path, FILE* fp, MetricsMark* m, char* err, size_t errlen) {
    if (fp && fflush(fp) != 0) return err_errno(err, errlen, path, "write failed", errno);
    FILE* in = fopen(path, "rb");
    if (!in) return err_errno(err, errlen, path, "cannot open", errno);
    struct stat sb;
    if (fstat(fileno(in), &sb) != 0) {
        int e = errno;
        fclose(in);
        return err_errno(err, errlen, path, "cannot stat", e);
    }
    int last;
    int64_t lines = count_lines(in, (int64_t)sb.st_size, &last);
    fclose(in);
    if (lines < 0) return err_errno(err, errlen, path, "read failed", errno ? errno : EIO);
    if (sb.st_size > 0 && last != '\n') {
        snprintf(err, errlen, "%s: ends in the middle of a line", path);
        return -1;
    }
    m->bytes = (int64_t)sb.st_size;
    m->lines = lines;
    return 0;
}

int metrics_rewind(const char* path, const MetricsMark* m, char* err, size_t errlen) {
    FILE* in = fopen(path, "rb");
    if (!in) {
        if (errno == ENOENT && m->bytes == 0) return 0; // nothing was logged yet: nothing to keep
        return err_errno(err, errlen, path, "cannot open", errno);
    }
    struct stat sb;
    if (fstat(fileno(in), &sb) != 0) {
        int e = errno;
        fclose(in);
        return err_errno(err, errlen, path, "cannot stat", e);
    }
    if ((int64_t)sb.st_size < m->bytes) {
        fclose(in);
        snprintf(err, errlen, "%s: %lld bytes, shorter than the %lld bytes (%lld lines) it had at the checkpoint",
                 path, (long long)sb.st_size, (long long)m->bytes, (long long)m->lines);
        return -1;
    }
    int last;
    int64_t lines = count_lines(in, m->bytes, &last);
    int64_t after = 0;
    if (lines >= 0 && (int64_t)sb.st_size > m->bytes) { // lines past the mark, for the note
        int ignore;
        after = count_lines(in, (int64_t)sb.st_size - m->bytes, &ignore);
    }
    fclose(in);
    if (lines < 0) return err_errno(err, errlen, path, "read failed", errno ? errno : EIO);
    if (lines != m->lines || (m->bytes > 0 && last != '\n')) {
        snprintf(err, errlen, "%s: its first %lld bytes are not the %lld lines written before the checkpoint "
                 "(another run's metrics?)", path, (long long)m->bytes, (long long)m->lines);
        return -1;
    }
    if ((int64_t)sb.st_size > m->bytes) {
        fprintf(stderr, "rlhfd: %s: dropping %lld line(s) written after the checkpoint\n", path,
                (long long)(after > 0 ? after : 0));
        if (truncate(path, (off_t)m->bytes) != 0) return err_errno(err, errlen, path, "cannot truncate", errno);
    }
    return 0;
}

int run_state_put_metrics(RunState* rs, const char* path, FILE* fp, char* err, size_t errlen) {
    MetricsMark m;
    if (metrics_mark(path, fp, &m, err, errlen) != 0) return -1;
    put_item(rs, "metrics", json_pack("{s:s, s:I, s:I}", "type", "metrics", "bytes", (json_int_t)m.bytes,
                                      "lines", (json_int_t)m.lines));
    return 0;
}

// ----------------------------------------------------------------------------
// loading

void run_state_load(RunState* rs, const char* ckpt) {
    memset(rs, 0, sizeof *rs);
    void* data;
    size_t n;
    char err[1024];
    if (checkpoint_read_file(ckpt, RUN_STATE_FILE, &data, &n, err, sizeof err) != 0)
        fatalf("cannot resume from %s: %s", ckpt, err);
    json_error_t jerr;
    json_t* root = json_loadb(data, n, JSON_REJECT_DUPLICATES, &jerr);
    free(data);
    if (!root) fatalf("%s/%s: invalid JSON at line %d: %s", ckpt, RUN_STATE_FILE, jerr.line, jerr.text);
    const char* fmt = json_string_value(json_object_get(root, "format"));
    json_t* items = json_object_get(root, "items");
    if (!fmt || strcmp(fmt, RUN_STATE_FORMAT) != 0 || !json_is_object(items))
        fatalf("%s/%s: not an rlhfd run state", ckpt, RUN_STATE_FILE);
    json_int_t version = json_integer_value(json_object_get(root, "version"));
    if (version != RUN_STATE_VERSION)
        fatalf("%s/%s: version %lld, this rlhfd reads version %d", ckpt, RUN_STATE_FILE, (long long)version,
               RUN_STATE_VERSION);
    rs->root = root;
    rs->items = items;
    rs->dir = strdup(ckpt);
}

int run_state_has(const RunState* rs, const char* key) { return json_object_get(rs->items, key) != NULL; }

static const char* where(const RunState* rs) { return rs->dir ? rs->dir : "(unsaved run state)"; }

// items[key], fatal unless it exists with that type.
static json_t* get_item(const RunState* rs, const char* key, const char* type) {
    json_t* it = json_object_get(rs->items, key);
    if (!it)
        fatalf("%s/%s: no '%s' (written by another command or another version of rlhfd?)", where(rs),
               RUN_STATE_FILE, key);
    const char* t = json_string_value(json_object_get(it, "type"));
    if (!t || strcmp(t, type) != 0)
        fatalf("%s/%s: '%s' is a %s, expected a %s", where(rs), RUN_STATE_FILE, key, t ? t : "(no type)", type);
    return it;
}

static __attribute__((noreturn)) void bad_item(const RunState* rs, const char* key) {
    fatalf("%s/%s: '%s' is malformed", where(rs), RUN_STATE_FILE, key);
}

static uint64_t item_hex(const RunState* rs, const char* key, json_t* j) {
    uint64_t v;
    if (parse_hex64(j, &v) != 0) bad_item(rs, key);
    return v;
}

static double item_f64(const RunState* rs, const char* key, json_t* j) {
    return bits_f64(item_hex(rs, key, json_object_get(j, "bits")));
}

int64_t run_state_get_i64(const RunState* rs, const char* key) {
    json_t* v = json_object_get(get_item(rs, key, "i64"), "value");
    if (!json_is_integer(v)) bad_item(rs, key);
    return (int64_t)json_integer_value(v);
}

uint64_t run_state_get_u64(const RunState* rs, const char* key) {
    return item_hex(rs, key, json_object_get(get_item(rs, key, "u64"), "value"));
}

double run_state_get_f64(const RunState* rs, const char* key) {
    return item_f64(rs, key, json_object_get(get_item(rs, key, "f64"), "value"));
}

const char* run_state_get_str(const RunState* rs, const char* key) {
    const char* s = json_string_value(json_object_get(get_item(rs, key, "str"), "value"));
    if (!s) bad_item(rs, key);
    return s;
}

void run_state_get_rng(const RunState* rs, const char* key, Rng* r) {
    json_t* s = json_object_get(get_item(rs, key, "rng"), "s");
    if (json_array_size(s) != 4) bad_item(rs, key);
    for (int i = 0; i < 4; i++) r->s[i] = item_hex(rs, key, json_array_get(s, (size_t)i));
}

void run_state_get_kl(const RunState* rs, const char* key, KLController* kl) {
    json_t* it = get_item(rs, key, "kl");
    json_t* adaptive = json_object_get(it, "adaptive");
    if (!json_is_boolean(adaptive)) bad_item(rs, key);
    kl->adaptive = json_is_true(adaptive);
    // stored as the doubles of the floats: converting back is exact
    kl->value = (float)item_f64(rs, key, json_object_get(it, "value"));
    kl->target = (float)item_f64(rs, key, json_object_get(it, "target"));
    kl->horizon = (float)item_f64(rs, key, json_object_get(it, "horizon"));
}

// The verified bytes of the file an item names; fatal on any problem.
static void* item_file(const RunState* rs, const char* key, json_t* it, size_t want, size_t* n) {
    const char* file = json_string_value(json_object_get(it, "file"));
    if (!file) bad_item(rs, key);
    if (!rs->dir) fatalf("run state '%s': not loaded from a checkpoint", key);
    void* data;
    char err[1024];
    if (checkpoint_read_file(rs->dir, file, &data, n, err, sizeof err) != 0)
        fatalf("cannot resume from %s: %s", rs->dir, err);
    if (*n != want) fatalf("%s/%s: %zu bytes, %s says %zu", rs->dir, file, *n, RUN_STATE_FILE, want);
    return data;
}

void run_state_get_order(const RunState* rs, const char* key, size_t want_n, size_t** order, size_t* pos,
                         uint64_t* pass) {
    json_t* it = get_item(rs, key, "order");
    json_t* jn = json_object_get(it, "n");
    json_t* jpos = json_object_get(it, "pos");
    if (!json_is_integer(jn) || !json_is_integer(jpos) || json_integer_value(jn) < 0 ||
        json_integer_value(jpos) < 0 || json_integer_value(jpos) > json_integer_value(jn))
        bad_item(rs, key);
    size_t n = (size_t)json_integer_value(jn);
    if (want_n != SIZE_MAX && n != want_n)
        fatalf("%s: the checkpoint's order '%s' covers %zu items, the data now has %zu (the data changed "
               "since the checkpoint; resume needs the same data)", rs->dir ? rs->dir : "run state", key, n, want_n);
    *pass = item_hex(rs, key, json_object_get(it, "pass"));
    *pos = (size_t)json_integer_value(jpos);
    *order = NULL;
    if (n == 0) return;
    size_t bytes;
    uint64_t* idx = item_file(rs, key, it, n * sizeof(uint64_t), &bytes);
    size_t* out = mallocCheck(n * sizeof(size_t));
    for (size_t i = 0; i < n; i++) {
        if (idx[i] >= n) fatalf("%s: order '%s' holds index %" PRIu64 " of %zu items", rs->dir, key, idx[i], n);
        out[i] = (size_t)idx[i];
    }
    free(idx);
    *order = out;
}

void run_state_get_blob(const RunState* rs, const char* key, void** data, size_t* n) {
    json_t* it = get_item(rs, key, "blob");
    json_t* jb = json_object_get(it, "bytes");
    if (!json_is_integer(jb) || json_integer_value(jb) < 0) bad_item(rs, key);
    *data = item_file(rs, key, it, (size_t)json_integer_value(jb), n);
}

void run_state_get_metrics(const RunState* rs, MetricsMark* m) {
    json_t* it = get_item(rs, "metrics", "metrics");
    json_t* b = json_object_get(it, "bytes");
    json_t* l = json_object_get(it, "lines");
    if (!json_is_integer(b) || !json_is_integer(l) || json_integer_value(b) < 0 || json_integer_value(l) < 0)
        bad_item(rs, "metrics");
    m->bytes = (int64_t)json_integer_value(b);
    m->lines = (int64_t)json_integer_value(l);
}

void run_state_rewind_metrics(const RunState* rs, const char* path) {
    MetricsMark m;
    run_state_get_metrics(rs, &m);
    char err[1024];
    if (metrics_rewind(path, &m, err, sizeof err) != 0) fatalf("cannot resume from %s: %s", where(rs), err);
}

// ----------------------------------------------------------------------------
// resume

static void copy_path(char* dst, size_t cap, const char* src) {
    if (strlen(src) + 1 > cap) fatalf("%s: path too long", src);
    memcpy(dst, src, strlen(src) + 1);
}

// Names "ckpt-N.tmp-PID" saves that never finished (they are not checkpoints;
// run_dir_prune removes them at the next save).
static void warn_partial(const char* run_dir) {
    DIR* d = opendir(run_dir);
    if (!d) return;
    struct dirent* e;
    while ((e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, "ckpt-", 5) && strstr(e->d_name, ".tmp-"))
            fprintf(stderr, "rlhfd: warning: skipping %s/%s: an interrupted checkpoint save (partial)\n",
                    run_dir, e->d_name);
    closedir(d);
}

int resume_find(const char* run_dir, char* ckpt, size_t cap) {
    struct stat sb;
    if (stat(run_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return 0;
    warn_partial(run_dir);
    char* latest = run_dir_latest_checkpoint(run_dir); // warns about each invalid newer one
    if (!latest) return 0;
    copy_path(ckpt, cap, latest);
    free(latest);
    return 1;
}

int resume_resolve(const char* spec, const char* run_dir, char* ckpt, size_t cap) {
    if (!spec || !*spec || !strcmp(spec, "none")) return 0;
    if (!strcmp(spec, "auto")) {
        if (!resume_find(run_dir, ckpt, cap)) {
            fprintf(stderr, "rlhfd: --resume auto: no valid checkpoint in %s; starting fresh\n", run_dir);
            return 0;
        }
        fprintf(stderr, "rlhfd: resuming from %s\n", ckpt);
        return 1;
    }
    struct stat sb;
    if (stat(spec, &sb) != 0) fatalf("--resume %s: %s", spec, strerror(errno));
    char err[1024];
    char* state = mallocCheck(strlen(spec) + 16);
    sprintf(state, "%s/state.json", spec);
    int is_ckpt = stat(state, &sb) == 0;
    free(state);
    if (is_ckpt) {
        if (checkpoint_verify(spec, err, sizeof err) != 0) fatalf("--resume %s: invalid checkpoint: %s", spec, err);
        copy_path(ckpt, cap, spec);
        return 1;
    }
    if (!resume_find(spec, ckpt, cap)) fatalf("--resume %s: no valid checkpoint there", spec);
    fprintf(stderr, "rlhfd: resuming from %s\n", ckpt);
    return 1;
}

// ----------------------------------------------------------------------------
// blobs

void bytebuf_put(ByteBuf* b, const void* p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        b->data = reallocCheck(b->data, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
}

void bytebuf_put_u64(ByteBuf* b, uint64_t v) { bytebuf_put(b, &v, 8); }
void bytebuf_put_i32(ByteBuf* b, int32_t v) { bytebuf_put(b, &v, 4); }
void bytebuf_put_f32(ByteBuf* b, float v) { bytebuf_put(b, &v, 4); }
void bytebuf_put_f64(ByteBuf* b, double v) { bytebuf_put(b, &v, 8); }

void bytebuf_put_i32s(ByteBuf* b, const int* v, size_t n) {
    bytebuf_put_u64(b, (uint64_t)n);
    for (size_t i = 0; i < n; i++) bytebuf_put_i32(b, (int32_t)v[i]);
}

void bytebuf_put_str(ByteBuf* b, const char* s) {
    size_t n = strlen(s);
    bytebuf_put_u64(b, (uint64_t)n);
    bytebuf_put(b, s, n);
}

void bytebuf_free(ByteBuf* b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

void byteread(ByteReader* r, void* dst, size_t n) {
    if (n > r->len - r->pos)
        fatalf("%s: truncated at byte %zu (%zu more wanted, %zu left)", r->what, r->pos, n, r->len - r->pos);
    if (n) memcpy(dst, r->data + r->pos, n);
    r->pos += n;
}

uint64_t byteread_u64(ByteReader* r) { uint64_t v; byteread(r, &v, 8); return v; }
int32_t byteread_i32(ByteReader* r) { int32_t v; byteread(r, &v, 4); return v; }
float byteread_f32(ByteReader* r) { float v; byteread(r, &v, 4); return v; }
double byteread_f64(ByteReader* r) { double v; byteread(r, &v, 8); return v; }

int* byteread_i32s(ByteReader* r, size_t* n) {
    uint64_t count = byteread_u64(r);
    if (count > (r->len - r->pos) / 4)
        fatalf("%s: array of %" PRIu64 " ints at byte %zu runs past the end", r->what, count, r->pos - 8);
    int* v = mallocCheck((size_t)count * sizeof(int));
    for (uint64_t i = 0; i < count; i++) v[i] = byteread_i32(r);
    *n = (size_t)count;
    return v;
}

char* byteread_str(ByteReader* r) {
    uint64_t n = byteread_u64(r);
    if (n > r->len - r->pos)
        fatalf("%s: string of %" PRIu64 " bytes at byte %zu runs past the end", r->what, n, r->pos - 8);
    char* s = mallocCheck((size_t)n + 1);
    byteread(r, s, (size_t)n);
    s[n] = '\0';
    return s;
}

void byteread_end(const ByteReader* r) {
    if (r->pos != r->len) fatalf("%s: %zu unexpected bytes after byte %zu", r->what, r->len - r->pos, r->pos);
}
