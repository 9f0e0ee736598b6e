// cmd_dpo.c - `rlhfd dpo`: Direct Preference Optimization (Rafailov et al.
// 2023), offline RL fine-tuning on preference pairs without a reward model.
//
// Data: rankings (a ranking of k gives the pair (best, worst), or every pair
// with dpo.pairs = all) or {"prompt", "chosen", "rejected"} pairs. Each
// response is encode(prompt) ++ encode(response) ++ [eot]; its sequence
// log-prob is the sum of log p over the response tokens and the eot.
// The policy and the frozen reference both start from the SFT model; the
// reference log-probs of each pair are computed once (on first use). One step:
// train.batch pairs = 2*batch padded rows (chosen, rejected, chosen, ...),
// gpt_forward + gpt_token_logprobs -> sequence sums, rl_dpo_loss (the
// sigmoid loss), and its gradient d loss/d(sum) placed on every response
// token of that row -> gpt_lm_head_backward -> trunk -> AdamW.
// At the end: a checkpoint and the shared held-out evaluation
// (rollout_evaluate on rl.val_prompts with rl.reward and rl.gold), so the
// summary's gold/reward/kl compare with the on-policy algorithms.
// Data parallel under mpirun (coordinator/train_util.h): train.batch pairs are
// the global batch; each rank runs the policy and the reference on its share
// of the pairs (a short last batch may leave a rank none) and the loss and
// statistics are weighed by pairs; held-out pairs and prompts are shared.
// Rank 0 alone writes run.dir.
// Tensor parallel with parallel.tp: policy and reference are sharded over the
// tp ranks of each dp replica, which take the same pairs and prompts and make
// every model call together (forwards, generation, checkpoints).
// Exact resume (--resume): the policy and its AdamW state come from the
// checkpoint, the reference from model.init (the original SFT model, never
// the checkpoint); the run state holds the sampler, the statistics, every
// rank's cache of reference log-probs and the metrics mark
// (coordinator/run_state.h).
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "commands.h"
#include "dpo.h"
#include "run_control.h"
#include "run_state.h"
#include "sft_data.h"
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/config.h"
#include "../common/hfdata.h"
#include "../common/tokenizer.h"
#include "../kernels/ops.h"
#include "../worker/gpt.h"
#include "../worker/model_io.h"
#include "../worker/rewards.h"
#include "../worker/rl_math.h"
#include "../worker/rollout.h"

#define CMD "dpo"

static const char* const SYNOPSIS =
    "--config FILE [--set KEY=VALUE]... [--model PATH] [--overwrite] [--skip-bad]\n"
    "\n"
    "Direct Preference Optimization of the SFT policy (--model or model.init:\n"
    "required) on preferences dpo.train (JSONL rankings {\"prompt\", \"responses\",\n"
    "\"ranking\"} or pairs {\"prompt\", \"chosen\", \"rejected\"}; dpo.val held out).\n"
    "A ranking of k gives the pair (best, worst), or all k(k-1)/2 pairs with\n"
    "dpo.pairs = all. The frozen reference is the same SFT model. loss =\n"
    "-log sigmoid(dpo.beta * ((pc - rc) - (pr - rr))) over pairs, where pc/pr are\n"
    "the policy's log-prob sums of the chosen/rejected response (response tokens\n"
    "and eot) and rc/rr the reference's. Steps: train.steps of train.batch pairs\n"
    "(length-bucketed shuffle as in rlhfd sft, seeded by train.seed); AdamW with train.* and warmup+cosine LR.\n"
    "metrics.jsonl per step: loss, acc (implicit reward of chosen > rejected),\n"
    "margin, chosen_reward, rejected_reward (beta * (policy - reference) log-prob\n"
    "sums), lr, grad_norm; val_loss/val_acc/val_margin every train.eval_every\n"
    "steps and at the end. At the end: a checkpoint in run.dir and the held-out\n"
    "evaluation (rl.val_prompts, first rl.eval_prompts; rl.reward, rl.gold):\n"
    "gold, reward and kl (nats/sequence to the reference) in the JSON summary.\n"
    "A pair longer than the context is an error naming PATH:LINE (--skip-bad:\n"
    "skipped and counted). run.dir defaults to runs/dpo.";

// ----------------------------------------------------------------------------
// preference pairs, tokenized: examples 2p (chosen) and 2p+1 (rejected)

void dpo_pairs_add(DpoPairs* d, const int* prompt, int P, const int* chosen, int Rc, const int* rejected, int Rr,
                   int eot, int line) {
    sft_data_add(&d->seqs, prompt, P, chosen, Rc, eot, line);
    sft_data_add(&d->seqs, prompt, P, rejected, Rr, eot, line);
    d->n++;
    d->ref_c = reallocCheck(d->ref_c, d->n * sizeof(float));
    d->ref_r = reallocCheck(d->ref_r, d->n * sizeof(float));
    d->ref_done = reallocCheck(d->ref_done, d->n);
    d->ref_c[d->n - 1] = d->ref_r[d->n - 1] = 0.0f;
    d->ref_done[d->n - 1] = 0;
}

