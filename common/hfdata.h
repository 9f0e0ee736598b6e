// hfdata.h - human-feedback data: JSON Lines readers for prompts,
// demonstrations and rankings (InstructGPT's formats), and the token
// convention every RLHF stage shares.
//
// One JSON object per line; blank lines are ignored; other fields of a record
// are ignored. Formats:
//   prompts         {"prompt": "..."}
//   demonstrations  {"prompt": "...", "response": "..."}
//   rankings        {"prompt": "...", "responses": ["...", ...], "ranking": [2, 0, 1, ...]}
//                   ranking = a permutation of 0..k-1, best first, k >= 2;
//                   or a preference pair {"prompt", "chosen", "rejected"}
//                   (k = 2, responses = {chosen, rejected}, ranking = {0, 1}).
// Strings must be non-empty. A bad record is reported as one line
// "PATH:LINE: what is wrong" (bad JSON, missing or ill-typed field, empty
// string, bad ranking). Without skip_bad the first bad record is fatal
// (exit 1); with skip_bad it is a warning on stderr (the first 10 are shown,
// then a count) and is counted in *skipped. A file with no good record is
// fatal: "PATH: no records".
//
// Token convention: a (prompt, response) pair is
//   encode(prompt) ++ encode(response) ++ [eot]
// (tokenized separately; the response text usually starts with a space).
#pragma once
#include <stddef.h>
#include "tokenizer.h"

typedef struct {
    char* prompt;
    char* response;
    int line; // 1-based line in the file
} HfDemo;

// A scored sample {"prompt", "response", "reward"} (offline RL: ILQL); the
// reward is optional (has_reward 0: the caller scores it).
typedef struct {
    char* prompt;
    char* response;
    double reward;
    int has_reward;
    int line;
} HfScored;

typedef struct {
    char* prompt;
    int k;            // number of responses, >= 2
    char** responses; // (k)
    int* ranking;     // (k) permutation of 0..k-1, best first
    int line;
} HfRanking;

char** hf_read_prompts(const char* path, int skip_bad, size_t* n, size_t* skipped);
// Same, also returning the line of each prompt (*lines malloc'd, (n)).
char** hf_read_prompts_lines(const char* path, int skip_bad, size_t* n, size_t* skipped, int** lines);
HfDemo* hf_read_demos(const char* path, int skip_bad, size_t* n, size_t* skipped);
HfRanking* hf_read_rankings(const char* path, int skip_bad, size_t* n, size_t* skipped);
// "reward", when present, must be a finite number.
HfScored* hf_read_scored(const char* path, int skip_bad, size_t* n, size_t* skipped);
void hf_free_prompts(char** p, size_t n);
void hf_free_demos(HfDemo* d, size_t n);
void hf_free_rankings(HfRanking* r, size_t n);
void hf_free_scored(HfScored* s, size_t n);

// The pair's tokens by the convention above: malloc'd (*len) ids,
// *prompt_len of which are the prompt's (the rest: response, then eot).
int* hf_encode_pair(Tokenizer* tok, const char* prompt, const char* response, int* len, int* prompt_len);

// Reporter for bad records found after reading (e.g. too long for a model's
// context): without skip_bad prints "PATH:LINE: message" and exits 1; with it
// warns like the readers (first 10 shown per reporter) and counts in *skipped.
typedef struct {
    const char* path;
    int skip_bad;
    size_t skipped;
} HfBadReport;
__attribute__((format(printf, 3, 4)))
void hf_bad_record(HfBadReport* r, int line, const char* fmt, ...);
// Prints "... and N more bad records skipped" if more than 10 were reported.
void hf_bad_report_finish(const HfBadReport* r);

// Raw bytes -> valid UTF-8, each invalid sequence becoming U+FFFD (a decoded
// GPT-2 token may end inside a character; JSON strings must be valid).
// malloc'd, NUL-terminated; *out_len (may be NULL) its length.
char* hf_valid_utf8(const char* s, size_t len, size_t* out_len);
