// model_io.c - see model_io.h.
#define _GNU_SOURCE // renameat2
#include "model_io.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include "../common/check.h"
#include "../common/safetensors.h"

#define LLMC_MAGIC 20240326
#define LLMC_HEADER_INTS 256
#define LLMC_VOCAB_PAD 128
#define STATE_VERSION 1

// ----------------------------------------------------------------------------
// small path and file helpers

static char* path_join(const char* dir, const char* name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char* p = mallocCheck(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

// Copy of path without trailing slashes ("a/b/" -> "a/b"; "/" stays).
static char* path_clean(const char* path) {
    char* p = strdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = '\0';
    return p;
}

// malloc'd parent directory of a cleaned path ("a/b" -> "a", "b" -> ".").
static char* path_parent(const char* path) {
    char* p = path_clean(path);
    char* slash = strrchr(p, '/');
    if (!slash) { free(p); return strdup("."); }
    if (slash == p) slash[1] = '\0'; else *slash = '\0';
    return p;
}

static int is_dir(const char* path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file_in(const char* dir, const char* name) {
    char* p = path_join(dir, name);
    struct stat st;
    int ok = stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return ok;
}

// The checkpoint writer reports I/O failures instead of exiting, so that a
// full disk during a save can leave the run going (checkpoint_try_save):
// each *_try helper returns 0, or -1 with "PATH: what: reason (ENAME)" in
// err; the errno name (ENOSPC, EFBIG, EACCES) says at a glance what broke.
static int io_error(char* err, size_t errlen, const char* path, const char* what, int e) {
    const char* name = strerrorname_np(e);
    snprintf(err, errlen, "%s: %s: %s (%s)", path, what, strerror(e), name ? name : "?");
    return -1;
}

static int mkdir_p_try(const char* path, char* err, size_t errlen) {
    char* p = path_clean(path);
    int rc = 0;
    for (char* s = p + 1; *s && rc == 0; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) rc = io_error(err, errlen, p, "cannot create directory", errno);
        *s = '/';
    }
    if (rc == 0 && mkdir(p, 0755) != 0 && errno != EEXIST)
        rc = io_error(err, errlen, p, "cannot create directory", errno);
    if (rc == 0 && !is_dir(p)) {
        snprintf(err, errlen, "%s: exists and is not a directory", p);
        rc = -1;
    }
    free(p);
    return rc;
}

static void mkdir_p(const char* path) {
    char err[1024];
    if (mkdir_p_try(path, err, sizeof err) != 0) fatalf("%s", err);
}

static int fsync_dir_try(const char* path, char* err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return io_error(err, errlen, path, "cannot open directory", errno);
    if (fsync(fd) != 0 && errno != EINVAL) {
        int e = errno;
        close(fd);
        return io_error(err, errlen, path, "fsync failed", e);
    }
    close(fd);
    return 0;
}

static void fsync_dir(const char* path) {
    char err[1024];
    if (fsync_dir_try(path, err, sizeof err) != 0) fatalf("%s", err);
}

static int write_file_sync_try(const char* path, const void* data, size_t n, char* err, size_t errlen) {
    FILE* fp = fopen(path, "wb");
    if (!fp) return io_error(err, errlen, path, "cannot create", errno);
    int ok = (n == 0 || fwrite(data, 1, n, fp) == n) && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int e = errno;
    if (fclose(fp) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    return ok ? 0 : io_error(err, errlen, path, "write failed", e ? e : EIO);
}

static int write_json_sync_try(const char* path, json_t* obj, char* err, size_t errlen) {
    char* text = json_dumps(obj, JSON_INDENT(2));
    assertCheck(text != NULL);
    size_t n = strlen(text);
    text = reallocCheck(text, n + 2);
    text[n] = '\n';
    text[n + 1] = '\0';
    int rc = write_file_sync_try(path, text, n + 1, err, errlen);
    free(text);
    return rc;
}

static void write_json_sync(const char* path, json_t* obj) {
    char err[1024];
    if (write_json_sync_try(path, obj, err, sizeof err) != 0) fatalf("%s", err);
}

// Removes a directory tree (cleanup only: problems are warnings).
static void remove_tree(const char* path) {
    DIR* d = opendir(path);
    if (!d) {
        if (unlink(path) != 0 && errno != ENOENT)
            fprintf(stderr, "rlhfd: warning: cannot remove %s: %s\n", path, strerror(errno));
        return;
    }
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char* child = path_join(path, e->d_name);
        struct stat st;
        if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(child);
        else if (unlink(child) != 0)
            fprintf(stderr, "rlhfd: warning: cannot remove %s: %s\n", child, strerror(errno));
        free(child);
    }
    closedir(d);
    if (rmdir(path) != 0) fprintf(stderr, "rlhfd: warning: cannot remove %s: %s\n", path, strerror(errno));
}

// crc32 and size of a file; returns 0, or -1 with errno set.
static int file_crc32(const char* path, uint32_t* crc_out, uint64_t* size_out) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    size_t cap = 1 << 20;
    unsigned char* buf = mallocCheck(cap);
    uLong crc = crc32_z(0L, Z_NULL, 0);
    uint64_t size = 0;
    for (;;) {
        ssize_t got = read(fd, buf, cap);
        if (got < 0) {
            if (errno == EINTR) continue;
            int saved = errno;
            free(buf);
            close(fd);
            errno = saved;
            return -1;
        }
        if (got == 0) break;
        crc = crc32_z(crc, buf, (size_t)got);
        size += (uint64_t)got;
    }
    free(buf);
    close(fd);
    *crc_out = (uint32_t)crc;
    *size_out = size;
    return 0;
}

// ----------------------------------------------------------------------------
// configs

static const char* const CONFIG_KEYS[5] = {"max_seq_len", "vocab_size", "num_layers", "num_heads",
                                           "channels"};

static int* config_field(GPTConfig* c, int i) {
    int* fields[5] = {&c->max_seq_len, &c->vocab_size, &c->num_layers, &c->num_heads, &c->channels};
    return fields[i];
}

static int config_get(const GPTConfig* c, int i) { return *config_field((GPTConfig*)c, i); }

// Sane sizes (so a corrupt header cannot ask for terabytes); 0 ok, else -1 + err.
static int config_validate(const GPTConfig* c, char* err, size_t n) {
    for (int i = 0; i < 5; i++) {
        int v = config_get(c, i);
        if (v <= 0 || v > (1 << 24)) {
            snprintf(err, n, "%s=%d is out of range", CONFIG_KEYS[i], v);
            return -1;
        }
    }
    if (c->channels % c->num_heads != 0) {
        snprintf(err, n, "channels=%d is not divisible by num_heads=%d", c->channels, c->num_heads);
        return -1;
    }
    double total = (double)c->vocab_size * c->channels + (double)c->max_seq_len * c->channels +
                   12.0 * c->num_layers * (double)c->channels * c->channels;
    if (total > 4e10) {
        snprintf(err, n, "config asks for %.3g parameters (too many)", total);
        return -1;
    }
    return 0;
}

static void config_check_or_die(const GPTConfig* c, const char* path) {
    char err[256];
    if (config_validate(c, err, sizeof err) != 0) fatalf("%s: bad model config: %s", path, err);
}

static json_t* config_to_json(const GPTConfig* c) {
    json_t* o = json_object();
    for (int i = 0; i < 5; i++) json_object_set_new(o, CONFIG_KEYS[i], json_integer(config_get(c, i)));
    return o;
}

static int config_from_json(json_t* o, GPTConfig* c, char* err, size_t n) {
    if (!json_is_object(o)) { snprintf(err, n, "\"config\" is missing or not an object"); return -1; }
    for (int i = 0; i < 5; i++) {
        json_t* v = json_object_get(o, CONFIG_KEYS[i]);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            snprintf(err, n, "config key \"%s\" is missing or not a non-negative integer", CONFIG_KEYS[i]);
            return -1;
        }
        *config_field(c, i) = (int)json_integer_value(v);
    }
    return config_validate(c, err, n);
}

