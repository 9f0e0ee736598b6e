// wire.c - framing and checked decoding of control-plane messages.
// Header fields are written byte by byte, little-endian, so the layout does
// not depend on the host or on struct padding.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>
#include "common/check.h"
#include "proto/wire.h"

static void set_err(char* err, size_t errlen, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char* err, size_t errlen, const char* fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char* wire_type_name(int type) {
    switch (type) {
    case WIRE_HELLO: return "Hello";
    case WIRE_COMMAND: return "Command";
    case WIRE_REPORT: return "Report";
    case WIRE_ERROR: return "Error";
    default: return "unknown";
    }
}

const char* wire_kind_name(int kind) {
    switch (kind) {
    case RLHFD__COMMAND__KIND__KIND_UNSPECIFIED: return "unspecified";
    case RLHFD__COMMAND__KIND__GENERATE: return "generate";
    case RLHFD__COMMAND__KIND__SCORE: return "score";
    case RLHFD__COMMAND__KIND__TRAIN: return "train";
    case RLHFD__COMMAND__KIND__CHECKPOINT: return "checkpoint";
    case RLHFD__COMMAND__KIND__PAUSE: return "pause";
    case RLHFD__COMMAND__KIND__STOP: return "stop";
    case RLHFD__COMMAND__KIND__GO: return "go";
    default: return "unknown";
    }
}

const char* wire_status_name(WireStatus s) {
    switch (s) {
    case WIRE_OK: return "ok";
    case WIRE_ETRUNCATED: return "truncated";
    case WIRE_EMAGIC: return "bad magic";
    case WIRE_EVERSION: return "protocol version mismatch";
    case WIRE_ETYPE: return "bad message type";
    case WIRE_ELENGTH: return "bad length";
    case WIRE_ECRC: return "crc mismatch";
    case WIRE_EDECODE: return "undecodable payload";
    case WIRE_EINVALID: return "invalid field";
    }
    return "unknown status";
}

static void put_u16(uint8_t* p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t* p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const uint8_t* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

uint8_t* wire_frame_bytes(int type, uint16_t version, const uint8_t* payload, size_t n, size_t* len) {
    if (n > WIRE_MAX_PAYLOAD)
        fatalf("control message %s of %zu bytes exceeds the %u-byte limit", wire_type_name(type), n, WIRE_MAX_PAYLOAD);
    uint8_t* f = mallocCheck(WIRE_HEADER_SIZE + n);
    memcpy(f, WIRE_MAGIC, 4);
    put_u16(f + 4, version);
    put_u16(f + 6, (uint16_t)type);
    put_u32(f + 8, (uint32_t)n);
    put_u32(f + 12, (uint32_t)crc32(0L, n ? payload : Z_NULL, (uInt)n));
    if (n) memcpy(f + WIRE_HEADER_SIZE, payload, n);
    *len = WIRE_HEADER_SIZE + n;
    return f;
}

uint8_t* wire_pack(WireType type, const ProtobufCMessage* msg, size_t* len) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > WIRE_MAX_PAYLOAD)
        fatalf("control message %s of %zu bytes exceeds the %u-byte limit", wire_type_name(type), n, WIRE_MAX_PAYLOAD);
    // Pack straight behind the header: one allocation, no copy.
    uint8_t* f = mallocCheck(WIRE_HEADER_SIZE + n);
    size_t packed = protobuf_c_message_pack(msg, f + WIRE_HEADER_SIZE);
    assertCheck(packed == n);
    memcpy(f, WIRE_MAGIC, 4);
    put_u16(f + 4, WIRE_VERSION);
    put_u16(f + 6, (uint16_t)type);
    put_u32(f + 8, (uint32_t)n);
    put_u32(f + 12, (uint32_t)crc32(0L, f + WIRE_HEADER_SIZE, (uInt)n));
    *len = WIRE_HEADER_SIZE + n;
    return f;
}

WireStatus wire_unframe(const uint8_t* buf, size_t len, WireType* type,
                        const uint8_t** payload, size_t* n, char* err, size_t errlen) {
    if (buf == NULL || len < WIRE_HEADER_SIZE) {
        set_err(err, errlen, "truncated frame: %zu bytes, a header alone is %d", buf ? len : 0, WIRE_HEADER_SIZE);
        return WIRE_ETRUNCATED;
    }
    if (memcmp(buf, WIRE_MAGIC, 4) != 0) {
        set_err(err, errlen, "bad magic %02x %02x %02x %02x (expected \"RLHF\")", buf[0], buf[1], buf[2], buf[3]);
        return WIRE_EMAGIC;
    }
    uint16_t version = get_u16(buf + 4);
    if (version != WIRE_VERSION) {
        set_err(err, errlen, "protocol version %u, this binary speaks version %u", version, WIRE_VERSION);
        return WIRE_EVERSION;
    }
    uint16_t t = get_u16(buf + 6);
    if (t < WIRE_HELLO || t > WIRE_ERROR) {
        set_err(err, errlen, "unknown message type %u", t);
        return WIRE_ETYPE;
    }
    uint32_t plen = get_u32(buf + 8);
    if (plen > WIRE_MAX_PAYLOAD) {
        set_err(err, errlen, "payload length %u exceeds the %u-byte limit", plen, WIRE_MAX_PAYLOAD);
        return WIRE_ELENGTH;
    }
    size_t have = len - WIRE_HEADER_SIZE;
    if (have < plen) {
        set_err(err, errlen, "truncated %s frame: payload of %zu bytes, header says %u", wire_type_name(t), have, plen);
        return WIRE_ETRUNCATED;
    }
    if (have > plen) {
        set_err(err, errlen, "%zu stray bytes after a %s payload of %u bytes", have - plen, wire_type_name(t), plen);
        return WIRE_ELENGTH;
    }
    uint32_t want = get_u32(buf + 12);
    uint32_t got = (uint32_t)crc32(0L, plen ? buf + WIRE_HEADER_SIZE : Z_NULL, (uInt)plen);
    if (want != got) {
        set_err(err, errlen, "crc mismatch in a %s frame: header %08x, payload %08x", wire_type_name(t), want, got);
        return WIRE_ECRC;
    }
    *type = (WireType)t;
    *payload = buf + WIRE_HEADER_SIZE;
    *n = plen;
    return WIRE_OK;
}

