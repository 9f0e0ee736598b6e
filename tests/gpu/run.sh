#!/usr/bin/env bash
# tests/gpu/run.sh - issue 7's verification on a GPU machine, in one run of
# at most 10 minutes, build included:
#   1. build (Release, CUDA on, -j16) from this checkout;
#   2. every CUDA op against the CPU kernels on random inputs (fp32 <= 1e-5
#      relative, bf16 matmuls <= 1e-2)            gpu_check ops [--bf16]
#   3. training steps and greedy generation, GPU vs CPU (GPT-2 124M shape and
#      a small odd one; fp32 and bf16)             gpu_check model
#   4. the NCCL backend over 2 ranks (only with 2+ GPUs and mpirun)
#   5. throughput: GPT-2 124M training at B=16 T=1024 (tokens/s, MFU against
#      the GPU's bf16 peak), generation tokens/s on the GPU vs the CPU path
#                                                  gpu_check bench
#   6. a table of every RESULT line, printed last.
#
# The GPU machine may lack this project's build dependencies (OpenBLAS, Open
# MPI, jansson, inih, utf8proc, libuv, http-parser, protobuf-c). Then the
# script uses a bundle made beforehand on a machine that has them:
#     bash tests/gpu/run.sh --bundle      # here: build-gpu-pack/bundle.tar.xz
# (Release, CUDA, sm_90 + compute_75, x86-64-v3 host code; the binaries and
# every shared library they need except glibc, libstdc++, the CUDA driver,
# cuBLASLt and NCCL, which the GPU machine has); make it from the same tree
# right before the run (~1 minute when build-gpu-bundle/ is warm, ~10 from
# scratch on 2 cores). With the device tool:
#     run(command="bash tests/gpu/run.sh", carry=["build-gpu-pack"], timeout_s=600)
# Logs and the table go to $OUT (the device tool's) or ./build-gpu-out.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

# ---------------------------------------------------------------------------
# --bundle: build here and pack what the GPU machine needs
if [ "${1:-}" = "--bundle" ]; then
  set -e
  b=build-gpu-bundle
  # portable host code: the CMakeLists' Release flags say -march=native, which
  # would be this machine's CPU; a build type of our own takes these instead
  cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=GpuBundle -DRLHFD_CUDA=ON -DRLHFD_WERROR=ON \
        -DCMAKE_C_FLAGS="-O3 -march=x86-64-v3 -fno-math-errno -DNDEBUG" -DCMAKE_CUDA_FLAGS="-O3" >/dev/null
  grep -q "RLHFD_HAVE_CUDA" "$b/CMakeFiles/rlhfcore.dir/flags.make" ||
    { echo "run.sh --bundle: the CUDA backend is not enabled (no nvcc?)"; exit 1; }
  cmake --build "$b" -j"${JOBS:-2}" --target gpu_check nccl_test rlhfd
  stage="$b/stage"
  rm -rf "$stage"
  mkdir -p "$stage/bin" "$stage/lib"
  cp "$b/tests/gpu/gpu_check" "$b/tests/gpu/nccl_test" "$b/rlhfd" "$stage/bin/"
  cp tests/gpu/test_nccl.sh "$stage/bin/"
  # every resolved library but the C runtime and what comes with the driver/toolkit
  skip='linux-vdso|ld-linux|/libc\.so|/libm\.so|/libdl\.so|/libpthread\.so|/librt\.so|libstdc\+\+|libgcc_s|libcuda\.so|libcublas|libcudart|libnccl'
  for f in "$stage"/bin/gpu_check "$stage"/bin/nccl_test "$stage"/bin/rlhfd; do
    ldd "$f" | awk '/=> \//{print $3}' | grep -Ev "$skip" || true
  done | sort -u | while read -r lib; do cp -L "$lib" "$stage/lib/"; done
  git rev-parse HEAD >"$stage/COMMIT" 2>/dev/null || true
  mkdir -p build-gpu-pack
  tar -C "$stage" -cJf build-gpu-pack/bundle.tar.xz .
  ls -la build-gpu-pack/bundle.tar.xz
  du -sh "$stage"/lib "$stage"/bin
  echo "carry build-gpu-pack when calling the device tool (the working tree limit is 64 MiB in all)"
  exit 0
