// train_util.c - token data, LR schedule, evaluation, run dirs, timing.
#define _GNU_SOURCE // nftw FTW_PHYS/FTW_DEPTH
#include "train_util.h"
#include "run_state.h"
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <glob.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "../common/check.h"
#include "../worker/model_io.h"

// ----------------------------------------------------------------------------
// token data

static void add_shard(TokenData* d, const char* path, int vocab) {
    d->shards = reallocCheck(d->shards, (size_t)(d->num_shards + 1) * sizeof(TokenShard));
    d->paths = reallocCheck(d->paths, (size_t)(d->num_shards + 1) * sizeof(char*));
    TokenShard* s = &d->shards[d->num_shards];
    memset(s, 0, sizeof *s);
    shard_read(s, path, vocab);
    d->paths[d->num_shards] = strdup(path);
    if (!d->paths[d->num_shards]) fatalf("out of memory");
    d->num_shards++;
    d->num_tokens += s->ntok;
}

void token_data_open(TokenData* d, const char* spec, int vocab, const char* what) {
    memset(d, 0, sizeof *d);
    if (!spec || !spec[0]) fatalf("%s: no token shard given", what);
    char* list = strdup(spec);
    if (!list) fatalf("out of memory");
    char* save = NULL;
    for (char* item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ') item++;
        size_t n = strlen(item);
        while (n > 0 && item[n - 1] == ' ') item[--n] = '\0';
        if (!n) continue;
        if (!strpbrk(item, "*?[")) { // a plain path: shard_read names it if it is missing
            add_shard(d, item, vocab);
            continue;
        }
        glob_t g;
        int rc = glob(item, 0, NULL, &g);
        if (rc == GLOB_NOMATCH) fatalf("%s: no file matches '%s'", what, item);
        if (rc != 0) fatalf("%s: cannot expand '%s'", what, item);
        for (size_t i = 0; i < g.gl_pathc; i++) add_shard(d, g.gl_pathv[i], vocab);
        globfree(&g);
    }
    free(list);
    if (d->num_shards == 0) fatalf("%s: no token shard given", what);
}

void token_data_free(TokenData* d) {
    for (int i = 0; i < d->num_shards; i++) {
        shard_free(&d->shards[i]);
        free(d->paths[i]);
    }
    free(d->shards);
    free(d->paths);
    memset(d, 0, sizeof *d);
}

void token_data_require_window(const TokenData* d, int T, const char* what) {
    for (int i = 0; i < d->num_shards; i++)
        if (d->shards[i].ntok < (size_t)T + 1)
            fatalf("%s: shard '%s' has %zu tokens, fewer than one window of %d (seq + 1)", what,
                   d->paths[i], d->shards[i].ntok, T + 1);
}

static void copy_window(const uint16_t* tok, int T, int* inputs, int* targets) {
    for (int t = 0; t < T; t++) {
        inputs[t] = tok[t];
        targets[t] = tok[t + 1];
    }
}

void token_data_random_batch(const TokenData* d, Rng* rng, int* inputs, int* targets, int B, int T) {
    size_t total_starts = 0; // valid window starts over all shards
    for (int i = 0; i < d->num_shards; i++)
        if (d->shards[i].ntok > (size_t)T) total_starts += d->shards[i].ntok - (size_t)T;
    assertCheck(total_starts > 0);
    for (int b = 0; b < B; b++) {
        size_t r = (size_t)rng_below(rng, total_starts);
        int i = 0;
        for (;; i++) {
            size_t starts = d->shards[i].ntok > (size_t)T ? d->shards[i].ntok - (size_t)T : 0;
            if (r < starts) break;
            r -= starts;
        }
        copy_window(d->shards[i].tokens + r, T, inputs + (size_t)b * T, targets + (size_t)b * T);
    }
}

static size_t shard_windows(const TokenShard* s, int T) {
    return s->ntok >= (size_t)T + 1 ? (s->ntok - (size_t)T - 1) / (size_t)T + 1 : 0;
}

size_t token_data_num_windows(const TokenData* d, int T) {
    size_t n = 0;
    for (int i = 0; i < d->num_shards; i++) n += shard_windows(&d->shards[i], T);
    return n;
}

void token_data_window(const TokenData* d, size_t w, int T, int* inputs, int* targets) {
    for (int i = 0; i < d->num_shards; i++) {
        size_t n = shard_windows(&d->shards[i], T);
        if (w < n) {
            copy_window(d->shards[i].tokens + w * (size_t)T, T, inputs, targets);
            return;
        }
        w -= n;
    }
    assertCheck(0 && "window index out of range");
}

