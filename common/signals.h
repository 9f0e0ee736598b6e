// signals.h - graceful stop on SIGTERM / SIGUSR1 / SIGINT, for preemption.
//
// A cluster ends a job with a signal some time before it kills it: Slurm
// sends SIGTERM at a time limit or preemption (then SIGKILL after KillWait,
// 30 s by default), or the signal chosen with `sbatch --signal=[B:]SIG@SECS`
// that many seconds earlier. rlhfd turns the first of SIGTERM, SIGUSR1 or
// SIGINT into a request: the training loop finishes its current step, writes
// a checkpoint and exits with RLHFD_EXIT_RESUMABLE, which tells a launcher
// (deploy/slurm/rlhfd.sbatch) to requeue the job; the next run starts with
// `--resume auto`. A second SIGTERM or SIGINT while stopping exits at once
// (code 128 + signal, like a shell); a second SIGUSR1 is ignored (launchers
// may forward the same notice twice).
//
// Under mpirun (Open MPI 4.1, measured in tests/ops/test_signals_mpi.sh):
//   - SIGUSR1/SIGUSR2 sent to mpirun are forwarded to every rank, and the
//     job then ends normally: mpirun exits with the ranks' code (75 here).
//     This is THE way to ask an mpirun job to stop gracefully.
//   - SIGTERM/SIGINT sent to mpirun make it kill the job: SIGCONT, then
//     after odls_base_sigkill_timeout (1 s) SIGTERM to every rank, and after
//     another 1 s SIGKILL - far too soon for a checkpoint - and mpirun exits
//     1 whatever the ranks return. SIGTERM cannot be added to
//     ess_base_forward_signals (mpirun refuses).
//   - mpirun aborts the whole job as soon as one rank exits non-zero, 75
//     included: no rank may exit before the checkpoint is complete on every
//     rank. Stop through a barrier after the save, then MPI_Finalize (which
//     itself waits for all ranks), then exit(RLHFD_EXIT_RESUMABLE).
//   So launchers turn TERM into USR1 for mpirun (deploy/mpirun.sh and the
//   sbatch template trap TERM/USR1 and send USR1 to mpirun).
//   Under `srun`, SIGTERM and SIGUSR1 sent to srun both reach every task.
//
// In a world of several ranks the signal reaches each rank at a slightly
// different point of its step, so the decision must be collective: at the
// end of every step, all-reduce (MAX) signals_stop_requested() over the
// world and stop when the result is non-zero; every rank then checkpoints
// the same step.
#pragma once

// "Stopped cleanly after writing a checkpoint; requeue and resume."
// 75 = EX_TEMPFAIL (sysexits.h): a temporary failure, try again later.
#define RLHFD_EXIT_RESUMABLE 75

// Installs the handlers (sigaction, SA_RESTART: interrupted reads and writes
// resume instead of failing with EINTR). Idempotent.
void signals_install(void);
// The signal that asked to stop (SIGTERM, SIGUSR1 or SIGINT), or 0.
// Async-signal-safe flag read: cheap enough to poll every step.
int signals_stop_requested(void);
// Records a stop request as if sig had arrived (tests; an in-process
// "stop" action that wants the same path through the loop).
void signals_request_stop(int sig);
// Forgets a request (tests only; a run that stopped does not go on).
void signals_clear(void);
// "SIGTERM", "SIGUSR1", "SIGINT", else "signal N" in a static buffer.
const char* signals_name(int sig);
