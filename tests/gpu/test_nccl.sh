#!/usr/bin/env bash
# test_nccl.sh NCCL_TEST NP: the NCCL backend over NP mpirun ranks, one GPU
# each. Exits 77 (ctest: skipped) when the ranks report "no CUDA device".
set -u
bin=$1
np=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(timeout 240 mpirun --oversubscribe -np "$np" "$bin" 2>&1)
rc=$?
printf '%s\n' "$out"
if grep -q "no CUDA device" <<<"$out"; then exit 77; fi
exit $rc
