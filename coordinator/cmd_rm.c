// cmd_rm.c - `rlhfd rm`: trains a reward model on human rankings
// (InstructGPT's step 2).
//
// Data: rankings of K responses to a prompt (or preference pairs, K = 2)
// from rm.train; every response becomes the sequence
// encode(prompt) ++ encode(response) ++ [eot], scored by a scalar head on
// the final hidden state of its last token (worker/reward_model.h).
// One step: train.batch rankings -> ONE forward over all their sequences ->
// the K-wise loss (mean over each ranking's C(K,2) pairs of
// -log sigmoid(r_better - r_worse), then mean over rankings) -> backward ->
// AdamW (global-norm clipping over trunk + head), LR warmup + cosine.
// Validation: loss and pairwise accuracy (share of held-out pairs with
// r_better > r_worse) over all of rm.val (or the rm.val_fraction of
// rm.train held out), every train.eval_every steps and at the end.
// Before each checkpoint the offset is set to the mean raw reward of the
// normalisation samples, so every saved RM has reward mean 0 on SFT samples.
// Outputs in run.dir: metrics.jsonl, config.json, ckpt-NNNNNNNN/; progress
// on stderr; the last stdout line is a JSON summary.
// Data parallel under mpirun (coordinator/train_util.h): train.batch
// rankings are the global batch; each rank forwards its share, the loss (a
// mean over rankings) and trunk + head gradients are weighed by the rank's
// rankings; held-out rankings and the normalisation samples are shared, so
// accuracy counts and the offset are global. Rank 0 alone writes run.dir.
// Tensor parallel with parallel.tp: the trunk is sharded over the tp ranks of
// each dp replica (the head is replicated); tp peers take the same rankings
// and make every model call together, checkpoints included.
// Training sees raw rewards (offset 0): the ranking loss only reads
// differences, and a trajectory that does not depend on when checkpoints are
// taken is what lets a stopped run (SIGTERM/SIGUSR1, POST /stop or
// /checkpoint) resume bit for bit; the offset is set for each save only.
// Exact resume (--resume): checkpoints also hold the trunk's AdamW moments
// and a run state with the head's moments, the data order and cursor, the
// counters and the metrics mark (coordinator/run_state.h).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "commands.h"
#include "run_control.h"
#include "run_state.h"
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/config.h"
#include "../common/hfdata.h"
#include "../common/rng.h"
#include "../common/tokenizer.h"
#include "../kernels/ops.h"
#include "../worker/model_io.h"
#include "../worker/reward_model.h"

#define CMD "rm"

static const char* const SYNOPSIS =
    "--config FILE [--set KEY=VALUE]... [--model PATH] [--overwrite] [--skip-bad]\n"
    "\n"
    "Trains a reward model (GPT trunk + scalar head on the last token) on rankings\n"
    "(rm.train: JSONL {\"prompt\", \"responses\": [...], \"ranking\": [best, ..., worst]}\n"
    "or pairs {\"prompt\", \"chosen\", \"rejected\"}) with InstructGPT's K-wise loss:\n"
    "all C(K,2) pairs of a ranking from one forward of its K responses. train.batch\n"
    "is rankings per step; rm.epochs (or train.steps) sets the length. The trunk\n"
    "starts from the SFT model (--model or model.init; random with model.* when\n"
    "empty); the head from N(0, 1/sqrt(C)). Reports held-out pairwise accuracy\n"
    "(rm.val, or rm.val_fraction of rm.train) and loss. The saved offset makes the\n"
    "mean reward 0 on rm.norm_samples (default: the responses of rm.train).\n"
    "With --skip-bad, bad records and responses too long for the context are\n"
    "skipped with a warning instead of being fatal. Keys: rlhfd rm --help-config.";

// One ranking, tokenized: sequence i is encode(prompt) ++ encode(responses[i]) ++ [eot].
typedef struct {
    int k;
    int* ranking; // (k) best first
    int** seqs;   // (k)
    int* lens;    // (k)
    int line;
} RankedSeqs;

typedef struct {
    RankedSeqs* items;
    size_t n;
    int max_len, max_k;
    size_t skipped;
    const char* path;
} RankData;