fi

# ---------------------------------------------------------------------------
# on the GPU machine
out="${OUT:-$root/build-gpu-out}" # build*/ is git-ignored
mkdir -p "$out"
log="$out/run.log"
results="$out/results.txt"
: >"$log"
: >"$results"
t_start=$(date +%s)
BUDGET=570 # seconds for everything (the device tool's limit is 600)
elapsed() { echo $(($(date +%s) - t_start)); }
say() { echo "$*" | tee -a "$log"; }
note() { echo "RESULT $1 | $2 | $3 | $4" >>"$results"; }

say "== machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
  echo "cpus: $(nproc); $(uname -m); $(ldd --version 2>&1 | head -1)"
  command -v nvcc >/dev/null && nvcc --version | tail -1
  command -v cmake >/dev/null && cmake --version | head -1
} | tee -a "$log"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)

# ---- 1. build here, else the bundle
bin=""
mode=""
b="$root/build-gpu-run"
export CUDACXX="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
jobs="${JOBS:-16}"
say "== build (Release, CUDA on, -j$jobs)"
if [ "${GPU_USE_BUNDLE:-0}" = 1 ]; then
  say "GPU_USE_BUNDLE=1: not building"
elif timeout 90 cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=Release -DRLHFD_CUDA=ON >"$out/configure.log" 2>&1 &&
   grep -q "rlhfd: CUDA backend" "$out/configure.log"; then
  if timeout 300 cmake --build "$b" -j"$jobs" --target gpu_check nccl_test rlhfd >"$out/build.log" 2>&1; then
    bin="$b"
    mode="built here"
  else
    say "build failed after $(elapsed) s (last lines of build.log):"
    tail -15 "$out/build.log" | tee -a "$log"
  fi
else
  say "configure failed or found no CUDA (last lines of configure.log):"
  tail -8 "$out/configure.log" | tee -a "$log"
fi
if [ -z "$bin" ] && [ -f build-gpu-pack/bundle.tar.xz ]; then
  say "== using the bundle (build-gpu-pack/bundle.tar.xz, commit $(tar -xJOf build-gpu-pack/bundle.tar.xz ./COMMIT 2>/dev/null))"
  rm -rf /tmp/rlhfd-bundle && mkdir -p /tmp/rlhfd-bundle
  tar -C /tmp/rlhfd-bundle -xJf build-gpu-pack/bundle.tar.xz
  bin=/tmp/rlhfd-bundle/bin
  mode="bundle"
fi
if [ -z "$bin" ]; then
  note "build" "no binaries: build failed and no bundle" "builds" FAIL
  say "no binaries to run: see $out/configure.log, $out/build.log; or make a bundle (run.sh --bundle) and carry it"
  cat "$results"
  exit 1
fi
note "build" "$mode ($(elapsed) s)" "Release, CUDA on" PASS
gpu_check="$bin/gpu_check"
[ -x "$gpu_check" ] || gpu_check="$bin/tests/gpu/gpu_check"
nccl_test="$bin/nccl_test"
[ -x "$nccl_test" ] || nccl_test="$bin/tests/gpu/nccl_test"
rlhfd="$bin/rlhfd"