// Adds the pair (chosen, rejected) of one ranking record; 0 if too long.
static int pair_add(DpoPairs* d, Tokenizer* tok, const HfRanking* rec, int chosen, int rejected, int ctx,
                    int eot, HfBadReport* bad) {
    int len_c, len_r, p_c, p_r;
    int* tc = hf_encode_pair(tok, rec->prompt, rec->responses[chosen], &len_c, &p_c);
    int* tr = hf_encode_pair(tok, rec->prompt, rec->responses[rejected], &len_r, &p_r);
    int ok = len_c <= ctx && len_r <= ctx;
    if (!ok) {
        hf_bad_record(bad, rec->line, "prompt+response is %d tokens, longer than the context (%d)",
                      len_c > len_r ? len_c : len_r, ctx);
    } else {
        // hf_encode_pair ends with the eot; dpo_pairs_add appends it again
        dpo_pairs_add(d, tc, p_c, tc + p_c, len_c - p_c - 1, tr + p_r, len_r - p_r - 1, eot, rec->line);
    }
    free(tc);
    free(tr);
    return ok;
}

void dpo_pairs_load(DpoPairs* d, const char* path, Tokenizer* tok, int ctx, int all_pairs, int skip_bad) {
    memset(d, 0, sizeof *d);
    size_t n_records = 0, skipped = 0;
    HfRanking* recs = hf_read_rankings(path, skip_bad, &n_records, &skipped);
    HfBadReport bad = {.path = path, .skip_bad = skip_bad, .skipped = 0};
    const int eot = tokenizer_eot(tok);
    for (size_t i = 0; i < n_records; i++) {
        const HfRanking* rec = &recs[i];
        if (!all_pairs) {
            pair_add(d, tok, rec, rec->ranking[0], rec->ranking[rec->k - 1], ctx, eot, &bad);
            continue;
        }
        for (int a = 0; a < rec->k; a++)
            for (int b = a + 1; b < rec->k; b++)
                if (!pair_add(d, tok, rec, rec->ranking[a], rec->ranking[b], ctx, eot, &bad)) goto next_record;
    next_record:;
    }
    hf_bad_report_finish(&bad);
    hf_free_rankings(recs, n_records);
    d->skipped = skipped + bad.skipped;
    if (d->n == 0) fatalf("%s: no preference pair fits the context (%d tokens)", path, ctx);
}

void dpo_pairs_free(DpoPairs* d) {
    sft_data_free(&d->seqs);
    free(d->ref_c);
    free(d->ref_r);
    free(d->ref_done);
}

// ----------------------------------------------------------------------------
// sequence log-prob sums of a batch of pairs

void dpo_batch_alloc(DpoBatch* pb, int max_pairs, int max_T) {
    sft_batch_alloc(&pb->batch, 2 * max_pairs, max_T);
    pb->rows = mallocCheck((size_t)2 * max_pairs * sizeof(size_t));
    pb->logp = mallocCheck((size_t)2 * max_pairs * max_T * sizeof(float));
    pb->dlogp = mallocCheck((size_t)2 * max_pairs * max_T * sizeof(float));
    float** bufs[] = {&pb->pc, &pb->pr, &pb->rc, &pb->rr, &pb->dpc, &pb->dpr};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) *bufs[i] = mallocCheck((size_t)max_pairs * sizeof(float));
}

void dpo_batch_free(DpoBatch* pb) {
    sft_batch_free(&pb->batch);
    free(pb->rows); free(pb->logp); free(pb->dlogp);
    free(pb->pc); free(pb->pr); free(pb->rc); free(pb->rr); free(pb->dpc); free(pb->dpr);
}

// Forward of `model` on pairs idx[0..np) of d; the log-prob sums of the
// chosen and rejected responses go to sum_c, sum_r (np). The activations and
// pb->logp stay valid for a backward.
void dpo_batch_forward(GPT* model, DpoBatch* pb, const DpoPairs* d, const size_t* idx, int np, int eot,
                       float* sum_c, float* sum_r) {
    for (int i = 0; i < np; i++) {
        pb->rows[2 * i] = 2 * idx[i];
        pb->rows[2 * i + 1] = 2 * idx[i] + 1;
    }
    SftBatch* b = &pb->batch;
    sft_batch_fill(b, &d->seqs, pb->rows, 2 * np, eot);
    gpt_forward(model, b->inputs, b->targets, b->mask, b->B, b->T);
    gpt_token_logprobs(model, pb->logp); // (B,T), 0 where target < 0
    for (int i = 0; i < np; i++) {
        for (int side = 0; side < 2; side++) {
            const float* lp = pb->logp + (size_t)(2 * i + side) * b->T;
            const float* m = b->mask + (size_t)(2 * i + side) * b->T;
            double s = 0.0;
            for (int t = 0; t < b->T; t++)
                if (m[t] != 0.0f) s += lp[t]; // response tokens and the eot only
            (side ? sum_r : sum_c)[i] = (float)s;
        }
    }
}