// Reads and tokenizes the rankings of path. A ranking with a response longer
// than ctx is fatal or, with skip_bad, skipped as a whole.
static void rank_data_load(RankData* d, const char* path, Tokenizer* tok, int ctx, int skip_bad) {
    memset(d, 0, sizeof *d);
    d->path = path;
    size_t n = 0, skipped = 0;
    HfRanking* rs = hf_read_rankings(path, skip_bad, &n, &skipped);
    HfBadReport report = {.path = path, .skip_bad = skip_bad, .skipped = 0};
    d->items = callocCheck(n, sizeof(RankedSeqs));
    for (size_t i = 0; i < n; i++) {
        RankedSeqs* r = &d->items[d->n];
        r->k = rs[i].k;
        r->line = rs[i].line;
        r->seqs = callocCheck((size_t)r->k, sizeof(int*));
        r->lens = mallocCheck((size_t)r->k * sizeof(int));
        r->ranking = mallocCheck((size_t)r->k * sizeof(int));
        memcpy(r->ranking, rs[i].ranking, (size_t)r->k * sizeof(int));
        int too_long = -1;
        for (int j = 0; j < r->k; j++) {
            int prompt_len;
            r->seqs[j] = hf_encode_pair(tok, rs[i].prompt, rs[i].responses[j], &r->lens[j], &prompt_len);
            if (r->lens[j] > ctx && too_long < 0) too_long = j;
        }
        if (too_long >= 0) {
            hf_bad_record(&report, r->line, "prompt+response is %d tokens, longer than the context (%d)",
                          r->lens[too_long], ctx);
            for (int j = 0; j < r->k; j++) free(r->seqs[j]);
            free(r->seqs);
            free(r->lens);
            free(r->ranking);
            memset(r, 0, sizeof *r);
            continue;
        }
        for (int j = 0; j < r->k; j++)
            if (r->lens[j] > d->max_len) d->max_len = r->lens[j];
        if (r->k > d->max_k) d->max_k = r->k;
        d->n++;
    }
    hf_bad_report_finish(&report);
    hf_free_rankings(rs, n);
    d->skipped = skipped + report.skipped;
    if (d->n == 0) fatalf("%s: no rankings left (all were skipped)", path);
}

static void rank_data_free(RankData* d) {
    for (size_t i = 0; i < d->n; i++) {
        for (int j = 0; j < d->items[i].k; j++) free(d->items[i].seqs[j]);
        free(d->items[i].seqs);
        free(d->items[i].lens);
        free(d->items[i].ranking);
    }
    free(d->items);
    memset(d, 0, sizeof *d);
}

// Moves the items idx[0..m) of src into a new RankData dst (src keeps the rest, in order).
static void rank_data_split(RankData* src, RankData* dst, const size_t* idx, size_t m) {
    memset(dst, 0, sizeof *dst);
    dst->path = src->path;
    dst->items = callocCheck(m, sizeof(RankedSeqs));
    char* taken = callocCheck(src->n, 1);
    for (size_t i = 0; i < m; i++) {
        dst->items[dst->n++] = src->items[idx[i]];
        taken[idx[i]] = 1;
    }
    size_t kept = 0;
    for (size_t i = 0; i < src->n; i++)
        if (!taken[i]) src->items[kept++] = src->items[i];
    src->n = kept;
    free(taken);
    RankData* both[2] = {src, dst};
    for (int b = 0; b < 2; b++) {
        both[b]->max_len = both[b]->max_k = 0;
        for (size_t i = 0; i < both[b]->n; i++) {
            const RankedSeqs* r = &both[b]->items[i];
            if (r->k > both[b]->max_k) both[b]->max_k = r->k;
            for (int j = 0; j < r->k; j++)
                if (r->lens[j] > both[b]->max_len) both[b]->max_len = r->lens[j];
        }
    }
}

