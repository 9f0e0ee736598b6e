// model_io.h - loading and saving GPT models: native checkpoints, run
// directories, Hugging Face GPT-2 and llm.c .bin import/export.
//
// Native checkpoint = a directory:
//   model.safetensors      the 16 tensors named GPT_PARAM_NAMES, shapes as in
//                          gpt.h (qkvw (L,3C,C), ...); __metadata__ holds
//                          format "rlhfd" and the config
//   optimizer.safetensors  (optional) AdamW moments "m.<name>", "v.<name>";
//                          __metadata__ adam_step
//   state.json             {"format": "rlhfd", "version": 1, "step": N,
//                           "config": {...}, "state": <caller object>,
//                           "files": {"model.safetensors": {"bytes": N, "crc32": N}, ...}}
// Checkpoints are written atomically (temp dir beside the target, fsync,
// rename, fsync parent) and verified (size + crc32 of every file) on load.
// Run directory = RUN_DIR/ckpt-%08d/ native checkpoints, one per step.
//
// Every function reports bad input with fatalf (path + reason, exit 1).
#pragma once
#include <stddef.h>
#include <jansson.h>
#include "gpt.h"
#include "../common/safetensors.h"

typedef enum {
    MODEL_NATIVE_DIR,   // native checkpoint directory
    MODEL_NATIVE_FILE,  // a native model.safetensors on its own (no state.json)
    MODEL_HF_DIR,       // config.json + model.safetensors
    MODEL_HF_FILE,      // a Hugging Face model.safetensors (config.json beside it)
    MODEL_LLMC,         // llm.c .bin (version 3 fp32, or 5 bf16)
    MODEL_RUN_DIR,      // directory of ckpt-%08d checkpoints
} ModelFormat;

// Detects what path holds, by its contents; fatal if it is none of the above.
ModelFormat model_detect(const char* path);
const char* model_format_name(ModelFormat f);

// Builds *model (gpt_build with ops) and fills its parameters from path, which
// may be any ModelFormat (a run dir means its newest valid checkpoint).
// state_out (may be NULL) receives the whole native state.json object (new
// reference; the caller's saved state is under "state", the step under
// "step"), or NULL for imports. model->adam_step is 0: optimizer state is only
// loaded by checkpoint_load_optimizer.
void model_load(GPT* model, const char* path, const Ops* ops, json_t** state_out);
// The same under tensor parallelism (gpt_build_tp with tp; NULL = model_load):
// every rank reads the whole tensors and keeps its shard, so a checkpoint
// loads at any tp size whatever tp it was saved at.
void model_load_tp(GPT* model, const char* path, const Ops* ops, Comm* tp, json_t** state_out);
// Path model_load actually reads: for a run dir its newest valid checkpoint,
// otherwise a copy of path. malloc'd; fatal if a run dir has no valid checkpoint.
char* model_resolve(const char* path);

// Writes a native checkpoint atomically to dir (replacing an existing
// checkpoint of that name; refuses to replace anything else). state (may be
// NULL, not stolen) is stored under "state"; "step" is model->adam_step.
// with_optimizer: also writes the AdamW moments (zeros if none yet).
// Fatal on any error (checkpoint_try_save below reports instead).
// Files always hold the whole model (and whole AdamW moments). Under tensor
// parallelism every tp rank of the model must call (the shards are gathered)
// and world rank 0 alone writes (tp rank 0 of dp rank 0: other dp groups may
// call too, they only gather); every tp rank returns after the write, with
// its result. The same holds for the functions below and for the exports.
void checkpoint_save(const GPT* model, const char* dir, json_t* state, int with_optimizer);
// checkpoint_save plus heads on the trunk (reward/value heads): extra tensors
// (host memory, F32) are written into model.safetensors after the model's
// own (so they share its crc32 and the atomic publish), and extra_meta (NULL
// or an object of string values) is merged into its __metadata__. Names must
// not clash with the model's. model_load ignores both; read them back with
// st_open on the checkpoint's model.safetensors.
void checkpoint_save_extra(const GPT* model, const char* dir, json_t* state, int with_optimizer,
                           const StWriteTensor* extra, int num_extra, json_t* extra_meta);