// Reference log-prob sums of pairs idx[0..np) that do not have them yet
// (the reference is frozen: each pair's are computed once, on first use, so a
// run shorter than an epoch never pays for pairs it does not train on).
void dpo_ensure_reference(GPT* ref, DpoBatch* pb, DpoPairs* d, const size_t* idx, int np, int eot) {
    size_t* todo = mallocCheck((size_t)np * sizeof(size_t));
    int nt = 0;
    for (int i = 0; i < np; i++)
        if (!d->ref_done[idx[i]]) todo[nt++] = idx[i];
    if (nt > 0) {
        float* sum_c = mallocCheck((size_t)nt * sizeof(float));
        float* sum_r = mallocCheck((size_t)nt * sizeof(float));
        dpo_batch_forward(ref, pb, d, todo, nt, eot, sum_c, sum_r);
        for (int i = 0; i < nt; i++) {
            d->ref_c[todo[i]] = sum_c[i];
            d->ref_r[todo[i]] = sum_r[i];
            d->ref_done[todo[i]] = 1;
        }
        free(sum_c);
        free(sum_r);
    }
    free(todo);
}

static const DpoPairs* sort_data; // qsort context: pairs by their longer sequence
static int pair_len(const DpoPairs* d, size_t p) {
    int a = d->seqs.examples[2 * p].len, b = d->seqs.examples[2 * p + 1].len;
    return a > b ? a : b;
}
static int pair_len_cmp(const void* x, const void* y) {
    size_t a = *(const size_t*)x, b = *(const size_t*)y;
    int la = pair_len(sort_data, a), lb = pair_len(sort_data, b);
    if (la != lb) return la - lb;
    return (a > b) - (a < b);
}

// All pairs of d ordered by length, so that evaluation batches have little padding.
size_t* dpo_pairs_by_length(const DpoPairs* d) {
    size_t* order = mallocCheck(d->n * sizeof(size_t));
    for (size_t i = 0; i < d->n; i++) order[i] = i;
    sort_data = d;
    qsort(order, d->n, sizeof(size_t), pair_len_cmp);
    sort_data = NULL;
    return order;
}

// DPO loss of a forwarded batch; fills pb->dpc/dpr. Stats are batch means.
DpoStats dpo_batch_loss(DpoBatch* pb, const DpoPairs* d, const size_t* idx, int np, float beta) {
    for (int i = 0; i < np; i++) {
        pb->rc[i] = d->ref_c[idx[i]];
        pb->rr[i] = d->ref_r[idx[i]];
    }
    DpoStats s = {0};
    float acc = 0.0f;
    s.loss = rl_dpo_loss(pb->pc, pb->pr, pb->rc, pb->rr, (size_t)np, beta, pb->dpc, pb->dpr, &acc);
    s.acc = acc;
    for (int i = 0; i < np; i++) {
        double rew_c = (double)beta * ((double)pb->pc[i] - pb->rc[i]);
        double rew_r = (double)beta * ((double)pb->pr[i] - pb->rr[i]);
        s.chosen_reward += rew_c / np;
        s.rejected_reward += rew_r / np;
        s.margin += (rew_c - rew_r) / np;
    }
    return s;
}

// Mean DPO stats over all pairs of d (no gradient), in batches of max_pairs.
DpoStats dpo_evaluate(GPT* model, GPT* ref, DpoBatch* pb, DpoPairs* d, int max_pairs, int eot, float beta) {
    return dpo_evaluate_dp(model, ref, pb, d, max_pairs, eot, beta, NULL);
}

DpoStats dpo_evaluate_dp(GPT* model, GPT* ref, DpoBatch* pb, DpoPairs* d, int max_pairs, int eot, float beta,
                         Comm* dp) {
    DpoStats total = {0};
    size_t* order = dpo_pairs_by_length(d);
    size_t first = 0, last = d->n; // this dp rank's pairs of the sorted order
    if (dp) parallel_share(d->n, dp->rank, dp->size, &first, &last);
    for (size_t start = first; start < last; start += (size_t)max_pairs) {
        int np = (int)(last - start < (size_t)max_pairs ? last - start : (size_t)max_pairs);
        const size_t* idx = order + start;
        dpo_ensure_reference(ref, pb, d, idx, np, eot);
        dpo_batch_forward(model, pb, d, idx, np, eot, pb->pc, pb->pr);
        DpoStats s = dpo_batch_loss(pb, d, idx, np, beta);
        double w = (double)np / (double)d->n;
        total.loss += s.loss * w;
        total.acc += s.acc * w;
        total.margin += s.margin * w;
        total.chosen_reward += s.chosen_reward * w;
        total.rejected_reward += s.rejected_reward * w;
    }
    free(order);
    if (dp && dp->size > 1) { // each rank's sums are already weighted by np / n
        double sums[5] = {total.loss, total.acc, total.margin, total.chosen_reward, total.rejected_reward};
        const char* old = comm_set_phase(dp, "DPO held-out evaluation");
        comm_allreduce_f64(dp, sums, 5);
        comm_set_phase(dp, old);
        total = (DpoStats){sums[0], sums[1], sums[2], sums[3], sums[4]};
    }
    return total;
}

void dpo_stats_reduce(DpoStats* s, double np, Comm* dp) {
    if (!dp || dp->size == 1) return;
    double sums[6] = {s->loss * np, s->acc * np, s->margin * np, s->chosen_reward * np,
                      s->rejected_reward * np, np};
    const char* old = comm_set_phase(dp, "DPO step statistics");
    comm_allreduce_f64(dp, sums, 6);
    comm_set_phase(dp, old);
    double n = sums[5] > 0 ? sums[5] : 1.0;
    *s = (DpoStats){sums[0] / n, sums[1] / n, sums[2] / n, sums[3] / n, sums[4] / n};
}

