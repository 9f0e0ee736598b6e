#!/usr/bin/env bash
# The Slurm preemption drill of issue 6, for any training command line:
#   1. a local single-node cluster (deploy/slurm/local-up.sh);
#   2. the straight run: sbatch the template with ARGS, wait until it ends;
#   3. the interrupted run (a fresh run dir): once its metrics.jsonl has
#      --stop-after lines and it has a checkpoint, read /status through its
#      socket, then `scancel --signal=TERM` (the ranks checkpoint and exit 75;
#      requeueing is off so this job ends there);
#   4. resubmit with the same run dir: the template adds --resume auto;
#   5. compare: metrics.jsonl identical to the straight run's (timing fields
#      left out), and the newest checkpoints' model (and optimizer) files
#      bit-identical.
#
#   tests/slurm/drill.sh [options] -- CMD ARGS...
#   e.g. tests/slurm/drill.sh -- pretrain --config deploy/configs/tiny.ini \
#            --set train.steps=40 --set train.checkpoint_every=5
#
#   --ranks N          ranks (default 2; the local node has nproc CPUs)
#   --stop-after K     metrics lines before the stop (default 3)
#   --timeout S        seconds each job may take (default 900)
#   --no-status        do not require the status socket
#   --keep DIR         work in DIR and keep it (default: a temp dir, removed)
#   RLHFD_BIN          the binary (default <repo>/build/rlhfd); rlhfctl is
#                      taken from beside it
# Exit: 0 all identical, 1 a difference or failure, 77 Slurm not available.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ranks=2 stop_after=3 job_timeout=900 need_status=1 keep=""
while (($#)); do
  case "$1" in
    --ranks) ranks="$2"; shift 2 ;;
    --stop-after) stop_after="$2"; shift 2 ;;
    --timeout) job_timeout="$2"; shift 2 ;;
    --no-status) need_status=0; shift ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "drill.sh: unknown option '$1' (the command comes after --)" >&2; exit 2 ;;
  esac
