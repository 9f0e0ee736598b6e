#!/usr/bin/env bash
# Signals under mpirun -np 2 (Open MPI 4.1), with signal_probe standing in for
# the training loop (collective stop decision, "checkpoint", exit 75):
#   1. SIGUSR1 to mpirun: forwarded to both ranks, which stop at the same
#      step; mpirun exits 75 (RLHFD_EXIT_RESUMABLE).
#   2. SIGTERM to a bare mpirun: NOT graceful - mpirun sends the ranks
#      SIGTERM 1 s later and SIGKILL 1 s after that (odls_base_sigkill_timeout)
#      and its exit code is not 75 (why launchers send USR1).
#   3. SIGTERM to deploy/mpirun.sh: turned into USR1; exit 75, same step.
#   4. two SIGTERMs to deploy/mpirun.sh: the second stops the job at once.
#   test_signals_mpi.sh path/to/signal_probe
set -uo pipefail
probe="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
work=$(mktemp -d /tmp/rlhfd-sigmpi-XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
check() { if eval "$1"; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }

# start LAUNCHER...; waits for the probe's first step; sets $pid and $out
start() {
  out="$work/$1"; shift
  mkdir -p "$out"
  "$@" "$out" 400 >"$out.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do [ -f "$out/ready" ] && return 0; sleep 0.1; done
  echo "FAIL the probe did not start"; cat "$out.log"; exit 1
}
finish() { # waits for $pid (at most 30 s); sets $rc and $secs
  local t0=$SECONDS
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { echo "FAIL still running after 30 s"; kill -KILL "$pid"; }
  wait "$pid"; rc=$?; secs=$((SECONDS - t0))
}
same_step() { # both ranks wrote the same "step N SIG" line
  [ -f "$out/rank0.txt" ] && [ -f "$out/rank1.txt" ] && cmp -s "$out/rank0.txt" "$out/rank1.txt"
}

echo "== 1. SIGUSR1 to mpirun"
start usr1 mpirun -np 2 "$probe"
kill -USR1 "$pid"; finish
check '[ "$rc" = 75 ]' "mpirun exit code $rc (want 75)"
check same_step "both ranks stopped at the same step: $(cat "$out/rank0.txt" 2>/dev/null)"
check 'grep -q SIGUSR1 "$out/rank0.txt"' "the stop names SIGUSR1"

echo "== 2. SIGTERM to a bare mpirun"
start term mpirun -np 2 "$probe"
kill -TERM "$pid"; finish
check '[ "$rc" != 75 ]' "mpirun exit code $rc after ${secs}s: the resumable code is lost, TERM is not a graceful stop for mpirun"

echo "== 3. SIGTERM to deploy/mpirun.sh"
start wrap bash "$root/deploy/mpirun.sh" --np 2 --threads 1 --oversubscribe -- "$probe"
kill -TERM "$pid"; finish
check '[ "$rc" = 75 ]' "deploy/mpirun.sh exit code $rc (want 75)"
check same_step "both ranks stopped at the same step: $(cat "$out/rank0.txt" 2>/dev/null)"
check 'grep -q "asking rlhfd to checkpoint" "$out.log"' "the wrapper says what it does"

echo "== 4. two SIGTERMs to deploy/mpirun.sh (rank 0's save takes 20 s)"
export PROBE_SAVE_SECONDS=20
start wrap2 bash "$root/deploy/mpirun.sh" --np 2 --threads 1 --oversubscribe --env PROBE_SAVE_SECONDS -- "$probe"
kill -TERM "$pid"; sleep 0.5; kill -TERM "$pid"; finish
check '[ "$rc" != 75 ] && [ "$rc" != 0 ] && [ "$secs" -le 6 ]' "second TERM stops the job: exit code $rc after ${secs}s"
check '[ ! -f "$out/rank0.txt" ]' "rank 0 was stopped inside its checkpoint"

((fail)) && { echo "--- logs"; tail -n 20 "$work"/*.log; exit 1; }
echo "signals under mpirun: all ok"