// Backward of the DPO loss of the last forwarded batch into model->grads:
// d loss / d logp[row, t] = dpc (chosen row) or dpr (rejected row) at every
// response position of the row, 0 elsewhere.
void dpo_batch_backward(GPT* model, DpoBatch* pb, int np) {
    const SftBatch* b = &pb->batch;
    for (int i = 0; i < np; i++) {
        for (int side = 0; side < 2; side++) {
            size_t row = (size_t)(2 * i + side) * b->T;
            float g = side ? pb->dpr[i] : pb->dpc[i];
            for (int t = 0; t < b->T; t++) pb->dlogp[row + t] = b->mask[row + t] != 0.0f ? g : 0.0f;
        }
    }
    gpt_zero_grad(model);
    gpt_hidden_grad(model);
    gpt_lm_head_backward(model, pb->dlogp);
    gpt_backward_trunk(model);
}

// ----------------------------------------------------------------------------
// training order: SFT's length-bucketed shuffle (sft_data.h) over the pairs,
// each pair standing in as one example as long as its longer sequence, so
// that a batch's rows need little padding while batches stay random.

static SftData pair_lengths(const DpoPairs* d) {
    SftData view;
    memset(&view, 0, sizeof view);
    view.examples = callocCheck(d->n, sizeof(SftExample));
    view.n = d->n;
    for (size_t p = 0; p < d->n; p++) {
        const SftExample* c = &d->seqs.examples[2 * p];
        const SftExample* r = &d->seqs.examples[2 * p + 1];
        view.examples[p] = (SftExample){.tokens = NULL, .len = c->len > r->len ? c->len : r->len,
                                        .prompt_len = c->prompt_len, .line = c->line};
        if (view.examples[p].len > view.max_len) view.max_len = view.examples[p].len;
    }
    return view;
}

// ----------------------------------------------------------------------------
// the held-out evaluation of the RL stages

typedef struct {
    int done;
    RolloutEval ev;
    double seconds;
} HeldOut;

// Collective over dp (may be NULL): each dp rank samples its share of the
// prompts (prompt i keeps its seed, train.seed + i) and the means are reduced.
static HeldOut held_out_evaluate(GPT* policy, GPT* ref, Tokenizer* tok, const Config* cfg, const Ops* ops,
                                 Comm* dp) {
    HeldOut h = {0};
    const char* val_prompts = config_str(cfg, "rl.val_prompts");
    if (!val_prompts[0]) return h;
    double t0 = now_seconds();
    size_t n_all = 0, skipped = 0;
    char** prompts = hf_read_prompts(val_prompts, 0, &n_all, &skipped);
    size_t n = n_all, limit = (size_t)config_int(cfg, "rl.eval_prompts");
    if (limit > 0 && n > limit) n = limit;
    const char* reward_spec = config_str(cfg, "rl.reward");
    const char* gold_spec = config_str(cfg, "rl.gold");
    RewardFn* reward = reward_spec[0] ? reward_open(reward_spec, ops) : NULL;
    RewardFn* gold = gold_spec[0] ? reward_open(gold_spec, ops) : NULL;
    RolloutConfig rcfg = rollout_config_default();
    rcfg.max_new_tokens = config_int(cfg, "rl.max_new_tokens");
    rcfg.temperature = config_float(cfg, "rl.temperature");
    rcfg.top_k = config_int(cfg, "rl.top_k");
    size_t first = 0, last = n;
    if (dp) parallel_share(n, dp->rank, dp->size, &first, &last);
    if (last > first)
        h.ev = rollout_evaluate(policy, ref, reward, gold, tok, (const char* const*)prompts + first,
                                (int)(last - first), (uint64_t)config_int(cfg, "train.seed") + first, &rcfg);
    if (dp && dp->size > 1) {
        double m = h.ev.n, sums[5] = {h.ev.gold * m, h.ev.reward * m, h.ev.kl * m, h.ev.response_len * m, m};
        const char* old = comm_set_phase(dp, "DPO held-out rollouts");
        comm_allreduce_f64(dp, sums, 5);
        comm_set_phase(dp, old);
        double N = sums[4] > 0 ? sums[4] : 1.0;
        h.ev = (RolloutEval){.gold = sums[0] / N, .reward = sums[1] / N, .kl = sums[2] / N,
                             .response_len = sums[3] / N, .n = (int)sums[4]};
    }
    h.done = 1;
    if (reward) reward_close(reward);
    if (gold) reward_close(gold);
    hf_free_prompts(prompts, n_all);
    h.seconds = now_seconds() - t0;
    return h;
}

// ----------------------------------------------------------------------------

static void set_stats(json_t* row, const char* prefix, const DpoStats* s) {
    char key[64];
    const struct { const char* name; double value; } fields[] = {
        {"loss", s->loss}, {"acc", s->acc}, {"margin", s->margin},
        {"chosen_reward", s->chosen_reward}, {"rejected_reward", s->rejected_reward},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        snprintf(key, sizeof key, "%s%s", prefix, fields[i].name);
        json_object_set_new(row, key, json_real(fields[i].value));
    }
}