double eval_windows(GPT* model, const TokenData* d, int B, int T, size_t max_windows,
                    size_t* num_predicted) {
    return eval_windows_dp(model, d, B, T, max_windows, NULL, num_predicted);
}

double eval_windows_dp(GPT* model, const TokenData* d, int B, int T, size_t max_windows, Comm* dp,
                       size_t* num_predicted) {
    size_t nw = token_data_num_windows(d, T);
    if (max_windows && nw > max_windows) nw = max_windows;
    size_t first = 0, last = nw; // this dp rank's windows
    if (dp) parallel_share(nw, dp->rank, dp->size, &first, &last);
    int* inputs = mallocCheck((size_t)B * T * sizeof(int));   // (B,T)
    int* targets = mallocCheck((size_t)B * T * sizeof(int));  // (B,T)
    double loss_sum = 0.0;
    for (size_t w0 = first; w0 < last; w0 += (size_t)B) {
        int rows = last - w0 < (size_t)B ? (int)(last - w0) : B;
        for (int b = 0; b < rows; b++)
            token_data_window(d, w0 + (size_t)b, T, inputs + (size_t)b * T, targets + (size_t)b * T);
        // pad a short last batch with masked rows so the model sees one shape
        for (size_t k = (size_t)rows * T; k < (size_t)B * T; k++) {
            inputs[k] = 0;
            targets[k] = -1;
        }
        gpt_forward(model, inputs, targets, NULL, B, T);
        loss_sum += (double)model->mean_loss * rows * T;
    }
    free(inputs);
    free(targets);
    comm_allreduce_f64(dp, &loss_sum, 1);
    if (num_predicted) *num_predicted = nw * (size_t)T;
    return nw ? loss_sum / ((double)nw * T) : 0.0;
}

// ----------------------------------------------------------------------------
// learning rate

float lr_schedule(int step, int total, int warmup, float lr, float min_lr) {
    if (warmup > 0 && step <= warmup) return lr * (float)step / (float)warmup;
    int decay_steps = total - warmup;
    if (decay_steps <= 0) return lr;
    double progress = (double)(step - warmup) / decay_steps; // (0, 1]
    if (progress > 1.0) progress = 1.0;
    return (float)(min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(M_PI * progress)));
}

// ----------------------------------------------------------------------------
// run directory

void make_dirs(const char* path) {
    char* p = strdup(path);
    if (!p) fatalf("out of memory");
    for (char* s = p + 1; ; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) fatalf("cannot create directory '%s': %s", p, strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) fatalf("'%s' is not a directory", p);
    free(p);
}

static int remove_entry(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
    (void)st; (void)flag; (void)ftw;
    if (remove(path) != 0) fatalf("cannot remove '%s': %s", path, strerror(errno));
    return 0;
}

