// control.c - handshake, command broadcast and report gather of the control
// plane. Frames are decoded with proto/wire.c, which refuses anything
// malformed; this file turns refusals into messages that name the rank.
#define _GNU_SOURCE // dl_iterate_phdr
#include <elf.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "common/check.h"
#include "proto/control.h"

// ---- config digest

// Keys that may legitimately differ from rank to rank (none yet: a thread
// count or a node-local scratch path would go here). Every other key must
// be equal everywhere, or ranks would silently train different runs.
static const char* const DIGEST_EXCLUDED[] = {NULL};

const char* const* control_digest_excluded(void) { return DIGEST_EXCLUDED; }

void control_config_digest(const Config* cfg, char out[CONTROL_DIGEST_LEN + 1]) {
    json_t* j = config_to_json(cfg);
    for (int i = 0; DIGEST_EXCLUDED[i]; i++) json_object_del(j, DIGEST_EXCLUDED[i]);
    // Canonical text: sorted keys, no spaces, reals with every digit (so two
    // values that print alike but differ in the last bit still differ).
    char* text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(17));
    if (text == NULL) fatalf("config digest: cannot serialise the configuration");
    uint64_t h = 0xcbf29ce484222325ull; // FNV-1a 64
    for (const unsigned char* s = (const unsigned char*)text; *s; s++) {
        h ^= *s;
        h *= 0x100000001b3ull;
    }
    snprintf(out, CONTROL_DIGEST_LEN + 1, "%016llx", (unsigned long long)h);
    free(text);
    json_decref(j);
}

// ---- build id: the NT_GNU_BUILD_ID note of the main program (the linker's
// hash of the binary), read from memory; no file access.

static char build_id[2 * 64 + 1];

static int find_build_id(struct dl_phdr_info* info, size_t size, void* data) {
    (void)size;
    (void)data;
    // The first object reported is the main program.
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)* ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE) continue;
        const uint8_t* base = (const uint8_t*)(info->dlpi_addr + ph->p_vaddr);
        size_t align = ph->p_align == 8 ? 8 : 4, off = 0, size = ph->p_memsz;
        // glibc's note walk: name after the header, desc and the next note
        // each aligned to the segment's alignment.
        while (off + sizeof(ElfW(Nhdr)) <= size) {
            const ElfW(Nhdr)* nh = (const ElfW(Nhdr)*)(base + off);
            size_t name_off = off + sizeof(ElfW(Nhdr));
            size_t desc_off = (name_off + nh->n_namesz + align - 1) & ~(align - 1);
            if (desc_off + nh->n_descsz > size) break;
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && memcmp(base + name_off, "GNU", 4) == 0) {
                size_t n = nh->n_descsz < 64 ? nh->n_descsz : 64;
                for (size_t k = 0; k < n; k++) snprintf(build_id + 2 * k, 3, "%02x", base[desc_off + k]);
                return 1;
            }
            off = (desc_off + nh->n_descsz + align - 1) & ~(align - 1);
        }
    }
    return 1; // only the main program matters
}

const char* control_build_id(void) {
    if (build_id[0] == '\0') {
        dl_iterate_phdr(find_build_id, NULL);
        if (build_id[0] == '\0') snprintf(build_id, sizeof build_id, "unknown");
    }
    return build_id;
}

// ---- helpers

static void appendf(char* buf, size_t cap, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char* buf, size_t cap, const char* fmt, ...) {
    if (!buf || cap == 0) return;
    size_t used = strnlen(buf, cap);
    if (used + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, cap - used, fmt, ap);
    va_end(ap);
}

// A peer's string for a log line: printable ASCII only, at most 64 chars.
static const char* clean(const char* s, char* tmp, size_t cap) {
    size_t n = 0;
    for (; s && s[n] && n + 1 < cap && n < 64; n++) tmp[n] = (s[n] >= 32 && s[n] < 127) ? s[n] : '?';
    tmp[n] = '\0';
    return n ? tmp : "?";
}

#define MAX_NAMED 3 // ranks named in one message; the rest are counted

// ---- handshake

void control_hello_make(const Parallel* p, const char* config_digest, Rlhfd__Hello* out) {
    static char digest[CONTROL_DIGEST_LEN + 1];
    snprintf(digest, sizeof digest, "%s", config_digest);
    *out = (Rlhfd__Hello)RLHFD__HELLO__INIT;
    out->protocol_version = WIRE_VERSION;
    out->rank = p->rank;
    out->world_size = p->size;
    out->tp = p->tp_size;
    out->host = (char*)p->host;
    out->pid = (int64_t)getpid();
    out->config_digest = digest;
    out->build_id = (char*)control_build_id();
}

