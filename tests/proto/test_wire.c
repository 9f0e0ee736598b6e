// test_wire.c - proto/wire.c and the pure parts of proto/control.c:
//   every message type through pack + frame + unframe + unpack, compared
//   field by field (full and empty messages); each refusal status on a
//   hand-made bad frame; range checks; the handshake verdict on forged
//   Hellos; the config digest.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/config.h"
#include "proto/control.h"
#include "proto/wire.h"
#include "sample_messages.h"

static int failures = 0;
#define EXPECT(cond) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

static void test_roundtrip(void) {
    for (int seed = 0; seed < 16; seed++) {
        SampleStore s;
        char err[WIRE_ERR_MAX];
        size_t n;
        uint8_t* f;

        Rlhfd__Hello h;
        sample_hello(&s, seed, &h);
        f = wire_pack_hello(&h, &n);
        EXPECT(n > WIRE_HEADER_SIZE && !memcmp(f, "RLHF", 4) && f[6] == WIRE_HELLO);
        Rlhfd__Hello* h2 = NULL;
        EXPECT(wire_unpack_hello(f, n, &h2, err, sizeof err) == WIRE_OK);
        EXPECT(h2 && hello_equal(&h, h2));
        if (h2) rlhfd__hello__free_unpacked(h2, NULL);
        free(f);

        Rlhfd__Command c;
        sample_command(&s, seed, &c);
        f = wire_pack_command(&c, &n);
        Rlhfd__Command* c2 = NULL;
        EXPECT(wire_unpack_command(f, n, &c2, err, sizeof err) == WIRE_OK);
        EXPECT(c2 && command_equal(&c, c2));
        if (c2) rlhfd__command__free_unpacked(c2, NULL);
        free(f);

        Rlhfd__Report r;
        sample_report(&s, seed % 4, seed, &r);
        f = wire_pack_report(&r, &n);
        Rlhfd__Report* r2 = NULL;
        EXPECT(wire_unpack_report(f, n, &r2, err, sizeof err) == WIRE_OK);
        EXPECT(r2 && report_equal(&r, r2));
        if (r2) rlhfd__report__free_unpacked(r2, NULL);
        // also through the generic entry point, type told back
        WireType t = 0;
        ProtobufCMessage* m = NULL;
        EXPECT(wire_unpack(f, n, 0, &t, &m, err, sizeof err) == WIRE_OK && t == WIRE_REPORT);
        EXPECT(m && report_equal(&r, (Rlhfd__Report*)m));
        if (m) protobuf_c_message_free_unpacked(m, NULL);
        free(f);

        Rlhfd__Error e;
        sample_error(&s, seed, &e);
        f = wire_pack_error(&e, &n);
        Rlhfd__Error* e2 = NULL;
        EXPECT(wire_unpack_error(f, n, &e2, err, sizeof err) == WIRE_OK);
        EXPECT(e2 && error_equal(&e, e2));
        if (e2) rlhfd__error__free_unpacked(e2, NULL);
        free(f);
    }
    // Mostly-empty messages (proto3 zeros are absent on the wire) survive too.
    char err[WIRE_ERR_MAX];
    size_t n;
    Rlhfd__Command c = RLHFD__COMMAND__INIT;
    c.kind = RLHFD__COMMAND__KIND__STOP;
    uint8_t* f = wire_pack_command(&c, &n);
    Rlhfd__Command* c2 = NULL;
    EXPECT(wire_unpack_command(f, n, &c2, err, sizeof err) == WIRE_OK);
    EXPECT(c2 && c2->kind == RLHFD__COMMAND__KIND__STOP && c2->stats == NULL && c2->step == 0 &&
           c2->reason && c2->reason[0] == '\0');
    if (c2) rlhfd__command__free_unpacked(c2, NULL);
    free(f);
    Rlhfd__Report r = RLHFD__REPORT__INIT;
    r.phase = RLHFD__COMMAND__KIND__TRAIN;
    f = wire_pack_report(&r, &n);
    Rlhfd__Report* r2 = NULL;
    EXPECT(wire_unpack_report(f, n, &r2, err, sizeof err) == WIRE_OK);
    EXPECT(r2 && report_equal(&r, r2) && r2->n_rewards == 0);
    if (r2) rlhfd__report__free_unpacked(r2, NULL);
    free(f);
}

