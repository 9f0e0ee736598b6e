// test_run_state.c - checkpoints that lose nothing (coordinator/run_state.c,
// checkpoint_try_save / checkpoint_read_file / run_dir_prune in
// worker/model_io.c):
//   state        every run-state item round-trips bit for bit through a real
//                checkpoint (RNG continues the same stream, NaN doubles, data
//                order, KL controller, a Quark-style pool blob)
//   metrics      mark / rewind of metrics.jsonl: resumed == straight
//   corrupt      corrupt-checkpoint drill: a flipped byte / a truncated file /
//                a partial save are skipped by resume_find with a warning
//                naming them and why; prune never deletes the last good one
//   fsize        disk-full drill with RLIMIT_FSIZE (SIGXFSZ ignored): EFBIG,
//                named path, temp dir removed, previous checkpoint intact
//   eacces       unwritable run dir (not as root: root ignores permissions)
//   enospc DIR   DIR is a tiny tmpfs: ENOSPC (test_disk_full.sh mounts it)
//   erofs DIR    DIR is that tmpfs remounted read-only: EROFS
// With no argument: state metrics corrupt fsize eacces.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>
#include "coordinator/run_state.h"
#include "kernels/ops.h"
#include "worker/model_io.h"

static int failures = 0;
#define CHECK(cond, ...) do { \
    printf("%s ", (cond) ? "ok  " : "FAIL"); printf(__VA_ARGS__); printf("\n"); fflush(stdout); \
    if (!(cond)) failures++; } while (0)

static char tmp_root[] = "/tmp/rlhfd-runstate-XXXXXX";

static char* tpath(const char* name) {
    char* p = malloc(strlen(tmp_root) + strlen(name) + 2);
    sprintf(p, "%s/%s", tmp_root, name);
    return p;
}

static char* join(const char* a, const char* b) {
    char* p = malloc(strlen(a) + strlen(b) + 2);
    sprintf(p, "%s/%s", a, b);
    return p;
}

static GPTConfig tiny_config(void) {
    GPTConfig c = {.max_seq_len = 8, .vocab_size = 37, .num_layers = 2, .num_heads = 2, .channels = 8};
    return c;
}

static void tiny_model(GPT* m, uint64_t seed) {
    gpt_build(m, tiny_config(), ops_cpu());
    gpt_init_random(m, seed);
}

// ---- stderr capture: the warnings are part of what is tested
static int saved_fd = -1;
static char* capture_path;
static void capture_begin(void) {
    fflush(stderr);
    capture_path = tpath("stderr.txt");
    saved_fd = dup(2);
    int fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
}
// Returns the captured text (malloc'd) and echoes it to the real stderr.
static char* capture_end(void) {
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    FILE* f = fopen(capture_path, "r");
    char* buf = calloc(1, 1 << 16);
    size_t n = f ? fread(buf, 1, (1 << 16) - 1, f) : 0;
    buf[n] = '\0';
    if (f) fclose(f);
    free(capture_path);
    fputs(buf, stderr);
    return buf;
}

static int file_exists(const char* p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

// Number of entries of dir whose name contains s.
static int count_entries(const char* dir, const char* s) {
    DIR* d = opendir(dir);
    int n = 0;
    struct dirent* e;
    while (d && (e = readdir(d)) != NULL)
        if (strstr(e->d_name, s)) n++;
    if (d) closedir(d);
    return n;
}

static void flip_byte(const char* path, long offset) {
    FILE* f = fopen(path, "r+b");
    if (!f) { perror(path); exit(1); }
    fseek(f, offset, SEEK_SET);
    int c = fgetc(f);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0x20, f);
    fclose(f);
}

static char* slurp(const char* path, size_t* n) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* buf = malloc((size_t)size + 1);
    *n = fread(buf, 1, (size_t)size, f);
    buf[*n] = '\0';
    fclose(f);
    return buf;
}

static int save_plain(const GPT* m, const char* dir) {
    char err[1024];
    int rc = checkpoint_try_save(m, dir, NULL, err, sizeof err);
    if (rc != 0) printf("     save %s: %s\n", dir, err);
    return rc;
}

// ---- Quark-style pool: {prompt, response tokens, reward} records
typedef struct { char* prompt; int* tokens; size_t n; float reward; } PoolItem;

static void pool_write(ByteBuf* b, const PoolItem* items, size_t n) {
    bytebuf_put_u64(b, n);
    for (size_t i = 0; i < n; i++) {
        bytebuf_put_str(b, items[i].prompt);
        bytebuf_put_i32s(b, items[i].tokens, items[i].n);
        bytebuf_put_f32(b, items[i].reward);
    }
}