int control_check_hellos(uint8_t** frames, const size_t* lens, int n, int tp, const char* config_digest,
                         char* reason, size_t reason_len) {
    reason[0] = '\0';
    int bad = 0;
    const char* my_build = control_build_id();
    for (int r = 0; r < n; r++) {
        Rlhfd__Hello* h = NULL;
        char why[WIRE_ERR_MAX], host[80];
        char what[1024] = "";
        if (wire_unpack_hello(frames[r], lens[r], &h, why, sizeof why) != WIRE_OK) {
            snprintf(what, sizeof what, "malformed Hello refused (%s)", why);
        } else {
            if (h->rank != r) appendf(what, sizeof what, "%sclaims to be rank %d", what[0] ? "; " : "", (int)h->rank);
            if (h->world_size != n)
                appendf(what, sizeof what, "%sworld size %d, rank 0 has %d", what[0] ? "; " : "", (int)h->world_size, n);
            if (h->tp != tp) appendf(what, sizeof what, "%sparallel.tp = %d, rank 0 has %d", what[0] ? "; " : "", (int)h->tp, tp);
            if (strcmp(h->config_digest, config_digest) != 0)
                appendf(what, sizeof what,
                        "%sconfig digest %s differs from rank 0's %s (another config file or --set value)",
                        what[0] ? "; " : "", h->config_digest, config_digest);
            if (!what[0] && strcmp(h->build_id, my_build) != 0)
                fprintf(stderr, "rlhfd: warning: rank %d (host %s) runs another binary (build id %.16s..., rank 0 has %.16s...)\n",
                        r, clean(h->host, host, sizeof host), clean(h->build_id, why, sizeof why), my_build);
        }
        if (what[0]) {
            if (bad < MAX_NAMED) {
                if (h)
                    appendf(reason, reason_len, "%srank %d (host %s, pid %lld): %s", bad ? "; " : "", r,
                            clean(h->host, host, sizeof host), (long long)h->pid, what);
                else
                    appendf(reason, reason_len, "%srank %d: %s", bad ? "; " : "", r, what);
            }
            bad++;
        }
        if (h) rlhfd__hello__free_unpacked(h, NULL);
    }
    if (bad > MAX_NAMED) appendf(reason, reason_len, "; and %d more rank(s)", bad - MAX_NAMED);
    return bad ? -1 : 0;
}

// Every rank: print why the run stops and leave with exit code 1.
__attribute__((noreturn)) static void stop_run(int rank, const char* why) {
    if (rank == 0) fprintf(stderr, "rlhfd: error: handshake failed: %s\n", why);
    else fprintf(stderr, "rlhfd: error: rank %d: stopped by rank 0: handshake failed: %s\n", rank, why);
    fflush(stderr);
    comm_mpi_finalize();
    exit(1);
}

void control_handshake_frame(Parallel* p, const char* config_digest, const uint8_t* frame, size_t len) {
    Comm* world = p->world;
    const char* old_phase = comm_set_phase(world, "handshake");
    uint8_t** frames = NULL;
    size_t* lens = NULL;
    comm_gather_bytes(world, frame, len, 0, &frames, &lens);

    Rlhfd__Command cmd = RLHFD__COMMAND__INIT;
    char reason[2048] = "";
    if (world->rank == 0) {
        int ok = control_check_hellos(frames, lens, world->size, p->tp_size, config_digest, reason, sizeof reason);
        cmd.kind = ok == 0 ? RLHFD__COMMAND__KIND__GO : RLHFD__COMMAND__KIND__STOP;
        cmd.reason = reason;
        for (int r = 0; r < world->size; r++) free(frames[r]);
        free(frames);
        free(lens);
    }
    char err[WIRE_ERR_MAX + 64];
    Rlhfd__Command* c = control_broadcast_command(world, world->rank == 0 ? &cmd : NULL, err, sizeof err);
    if (c == NULL) stop_run(world->rank, err);
    if (c->kind != RLHFD__COMMAND__KIND__GO) {
        char why[2048];
        snprintf(why, sizeof why, "%s", c->reason[0] ? c->reason : "rank 0 sent STOP without a reason");
        rlhfd__command__free_unpacked(c, NULL);
        stop_run(world->rank, why);
    }
    rlhfd__command__free_unpacked(c, NULL);
    comm_set_phase(world, old_phase);
}

