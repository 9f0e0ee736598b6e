#!/usr/bin/env bash
# The test command (README): installs what is missing, fetches the data,
# builds with -Werror, runs every test, then builds the unit tests with
# AddressSanitizer + UBSan and runs them again.
#   tests/run-all.sh            everything
#   RLHFD_SKIP_ASAN=1 ...       skip the sanitizer pass (local iteration only)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
jobs=$(nproc)

echo "== dependencies"
bash deploy/install-deps.sh --with-slurm   # Slurm: tests/slurm (a local cluster)
echo "== data"
bash deploy/fetch-data.sh "$root/data/dl"

echo "== build (Release, -Werror)"
cmake -S . -B build -DRLHFD_WERROR=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
bash deploy/prepare-data.sh build/rlhfd "$root/data/dl"

echo "== tests"
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 900

if [ "${RLHFD_SKIP_ASAN:-0}" != 1 ]; then
  echo "== AddressSanitizer + UBSan build of the unit tests"
  cmake -S . -B build-asan -DRLHFD_WERROR=ON -DRLHFD_SANITIZE=ON -DRLHFD_CUDA=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build-asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  LSAN_OPTIONS=suppressions="$root/tests/lsan.supp":print_suppressions=0 \
    ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 1800 -LE nosan
fi
echo "== all tests passed"
