#!/usr/bin/env bash
# Starts a real single-node Slurm cluster on localhost (munged + slurmctld +
# slurmd, no systemd), for trying the sbatch template and for the tests.
#
#   deploy/slurm/local-up.sh [--dir DIR] [--auth munge|none] [--cpus N] [--port P]
#   source DIR/env.sh        # exports SLURM_CONF for sbatch/squeue/scontrol
#   deploy/slurm/local-down.sh [--dir DIR]
#
#   --dir DIR    all state (config, spool, logs, pid files, env.sh); default
#                $SLURM_LOCAL_DIR, else ${TMPDIR:-/tmp}/rlhfd-slurm
#   --auth       munge (default; uses the system munged, started if needed)
#                or none
#   --cpus N     CPUs of the node (default: nproc)
#   --port P     slurmctld port (slurmd uses P+1); default: the first free
#                pair from 6817, so clusters of other users/dirs coexist
#   SLURM_EXTRA  extra slurm.conf lines (e.g. "KillWait=10")
#
# Idempotent: when DIR's cluster is already up and answering, it says so and
# exits 0; stale daemons of an earlier run of DIR are stopped first. Every
# client call has a timeout (a dead slurmctld makes sinfo block forever).
# Exit codes: 0 up, 1 failed to start (the daemons' last log lines are
# printed), 3 cannot run here (not root, Slurm or munge not installed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
S="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/rlhfd-slurm}"
AUTH=munge CPUS="" PORT=""
while (($#)); do
  case "$1" in
    --dir) S="$2"; shift 2 ;;
    --auth) AUTH="$2"; shift 2 ;;
    --cpus) CPUS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-up.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
case "$AUTH" in munge|none) ;; *) echo "local-up.sh: --auth munge|none" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "local-up.sh: needs root (slurmd runs jobs as any user)" >&2; exit 3; }
need=(slurmctld slurmd sinfo sbatch scontrol squeue)
[ "$AUTH" = munge ] && need+=(munged munge unmunge)
for c in "${need[@]}"; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || {
    echo "local-up.sh: $c not found: install slurmctld slurmd slurm-client munge (deploy/install-deps.sh --with-slurm)" >&2
    exit 3; }
done
export PATH="$PATH:/usr/sbin"
mkdir -p "$S"
S="$(cd "$S" && pwd)"
export SLURM_CONF="$S/etc/slurm.conf"

alive() { [ -f "$S/run/$1.pid" ] && kill -0 "$(cat "$S/run/$1.pid")" 2>/dev/null; }
state() { timeout 5 sinfo -h -o %t 2>/dev/null | head -n 1 || true; }

if alive slurmctld.bg && alive slurmd.bg && [ -f "$SLURM_CONF" ]; then
  case "$(state)" in
    idle|mix|alloc|comp)
      echo "slurm already up in $S; source $S/env.sh (SLURM_CONF=$SLURM_CONF)"
      exit 0 ;;
  esac
fi
# anything left from an earlier start of this dir goes first
bash "$here/local-down.sh" --dir "$S" >/dev/null 2>&1 || true

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
if [ -z "$PORT" ]; then
  PORT=6817
  while ! { port_free "$PORT" && port_free $((PORT + 1)); }; do
    PORT=$((PORT + 2))
    ((PORT < 6917)) || { echo "local-up.sh: no free port pair in 6817..6916" >&2; exit 1; }
  done
fi
CPUS="${CPUS:-$(nproc)}"

rm -rf "$S/etc" "$S/spool" "$S/log" "$S/run"
mkdir -p "$S"/{etc,spool/ctld,spool/d,log,run}
cat > "$SLURM_CONF" <<CONF
# written by deploy/slurm/local-up.sh
ClusterName=rlhfd
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/$AUTH
CredType=cred/$AUTH
MpiDefault=pmix
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$S/spool/ctld
SlurmdSpoolDir=$S/spool/d
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
${SLURM_EXTRA:-}
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=60 State=UP
CONF
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" > "$S/env.sh"

t0=$(date +%s%N)
if [ "$AUTH" = munge ]; then
  if ! timeout 5 bash -c 'munge -n | unmunge' >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
      mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 2>/dev/null
      chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- munged   # daemonizes; we stop it in local-down.sh
    for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$S/run/munged.pid"
    timeout 5 bash -c 'munge -n | unmunge' >/dev/null || { echo "local-up.sh: munge does not work" >&2; exit 1; }
  fi # else: a munged is already running (system or another cluster): share it, never stop it
fi
# In the foreground (-D) so the PIDs are ours; setsid: a session of their own,
# so they outlive the shell that started them like real daemons.
setsid slurmctld -D -f "$SLURM_CONF" </dev/null >"$S/log/slurmctld.out" 2>&1 &
echo $! > "$S/run/slurmctld.bg.pid"
setsid slurmd -D -N localhost -f "$SLURM_CONF" </dev/null >"$S/log/slurmd.out" 2>&1 &
echo $! > "$S/run/slurmd.bg.pid"

up=0
for _ in $(seq 150); do   # <= ~30 s; stops early when a daemon died (config error)
  kill -0 "$(cat "$S/run/slurmctld.bg.pid")" 2>/dev/null && kill -0 "$(cat "$S/run/slurmd.bg.pid")" 2>/dev/null || break
  [ "$(state)" = idle ] && { up=1; break; }
  sleep 0.2
done
if [ "$up" != 1 ]; then
  echo "local-up.sh: slurm did not come up (state '$(state)'); last log lines:" >&2
  tail -n 5 "$S"/log/*.out "$S"/log/*.log >&2 2>/dev/null || true
  bash "$here/local-down.sh" --dir "$S" >/dev/null 2>&1 || true
  exit 1
fi
echo "slurm up (auth/$AUTH, ports $PORT/$((PORT + 1)), $CPUS CPUs) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
echo "source $S/env.sh    # SLURM_CONF=$SLURM_CONF"