// ----------------------------------------------------------------------------
// exact resume: the reference log-prob caches and the statistics

// A rank's caches of train (and val, may be NULL) as bytes: per set n (u64),
// ref_done (n bytes), ref_c, ref_r (n f32 each).
static void ref_cache_put(ByteBuf* b, const DpoPairs* d) {
    bytebuf_put_u64(b, d->n);
    bytebuf_put(b, d->ref_done, d->n);
    bytebuf_put(b, d->ref_c, d->n * sizeof(float));
    bytebuf_put(b, d->ref_r, d->n * sizeof(float));
}

// Reads one set of a cache blob into d's cache, filling only pairs not
// cached yet (the first blob read wins).
static void ref_cache_get(ByteReader* r, DpoPairs* d) {
    uint64_t n = byteread_u64(r);
    if (n != d->n)
        fatalf("%s: %" PRIu64 " pairs, the data now has %zu (resume needs the same data)", r->what, n, d->n);
    unsigned char* done = mallocCheck(d->n + 1);
    float* c = mallocCheck((d->n + 1) * sizeof(float));
    float* rr = mallocCheck((d->n + 1) * sizeof(float));
    byteread(r, done, d->n);
    byteread(r, c, d->n * sizeof(float));
    byteread(r, rr, d->n * sizeof(float));
    for (size_t i = 0; i < d->n; i++) {
        if (!done[i] || d->ref_done[i]) continue;
        d->ref_c[i] = c[i];
        d->ref_r[i] = rr[i];
        d->ref_done[i] = 1;
    }
    free(done);
    free(c);
    free(rr);
}

// Each rank computes the reference of its own pairs on first use, so the
// caches differ between ranks: gather all of them (collective over the
// world) into rs on rank 0, as blobs dpo_ref.RANK (tp peers hold the same
// cache: they take the same pairs), with the tp size that laid them out.
static void ref_cache_save(RunState* rs, const DpoPairs* train, const DpoPairs* val, Comm* world, int tp_size) {
    ByteBuf b = {0};
    ref_cache_put(&b, train);
    if (val) ref_cache_put(&b, val);
    uint8_t** all = NULL;
    size_t* lens = NULL;
    comm_gather_bytes(world, b.data, b.len, 0, &all, &lens);
    bytebuf_free(&b);
    if (!all) return; // not rank 0
    run_state_put_i64(rs, "dpo_ref.ranks", world->size);
    run_state_put_i64(rs, "dpo_ref.tp", tp_size);
    for (int r = 0; r < world->size; r++) {
        char key[32];
        snprintf(key, sizeof key, "dpo_ref.%d", r);
        run_state_put_blob(rs, key, all[r], lens[r]);
        free(all[r]);
    }
    free(all);
    free(lens);
}

// Every rank takes back its own cache; at another world size or tp size
// (resharding: a rank's pairs change) each takes the union of all of them
// (any rank's value is the reference's).
static void ref_cache_load(const RunState* rs, DpoPairs* train, DpoPairs* val, Comm* world, int tp_size) {
    int ranks = (int)run_state_get_i64(rs, "dpo_ref.ranks");
    int saved_tp = run_state_has(rs, "dpo_ref.tp") ? (int)run_state_get_i64(rs, "dpo_ref.tp") : 1;
    const int same_layout = ranks == world->size && saved_tp == tp_size;
    for (int r = 0; r < ranks; r++) {
        if (same_layout && r != world->rank) continue;
        char key[32];
        snprintf(key, sizeof key, "dpo_ref.%d", r);
        void* data;
        size_t len;
        run_state_get_blob(rs, key, &data, &len);
        ByteReader br = {.data = data, .len = len, .pos = 0, .what = key};
        ref_cache_get(&br, train);
        if (val) ref_cache_get(&br, val);
        byteread_end(&br);
        free(data);
    }
}

static void stats_put(RunState* rs, const char* prefix, const DpoStats* s) {
    char key[64];
    const struct { const char* name; double value; } f[] = {
        {"loss", s->loss}, {"acc", s->acc}, {"margin", s->margin},
        {"chosen_reward", s->chosen_reward}, {"rejected_reward", s->rejected_reward},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", prefix, f[i].name);
        run_state_put_f64(rs, key, f[i].value);
    }
}

static DpoStats stats_get(const RunState* rs, const char* prefix) {
    char key[64];
    double v[5];
    const char* names[5] = {"loss", "acc", "margin", "chosen_reward", "rejected_reward"};
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "%s.%s", prefix, names[i]);
        v[i] = run_state_get_f64(rs, key);
    }
    return (DpoStats){v[0], v[1], v[2], v[3], v[4]};
}

