// test_model_io.c - the model_io / safetensors C API: native checkpoints with
// caller state and AdamW state, atomic replace, run dirs (list, latest valid,
// prune), gpt_config_expect, safetensors write/read.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/safetensors.h"
#include "worker/model_io.h"

static int failures = 0;
#define CHECK(cond, ...) do { \
    printf("%s ", (cond) ? "ok  " : "FAIL"); printf(__VA_ARGS__); printf("\n"); \
    if (!(cond)) failures++; } while (0)

static char tmp_root[] = "/tmp/rlhfd-modelio-XXXXXX";

static char* tpath(const char* name) {
    char* p = malloc(strlen(tmp_root) + strlen(name) + 2);
    sprintf(p, "%s/%s", tmp_root, name);
    return p;
}

static GPTConfig tiny_config(void) {
    GPTConfig c = {.max_seq_len = 8, .vocab_size = 37, .num_layers = 2, .num_heads = 2, .channels = 8};
    return c;
}

static int params_equal(const GPT* a, const GPT* b) {
    return a->num_parameters == b->num_parameters &&
           !memcmp(a->params_memory, b->params_memory, a->num_parameters * sizeof(float));
}

// Runs fn(arg) in a child with stderr captured; returns its exit code and
// copies the stderr text into out.
static int run_child(void (*fn)(void*), void* arg, char* out, size_t n) {
    char* errfile = tpath("child.stderr");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(errfile, "w", stderr)) _exit(99);
        fn(arg);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    FILE* f = fopen(errfile, "r");
    size_t got = f ? fread(out, 1, n - 1, f) : 0;
    out[got] = '\0';
    if (f) fclose(f);
    free(errfile);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void child_expect_mismatch(void* arg) {
    (void)arg;
    GPTConfig want = tiny_config(), got = tiny_config();
    got.num_layers = 6;
    want.num_layers = 4;
    gpt_config_expect(&want, &got, "some/ckpt");
}

static void child_load_optimizer(void* arg) {
    GPT m;
    model_load(&m, (const char*)arg, ops_cpu(), NULL);
    checkpoint_load_optimizer(&m, (const char*)arg);
}

static void test_checkpoint_with_state(void) {
    const Ops* ops = ops_cpu();
    GPT model;
    gpt_build(&model, tiny_config(), ops);
    gpt_init_random(&model, 1);
    size_t n = model.num_parameters;
    model.m_memory = ops->alloc(n * sizeof(float));
    model.v_memory = ops->alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        model.m_memory[i] = 0.25f * (float)i - 3.0f;
        model.v_memory[i] = 1e-3f * (float)(i % 97);
    }
    model.adam_step = 7;
    char* run = tpath("run");
    char* ckpt = run_dir_checkpoint_path(run, 7);
    json_t* state = json_pack("{s:i, s:s}", "data_pos", 123, "note", "hello");
    checkpoint_save(&model, ckpt, state, 1);
    json_decref(state);

    GPT loaded;
    json_t* st = NULL;
    model_load(&loaded, run, ops, &st); // run dir -> newest checkpoint
    CHECK(params_equal(&model, &loaded), "native save/load: %zu parameters bit-exact", n);
    CHECK(json_integer_value(json_object_get(st, "step")) == 7, "state.json step = adam_step 7");
    json_t* inner = json_object_get(st, "state");
    CHECK(json_integer_value(json_object_get(inner, "data_pos")) == 123 &&
          !strcmp(json_string_value(json_object_get(inner, "note")), "hello"), "caller state round-trips");
    CHECK(loaded.adam_step == 0 && loaded.m_memory == NULL, "model_load leaves the optimizer empty");
    CHECK(checkpoint_has_optimizer(ckpt), "checkpoint_has_optimizer");
    checkpoint_load_optimizer(&loaded, ckpt);
    CHECK(loaded.adam_step == 7 && !memcmp(loaded.m_memory, model.m_memory, n * sizeof(float)) &&
          !memcmp(loaded.v_memory, model.v_memory, n * sizeof(float)), "AdamW m, v, step round-trip");
    char* resolved = model_resolve(run);
    CHECK(!strcmp(resolved, ckpt), "model_resolve(run dir) = %s", resolved);
    CHECK(model_detect(run) == MODEL_RUN_DIR && model_detect(ckpt) == MODEL_NATIVE_DIR, "model_detect");
    free(resolved);
    json_decref(st);

    // replacing an existing checkpoint of the same name
    GPT other;
    GPTConfig c2 = tiny_config();
    c2.num_layers = 3;
    gpt_build(&other, c2, ops);
    gpt_init_random(&other, 2);
    checkpoint_save(&other, ckpt, NULL, 0);
    GPT reloaded;
    model_load(&reloaded, ckpt, ops, &st);
    CHECK(params_equal(&other, &reloaded) && !checkpoint_has_optimizer(ckpt) &&
          json_is_null(json_object_get(st, "state")), "existing checkpoint replaced atomically");
    json_decref(st);
    char out[1024];
    int rc = run_child(child_load_optimizer, ckpt, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "without optimizer"), "load_optimizer without one: exit %d: %s", rc, out);

    gpt_free(&reloaded);
    gpt_free(&other);
    gpt_free(&loaded);
    gpt_free(&model);
    free(ckpt);
    free(run);
}

