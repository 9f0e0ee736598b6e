# lib.sh - helpers for the Slurm tests (sourced): bring a local cluster up in
# a work dir, submit the sbatch template, poll job states with timeouts.
# Every Slurm client call is wrapped in `timeout`: a dead slurmctld makes them
# block forever.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
template="$root/deploy/slurm/rlhfd.sbatch"

# Exit 77 (skipped) with a reason unless a local cluster can run here.
slurm_require() {
  [ "$(id -u)" = 0 ] || { echo "skip: the local Slurm cluster needs root"; exit 77; }
  local c
  for c in slurmctld slurmd sbatch scontrol squeue munged; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || {
      echo "skip: $c not installed (bash deploy/install-deps.sh --with-slurm)"; exit 77; }
  done
}

# slurm_up DIR: starts the cluster with state in DIR and exports SLURM_CONF.
# The caller's EXIT trap should call slurm_down.
slurm_up() {
  SLURM_DIR="$1"
  local rc=0
  bash "$root/deploy/slurm/local-up.sh" --dir "$SLURM_DIR" || rc=$?
  [ "$rc" = 3 ] && { echo "skip: local-up.sh cannot run here"; exit 77; }
  [ "$rc" = 0 ] || { echo "FAIL local-up.sh exited $rc"; exit 1; }
  # shellcheck disable=SC1091
  source "$SLURM_DIR/env.sh"
}
slurm_down() { [ -n "${SLURM_DIR:-}" ] && bash "$root/deploy/slurm/local-down.sh" --dir "$SLURM_DIR"; }

# job_field ID KEY: one field of `scontrol show job -o ID` (e.g. JobState).
job_field() { timeout 10 scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

# wait_state ID SECONDS STATE...: polls until the job is in one of STATEs;
# returns 1 (and prints the state) on timeout.
wait_state() {
  local id="$1" secs="$2" st i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    st=$(job_field "$id" JobState)
    for want in "$@"; do [ "$st" = "$want" ] && return 0; done
    sleep 0.2
  done
  echo "timeout after ${secs}s waiting for job $id to be $* (it is '${st:-unknown}')"
  return 1
}

# A requeued job waits ~2 min (Slurm's BeginTime after a requeue): start it now.
hurry() { timeout 10 scontrol update JobId="$1" StartTime=now >/dev/null 2>&1 || true; }

# wait_file PATH SECONDS [JOB]: until PATH exists; gives up early when JOB
# has ended.
wait_file() {
  local i st
  for ((i = 0; i < $2 * 5; i++)); do
    [ -e "$1" ] && return 0
    if [ -n "${3:-}" ] && ((i % 5 == 4)); then
      st=$(job_field "$3" JobState)
      case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)
        echo "job $3 ended ($st) before $1 appeared"; return 1 ;;
      esac
    fi
    sleep 0.2
  done
  echo "timeout after $2s waiting for $1"
  return 1
}
