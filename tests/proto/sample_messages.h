// sample_messages.h - one fully populated message of each type, built from
// a seed so tests can compare what arrives with what was sent.
// Strings and arrays live in a SampleStore the caller keeps alive.
#pragma once
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "proto/wire.h"

#define SAMPLE_N 5 // per-sample entries in a Report

typedef struct {
    char host[64], digest[17], build[41], path[128], reason[128], error[128], msg[128];
    char names[9][32];
    Rlhfd__Metric metrics[9];
    Rlhfd__Metric* losses[3];
    Rlhfd__Metric* timings[3];
    Rlhfd__Metric* counts[3];
    float rewards[SAMPLE_N], kl[SAMPLE_N];
    int32_t lengths[SAMPLE_N];
    Rlhfd__GlobalStats stats;
} SampleStore;

static inline void sample_hello(SampleStore* s, int seed, Rlhfd__Hello* h) {
    *h = (Rlhfd__Hello)RLHFD__HELLO__INIT;
    h->protocol_version = WIRE_VERSION;
    h->world_size = 4 + seed % 5;
    h->rank = seed % h->world_size;
    h->tp = 1 + seed % 2;
    snprintf(s->host, sizeof s->host, "node-%d.cluster", seed);
    h->host = s->host;
    h->pid = 100000 + seed;
    snprintf(s->digest, sizeof s->digest, "%016llx", 0x0123456789abcdefull ^ (unsigned long long)seed);
    h->config_digest = s->digest;
    snprintf(s->build, sizeof s->build, "%040d", seed);
    h->build_id = s->build;
}

static inline void sample_command(SampleStore* s, int seed, Rlhfd__Command* c) {
    *c = (Rlhfd__Command)RLHFD__COMMAND__INIT;
    c->kind = (Rlhfd__Command__Kind)(1 + seed % 7);
    c->step = 1000 + seed;
    c->seed = 0xfedcba9876543210ull + (uint64_t)seed;
    c->kl_coef = 0.05 * (seed + 1);
    s->stats = (Rlhfd__GlobalStats)RLHFD__GLOBAL_STATS__INIT;
    s->stats.adv_mean = -0.25 + seed;
    s->stats.adv_std = 1.5 + seed;
    s->stats.reward_mean = 0.125 * seed;
    s->stats.reward_std = 2.0;
    s->stats.token_count = 4096 + seed;
    s->stats.sample_count = 64 + seed;
    c->stats = &s->stats;
    c->data_cursor = 123456789ull * (uint64_t)(seed + 1);
    snprintf(s->path, sizeof s->path, "runs/x/ckpt-%08d", seed);
    c->checkpoint_path = s->path;
    snprintf(s->reason, sizeof s->reason, "reason %d: ünïcode ok", seed);
    c->reason = s->reason;
}

static inline void sample_report(SampleStore* s, int rank, int seed, Rlhfd__Report* r) {
    *r = (Rlhfd__Report)RLHFD__REPORT__INIT;
    r->rank = rank;
    r->step = seed;
    r->phase = (Rlhfd__Command__Kind)(1 + seed % 7);
    for (int i = 0; i < 9; i++) {
        s->metrics[i] = (Rlhfd__Metric)RLHFD__METRIC__INIT;
        snprintf(s->names[i], sizeof s->names[i], "m%d_%d", i, seed);
        s->metrics[i].name = s->names[i];
        s->metrics[i].value = rank * 1000.0 + seed * 10.0 + i + 0.5;
    }
    for (int i = 0; i < 3; i++) {
        s->losses[i] = &s->metrics[i];
        s->timings[i] = &s->metrics[3 + i];
        s->counts[i] = &s->metrics[6 + i];
    }
    r->n_losses = 3; r->losses = s->losses;
    r->n_timings = 3; r->timings = s->timings;
    r->n_counts = 3; r->counts = s->counts;
    for (int i = 0; i < SAMPLE_N; i++) {
        s->rewards[i] = (float)(rank * 100 + seed + i) * 0.25f;
        s->kl[i] = (float)i * 0.01f + (float)rank;
        s->lengths[i] = 10 * rank + i + seed;
    }
    r->n_rewards = SAMPLE_N; r->rewards = s->rewards;
    r->n_kl = SAMPLE_N; r->kl = s->kl;
    r->n_response_lengths = SAMPLE_N; r->response_lengths = s->lengths;
    r->error = (char*)"";
}

