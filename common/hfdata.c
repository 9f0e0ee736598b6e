// hfdata.c - JSON Lines readers for human-feedback data (see hfdata.h).
//
// Every reader is the same loop (read_records): read a line, skip it if
// blank, parse it with jansson, hand the object to a record parser that
// fills one item or says what is wrong; bad records go to an HfBadReport
// that is fatal or counts them (skip_bad).
#include "hfdata.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <utf8proc.h>
#include "check.h"

#define MAX_WARNINGS 10 // bad records shown per file with skip_bad; the rest are counted

// ----------------------------------------------------------------------------
// bad records

void hf_bad_record(HfBadReport* r, int line, const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!r->skip_bad) fatalf("%s:%d: %s", r->path, line, msg);
    if (r->skipped < MAX_WARNINGS) fprintf(stderr, "rlhfd: warning: %s:%d: %s (skipped)\n", r->path, line, msg);
    r->skipped++;
}

void hf_bad_report_finish(const HfBadReport* r) {
    if (r->skipped > MAX_WARNINGS)
        fprintf(stderr, "rlhfd: warning: %s: ... and %zu more bad records skipped (%zu in all)\n", r->path,
                r->skipped - MAX_WARNINGS, r->skipped);
}

// ----------------------------------------------------------------------------
// field access: each returns 0, or -1 with the reason in err

static const char* json_type_name(const json_t* v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

// A non-empty string without NUL characters (C strings cannot hold them).
static int string_value(const json_t* v, const char* what, char** out, char* err, size_t errlen) {
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s must be a string, got %s", what, json_type_name(v));
        return -1;
    }
    size_t len = json_string_length(v);
    const char* s = json_string_value(v);
    if (len == 0) {
        snprintf(err, errlen, "%s is an empty string", what);
        return -1;
    }
    if (memchr(s, '\0', len)) {
        snprintf(err, errlen, "%s contains a NUL character", what);
        return -1;
    }
    *out = mallocCheck(len + 1);
    memcpy(*out, s, len + 1);
    return 0;
}

static int string_field(const json_t* obj, const char* key, char** out, char* err, size_t errlen) {
    const json_t* v = json_object_get(obj, key);
    if (!v) {
        snprintf(err, errlen, "missing field \"%s\"", key);
        return -1;
    }
    char what[64];
    snprintf(what, sizeof what, "field \"%s\"", key);
    return string_value(v, what, out, err, errlen);
}

// ----------------------------------------------------------------------------
// the record parsers: fill *item from obj, or return -1 with err (and leave
// nothing allocated)

typedef int (*RecordParser)(const json_t* obj, void* item, char* err, size_t errlen);

static int parse_prompt(const json_t* obj, void* item, char* err, size_t errlen) {
    return string_field(obj, "prompt", (char**)item, err, errlen);
}

static int parse_demo(const json_t* obj, void* item, char* err, size_t errlen) {
    HfDemo* d = item;
    if (string_field(obj, "prompt", &d->prompt, err, errlen)) return -1;
    if (string_field(obj, "response", &d->response, err, errlen)) {
        free(d->prompt);
        return -1;
    }
    return 0;
}

static int parse_scored(const json_t* obj, void* item, char* err, size_t errlen) {
    HfScored* d = item;
    memset(d, 0, sizeof *d);
    if (string_field(obj, "prompt", &d->prompt, err, errlen)) return -1;
    if (string_field(obj, "response", &d->response, err, errlen)) {
        free(d->prompt);
        return -1;
    }
    const json_t* r = json_object_get(obj, "reward");
    if (r && !(json_is_number(r) && isfinite(json_number_value(r)))) {
        snprintf(err, errlen, "field \"reward\" must be a finite number, got %s", json_type_name(r));
        free(d->prompt);
        free(d->response);
        return -1;
    }
    d->has_reward = r != NULL;
    d->reward = r ? json_number_value(r) : 0.0;
    return 0;
}

static void free_ranking(HfRanking* r) {
    free(r->prompt);
    for (int i = 0; i < r->k; i++) free(r->responses[i]);
    free(r->responses);
    free(r->ranking);
    memset(r, 0, sizeof *r);
}