void run_dir_clear(const char* dir) {
    DIR* dp = opendir(dir);
    if (!dp) return;
    struct dirent* e;
    char path[4096];
    while ((e = readdir(dp))) {
        if (strncmp(e->d_name, "ckpt-", 5) && strcmp(e->d_name, "metrics.jsonl")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
            fatalf("cannot remove '%s': %s", path, strerror(errno));
    }
    closedir(dp);
}

FILE* run_dir_start(const char* run_dir, const Config* cfg, int overwrite, char* metrics_path,
                    size_t cap) {
    if (!run_dir[0]) fatalf("%s: run.dir is empty", config_origin(cfg, "run.dir"));
    make_dirs(run_dir);
    int* old_steps = NULL;
    int num_old = run_dir_list(run_dir, &old_steps);
    free(old_steps);
    if (num_old > 0) {
        if (!overwrite)
            fatalf("run dir '%s' already holds checkpoints (set another run.dir, or pass --overwrite)", run_dir);
        run_dir_clear(run_dir);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", run_dir);
    json_t* j = config_to_json(cfg);
    if (json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0)
        fatalf("cannot write '%s'", path);
    json_decref(j);
    snprintf(metrics_path, cap, "%s/metrics.jsonl", run_dir);
    FILE* metrics = fopen(metrics_path, "w");
    if (!metrics) fatalf("cannot write '%s': %s", metrics_path, strerror(errno));
    return metrics;
}

void train_checkpoint_save(const GPT* model, const Config* cfg, const char* run_dir,
                           const char* kind, int step, double loss, double val_loss,
                           size_t tokens, char* path, size_t cap) {
    snprintf(path, cap, "%s/ckpt-%08d", run_dir, step);
    json_t* state = json_object();
    json_object_set_new(state, "kind", json_string(kind));
    json_object_set_new(state, "step", json_integer(step));
    json_object_set_new(state, "tokens", json_integer((json_int_t)tokens));
    json_object_set_new(state, "loss", json_real(loss));
    if (!isnan(val_loss)) json_object_set_new(state, "val_loss", json_real(val_loss));
    json_object_set_new(state, "config", config_to_json(cfg));
    checkpoint_save(model, path, state, 1);
    json_decref(state);
    int keep = config_int(cfg, "train.keep_checkpoints");
    if (keep > 0) run_dir_prune(run_dir, keep);
}

int train_checkpoint_try(const GPT* model, const Config* cfg, const char* run_dir, const char* kind, int step,
                         double loss, double val_loss, size_t tokens, json_t* state_extra, RunState* run_state,
                         char* path, size_t cap) {
    snprintf(path, cap, "%s/ckpt-%08d", run_dir, step);
    json_t* state = json_object();
    json_object_set_new(state, "kind", json_string(kind));
    json_object_set_new(state, "step", json_integer(step));
    json_object_set_new(state, "tokens", json_integer((json_int_t)tokens));
    json_object_set_new(state, "loss", json_real(loss));
    if (!isnan(val_loss)) json_object_set_new(state, "val_loss", json_real(val_loss));
    if (state_extra) json_object_update(state, state_extra);
    json_object_set_new(state, "config", config_to_json(cfg));
    CheckpointSaveOptions o = {.state = state, .with_optimizer = 1};
    if (run_state) run_state_attach(run_state, &o);
    char err[1024];
    int rc = checkpoint_try_save(model, path, &o, err, sizeof err);
    json_decref(state);
    if (comm_mpi_world_rank() != 0) return rc;
    if (rc != 0) {
        fprintf(stderr, "rlhfd: warning: checkpoint of step %d not written: %s (the previous checkpoints stay "
                        "valid; training goes on)\n", step, err);
        path[0] = '\0';
        return -1;
    }
    int keep = config_int(cfg, "train.keep_checkpoints");
    if (keep > 0) run_dir_prune(run_dir, keep);
    return 0;
}

int train_resume_resolve(Comm* world, const char* spec, const char* run_dir, char* ckpt, size_t cap) {
    uint8_t* buf = NULL;
    size_t len = 0;
    if (!world || world->rank == 0) {
        int found = resume_resolve(spec, run_dir, ckpt, cap);
        if (!found) ckpt[0] = '\0';
        len = strlen(ckpt) + 1;
        buf = (uint8_t*)ckpt;
    }
    if (world && world->size > 1) {
        comm_broadcast_bytes(world, &buf, &len, 0);
        if (world->rank != 0) {
            snprintf(ckpt, cap, "%s", (char*)buf);
            free(buf);
        }
    }
    if (ckpt[0] && comm_mpi_world_rank() == 0) fprintf(stderr, "resuming from %s\n", ckpt);
    return ckpt[0] != '\0';
}

FILE* run_dir_open(const char* run_dir, const Config* cfg, int overwrite, const RunState* resumed, char* metrics_path,
                   size_t cap) {
    if (!resumed) return run_dir_start(run_dir, cfg, overwrite, metrics_path, cap);
    snprintf(metrics_path, cap, "%s/metrics.jsonl", run_dir);
    run_state_rewind_metrics(resumed, metrics_path); // cut back to the checkpoint's step
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", run_dir);
    json_t* j = config_to_json(cfg);
    if (json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) fatalf("cannot write '%s'", path);
    json_decref(j);
    FILE* metrics = fopen(metrics_path, "a");
    if (!metrics) fatalf("cannot append to '%s': %s", metrics_path, strerror(errno));
    return metrics;
}

int train_checkpoint_agree(TrainWorld* w, RunState* rs, int step, const char* metrics_path, FILE* metrics) {
    int ok = 1;
    if (w->is_root) {
        char err[512];
        if (run_state_put_metrics(rs, metrics_path, metrics, err, sizeof err) != 0) {
            fprintf(stderr, "rlhfd: warning: checkpoint of step %d skipped: %s\n", step, err);
            ok = 0;
        }
    }
    comm_broadcast(w->par.world, &ok, 1, COMM_I32, 0);
    return ok;
}

// ----------------------------------------------------------------------------
// model shape <-> config

typedef struct {
    const char* key;
    size_t offset;
} ShapeKey;
static const ShapeKey SHAPE_KEYS[] = {
    {"model.layers", offsetof(GPTConfig, num_layers)},
    {"model.heads", offsetof(GPTConfig, num_heads)},
    {"model.embd", offsetof(GPTConfig, channels)},
    {"model.vocab", offsetof(GPTConfig, vocab_size)},
    {"model.ctx", offsetof(GPTConfig, max_seq_len)},
};
#define NUM_SHAPE_KEYS ((int)(sizeof SHAPE_KEYS / sizeof SHAPE_KEYS[0]))

static int* shape_field(GPTConfig* c, int i) { return (int*)((char*)c + SHAPE_KEYS[i].offset); }

GPTConfig config_model_shape(const Config* cfg) {
    GPTConfig c;
    for (int i = 0; i < NUM_SHAPE_KEYS; i++) *shape_field(&c, i) = config_int(cfg, SHAPE_KEYS[i].key);
    return c;
}

void config_adopt_model_shape(Config* cfg, GPTConfig got, const char* path) {
    for (int i = 0; i < NUM_SHAPE_KEYS; i++) {
        const char* key = SHAPE_KEYS[i].key;
        int have = *shape_field(&got, i);
        if (config_is_set(cfg, key) && config_int(cfg, key) != have)
            fatalf("%s: %s = %d, but model '%s' has %d (drop the key to take the model's)",
                   config_origin(cfg, key), key, config_int(cfg, key), path, have);
        char text[32];
        snprintf(text, sizeof text, "%d", have);
        config_set_value(cfg, key, text, "model.init");
    }
}

// ----------------------------------------------------------------------------
// output

void write_json_line(FILE* f, json_t* obj) {
    char* s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) fatalf("cannot format JSON (out of memory)");
    fputs(s, f);
    fputc('\n', f);
    free(s);
}

// ----------------------------------------------------------------------------
// time

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void format_duration(double seconds, char* buf, size_t cap) {
    if (!(seconds >= 0) || seconds > 1e9) seconds = 0;
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, cap, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    else snprintf(buf, cap, "%ld:%02ld", s / 60, s % 60);
}

Config* train_cli_config(const char* cmd, const char* synopsis, const char* model_help,
                         const char* run_dir_default, int with_skip_bad, TrainCli* cli, int argc, char** argv) {
    memset(cli, 0, sizeof *cli);
    int print_config = 0, help_config = 0;
    const ArgSpec specs[] = {
        {"config", ARG_STR, &cli->config_path, "FILE: INI config (see deploy/configs/)"},
        {"set", ARG_MULTI, &cli->sets, "KEY=VALUE: override a key, e.g. train.lr=1e-3 (repeatable)"},
        {"model", ARG_STR, &cli->model_path, model_help},
        {"overwrite", ARG_FLAG, &cli->overwrite, "clear old checkpoints and metrics from run.dir first"},
        {"resume", ARG_STR, &cli->resume,
         "auto|CKPT|RUN_DIR: continue exactly from a checkpoint (auto: the newest valid one of run.dir, "
         "or start fresh when there is none)"},
        {"print-config", ARG_FLAG, &print_config, "print the effective config (with origins) and exit"},
        {"help-config", ARG_FLAG, &help_config, "list every config key: type, default, doc"},
        {"skip-bad", ARG_FLAG, &cli->skip_bad, "skip (and count) bad or too long records instead of failing"},
    };
    // --skip-bad (last) only for commands that read records
    int nspecs = (int)(sizeof specs / sizeof specs[0]) - (with_skip_bad ? 0 : 1);
    args_parse(cmd, synopsis, specs, nspecs, argc, argv);
    if (help_config) {
        printf("config keys (INI '[section]' + 'key = value', or --set section.key=value):\n");
        config_print_help(stdout);
        return NULL;
    }
    Config* cfg = config_new();
    if (cli->config_path) config_load_file(cfg, cli->config_path);
    for (int i = 0; i < cli->sets.n; i++) config_set(cfg, cli->sets.items[i], "--set");
    if (cli->model_path) config_set_value(cfg, "model.init", cli->model_path, "--model");
    if (run_dir_default && !config_is_set(cfg, "run.dir"))
        config_set_value(cfg, "run.dir", run_dir_default, "default");
    if (print_config) {
        config_print(cfg, stdout);
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

const Ops* ops_by_name(const char* device, const char* precision, int threads, const char* what) {
    int bf16 = 0;
    if (!strcmp(precision, "bf16")) bf16 = 1;
    else if (strcmp(precision, "fp32")) fatalf("%s: precision '%s' is neither fp32 nor bf16", what, precision);
    if (!strcmp(device, "cpu")) {
        if (bf16) fatalf("%s: precision bf16 needs device cuda (the CPU backend is fp32 only)", what);
        ops_cpu_set_threads(threads);
        return ops_cpu();
    }
    if (strcmp(device, "cuda")) fatalf("%s: device '%s' is neither cpu nor cuda", what, device);
    // the collectives of dp/tp still move host buffers over MPI; NCCL
    // (worker/comm_nccl.c) is built but not yet wired into them
    if (comm_mpi_world_size() > 1)
        fatalf("%s: device cuda runs one process for now (this run has %d ranks): data and tensor parallelism "
               "on GPUs need the NCCL wiring that is not done yet", what, comm_mpi_world_size());
    const Ops* ops = ops_cuda();
    if (!ops) fatalf("%s: device cuda: no usable GPU (%s)", what, ops_cuda_error());
    ops_cuda_set_bf16(bf16);
    ops_cpu_set_threads(threads); // host-side work (sampling, data) still uses the CPU
    return ops;
}

const Ops* ops_from_config(const Config* cfg) {
    return ops_by_name(config_str(cfg, "run.device"), config_str(cfg, "run.precision"),
                       config_int(cfg, "train.threads"), "run.device / run.precision");
}

AdamWConfig config_adamw(const Config* cfg) {
    AdamWConfig a = {
        .lr = config_float(cfg, "train.lr"),
        .beta1 = config_float(cfg, "train.beta1"),
        .beta2 = config_float(cfg, "train.beta2"),
        .eps = config_float(cfg, "train.eps"),
        .weight_decay = config_float(cfg, "train.weight_decay"),
        .grad_clip = config_float(cfg, "train.grad_clip"),
    };
    return a;
}

// ----------------------------------------------------------------------------
// the run's world

void train_world_init(TrainWorld* w, const Config* cfg) {
    memset(w, 0, sizeof *w);
    parallel_init(&w->par, config_int(cfg, "parallel.tp"), config_float(cfg, "parallel.timeout"));
    dp_init(&w->dp, w->par.dp, w->par.tp, config_bool(cfg, "parallel.zero1"));
    w->is_root = w->par.rank == 0;
    if (w->par.size > 1 && w->is_root)
        fprintf(stderr, "world: %d ranks = dp %d x tp %d%s\n", w->par.size, w->par.dp_size, w->par.tp_size,
                w->dp.zero1 ? " | ZeRO-1" : "");
}

void train_world_free(TrainWorld* w) {
    dp_free(&w->dp);
    parallel_free(&w->par);
}

void train_world_share(const TrainWorld* w, int global, const char* what, int* begin, int* count) {
    if (global < w->par.dp_size)
        fatalf("%s = %d is smaller than the %d data-parallel ranks: the global batch must give every dp rank "
               "at least one row", what, global, w->par.dp_size);
    size_t b, e;
    parallel_share((size_t)global, w->par.dp_rank, w->par.dp_size, &b, &e);
    *begin = (int)b;
    *count = (int)(e - b);
}

double train_world_comm_seconds(const TrainWorld* w) {
    double s = 0.0;
    if (w->par.world) s += w->par.world->wait_seconds;
    if (w->par.dp) s += w->par.dp->wait_seconds;
    if (w->par.tp) s += w->par.tp->wait_seconds;
    return s;
}

double train_world_mean(const TrainWorld* w, double local_mean, double local_weight) {
    if (w->par.dp_size == 1) return local_mean;
    double v[2] = {local_mean * local_weight, local_weight};
    comm_allreduce_f64(w->par.dp, v, 2);
    return v[1] > 0 ? v[0] / v[1] : 0.0;
}

int train_resume_begin(TrainWorld* w, const char* spec, const Config* cfg, char* ckpt, size_t cap, RunState* rs) {
    run_state_init(rs);
    int resuming = train_resume_resolve(w->par.world, spec, config_str(cfg, "run.dir"), ckpt, cap);
    if (resuming) run_state_load(rs, ckpt);
    return resuming;
}