static void shuffle(size_t* a, size_t n, Rng* rng) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_below(rng, i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

// ----------------------------------------------------------------------------
// batches: G rankings -> their sequences one after another, padded to the longest

typedef struct {
    int G, B, T;              // rankings, sequences, padded length
    int* tokens;              // (max_B * max_T) used as (B,T)
    int* lens;                // (B)
    int* k;                   // (G)
    const int** rankings;     // (G)
    float* rewards;           // (B)
    float* drewards;          // (B)
} RankBatch;

static void rank_batch_alloc(RankBatch* b, int max_G, int max_B, int max_T) {
    memset(b, 0, sizeof *b);
    b->tokens = mallocCheck((size_t)max_B * max_T * sizeof(int));
    b->lens = mallocCheck((size_t)max_B * sizeof(int));
    b->k = mallocCheck((size_t)max_G * sizeof(int));
    b->rankings = mallocCheck((size_t)max_G * sizeof(int*));
    b->rewards = mallocCheck((size_t)max_B * sizeof(float));
    b->drewards = mallocCheck((size_t)max_B * sizeof(float));
}

static void rank_batch_free(RankBatch* b) {
    free(b->tokens);
    free(b->lens);
    free(b->k);
    free(b->rankings);
    free(b->rewards);
    free(b->drewards);
}

static void rank_batch_fill(RankBatch* b, const RankData* d, const size_t* idx, int G) {
    b->G = G;
    b->B = 0;
    b->T = 1;
    for (int g = 0; g < G; g++) {
        const RankedSeqs* r = &d->items[idx[g]];
        b->k[g] = r->k;
        b->rankings[g] = r->ranking;
        for (int j = 0; j < r->k; j++) {
            b->lens[b->B++] = r->lens[j];
            if (r->lens[j] > b->T) b->T = r->lens[j];
        }
    }
    int s = 0;
    for (int g = 0; g < G; g++) {
        const RankedSeqs* r = &d->items[idx[g]];
        for (int j = 0; j < r->k; j++, s++) {
            int* row = b->tokens + (size_t)s * b->T;
            memcpy(row, r->seqs[j], (size_t)r->lens[j] * sizeof(int));
            for (int t = r->lens[j]; t < b->T; t++) row[t] = 0; // padding: causal, never read
        }
    }
}

// Loss (mean over rankings) and pairwise accuracy over all of d. Collective
// over dp (may be NULL): each dp rank scores its share of the rankings and
// the sums and pair counts are all-reduced.
static void evaluate(RewardModel* rm, const RankData* d, RankBatch* b, int batch, Comm* dp,
                     double* loss, double* accuracy, int* num_pairs) {
    size_t* idx = mallocCheck(d->n * sizeof(size_t));
    for (size_t i = 0; i < d->n; i++) idx[i] = i;
    size_t first = 0, last = d->n;
    if (dp) parallel_share(d->n, dp->rank, dp->size, &first, &last);
    double loss_sum = 0.0;
    long right = 0, total = 0;
    for (size_t start = first; start < last; start += (size_t)batch) {
        int G = last - start < (size_t)batch ? (int)(last - start) : batch;
        rank_batch_fill(b, d, idx + start, G);
        rm_forward(rm, b->tokens, b->lens, b->B, b->T, b->rewards);
        int r = 0, t = 0;
        loss_sum += G * rm_ranking_loss(b->rewards, G, b->k, b->rankings, NULL, &r, &t);
        right += r;
        total += t;
    }
    free(idx);
    if (dp && dp->size > 1) {
        double sums[3] = {loss_sum, (double)right, (double)total};
        const char* old = comm_set_phase(dp, "RM held-out evaluation");
        comm_allreduce_f64(dp, sums, 3);
        comm_set_phase(dp, old);
        loss_sum = sums[0];
        right = (long)sums[1];
        total = (long)sums[2];
    }
    *loss = loss_sum / (double)d->n;
    *accuracy = total > 0 ? (double)right / (double)total : NAN;
    *num_pairs = (int)total;
}

// ----------------------------------------------------------------------------
// normalisation samples: sequences whose mean raw reward becomes the offset

typedef struct {
    int** seqs;
    int* lens;
    int n;
} SeqSet;

static void norm_samples_load(SeqSet* s, const Config* cfg, const RankData* train, Tokenizer* tok,
                              int ctx, int skip_bad) {
    memset(s, 0, sizeof *s);
    int max = config_int(cfg, "rm.norm_max");
    const char* path = config_str(cfg, "rm.norm_samples");
    if (!path[0]) { // the responses of the training rankings, in order
        size_t total = 0;
        for (size_t i = 0; i < train->n; i++) total += (size_t)train->items[i].k;
        if (max > 0 && total > (size_t)max) total = (size_t)max;
        s->seqs = mallocCheck(total * sizeof(int*));
        s->lens = mallocCheck(total * sizeof(int));
        for (size_t i = 0; i < train->n && (size_t)s->n < total; i++)
            for (int j = 0; j < train->items[i].k && (size_t)s->n < total; j++) {
                s->lens[s->n] = train->items[i].lens[j];
                s->seqs[s->n] = mallocCheck((size_t)s->lens[s->n] * sizeof(int));
                memcpy(s->seqs[s->n], train->items[i].seqs[j], (size_t)s->lens[s->n] * sizeof(int));
                s->n++;
            }
        return;
    }
    size_t num_read = 0, skipped = 0;
    HfDemo* demos = hf_read_demos(path, skip_bad, &num_read, &skipped);
    size_t n = max > 0 && num_read > (size_t)max ? (size_t)max : num_read;
    HfBadReport report = {.path = path, .skip_bad = skip_bad, .skipped = 0};
    s->seqs = mallocCheck(n * sizeof(int*));
    s->lens = mallocCheck(n * sizeof(int));
    for (size_t i = 0; i < n; i++) {
        int len, prompt_len;
        int* ids = hf_encode_pair(tok, demos[i].prompt, demos[i].response, &len, &prompt_len);
        if (len > ctx) {
            hf_bad_record(&report, demos[i].line,
                          "prompt+response is %d tokens, longer than the context (%d)", len, ctx);
            free(ids);
            continue;
        }
        s->seqs[s->n] = ids;
        s->lens[s->n++] = len;
    }
    hf_bad_report_finish(&report);
    hf_free_demos(demos, num_read);
    if (s->n == 0) fatalf("%s: no normalisation samples left (all were skipped)", path);
}

static void seq_set_free(SeqSet* s) {
    for (int i = 0; i < s->n; i++) free(s->seqs[i]);
    free(s->seqs);
    free(s->lens);
}

// Sets rm->offset to the mean raw reward of the samples. Collective over dp
// (may be NULL): each dp rank scores its share and the sum is all-reduced,
// so every rank gets the same global mean.
static void set_offset(RewardModel* rm, const SeqSet* s, int batch, Comm* dp) {
    size_t first = 0, last = (size_t)s->n;
    if (dp) parallel_share((size_t)s->n, dp->rank, dp->size, &first, &last);
    int n = (int)(last - first);
    float* out = mallocCheck((size_t)(n > 0 ? n : 1) * sizeof(float));
    rm->offset = 0.0f;
    rm_score_tokens(rm, (const int* const*)s->seqs + first, s->lens + first, n, batch, out);
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += out[i];
    if (dp && dp->size > 1) {
        const char* old = comm_set_phase(dp, "RM reward offset");
        comm_allreduce_f64(dp, &sum, 1);
        comm_set_phase(dp, old);
    }
    rm->offset = (float)(sum / s->n);
    free(out);
}

// Writes RUN_DIR/ckpt-%08d: the RM (head and offset), the trunk's AdamW
// moments and run state rs (NULL off rank 0), then keeps the last
// train.keep_checkpoints. A failed write is a warning (the previous
// checkpoints stay valid; path is then ""), like train_checkpoint_try.
// Under tensor parallelism every tp rank of the model calls (the trunk's
// shards are gathered); world rank 0 writes and prunes.
static void save_checkpoint(const RewardModel* rm, const Config* cfg, const char* run_dir, int step,
                            double loss, double val_loss, double val_accuracy, RunState* rs, char* path,
                            size_t cap) {
    snprintf(path, cap, "%s/ckpt-%08d", run_dir, step);
    json_t* state = json_object();
    json_object_set_new(state, "kind", json_string("rm"));
    json_object_set_new(state, "step", json_integer(step));
    json_object_set_new(state, "loss", json_real(loss));
    if (!isnan(val_loss)) json_object_set_new(state, "val_loss", json_real(val_loss));
    if (!isnan(val_accuracy)) json_object_set_new(state, "val_accuracy", json_real(val_accuracy));
    json_object_set_new(state, "config", config_to_json(cfg));
    CheckpointSaveOptions o = {.state = state, .with_optimizer = 1};
    if (rs) run_state_attach(rs, &o);
    char err[1024];
    int rc = rm_save_try(rm, path, &o, err, sizeof err);
    json_decref(state);
    if (comm_mpi_world_rank() != 0) return;
    if (rc != 0) {
        fprintf(stderr, "rlhfd: warning: checkpoint of step %d not written: %s (the previous checkpoints stay "
                        "valid; training goes on)\n", step, err);
        path[0] = '\0';
        return;
    }
    int keep = config_int(cfg, "train.keep_checkpoints");
    if (keep > 0) run_dir_prune(run_dir, keep);
}

// The head's AdamW moments [m (C+1), v (C+1)] as a run-state blob (zeros
// before the first update), and back.
static void put_head_moments(RunState* rs, const RewardModel* rm) {
    const Ops* ops = rm->gpt.ops;
    size_t n = (size_t)rm->gpt.config.channels + 1;
    float* mv = callocCheck(2 * n, sizeof(float));
    if (rm->head_m) ops->to_host(mv, rm->head_m, n * sizeof(float));
    if (rm->head_v) ops->to_host(mv + n, rm->head_v, n * sizeof(float));
    run_state_put_blob(rs, "rm_head_adam", mv, 2 * n * sizeof(float));
    free(mv);
}

static void get_head_moments(const RunState* rs, RewardModel* rm) {
    const Ops* ops = rm->gpt.ops;
    size_t n = (size_t)rm->gpt.config.channels + 1, len;
    void* mv;
    run_state_get_blob(rs, "rm_head_adam", &mv, &len);
    if (len != 2 * n * sizeof(float))
        fatalf("%s: rm_head_adam holds %zu bytes, expected %zu (2 x %zu floats)", rs->dir, len,
               2 * n * sizeof(float), n);
    if (!rm->head_m) {
        rm->head_m = ops->alloc(n * sizeof(float));
        rm->head_v = ops->alloc(n * sizeof(float));
    }
    ops->to_device(rm->head_m, mv, n * sizeof(float));
    ops->to_device(rm->head_v, (float*)mv + n, n * sizeof(float));
    free(mv);
}

static json_t* json_number_or_null(double x) { return isnan(x) ? json_null() : json_real(x); }

int cmd_rm(int argc, char** argv) {
    TrainCli cli;
    Config* cfg = train_cli_config(CMD, SYNOPSIS, "PATH: initialise the trunk from this (SFT) model (= model.init)",
                                   NULL, 1, &cli, argc, argv);
    if (!cfg) return 0;
    const char* train_path = config_str(cfg, "rm.train");
    if (!train_path[0])
        fatalf("%s: rm.train is empty (set it to a rankings JSONL file)", config_origin(cfg, "rm.train"));

    const Ops* ops = ops_from_config(cfg); // run.device, run.precision, train.threads
    TrainWorld world;
    train_world_init(&world, cfg);
    const int root = world.is_root;
    Comm* dp = world.par.dp;
    const uint64_t seed = (uint64_t)config_int(cfg, "train.seed");
    int stopped = 0; // a graceful stop (POST /stop, SIGTERM/SIGUSR1) after a checkpoint

    // ---- resume: the model, AdamW state, data order and metrics from a checkpoint
    char resume_ckpt[4096] = "";
    RunState rs;
    const int resuming = train_resume_begin(&world, cli.resume, cfg, resume_ckpt, sizeof resume_ckpt, &rs);

    // ---- model
    RewardModel rm;
    memset(&rm, 0, sizeof rm);
    const char* init = resuming ? resume_ckpt : config_str(cfg, "model.init");
    if (resuming) {
        rm_load_tp(&rm, resume_ckpt, ops, world.par.tp); // trunk (this rank's shard) and head
        rm.offset = 0.0f;               // training sees raw rewards
        config_adopt_model_shape(cfg, rm.gpt.config, resume_ckpt);
    } else if (init[0]) {
        rm_init_from_tp(&rm, init, ops, world.par.tp, seed);
        config_adopt_model_shape(cfg, rm.gpt.config, init);
    } else {
        GPTConfig shape = config_model_shape(cfg);
        gpt_config_check(&shape);
        gpt_build_tp(&rm.gpt, shape, ops, world.par.tp);
        gpt_init_random(&rm.gpt, seed); // the same model at any tp size
        rm_init_head(&rm, seed);
    }
    Tokenizer* tok = tokenizer_load(NULL);
    const int ctx = rm.gpt.config.max_seq_len;
    if (rm.gpt.config.vocab_size < tokenizer_vocab_size(tok))
        fatalf("model '%s' has vocab %d, smaller than the GPT-2 tokenizer's %d", init[0] ? init : "(random init)",
               rm.gpt.config.vocab_size, tokenizer_vocab_size(tok));

    // ---- data
    RankData train, val;
    rank_data_load(&train, train_path, tok, ctx, cli.skip_bad);
    size_t skipped = train.skipped;
    const char* val_path = config_str(cfg, "rm.val");
    int has_val = 1;
    if (val_path[0]) {
        rank_data_load(&val, val_path, tok, ctx, cli.skip_bad);
        skipped += val.skipped;
    } else {
        // hold out a seeded random share of rm.train
        double frac = config_double(cfg, "rm.val_fraction");
        size_t m = (size_t)ceil(frac * (double)train.n);
        if (m >= train.n) m = train.n - 1;
        has_val = m > 0;
        size_t* idx = mallocCheck(train.n * sizeof(size_t));
        for (size_t i = 0; i < train.n; i++) idx[i] = i;
        Rng split_rng;
        rng_seed(&split_rng, seed ^ 0x7E57DA7Aull);
        shuffle(idx, train.n, &split_rng);
        rank_data_split(&train, &val, idx, m);
        free(idx);
    }
    SeqSet norm;
    norm_samples_load(&norm, cfg, &train, tok, ctx, cli.skip_bad);

    const int batch = config_int(cfg, "train.batch");
    const double epochs = config_double(cfg, "rm.epochs");
    const size_t batches_per_epoch = (train.n + (size_t)batch - 1) / (size_t)batch;
    const int steps = epochs > 0 ? (int)fmax(1.0, ceil(epochs * (double)batches_per_epoch))
                                 : config_int(cfg, "train.steps");
    int max_k = train.max_k > val.max_k ? train.max_k : val.max_k;
    int max_len = train.max_len > val.max_len ? train.max_len : val.max_len;
    // every rank picks the same global batch of rankings and takes its share;
    // Gcap = the largest share (rank 0's; = batch in a world of one) also
    // sizes the held-out and normalisation batches
    int g0, Gl;
    train_world_share(&world, batch, "train.batch", &g0, &Gl); // fatal when batch < dp ranks
    const int Gcap = (batch + world.par.dp_size - 1) / world.par.dp_size;
    RankBatch rb;
    rank_batch_alloc(&rb, Gcap, Gcap * max_k, max_len);
    rm_reserve(&rm, Gcap * max_k, max_len); // the largest batch: activations sized once

    // ---- run dir
    const char* run_dir = config_str(cfg, "run.dir");
    char metrics_path[4096];
    FILE* metrics = root ? run_dir_open(run_dir, cfg, cli.overwrite, resuming ? &rs : NULL, metrics_path,
                                        sizeof metrics_path)
                         : NULL;

    if (root) fprintf(stderr,
            "rm: L=%d NH=%d C=%d V=%d ctx=%d (%zu params, %s) | %zu train rankings, %zu val | "
            "batch %d rankings, steps %d | %d norm samples | run dir %s\n",
            rm.gpt.config.num_layers, rm.gpt.config.num_heads, rm.gpt.config.channels,
            rm.gpt.config.vocab_size, ctx, rm.gpt.num_parameters_full + rm.gpt.config.channels + 1,
            init[0] ? init : "random init", train.n, val.n, batch, steps, norm.n, run_dir);
    if (skipped && root) fprintf(stderr, "rm: %zu bad records skipped\n", skipped);

    // ---- train
    AdamWConfig adamw = config_adamw(cfg);
    const float peak_lr = adamw.lr, min_lr = config_float(cfg, "train.min_lr");
    const int warmup = config_int(cfg, "train.warmup");
    const int eval_every = config_int(cfg, "train.eval_every");
    const int ckpt_every = config_int(cfg, "train.checkpoint_every");
    const int log_every = config_int(cfg, "train.log_every");

    Rng data_rng; // its own stream: the data order does not depend on the init
    rng_seed(&data_rng, seed ^ 0xD1B54A32D192ED03ull);
    size_t* order = mallocCheck(train.n * sizeof(size_t));
    for (size_t i = 0; i < train.n; i++) order[i] = i;
    shuffle(order, train.n, &data_rng);
    size_t cursor = 0;
    size_t* picked = mallocCheck((size_t)batch * sizeof(size_t));

    RunControl control;
    run_control_start(&control, &world, cfg, "rm", run_dir, steps);
    int steps_done = steps;
    const double t_start = now_seconds();
    double train_seconds = 0.0, loss = NAN, accuracy = NAN, val_loss = NAN, val_accuracy = NAN;
    double offset = 0.0; // of the last checkpoint
    int val_pairs = 0;
    size_t tokens = 0; // real (unpadded) tokens trained on
    int first_step = 1;
    if (resuming) { // continue exactly where the checkpoint's step ended
        checkpoint_load_optimizer(&rm.gpt, resume_ckpt);
        dp_scatter_optimizer(&world.dp, &rm.gpt);
        get_head_moments(&rs, &rm);
        first_step = (int)run_state_get_i64(&rs, "step") + 1;
        run_state_get_rng(&rs, "rng.data", &data_rng);
        size_t* saved = NULL;
        uint64_t pass;
        run_state_get_order(&rs, "order", train.n, &saved, &cursor, &pass);
        memcpy(order, saved, train.n * sizeof(size_t));
        free(saved);
        tokens = (size_t)run_state_get_i64(&rs, "tokens");
        train_seconds = run_state_get_f64(&rs, "train_seconds");
        loss = run_state_get_f64(&rs, "loss");
        accuracy = run_state_get_f64(&rs, "accuracy");
        val_loss = run_state_get_f64(&rs, "val_loss");
        val_accuracy = run_state_get_f64(&rs, "val_accuracy");
        val_pairs = (int)run_state_get_i64(&rs, "val_pairs");
        offset = run_state_get_f64(&rs, "offset");
    }
    run_state_free(&rs);
    char ckpt_path[4200] = "";
    for (int step = first_step; step <= steps; step++) {
        double t0 = now_seconds();
        run_control_phase(&control, "train");
        int G = 0; // the next `batch` rankings of the shuffled order, reshuffled each epoch
        while (G < batch && G < (int)train.n) {
            if (cursor == train.n) {
                shuffle(order, train.n, &data_rng);
                cursor = 0;
            }
            picked[G++] = order[cursor++];
        }
        // this rank's rankings of the global batch (G < batch only when
        // rm.train holds fewer than train.batch rankings)
        train_world_share(&world, G, "train.batch (capped by the training rankings)", &g0, &Gl);
        int seqs = 0; // sequences of the global batch
        size_t step_tokens = 0;
        for (int g = 0; g < G; g++) {
            const RankedSeqs* r = &train.items[picked[g]];
            seqs += r->k;
            for (int j = 0; j < r->k; j++) step_tokens += (size_t)r->lens[j];
        }
        tokens += step_tokens;
        rank_batch_fill(&rb, &train, picked + g0, Gl);
        adamw.lr = lr_schedule(step, steps, warmup, peak_lr, min_lr);
        rm_forward(&rm, rb.tokens, rb.lens, rb.B, rb.T, rb.rewards);
        int right = 0, pairs = 0;
        loss = rm_ranking_loss(rb.rewards, Gl, rb.k, rb.rankings, rb.drewards, &right, &pairs);
        if (dp && dp->size > 1) { // the loss is a mean over rankings: weigh by them
            double sums[4] = {loss * Gl, (double)Gl, (double)right, (double)pairs};
            const char* old = comm_set_phase(dp, "RM step statistics");
            comm_allreduce_f64(dp, sums, 4);
            comm_set_phase(dp, old);
            loss = sums[0] / sums[1];
            right = (int)sums[2];
            pairs = (int)sums[3];
        }
        accuracy = (double)right / pairs;
        if (!isfinite(loss)) fatalf("loss is %g at step %d (try a lower train.lr)", loss, step);
        rm_zero_grad(&rm);
        rm_backward(&rm, rb.drewards);
        rm_allreduce_grads(&rm, &world.dp, Gl);
        float grad_norm = rm_update_dp(&rm, &world.dp, &adamw);
        double dt = now_seconds() - t0;
        train_seconds += dt;

        int is_last = step == steps;
        int eval_now = has_val && (is_last || (eval_every > 0 && step % eval_every == 0));
        if (eval_now) run_control_phase(&control, "eval");
        if (eval_now) evaluate(&rm, &val, &rb, Gcap, dp, &val_loss, &val_accuracy, &val_pairs);
        int ckpt_now = is_last || (ckpt_every > 0 && step % ckpt_every == 0);

        json_t* row = json_object(); // every rank builds it; rank 0 writes and publishes it
        json_object_set_new(row, "step", json_integer(step));
        json_object_set_new(row, "loss", json_real(loss));
        json_object_set_new(row, "accuracy", json_real(accuracy));
        json_object_set_new(row, "lr", json_real(adamw.lr));
        json_object_set_new(row, "grad_norm", json_real(grad_norm));
        json_object_set_new(row, "rankings", json_integer(G));
        json_object_set_new(row, "pairs", json_integer(pairs));
        json_object_set_new(row, "tokens", json_integer((json_int_t)tokens));
        if (eval_now) {
            json_object_set_new(row, "val_loss", json_real(val_loss));
            json_object_set_new(row, "val_accuracy", json_number_or_null(val_accuracy));
        }
        json_object_set_new(row, "ms", json_real(dt * 1e3));
        json_object_set_new(row, "seqs_per_s", json_real(dt > 0 ? seqs / dt : 0.0));
        if (root) {
            write_json_line(metrics, row);
            fflush(metrics);
        }
        // every rank reports; rank 0 publishes /status and decides (collective)
        unsigned decision = run_control_step(&control, step, "train", row, (double)step_tokens);
        json_decref(row);
        if (decision & RUN_CHECKPOINT) ckpt_now = 1;
        if (decision & RUN_STOP) stopped = 1;

        if (root && (step == 1 || is_last || step % log_every == 0 || eval_now)) {
            char eta[32], val_text[64] = "";
            format_duration(train_seconds / step * (steps - step), eta, sizeof eta);
            if (eval_now)
                snprintf(val_text, sizeof val_text, " | val loss %.4f acc %.3f", val_loss, val_accuracy);
            fprintf(stderr, "step %*d/%d | loss %.4f acc %.3f%s | lr %.2e | norm %.3f | ETA %s\n",
                    snprintf(NULL, 0, "%d", steps), step, steps, loss, accuracy, val_text,
                    adamw.lr, grad_norm, eta);
        }
        if (ckpt_now) {
            run_control_phase(&control, "checkpoint");
            set_offset(&rm, &norm, Gcap * max_k, dp); // the saved model's offset (collective)
            offset = rm.offset;
            dp_gather_optimizer(&world.dp, &rm.gpt); // collective (ZeRO-1)
            RunState save;
            run_state_init(&save);
            if (root) { // what the next step needs beyond the weights and AdamW state
                run_state_put_i64(&save, "step", step);
                put_head_moments(&save, &rm); // replicated on every rank
                run_state_put_rng(&save, "rng.data", &data_rng);
                run_state_put_order(&save, "order", order, train.n, cursor, 0);
                run_state_put_i64(&save, "tokens", (int64_t)tokens);
                run_state_put_f64(&save, "train_seconds", train_seconds);
                run_state_put_f64(&save, "loss", loss);
                run_state_put_f64(&save, "accuracy", accuracy);
                run_state_put_f64(&save, "val_loss", val_loss);
                run_state_put_f64(&save, "val_accuracy", val_accuracy);
                run_state_put_i64(&save, "val_pairs", val_pairs);
                run_state_put_f64(&save, "offset", offset);
            }
            // the metrics mark, and whether every rank goes on to write (collective)
            const int ok = train_checkpoint_agree(&world, root ? &save : NULL, step, metrics_path, metrics);
            if (ok && world.par.dp_rank == 0) // the model's ranks gather; rank 0 writes
                save_checkpoint(&rm, cfg, run_dir, step, loss, val_loss, val_accuracy, root ? &save : NULL,
                                ckpt_path, sizeof ckpt_path);
            run_state_free(&save);
            dp_scatter_optimizer(&world.dp, &rm.gpt);
            rm.offset = 0.0f; // training goes on with raw rewards
        }
        if (stopped) {
            steps_done = step;
            break;
        }
    }
    if (!root) goto done;
    if (fclose(metrics) != 0) fatalf("cannot write '%s'", metrics_path);
    fprintf(stderr, "rm: offset %.4f (mean raw reward of %d samples) | saved %s\n", offset, norm.n,
            ckpt_path);

    // ---- summary: the last stdout line
    json_t* summary = json_object();
    json_object_set_new(summary, "steps", json_integer(steps_done));
    if (stopped) json_object_set_new(summary, "stopped", json_true());
    json_object_set_new(summary, "loss", json_real(loss));
    json_object_set_new(summary, "accuracy", json_real(accuracy));
    json_object_set_new(summary, "val_loss", json_number_or_null(val_loss));
    json_object_set_new(summary, "val_accuracy", json_number_or_null(val_accuracy));
    json_object_set_new(summary, "val_pairs", json_integer(val_pairs));
    json_object_set_new(summary, "offset", json_real(offset));
    json_object_set_new(summary, "train_rankings", json_integer((json_int_t)train.n));
    json_object_set_new(summary, "val_rankings", json_integer((json_int_t)val.n));
    json_object_set_new(summary, "skipped", json_integer((json_int_t)skipped));
    json_object_set_new(summary, "tokens", json_integer((json_int_t)tokens));
    json_object_set_new(summary, "seconds", json_real(now_seconds() - t_start));
    json_object_set_new(summary, "params", json_integer((json_int_t)rm.gpt.num_parameters_full));
    json_object_set_new(summary, "checkpoint", json_string(ckpt_path));
    json_object_set_new(summary, "run_dir", json_string(run_dir));
    write_json_line(stdout, summary);
    json_decref(summary);

done:;
    const int rc = stopped ? run_control_exit_code(&control) : 0;
    run_control_finish(&control);
    free(order);
    free(picked);
    rank_batch_free(&rb);
    seq_set_free(&norm);
    rank_data_free(&train);
    rank_data_free(&val);
    tokenizer_free(tok);
    rm_free(&rm);
    train_world_free(&world);
    config_free(cfg);
    return rc;
}
