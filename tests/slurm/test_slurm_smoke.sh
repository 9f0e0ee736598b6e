#!/usr/bin/env bash
# Slurm smoke test on a real single-node cluster on localhost
# (deploy/slurm/local-up.sh), through the sbatch template
# (deploy/slurm/rlhfd.sbatch) with 2 ranks of signal_probe (a stand-in for a
# training loop: collective stop, "checkpoint", exit 75):
#   1. --signal=B:USR1 path: `scancel --batch --signal=USR1` reaches the
#      script, which forwards USR1 to srun; both ranks stop at the same step,
#      exit 75; the template requeues the job; the second run completes (0).
#   2. `scancel --signal=TERM` (the ranks directly): graceful stop, exit 75;
#      RLHFD_MAX_REQUEUES=0 so the job ends FAILED with exit code 75.
#   3. RLHFD_LAUNCHER=mpirun: mpirun inside the allocation, 2 ranks, completes.
#   4. local-up.sh is idempotent; local-down.sh stops every daemon it started.
# Skipped (exit 77) where Slurm is not installed or we are not root.
#   test_slurm_smoke.sh path/to/signal_probe
set -uo pipefail
probe="$(readlink -f "$1")"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
slurm_require
work=$(mktemp -d /tmp/rlhfd-slurm-XXXXXX)
trap 'slurm_down >/dev/null; rm -rf "$work"' EXIT
fail=0
check() { if eval "$1"; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }

slurm_up "$work/cluster"
check 'bash "$root/deploy/slurm/local-up.sh" --dir "$work/cluster" | grep -q "already up"' "local-up.sh again: already up, nothing restarted"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
sb=(timeout 30 sbatch --parsable --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 --time=5)
cd "$work"

echo "== 1. USR1 to the batch script (--signal=B:USR1@...): checkpoint, exit 75, requeue, run again"
mkdir -p o1
j=$(RLHFD_BIN="$probe" RLHFD_RUN_DIR="$work/run1" "${sb[@]}" -J smoke1 "$template" "$work/o1" 60)
check '[ -n "$j" ]' "sbatch: job $j"
wait_file o1/ready 60 "$j" || { tail "$work"/*.out; exit 1; }
timeout 10 scancel --batch --signal=USR1 "$j"
wait_state "$j" 60 PENDING || fail=1
check '[ "$(job_field "$j" Restarts)" = 1 ]' "requeued by the template (Restarts=$(job_field "$j" Restarts))"
check 'cmp -s o1/rank0.txt o1/rank1.txt && grep -q SIGUSR1 o1/rank0.txt' "both ranks stopped at the same step: $(cat o1/rank0.txt 2>/dev/null)"
hurry "$j"
wait_state "$j" 90 COMPLETED FAILED CANCELLED || fail=1
check '[ "$(job_field "$j" JobState)" = COMPLETED ] && [ "$(job_field "$j" ExitCode)" = 0:0 ]' "second run completed (state $(job_field "$j" JobState), exit $(job_field "$j" ExitCode))"
log="smoke1-$j.out"
check 'grep -q "srun exited with 75" "$log" && grep -q "srun exited with 0" "$log" && grep -q "run 2 on" "$log"' "one log holds both runs (75, requeue, then 0)"
check 'grep -q "^RLHFD_SOCKET=$work/run1/status.sock" run1/slurm-job.env' "run dir has slurm-job.env with the status socket"
check 'grep -q "rlhfctl status --socket $work/run1/status.sock" "$log"' "the log says how to query the status socket"

echo "== 2. scancel --signal=TERM: the ranks stop gracefully; no requeue allowed"
mkdir -p o2
j=$(RLHFD_BIN="$probe" RLHFD_RUN_DIR="$work/run2" RLHFD_MAX_REQUEUES=0 "${sb[@]}" -J smoke2 "$template" "$work/o2" 600)
wait_file o2/ready 60 "$j" || { tail "$work"/*.out; exit 1; }
timeout 10 scancel --signal=TERM "$j"
wait_state "$j" 60 FAILED COMPLETED CANCELLED || fail=1
check '[ "$(job_field "$j" ExitCode)" = 75:0 ]' "job exit code $(job_field "$j" ExitCode) (want 75:0)"
check 'cmp -s o2/rank0.txt o2/rank1.txt && grep -q SIGTERM o2/rank0.txt' "both ranks stopped at the same step on SIGTERM: $(cat o2/rank0.txt 2>/dev/null)"

echo "== 3. RLHFD_LAUNCHER=mpirun inside the allocation"
mkdir -p o3
j=$(RLHFD_BIN="$probe" RLHFD_LAUNCHER=mpirun RLHFD_RUN_DIR="$work/run3" "${sb[@]}" -J smoke3 "$template" "$work/o3" 10)
wait_state "$j" 60 COMPLETED FAILED CANCELLED || fail=1
check '[ "$(job_field "$j" JobState)" = COMPLETED ] && grep -q "mpirun exited with 0" "smoke3-$j.out"' "2 ranks under mpirun completed ($(job_field "$j" JobState))"

echo "== 4. local-down.sh"
pids=$(cat "$work/cluster/run/"slurm*.bg.pid 2>/dev/null)
slurm_down
alive=0; for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
check '[ "$alive" = 0 ] && [ -n "$pids" ]' "slurmctld and slurmd stopped (pids $(echo $pids))"
check 'bash "$root/deploy/slurm/local-down.sh" --dir "$work/cluster" >/dev/null' "local-down.sh twice is fine"
SLURM_DIR=""

if ((fail)); then echo "--- job logs"; tail -n 30 "$work"/*.out; tail -n 20 "$work"/cluster/log/*; exit 1; fi
echo "slurm smoke test: all ok"