void gpt_config_expect(const GPTConfig* want, const GPTConfig* got, const char* path) {
    for (int i = 0; i < 5; i++)
        if (config_get(want, i) != config_get(got, i))
            fatalf("%s: model has %s=%d but %d was expected (config mismatch)", path, CONFIG_KEYS[i],
                   config_get(got, i), config_get(want, i));
}

// ----------------------------------------------------------------------------
// tensor layouts: where each tensor of a file goes in the parameter buffer

typedef struct {
    char name[128];
    size_t offset;      // float offset of the destination in the parameter buffer
    size_t numel;
    int transpose;      // file holds (in,out) of our (out,in) (HF Conv1D)
    int ndim;
    int64_t shape[3];   // shape in the file
} TensorSlot;

typedef struct {
    TensorSlot* slots;
    int n;
} Layout;

// Full shape of parameter tensor i (gpt.h order).
static int param_shape(int i, const GPTConfig* c, int64_t shape[3]) {
    int64_t V = c->vocab_size, T = c->max_seq_len, L = c->num_layers, C = c->channels;
    switch (i) {
    case 0: shape[0] = V; shape[1] = C; return 2;                           // wte
    case 1: shape[0] = T; shape[1] = C; return 2;                           // wpe
    case 4: shape[0] = L; shape[1] = 3 * C; shape[2] = C; return 3;         // qkvw
    case 5: shape[0] = L; shape[1] = 3 * C; return 2;                       // qkvb
    case 6: shape[0] = L; shape[1] = C; shape[2] = C; return 3;             // attprojw
    case 10: shape[0] = L; shape[1] = 4 * C; shape[2] = C; return 3;        // fcw
    case 11: shape[0] = L; shape[1] = 4 * C; return 2;                      // fcb
    case 12: shape[0] = L; shape[1] = C; shape[2] = 4 * C; return 3;        // fcprojw
    case 14: case 15: shape[0] = C; return 1;                               // lnfw, lnfb
    default: shape[0] = L; shape[1] = C; return 2;                          // (L, C) vectors
    }
}

static void param_offsets(const GPTConfig* c, size_t offsets[NUM_PARAMETER_TENSORS], size_t* total) {
    size_t sizes[NUM_PARAMETER_TENSORS];
    gpt_param_sizes(sizes, c);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        int64_t shape[3];
        int nd = param_shape(i, c, shape);
        size_t numel = 1;
        for (int d = 0; d < nd; d++) numel *= (size_t)shape[d];
        assertCheck(numel == sizes[i]);
        offsets[i] = off;
        off += sizes[i];
    }
    *total = off;
}

static TensorSlot* layout_add(Layout* lay) {
    lay->slots = reallocCheck(lay->slots, (size_t)(lay->n + 1) * sizeof(TensorSlot));
    TensorSlot* s = &lay->slots[lay->n++];
    memset(s, 0, sizeof *s);
    return s;
}

// Native: one tensor per parameter, named prefix + GPT_PARAM_NAMES[i].
static Layout layout_native(const GPTConfig* c, const char* prefix) {
    Layout lay = {0};
    size_t offsets[NUM_PARAMETER_TENSORS], total;
    param_offsets(c, offsets, &total);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        TensorSlot* s = layout_add(&lay);
        snprintf(s->name, sizeof s->name, "%s%s", prefix, GPT_PARAM_NAMES[i]);
        s->ndim = param_shape(i, c, s->shape);
        s->numel = 1;
        for (int d = 0; d < s->ndim; d++) s->numel *= (size_t)s->shape[d];
        s->offset = offsets[i];
    }
    return lay;
}

// Hugging Face names of the per-layer tensors (parameter index 2..13).
static const struct { const char* suffix; int transpose; } HF_LAYER[NUM_PARAMETER_TENSORS] = {
    [2] = {"ln_1.weight", 0},        [3] = {"ln_1.bias", 0},
    [4] = {"attn.c_attn.weight", 1}, [5] = {"attn.c_attn.bias", 0},
    [6] = {"attn.c_proj.weight", 1}, [7] = {"attn.c_proj.bias", 0},
    [8] = {"ln_2.weight", 0},        [9] = {"ln_2.bias", 0},
    [10] = {"mlp.c_fc.weight", 1},   [11] = {"mlp.c_fc.bias", 0},
    [12] = {"mlp.c_proj.weight", 1}, [13] = {"mlp.c_proj.bias", 0},
};

static void hf_whole(Layout* lay, const char* prefix, const char* name, int param,
                     const GPTConfig* c, const size_t* offsets) {
    TensorSlot* s = layout_add(lay);
    snprintf(s->name, sizeof s->name, "%s%s", prefix, name);
    s->ndim = param_shape(param, c, s->shape);
    s->numel = 1;
    for (int d = 0; d < s->ndim; d++) s->numel *= (size_t)s->shape[d];
    s->offset = offsets[param];
}

// Hugging Face GPT-2: wte, wpe, h.{l}.*, ln_f, each prefixed (e.g. "transformer.").
static Layout layout_hf(const GPTConfig* c, const char* prefix) {
    Layout lay = {0};
    size_t offsets[NUM_PARAMETER_TENSORS], total;
    param_offsets(c, offsets, &total);
    hf_whole(&lay, prefix, "wte.weight", 0, c, offsets);
    hf_whole(&lay, prefix, "wpe.weight", 1, c, offsets);
    for (int l = 0; l < c->num_layers; l++) {
        for (int i = 2; i <= 13; i++) {
            int64_t full[3];
            int nd = param_shape(i, c, full);
            TensorSlot* s = layout_add(&lay);
            snprintf(s->name, sizeof s->name, "%sh.%d.%s", prefix, l, HF_LAYER[i].suffix);
            s->transpose = HF_LAYER[i].transpose;
            s->ndim = nd - 1;
            s->numel = 1;
            for (int d = 0; d < s->ndim; d++) {
                s->shape[d] = full[d + 1];
                s->numel *= (size_t)full[d + 1];
            }
            if (s->transpose) { // ours (out,in) -> file (in,out)
                int64_t t = s->shape[0];
                s->shape[0] = s->shape[1];
                s->shape[1] = t;
            }
            s->offset = offsets[i] + (size_t)l * s->numel;
        }
    }
    hf_whole(&lay, prefix, "ln_f.weight", 14, c, offsets);
    hf_whole(&lay, prefix, "ln_f.bias", 15, c, offsets);
    return lay;
}

