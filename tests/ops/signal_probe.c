// signal_probe.c - a stand-in for a training loop under mpirun, for
// test_signals_mpi.sh: steps of ~50 ms; at the end of each step the ranks
// all-reduce (MAX) signals_stop_requested() - the collective decision
// signals.h asks for - and on a request every rank "checkpoints" (writes
// OUT/rank<R>.txt naming the step and the signal) and exits
// RLHFD_EXIT_RESUMABLE after a barrier. Rank 0 writes OUT/ready after the
// first step. Rank 0's save takes PROBE_SAVE_SECONDS (default 1).
//   signal_probe OUT MAX_STEPS
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "common/signals.h"

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    if (argc != 3) {
        fprintf(stderr, "usage: signal_probe OUT MAX_STEPS\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    signals_install();
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int max_steps = atoi(argv[2]);
    char path[4096];
    for (int step = 1; step <= max_steps; step++) {
        // the step: ranks take slightly different times, as real ones do
        struct timespec t = {0, (40 + 10 * rank) * 1000000L};
        nanosleep(&t, NULL);
        int local = signals_stop_requested(), stop = 0;
        MPI_Allreduce(&local, &stop, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (step == 1 && rank == 0) {
            snprintf(path, sizeof path, "%s/ready", argv[1]);
            FILE* f = fopen(path, "w");
            if (f) fclose(f);
        }
        if (stop) {
            // rank 0's save takes longest (it writes the checkpoint). mpirun
            // aborts the whole job as soon as one rank exits non-zero (75
            // included), so no rank may exit before the save is complete:
            // a barrier (MPI_Finalize also waits for every rank, measured).
            if (rank == 0) {
                const char* secs = getenv("PROBE_SAVE_SECONDS");
                struct timespec save = {secs ? atoi(secs) : 1, 0};
                nanosleep(&save, NULL);
            }
            snprintf(path, sizeof path, "%s/rank%d.txt", argv[1], rank);
            FILE* f = fopen(path, "w");
            if (f) {
                fprintf(f, "step %d %s\n", step, signals_name(stop));
                fclose(f);
            }
            MPI_Barrier(MPI_COMM_WORLD);
            MPI_Finalize();
            return RLHFD_EXIT_RESUMABLE;
        }
    }
    MPI_Finalize();
    return 0;
}
