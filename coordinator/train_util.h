// train_util.h - pieces shared by the training commands (pretrain now; SFT,
// RM, PPO later): token data over one or more shards, the LR schedule,
// windowed evaluation, run directories, timing and progress lines.
#pragma once
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>
#include "../common/args.h"
#include "../common/config.h"
#include "../common/rng.h"
#include "../common/shard.h"
#include "../worker/comm.h"
#include "../worker/data_parallel.h"
#include "../worker/gpt.h"
#include "run_state.h"

// ---- token data: one or more shards read as one source of windows

typedef struct {
    TokenShard* shards;
    char** paths;  // path of each shard (owned)
    int num_shards;
    size_t num_tokens; // over all shards
} TokenData;

// Opens the shards named by `spec`: comma-separated paths, each of which may
// be a glob ("data/*.bin", expanded in sorted order). `what` names the source
// in errors (e.g. "data.train"). Every token must be < vocab. Fatal on error.
void token_data_open(TokenData* d, const char* spec, int vocab, const char* what);
void token_data_free(TokenData* d);
// Fatal unless every shard holds at least T+1 tokens (one full window).
void token_data_require_window(const TokenData* d, int T, const char* what);

// Training batches: each of the B rows is the window of T+1 tokens starting
// at a position drawn uniformly from all valid starts over all shards
// (windows never cross a shard boundary). Deterministic in the Rng state.
// inputs, targets: (B,T); targets are the inputs shifted by one.
void token_data_random_batch(const TokenData* d, Rng* rng, int* inputs, int* targets, int B, int T);

// Evaluation windows: in each shard, windows start at 0, T, 2T, ... while
// start+T+1 <= ntok; the windows of all shards are numbered in order.
size_t token_data_num_windows(const TokenData* d, int T);
// Window w: inputs (T) and targets (T).
void token_data_window(const TokenData* d, size_t w, int T, int* inputs, int* targets);

// Mean next-token cross-entropy over the first max_windows evaluation
// windows (0 = all), B windows per forward; a short last batch is padded with
// masked rows. *num_predicted receives windows*T. Uses model->mean_loss, so
// it works with any backend.
double eval_windows(GPT* model, const TokenData* d, int B, int T, size_t max_windows,
                    size_t* num_predicted);
// The same over a dp group: each dp rank evaluates its share of the windows
// and the loss sum is all-reduced (collective; the same value on every rank).
double eval_windows_dp(GPT* model, const TokenData* d, int B, int T, size_t max_windows, Comm* dp,
                       size_t* num_predicted);

// ---- learning rate: linear warmup over `warmup` steps, then cosine decay
// from lr to min_lr, reaching min_lr at step `total`. step is 1-based.
float lr_schedule(int step, int total, int warmup, float lr, float min_lr);

// ---- run directory

// mkdir -p; fatal on failure.
void make_dirs(const char* path);
// Removes every "ckpt-*" entry and metrics.jsonl from dir (recursively).
void run_dir_clear(const char* dir);
// Starts a run in run_dir: mkdir -p; old checkpoints are fatal unless
// overwrite (then they and metrics.jsonl are cleared); writes config.json
// (the effective config) and opens metrics.jsonl for writing (its path into
// metrics_path). Fatal on error.
FILE* run_dir_start(const char* run_dir, const Config* cfg, int overwrite, char* metrics_path,
                    size_t cap);
// Writes RUN_DIR/ckpt-%08d (path into path) with checkpoint_save (optimizer
// included) and state {"kind", "step", "tokens", "loss", "val_loss" (unless
// NaN), "config"}, then keeps the last train.keep_checkpoints.
void train_checkpoint_save(const GPT* model, const Config* cfg, const char* run_dir,
                           const char* kind, int step, double loss, double val_loss,
                           size_t tokens, char* path, size_t cap);

// Like train_checkpoint_save, for exact resume and for runs that must not
// die on a full disk: run state rs (may be NULL: run_state.h) is stored in
// the checkpoint, state_extra's fields (may be NULL, not stolen) are added to
// state.json, and a failed write is a warning (the previous checkpoints stay
// valid) with the reason. Under tensor parallelism every rank of the model
// calls; world rank 0 writes and prunes. Returns 0, or -1 when not written.
int train_checkpoint_try(const GPT* model, const Config* cfg, const char* run_dir, const char* kind, int step,
                         double loss, double val_loss, size_t tokens, json_t* state_extra, RunState* run_state,
                         char* path, size_t cap);
