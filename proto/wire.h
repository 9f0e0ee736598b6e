// wire.h - one control-plane message as bytes: a 16-byte frame header and
// the protobuf payload (layout and rules: proto/rlhfd.proto).
//
//   uint8_t* f = wire_pack_command(&cmd, &n);            // sender
//   Rlhfd__Command* c; char err[WIRE_ERR_MAX];
//   if (wire_unpack_command(f, n, &c, err, sizeof err) != WIRE_OK) ... // err says why
//   rlhfd__command__free_unpacked(c, NULL);
//
// Decoding trusts nothing: every problem (magic, version, type, length,
// crc, truncation, a payload protobuf-c refuses, a field out of range) is a
// status code plus a one-line message; never a crash, an abort or an exit.
// The caller decides what to do (usually: name the sending rank and stop).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "proto/rlhfd.pb-c.h"

#define WIRE_MAGIC "RLHF"
#define WIRE_HEADER_SIZE 16
#define WIRE_MAX_PAYLOAD (64u << 20) // 64 MiB: far above any report of scalars
#define WIRE_VERSION ((uint16_t)RLHFD__PROTOCOL__VERSION)
#define WIRE_ERR_MAX 256             // enough for any message below

typedef enum { WIRE_HELLO = 1, WIRE_COMMAND = 2, WIRE_REPORT = 3, WIRE_ERROR = 4 } WireType;

typedef enum {
    WIRE_OK = 0,
    WIRE_ETRUNCATED, // fewer bytes than a header, or than the header's payload length
    WIRE_EMAGIC,     // does not start with "RLHF"
    WIRE_EVERSION,   // another protocol version
    WIRE_ETYPE,      // unknown message type, or not the one expected
    WIRE_ELENGTH,    // payload length over WIRE_MAX_PAYLOAD, or bytes after the payload
    WIRE_ECRC,       // payload crc32 differs from the header's
    WIRE_EDECODE,    // protobuf-c cannot unpack the payload
    WIRE_EINVALID,   // unpacked, but a field is out of range
} WireStatus;

// "Hello", "Command", ...; "unknown" for anything else.
const char* wire_type_name(int type);
// "generate", "train", ...; "unknown" for values outside the enum.
const char* wire_kind_name(int kind);
// "truncated", "bad magic", ... (the status, not the detail).
const char* wire_status_name(WireStatus s);

// ---- framing

// Frames payload (n bytes) as message type with the given protocol version
// (WIRE_VERSION normally; tests forge others). malloc'd, *len = 16 + n.
// Fatal if n > WIRE_MAX_PAYLOAD (a sender bug, not bad input).
uint8_t* wire_frame_bytes(int type, uint16_t version, const uint8_t* payload, size_t n, size_t* len);
// Packs msg with protobuf-c and frames it as type. malloc'd, *len set.
uint8_t* wire_pack(WireType type, const ProtobufCMessage* msg, size_t* len);

// Checks the frame in buf (len bytes: exactly one frame). On WIRE_OK *type,
// *payload (points into buf) and *n are set; else err holds the reason.
WireStatus wire_unframe(const uint8_t* buf, size_t len, WireType* type,
                        const uint8_t** payload, size_t* n, char* err, size_t errlen);

// Unframes, unpacks and validates. expect: the type wanted, or 0 for any of
// the four (then *type says which). On WIRE_OK *out is the message (free with
// protobuf_c_message_free_unpacked(*out, NULL)); otherwise *out is NULL.
WireStatus wire_unpack(const uint8_t* buf, size_t len, int expect, WireType* type,
                       ProtobufCMessage** out, char* err, size_t errlen);

// Range checks of a decoded (or about to be sent) message: enums inside
// their enum, ranks >= 0, digest of 16 hex digits, per-sample lists of one
// length. WIRE_OK or WIRE_EINVALID with err set.
WireStatus wire_validate(WireType type, const ProtobufCMessage* msg, char* err, size_t errlen);

// ---- per message: pack (malloc'd frame) and unpack (WireStatus, *out)
uint8_t* wire_pack_hello(const Rlhfd__Hello* m, size_t* len);
uint8_t* wire_pack_command(const Rlhfd__Command* m, size_t* len);
uint8_t* wire_pack_report(const Rlhfd__Report* m, size_t* len);
uint8_t* wire_pack_error(const Rlhfd__Error* m, size_t* len);
WireStatus wire_unpack_hello(const uint8_t* buf, size_t len, Rlhfd__Hello** out, char* err, size_t errlen);
WireStatus wire_unpack_command(const uint8_t* buf, size_t len, Rlhfd__Command** out, char* err, size_t errlen);
WireStatus wire_unpack_report(const uint8_t* buf, size_t len, Rlhfd__Report** out, char* err, size_t errlen);
WireStatus wire_unpack_error(const uint8_t* buf, size_t len, Rlhfd__Error** out, char* err, size_t errlen);
