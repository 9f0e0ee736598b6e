// labelers.c - sentiment lexicons (AFINN, VADER) and simulated labelers.
// See labelers.h for the formats and the scoring rule.
#include "labelers.h"
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "../common/check.h"

#define VADER_RATINGS 10

// Open-addressing hash table word -> row of `columns` floats in `values`.
struct Lexicon {
    int columns;
    size_t size;       // words stored
    size_t capacity;   // slots, a power of two
    char** words;      // (capacity) NULL = empty slot
    size_t* rows;      // (capacity) row of each slot's word in values
    float* values;     // (size, columns)
    size_t values_cap; // rows allocated in values
};

static uint64_t hash_word(const char* w, size_t len) { // FNV-1a
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)w[i]) * 1099511628211ULL;
    return h;
}

static Lexicon* lexicon_new(int columns) {
    Lexicon* lex = callocCheck(1, sizeof(Lexicon));
    lex->columns = columns;
    lex->capacity = 1024;
    lex->words = callocCheck(lex->capacity, sizeof(char*));
    lex->rows = callocCheck(lex->capacity, sizeof(size_t));
    lex->values_cap = 256;
    lex->values = mallocCheck(lex->values_cap * (size_t)columns * sizeof(float));
    return lex;
}

// Slot holding word, or the empty slot where it would go.
static size_t find_slot(const Lexicon* lex, const char* word, size_t len) {
    size_t mask = lex->capacity - 1;
    for (size_t i = hash_word(word, len) & mask;; i = (i + 1) & mask) {
        const char* w = lex->words[i];
        if (!w || (strlen(w) == len && !memcmp(w, word, len))) return i;
    }
}

static void grow_table(Lexicon* lex) {
    char** old_words = lex->words;
    size_t* old_rows = lex->rows;
    size_t old_cap = lex->capacity;
    lex->capacity *= 2;
    lex->words = callocCheck(lex->capacity, sizeof(char*));
    lex->rows = callocCheck(lex->capacity, sizeof(size_t));
    for (size_t i = 0; i < old_cap; i++) {
        if (!old_words[i]) continue;
        size_t s = find_slot(lex, old_words[i], strlen(old_words[i]));
        lex->words[s] = old_words[i];
        lex->rows[s] = old_rows[i];
    }
    free(old_words);
    free(old_rows);
}

// Adds a word (lowercased) with its scores; the first entry of a word wins.
static void lexicon_add(Lexicon* lex, const char* word, const float* scores) {
    size_t len = strlen(word);
    char* lower = mallocCheck(len + 1);
    for (size_t i = 0; i <= len; i++) lower[i] = (word[i] >= 'A' && word[i] <= 'Z') ? (char)(word[i] + 32) : word[i];
    size_t s = find_slot(lex, lower, len);
    if (lex->words[s]) { // duplicate
        free(lower);
        return;
    }
    if (lex->size == lex->values_cap) {
        lex->values_cap *= 2;
        lex->values = reallocCheck(lex->values, lex->values_cap * (size_t)lex->columns * sizeof(float));
    }
    memcpy(lex->values + lex->size * (size_t)lex->columns, scores, (size_t)lex->columns * sizeof(float));
    lex->words[s] = lower;
    lex->rows[s] = lex->size++;
    if (lex->size * 2 > lex->capacity) grow_table(lex);
}

void lexicon_free(Lexicon* lex) {
    if (!lex) return;
    for (size_t i = 0; i < lex->capacity; i++) free(lex->words[i]);
    free(lex->words);
    free(lex->rows);
    free(lex->values);
    free(lex);
}

int lexicon_columns(const Lexicon* lex) { return lex->columns; }
size_t lexicon_size(const Lexicon* lex) { return lex->size; }

const float* lexicon_lookup(const Lexicon* lex, const char* word, size_t len) {
    size_t s = find_slot(lex, word, len);
    return lex->words[s] ? lex->values + lex->rows[s] * (size_t)lex->columns : NULL;
}

// ----------------------------------------------------------------------------
// loading