static void test_state(void) {
    printf("== state\n");
    GPT m;
    tiny_model(&m, 1);
    Rng rng;
    rng_seed(&rng, 42);
    for (int i = 0; i < 7; i++) rng_u64(&rng);
    KLController kl;
    kl_controller_init(&kl, 0.1f, 1, 6.0f, 10000.0f);
    kl_controller_update(&kl, 3.7f, 256);
    size_t n = 1000, *order = malloc(n * sizeof(size_t));
    for (size_t i = 0; i < n; i++) order[i] = (i * 7919) % n;
    PoolItem pool[3] = {{"first prompt", (int[]){1, 2, 3}, 3, 0.5f},
                        {"", (int[]){50255}, 1, -1.25f},
                        {"caf\xc3\xa9 \"q\"", NULL, 0, NAN}};
    ByteBuf blob = {0};
    pool_write(&blob, pool, 3);
    double nan_payload;
    uint64_t nan_bits = 0x7ff8000000000123ull;
    memcpy(&nan_payload, &nan_bits, 8);

    RunState rs;
    run_state_init(&rs);
    run_state_put_i64(&rs, "step", 123);
    run_state_put_i64(&rs, "min", INT64_MIN);
    run_state_put_u64(&rs, "seed", UINT64_MAX);
    run_state_put_f64(&rs, "tenth", 0.1);
    run_state_put_f64(&rs, "nan", nan_payload);
    run_state_put_f64(&rs, "ninf", -INFINITY);
    run_state_put_f64(&rs, "denormal", 4.9e-324);
    run_state_put_str(&rs, "algo", "quark \"v1\"");
    run_state_put_rng(&rs, "rng.data", &rng);
    run_state_put_kl(&rs, "kl", &kl);
    run_state_put_order(&rs, "prompts", order, n, 17, 3);
    run_state_put_order(&rs, "empty", NULL, 0, 0, 0);
    run_state_put_blob(&rs, "quark_pool", blob.data, blob.len);
    run_state_put_i64(&rs, "step", 124); // a second put replaces
    char* dir = tpath("run/ckpt-00000124");
    CheckpointSaveOptions o = {.with_optimizer = 1};
    run_state_attach(&rs, &o);
    char err[1024];
    int rc = checkpoint_try_save(&m, dir, &o, err, sizeof err);
    CHECK(rc == 0, "checkpoint_try_save with run-state files: %s", rc ? err : "saved");
    run_state_free(&rs);
    CHECK(checkpoint_verify(dir, err, sizeof err) == 0, "checkpoint verifies with the extra files");
    size_t sl;
    char* state_path = join(dir, "state.json");
    char* state = slurp(state_path, &sl);
    free(state_path);
    CHECK(state && strstr(state, "\"run_state.json\"") && strstr(state, "\"order.prompts\"") &&
              strstr(state, "\"blob.quark_pool\""),
          "state.json lists run_state.json, order.prompts, blob.quark_pool with their checksums");
    free(state);

    RunState back;
    run_state_load(&back, dir);
    CHECK(run_state_get_i64(&back, "step") == 124 && run_state_get_i64(&back, "min") == INT64_MIN,
          "i64 values (replaced, INT64_MIN)");
    CHECK(run_state_get_u64(&back, "seed") == UINT64_MAX, "u64 UINT64_MAX");
    double t = run_state_get_f64(&back, "tenth"), nn = run_state_get_f64(&back, "nan");
    double ni = run_state_get_f64(&back, "ninf"), dn = run_state_get_f64(&back, "denormal");
    CHECK(t == 0.1 && !memcmp(&nn, &nan_payload, 8) && ni == -INFINITY && dn == 4.9e-324,
          "doubles bit-exact (0.1, NaN payload, -inf, denormal)");
    CHECK(!strcmp(run_state_get_str(&back, "algo"), "quark \"v1\""), "string");
    Rng r2;
    run_state_get_rng(&back, "rng.data", &r2);
    int same = 1;
    for (int i = 0; i < 100; i++) same &= rng_u64(&rng) == rng_u64(&r2);
    CHECK(same, "restored RNG continues the same stream (100 draws)");
    KLController kl2;
    run_state_get_kl(&back, "kl", &kl2);
    CHECK(!memcmp(&kl, &kl2, sizeof kl) && kl2.value != 0.1f, "KL controller bit-exact (adapted value %g)",
          (double)kl2.value);
    size_t* order2, pos;
    uint64_t pass;
    run_state_get_order(&back, "prompts", n, &order2, &pos, &pass);
    CHECK(pos == 17 && pass == 3 && !memcmp(order, order2, n * sizeof(size_t)), "data order, position, pass");
    free(order2);
    run_state_get_order(&back, "empty", SIZE_MAX, &order2, &pos, &pass);
    CHECK(order2 == NULL && pos == 0, "empty order");
    void* data;
    size_t len;
    run_state_get_blob(&back, "quark_pool", &data, &len);
    ByteReader br = {.data = data, .len = len, .what = "quark_pool"};
    size_t count = byteread_u64(&br);
    int pool_ok = count == 3;
    for (size_t i = 0; pool_ok && i < count; i++) {
        char* p = byteread_str(&br);
        size_t k;
        int* toks = byteread_i32s(&br, &k);
        float rw = byteread_f32(&br);
        pool_ok = !strcmp(p, pool[i].prompt) && k == pool[i].n && (k == 0 || !memcmp(toks, pool[i].tokens, k * 4)) &&
                  !memcmp(&rw, &pool[i].reward, 4);
        free(p);
        free(toks);
    }
    byteread_end(&br);
    CHECK(pool_ok, "Quark pool blob: prompts, token lists, rewards (NaN too)");
    free(data);
    CHECK(run_state_has(&back, "kl") && !run_state_has(&back, "nope"), "run_state_has");
    run_state_free(&back);

    // a blob corrupted on disk is refused by checkpoint_read_file (and verify)
    char* bpath = join(dir, "blob.quark_pool");
    flip_byte(bpath, 3);
    void* d2;
    size_t n2;
    rc = checkpoint_read_file(dir, "blob.quark_pool", &d2, &n2, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "blob.quark_pool") && strstr(err, "corrupted"), "flipped blob refused: %s", err);
    CHECK(checkpoint_verify(dir, err, sizeof err) != 0, "and the checkpoint no longer verifies");
    rc = checkpoint_read_file(dir, "state.json", &d2, &n2, err, sizeof err);
    CHECK(rc == -1, "checkpoint_read_file refuses an unlisted name: %s", err);
    free(bpath);

    // names a checkpoint may not hold
    CheckpointFile bad[2] = {{"state.json", "x", 1}, {"a/b", "x", 1}};
    for (int i = 0; i < 2; i++) {
        CheckpointSaveOptions ob = {.files = &bad[i], .num_files = 1};
        char* d3 = tpath("run/ckpt-00000999");
        rc = checkpoint_try_save(&m, d3, &ob, err, sizeof err);
        CHECK(rc == -1 && !file_exists(d3), "extra file '%s' refused: %s", bad[i].name, err);
        free(d3);
    }
    bytebuf_free(&blob);
    free(order);
    free(dir);
    gpt_free(&m);
}

