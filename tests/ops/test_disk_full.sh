#!/usr/bin/env bash
# Disk-full and read-only drills on a real filesystem: a 1 MiB tmpfs.
#   1. ENOSPC: a checkpoint with a 4 MiB extra file cannot fit; the save
#      fails with the path and ENOSPC, leaves nothing behind (the tmpfs is as
#      empty as before), the previous checkpoint stays valid.
#   2. EROFS: the same tmpfs remounted read-only.
# Needs root and mount rights (a container may lack them): exit 77 otherwise.
#   test_disk_full.sh path/to/test_run_state
set -euo pipefail
bin="$1"
[ "$(id -u)" = 0 ] || { echo "skip: mounting a tmpfs needs root"; exit 77; }
dir=$(mktemp -d /tmp/rlhfd-diskfull-XXXXXX)
cleanup() { umount "$dir" 2>/dev/null || true; rmdir "$dir" 2>/dev/null || true; }
trap cleanup EXIT
if ! mount -t tmpfs -o size=1m,mode=0755 tmpfs "$dir" 2>/dev/null; then
  echo "skip: cannot mount a tmpfs here (no CAP_SYS_ADMIN?)"; exit 77
fi
used() { df -k --output=used "$dir" | tail -n 1 | tr -d ' '; }
"$bin" enospc "$dir"
# the failed saves left nothing: only the first checkpoint (a few KB) is there
u=$(used)
[ "$u" -lt 128 ] || { echo "FAIL: ${u} KB still used on the tmpfs after the failed saves"; du -a "$dir"; exit 1; }
echo "ok   tmpfs usage back to ${u} KB after the failed saves"
mount -o remount,ro "$dir"
"$bin" erofs "$dir"
echo "disk-full drills passed"