static int shape_equal(const int64_t* a, int na, const int64_t* b, int nb) {
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static void config_str(char* buf, size_t n, const GPTConfig* c) {
    snprintf(buf, n, "max_seq_len=%d vocab_size=%d num_layers=%d num_heads=%d channels=%d",
             c->max_seq_len, c->vocab_size, c->num_layers, c->num_heads, c->channels);
}

// Every slot must be in the file, as a float tensor of the expected shape.
static void layout_check(const Layout* lay, const StFile* f, const GPTConfig* c, const char* cfg_src) {
    for (int i = 0; i < lay->n; i++) {
        const TensorSlot* s = &lay->slots[i];
        const StTensor* t = st_find(f, s->name);
        if (!t) fatalf("%s: tensor '%s' is missing", f->path, s->name);
        if (!shape_equal(t->shape, t->ndim, s->shape, s->ndim)) {
            char got[128], want[128], cs[160];
            config_str(cs, sizeof cs, c);
            fatalf("%s: tensor '%s' has shape %s but %s expects %s (%s)", f->path, s->name,
                   st_shape_str(got, sizeof got, t->shape, t->ndim), cfg_src,
                   st_shape_str(want, sizeof want, s->shape, s->ndim), cs);
        }
        if (t->dtype == ST_OTHER)
            fatalf("%s: tensor '%s' has dtype %s (F32, F16 or BF16 expected)", f->path, s->name,
                   t->dtype_name);
    }
}

// Reads every slot into the host parameter buffer, transposing Conv1D weights.
static void layout_read(const Layout* lay, const StFile* f, float* host) {
    float* tmp = NULL;
    size_t tmp_cap = 0;
    for (int i = 0; i < lay->n; i++) {
        const TensorSlot* s = &lay->slots[i];
        const StTensor* t = st_find(f, s->name);
        float* dst = host + s->offset;
        if (!s->transpose) {
            st_read_f32(f, t, dst);
            continue;
        }
        if (tmp_cap < s->numel) {
            tmp = reallocCheck(tmp, s->numel * sizeof(float));
            tmp_cap = s->numel;
        }
        st_read_f32(f, t, tmp);
        size_t in = (size_t)s->shape[0], out = (size_t)s->shape[1];
        for (size_t o = 0; o < out; o++) // dst (out,in) <- tmp (in,out)
            for (size_t k = 0; k < in; k++) dst[o * in + k] = tmp[k * out + o];
    }
    free(tmp);
}

// Writes the slots of host to a safetensors file, transposing Conv1D weights,
// followed by num_extra extra tensors (heads on the trunk; may be 0).
static int layout_write_extra(const Layout* lay, const float* host, const char* path, json_t* meta,
                              const StWriteTensor* extra, int num_extra, char* err, size_t errlen) {
    StWriteTensor* wt = callocCheck((size_t)(lay->n + num_extra), sizeof(StWriteTensor));
    float** owned = callocCheck((size_t)lay->n, sizeof(float*));
    for (int i = 0; i < lay->n; i++) {
        const TensorSlot* s = &lay->slots[i];
        const float* src = host + s->offset;
        wt[i].name = s->name;
        wt[i].ndim = s->ndim;
        memcpy(wt[i].shape, s->shape, sizeof s->shape);
        if (!s->transpose) {
            wt[i].data = src;
            continue;
        }
        size_t in = (size_t)s->shape[0], out = (size_t)s->shape[1];
        float* t = mallocCheck(s->numel * sizeof(float));
        for (size_t k = 0; k < in; k++) // t (in,out) <- src (out,in)
            for (size_t o = 0; o < out; o++) t[k * out + o] = src[o * in + k];
        owned[i] = t;
        wt[i].data = t;
    }
    for (int i = 0; i < num_extra; i++) wt[lay->n + i] = extra[i];
    int rc = st_write_try(path, wt, lay->n + num_extra, meta, err, errlen);
    for (int i = 0; i < lay->n; i++) free(owned[i]);
    free(owned);
    free(wt);
    return rc;
}

static void layout_write(const Layout* lay, const float* host, const char* path, json_t* meta) {
    char err[1024];
    if (layout_write_extra(lay, host, path, meta, NULL, 0, err, sizeof err) != 0) fatalf("%s", err);
}

// ----------------------------------------------------------------------------
// host <-> model parameter transfer (the backend may keep them on a device)

// Files always hold the whole model. Under tensor parallelism the shards are
// gathered (every tp rank must call: collective) and one process writes:
// world rank 0, i.e. tp rank 0 of dp rank 0 (rank = dp_rank * tp + tp_rank).
// Without tensor parallelism whoever calls writes, as before.
static int is_writer(const GPT* model) { return model->tp_size == 1 || comm_mpi_world_rank() == 0; }

// The whole model's copy of a buffer laid out like the parameters (params,
// m, v): malloc'd host, num_parameters_full floats. Collective over tp.
static float* params_to_host(const GPT* model, const float* device_buf) {
    float* host = mallocCheck(model->num_parameters_full * sizeof(float));
    gpt_gather_full(model, device_buf, host);
    return host;
}

// Builds the model (this rank's shard under tp) from the whole model on the host.
static void build_from_host(GPT* model, GPTConfig config, const Ops* ops, Comm* tp, const float* host) {
    gpt_build_tp(model, config, ops, tp);
    size_t offsets[NUM_PARAMETER_TENSORS], total;
    param_offsets(&config, offsets, &total);
    assertCheck(total == model->num_parameters_full);
    gpt_shard_from_full(model, host, model->params_memory);
    model->adam_step = 0;
}

static float* host_params_alloc(const GPTConfig* c) {
    size_t offsets[NUM_PARAMETER_TENSORS], total;
    param_offsets(c, offsets, &total);
    return callocCheck(total, sizeof(float));
}

// ----------------------------------------------------------------------------
// native checkpoints

static json_t* native_metadata(const GPTConfig* c) {
    json_t* m = json_object();
    json_object_set_new(m, "format", json_string("rlhfd"));
    json_object_set_new(m, "format_version", json_string("1"));
    for (int i = 0; i < 5; i++) {
        char v[32];
        snprintf(v, sizeof v, "%d", config_get(c, i));
        json_object_set_new(m, CONFIG_KEYS[i], json_string(v));
    }
    return m;
}

// Config from a native model.safetensors' metadata.
static void native_metadata_config(const StFile* f, GPTConfig* c) {
    for (int i = 0; i < 5; i++) {
        const char* v = st_meta(f, CONFIG_KEYS[i]);
        char* end = NULL;
        long x = v ? strtol(v, &end, 10) : 0;
        if (!v || end == v || *end || x <= 0 || x > INT32_MAX)
            fatalf("%s: metadata key '%s' is missing or not a positive integer", f->path, CONFIG_KEYS[i]);
        *config_field(c, i) = (int)x;
    }
    config_check_or_die(c, f->path);
}

static int is_native_st(const StFile* f) {
    const char* fmt = st_meta(f, "format");
    return fmt && !strcmp(fmt, "rlhfd");
}

// Reads state.json of dir; NULL + err if missing or invalid.
static json_t* state_read(const char* dir, char* err, size_t n) {
    char* path = path_join(dir, "state.json");
    json_error_t jerr;
    json_t* st = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!st) {
        struct stat sb;
        if (stat(path, &sb) != 0) snprintf(err, n, "%s: missing (not a complete checkpoint)", path);
        else snprintf(err, n, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
        free(path);
        return NULL;
    }
    const char* fmt = json_string_value(json_object_get(st, "format"));
    if (!json_is_object(st) || !fmt || strcmp(fmt, "rlhfd") != 0) {
        snprintf(err, n, "%s: not an rlhfd checkpoint state (\"format\" is not \"rlhfd\")", path);
        json_decref(st);
        free(path);
        return NULL;
    }
    free(path);
    return st;
}

// Checks one file listed in state.json's "files" (size, and crc32 if with_crc);
// 0 ok, else -1 + err.
static int verify_file_ex(const char* dir, const char* name, json_t* entry, int with_crc, char* err,
                          size_t n) {
    if (strchr(name, '/') || !strcmp(name, "..") || !strcmp(name, ".")) {
        snprintf(err, n, "%s/state.json: bad file name '%s'", dir, name);
        return -1;
    }
    json_t* jbytes = json_object_get(entry, "bytes");
    json_t* jcrc = json_object_get(entry, "crc32");
    if (!json_is_integer(jbytes) || !json_is_integer(jcrc)) {
        snprintf(err, n, "%s/state.json: entry of '%s' lacks integer \"bytes\"/\"crc32\"", dir, name);
        return -1;
    }
    char* path = path_join(dir, name);
    uint32_t crc = (uint32_t)json_integer_value(jcrc);
    uint64_t size;
    struct stat sb;
    int rc_read = with_crc ? file_crc32(path, &crc, &size) : stat(path, &sb);
    if (rc_read != 0) {
        snprintf(err, n, "%s: cannot read: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    if (!with_crc) size = (uint64_t)sb.st_size;
    uint64_t want_size = (uint64_t)json_integer_value(jbytes);
    uint32_t want_crc = (uint32_t)json_integer_value(jcrc);
    int rc = 0;
    if (size != want_size) {
        snprintf(err, n, "%s: size %llu bytes, expected %llu (truncated or incomplete)", path,
                 (unsigned long long)size, (unsigned long long)want_size);
        rc = -1;
    } else if (crc != want_crc) {
        snprintf(err, n, "%s: crc32 0x%08x, expected 0x%08x (corrupted)", path, crc, want_crc);
        rc = -1;
    }
    free(path);
    return rc;
}

static int verify_file(const char* dir, const char* name, json_t* entry, char* err, size_t n) {
    return verify_file_ex(dir, name, entry, 1, err, n);
}

// checkpoint_verify; with_crc = 0 only checks sizes (cheap, for pruning).
static int checkpoint_check(const char* dir, int with_crc, char* err, size_t errlen) {
    json_t* st = state_read(dir, err, errlen);
    if (!st) return -1;
    GPTConfig c;
    char cerr[200];
    if (config_from_json(json_object_get(st, "config"), &c, cerr, sizeof cerr) != 0) {
        snprintf(err, errlen, "%s/state.json: %s", dir, cerr);
        json_decref(st);
        return -1;
    }
    json_t* files = json_object_get(st, "files");
    if (!json_is_object(files) || !json_object_get(files, "model.safetensors")) {
        snprintf(err, errlen, "%s/state.json: \"files\" does not list model.safetensors", dir);
        json_decref(st);
        return -1;
    }
    const char* name;
    json_t* entry;
    json_object_foreach(files, name, entry) {
        if (verify_file_ex(dir, name, entry, with_crc, err, errlen) != 0) {
            json_decref(st);
            return -1;
        }
    }
    json_decref(st);
    return 0;
}

int checkpoint_verify(const char* dir, char* err, size_t errlen) {
    return checkpoint_check(dir, 1, err, errlen);
}

int checkpoint_has_optimizer(const char* dir) {
    char err[16];
    json_t* st = state_read(dir, err, sizeof err);
    if (!st) return 0;
    int has = json_object_get(json_object_get(st, "files"), "optimizer.safetensors") != NULL;
    json_decref(st);
    return has;
}

// Reads a native model.safetensors (already opened) into a new model.
static void load_native_tensors(GPT* model, const StFile* f, const GPTConfig* c, const Ops* ops, Comm* tp) {
    Layout lay = layout_native(c, "");
    layout_check(&lay, f, c, "the checkpoint config");
    float* host = host_params_alloc(c);
    layout_read(&lay, f, host);
    build_from_host(model, *c, ops, tp, host);
    free(host);
    free(lay.slots);
}

static void load_native_dir(GPT* model, const char* dir, const Ops* ops, Comm* tp, json_t** state_out) {
    char err[1024];
    if (checkpoint_verify(dir, err, sizeof err) != 0) fatalf("checkpoint %s is invalid: %s", dir, err);
    json_t* st = state_read(dir, err, sizeof err);
    if (!st) fatalf("%s", err);
    GPTConfig c;
    if (config_from_json(json_object_get(st, "config"), &c, err, sizeof err) != 0)
        fatalf("%s/state.json: %s", dir, err);
    char* path = path_join(dir, "model.safetensors");
    StFile f;
    st_open(&f, path);
    if (!is_native_st(&f)) fatalf("%s: metadata \"format\" is not \"rlhfd\"", path);
    GPTConfig meta;
    native_metadata_config(&f, &meta);
    gpt_config_expect(&c, &meta, path);
    load_native_tensors(model, &f, &c, ops, tp);
    st_close(&f);
    free(path);
    if (state_out) *state_out = st;
    else json_decref(st);
}

// Unique name beside target for a temp file/dir of this process.
static char* sibling_name(const char* target, const char* tag) {
    char* clean = path_clean(target);
    size_t n = strlen(clean) + 48;
    char* p = mallocCheck(n);
    snprintf(p, n, "%s.%s-%ld", clean, tag, (long)getpid());
    free(clean);
    return p;
}

// Adds {"bytes", "crc32"} of dir/name to files, read back from the disk so
// the checksum covers what was really written.
static int record_file_try(json_t* files, const char* dir, const char* name, char* err, size_t errlen) {
    char* path = path_join(dir, name);
    uint32_t crc;
    uint64_t size;
    int rc = 0;
    if (file_crc32(path, &crc, &size) != 0) rc = io_error(err, errlen, path, "cannot read back", errno);
    else json_object_set_new(files, name, json_pack("{s:I, s:I}", "bytes", (json_int_t)size, "crc32",
                                                    (json_int_t)crc));
    free(path);
    return rc;
}

// A save may replace target only if it is absent, an empty dir or a checkpoint.
static int check_replaceable_try(const char* target, char* err, size_t errlen) {
    struct stat sb;
    if (lstat(target, &sb) != 0) return 0;
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "%s: exists and is not a directory; refusing to replace it", target);
        return -1;
    }
    if (is_file_in(target, "state.json")) return 0;
    DIR* d = opendir(target);
    int empty = 1;
    struct dirent* e;
    while (d && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    if (d) closedir(d);
    if (!empty) {
        snprintf(err, errlen, "%s: exists and is not an rlhfd checkpoint; refusing to replace it", target);
        return -1;
    }
    return 0;
}

// Moves the finished temp dir onto target, atomically replacing an old one.
// When it fails, the old checkpoint (if any) is still at target.
static int publish_dir_try(const char* tmp, const char* target, char* err, size_t errlen) {
    char* parent = path_parent(target);
    int rc = check_replaceable_try(target, err, errlen);
    if (rc == 0 && is_dir(target)) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, target, RENAME_EXCHANGE) == 0) {
            rc = fsync_dir_try(parent, err, errlen);
            remove_tree(tmp); // now holds the old checkpoint
        } else { // filesystem without RENAME_EXCHANGE: old aside, new in, old out
            char* old = sibling_name(target, "old");
            if (rename(target, old) != 0) {
                rc = io_error(err, errlen, target, "cannot move aside", errno);
            } else if (rename(tmp, target) != 0) {
                rc = io_error(err, errlen, tmp, "cannot rename into place", errno);
                if (rename(old, target) != 0) // put the old one back
                    fprintf(stderr, "rlhfd: warning: cannot move %s back to %s: %s\n", old, target, strerror(errno));
            } else {
                rc = fsync_dir_try(parent, err, errlen);
                remove_tree(old);
            }
            free(old);
        }
    } else if (rc == 0) {
        if (rename(tmp, target) != 0) rc = io_error(err, errlen, tmp, "cannot rename into place", errno);
        else rc = fsync_dir_try(parent, err, errlen);
    }
    free(parent);
    return rc;
}