// --resume: "auto" (the newest valid checkpoint of run_dir, or a fresh start),
// "none"/NULL, a checkpoint dir or a run dir. Rank 0 decides and broadcasts
// (collective over the world). 1 with the checkpoint in ckpt, or 0: fresh.
int train_resume_resolve(Comm* world, const char* spec, const char* run_dir, char* ckpt, size_t cap);
// The run dir of a fresh run (run_dir_start) or, with the run state of the
// checkpoint being resumed (resumed != NULL), the existing run's
// metrics.jsonl cut back to that checkpoint and opened for appending, and
// config.json rewritten. Rank 0 only. Fatal on error.
FILE* run_dir_open(const char* run_dir, const Config* cfg, int overwrite, const RunState* resumed, char* metrics_path,
                   size_t cap);

// ---- model shape <-> config (model.layers, .heads, .embd, .vocab, .ctx)

// The shape the model.* keys describe.
GPTConfig config_model_shape(const Config* cfg);
// A loaded model fixes the shape: model.* keys set explicitly must agree
// (fatal otherwise, naming their origin and path); the others are filled in
// from it, so config.json and checkpoints describe the real model.
void config_adopt_model_shape(Config* cfg, GPTConfig got, const char* path);

// ---- output

// obj as one compact JSON line (keys in insertion order) on f.
void write_json_line(FILE* f, json_t* obj);

// ---- time and progress

// Monotonic seconds.
double now_seconds(void);
// "1:02:03" / "2:03" into buf.
void format_duration(double seconds, char* buf, size_t cap);

// AdamW settings from train.lr, train.beta1, train.beta2, train.eps,
// train.weight_decay and train.grad_clip.
AdamWConfig config_adamw(const Config* cfg);

// ---- compute backend
// The backend named by run.device (cpu | cuda), with run.precision (fp32 |
// bf16, CUDA matmuls only); the CPU's threads come from train.threads.
// Fatal, with the reason, on an unknown name or when cuda has no usable GPU.
const Ops* ops_from_config(const Config* cfg);
// The same from the names themselves (commands without a config: --device,
// --precision); what names the option in errors.
const Ops* ops_by_name(const char* device, const char* precision, int threads, const char* what);

// ---- the command-line front end shared by the training commands
// (pretrain, sft, rm, ...): --config FILE, --set K=V (repeatable), --model PATH,
// --overwrite, --print-config, --help-config, and --skip-bad if with_skip_bad.
typedef struct {
    const char* config_path;
    const char* model_path;
    const char* resume;   // --resume auto|none|CKPT|RUN_DIR (NULL: none)
    ArgList sets;
    int overwrite, skip_bad;
} TrainCli;

// Parses the options and builds the config: defaults < --config < --set <
// --model (which sets model.init). model_help describes --model for this
// command; run_dir_default (may be NULL) replaces run.dir's default. Returns NULL after --print-config / --help-config (the caller
// exits 0); usage errors exit 2, bad config input exits 1.
Config* train_cli_config(const char* cmd, const char* synopsis, const char* model_help,
                         const char* run_dir_default, int with_skip_bad, TrainCli* cli, int argc, char** argv);

// ---- the run's world: dp x tp ranks (mpirun -np N), rank 0 coordinates.
// Rank 0 alone writes the run dir, metrics, checkpoints and stdout; every
// rank computes. A world of one (no mpirun) is the plain single process.
typedef struct {
    Parallel par;
    DataParallel dp;
    int is_root; // world rank 0
} TrainWorld;
// From parallel.tp, parallel.zero1, parallel.timeout. Collective.
void train_world_init(TrainWorld* w, const Config* cfg);
void train_world_free(TrainWorld* w);
// This dp rank's rows [*begin, *begin + *count) of a global batch of `global`
// rows (`what` names the config key in the error when global < dp ranks).
void train_world_share(const TrainWorld* w, int global, const char* what, int* begin, int* count);
// Seconds this rank has spent inside collectives so far (world + dp + tp):
// the communication share of a step is the difference over the step.
double train_world_comm_seconds(const TrainWorld* w);
// The weighted mean over the dp group of per-rank means (collective).
double train_world_mean(const TrainWorld* w, double local_mean, double local_weight);

// Before a checkpoint with run state rs (filled by rank 0 with the command's
// items; NULL on the other ranks): rank 0 adds the metrics mark (a failed
// flush skips this checkpoint with a warning) and every rank learns whether
// to go on and write. Collective over the world.
int train_checkpoint_agree(TrainWorld* w, RunState* rs, int step, const char* metrics_path, FILE* metrics);

// --resume for a training command: train_resume_resolve over the world, then
// (resuming) the checkpoint's run state into rs. rs is always initialised
// (run_state_free it). Returns 1 when resuming, with the checkpoint in ckpt.
int train_resume_begin(TrainWorld* w, const char* spec, const Config* cfg, char* ckpt, size_t cap, RunState* rs);