void control_handshake(Parallel* p, const char* config_digest) {
    Rlhfd__Hello h;
    control_hello_make(p, config_digest, &h);
    size_t len;
    uint8_t* frame = wire_pack_hello(&h, &len);
    control_handshake_frame(p, config_digest, frame, len);
    free(frame);
}

// ---- commands

Rlhfd__Command* control_broadcast_command(Comm* world, const Rlhfd__Command* cmd, char* err, size_t errlen) {
    uint8_t* buf = NULL;
    size_t len = 0;
    if (world->rank == 0) {
        assertCheck(cmd != NULL);
        buf = wire_pack_command(cmd, &len);
    }
    comm_broadcast_bytes(world, &buf, &len, 0);
    // Rank 0 decodes its own bytes too: every rank acts on the same thing.
    Rlhfd__Command* c = NULL;
    char why[WIRE_ERR_MAX];
    if (wire_unpack_command(buf, len, &c, why, sizeof why) != WIRE_OK && err && errlen)
        snprintf(err, errlen, "rank %d: command from rank 0 refused: %s", world->rank, why);
    free(buf);
    return c;
}

// ---- reports

void control_reports_free(Rlhfd__Report** reports, int n) {
    if (!reports) return;
    for (int i = 0; i < n; i++)
        if (reports[i]) rlhfd__report__free_unpacked(reports[i], NULL);
    free(reports);
}

static int gather_frame(Comm* world, const uint8_t* frame, size_t len, Rlhfd__Report*** out, char* err, size_t errlen) {
    uint8_t** frames = NULL;
    size_t* lens = NULL;
    if (out) *out = NULL;
    if (err && errlen) err[0] = '\0';
    comm_gather_bytes(world, frame, len, 0, &frames, &lens);
    if (world->rank != 0) return 0;

    int n = world->size, bad = 0;
    Rlhfd__Report** reports = callocCheck((size_t)n, sizeof(Rlhfd__Report*));
    for (int r = 0; r < n; r++) {
        char why[WIRE_ERR_MAX], what[1024] = "", host[80];
        WireType t = 0;
        ProtobufCMessage* m = NULL;
        if (wire_unpack(frames[r], lens[r], 0, &t, &m, why, sizeof why) != WIRE_OK) {
            snprintf(what, sizeof what, "malformed report refused (%s)", why);
        } else if (t == WIRE_REPORT) {
            Rlhfd__Report* rep = (Rlhfd__Report*)m;
            reports[r] = rep;
            if (rep->rank != r)
                snprintf(what, sizeof what, "report claims to be from rank %d", (int)rep->rank);
            else if (rep->error[0])
                snprintf(what, sizeof what, "failed in phase %s at step %lld: %.512s", wire_kind_name(rep->phase),
                         (long long)rep->step, rep->error);
        } else if (t == WIRE_ERROR) {
            Rlhfd__Error* e = (Rlhfd__Error*)m;
            snprintf(what, sizeof what, "(host %s) failed in phase %s at step %lld: %.512s",
                     clean(e->host, host, sizeof host), wire_kind_name(e->phase), (long long)e->step, e->message);
            protobuf_c_message_free_unpacked(m, NULL);
        } else {
            snprintf(what, sizeof what, "sent a %s where a Report was expected", wire_type_name(t));
            protobuf_c_message_free_unpacked(m, NULL);
        }
        if (what[0]) {
            if (bad < MAX_NAMED) appendf(err, errlen, "%srank %d %s", bad ? "; " : "", r, what);
            bad++;
        }
        free(frames[r]);
    }
    free(frames);
    free(lens);
    if (bad > MAX_NAMED) appendf(err, errlen, "; and %d more rank(s)", bad - MAX_NAMED);
    if (bad) {
        control_reports_free(reports, n);
        return -1;
    }
    if (out) *out = reports;
    else control_reports_free(reports, n);
    return 0;
}

int control_gather_reports(Comm* world, const Rlhfd__Report* mine, Rlhfd__Report*** out, char* err, size_t errlen) {
    size_t len;
    uint8_t* f = wire_pack_report(mine, &len);
    int rc = gather_frame(world, f, len, out, err, errlen);
    free(f);
    return rc;
}

int control_gather_error(Comm* world, const Rlhfd__Error* mine, Rlhfd__Report*** out, char* err, size_t errlen) {
    size_t len;
    uint8_t* f = wire_pack_error(mine, &len);
    int rc = gather_frame(world, f, len, out, err, errlen);
    free(f);
    return rc;
}
