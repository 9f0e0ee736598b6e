// labelers.h - sentiment lexicons and the simulated human labelers.
//
// Lexicon: word -> one or more scores, from either
//   - AFINN (npm sentiment's languages/en/labels.json): {"word": score, ...},
//     one column;
//   - VADER (vader_lexicon.txt): "token<TAB>mean<TAB>std<TAB>[r1, ..., r10]",
//     11 columns: 0 = the mean, 1..10 = the ten raw human ratings (-4..4).
// Words of a text are its lowercased runs of [a-z'] (ASCII letters and
// apostrophes); lexicon entries that are not such a word (emoticons,
// phrases) can never match and are ignored.
//
// Labelers: labeler j (0..9) is the person behind VADER's rating column j.
// Their score of a text is
//     sum over the text's words found in the lexicon of rating_j(word) / sqrt(#words)
// (#words counts every word of the text). Dividing by sqrt(#words), not by
// #words, keeps long texts from winning by length alone while a text with
// more sentiment words still counts for more. The "consensus" labeler uses
// the mean column. Because the ten people rated words differently, their
// rankings are noisy and disagree as real labelers do; texts with no
// lexicon word tie, and ties are broken by a seeded RNG (a guess).
#pragma once
#include <stddef.h>
#include "../common/rng.h"

typedef struct Lexicon Lexicon;

// Loads an AFINN .json or a VADER .txt (detected by content: a leading '{'
// is AFINN). Fatal, naming path:line, on a malformed file.
Lexicon* lexicon_load(const char* path);
void lexicon_free(Lexicon* lex);
int lexicon_columns(const Lexicon* lex);   // 1 (AFINN) or 11 (VADER)
size_t lexicon_size(const Lexicon* lex);   // number of words
// The scores (columns) of a word, or NULL if it is not in the lexicon.
// word need not be NUL-terminated; it is matched as given (lowercase).
const float* lexicon_lookup(const Lexicon* lex, const char* word, size_t len);

// Calls fn(word, len, ctx) for each lowercased [a-z']+ run of text;
// returns the number of words. word is a scratch buffer valid during the call.
int text_words(const char* text, void (*fn)(const char* word, size_t len, void* ctx), void* ctx);

// AFINN-style "comparative" score of text with column col: the sum of the
// scores of its words found in the lexicon / the number of words (0 if none).
float lexicon_comparative(const Lexicon* lex, int col, const char* text);

// ---- simulated labelers on a VADER lexicon

#define NUM_LABELERS 10
#define LABELER_CONSENSUS (-1) // the mean column

typedef struct {
    Lexicon* lex; // VADER, 11 columns
} Labelers;

// Fatal unless path is a VADER lexicon with ten ratings per word.
void labelers_load(Labelers* L, const char* path);
void labelers_free(Labelers* L);
// Labeler j's score (0..9, or LABELER_CONSENSUS) of a text (see above).
float labeler_score(const Labelers* L, int j, const char* text);
// Labeler j ranks k texts: ranking (k) = indices of texts, best first.
// Equal scores are ordered by draws from rng (k draws per call).
void labeler_rank(const Labelers* L, int j, const char* const* texts, int k, Rng* rng, int* ranking);

// ---- agreement between two rankings of the same k items (strict orders)

// Kendall tau in [-1, 1]: (concordant - discordant) / (k(k-1)/2).
double kendall_tau(const int* ranking_a, const int* ranking_b, int k);
// Number of item pairs both rankings order the same way (of k(k-1)/2).
int pairs_agreeing(const int* ranking_a, const int* ranking_b, int k);