# The library path of our binaries only (the bundle's older libz, libudev...
# must not reach the system's tools): the bundle's libs, then cuBLASLt and
# NCCL where the loader does not find them by itself.
libpath="${LD_LIBRARY_PATH:-}"
[ "$mode" = "bundle" ] && libpath="/tmp/rlhfd-bundle/lib${libpath:+:$libpath}"
run_bin() { env LD_LIBRARY_PATH="$libpath" "$@"; }
wants=libcublasLt.so.13
[ "${ngpu:-0}" -ge 2 ] && wants="$wants libnccl.so.2" # NCCL (dlopen'd) only matters with 2+ GPUs
for want in $wants; do
  if ! run_bin ldd "$gpu_check" 2>/dev/null | grep -q "$want => /" && ! ldconfig -p 2>/dev/null | grep -q "$want"; then
    found=$(timeout 60 find /usr/local /opt /usr/lib /usr/lib64 /root -name "$want*" 2>/dev/null | head -1)
    if [ -n "$found" ]; then
      libpath="$(dirname "$found")${libpath:+:$libpath}"
      say "using $found"
    fi
  fi
done
if run_bin ldd "$gpu_check" | grep -q "not found"; then
  say "missing libraries:"
  run_bin ldd "$gpu_check" | grep "not found" | tee -a "$log"
fi

# ---- 2-5: each step bounded; skipped when the budget is spent
step() { # step NAME TIMEOUT CMD...
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - $(elapsed)))
  if [ "$left" -lt 20 ]; then
    say "== $name: skipped (time budget spent)"
    note "$name" "skipped: out of time" "-" FAIL
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (limit $limit s)"
  local t0=$(date +%s) rc=0
  timeout "$limit" env LD_LIBRARY_PATH="$libpath" "$@" >"$out/step.log" 2>&1 || rc=$?
  cat "$out/step.log" >>"$log"
  grep -v '^RESULT ' "$out/step.log" | tail -40
  grep '^RESULT ' "$out/step.log" >>"$results" || true
  if [ "$rc" -ne 0 ] && ! grep -q '^RESULT ' "$out/step.log"; then
    note "$name" "exit $rc after $(($(date +%s) - t0)) s, no result (see run.log)" "-" FAIL
  elif [ "$rc" -eq 124 ]; then
    note "$name" "timed out after $limit s" "-" FAIL
  fi
  say "   ($name: exit $rc, $(($(date +%s) - t0)) s)"
}

step "ops fp32" 150 "$gpu_check" ops
step "ops bf16" 150 "$gpu_check" ops --bf16
step "model" 240 "$gpu_check" model
if [ "${ngpu:-0}" -ge 2 ] && command -v mpirun >/dev/null; then
  step "nccl" 120 bash tests/gpu/test_nccl.sh "$nccl_test" 2
else
  note "nccl collectives" "not run: ${ngpu:-0} GPU(s)$(command -v mpirun >/dev/null || echo ', no mpirun')" "needs 2 GPUs" INFO
fi
step "bench" 240 "$gpu_check" bench
# the command line's path, where MPI works (built here): a tiny bf16 run
if [ "$mode" = "built here" ]; then
  step "rlhfd bench --device cuda" 60 "$rlhfd" bench train --device cuda --precision bf16 --layers 2 --heads 2 \
       --embd 128 --vocab 1000 --ctx 128 --seq 128 --batch 4 --steps 3
  if grep -q '"device": "cuda"' "$out/step.log"; then
    note "rlhfd bench train --device cuda" "$(tail -1 "$out/step.log" | cut -c1-80)" "runs" PASS
  else
    note "rlhfd bench train --device cuda" "no JSON line (see run.log)" "runs" FAIL
  fi
fi

# ---- 6. the table, last
say ""
say "== summary ($(elapsed) s in all; binaries: $mode)"
{
  printf '%-46s | %-70s | %-42s | %s\n' "check" "value" "target" "status"
  printf '%s\n' "$(printf '%.0s-' {1..175})"
  sed 's/^RESULT //' "$results" | awk -F' [|] ' '{printf "%-46s | %-70s | %-42s | %s\n", $1, $2, $3, $4}'
} | tee "$out/table.txt" | tee -a "$log"
fails=$(grep -c '| FAIL$' "$results" || true)
say "failed checks: $fails"
[ "$fails" -eq 0 ]
