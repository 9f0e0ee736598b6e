#!/usr/bin/env bash
# The backend choice of the commands: run.device / run.precision (config)
# and --device / --precision (rlhfd bench). Without a usable GPU, cuda must
# fail with a one-line reason; with one, a tiny bench must run on it.
set -u
bin=${RLHFD_BIN:?}
fails=0
expect() { # expect NAME WANT_RC PATTERN CMD...
  local name=$1 want=$2 pat=$3
  shift 3
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -q -- "$pat" <<<"$out"; then
    echo "FAIL $name: rc $rc (want $want), output:"
    printf '%s\n' "$out" | tail -5
    fails=$((fails + 1))
  else
    echo "ok   $name"
  fi
}
tiny=(--layers 1 --heads 2 --embd 32 --vocab 50 --ctx 16 --seq 8 --batch 2 --steps 1)

expect "unknown device" 1 "device 'tpu' is neither cpu nor cuda" "$bin" bench train --device tpu "${tiny[@]}"
expect "unknown precision" 1 "precision 'fp16' is neither fp32 nor bf16" "$bin" bench train --precision fp16 "${tiny[@]}"
expect "bf16 on cpu" 1 "bf16 needs device cuda" "$bin" bench train --device cpu --precision bf16 "${tiny[@]}"
expect "cpu default" 0 '"device": "cpu"' "$bin" bench train "${tiny[@]}"
expect "keys registered" 0 "run.device" "$bin" pretrain --help-config
expect "bad config value" 1 "device 'gpu' is neither cpu nor cuda" \
  "$bin" pretrain --set run.device=gpu --set run.dir="${TMPDIR:-/tmp}/rlhfd-devopt-$$"
if nvidia-smi -L >/dev/null 2>&1; then
  expect "cuda bench" 0 '"device": "cuda"' "$bin" bench train --device cuda --precision bf16 "${tiny[@]}"
else
  expect "cuda without a GPU" 1 "device cuda: no usable GPU" "$bin" bench train --device cuda "${tiny[@]}"
  expect "cuda without a GPU (config)" 1 "no CUDA device: " \
    "$bin" pretrain --set run.device=cuda --set run.dir="${TMPDIR:-/tmp}/rlhfd-devopt-$$"
fi
rm -rf "${TMPDIR:-/tmp}/rlhfd-devopt-$$"
exit $((fails > 0))