static void test_run_dir(void) {
    const Ops* ops = ops_cpu();
    GPT model;
    gpt_build(&model, tiny_config(), ops);
    gpt_init_random(&model, 3);
    char* run = tpath("run2");
    for (int step = 1; step <= 5; step++) {
        model.adam_step = step;
        char* p = run_dir_checkpoint_path(run, step);
        checkpoint_save(&model, p, NULL, 0);
        free(p);
    }
    int* steps;
    int n = run_dir_list(run, &steps);
    CHECK(n == 5 && steps[0] == 1 && steps[4] == 5, "run_dir_list finds 5 checkpoints");
    free(steps);

    char* stale = tpath("run2/ckpt-00000003.tmp-999999"); // a crashed save of another process
    mkdir(stale, 0755);
    run_dir_prune(run, 2);
    n = run_dir_list(run, &steps);
    struct stat sb;
    CHECK(n == 2 && steps[0] == 4 && steps[1] == 5 && stat(stale, &sb) != 0,
          "prune keep 2 -> steps 4, 5; stale temp dir removed");
    free(steps);

    // truncate the newest: latest falls back to 4; prune 1 keeps 4 (and the broken 5)
    char* m5 = tpath("run2/ckpt-00000005/model.safetensors");
    CHECK(truncate(m5, 100) == 0, "truncate step 5");
    char* latest = run_dir_latest_checkpoint(run);
    char* want = run_dir_checkpoint_path(run, 4);
    CHECK(latest && !strcmp(latest, want), "latest valid = %s", latest ? latest : "(null)");
    run_dir_prune(run, 1);
    n = run_dir_list(run, &steps);
    CHECK(n == 2 && steps[0] == 4 && steps[1] == 5, "prune keep 1 never deletes the last valid one");
    free(steps);
    char err[512];
    CHECK(checkpoint_verify(want, err, sizeof err) == 0, "checkpoint_verify(step 4) ok");
    char* p5 = run_dir_checkpoint_path(run, 5);
    CHECK(checkpoint_verify(p5, err, sizeof err) != 0 && strstr(err, "model.safetensors"),
          "checkpoint_verify(step 5): %s", err);
    char* empty = tpath("empty_run");
    mkdir(empty, 0755);
    char* none = run_dir_latest_checkpoint(empty);
    CHECK(none == NULL, "empty run dir -> NULL");
    free(empty);
    free(p5);
    free(latest);
    free(want);
    free(m5);
    free(stale);
    free(run);
    gpt_free(&model);
}

static void test_config_expect(void) {
    GPTConfig a = tiny_config(), b = tiny_config();
    gpt_config_expect(&a, &b, "x"); // equal: returns
    char out[1024];
    int rc = run_child(child_expect_mismatch, NULL, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "num_layers=6") && strstr(out, "4 was expected") && strstr(out, "some/ckpt"),
          "gpt_config_expect mismatch: exit %d: %s", rc, out);
}

static void test_safetensors(void) {
    float a[6] = {1, 2, 3, 4, 5, 6}, b[1] = {-7.5f};
    StWriteTensor t[2] = {{.name = "a", .data = a, .ndim = 2, .shape = {2, 3}},
                          {.name = "scalar", .data = b, .ndim = 0}};
    json_t* meta = json_pack("{s:s}", "k", "v");
    char* path = tpath("t.safetensors");
    st_write(path, t, 2, meta);
    json_decref(meta);
    StFile f;
    st_open(&f, path);
    const StTensor* ta = st_find(&f, "a");
    const StTensor* ts = st_find(&f, "scalar");
    float got[6] = {0}, gs = 0;
    if (ta) st_read_f32(&f, ta, got);
    if (ts) st_read_f32(&f, ts, &gs);
    CHECK(f.num_tensors == 2 && ta && ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3 &&
          !memcmp(got, a, sizeof a) && ts && ts->ndim == 0 && ts->numel == 1 && gs == -7.5f &&
          st_meta(&f, "k") && !strcmp(st_meta(&f, "k"), "v") && !st_find(&f, "nope"),
          "safetensors write/read: shapes, data, 0-d tensor, metadata");
    uint64_t header_len;
    memcpy(&header_len, f.map, 8);
    CHECK(header_len % 8 == 0, "header padded to a multiple of 8 (%llu)", (unsigned long long)header_len);
    st_close(&f);
    free(path);
}

int main(void) {
    if (!mkdtemp(tmp_root)) { perror("mkdtemp"); return 1; }
    test_safetensors();
    test_checkpoint_with_state();
    test_run_dir();
    test_config_expect();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmp_root);
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
