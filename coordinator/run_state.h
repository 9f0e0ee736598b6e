// run_state.h - what a checkpoint must hold beyond the weights and the
// optimizer for a run to continue EXACTLY where it stopped, and finding the
// checkpoint to resume from (`--resume auto`).
//
// A RunState is a set of named items, saved as extra files of the checkpoint
// (CheckpointFile, worker/model_io.h), so they are covered by the same size +
// crc32 list in state.json and published atomically with the model:
//   run_state.json    {"format": "rlhfd-run-state", "version": 1,
//                      "items": {KEY: {"type": ..., ...}}}
//   order.KEY         a data order: n little-endian uint64 indices
//   blob.KEY          an arbitrary byte blob (e.g. Quark's data pool)
// Numbers are stored exactly: 64-bit values and doubles as hex strings of
// their bits (JSON numbers would lose uint64 and NaN), with the readable
// value beside them where there is one.
//
// Saving (rank 0, at the end of step `step`, after that step's metrics line):
//   RunState rs; run_state_init(&rs);
//   run_state_put_rng(&rs, "rng.data", &data_rng);
//   run_state_put_order(&rs, "prompts", run->order, run->num_prompts, run->order_pos, run->order_pass);
//   run_state_put_kl(&rs, "kl", &kl);
//   run_state_put_blob(&rs, "quark_pool", pool.data, pool.len);
//   if (run_state_put_metrics(&rs, metrics_path, metrics_fp, err, sizeof err) == 0) {
//       CheckpointSaveOptions o = {.state = st, .with_optimizer = 1};
//       run_state_attach(&rs, &o);
//       if (checkpoint_try_save(&model, dir, &o, err, sizeof err) != 0) ... warn, go on or stop
//   }
//   run_state_free(&rs);
// Resuming:
//   char ckpt[4096];
//   if (resume_resolve(cli_resume, run_dir, ckpt, sizeof ckpt)) {
//       model_load(&model, ckpt, ops, &st); checkpoint_load_optimizer(&model, ckpt);
//       RunState rs; run_state_load(&rs, ckpt);
//       run_state_get_rng(&rs, "rng.data", &data_rng); ...
//       run_state_rewind_metrics(&rs, metrics_path);   // then open it with "a"
//   }
// Keys: 1..64 characters of [A-Za-z0-9._-]; a second put of a key replaces it.
// Getters of a missing key or a key of another type are fatal, naming the
// checkpoint (a checkpoint of another command or version); test with
// run_state_has first where an item is optional.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <jansson.h>
#include "../common/rng.h"
#include "../worker/model_io.h"
#include "../worker/rl_math.h"

#define RUN_STATE_FILE "run_state.json"

typedef struct {
    json_t* root;          // the run_state.json object
    json_t* items;         // borrowed: root["items"]
    CheckpointFile* files; // blobs and orders (owned data); run_state.json after run_state_attach
    int num_files, cap_files;
    char* dir;             // loaded states: the checkpoint they came from (malloc'd)
} RunState;

void run_state_init(RunState* rs);
void run_state_free(RunState* rs);

// ---- saving
void run_state_put_i64(RunState* rs, const char* key, int64_t v);
void run_state_put_u64(RunState* rs, const char* key, uint64_t v);
void run_state_put_f64(RunState* rs, const char* key, double v);
void run_state_put_str(RunState* rs, const char* key, const char* v);
void run_state_put_rng(RunState* rs, const char* key, const Rng* r);
void run_state_put_kl(RunState* rs, const char* key, const KLController* kl);
// A data cursor: the current order (n indices), the position in it and the
// number of passes begun. order may be NULL when n == 0.
void run_state_put_order(RunState* rs, const char* key, const size_t* order, size_t n, size_t pos,
                         uint64_t pass);
// Copies n bytes; stored as the file blob.KEY.
void run_state_put_blob(RunState* rs, const char* key, const void* data, size_t n);

// ---- the metrics file at the checkpoint
// metrics.jsonl up to the checkpoint: its size and number of lines. A resumed
// run cuts the file back to it and appends, so its metrics.jsonl is the same
// as that of a run that never stopped.
typedef struct {
    int64_t bytes, lines;
} MetricsMark;
// fflush(fp) (fp may be NULL), then marks path. 0, or -1 with the reason in
// err (a flush that failed, e.g. ENOSPC: then the checkpoint should be
// skipped like a failed save, since the file lacks lines the mark would claim).
int metrics_mark(const char* path, FILE* fp, MetricsMark* m, char* err, size_t errlen);
// Cuts path back to m: fails (-1 + err) if path is shorter or its first
// m->bytes bytes are not m->lines whole lines (another run's file). Lines
// past the mark (written after the checkpoint by the run that stopped) are
// dropped with a note on stderr.
int metrics_rewind(const char* path, const MetricsMark* m, char* err, size_t errlen);
// metrics_mark, stored as the item "metrics".
int run_state_put_metrics(RunState* rs, const char* path, FILE* fp, char* err, size_t errlen);