// A file name a checkpoint may hold beside its own files: a plain name.
static int extra_file_name_ok(const char* name) {
    if (!name || !*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) return 0;
    return strcmp(name, "model.safetensors") && strcmp(name, "optimizer.safetensors") && strcmp(name, "state.json");
}

// Everything checkpoint_try_save writes into tmp (the temp dir, created).
// host: the whole model's parameters; mv (2 x num_parameters_full) its AdamW
// moments m then v, or NULL without the optimizer.
static int write_checkpoint_files(const GPT* model, const char* dir, const char* tmp, const float* host,
                                  const float* mv, const CheckpointSaveOptions* o, char* err, size_t errlen) {
    const GPTConfig* c = &model->config;
    json_t* files = json_object();
    Layout lay = layout_native(c, "");
    char* model_path = path_join(tmp, "model.safetensors");
    json_t* meta = native_metadata(c);
    int rc = 0;
    if (o->extra_meta) {
        const char* key;
        json_t* value;
        json_object_foreach(o->extra_meta, key, value) {
            if (json_object_get(meta, key)) {
                snprintf(err, errlen, "%s: extra metadata '%s' clashes with the model's", dir, key);
                rc = -1;
                break;
            }
            json_object_set(meta, key, value);
        }
    }
    if (rc == 0) rc = layout_write_extra(&lay, host, model_path, meta, o->extra, o->num_extra, err, errlen);
    json_decref(meta);
    free(model_path);
    free(lay.slots);
    if (rc == 0) rc = record_file_try(files, tmp, "model.safetensors", err, errlen);

    if (rc == 0 && o->with_optimizer) {
        // one file: m.<name> tensors then v.<name> tensors, zeros before the first update
        size_t n = model->num_parameters_full;
        Layout lm = layout_native(c, "m.");
        Layout lv = layout_native(c, "v.");
        Layout both = {0};
        for (int i = 0; i < lm.n; i++) *layout_add(&both) = lm.slots[i];
        for (int i = 0; i < lv.n; i++) {
            TensorSlot* s = layout_add(&both);
            *s = lv.slots[i];
            s->offset += n;
        }
        json_t* ometa = native_metadata(c);
        char step[32];
        snprintf(step, sizeof step, "%d", model->adam_step);
        json_object_set_new(ometa, "adam_step", json_string(step));
        char* opt_path = path_join(tmp, "optimizer.safetensors");
        rc = layout_write_extra(&both, mv, opt_path, ometa, NULL, 0, err, errlen);
        json_decref(ometa);
        free(opt_path);
        free(lm.slots);
        free(lv.slots);
        free(both.slots);
        if (rc == 0) rc = record_file_try(files, tmp, "optimizer.safetensors", err, errlen);
    }

    for (int i = 0; rc == 0 && i < o->num_files; i++) {
        const CheckpointFile* f = &o->files[i];
        char* path = path_join(tmp, f->name);
        rc = write_file_sync_try(path, f->data, f->size, err, errlen);
        free(path);
        if (rc == 0) rc = record_file_try(files, tmp, f->name, err, errlen);
    }

    if (rc == 0) {
        json_t* st = json_object();
        json_object_set_new(st, "format", json_string("rlhfd"));
        json_object_set_new(st, "version", json_integer(STATE_VERSION));
        json_object_set_new(st, "step", json_integer(model->adam_step));
        json_object_set_new(st, "config", config_to_json(c));
        json_object_set(st, "state", o->state ? o->state : json_null());
        json_object_set(st, "files", files);
        char* state_path = path_join(tmp, "state.json");
        rc = write_json_sync_try(state_path, st, err, errlen);
        free(state_path);
        json_decref(st);
    }
    json_decref(files);
    if (rc == 0) rc = fsync_dir_try(tmp, err, errlen);
    return rc;
}