int cmd_dpo(int argc, char** argv) {
    TrainCli cli;
    Config* cfg = train_cli_config(CMD, SYNOPSIS, "PATH: the SFT model (= model.init): policy and reference",
                                   "runs/dpo", 1, &cli, argc, argv);
    if (!cfg) return 0;
    const char* train_path = config_str(cfg, "dpo.train");
    const char* val_path = config_str(cfg, "dpo.val");
    if (!train_path[0])
        fatalf("%s: dpo.train is empty (a JSONL file of rankings or {\"prompt\", \"chosen\", \"rejected\"})",
               config_origin(cfg, "dpo.train"));
    const char* pairs_mode = config_str(cfg, "dpo.pairs");
    int all_pairs = 0;
    if (strcmp(pairs_mode, "all") == 0) all_pairs = 1;
    else if (strcmp(pairs_mode, "best_worst") != 0)
        fatalf("%s: dpo.pairs = '%s': expected best_worst or all", config_origin(cfg, "dpo.pairs"), pairs_mode);
    const char* init = config_str(cfg, "model.init");
    if (!init[0]) fatalf("dpo needs the SFT model: pass --model PATH (or set model.init)");

    const Ops* ops = ops_from_config(cfg); // run.device, run.precision, train.threads
    TrainWorld world;
    train_world_init(&world, cfg);
    const int root = world.is_root;
    Comm* dp = world.par.dp;
    int stopped = 0; // a graceful stop (POST /stop, SIGTERM/SIGUSR1) after a checkpoint

    // ---- resume: the policy, AdamW state, sampler and metrics from a checkpoint
    char resume_ckpt[4096] = "";
    RunState rs;
    const int resuming = train_resume_begin(&world, cli.resume, cfg, resume_ckpt, sizeof resume_ckpt, &rs);

    // ---- policy and frozen reference, both from the SFT model (a resumed
    // policy from the checkpoint; the reference always from model.init)
    GPT policy, ref;
    memset(&policy, 0, sizeof policy);
    memset(&ref, 0, sizeof ref);
    const char* policy_init = resuming ? resume_ckpt : init;
    json_t* init_state = NULL;
    model_load_tp(&policy, policy_init, ops, world.par.tp, &init_state); // this rank's shards under tp
    json_decref(init_state);
    config_adopt_model_shape(cfg, policy.config, policy_init);
    model_load_tp(&ref, init, ops, world.par.tp, NULL);
    if (resuming) gpt_config_expect(&policy.config, &ref.config, init);
    Tokenizer* tok = tokenizer_load(NULL);
    const int eot = tokenizer_eot(tok);
    if (policy.config.vocab_size < tokenizer_vocab_size(tok))
        fatalf("model '%s' has a vocabulary of %d, smaller than the GPT-2 tokenizer's %d", init,
               policy.config.vocab_size, tokenizer_vocab_size(tok));
    const int ctx = policy.config.max_seq_len;

    // ---- data
    DpoPairs train_data, val_data;
    dpo_pairs_load(&train_data, train_path, tok, ctx, all_pairs, cli.skip_bad);
    const int has_val = val_path[0] != '\0';
    if (has_val) dpo_pairs_load(&val_data, val_path, tok, ctx, all_pairs, cli.skip_bad);

    const int batch_pairs = config_int(cfg, "train.batch");
    // every rank walks the same global order and takes its share of each
    // batch's pairs (the reference's forward too); Pcap = the largest share
    // (rank 0's; = train.batch in a world of one) also sizes the held-out batches
    int p0, Pl;
    train_world_share(&world, batch_pairs, "train.batch", &p0, &Pl); // fatal when batch < dp ranks
    const int Pcap = (batch_pairs + world.par.dp_size - 1) / world.par.dp_size;
    int max_T = train_data.seqs.max_len - 1;
    if (has_val && val_data.seqs.max_len - 1 > max_T) max_T = val_data.seqs.max_len - 1;
    DpoBatch pb;
    dpo_batch_alloc(&pb, Pcap, max_T);
    gpt_reserve(&policy, 2 * Pcap, max_T);
    gpt_reserve(&ref, 2 * Pcap, max_T);
    const float beta = config_float(cfg, "dpo.beta");

    // ---- run dir
    const char* run_dir = config_str(cfg, "run.dir");
    char metrics_path[4096];
    FILE* metrics = root ? run_dir_open(run_dir, cfg, cli.overwrite, resuming ? &rs : NULL, metrics_path,
                                        sizeof metrics_path)
                         : NULL;

    const int steps = config_int(cfg, "train.steps");
    if (root) fprintf(stderr,
            "dpo: L=%d NH=%d C=%d V=%d ctx=%d (%zu params, %s) | beta=%g | %d steps of %d pairs | "
            "train %zu pairs (%s)%s | val %zu pairs | run dir %s\n",
            policy.config.num_layers, policy.config.num_heads, policy.config.channels,
            policy.config.vocab_size, ctx, policy.num_parameters_full, init, beta, steps, batch_pairs,
            train_data.n, pairs_mode, train_data.skipped ? ", some skipped" : "", has_val ? val_data.n : 0,
            run_dir);

    const double t_start = now_seconds();
    double t_ref_logprobs = 0.0; // the reference's log-probs, once per pair (train: on first use)

    // ---- train
    AdamWConfig adamw = config_adamw(cfg);
    const float peak_lr = adamw.lr, min_lr = config_float(cfg, "train.min_lr");
    const int warmup = config_int(cfg, "train.warmup");
    const int eval_every = config_int(cfg, "train.eval_every");
    const int ckpt_every = config_int(cfg, "train.checkpoint_every");
    const int log_every = config_int(cfg, "train.log_every");

    SftData lengths = pair_lengths(&train_data);
    SftSampler sampler;
    const uint64_t order_seed = (uint64_t)config_int(cfg, "train.seed") ^ 0xA0761D6478BD642Full;
    sft_sampler_init(&sampler, &lengths, batch_pairs, order_seed);

    RunControl control;
    run_control_start(&control, &world, cfg, "dpo", run_dir, steps);
    int steps_done = steps;
    double t_train = 0.0, t_eval = 0.0;
    DpoStats last = {0}, val = {0};
    int have_val_stats = 0;
    size_t tokens = 0;
    int first_step = 1;
    if (resuming) { // continue exactly where the checkpoint's step ended
        checkpoint_load_optimizer(&policy, resume_ckpt);
        dp_scatter_optimizer(&world.dp, &policy);
        first_step = (int)run_state_get_i64(&rs, "step") + 1;
        sft_sampler_restore(&sampler, &rs, "sampler");
        ref_cache_load(&rs, &train_data, has_val ? &val_data : NULL, world.par.world, world.par.tp_size);
        tokens = (size_t)run_state_get_i64(&rs, "tokens");
        t_train = run_state_get_f64(&rs, "t_train");
        t_eval = run_state_get_f64(&rs, "t_eval");
        t_ref_logprobs = run_state_get_f64(&rs, "t_ref_logprobs");
        last = stats_get(&rs, "last");
        have_val_stats = (int)run_state_get_i64(&rs, "have_val_stats");
        val = stats_get(&rs, "val");
    }
    run_state_free(&rs);
    char ckpt_path[4200] = "";
    for (int step = first_step; step <= steps; step++) {
        double t0 = now_seconds();
        run_control_phase(&control, "train");
        int np_global = 0;
        const size_t* all = sft_sampler_next(&sampler, &np_global);
        // this rank's pairs of the global batch; the last batch of an epoch
        // may leave a rank none (it then adds a zero gradient)
        size_t q0, q1;
        parallel_share((size_t)np_global, world.par.dp_rank, world.par.dp_size, &q0, &q1);
        const size_t* idx = all + q0;
        const int np = (int)(q1 - q0);
        size_t step_loss_tokens = 0, step_real_tokens = 0; // of the global batch (chosen + rejected rows)
        for (int i = 0; i < np_global; i++) {
            size_t lt, rt;
            const size_t rows[2] = {2 * all[i], 2 * all[i] + 1};
            sft_count_tokens(&train_data.seqs, rows, 2, &lt, &rt);
            step_loss_tokens += lt;
            step_real_tokens += rt;
        }
        if (np > 0) dpo_ensure_reference(&ref, &pb, &train_data, idx, np, eot);
        double t_ref = now_seconds() - t0;
        t_ref_logprobs += t_ref;
        adamw.lr = lr_schedule(step, steps, warmup, peak_lr, min_lr);
        if (np > 0) {
            dpo_batch_forward(&policy, &pb, &train_data, idx, np, eot, pb.pc, pb.pr);
            last = dpo_batch_loss(&pb, &train_data, idx, np, beta);
            dpo_batch_backward(&policy, &pb, np);
        } else {
            last = (DpoStats){0};
            gpt_ensure_grads(&policy);
            gpt_zero_grad(&policy);
        }
        dpo_stats_reduce(&last, np, dp); // means over the global batch's pairs
        if (!isfinite(last.loss)) fatalf("DPO loss is %g at step %d (try a lower train.lr)", last.loss, step);
        dp_allreduce_grads(&world.dp, &policy, np);
        float grad_norm = dp_update(&world.dp, &policy, &adamw);
        double dt = now_seconds() - t0 - t_ref;
        t_train += dt;
        tokens += step_loss_tokens;

        int is_last = step == steps;
        int eval_now = has_val && (is_last || (eval_every > 0 && step % eval_every == 0));
        if (eval_now) {
            run_control_phase(&control, "eval");
            double te = now_seconds();
            val = dpo_evaluate_dp(&policy, &ref, &pb, &val_data, Pcap, eot, beta, dp);
            have_val_stats = 1;
            t_eval += now_seconds() - te;
        }
        int ckpt_now = is_last || (ckpt_every > 0 && step % ckpt_every == 0);

        json_t* row = json_object(); // every rank builds it; rank 0 writes and publishes it
        json_object_set_new(row, "step", json_integer(step));
        json_object_set_new(row, "epoch", json_integer(sampler.epoch));
        set_stats(row, "", &last);
        json_object_set_new(row, "lr", json_real(adamw.lr));
        json_object_set_new(row, "grad_norm", json_real(grad_norm));
        json_object_set_new(row, "tokens", json_integer((json_int_t)tokens));
        if (eval_now) set_stats(row, "val_", &val);
        json_object_set_new(row, "t_ref_logprobs", json_real(t_ref));
        json_object_set_new(row, "t_train", json_real(dt));
        json_object_set_new(row, "tokens_per_s", json_real(dt > 0 ? step_real_tokens / dt : 0.0));
        if (root) {
            write_json_line(metrics, row);
            fflush(metrics);
        }
        // every rank reports; rank 0 publishes /status and decides (collective)
        unsigned decision = run_control_step(&control, step, "train", row, (double)step_real_tokens);
        json_decref(row);
        if (decision & RUN_CHECKPOINT) ckpt_now = 1;
        if (decision & RUN_STOP) stopped = 1;

        if (root && (step == 1 || is_last || step % log_every == 0)) {
            char eta[32], val_text[96] = "";
            format_duration(t_train / step * (steps - step), eta, sizeof eta);
            if (eval_now) snprintf(val_text, sizeof val_text, " | val loss %.4f acc %.3f", val.loss, val.acc);
            fprintf(stderr, "step %d/%d | loss %.4f | acc %.3f | margin %.3f%s | lr %.2e | norm %.3f | ETA %s\n",
                    step, steps, last.loss, last.acc, last.margin, val_text, adamw.lr, grad_norm, eta);
        }
        if (ckpt_now) {
            run_control_phase(&control, "checkpoint");
            dp_gather_optimizer(&world.dp, &policy); // collective (ZeRO-1)
            RunState save;
            run_state_init(&save);
            ref_cache_save(&save, &train_data, has_val ? &val_data : NULL, world.par.world,
                           world.par.tp_size); // collective
            if (root) { // what the next step needs beyond the weights and AdamW state
                run_state_put_i64(&save, "step", step);
                sft_sampler_save(&sampler, &save, "sampler");
                run_state_put_i64(&save, "tokens", (int64_t)tokens);
                run_state_put_f64(&save, "t_train", t_train);
                run_state_put_f64(&save, "t_eval", t_eval);
                run_state_put_f64(&save, "t_ref_logprobs", t_ref_logprobs);
                stats_put(&save, "last", &last);
                run_state_put_i64(&save, "have_val_stats", have_val_stats);
                stats_put(&save, "val", &val);
            }
            // the metrics mark, and whether every rank goes on to write (collective)
            const int ok = train_checkpoint_agree(&world, root ? &save : NULL, step, metrics_path, metrics);
            if (ok && world.par.dp_rank == 0) // the model's ranks gather; rank 0 writes
                train_checkpoint_try(&policy, cfg, run_dir, "dpo", step, last.loss, have_val_stats ? val.loss : NAN,
                                     tokens, NULL, root ? &save : NULL, ckpt_path, sizeof ckpt_path);
            run_state_free(&save);
            dp_scatter_optimizer(&world.dp, &policy);
        }
        if (stopped) {
            steps_done = step;
            break;
        }
    }
    if (root && fclose(metrics) != 0) fatalf("cannot write '%s'", metrics_path);

    // ---- held-out evaluation of the RL stages (collective; not for a run
    // that stopped early: the resumed run does it at its end)
    HeldOut held = {0};
    if (!stopped) held = held_out_evaluate(&policy, &ref, tok, cfg, ops, dp);
    if (!root) goto done;
    if (held.done)
        fprintf(stderr, "dpo: held-out %d prompts: reward %.4f | gold %.4f | kl %.3f nats/seq | len %.1f\n",
                held.ev.n, held.ev.reward, held.ev.gold, held.ev.kl, held.ev.response_len);

    // ---- summary: the last stdout line
    json_t* summary = json_object();
    json_object_set_new(summary, "steps", json_integer(steps_done));
    if (stopped) json_object_set_new(summary, "stopped", json_true());
    json_object_set_new(summary, "pairs", json_integer((json_int_t)train_data.n));
    json_object_set_new(summary, "val_pairs", json_integer(has_val ? (json_int_t)val_data.n : 0));
    json_object_set_new(summary, "skipped",
                        json_integer((json_int_t)(train_data.skipped + (has_val ? val_data.skipped : 0))));
    set_stats(summary, "", &last);
    if (have_val_stats) set_stats(summary, "val_", &val);
    json_object_set_new(summary, "gold", held.done ? json_real(held.ev.gold) : json_null());
    json_object_set_new(summary, "reward", held.done ? json_real(held.ev.reward) : json_null());
    json_object_set_new(summary, "kl", held.done ? json_real(held.ev.kl) : json_null());
    json_object_set_new(summary, "response_len", held.done ? json_real(held.ev.response_len) : json_null());
    json_object_set_new(summary, "eval_prompts", json_integer(held.done ? held.ev.n : 0));
    json_object_set_new(summary, "checkpoint", json_string(ckpt_path));
    json_object_set_new(summary, "run_dir", json_string(run_dir));
    json_object_set_new(summary, "t_ref_logprobs", json_real(t_ref_logprobs));
    json_object_set_new(summary, "t_train", json_real(t_train));
    json_object_set_new(summary, "t_eval", json_real(t_eval));
    json_object_set_new(summary, "t_heldout", json_real(held.seconds));
    json_object_set_new(summary, "seconds", json_real(now_seconds() - t_start));
    write_json_line(stdout, summary);
    json_decref(summary);

done:;
    const int rc = stopped ? run_control_exit_code(&control) : 0;
    run_control_finish(&control);
    sft_sampler_free(&sampler);
    free(lengths.examples);
    dpo_batch_free(&pb);
    dpo_pairs_free(&train_data);
    if (has_val) dpo_pairs_free(&val_data);
    tokenizer_free(tok);
    gpt_free(&policy);
    gpt_free(&ref);
    train_world_free(&world);
    config_free(cfg);
    return rc;
}