// ---- checkpoints that may fail without ending the run, with extra files
// A file stored in a checkpoint beside the model (run state, data pools):
// written into the temp dir, listed with its size and crc32 in state.json's
// "files", so it is verified, published atomically and pruned with the rest.
// name: a plain file name, not model.safetensors/optimizer.safetensors/state.json.
typedef struct {
    const char* name;
    const void* data;
    size_t size;
} CheckpointFile;

typedef struct {
    json_t* state;              // stored under "state" (NULL: null)
    int with_optimizer;         // also the AdamW moments
    const StWriteTensor* extra; // heads on the trunk, as checkpoint_save_extra
    int num_extra;
    json_t* extra_meta;
    const CheckpointFile* files; // extra files
    int num_files;
} CheckpointSaveOptions;

// checkpoint_save_extra (opts may be NULL: model only) that never exits:
// returns 0, or -1 with one line in err naming the path and the reason with
// its errno name, e.g. "runs/x/ckpt-00000200.tmp-41/model.safetensors: write
// failed: No space left on device (ENOSPC)" (also EFBIG, EACCES, EROFS...).
// On failure the temp dir is removed and every existing checkpoint, dir
// included, is exactly as before; the caller decides whether to go on
// training (and try again at the next interval) or stop.
int checkpoint_try_save(const GPT* model, const char* dir, const CheckpointSaveOptions* opts, char* err,
                        size_t errlen);
// Reads the extra file `name` of the checkpoint at dir after checking it
// against the size and crc32 listed in state.json. 0 with *data (malloc'd,
// free it) and *size; -1 with a one-line reason in err (not listed, missing,
// truncated, corrupted). Never fatal.
int checkpoint_read_file(const char* dir, const char* name, void** data, size_t* size, char* err,
                         size_t errlen);

// Restores m, v and adam_step saved with the checkpoint at dir into a model
// already loaded from it (same config). Fatal if it was saved without them.
void checkpoint_load_optimizer(GPT* model, const char* dir);
// 1 if dir is a native checkpoint that lists optimizer.safetensors.
int checkpoint_has_optimizer(const char* dir);
// Verifies dir (state.json parses, every listed file has its size and crc32).
// Returns 0 if valid, else -1 with a one-line reason in err. Never fatal.
int checkpoint_verify(const char* dir, char* err, size_t errlen);

// Hugging Face layout: dir/config.json + dir/model.safetensors (Conv1D (in,out)
// weights, keys without the "transformer." prefix, no lm_head: tied).
void model_export_hf(const GPT* model, const char* dir);
// llm.c .bin version 3 (fp32), wte padded with zero rows to a multiple of 128.
void model_export_llmc(const GPT* model, const char* path);

// ---- run directories
// malloc'd "RUN_DIR/ckpt-%08d".
char* run_dir_checkpoint_path(const char* run_dir, int step);
// Steps of the ckpt-* directories (valid or not), ascending; *steps_out is
// malloc'd (free it). Returns the count (0 if run_dir cannot be read).
int run_dir_list(const char* run_dir, int** steps_out);
// Newest checkpoint that passes checkpoint_verify; invalid newer ones are
// skipped with a warning on stderr. malloc'd path, or NULL if none.
char* run_dir_latest_checkpoint(const char* run_dir);
// Keeps the newest keep_last valid checkpoints (and any invalid ones newer
// than the oldest kept) and deletes the older ones, plus stale temp dirs
// left by crashed saves of other processes. Validity here = state.json parses
// and every file has its recorded size (cheap: prune runs after every save);
// besides, the newest checkpoint that passes the full checkpoint_verify is
// always kept, so a corrupt newest one never costs the last good one.
void run_dir_prune(const char* run_dir, int keep_last);

// Fatal unless got equals want; names the first mismatched field, both values
// and path (where got came from).
void gpt_config_expect(const GPTConfig* want, const GPTConfig* got, const char* path);