done
(($#)) || { echo "drill.sh: no command given" >&2; exit 2; }
slurm_require
bin="$(readlink -f "${RLHFD_BIN:-$root/build/rlhfd}")"
[ -x "$bin" ] || { echo "drill.sh: $bin is not built" >&2; exit 1; }
ctl="$(dirname "$bin")/rlhfctl"
if [ -n "$keep" ]; then work="$keep"; mkdir -p "$work"; work="$(cd "$work" && pwd)"
else work=$(mktemp -d /tmp/rlhfd-drill-XXXXXX); fi
cleanup() { slurm_down >/dev/null 2>&1; [ -n "$keep" ] || rm -rf "$work"; }
trap cleanup EXIT
fail=0
check() { if eval "$1"; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }
die() { echo "FAIL $*"; tail -n 40 "$work"/*.out 2>/dev/null; exit 1; }

slurm_up "$work/cluster"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RLHFD_BIN="$bin"
# The job runs in the submit directory: the repository, so relative paths in
# ARGS (configs, data) mean what they mean here.
cd "$root"
minutes=$(( (job_timeout + 59) / 60 + 1 ))
submit() { # NAME RUN_DIR [env...] -> job id
  local name="$1" run="$2"; shift 2
  env "$@" RLHFD_RUN_DIR="$run" timeout 30 sbatch --parsable --gpus-per-node=0 --ntasks-per-node="$ranks" \
    --cpus-per-task=1 --time="$minutes" -J "$name" -o "$work/%x-%j.out" "$template" "${ARGS[@]}"
}
ARGS=("$@")
lines() { [ -f "$1/metrics.jsonl" ] && wc -l < "$1/metrics.jsonl" || echo 0; }
newest() { ls -d "$1"/ckpt-[0-9]* 2>/dev/null | grep -v '\.' | sort | tail -n 1; }

echo "== straight run"
t0=$SECONDS
j=$(submit straight "$work/straight") || die "sbatch failed"
wait_state "$j" "$job_timeout" COMPLETED FAILED CANCELLED TIMEOUT || die "straight run did not end"
[ "$(job_field "$j" ExitCode)" = 0:0 ] || die "straight run: exit code $(job_field "$j" ExitCode)"
echo "ok   straight run: $(lines "$work/straight") metrics lines in $((SECONDS - t0)) s"

echo "== interrupted run"
j=$(submit interrupted "$work/resumed" RLHFD_MAX_REQUEUES=0) || die "sbatch failed"
for ((i = 0; i < job_timeout * 5; i++)); do
  (($(lines "$work/resumed") >= stop_after)) && [ -n "$(newest "$work/resumed")" ] && break
  case "$(job_field "$j" JobState)" in COMPLETED|FAILED|CANCELLED|TIMEOUT) die "the run ended before it could be stopped";; esac
  sleep 0.2
done
sock="$work/resumed/status.sock"
if [ -S "$sock" ]; then
  if [ -x "$ctl" ]; then status=$(timeout 10 "$ctl" status --socket "$sock" --json 2>&1)
  else status=$(timeout 10 curl -s --unix-socket "$sock" http://rlhfd/status 2>&1); fi
  echo "     /status: $(echo "$status" | head -c 300)"
  check '[[ "$status" == *"\"step\""* ]]' "/status answers during the run, with the step"
elif ((need_status)); then
  echo "FAIL no status socket at $sock"; fail=1
fi
at=$(lines "$work/resumed")
timeout 10 scancel --signal=TERM "$j"
wait_state "$j" 300 COMPLETED FAILED CANCELLED TIMEOUT || die "the stopped run did not end"
check '[ "$(job_field "$j" ExitCode)" = 75:0 ]' "stopped with exit code $(job_field "$j" ExitCode) (want 75:0) after >= $at metrics lines"
ck=$(newest "$work/resumed")
check '[ -n "$ck" ]' "checkpoint left: ${ck##*/}"

echo "== resumed run (--resume auto)"
j=$(submit resumed "$work/resumed") || die "sbatch failed"
wait_state "$j" "$job_timeout" COMPLETED FAILED CANCELLED TIMEOUT || die "resumed run did not end"
check '[ "$(job_field "$j" ExitCode)" = 0:0 ]' "resumed run completed (exit $(job_field "$j" ExitCode))"
check 'grep -q "resum" "$work/resumed-$j.out"' "its log says it resumed"

echo "== compare"
# Lines equal as JSON once the fields that measure time are left out.
cmp_out=$(python3 - "$work/straight/metrics.jsonl" "$work/resumed/metrics.jsonl" <<'PY'
import json, re, sys
timing = re.compile(r'(^|_)(ms|sec|secs|seconds|time|eta|elapsed|wall|timestamp)$|per_s$|^t_|^ms_')
def rows(p):
    out = []
    for line in open(p):
        o = json.loads(line)
        out.append({k: v for k, v in o.items() if not timing.search(k)})
    return out
a, b = rows(sys.argv[1]), rows(sys.argv[2])
for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
        keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
        print(f"line {i + 1} differs in {keys}: straight {[x.get(k) for k in keys]} resumed {[y.get(k) for k in keys]}")
        sys.exit(1)
if len(a) != len(b):
    print(f"straight has {len(a)} lines, resumed {len(b)}"); sys.exit(1)
print(f"{len(a)} lines identical")
PY
) && rc=0 || rc=$?
check '[ "$rc" = 0 ]' "metrics.jsonl: $cmp_out"
a=$(newest "$work/straight") b=$(newest "$work/resumed")
check '[ "${a##*/}" = "${b##*/}" ]' "same final checkpoint step (${a##*/} vs ${b##*/})"
for f in model.safetensors optimizer.safetensors; do
  [ -f "$a/$f" ] || continue
  check 'cmp -s "$a/$f" "$b/$f"' "final $f bit-identical"
done
((fail)) && { echo "--- logs in $work"; tail -n 20 "$work"/*.out; exit 1; }
echo "drill: resume after scancel --signal=TERM is exact"