// "ranking": a permutation of 0..k-1 (k = number of responses).
static int parse_permutation(const json_t* v, int k, int* ranking, char* err, size_t errlen) {
    if (!json_is_array(v)) {
        snprintf(err, errlen, "field \"ranking\" must be an array of response indices, got %s", json_type_name(v));
        return -1;
    }
    if ((int)json_array_size(v) != k) {
        snprintf(err, errlen, "field \"ranking\" has %zu entries, but there are %d responses", json_array_size(v), k);
        return -1;
    }
    int* seen = callocCheck((size_t)k, sizeof(int));
    int rc = 0;
    for (int i = 0; i < k && rc == 0; i++) {
        const json_t* e = json_array_get(v, (size_t)i);
        if (!json_is_integer(e)) {
            snprintf(err, errlen, "ranking[%d] must be an integer, got %s", i, json_type_name(e));
            rc = -1;
        } else if (json_integer_value(e) < 0 || json_integer_value(e) >= k) {
            snprintf(err, errlen, "ranking[%d] = %lld is not a response index (0..%d)", i,
                     (long long)json_integer_value(e), k - 1);
            rc = -1;
        } else if (seen[json_integer_value(e)]++) {
            snprintf(err, errlen, "ranking has index %lld twice: not a permutation of 0..%d",
                     (long long)json_integer_value(e), k - 1);
            rc = -1;
        } else {
            ranking[i] = (int)json_integer_value(e);
        }
    }
    free(seen);
    return rc;
}