// AFINN labels.json: {"word": integer score, ...}
static Lexicon* load_afinn(const char* path) {
    json_error_t err;
    json_t* root = json_load_file(path, 0, &err);
    if (!root) fatalf("%s:%d: bad JSON: %s", path, err.line, err.text);
    if (!json_is_object(root)) {
        json_decref(root);
        fatalf("%s: expected a JSON object {\"word\": score, ...}", path);
    }
    Lexicon* lex = lexicon_new(1);
    const char* word;
    json_t* v;
    json_object_foreach(root, word, v) {
        if (!json_is_number(v)) fatalf("%s: the score of \"%s\" is not a number", path, word);
        float score = (float)json_number_value(v);
        lexicon_add(lex, word, &score);
    }
    json_decref(root);
    if (lex->size == 0) fatalf("%s: the lexicon has no words", path);
    return lex;
}

// "[a, b, ...]" -> exactly VADER_RATINGS numbers; 0 on success.
static int parse_ratings(char* s, float* out) {
    while (*s == ' ') s++;
    if (*s++ != '[') return -1;
    for (int i = 0; i < VADER_RATINGS; i++) {
        char* end;
        errno = 0;
        double v = strtod(s, &end);
        if (end == s || errno || !isfinite(v)) return -1;
        out[i] = (float)v;
        s = end;
        while (*s == ' ') s++;
        if (*s != (i + 1 < VADER_RATINGS ? ',' : ']')) return -1;
        s++;
    }
    while (*s == ' ' || *s == '\r' || *s == '\n') s++;
    return *s ? -1 : 0;
}

// VADER vader_lexicon.txt: token TAB mean TAB std TAB [10 ratings]
static Lexicon* load_vader(const char* path, FILE* f) {
    Lexicon* lex = lexicon_new(1 + VADER_RATINGS);
    char* line = NULL;
    size_t cap = 0;
    int lineno = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        if (line[0] == '\n' || (line[0] == '\r' && line[1] == '\n')) continue;
        char* fields[4];
        char* p = line;
        int nf = 0;
        while (nf < 4) {
            fields[nf++] = p;
            char* tab = strchr(p, '\t');
            if (!tab) break;
            *tab = '\0';
            p = tab + 1;
        }
        float scores[1 + VADER_RATINGS];
        char* end = NULL;
        double mean = nf == 4 ? strtod(fields[1], &end) : 0.0;
        if (nf != 4 || fields[0][0] == '\0' || end == fields[1] || *end != '\0' || !isfinite(mean) ||
            parse_ratings(fields[3], scores + 1)) {
            free(line);
            lexicon_free(lex);
            fclose(f);
            fatalf("%s:%d: expected 'token<TAB>mean<TAB>std<TAB>[%d ratings]' (a VADER lexicon line)", path, lineno,
                   VADER_RATINGS);
        }
        scores[0] = (float)mean;
        lexicon_add(lex, fields[0], scores);
    }
    free(line);
    if (lex->size == 0) {
        lexicon_free(lex);
        fclose(f);
        fatalf("%s: the lexicon has no words", path);
    }
    return lex;
}

Lexicon* lexicon_load(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) fatalf("%s: cannot open the lexicon: %s", path, strerror(errno));
    int c;
    do c = fgetc(f);
    while (c == ' ' || c == '\t' || c == '\r' || c == '\n');
    if (c == EOF) {
        fclose(f);
        fatalf("%s: the lexicon is empty", path);
    }
    if (c == '{') {
        fclose(f);
        return load_afinn(path);
    }
    rewind(f);
    Lexicon* lex = load_vader(path, f);
    fclose(f);
    return lex;
}

// ----------------------------------------------------------------------------
// words and scores