static const ProtobufCMessageDescriptor* descriptor_of(WireType t) {
    switch (t) {
    case WIRE_HELLO: return &rlhfd__hello__descriptor;
    case WIRE_COMMAND: return &rlhfd__command__descriptor;
    case WIRE_REPORT: return &rlhfd__report__descriptor;
    case WIRE_ERROR: return &rlhfd__error__descriptor;
    }
    return NULL;
}

// ---- validation

static int kind_valid(int k) { return k >= RLHFD__COMMAND__KIND__GENERATE && k <= RLHFD__COMMAND__KIND__GO; }

// A string field: protobuf-c gives "" for absent ones; cap the length so a
// peer cannot flood the log.
static int str_ok(const char* s, size_t max) { return s == NULL || strlen(s) <= max; }

static int is_hex(const char* s, size_t want_len) {
    if (s == NULL) return 0;
    size_t n = strlen(s);
    if (want_len && n != want_len) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return n > 0;
}

static WireStatus metrics_ok(const char* what, Rlhfd__Metric** m, size_t n, char* err, size_t errlen) {
    for (size_t i = 0; i < n; i++) {
        if (m[i] == NULL || m[i]->name == NULL || m[i]->name[0] == '\0' || !str_ok(m[i]->name, 64)) {
            set_err(err, errlen, "%s[%zu] has no name (or one over 64 characters)", what, i);
            return WIRE_EINVALID;
        }
    }
    return WIRE_OK;
}