// The writer's part of checkpoint_try_save: temp dir, files, atomic publish.
static int save_files(const GPT* model, const char* dir, const float* host, const float* mv,
                      const CheckpointSaveOptions* o, char* err, size_t errlen) {
    if (check_replaceable_try(dir, err, errlen) != 0) return -1;
    char* parent = path_parent(dir);
    int rc = mkdir_p_try(parent, err, errlen);
    free(parent);
    if (rc != 0) return -1;
    char* tmp = sibling_name(dir, "tmp");
    struct stat sb;
    if (lstat(tmp, &sb) == 0) remove_tree(tmp); // leftover of a crashed save by our pid
    if (mkdir(tmp, 0755) != 0) {
        rc = io_error(err, errlen, tmp, "cannot create directory", errno);
        free(tmp);
        return rc;
    }
    rc = write_checkpoint_files(model, dir, tmp, host, mv, o, err, errlen);
    if (rc == 0) rc = publish_dir_try(tmp, dir, err, errlen);
    // On failure nothing of this save may linger (a full disk stays full
    // otherwise); the previous checkpoints were never touched.
    if (rc != 0 && lstat(tmp, &sb) == 0) remove_tree(tmp);
    free(tmp);
    return rc;
}

int checkpoint_try_save(const GPT* model, const char* dir, const CheckpointSaveOptions* opts, char* err,
                        size_t errlen) {
    static const CheckpointSaveOptions none = {0};
    const CheckpointSaveOptions* o = opts ? opts : &none;
    for (int i = 0; i < o->num_extra; i++)
        for (int k = 0; k < NUM_PARAMETER_TENSORS; k++)
            if (!strcmp(o->extra[i].name, GPT_PARAM_NAMES[k])) {
                snprintf(err, errlen, "%s: extra tensor '%s' clashes with a model tensor", dir, o->extra[i].name);
                return -1;
            }
    for (int i = 0; i < o->num_files; i++) {
        if (!extra_file_name_ok(o->files[i].name)) {
            snprintf(err, errlen, "%s: extra file name '%s' is not allowed", dir,
                     o->files[i].name ? o->files[i].name : "(null)");
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(o->files[i].name, o->files[j].name)) {
                snprintf(err, errlen, "%s: extra file '%s' given twice", dir, o->files[i].name);
                return -1;
            }
    }
    // the whole model on the host (under tp: gathered by every tp rank; the
    // checks above depend only on the arguments, so all ranks got here)
    float* host = params_to_host(model, model->params_memory);
    float* mv = NULL;
    if (o->with_optimizer) { // zeros before the first update
        size_t n = model->num_parameters_full;
        mv = callocCheck(2 * n, sizeof(float));
        if (model->m_memory) gpt_gather_full(model, model->m_memory, mv);
        if (model->v_memory) gpt_gather_full(model, model->v_memory, mv + n);
    }
    int rc = is_writer(model) ? save_files(model, dir, host, mv, o, err, errlen) : 0;
    free(host);
    free(mv);
    if (model->tp_size > 1) { // every tp rank returns the writer's result, after it is done
        comm_broadcast(model->tp, &rc, 1, COMM_I32, 0);
        if (rc != 0 && model->tp_rank != 0)
            snprintf(err, errlen, "%s: not written (tp rank 0 reports the reason)", dir);
    }
    return rc;
}

void checkpoint_save(const GPT* model, const char* dir, json_t* state, int with_optimizer) {
    checkpoint_save_extra(model, dir, state, with_optimizer, NULL, 0, NULL);
}

void checkpoint_save_extra(const GPT* model, const char* dir, json_t* state, int with_optimizer,
                           const StWriteTensor* extra, int num_extra, json_t* extra_meta) {
    CheckpointSaveOptions o = {.state = state, .with_optimizer = with_optimizer, .extra = extra,
                               .num_extra = num_extra, .extra_meta = extra_meta};
    char err[1024];
    if (checkpoint_try_save(model, dir, &o, err, sizeof err) != 0) fatalf("checkpoint %s not written: %s", dir, err);
}

int checkpoint_read_file(const char* dir, const char* name, void** data, size_t* size, char* err,
                         size_t errlen) {
    *data = NULL;
    *size = 0;
    json_t* st = state_read(dir, err, errlen);
    if (!st) return -1;
    json_t* entry = json_object_get(json_object_get(st, "files"), name);
    json_t* jbytes = json_object_get(entry, "bytes");
    json_t* jcrc = json_object_get(entry, "crc32");
    if (!entry || !json_is_integer(jbytes) || !json_is_integer(jcrc) || !extra_file_name_ok(name)) {
        snprintf(err, errlen, "%s/state.json: does not list a file '%s'", dir, name);
        json_decref(st);
        return -1;
    }
    uint64_t want_size = (uint64_t)json_integer_value(jbytes);
    uint32_t want_crc = (uint32_t)json_integer_value(jcrc);
    json_decref(st);
    char* path = path_join(dir, name);
    FILE* fp = fopen(path, "rb");
    if (!fp) {
        io_error(err, errlen, path, "cannot open", errno);
        free(path);
        return -1;
    }
    // One byte more than expected: a longer file is caught by the size check.
    unsigned char* buf = mallocCheck((size_t)want_size + 1);
    size_t got = fread(buf, 1, (size_t)want_size + 1, fp);
    int rd_err = ferror(fp);
    fclose(fp);
    int rc = 0;
    if (rd_err) {
        rc = io_error(err, errlen, path, "read failed", errno ? errno : EIO);
    } else if (got != want_size) {
        snprintf(err, errlen, "%s: size %s%llu bytes, expected %llu (truncated or incomplete)", path,
                 got > want_size ? "over " : "", (unsigned long long)(got > want_size ? want_size : got),
                 (unsigned long long)want_size);
        rc = -1;
    } else {
        uint32_t crc = (uint32_t)crc32_z(crc32_z(0L, Z_NULL, 0), buf, got);
        if (crc != want_crc) {
            snprintf(err, errlen, "%s: crc32 0x%08x, expected 0x%08x (corrupted)", path, crc, want_crc);
            rc = -1;
        }
    }
    free(path);
    if (rc != 0) {
        free(buf);
        return -1;
    }
    *data = buf;
    *size = got;
    return 0;
}

