// shard.h - token shards in llm.c's format.
//
// A shard is a 256 x int32 header (magic 20240520, version 1, number of
// tokens, the rest zero) followed by ntok uint16 token ids, little-endian
// as the machine writes them (llm.c's dev/data/data_common.py).
#pragma once
#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256
#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * (int)sizeof(int32_t))

typedef struct {
    uint16_t* tokens; // (ntok)
    size_t ntok;
} TokenShard;

// Reads a whole shard. Validates: the file exists, header magic/version,
// file size == 1024 + 2*ntok (both numbers are named if not), and, if
// vocab > 0, every id < vocab (names the first bad position and id).
// Any problem is a one-line fatalf naming the file.
void shard_read(TokenShard* s, const char* path, int vocab);
void shard_free(TokenShard* s);

// Writes ids as a shard, atomically: PATH.tmp, fsync, rename over PATH.
// Every id must be in [0, 65536) (fatalf naming the position otherwise).
void shard_write(const char* path, const int* ids, size_t n);