// Expects status s and an error message containing `needle`.
static void expect_refused(const uint8_t* f, size_t n, int expect, WireStatus s, const char* needle) {
    char err[WIRE_ERR_MAX] = "";
    ProtobufCMessage* m = (ProtobufCMessage*)1;
    WireStatus got = wire_unpack(f, n, expect, NULL, &m, err, sizeof err);
    if (got != s || m != NULL || !strstr(err, needle)) {
        fprintf(stderr, "FAIL: wanted %s containing '%s', got %s: '%s'\n", wire_status_name(s), needle,
                wire_status_name(got), err);
        failures++;
    }
}

static void test_refusals(void) {
    SampleStore s;
    Rlhfd__Command c;
    sample_command(&s, 3, &c);
    size_t n;
    uint8_t* good = wire_pack_command(&c, &n);
    uint8_t* f = malloc(n + 8);

    expect_refused(NULL, 0, 0, WIRE_ETRUNCATED, "truncated");
    expect_refused(good, 7, 0, WIRE_ETRUNCATED, "a header alone is 16");
    expect_refused(good, n - 1, 0, WIRE_ETRUNCATED, "truncated Command frame");
    memcpy(f, good, n); f[n] = 0;
    expect_refused(f, n + 1, 0, WIRE_ELENGTH, "1 stray bytes");
    memcpy(f, good, n); f[0] = 'X';
    expect_refused(f, n, 0, WIRE_EMAGIC, "bad magic");
    memcpy(f, good, n); f[4] = 2; f[5] = 0;
    expect_refused(f, n, 0, WIRE_EVERSION, "protocol version 2, this binary speaks version 1");
    memcpy(f, good, n); f[6] = 9;
    expect_refused(f, n, 0, WIRE_ETYPE, "unknown message type 9");
    memcpy(f, good, n); f[8] = 0xff; f[9] = 0xff; f[10] = 0xff; f[11] = 0x7f;
    expect_refused(f, n, 0, WIRE_ELENGTH, "exceeds");
    memcpy(f, good, n); f[n - 1] ^= 0x10;
    expect_refused(f, n, 0, WIRE_ECRC, "crc mismatch");
    expect_refused(good, n, WIRE_REPORT, WIRE_ETYPE, "got a Command message where a Report was expected");

    // Valid frame (right crc) around a payload protobuf-c refuses: a field
    // header announcing a 100-byte string with 2 bytes behind it.
    const uint8_t junk[] = {0x42, 100, 'a', 'b'};
    size_t jn;
    uint8_t* j = wire_frame_bytes(WIRE_COMMAND, WIRE_VERSION, junk, sizeof junk, &jn);
    expect_refused(j, jn, 0, WIRE_EDECODE, "not a valid protobuf Command");
    free(j);

    // Unpacked fine, fields out of range.
    Rlhfd__Command bad = c;
    bad.kind = (Rlhfd__Command__Kind)42;
    uint8_t* b = wire_pack_command(&bad, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "unknown kind 42");
    free(b);
    bad = c;
    bad.kind = RLHFD__COMMAND__KIND__KIND_UNSPECIFIED;
    b = wire_pack_command(&bad, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "unknown kind 0");
    free(b);
    Rlhfd__Hello h;
    sample_hello(&s, 1, &h);
    h.config_digest = (char*)"not-hex!";
    b = wire_pack_hello(&h, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "16 hex digits");
    free(b);
    sample_hello(&s, 1, &h);
    h.rank = h.world_size;
    b = wire_pack_hello(&h, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "Hello with rank");
    free(b);
    sample_hello(&s, 1, &h);
    h.protocol_version = 7;
    b = wire_pack_hello(&h, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "claims protocol version 7");
    free(b);
    Rlhfd__Report r;
    sample_report(&s, 1, 2, &r);
    r.n_kl = 2;
    b = wire_pack_report(&r, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "differ in length");
    free(b);
    sample_report(&s, 1, 2, &r);
    r.losses[1]->name = (char*)"";
    b = wire_pack_report(&r, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "losses[1] has no name");
    free(b);
    sample_report(&s, 1, 2, &r);
    s.lengths[3] = -1;
    b = wire_pack_report(&r, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "response length 3 is negative");
    free(b);
    Rlhfd__Error e;
    sample_error(&s, 1, &e);
    e.message = (char*)"";
    b = wire_pack_error(&e, &jn);
    expect_refused(b, jn, 0, WIRE_EINVALID, "empty or oversized message");
    free(b);

    free(f);
    free(good);
}