int text_words(const char* text, void (*fn)(const char* word, size_t len, void* ctx), void* ctx) {
    size_t n = strlen(text);
    char* lower = mallocCheck(n + 1);
    for (size_t i = 0; i <= n; i++) lower[i] = (text[i] >= 'A' && text[i] <= 'Z') ? (char)(text[i] + 32) : text[i];
    int count = 0;
    size_t i = 0;
    while (i < n) {
        char c = lower[i];
        if (!((c >= 'a' && c <= 'z') || c == '\'')) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < n && ((lower[i] >= 'a' && lower[i] <= 'z') || lower[i] == '\'')) i++;
        // quotes around a word ('good') are not part of it
        size_t a = start, b = i;
        while (a < b && lower[a] == '\'') a++;
        while (b > a && lower[b - 1] == '\'') b--;
        if (a == b) continue; // only apostrophes
        count++;
        if (fn) fn(lower + a, b - a, ctx);
    }
    free(lower);
    return count;
}

typedef struct {
    const Lexicon* lex;
    int col;
    double sum;
} ScoreSum;

static void add_word_score(const char* word, size_t len, void* ctx) {
    ScoreSum* s = ctx;
    const float* v = lexicon_lookup(s->lex, word, len);
    if (v) s->sum += v[s->col];
}

float lexicon_comparative(const Lexicon* lex, int col, const char* text) {
    assertCheck(col >= 0 && col < lex->columns);
    ScoreSum s = {lex, col, 0.0};
    int words = text_words(text, add_word_score, &s);
    return words ? (float)(s.sum / words) : 0.0f;
}

// ----------------------------------------------------------------------------
// labelers

void labelers_load(Labelers* L, const char* path) {
    L->lex = lexicon_load(path);
    if (L->lex->columns != 1 + VADER_RATINGS) {
        lexicon_free(L->lex);
        L->lex = NULL;
        fatalf("%s: the labelers need a VADER lexicon (vader_lexicon.txt, %d ratings per word), not AFINN", path,
               VADER_RATINGS);
    }
}

void labelers_free(Labelers* L) {
    lexicon_free(L->lex);
    L->lex = NULL;
}

float labeler_score(const Labelers* L, int j, const char* text) {
    assertCheck(j == LABELER_CONSENSUS || (j >= 0 && j < NUM_LABELERS));
    ScoreSum s = {L->lex, j == LABELER_CONSENSUS ? 0 : 1 + j, 0.0};
    int words = text_words(text, add_word_score, &s);
    return words ? (float)(s.sum / sqrt((double)words)) : 0.0f;
}

void labeler_rank(const Labelers* L, int j, const char* const* texts, int k, Rng* rng, int* ranking) {
    float* score = mallocCheck((size_t)k * sizeof(float));
    float* tiebreak = mallocCheck((size_t)k * sizeof(float));
    for (int i = 0; i < k; i++) {
        score[i] = labeler_score(L, j, texts[i]);
        tiebreak[i] = rng_float(rng);
    }
    // insertion sort, best first: higher score, then higher draw, then lower index
    for (int i = 0; i < k; i++) {
        int x = i, p = i;
        while (p > 0) {
            int y = ranking[p - 1];
            int better = score[x] > score[y] || (score[x] == score[y] && tiebreak[x] > tiebreak[y]);
            if (!better) break;
            ranking[p] = y;
            p--;
        }
        ranking[p] = x;
    }
    free(score);
    free(tiebreak);
}

// ----------------------------------------------------------------------------
// agreement

// position (rank) of each item: pos[item] = place in ranking
static void positions(const int* ranking, int k, int* pos) {
    for (int i = 0; i < k; i++) pos[ranking[i]] = i;
}

int pairs_agreeing(const int* ranking_a, const int* ranking_b, int k) {
    int* pa = mallocCheck((size_t)k * sizeof(int));
    int* pb = mallocCheck((size_t)k * sizeof(int));
    positions(ranking_a, k, pa);
    positions(ranking_b, k, pb);
    int agree = 0;
    for (int x = 0; x < k; x++)
        for (int y = x + 1; y < k; y++)
            if ((pa[x] < pa[y]) == (pb[x] < pb[y])) agree++;
    free(pa);
    free(pb);
    return agree;
}

double kendall_tau(const int* ranking_a, const int* ranking_b, int k) {
    int pairs = k * (k - 1) / 2;
    if (pairs == 0) return 1.0;
    int agree = pairs_agreeing(ranking_a, ranking_b, k);
    return (double)(2 * agree - pairs) / pairs;
}
