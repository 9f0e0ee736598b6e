// test_fuzz.c - the decoder against hostile bytes (run under ASan + UBSan
// by tests/run-all.sh). Every input must come back as WIRE_OK with a valid
// message, or as a refusal with a message and no output; never a crash, a
// leak or an out-of-bounds read.
//   1. 100k random byte strings, half of them behind a plausible header
//      (right magic and version, random type, right length and crc) so the
//      bytes reach protobuf-c and the range checks;
//   2. every truncation of a valid frame of each type -> refused;
//   3. every single-bit flip of those frames -> refused when the type is
//      expected (crc32 catches every one-bit error in a payload);
//   4. random byte edits of valid payloads, re-framed with a right crc.
// usage: test_fuzz [iterations] [seed]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "proto/wire.h"
#include "sample_messages.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { // xorshift64*
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static long counts[WIRE_EINVALID + 1];
static int failures = 0;

// Decodes buf; checks the contract; returns the status.
static WireStatus probe(const uint8_t* buf, size_t n, int expect) {
    char err[WIRE_ERR_MAX];
    err[0] = '\0';
    WireType t = 0;
    ProtobufCMessage* m = (ProtobufCMessage*)1;
    WireStatus s = wire_unpack(buf, n, expect, &t, &m, err, sizeof err);
    if (s < WIRE_OK || s > WIRE_EINVALID) {
        fprintf(stderr, "FAIL: status %d out of range\n", (int)s);
        failures++;
        return s;
    }
    counts[s]++;
    if (s == WIRE_OK) {
        char e2[WIRE_ERR_MAX];
        if (m == NULL || wire_validate(t, m, e2, sizeof e2) != WIRE_OK) {
            fprintf(stderr, "FAIL: OK without a valid message\n");
            failures++;
        } else {
            // what decodes must re-encode and decode again
            size_t n2;
            uint8_t* f2 = wire_pack(t, m, &n2);
            ProtobufCMessage* m2 = NULL;
            if (wire_unpack(f2, n2, t, NULL, &m2, e2, sizeof e2) != WIRE_OK) {
                fprintf(stderr, "FAIL: re-encoded message refused: %s\n", e2);
                failures++;
            }
            if (m2) protobuf_c_message_free_unpacked(m2, NULL);
            free(f2);
        }
        if (m) protobuf_c_message_free_unpacked(m, NULL);
    } else if (m != NULL || err[0] == '\0') {
        fprintf(stderr, "FAIL: refusal (%s) without a message or with output\n", wire_status_name(s));
        failures++;
    }
    return s;
}

// One valid frame of each type.
static uint8_t* valid_frame(int type, int seed, size_t* n) {
    SampleStore s;
    switch (type) {
    case WIRE_HELLO: { Rlhfd__Hello h; sample_hello(&s, seed, &h); return wire_pack_hello(&h, n); }
    case WIRE_COMMAND: { Rlhfd__Command c; sample_command(&s, seed, &c); return wire_pack_command(&c, n); }
    case WIRE_REPORT: { Rlhfd__Report r; sample_report(&s, seed % 4, seed, &r); return wire_pack_report(&r, n); }
    default: { Rlhfd__Error e; sample_error(&s, seed, &e); return wire_pack_error(&e, n); }
    }
}

int main(int argc, char** argv) {
    long iters = argc > 1 ? atol(argv[1]) : 100000;
    if (argc > 2) rng_state ^= strtoull(argv[2], NULL, 0);
    uint8_t buf[512];

    // 1. random bytes
    for (long it = 0; it < iters; it++) {
        size_t n = (size_t)(rnd() % sizeof buf);
        for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)rnd();
        if (it % 2 == 0) {
            probe(buf, n, 0);
        } else {
            // plausible header: payload reaches protobuf-c (random type 0..5)
            size_t f;
            uint8_t* fr = wire_frame_bytes((int)(rnd() % 6), WIRE_VERSION, buf, n, &f);
            probe(fr, f, 0);
            free(fr);
        }
    }
    long random_ok = counts[WIRE_OK];

    // 2 + 3. truncations and bit flips of valid frames
    long trunc = 0, flips = 0;
    for (int type = WIRE_HELLO; type <= WIRE_ERROR; type++) {
        for (int seed = 0; seed < 3; seed++) {
            size_t n;
            uint8_t* f = valid_frame(type, seed, &n);
            if (probe(f, n, type) != WIRE_OK) {
                fprintf(stderr, "FAIL: valid %s frame refused\n", wire_type_name(type));
                failures++;
            }
            for (size_t k = 0; k < n; k++) {
                // a fresh allocation of exactly k bytes: ASan sees any read past it
                uint8_t* t = malloc(k ? k : 1);
                memcpy(t, f, k);
                if (probe(t, k, 0) != WIRE_ETRUNCATED) {
                    fprintf(stderr, "FAIL: %s truncated to %zu of %zu bytes not refused as truncated\n",
                            wire_type_name(type), k, n);
                    failures++;
                }
                free(t);
                trunc++;
            }
            uint8_t* g = malloc(n);
            for (size_t bit = 0; bit < 8 * n; bit++) {
                memcpy(g, f, n);
                g[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                if (probe(g, n, type) == WIRE_OK) {
                    fprintf(stderr, "FAIL: %s with bit %zu flipped accepted\n", wire_type_name(type), bit);
                    failures++;
                }
                probe(g, n, 0); // any type: decoded or refused, no crash
                flips++;
            }
            free(g);

            // 4. edited payloads with a right crc
            const uint8_t* payload = f + WIRE_HEADER_SIZE;
            size_t pn = n - WIRE_HEADER_SIZE;
            uint8_t* e = malloc(pn + 16);
            for (int it = 0; it < 2000; it++) {
                size_t en = pn;
                memcpy(e, payload, pn);
                int edits = 1 + (int)(rnd() % 4);
                for (int k = 0; k < edits; k++) {
                    switch (rnd() % 3) {
                    case 0: e[rnd() % en] = (uint8_t)rnd(); break;          // overwrite
                    case 1: if (en > 1) en -= 1 + rnd() % (en < 8 ? en - 1 : 8); break; // cut the tail
                    default: if (en + 1 <= pn + 16) e[en++] = (uint8_t)rnd(); // append
                    }
                }
                size_t fn;
                uint8_t* fr = wire_frame_bytes(type, WIRE_VERSION, e, en, &fn);
                probe(fr, fn, type);
                free(fr);
            }
            free(e);
            free(f);
        }
    }

    printf("test_fuzz: %ld random inputs (%ld decoded), %ld truncations, %ld bit flips\n", iters, random_ok, trunc,
           flips);
    for (int s = 0; s <= WIRE_EINVALID; s++) printf("  %-28s %ld\n", wire_status_name((WireStatus)s), counts[s]);
    if (failures) {
        fprintf(stderr, "test_fuzz: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_fuzz: ok\n");
    return 0;
}