static void write_lines(FILE* f, int from, int to) {
    for (int i = from; i < to; i++) fprintf(f, "{\"step\": %d, \"loss\": %.6f}\n", i, 1.0 / (i + 1));
}

static void test_metrics(void) {
    printf("== metrics\n");
    char* straight = tpath("straight.jsonl");
    char* resumed = tpath("metrics.jsonl");
    FILE* f = fopen(straight, "w");
    write_lines(f, 0, 10);
    fclose(f);
    // the run that stops: 6 lines, checkpoint, 2 more lines before it is killed
    f = fopen(resumed, "w");
    write_lines(f, 0, 6);
    RunState rs;
    run_state_init(&rs);
    char err[1024];
    int rc = run_state_put_metrics(&rs, resumed, f, err, sizeof err); // flushes f
    CHECK(rc == 0, "mark after 6 lines");
    write_lines(f, 6, 8);
    fclose(f);
    MetricsMark m;
    run_state_get_metrics(&rs, &m);
    CHECK(m.lines == 6, "mark: %lld lines, %lld bytes", (long long)m.lines, (long long)m.bytes);
    rc = metrics_rewind(resumed, &m, err, sizeof err);
    CHECK(rc == 0, "rewind drops the 2 lines after the checkpoint");
    f = fopen(resumed, "a");
    write_lines(f, 6, 10);
    fclose(f);
    size_t a, b;
    char* sa = slurp(straight, &a);
    char* sb = slurp(resumed, &b);
    CHECK(a == b && !memcmp(sa, sb, a), "resumed metrics.jsonl == straight (%zu bytes)", a);
    free(sa);
    free(sb);
    // a shorter or different file is not silently "rewound"
    MetricsMark big = {.bytes = m.bytes * 100, .lines = 600};
    rc = metrics_rewind(resumed, &big, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "shorter"), "shorter file refused: %s", err);
    MetricsMark other = {.bytes = m.bytes, .lines = 5};
    rc = metrics_rewind(resumed, &other, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "not the 5 lines"), "other content refused: %s", err);
    char* none = tpath("none.jsonl");
    MetricsMark zero = {0, 0};
    CHECK(metrics_rewind(none, &zero, err, sizeof err) == 0, "no file + empty mark: nothing to do");
    run_state_free(&rs);
    free(straight);
    free(resumed);
    free(none);
}

