#!/usr/bin/env bash
# Stops the cluster local-up.sh started in DIR: cancels its jobs (and waits
# for them, so no job step outlives the daemons), then stops slurmd,
# slurmctld and - only if local-up.sh started it - munged, each by the PID
# recorded in DIR/run (TERM, then KILL after 10 s). Safe to run twice or on
# a dir with nothing running.
#   deploy/slurm/local-down.sh [--dir DIR]    (default as local-up.sh)
set -uo pipefail
S="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/rlhfd-slurm}"
while (($#)); do
  case "$1" in
    --dir) S="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-down.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[ -d "$S/run" ] || { echo "local-down.sh: nothing to stop in $S"; exit 0; }
export SLURM_CONF="$S/etc/slurm.conf" PATH="$PATH:/usr/sbin"

alive() { [ -f "$S/run/$1.pid" ] && kill -0 "$(cat "$S/run/$1.pid")" 2>/dev/null; }
if alive slurmctld.bg && [ -f "$SLURM_CONF" ]; then
  timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 50); do   # <= 10 s for the jobs to end
    [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.2
  done
fi
for f in slurmd.bg slurmctld.bg munged; do
  [ -f "$S/run/$f.pid" ] || continue
  p=$(cat "$S/run/$f.pid")
  if kill -TERM "$p" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then echo "$f ($p) still alive after 10 s: KILL"; kill -KILL "$p"; fi
    echo "stopped $f (pid $p)"
  fi
  rm -f "$S/run/$f.pid"
done
exit 0
