// tok_test.c - small driver over common/tokenizer.h and common/shard.h for
// the shell tests in this folder.
//   tok_test classes OUT              class (L N S O) of every code point 0..10FFFF
//   tok_test shard-write PATH ID...   write a shard of the given ids
//   tok_test shard-read PATH VOCAB    read a shard (validating ids < VOCAB), print its size
//   tok_test roundtrip [DIR]          decode(encode(x)) == x on strings built in
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/check.h"
#include "common/shard.h"
#include "common/tokenizer.h"

static int classes(const char* out_path) {
    FILE* f = fopen(out_path, "wb");
    if (f == NULL) fatalf("cannot create %s", out_path);
    for (uint32_t cp = 0; cp < 0x110000; cp++) fputc(tokenizer_char_class(cp), f);
    if (fclose(f) != 0) fatalf("cannot write %s", out_path);
    return 0;
}

static int shard_write_ids(const char* path, int n, char** args) {
    int* ids = (int*)mallocCheck((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) ids[i] = atoi(args[i]);
    shard_write(path, ids, (size_t)n);
    free(ids);
    return 0;
}

static int shard_read_print(const char* path, int vocab) {
    TokenShard s;
    shard_read(&s, path, vocab);
    printf("ntok %zu\n", s.ntok);
    shard_free(&s);
    return 0;
}

// Valid UTF-8 strings round-trip exactly; ids stay in range; appending works.
static int roundtrip(const char* dir) {
    static const char* texts[] = {
        "", "a", "Hello, world!", "  leading and trailing  ", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
        "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9 emoji", "tab\tnew\nline\r\n", "<|endoftext|>",
        "\xef\xbb\xbf" "bom", "x\xc2\xa0y\xe3\x80\x80z",
    };
    Tokenizer* t = tokenizer_load(dir);
    int fails = 0;
    int* ids = NULL;
    size_t n = 0, cap = 0, before = 0;
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        before = n;
        tokenizer_encode(t, texts[k], strlen(texts[k]), &ids, &n, &cap); // appends
        size_t len;
        char* back = tokenizer_decode(t, ids + before, n - before, &len);
        if (len != strlen(texts[k]) || memcmp(back, texts[k], len) != 0) {
            fprintf(stderr, "roundtrip: text %zu came back as \"%s\"\n", k, back);
            fails++;
        }
        free(back);
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tokenizer_vocab_size(t)) { fprintf(stderr, "roundtrip: bad id %d\n", ids[i]); fails++; }
    }
    // invalid UTF-8 becomes U+FFFD, as node reads it
    const char bad[] = "a\xff" "b";
    size_t m = 0, mcap = 0, len;
    int* bad_ids = NULL;
    tokenizer_encode(t, bad, 3, &bad_ids, &m, &mcap);
    char* back = tokenizer_decode(t, bad_ids, m, &len);
    if (strcmp(back, "a\xef\xbf\xbd" "b") != 0) { fprintf(stderr, "roundtrip: a\\xffb came back as \"%s\"\n", back); fails++; }
    free(back);
    free(bad_ids);
    printf("roundtrip: %zu ids, vocab %d, eot %d, %d failures\n", n, tokenizer_vocab_size(t), tokenizer_eot(t), fails);
    if (tokenizer_vocab_size(t) != 50257 || tokenizer_eot(t) != 50256) fails++;
    free(ids);
    tokenizer_free(t);
    return fails ? 1 : 0;
}

int main(int argc, char** argv) {
    if (argc == 3 && !strcmp(argv[1], "classes")) return classes(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "shard-write")) return shard_write_ids(argv[2], argc - 3, argv + 3);
    if (argc == 4 && !strcmp(argv[1], "shard-read")) return shard_read_print(argv[2], atoi(argv[3]));
    if ((argc == 2 || argc == 3) && !strcmp(argv[1], "roundtrip")) return roundtrip(argc == 3 ? argv[2] : NULL);
    fprintf(stderr, "usage: tok_test classes OUT | shard-write PATH ID... | shard-read PATH VOCAB | roundtrip [DIR]\n");
    return 2;
}
