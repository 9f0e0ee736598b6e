// check.h - error checking macros that report file and line, llm.c style.
// Every failure that is the user's fault (bad input) goes through
// fatalf(): one line on stderr, exit code 1. Programming errors abort.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>

// One-line error and exit(1). Used for bad input: files, configs, shapes.
__attribute__((noreturn, format(printf, 1, 2)))
static inline void fatalf(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("rlhfd: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static inline void* malloc_check(size_t size, const char* file, int line) {
    void* p = malloc(size ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "rlhfd: error: out of memory allocating %zu bytes at %s:%d\n", size, file, line);
        exit(1);
    }
    return p;
}
#define mallocCheck(size) malloc_check((size), __FILE__, __LINE__)

static inline void* calloc_check(size_t n, size_t size, const char* file, int line) {
    void* p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "rlhfd: error: out of memory allocating %zu bytes at %s:%d\n", n * size, file, line);
        exit(1);
    }
    return p;
}
#define callocCheck(n, size) calloc_check((n), (size), __FILE__, __LINE__)

static inline void* realloc_check(void* old, size_t size, const char* file, int line) {
    void* p = realloc(old, size ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "rlhfd: error: out of memory allocating %zu bytes at %s:%d\n", size, file, line);
        exit(1);
    }
    return p;
}
#define reallocCheck(p, size) realloc_check((p), (size), __FILE__, __LINE__)

// Internal invariant; a failure is a bug in rlhfd, not bad input.
#define assertCheck(cond) do { if (!(cond)) { \
    fprintf(stderr, "rlhfd: internal error: %s failed at %s:%d\n", #cond, __FILE__, __LINE__); \
    abort(); } } while (0)
