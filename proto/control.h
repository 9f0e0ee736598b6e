// control.h - the coordinator <-> worker exchange (proto/rlhfd.proto) on
// top of the control-plane byte messages of worker/comm.h.
//
// Every call here is collective over the world communicator: all ranks call
// it in the same order. Rank 0 is the coordinator.
//
//   control_handshake(&par, digest);            // once, right after parallel_init
//   Rlhfd__Command* c = control_broadcast_command(par.world, rank0 ? &cmd : NULL, err, n);
//   ... run the phase ...
//   control_gather_reports(par.world, &my_report, &reports, err, n);   // reports on rank 0
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "common/config.h"
#include "proto/wire.h"
#include "worker/comm.h"

#define CONTROL_DIGEST_LEN 16 // hex digits of the 64-bit config digest

// 64-bit FNV-1a of the effective config's canonical JSON (config_to_json,
// keys sorted, compact), minus the keys allowed to differ per rank
// (control_digest_excluded). out: 16 lowercase hex digits + NUL.
void control_config_digest(const Config* cfg, char out[CONTROL_DIGEST_LEN + 1]);
// The keys left out of the digest, NULL-terminated.
const char* const* control_digest_excluded(void);
// This binary's GNU build id in hex, or "unknown".
const char* control_build_id(void);

// Checks that every rank runs the same protocol version and config with the
// same world size and tp. On rank 0 a mismatch (or a malformed Hello) is
// turned into STOP with a reason naming the rank, its host and what differs;
// every rank then prints the reason, finalises MPI and exits 1. Returns only
// when every rank agrees. Build ids that differ get a warning on rank 0.
void control_handshake(Parallel* p, const char* config_digest);
// The two halves, for tests that forge a Hello: this rank's Hello (strings
// point at p and static storage; valid while p lives), and the exchange of
// an already framed Hello (frame bytes, which need not be valid).
void control_hello_make(const Parallel* p, const char* config_digest, Rlhfd__Hello* out);
void control_handshake_frame(Parallel* p, const char* config_digest, const uint8_t* frame, size_t len);
// Rank 0's verdict on the gathered Hello frames (n of them, the world's
// size): 0 and reason "" when they agree, else -1 and the reason. Pure
// (no communication): the unit tests call it directly.
int control_check_hellos(uint8_t** frames, const size_t* lens, int n, int tp, const char* config_digest,
                         char* reason, size_t reason_len);

// Broadcasts rank 0's cmd (ignored elsewhere; may be NULL there) and returns
// the decoded command on every rank, rank 0 included (free with
// rlhfd__command__free_unpacked(c, NULL)). NULL when the bytes that arrived
// are not a valid Command; err says why and the caller decides.
Rlhfd__Command* control_broadcast_command(Comm* world, const Rlhfd__Command* cmd, char* err, size_t errlen);

// Gathers every rank's report to rank 0. On rank 0 *out becomes an array of
// world->size decoded reports in rank order (control_reports_free); NULL
// elsewhere. Returns 0, or -1 on rank 0 when a rank's frame is malformed,
// is an Error, or is a Report with a non-empty error or another rank
// number: err names the rank(s) and why, *out is NULL. Other ranks get 0.
int control_gather_reports(Comm* world, const Rlhfd__Report* mine, Rlhfd__Report*** out, char* err, size_t errlen);
// The same collective for a rank that cannot produce a report: it sends an
// Error instead, so rank 0 learns why and nobody waits for it.
int control_gather_error(Comm* world, const Rlhfd__Error* mine, Rlhfd__Report*** out, char* err, size_t errlen);
void control_reports_free(Rlhfd__Report** reports, int n);
