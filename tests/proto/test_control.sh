#!/usr/bin/env bash
# The handshake and the command/report exchange under mpirun (control_mpi.c).
#   test_control.sh CONTROL_MPI_BINARY NP
# Agreeing ranks run 20 steps and exit 0; each kind of lie by one rank must
# stop the whole job with exit code 1 within seconds, every rank printing a
# message that names the lying rank and what differs.
set -u
bin="$1"; np="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI's own allocations are not ours to judge under LeakSanitizer.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fail=0
out=$(mktemp); trap 'rm -f "$out"' EXIT

run() { # ARGS... -> rc in $rc, output in $out, milliseconds in $ms
    local t0=$(date +%s%N)
    timeout 60 mpirun --oversubscribe -np "$np" "$bin" "$@" >"$out" 2>&1 </dev/null
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}
expect_ok() {
    run "$@"
    if [ $rc -ne 0 ] || ! grep -q "control_mpi: ok ($np ranks" "$out"; then
        echo "FAIL: np=$np $*: rc $rc"; cat "$out"; fail=1
    else
        echo "ok: np=$np $* passes (${ms} ms)"
    fi
}
expect_stop() { # LIAR NEEDLE ARGS...
    local liar="$1" needle="$2"; shift 2
    run "$@" --liar "$liar"
    local lines=$(grep -c "handshake failed: .*rank $liar[ :]" "$out")
    if [ $rc -ne 1 ] || ! grep -qF -- "$needle" "$out" || [ "$lines" -ne "$np" ] \
       || [ "$ms" -gt 10000 ]; then
        echo "FAIL: np=$np $* --liar $liar: rc $rc (want 1), $lines of $np ranks named rank $liar, ${ms} ms, wanted '$needle'"
        cat "$out"; fail=1
    else
        echo "ok: np=$np $* --liar $liar stops in ${ms} ms: $(grep -m1 'rlhfd: error: handshake' "$out")"
    fi
}

expect_ok
if [ "$np" -eq 2 ]; then # a world of one, without mpirun (MPI singleton)
    timeout 60 "$bin" >"$out" 2>&1 </dev/null
    if [ $? -ne 0 ] || ! grep -q "control_mpi: ok (1 ranks" "$out"; then echo "FAIL: singleton"; cat "$out"; fail=1
    else echo "ok: singleton passes"; fi
fi
[ "$np" -ge 4 ] && expect_ok --tp 2
expect_stop 1 "rank 1 (host $(hostname)" --lie digest
expect_stop 1 "config digest" --lie digest
expect_stop 1 "rank 1: malformed Hello refused (protocol version 2, this binary speaks version 1)" --lie version
expect_stop 1 "parallel.tp = 2, rank 0 has 1" --lie tp
expect_stop 1 "rank 1: malformed Hello refused (bad magic" --lie garbage
expect_stop 1 "claims to be rank" --lie rank
if [ "$np" -ge 4 ]; then
    expect_stop 3 "rank 3 (host $(hostname)" --lie digest --tp 2
    expect_stop 2 "parallel.tp = 3, rank 0 has 2" --lie tp --tp 2
fi
exit $fail