void checkpoint_load_optimizer(GPT* model, const char* dir) {
    char err[1024];
    json_t* st = state_read(dir, err, sizeof err);
    if (!st) fatalf("%s", err);
    json_t* entry = json_object_get(json_object_get(st, "files"), "optimizer.safetensors");
    if (!entry) fatalf("%s: checkpoint was saved without optimizer state (optimizer.safetensors)", dir);
    if (verify_file(dir, "optimizer.safetensors", entry, err, sizeof err) != 0)
        fatalf("checkpoint %s is invalid: %s", dir, err);
    json_decref(st);

    char* path = path_join(dir, "optimizer.safetensors");
    StFile f;
    st_open(&f, path);
    GPTConfig c;
    native_metadata_config(&f, &c);
    gpt_config_expect(&model->config, &c, path);
    const char* step = st_meta(&f, "adam_step");
    char* end = NULL;
    long adam_step = step ? strtol(step, &end, 10) : -1;
    if (!step || end == step || *end || adam_step < 0 || adam_step > INT32_MAX)
        fatalf("%s: metadata 'adam_step' is missing or not a non-negative integer", path);

    // the file holds the whole model's moments: every rank keeps its slice
    size_t n = model->num_parameters;
    float* host = mallocCheck(model->num_parameters_full * sizeof(float));
    const char* prefixes[2] = {"m.", "v."};
    float** dst[2] = {&model->m_memory, &model->v_memory};
    for (int k = 0; k < 2; k++) {
        Layout lay = layout_native(&c, prefixes[k]);
        layout_check(&lay, &f, &c, "the checkpoint config");
        layout_read(&lay, &f, host);
        free(lay.slots);
        if (!*dst[k]) *dst[k] = model->ops->alloc(n * sizeof(float));
        gpt_shard_from_full(model, host, *dst[k]);
    }
    model->adam_step = (int)adam_step;
    free(host);
    st_close(&f);
    free(path);
}

// ----------------------------------------------------------------------------
// Hugging Face GPT-2

static int json_int_key(json_t* cfg, const char* key, int* out) {
    json_t* v = json_object_get(cfg, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > INT32_MAX) return -1;
    *out = (int)json_integer_value(v);
    return 1;
}

