// control_mpi.c - the control plane over real MPI (driven by
// test_control.sh under mpirun -np 2 and -np 4).
//
//   control_mpi [--tp T] [--lie MODE] [--liar R]
//
// Every rank handshakes; rank R (default 1) lies when MODE is given:
//   digest   its config differs (train.lr set on that rank only)
//   version  its Hello is framed as protocol version 2
//   tp       it claims parallel.tp = T + 1
//   rank     it claims to be another rank
//   garbage  it sends random bytes instead of a Hello
// A lie must stop every rank with exit code 1 and a message naming rank R.
// Without one, rank 0 then broadcasts 20 commands and gathers 20 reports,
// each checked field by field on every rank; a rank sends an Error in
// place of its report once and a report with a wrong rank once, and rank 0
// must name it; then STOP. Prints "control_mpi: ok" on rank 0.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/config.h"
#include "proto/control.h"
#include "sample_messages.h"

static Parallel par;

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "control_mpi: rank %d: FAIL %s:%d: %s\n", par.rank, __FILE__, __LINE__, #cond); \
    comm_mpi_abort(1); } } while (0)

int main(int argc, char** argv) {
    comm_mpi_init(&argc, &argv);
    int tp = 1, liar = 1;
    const char* lie = "";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tp")) tp = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lie")) lie = argv[i + 1];
        else if (!strcmp(argv[i], "--liar")) liar = atoi(argv[i + 1]);
        else { fprintf(stderr, "control_mpi: unknown option %s\n", argv[i]); return 2; }
    }
    parallel_init(&par, tp, 30.0);
    int lying = lie[0] && par.rank == liar;

    // The digest of an effective config; the liar's has another lr.
    Config* cfg = config_new();
    config_set(cfg, "train.steps=7", "--set");
    if (lying && !strcmp(lie, "digest")) config_set(cfg, "train.lr=0.5", "--set");
    char digest[CONTROL_DIGEST_LEN + 1];
    control_config_digest(cfg, digest);
    config_free(cfg);

    Rlhfd__Hello h;
    control_hello_make(&par, digest, &h);
    size_t len = 0;
    uint8_t* frame = NULL;
    if (lying && !strcmp(lie, "tp")) h.tp = tp + 1;
    if (lying && !strcmp(lie, "rank")) h.rank = (par.rank + 1) % par.size;
    if (lying && !strcmp(lie, "version")) {
        uint8_t payload[1024];
        size_t n = rlhfd__hello__pack(&h, payload);
        frame = wire_frame_bytes(WIRE_HELLO, WIRE_VERSION + 1, payload, n, &len);
    } else if (lying && !strcmp(lie, "garbage")) {
        len = 40;
        frame = malloc(len);
        for (size_t i = 0; i < len; i++) frame[i] = (uint8_t)(i * 37 + 11);
    } else {
        frame = wire_pack_hello(&h, &len);
    }
    control_handshake_frame(&par, digest, frame, len); // exits 1 on a mismatch
    free(frame);
    CHECK(!lie[0]); // a lie must never get past the handshake

    SampleStore s;
    char err[4096];
    for (int step = 0; step < 20; step++) {
        Rlhfd__Command want;
        sample_command(&s, step, &want);
        Rlhfd__Command* got = control_broadcast_command(par.world, par.rank == 0 ? &want : NULL, err, sizeof err);
        CHECK(got != NULL);
        CHECK(command_equal(&want, got));
        rlhfd__command__free_unpacked(got, NULL);

        Rlhfd__Report** reports = NULL;
        int rc;
        int culprit = par.size - 1; // the last rank misbehaves on two steps
        if (step == 5 && par.rank == culprit) {
            Rlhfd__Error e = RLHFD__ERROR__INIT;
            e.rank = par.rank;
            e.host = par.host;
            e.step = step;
            e.phase = RLHFD__COMMAND__KIND__TRAIN;
            e.message = (char*)"loss is NaN";
            rc = control_gather_error(par.world, &e, &reports, err, sizeof err);
        } else {
            Rlhfd__Report mine;
            sample_report(&s, par.rank, step, &mine);
            if (step == 9 && par.rank == culprit) mine.rank = par.rank + 1;
            rc = control_gather_reports(par.world, &mine, &reports, err, sizeof err);
        }
        if (par.rank != 0) {
            CHECK(rc == 0 && reports == NULL);
            continue;
        }
        char want_err[256];
        if (step == 5) {
            snprintf(want_err, sizeof want_err, "rank %d (host %s) failed in phase train at step 5: loss is NaN",
                     culprit, par.host);
            CHECK(rc == -1 && reports == NULL);
            if (!strstr(err, want_err)) fprintf(stderr, "got '%s'\nwanted '%s'\n", err, want_err);
            CHECK(strstr(err, want_err) != NULL);
        } else if (step == 9) {
            snprintf(want_err, sizeof want_err, "rank %d report claims to be from rank %d", culprit, culprit + 1);
            CHECK(rc == -1 && reports == NULL && strstr(err, want_err) != NULL);
        } else {
            CHECK(rc == 0 && reports != NULL);
            for (int r = 0; r < par.size; r++) {
                Rlhfd__Report expect;
                sample_report(&s, r, step, &expect);
                CHECK(report_equal(&expect, reports[r]));
            }
            control_reports_free(reports, par.size);
        }
    }
    Rlhfd__Command stop = RLHFD__COMMAND__INIT;
    stop.kind = RLHFD__COMMAND__KIND__STOP;
    stop.step = 20;
    Rlhfd__Command* got = control_broadcast_command(par.world, par.rank == 0 ? &stop : NULL, err, sizeof err);
    CHECK(got && got->kind == RLHFD__COMMAND__KIND__STOP && got->reason[0] == '\0');
    rlhfd__command__free_unpacked(got, NULL);
    if (par.rank == 0) printf("control_mpi: ok (%d ranks, tp %d, build %s)\n", par.size, par.tp_size, control_build_id());
    parallel_free(&par);
    comm_mpi_finalize();
    return 0;
}