static inline void sample_error(SampleStore* s, int seed, Rlhfd__Error* e) {
    *e = (Rlhfd__Error)RLHFD__ERROR__INIT;
    e->rank = seed % 8;
    snprintf(s->host, sizeof s->host, "gpu-node-%d", seed);
    e->host = s->host;
    e->step = 77 + seed;
    e->phase = (Rlhfd__Command__Kind)(seed % 8);
    snprintf(s->msg, sizeof s->msg, "out of memory in phase %d", seed);
    e->message = s->msg;
}

// Field-by-field comparisons: 1 when equal.
static inline int metrics_equal(Rlhfd__Metric** a, size_t na, Rlhfd__Metric** b, size_t nb) {
    if (na != nb) return 0;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i]->name, b[i]->name) || a[i]->value != b[i]->value) return 0;
    return 1;
}

static inline int hello_equal(const Rlhfd__Hello* a, const Rlhfd__Hello* b) {
    return a->protocol_version == b->protocol_version && a->rank == b->rank && a->world_size == b->world_size &&
           a->tp == b->tp && !strcmp(a->host, b->host) && a->pid == b->pid &&
           !strcmp(a->config_digest, b->config_digest) && !strcmp(a->build_id, b->build_id);
}

static inline int stats_equal(const Rlhfd__GlobalStats* a, const Rlhfd__GlobalStats* b) {
    if (!a || !b) return a == b;
    return a->adv_mean == b->adv_mean && a->adv_std == b->adv_std && a->reward_mean == b->reward_mean &&
           a->reward_std == b->reward_std && a->token_count == b->token_count && a->sample_count == b->sample_count;
}

static inline int command_equal(const Rlhfd__Command* a, const Rlhfd__Command* b) {
    return a->kind == b->kind && a->step == b->step && a->seed == b->seed && a->kl_coef == b->kl_coef &&
           stats_equal(a->stats, b->stats) && a->data_cursor == b->data_cursor &&
           !strcmp(a->checkpoint_path, b->checkpoint_path) && !strcmp(a->reason, b->reason);
}

static inline int report_equal(const Rlhfd__Report* a, const Rlhfd__Report* b) {
    if (a->rank != b->rank || a->step != b->step || a->phase != b->phase || strcmp(a->error, b->error)) return 0;
    if (!metrics_equal(a->losses, a->n_losses, b->losses, b->n_losses) ||
        !metrics_equal(a->timings, a->n_timings, b->timings, b->n_timings) ||
        !metrics_equal(a->counts, a->n_counts, b->counts, b->n_counts)) return 0;
    if (a->n_rewards != b->n_rewards || a->n_kl != b->n_kl || a->n_response_lengths != b->n_response_lengths) return 0;
    for (size_t i = 0; i < a->n_rewards; i++) if (a->rewards[i] != b->rewards[i]) return 0;
    for (size_t i = 0; i < a->n_kl; i++) if (a->kl[i] != b->kl[i]) return 0;
    for (size_t i = 0; i < a->n_response_lengths; i++) if (a->response_lengths[i] != b->response_lengths[i]) return 0;
    return 1;
}

static inline int error_equal(const Rlhfd__Error* a, const Rlhfd__Error* b) {
    return a->rank == b->rank && !strcmp(a->host, b->host) && a->step == b->step && a->phase == b->phase &&
           !strcmp(a->message, b->message);
}