static GPTConfig hf_read_config(const char* path) {
    json_error_t jerr;
    json_t* cfg = json_load_file(path, 0, &jerr);
    if (!cfg) {
        struct stat sb;
        if (stat(path, &sb) != 0) fatalf("%s: missing (a Hugging Face model needs its config.json)", path);
        fatalf("%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
    }
    if (!json_is_object(cfg)) fatalf("%s: not a JSON object", path);
    const char* type = json_string_value(json_object_get(cfg, "model_type"));
    if (type && strcmp(type, "gpt2") != 0) fatalf("%s: model_type is '%s', only gpt2 is supported", path, type);
    const char* act = json_string_value(json_object_get(cfg, "activation_function"));
    if (act && strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0)
        fprintf(stderr, "rlhfd: warning: %s: activation_function '%s' differs from GPT-2's gelu_new; "
                "rlhfd uses gelu_new\n", path, act);
    GPTConfig c;
    const char* keys[4] = {"n_embd", "n_head", "n_layer", "vocab_size"};
    int* dst[4] = {&c.channels, &c.num_heads, &c.num_layers, &c.vocab_size};
    for (int i = 0; i < 4; i++) {
        int r = json_int_key(cfg, keys[i], dst[i]);
        if (r <= 0) fatalf("%s: key \"%s\" is %s", path, keys[i], r ? "not a positive integer" : "missing");
    }
    int r = json_int_key(cfg, "n_positions", &c.max_seq_len);
    if (r == 0) r = json_int_key(cfg, "n_ctx", &c.max_seq_len);
    if (r <= 0) fatalf("%s: key \"n_positions\" (or \"n_ctx\") is %s", path,
                       r ? "not a positive integer" : "missing");
    json_decref(cfg);
    config_check_or_die(&c, path);
    return c;
}

static int ends_with(const char* s, const char* suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static void load_hf(GPT* model, const char* st_path, const char* config_path, const Ops* ops, Comm* tp) {
    GPTConfig c = hf_read_config(config_path);
    StFile f;
    st_open(&f, st_path);
    const char* prefix;
    if (st_find(&f, "transformer.wte.weight")) prefix = "transformer.";
    else if (st_find(&f, "wte.weight")) prefix = "";
    else fatalf("%s: tensor 'wte.weight' (or 'transformer.wte.weight') is missing: not a GPT-2 model", st_path);
    Layout lay = layout_hf(&c, prefix);
    char src[512];
    snprintf(src, sizeof src, "%s", config_path);
    layout_check(&lay, &f, &c, src);

    // Anything else must be a known buffer or the tied head.
    for (int i = 0; i < f.num_tensors; i++) {
        const char* name = f.tensors[i].name;
        int known = 0;
        for (int k = 0; k < lay.n && !known; k++) known = !strcmp(lay.slots[k].name, name);
        if (known || ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
            !strcmp(name, "lm_head.weight"))
            continue;
        fprintf(stderr, "rlhfd: warning: %s: ignoring unexpected tensor '%s'\n", st_path, name);
    }

    float* host = host_params_alloc(&c);
    layout_read(&lay, &f, host);
    const StTensor* head = st_find(&f, "lm_head.weight");
    if (head) { // tied to wte: must be identical
        int64_t want[2] = {c.vocab_size, c.channels};
        if (!shape_equal(head->shape, head->ndim, want, 2) || head->dtype == ST_OTHER)
            fatalf("%s: tensor 'lm_head.weight' does not match wte's shape (the head is tied to wte)", st_path);
        float* w = mallocCheck(head->numel * sizeof(float));
        st_read_f32(&f, head, w);
        if (memcmp(w, host, head->numel * sizeof(float)) != 0)
            fatalf("%s: tensor 'lm_head.weight' differs from wte; rlhfd only supports a tied LM head", st_path);
        free(w);
    }
    build_from_host(model, c, ops, tp, host);
    free(host);
    free(lay.slots);
    st_close(&f);
}

// Writes json to path atomically (temp file beside it, rename).
static void write_json_atomic(const char* path, json_t* obj) {
    char* tmp = sibling_name(path, "tmp");
    write_json_sync(tmp, obj);
    if (rename(tmp, path) != 0) fatalf("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    free(tmp);
}

void model_export_hf(const GPT* model, const char* dir) {
    const GPTConfig* c = &model->config;
    float* host = params_to_host(model, model->params_memory); // collective under tp
    if (!is_writer(model)) {
        free(host);
        return;
    }
    mkdir_p(dir);
    if (is_file_in(dir, "state.json"))
        fatalf("%s: is a native rlhfd checkpoint; refusing to export a Hugging Face model into it", dir);
    int special = c->vocab_size > 50256 ? 50256 : c->vocab_size - 1;
    json_t* cfg = json_pack(
        "{s:s, s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:n, s:f, s:f, s:f, s:f, s:f,"
        " s:i, s:i, s:b, s:b, s:b, s:b, s:s, s:b}",
        "model_type", "gpt2", "architectures", "GPT2LMHeadModel", "activation_function", "gelu_new",
        "vocab_size", c->vocab_size, "n_positions", c->max_seq_len, "n_ctx", c->max_seq_len,
        "n_embd", c->channels, "n_layer", c->num_layers, "n_head", c->num_heads, "n_inner",
        "layer_norm_epsilon", 1e-5, "initializer_range", 0.02, "attn_pdrop", 0.0, "embd_pdrop", 0.0,
        "resid_pdrop", 0.0, "bos_token_id", special, "eos_token_id", special,
        "scale_attn_weights", 1, "scale_attn_by_inverse_layer_idx", 0, "reorder_and_upcast_attn", 0,
        "tie_word_embeddings", 1, "torch_dtype", "float32", "use_cache", 1);
    assertCheck(cfg != NULL);
    char* cfg_path = path_join(dir, "config.json");
    write_json_atomic(cfg_path, cfg);
    json_decref(cfg);

    Layout lay = layout_hf(c, "");
    char* st_path = path_join(dir, "model.safetensors");
    char* tmp = sibling_name(st_path, "tmp");
    json_t* meta = json_pack("{s:s}", "format", "pt"); // transformers requires "pt"
    layout_write(&lay, host, tmp, meta);
    json_decref(meta);
    if (rename(tmp, st_path) != 0) fatalf("%s: cannot rename to %s: %s", tmp, st_path, strerror(errno));
    fsync_dir(dir);
    free(tmp);
    free(st_path);
    free(cfg_path);
    free(lay.slots);
    free(host);
}

// ----------------------------------------------------------------------------
// llm.c .bin

static void read_exact(FILE* fp, void* dst, size_t n, const char* path) {
    if (n && fread(dst, 1, n, fp) != n) fatalf("%s: unexpected end of file", path);
}

static void load_llmc(GPT* model, const char* path, const Ops* ops, Comm* tp) {
    FILE* fp = fopen(path, "rb");
    if (!fp) fatalf("%s: cannot open: %s", path, strerror(errno));
    int32_t header[LLMC_HEADER_INTS];
    if (fread(header, sizeof(int32_t), LLMC_HEADER_INTS, fp) != LLMC_HEADER_INTS)
        fatalf("%s: llm.c model file shorter than its %d-byte header", path, LLMC_HEADER_INTS * 4);
    if (header[0] != LLMC_MAGIC) fatalf("%s: bad magic %d (llm.c model files start with %d)", path, header[0], LLMC_MAGIC);
    int version = header[1];
    if (version != 3 && version != 5)
        fatalf("%s: llm.c model version %d not supported (3 = fp32, 5 = bf16)", path, version);
    GPTConfig c = {.max_seq_len = header[2], .vocab_size = header[3], .num_layers = header[4],
                   .num_heads = header[5], .channels = header[6]};
    int Vp = header[7];
    config_check_or_die(&c, path);
    if (Vp < c.vocab_size || Vp > (1 << 24))
        fatalf("%s: padded vocab size %d is smaller than the vocab size %d", path, Vp, c.vocab_size);

    size_t offsets[NUM_PARAMETER_TENSORS], total;
    param_offsets(&c, offsets, &total);
    size_t elt = version == 3 ? 4 : 2;
    size_t wte = (size_t)c.vocab_size * (size_t)c.channels;
    size_t pad = (size_t)(Vp - c.vocab_size) * (size_t)c.channels;
    uint64_t want = (uint64_t)LLMC_HEADER_INTS * 4 + (uint64_t)(total + pad) * elt;
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0) fatalf("%s: cannot stat: %s", path, strerror(errno));
    if ((uint64_t)sb.st_size != want)
        fatalf("%s: file is %lld bytes but its header (V=%d Vp=%d L=%d C=%d maxT=%d, version %d) "
               "needs %llu (truncated?)", path, (long long)sb.st_size, c.vocab_size, Vp,
               c.num_layers, c.channels, c.max_seq_len, version, (unsigned long long)want);

    float* host = host_params_alloc(&c);
    if (version == 3) {
        read_exact(fp, host, wte * 4, path);                    // wte rows 0..V-1
        if (fseek(fp, (long)(pad * 4), SEEK_CUR) != 0) fatalf("%s: seek failed", path);
        read_exact(fp, host + wte, (total - wte) * 4, path);    // wpe ... lnfb
    } else {
        size_t chunk = 1 << 20;
        uint16_t* buf = mallocCheck(chunk * 2);
        size_t done = 0, file_pos = 0; // floats of host written / elements of file read
        while (file_pos < total + pad) {
            size_t n = total + pad - file_pos < chunk ? total + pad - file_pos : chunk;
            read_exact(fp, buf, n * 2, path);
            for (size_t i = 0; i < n; i++, file_pos++) {
                if (file_pos >= wte && file_pos < wte + pad) continue; // padding rows
                uint32_t bits = (uint32_t)buf[i] << 16;
                memcpy(&host[done++], &bits, 4);
            }
        }
        free(buf);
    }
    fclose(fp);
    build_from_host(model, c, ops, tp, host);
    free(host);
}

void model_export_llmc(const GPT* model, const char* path) {
    const GPTConfig* c = &model->config;
    int Vp = (c->vocab_size + LLMC_VOCAB_PAD - 1) / LLMC_VOCAB_PAD * LLMC_VOCAB_PAD;
    int32_t header[LLMC_HEADER_INTS] = {0};
    header[0] = LLMC_MAGIC;
    header[1] = 3;
    header[2] = c->max_seq_len;
    header[3] = c->vocab_size;
    header[4] = c->num_layers;
    header[5] = c->num_heads;
    header[6] = c->channels;
    header[7] = Vp;
    float* host = params_to_host(model, model->params_memory); // collective under tp
    if (!is_writer(model)) {
        free(host);
        return;
    }
    size_t nparams = model->num_parameters_full;
    size_t wte = (size_t)c->vocab_size * (size_t)c->channels;
    size_t pad = (size_t)(Vp - c->vocab_size) * (size_t)c->channels;
    float* zeros = callocCheck(pad ? pad : 1, sizeof(float));

    char* parent = path_parent(path);
    mkdir_p(parent);
    char* tmp = sibling_name(path, "tmp");
    FILE* fp = fopen(tmp, "wb");
    if (!fp) fatalf("%s: cannot create: %s", tmp, strerror(errno));
    int ok = fwrite(header, sizeof header, 1, fp) == 1 &&
             fwrite(host, sizeof(float), wte, fp) == wte &&
             fwrite(zeros, sizeof(float), pad, fp) == pad &&
             fwrite(host + wte, sizeof(float), nparams - wte, fp) == nparams - wte;
    if (!ok || fflush(fp) != 0 || fsync(fileno(fp)) != 0) fatalf("%s: write failed: %s", tmp, strerror(errno));
    if (fclose(fp) != 0) fatalf("%s: write failed: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) fatalf("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    fsync_dir(parent);
    free(tmp);
    free(parent);
    free(zeros);
    free(host);
}

// ----------------------------------------------------------------------------
// run directories

// Step of a "ckpt-DDDDDDDD" name (8 to 10 digits, nothing after); -1 otherwise.
static long ckpt_step(const char* name) {
    if (strncmp(name, "ckpt-", 5) != 0) return -1;
    const char* d = name + 5;
    size_t n = strlen(d);
    if (n < 8 || n > 10) return -1;
    for (size_t i = 0; i < n; i++)
        if (d[i] < '0' || d[i] > '9') return -1;
    return strtol(d, NULL, 10);
}

char* run_dir_checkpoint_path(const char* run_dir, int step) {
    char name[32];
    snprintf(name, sizeof name, "ckpt-%08d", step);
    char* clean = path_clean(run_dir);
    char* p = path_join(clean, name);
    free(clean);
    return p;
}

static int cmp_int(const void* a, const void* b) {
    int x = *(const int*)a, y = *(const int*)b;
    return x < y ? -1 : x > y;
}

int run_dir_list(const char* run_dir, int** steps_out) {
    *steps_out = NULL;
    DIR* d = opendir(run_dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    int* steps = NULL;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        long step = ckpt_step(e->d_name);
        if (step < 0 || step > INT32_MAX) continue;
        char* p = path_join(run_dir, e->d_name);
        int dir = is_dir(p);
        free(p);
        if (!dir) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            steps = reallocCheck(steps, (size_t)cap * sizeof(int));
        }
        steps[n++] = (int)step;
    }
    closedir(d);
    if (n) qsort(steps, (size_t)n, sizeof(int), cmp_int);
    *steps_out = steps;
    return n;
}

char* run_dir_latest_checkpoint(const char* run_dir) {
    int* steps;
    int n = run_dir_list(run_dir, &steps);
    char* found = NULL;
    for (int i = n - 1; i >= 0 && !found; i--) {
        char* p = run_dir_checkpoint_path(run_dir, steps[i]);
        char err[1024];
        if (checkpoint_verify(p, err, sizeof err) == 0) {
            found = p;
        } else {
            fprintf(stderr, "rlhfd: warning: skipping checkpoint %s: %s\n", p, err);
            free(p);
        }
    }
    free(steps);
    return found;
}

void run_dir_prune(const char* run_dir, int keep_last) {
    if (keep_last < 1) keep_last = 1;
    int* steps;
    int n = run_dir_list(run_dir, &steps);
    // The size check cannot see a flipped byte, so the kept window could
    // hold only corrupt checkpoints: the newest one that passes the full crc
    // check (normally the newest of all, just written) is never deleted,
    // however old.
    int kept_valid = 0, have_good = 0;
    for (int i = n - 1; i >= 0; i--) {
        char* p = run_dir_checkpoint_path(run_dir, steps[i]);
        char err[1024];
        if (kept_valid < keep_last) {
            if (checkpoint_check(p, 0, err, sizeof err) == 0) { // sizes only: cheap
                kept_valid++;
                if (!have_good) {
                    if (checkpoint_check(p, 1, err, sizeof err) == 0) have_good = 1;
                    else fprintf(stderr, "rlhfd: warning: checkpoint %s is corrupt (%s); keeping an older valid one\n", p, err);
                }
            }
        } else if (!have_good && checkpoint_check(p, 1, err, sizeof err) == 0) {
            have_good = 1; // kept: the newest checkpoint a resume can use
        } else {
            remove_tree(p);
        }
        free(p);
    }
    free(steps);
    if (n) fsync_dir(run_dir);

    // Temp dirs of crashed saves ("ckpt-N.tmp-PID", "ckpt-N.old-PID") of other processes.
    DIR* d = opendir(run_dir);
    if (!d) return;
    char mine_tmp[32], mine_old[32];
    snprintf(mine_tmp, sizeof mine_tmp, ".tmp-%ld", (long)getpid());
    snprintf(mine_old, sizeof mine_old, ".old-%ld", (long)getpid());
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "ckpt-", 5) != 0) continue;
        if (!strstr(e->d_name, ".tmp-") && !strstr(e->d_name, ".old-")) continue;
        if (ends_with(e->d_name, mine_tmp) || ends_with(e->d_name, mine_old)) continue;
        char* p = path_join(run_dir, e->d_name);
        remove_tree(p);
        free(p);
    }
    closedir(d);
}