static int parse_ranking(const json_t* obj, void* item, char* err, size_t errlen) {
    HfRanking* r = item;
    memset(r, 0, sizeof *r);
    const json_t* responses = json_object_get(obj, "responses");
    if (!responses && json_object_get(obj, "chosen")) { // a preference pair
        r->k = 2;
        r->responses = callocCheck(2, sizeof(char*));
        r->ranking = mallocCheck(2 * sizeof(int));
        r->ranking[0] = 0;
        r->ranking[1] = 1;
        if (string_field(obj, "prompt", &r->prompt, err, errlen) ||
            string_field(obj, "chosen", &r->responses[0], err, errlen) ||
            string_field(obj, "rejected", &r->responses[1], err, errlen)) {
            free_ranking(r);
            return -1;
        }
        return 0;
    }
    if (string_field(obj, "prompt", &r->prompt, err, errlen)) return -1;
    if (!responses) {
        snprintf(err, errlen, "missing field \"responses\" (or \"chosen\" and \"rejected\")");
        free_ranking(r);
        return -1;
    }
    if (!json_is_array(responses)) {
        snprintf(err, errlen, "field \"responses\" must be an array of strings, got %s", json_type_name(responses));
        free_ranking(r);
        return -1;
    }
    int k = (int)json_array_size(responses);
    if (k < 2) {
        snprintf(err, errlen, "field \"responses\" has %d response%s; a ranking needs at least 2", k, k == 1 ? "" : "s");
        free_ranking(r);
        return -1;
    }
    r->responses = callocCheck((size_t)k, sizeof(char*));
    r->ranking = mallocCheck((size_t)k * sizeof(int));
    for (int i = 0; i < k; i++) {
        char what[64];
        snprintf(what, sizeof what, "responses[%d]", i);
        if (string_value(json_array_get(responses, (size_t)i), what, &r->responses[i], err, errlen)) {
            r->k = i; // free what was read
            free_ranking(r);
            return -1;
        }
    }
    r->k = k;
    const json_t* ranking = json_object_get(obj, "ranking");
    if (!ranking) {
        snprintf(err, errlen, "missing field \"ranking\"");
        free_ranking(r);
        return -1;
    }
    if (parse_permutation(ranking, k, r->ranking, err, errlen)) {
        free_ranking(r);
        return -1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// the reading loop

static int is_blank(const char* s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

// Reads every record of path into a malloc'd array of items (item_size bytes
// each; line numbers into *lines). Fatal on an unreadable file or no records.
static void* read_records(const char* path, int skip_bad, size_t item_size, RecordParser parse, size_t* n_out,
                          size_t* skipped_out, int** lines_out) {
    FILE* f = fopen(path, "rb");
    if (!f) fatalf("%s: cannot open: %s", path, strerror(errno));
    HfBadReport bad = {.path = path, .skip_bad = skip_bad};
    size_t n = 0, cap = 16;
    char* items = mallocCheck(cap * item_size);
    int* lines = mallocCheck(cap * sizeof(int));
    char* buf = NULL;
    size_t bufcap = 0;
    int lineno = 0;
    ssize_t len;
    while ((len = getline(&buf, &bufcap, f)) >= 0) {
        lineno++;
        if (is_blank(buf, (size_t)len)) continue;
        json_error_t jerr;
        json_t* obj = json_loadb(buf, (size_t)len, 0, &jerr);
        if (!obj) {
            hf_bad_record(&bad, lineno, "bad JSON: %s (column %d)", jerr.text, jerr.column);
            continue;
        }
        if (!json_is_object(obj)) {
            hf_bad_record(&bad, lineno, "expected a JSON object, got %s", json_type_name(obj));
            json_decref(obj);
            continue;
        }
        if (n == cap) {
            cap *= 2;
            items = reallocCheck(items, cap * item_size);
            lines = reallocCheck(lines, cap * sizeof(int));
        }
        char err[512];
        if (parse(obj, items + n * item_size, err, sizeof err)) {
            json_decref(obj);
            hf_bad_record(&bad, lineno, "%s", err);
            continue;
        }
        json_decref(obj);
        lines[n++] = lineno;
    }
    int read_error = ferror(f);
    free(buf);
    fclose(f);
    if (read_error) fatalf("%s: read error", path);
    hf_bad_report_finish(&bad);
    if (n == 0) {
        if (bad.skipped) fatalf("%s: no records (%zu bad records skipped)", path, bad.skipped);
        fatalf("%s: no records", path);
    }
    *n_out = n;
    if (skipped_out) *skipped_out = bad.skipped;
    *lines_out = lines;
    return items;
}

char** hf_read_prompts_lines(const char* path, int skip_bad, size_t* n, size_t* skipped, int** lines) {
    int* l = NULL;
    char** p = read_records(path, skip_bad, sizeof(char*), parse_prompt, n, skipped, &l);
    if (lines) *lines = l;
    else free(l);
    return p;
}

char** hf_read_prompts(const char* path, int skip_bad, size_t* n, size_t* skipped) {
    return hf_read_prompts_lines(path, skip_bad, n, skipped, NULL);
}

HfDemo* hf_read_demos(const char* path, int skip_bad, size_t* n, size_t* skipped) {
    int* lines = NULL;
    HfDemo* d = read_records(path, skip_bad, sizeof(HfDemo), parse_demo, n, skipped, &lines);
    for (size_t i = 0; i < *n; i++) d[i].line = lines[i];
    free(lines);
    return d;
}

HfRanking* hf_read_rankings(const char* path, int skip_bad, size_t* n, size_t* skipped) {
    int* lines = NULL;
    HfRanking* r = read_records(path, skip_bad, sizeof(HfRanking), parse_ranking, n, skipped, &lines);
    for (size_t i = 0; i < *n; i++) r[i].line = lines[i];
    free(lines);
    return r;
}

HfScored* hf_read_scored(const char* path, int skip_bad, size_t* n, size_t* skipped) {
    int* lines = NULL;
    HfScored* d = read_records(path, skip_bad, sizeof(HfScored), parse_scored, n, skipped, &lines);
    for (size_t i = 0; i < *n; i++) d[i].line = lines[i];
    free(lines);
    return d;
}

void hf_free_scored(HfScored* s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++) {
        free(s[i].prompt);
        free(s[i].response);
    }
    free(s);
}

void hf_free_prompts(char** p, size_t n) {
    if (!p) return;
    for (size_t i = 0; i < n; i++) free(p[i]);
    free(p);
}

void hf_free_demos(HfDemo* d, size_t n) {
    if (!d) return;
    for (size_t i = 0; i < n; i++) {
        free(d[i].prompt);
        free(d[i].response);
    }
    free(d);
}

void hf_free_rankings(HfRanking* r, size_t n) {
    if (!r) return;
    for (size_t i = 0; i < n; i++) free_ranking(&r[i]);
    free(r);
}

// ----------------------------------------------------------------------------

int* hf_encode_pair(Tokenizer* tok, const char* prompt, const char* response, int* len, int* prompt_len) {
    int* ids = NULL;
    size_t n = 0, cap = 0;
    tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n, &cap);
    size_t np = n;
    tokenizer_encode(tok, response, strlen(response), &ids, &n, &cap);
    if (n + 1 > cap) ids = reallocCheck(ids, (cap = n + 1) * sizeof(int));
    ids[n++] = tokenizer_eot(tok);
    *len = (int)n;
    *prompt_len = (int)np;
    return ids;
}

char* hf_valid_utf8(const char* s, size_t len, size_t* out_len) {
    char* out = mallocCheck(len * 3 + 1); // a bad byte (1) grows to U+FFFD (3)
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t*)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
        } else {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        }
    }
    out[o] = '\0';
    if (out_len) *out_len = o;
    return out;
}