WireStatus wire_validate(WireType type, const ProtobufCMessage* msg, char* err, size_t errlen) {
    if (msg == NULL || msg->descriptor != descriptor_of(type)) {
        set_err(err, errlen, "not a %s message", wire_type_name(type));
        return WIRE_EINVALID;
    }
    switch (type) {
    case WIRE_HELLO: {
        const Rlhfd__Hello* h = (const Rlhfd__Hello*)msg;
        if (h->protocol_version != WIRE_VERSION) {
            set_err(err, errlen, "Hello claims protocol version %u inside a version-%u frame", h->protocol_version, WIRE_VERSION);
            return WIRE_EINVALID;
        }
        if (h->world_size < 1 || h->rank < 0 || h->rank >= h->world_size || h->tp < 1) {
            set_err(err, errlen, "Hello with rank %d, world size %d, tp %d", (int)h->rank, (int)h->world_size, (int)h->tp);
            return WIRE_EINVALID;
        }
        if (!is_hex(h->config_digest, 16)) {
            set_err(err, errlen, "Hello's config digest is not 16 hex digits");
            return WIRE_EINVALID;
        }
        if (!str_ok(h->host, 255) || !str_ok(h->build_id, 128)) {
            set_err(err, errlen, "Hello's host or build id is too long");
            return WIRE_EINVALID;
        }
        return WIRE_OK;
    }
    case WIRE_COMMAND: {
        const Rlhfd__Command* c = (const Rlhfd__Command*)msg;
        if (!kind_valid(c->kind)) {
            set_err(err, errlen, "Command of unknown kind %d", (int)c->kind);
            return WIRE_EINVALID;
        }
        if (c->step < 0) {
            set_err(err, errlen, "Command with step %lld", (long long)c->step);
            return WIRE_EINVALID;
        }
        if (c->stats && (c->stats->token_count < 0 || c->stats->sample_count < 0)) {
            set_err(err, errlen, "Command with negative global counts");
            return WIRE_EINVALID;
        }
        if (!str_ok(c->checkpoint_path, 4096) || !str_ok(c->reason, 4096)) {
            set_err(err, errlen, "Command's checkpoint path or reason is over 4096 characters");
            return WIRE_EINVALID;
        }
        return WIRE_OK;
    }
    case WIRE_REPORT: {
        const Rlhfd__Report* r = (const Rlhfd__Report*)msg;
        if (r->rank < 0 || r->step < 0 || !kind_valid(r->phase)) {
            set_err(err, errlen, "Report with rank %d, step %lld, phase %d", (int)r->rank, (long long)r->step, (int)r->phase);
            return WIRE_EINVALID;
        }
        // Per-sample lists: each empty or all of one length (one per sample).
        size_t ns = r->n_rewards ? r->n_rewards : r->n_kl ? r->n_kl : r->n_response_lengths;
        if ((r->n_rewards && r->n_rewards != ns) || (r->n_kl && r->n_kl != ns) ||
            (r->n_response_lengths && r->n_response_lengths != ns)) {
            set_err(err, errlen, "Report's per-sample lists differ in length (rewards %zu, kl %zu, lengths %zu)",
                    r->n_rewards, r->n_kl, r->n_response_lengths);
            return WIRE_EINVALID;
        }
        for (size_t i = 0; i < r->n_response_lengths; i++) {
            if (r->response_lengths[i] < 0) {
                set_err(err, errlen, "Report's response length %zu is negative", i);
                return WIRE_EINVALID;
            }
        }
        WireStatus s;
        if ((s = metrics_ok("losses", r->losses, r->n_losses, err, errlen)) != WIRE_OK) return s;
        if ((s = metrics_ok("timings", r->timings, r->n_timings, err, errlen)) != WIRE_OK) return s;
        if ((s = metrics_ok("counts", r->counts, r->n_counts, err, errlen)) != WIRE_OK) return s;
        if (!str_ok(r->error, 4096)) {
            set_err(err, errlen, "Report's error text is over 4096 characters");
            return WIRE_EINVALID;
        }
        return WIRE_OK;
    }
    case WIRE_ERROR: {
        const Rlhfd__Error* e = (const Rlhfd__Error*)msg;
        // phase 0 (unspecified) is allowed: an error outside any phase.
        if (e->rank < 0 || e->step < 0 || (e->phase != 0 && !kind_valid(e->phase))) {
            set_err(err, errlen, "Error with rank %d, step %lld, phase %d", (int)e->rank, (long long)e->step, (int)e->phase);
            return WIRE_EINVALID;
        }
        if (e->message == NULL || e->message[0] == '\0' || !str_ok(e->message, 4096) || !str_ok(e->host, 255)) {
            set_err(err, errlen, "Error with an empty or oversized message");
            return WIRE_EINVALID;
        }
        return WIRE_OK;
    }
    }
    set_err(err, errlen, "unknown message type %d", (int)type);
    return WIRE_EINVALID;
}

WireStatus wire_unpack(const uint8_t* buf, size_t len, int expect, WireType* type,
                       ProtobufCMessage** out, char* err, size_t errlen) {
    *out = NULL;
    WireType t;
    const uint8_t* payload;
    size_t n;
    WireStatus s = wire_unframe(buf, len, &t, &payload, &n, err, errlen);
    if (s != WIRE_OK) return s;
    if (type) *type = t;
    if (expect != 0 && (int)t != expect) {
        set_err(err, errlen, "got a %s message where a %s was expected", wire_type_name(t), wire_type_name(expect));
        return WIRE_ETYPE;
    }
    // protobuf-c returns NULL on anything it cannot parse; it never reads
    // past n and allocates only for fields present in these n bytes.
    ProtobufCMessage* m = protobuf_c_message_unpack(descriptor_of(t), NULL, n, payload);
    if (m == NULL) {
        set_err(err, errlen, "%s payload of %zu bytes is not a valid protobuf %s", wire_type_name(t), n, wire_type_name(t));
        return WIRE_EDECODE;
    }
    s = wire_validate(t, m, err, errlen);
    if (s != WIRE_OK) {
        protobuf_c_message_free_unpacked(m, NULL);
        return s;
    }
    *out = m;
    return WIRE_OK;
}

uint8_t* wire_pack_hello(const Rlhfd__Hello* m, size_t* len) { return wire_pack(WIRE_HELLO, &m->base, len); }
uint8_t* wire_pack_command(const Rlhfd__Command* m, size_t* len) { return wire_pack(WIRE_COMMAND, &m->base, len); }
uint8_t* wire_pack_report(const Rlhfd__Report* m, size_t* len) { return wire_pack(WIRE_REPORT, &m->base, len); }
uint8_t* wire_pack_error(const Rlhfd__Error* m, size_t* len) { return wire_pack(WIRE_ERROR, &m->base, len); }

#define UNPACK_AS(fn, T, wt) \
    WireStatus fn(const uint8_t* buf, size_t len, T** out, char* err, size_t errlen) { \
        ProtobufCMessage* m; \
        WireStatus s = wire_unpack(buf, len, wt, NULL, &m, err, errlen); \
        *out = (T*)m; \
        return s; \
    }
UNPACK_AS(wire_unpack_hello, Rlhfd__Hello, WIRE_HELLO)
UNPACK_AS(wire_unpack_command, Rlhfd__Command, WIRE_COMMAND)
UNPACK_AS(wire_unpack_report, Rlhfd__Report, WIRE_REPORT)
UNPACK_AS(wire_unpack_error, Rlhfd__Error, WIRE_ERROR)