static void test_corrupt(void) {
    printf("== corrupt\n");
    char* run = tpath("drill");
    GPT m;
    tiny_model(&m, 2);
    for (int step = 10; step <= 30; step += 10) {
        char* d = run_dir_checkpoint_path(run, step);
        CheckpointSaveOptions o = {.with_optimizer = 1};
        char err[1024];
        m.adam_step = step;
        if (checkpoint_try_save(&m, d, &o, err, sizeof err) != 0) printf("save: %s\n", err);
        free(d);
    }
    char* partial = join(run, "ckpt-00000040.tmp-99999");
    mkdir(partial, 0755);
    char ckpt[4096];
    capture_begin();
    int found = resume_find(run, ckpt, sizeof ckpt);
    char* text = capture_end();
    CHECK(found && strstr(ckpt, "ckpt-00000030"), "all valid: newest (%s)", found ? ckpt : "none");
    CHECK(strstr(text, "ckpt-00000040.tmp-99999") && strstr(text, "partial"), "partial save named in a warning");
    free(text);

    // flip one byte inside the weights of the newest: same size, bad crc
    char* d30 = run_dir_checkpoint_path(run, 30);
    char* m30 = join(d30, "model.safetensors");
    struct stat sb;
    stat(m30, &sb);
    flip_byte(m30, sb.st_size - 5);
    capture_begin();
    found = resume_find(run, ckpt, sizeof ckpt);
    text = capture_end();
    CHECK(found && strstr(ckpt, "ckpt-00000020"), "flipped byte in ckpt 30: resume from %s", found ? ckpt : "none");
    CHECK(strstr(text, "ckpt-00000030/model.safetensors") && strstr(text, "corrupted"),
          "warning names the corrupt file and why");
    free(text);

    // truncate the optimizer of 20
    char* d20 = run_dir_checkpoint_path(run, 20);
    char* o20 = join(d20, "optimizer.safetensors");
    stat(o20, &sb);
    if (truncate(o20, sb.st_size / 2) != 0) perror("truncate");
    capture_begin();
    found = resume_find(run, ckpt, sizeof ckpt);
    text = capture_end();
    CHECK(found && strstr(ckpt, "ckpt-00000010"), "truncated ckpt 20 too: resume from %s", found ? ckpt : "none");
    CHECK(strstr(text, "ckpt-00000020/optimizer.safetensors") && strstr(text, "truncated"),
          "warning names the truncated file");
    free(text);
    CHECK(resume_resolve("auto", run, ckpt, sizeof ckpt) == 1 && strstr(ckpt, "ckpt-00000010"),
          "resume_resolve auto");
    CHECK(resume_resolve("none", run, ckpt, sizeof ckpt) == 0 && resume_resolve(NULL, run, ckpt, sizeof ckpt) == 0,
          "resume_resolve none / NULL: fresh start");
    char* empty = tpath("empty-run");
    CHECK(resume_find(empty, ckpt, sizeof ckpt) == 0, "missing run dir: start fresh");
    mkdir(empty, 0755);
    CHECK(resume_resolve("auto", empty, ckpt, sizeof ckpt) == 0, "empty run dir: start fresh");

    // prune, keep 1: 30 and 20 are bad, 10 is the only good one: it must stay
    // (30 passes the size-only check; its flipped byte needs the crc)
    capture_begin();
    run_dir_prune(run, 1);
    text = capture_end();
    char* d10 = run_dir_checkpoint_path(run, 10);
    char err[1024];
    CHECK(file_exists(d10) && checkpoint_verify(d10, err, sizeof err) == 0,
          "prune keep=1 with a corrupt newest keeps the last good checkpoint");
    CHECK(!file_exists(partial), "prune removed the stale partial save");
    CHECK(strstr(text, "ckpt-00000030") != NULL, "prune warned about the corrupt newest");
    free(text);
    // the next good save: now the older ones may go
    char* d40 = run_dir_checkpoint_path(run, 40);
    m.adam_step = 40;
    save_plain(&m, d40);
    run_dir_prune(run, 1);
    CHECK(file_exists(d40) && !file_exists(d10) && !file_exists(d30) && !file_exists(d20),
          "after a good save, prune keeps only it");
    free(d10); free(d20); free(d30); free(d40); free(m30); free(o20); free(partial); free(empty); free(run);
    gpt_free(&m);
}