// ----------------------------------------------------------------------------
// detection and the one loader

static int file_magic_llmc(const char* path) {
    FILE* fp = fopen(path, "rb");
    if (!fp) return 0;
    int32_t magic = 0;
    int ok = fread(&magic, 4, 1, fp) == 1 && magic == LLMC_MAGIC;
    fclose(fp);
    return ok;
}

ModelFormat model_detect(const char* path) {
    struct stat sb;
    if (stat(path, &sb) != 0) fatalf("%s: cannot open model: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        if (is_file_in(path, "state.json")) return MODEL_NATIVE_DIR;
        int has_st = is_file_in(path, "model.safetensors");
        if (is_file_in(path, "config.json") && has_st) return MODEL_HF_DIR;
        int* steps;
        int n = run_dir_list(path, &steps);
        free(steps);
        if (n > 0) return MODEL_RUN_DIR;
        if (has_st)
            fatalf("%s: has model.safetensors but neither state.json (native checkpoint) nor "
                   "config.json (Hugging Face)", path);
        if (is_file_in(path, "config.json"))
            fatalf("%s: has config.json but no model.safetensors (only safetensors weights are supported)", path);
        fatalf("%s: not a model directory (expected state.json, config.json + model.safetensors, "
               "or ckpt-* checkpoints)", path);
    }
    if (!S_ISREG(sb.st_mode)) fatalf("%s: not a regular file or directory", path);
    if (file_magic_llmc(path)) return MODEL_LLMC;
    if (st_sniff(path)) {
        StFile f;
        st_open(&f, path);
        int native = is_native_st(&f);
        st_close(&f);
        return native ? MODEL_NATIVE_FILE : MODEL_HF_FILE;
    }
    fatalf("%s: unrecognised model file (neither safetensors nor an llm.c .bin)", path);
}

const char* model_format_name(ModelFormat f) {
    switch (f) {
    case MODEL_NATIVE_DIR: return "native checkpoint";
    case MODEL_NATIVE_FILE: return "native model.safetensors";
    case MODEL_HF_DIR: return "Hugging Face directory";
    case MODEL_HF_FILE: return "Hugging Face model.safetensors";
    case MODEL_LLMC: return "llm.c .bin";
    case MODEL_RUN_DIR: return "run directory";
    }
    return "?";
}

char* model_resolve(const char* path) {
    if (model_detect(path) != MODEL_RUN_DIR) return strdup(path);
    char* latest = run_dir_latest_checkpoint(path);
    if (!latest) fatalf("%s: run directory has no valid checkpoint", path);
    return latest;
}

void model_load(GPT* model, const char* path, const Ops* ops, json_t** state_out) {
    model_load_tp(model, path, ops, NULL, state_out);
}

void model_load_tp(GPT* model, const char* path, const Ops* ops, Comm* tp, json_t** state_out) {
    if (state_out) *state_out = NULL;
    ModelFormat fmt = model_detect(path);
    switch (fmt) {
    case MODEL_RUN_DIR: {
        char* latest = model_resolve(path);
        load_native_dir(model, latest, ops, tp, state_out);
        free(latest);
        return;
    }
    case MODEL_NATIVE_DIR:
        load_native_dir(model, path, ops, tp, state_out);
        return;
    case MODEL_NATIVE_FILE: {
        StFile f;
        st_open(&f, path);
        GPTConfig c;
        native_metadata_config(&f, &c);
        load_native_tensors(model, &f, &c, ops, tp);
        st_close(&f);
        return;
    }
    case MODEL_HF_DIR: {
        char* st_path = path_join(path, "model.safetensors");
        char* cfg_path = path_join(path, "config.json");
        load_hf(model, st_path, cfg_path, ops, tp);
        free(st_path);
        free(cfg_path);
        return;
    }
    case MODEL_HF_FILE: {
        char* dir = path_parent(path);
        char* cfg_path = path_join(dir, "config.json");
        load_hf(model, path, cfg_path, ops, tp);
        free(cfg_path);
        free(dir);
        return;
    }
    case MODEL_LLMC:
        load_llmc(model, path, ops, tp);
        return;
    }
}
