#!/usr/bin/env bash
# tp_test under mpirun (tp = NP), on the default model (V = 67: the last
# vocab shard is padded) and on shapes that stress the sharding; then a
# model whose heads NP does not divide must be refused with a clear error.
#   test_tp.sh TP_TEST_BINARY NP
set -u
bin="$1"; np="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI's own allocations are not ours to judge under LeakSanitizer.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
scratch=$(mktemp -d); out="$scratch/out"
trap 'rm -rf "$scratch"' EXIT
fail=0

run_ok() { # NAME ARGS...
    local name="$1"; shift
    mkdir -p "$scratch/$name"
    timeout 240 mpirun --oversubscribe -np "$np" "$bin" --dir "$scratch/$name" "$@" >"$out" 2>&1 </dev/null
    local rc=$?
    if [ $rc -ne 0 ] || ! grep -q "tp_test: ok" "$out"; then
        echo "FAIL: np=$np $name ($*): rc $rc"; cat "$out"; fail=1
    else
        grep -v "^\[rank 0\] ok" "$out" | sed "s/^/  /"
        echo "ok: np=$np $name: $(grep -c '^\[rank 0\] ok' "$out") checks passed on every rank"
    fi
}

run_ok default
run_ok one_layer_wide --layers 1 --embd 48 --heads 8 --vocab 101
# V = 5 over 4 ranks: shards of 2 rows, the last rank holds padding only
[ "$np" -ge 4 ] && run_ok tiny_vocab --vocab 5 --heads 4

timeout 60 mpirun --oversubscribe -np "$np" "$bin" --expect-bad-heads --heads $((np + 1)) --embd $((8 * (np + 1))) \
    >"$out" 2>&1 </dev/null
rc=$?
if [ $rc -eq 0 ] || ! grep -q "model.heads ($((np + 1))) must be divisible by parallel.tp ($np)" "$out"; then
    echo "FAIL: np=$np heads not divisible: rc $rc"; cat "$out"; fail=1
else
    echo "ok: np=$np $((np + 1)) heads refused: $(grep -m1 'must be divisible' "$out")"
fi
exit $fail