// The drill shared by every "cannot write" case: a valid checkpoint A exists
// in run; saving a new one and replacing A both fail with want_errno in the
// message, the path named; nothing is left behind and A is untouched.
static void expect_save_fails(const char* run, const char* want_errno, size_t blob_bytes) {
    GPT m;
    tiny_model(&m, 5);
    char* a = run_dir_checkpoint_path(run, 1);
    size_t n0;
    char* sp = join(a, "state.json");
    char* before = slurp(sp, &n0);
    char* b = run_dir_checkpoint_path(run, 2);
    char* blob = calloc(1, blob_bytes ? blob_bytes : 1);
    CheckpointFile f = {"blob.big", blob, blob_bytes};
    CheckpointSaveOptions o = {.with_optimizer = 1, .files = &f, .num_files = blob_bytes ? 1 : 0};
    char err[1024];
    const char* targets[2] = {b, a};
    for (int k = 0; k < 2; k++) {
        m.adam_step = k ? 1 : 2;
        int rc = checkpoint_try_save(&m, targets[k], &o, err, sizeof err);
        CHECK(rc == -1 && strstr(err, want_errno) && strstr(err, run), "%s %s fails: %s",
              k ? "replacing" : "new", targets[k], rc ? err : "(saved!)");
    }
    CHECK(!file_exists(b), "no new checkpoint dir");
    CHECK(count_entries(run, ".tmp-") == 0 && count_entries(run, ".old-") == 0, "temp dir removed");
    size_t n1;
    char* after = slurp(sp, &n1);
    CHECK(checkpoint_verify(a, err, sizeof err) == 0 && before && after && n0 == n1 && !memcmp(before, after, n0),
          "previous checkpoint intact and valid");
    char ckpt[4096];
    CHECK(resume_find(run, ckpt, sizeof ckpt) == 1 && !strcmp(ckpt, a), "resume_find picks it");
    free(before); free(after); free(sp); free(a); free(b); free(blob);
    gpt_free(&m);
}

static void make_first(const char* run) {
    GPT m;
    tiny_model(&m, 5);
    char* a = run_dir_checkpoint_path(run, 1);
    m.adam_step = 1;
    save_plain(&m, a);
    free(a);
    gpt_free(&m);
}

static void test_fsize(void) {
    printf("== fsize (RLIMIT_FSIZE, SIGXFSZ ignored)\n");
    char* run = tpath("fsize-run");
    make_first(run);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4096; // the tiny model's weights are ~13 KB
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    expect_save_fails(run, "EFBIG", 0);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_DFL);
    free(run);
}

static void test_eacces(void) {
    printf("== eacces\n");
    if (geteuid() == 0) {
        printf("skip: running as root, which ignores permissions (test_disk_full.sh covers a read-only mount)\n");
        return;
    }
    char* run = tpath("ro-run");
    make_first(run);
    chmod(run, 0555);
    expect_save_fails(run, "EACCES", 0);
    chmod(run, 0755);
    free(run);
}

int main(int argc, char** argv) {
    if (!mkdtemp(tmp_root)) { perror("mkdtemp"); return 1; }
    if (argc >= 3 && !strcmp(argv[1], "enospc")) {
        printf("== enospc in %s\n", argv[2]);
        char* run = join(argv[2], "run");
        make_first(run);
        expect_save_fails(run, "ENOSPC", (size_t)4 << 20); // a 4 MiB blob on a 1 MiB tmpfs
        free(run);
    } else if (argc >= 3 && !strcmp(argv[1], "erofs")) {
        printf("== erofs in %s\n", argv[2]);
        char* run = join(argv[2], "run");
        expect_save_fails(run, "EROFS", 0);
        free(run);
    } else {
        test_state();
        test_metrics();
        test_corrupt();
        test_fsize();
        test_eacces();
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmp_root);
    printf("%s\n", failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}
