// shard.c - read and write llm.c token shards (see shard.h).
#include "shard.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"

void shard_read(TokenShard* s, const char* path, int vocab) {
    s->tokens = NULL;
    s->ntok = 0;
    FILE* f = fopen(path, "rb");
    if (f == NULL) fatalf("shard %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) fatalf("shard %s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatalf("shard %s: not a regular file", path);
    size_t file_bytes = (size_t)st.st_size;
    if (file_bytes < (size_t)SHARD_HEADER_BYTES)
        fatalf("shard %s: file is %zu bytes, smaller than the %d-byte header", path, file_bytes,
               SHARD_HEADER_BYTES);

    int32_t header[SHARD_HEADER_INTS];
    if (fread(header, sizeof(int32_t), SHARD_HEADER_INTS, f) != SHARD_HEADER_INTS)
        fatalf("shard %s: cannot read the header", path);
    if (header[0] != SHARD_MAGIC)
        fatalf("shard %s: bad magic %d (expected %d: not an llm.c token shard)", path, header[0], SHARD_MAGIC);
    if (header[1] != SHARD_VERSION)
        fatalf("shard %s: unsupported version %d (expected %d)", path, header[1], SHARD_VERSION);
    if (header[2] < 0) fatalf("shard %s: header says %d tokens", path, header[2]);
    size_t ntok = (size_t)header[2];
    size_t expected_bytes = (size_t)SHARD_HEADER_BYTES + ntok * sizeof(uint16_t);
    if (file_bytes != expected_bytes)
        fatalf("shard %s: header says %zu tokens (%zu bytes) but the file is %zu bytes", path, ntok,
               expected_bytes, file_bytes);

    uint16_t* tokens = (uint16_t*)mallocCheck(ntok * sizeof(uint16_t));
    if (fread(tokens, sizeof(uint16_t), ntok, f) != ntok) fatalf("shard %s: short read of the tokens", path);
    fclose(f);
    if (vocab > 0) {
        for (size_t i = 0; i < ntok; i++) {
            if (tokens[i] >= vocab)
                fatalf("shard %s: token %zu is id %u, not below the vocab size %d", path, i,
                       (unsigned)tokens[i], vocab);
        }
    }
    s->tokens = tokens;
    s->ntok = ntok;
}

void shard_free(TokenShard* s) {
    free(s->tokens);
    s->tokens = NULL;
    s->ntok = 0;
}

void shard_write(const char* path, const int* ids, size_t n) {
    if (n > (size_t)INT32_MAX) fatalf("shard %s: %zu tokens do not fit the int32 header", path, n);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] > UINT16_MAX)
            fatalf("shard %s: token %zu is id %d, which does not fit uint16", path, i, ids[i]);
    }
    int32_t header[SHARD_HEADER_INTS] = {0};
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = (int32_t)n;

    size_t path_len = strlen(path);
    char* tmp_path = (char*)mallocCheck(path_len + 5);
    memcpy(tmp_path, path, path_len);
    memcpy(tmp_path + path_len, ".tmp", 5);
    FILE* f = fopen(tmp_path, "wb");
    if (f == NULL) fatalf("shard %s: cannot create: %s", tmp_path, strerror(errno));
    int ok = fwrite(header, sizeof(int32_t), SHARD_HEADER_INTS, f) == SHARD_HEADER_INTS;
    // int -> uint16 in chunks, so a big shard needs no second full copy
    enum { CHUNK = 1 << 16 };
    uint16_t* chunk = (uint16_t*)mallocCheck(CHUNK * sizeof(uint16_t));
    for (size_t start = 0; ok && start < n; start += CHUNK) {
        size_t m = n - start < CHUNK ? n - start : CHUNK;
        for (size_t i = 0; i < m; i++) chunk[i] = (uint16_t)ids[start + i];
        ok = fwrite(chunk, sizeof(uint16_t), m, f) == m;
    }
    free(chunk);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int saved_errno = errno;
    if (fclose(f) != 0 && ok) { ok = 0; saved_errno = errno; }
    if (!ok) {
        unlink(tmp_path);
        fatalf("shard %s: write failed: %s", tmp_path, strerror(saved_errno));
    }
    if (rename(tmp_path, path) != 0) {
        saved_errno = errno;
        unlink(tmp_path);
        fatalf("shard %s: cannot rename %s over it: %s", path, tmp_path, strerror(saved_errno));
    }
    free(tmp_path);
}