// The handshake verdict (rank 0's side) on forged Hellos from 4 ranks.
static void check_hellos_case(const char* what, int liar, void (*lie)(Rlhfd__Hello*), int expect_ok, const char* needle) {
    const char* digest = "00112233aabbccdd";
    Parallel p;
    memset(&p, 0, sizeof p);
    p.size = 4;
    p.tp_size = 2;
    uint8_t* frames[4];
    size_t lens[4];
    for (int r = 0; r < 4; r++) {
        p.rank = r;
        snprintf(p.host, sizeof p.host, "host%d", r);
        Rlhfd__Hello h;
        control_hello_make(&p, digest, &h);
        if (r == liar && lie) lie(&h);
        frames[r] = wire_pack_hello(&h, &lens[r]);
    }
    if (liar >= 0 && !lie) { // garbage instead of a Hello
        frames[liar][20] ^= 0xff;
    }
    char reason[2048];
    int rc = control_check_hellos(frames, lens, 4, 2, digest, reason, sizeof reason);
    if ((rc == 0) != expect_ok || (needle && !strstr(reason, needle))) {
        fprintf(stderr, "FAIL check_hellos %s: rc %d, reason '%s' (wanted '%s')\n", what, rc, reason, needle ? needle : "");
        failures++;
    }
    for (int r = 0; r < 4; r++) free(frames[r]);
}
static void lie_digest(Rlhfd__Hello* h) { h->config_digest = (char*)"ffffffffffffffff"; }
static void lie_tp(Rlhfd__Hello* h) { h->tp = 1; }
static void lie_world(Rlhfd__Hello* h) { h->world_size = 8; }
static void lie_rank(Rlhfd__Hello* h) { h->rank = 3; }

static void test_check_hellos(void) {
    check_hellos_case("agree", -1, NULL, 1, NULL);
    check_hellos_case("digest", 1, lie_digest, 0,
                      "rank 1 (host host1, pid ");
    check_hellos_case("digest text", 1, lie_digest, 0,
                      "config digest ffffffffffffffff differs from rank 0's 00112233aabbccdd");
    check_hellos_case("tp", 2, lie_tp, 0, "rank 2 (host host2, pid");
    check_hellos_case("tp text", 2, lie_tp, 0, "parallel.tp = 1, rank 0 has 2");
    check_hellos_case("world", 3, lie_world, 0, "world size 8, rank 0 has 4");
    check_hellos_case("rank", 1, lie_rank, 0, "rank 1 (host host1");
    check_hellos_case("rank text", 1, lie_rank, 0, "claims to be rank 3");
    check_hellos_case("garbage", 2, NULL, 0, "rank 2: malformed Hello refused (crc mismatch");
}

static void test_digest(void) {
    char a[17], b[17], c[17];
    Config* x = config_new();
    Config* y = config_new();
    control_config_digest(x, a);
    control_config_digest(y, b);
    EXPECT(strlen(a) == 16 && !strcmp(a, b));
    for (int i = 0; i < 16; i++) EXPECT((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'f'));
    config_set(x, "train.lr=0.0003", "--set");
    config_set(y, "train.lr=3e-4", "--set"); // same value, other spelling
    control_config_digest(x, a);
    control_config_digest(y, b);
    EXPECT(!strcmp(a, b));
    config_set(y, "train.lr=0.0004", "--set");
    control_config_digest(y, c);
    EXPECT(strcmp(a, c) != 0);
    config_set(y, "train.lr=0.0003", "--set");
    config_set(y, "run.dir=elsewhere", "--set");
    control_config_digest(y, c);
    EXPECT(strcmp(a, c) != 0);
    const char* const* ex = control_digest_excluded();
    EXPECT(ex != NULL);
    config_free(x);
    config_free(y);
    const char* id = control_build_id();
    EXPECT(id && id[0]);
    printf("build id: %s\n", id);
}

int main(void) {
    test_roundtrip();
    test_refusals();
    test_check_hellos();
    test_digest();
    if (failures) {
        fprintf(stderr, "test_wire: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_wire: ok\n");
    return 0;
}