// Finalises rs (writes run_state.json's text into rs->files) and points
// o->files / o->num_files at them (o must have no files of its own). rs must
// outlive the checkpoint_try_save call. Further puts are not allowed.
void run_state_attach(RunState* rs, CheckpointSaveOptions* o);

// ---- loading (from a checkpoint chosen by resume_find / resume_resolve)
// Reads CKPT/run_state.json, verified against state.json's checksums. Fatal
// if it is missing or invalid (the checkpoint cannot continue the run).
void run_state_load(RunState* rs, const char* ckpt);
// 1 if rs holds the key (of any type).
int run_state_has(const RunState* rs, const char* key);
int64_t run_state_get_i64(const RunState* rs, const char* key);
uint64_t run_state_get_u64(const RunState* rs, const char* key);
double run_state_get_f64(const RunState* rs, const char* key);
// Borrowed string, valid while rs lives.
const char* run_state_get_str(const RunState* rs, const char* key);
void run_state_get_rng(const RunState* rs, const char* key, Rng* r);
void run_state_get_kl(const RunState* rs, const char* key, KLController* kl);
// *order: malloc'd (n) indices (NULL if n == 0); fatal if n differs from
// want_n (the data changed since the checkpoint) unless want_n is SIZE_MAX.
void run_state_get_order(const RunState* rs, const char* key, size_t want_n, size_t** order, size_t* pos,
                         uint64_t* pass);
// *data: malloc'd copy (free it), *n bytes.
void run_state_get_blob(const RunState* rs, const char* key, void** data, size_t* n);
void run_state_get_metrics(const RunState* rs, MetricsMark* m);
// metrics_rewind to the checkpoint's mark; fatal on failure (a resumed run
// would otherwise write metrics that do not follow from its checkpoint).
void run_state_rewind_metrics(const RunState* rs, const char* path);

// ---- resume
// --resume auto: the newest checkpoint of run_dir that passes
// checkpoint_verify, into ckpt. Partial saves (ckpt-N.tmp-PID) and invalid
// or corrupt checkpoints are skipped with a warning naming each and why.
// Returns 1 when found, 0 when there is none (start fresh; also when run_dir
// does not exist). Fatal if the path does not fit in cap.
int resume_find(const char* run_dir, char* ckpt, size_t cap);
// The value of --resume: NULL, "" or "none" -> 0 (fresh start); "auto" ->
// resume_find(run_dir); a checkpoint dir -> it, fatal unless it verifies; a
// run dir -> its newest valid checkpoint, fatal if it has none.
int resume_resolve(const char* spec, const char* run_dir, char* ckpt, size_t cap);

// ---- building and reading blobs (native little-endian, fixed widths)
typedef struct {
    uint8_t* data;
    size_t len, cap;
} ByteBuf;
void bytebuf_put(ByteBuf* b, const void* p, size_t n);
void bytebuf_put_u64(ByteBuf* b, uint64_t v);
void bytebuf_put_i32(ByteBuf* b, int32_t v);
void bytebuf_put_f32(ByteBuf* b, float v);
void bytebuf_put_f64(ByteBuf* b, double v);
// n (as u64) then n int32s / the bytes of a string (no NUL).
void bytebuf_put_i32s(ByteBuf* b, const int* v, size_t n);
void bytebuf_put_str(ByteBuf* b, const char* s);
void bytebuf_free(ByteBuf* b);

// Reading is fatal when the blob ends early ("WHAT: truncated at byte N").
typedef struct {
    const uint8_t* data;
    size_t len, pos;
    const char* what; // names the blob in errors
} ByteReader;
void byteread(ByteReader* r, void* dst, size_t n);
uint64_t byteread_u64(ByteReader* r);
int32_t byteread_i32(ByteReader* r);
float byteread_f32(ByteReader* r);
double byteread_f64(ByteReader* r);
// malloc'd arrays/strings written by bytebuf_put_i32s / bytebuf_put_str.
int* byteread_i32s(ByteReader* r, size_t* n);
char* byteread_str(ByteReader* r);
// Fatal unless every byte was read (a blob of another layout).
void byteread_end(const ByteReader* r);
