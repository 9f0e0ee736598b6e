#!/usr/bin/env bash
# Launches rlhfd with Open MPI on one node or on several listed in a hostfile
# (clusters without Slurm), and stops it gracefully on SIGTERM.
#
#   deploy/mpirun.sh [options] -- build/rlhfd CMD ARGS...
#
#   --hosts FILE         Open MPI hostfile ("node1 slots=8" per line); without
#                        it, every rank runs on this machine
#   --ranks-per-host N   ranks on each host (default: 1 per GPU, else 1);
#                        --np defaults to hosts x N
#   --np N               total ranks (world size)
#   --tp T               tensor-parallel group size: adds --set parallel.tp=T
#                        (a tp group is T consecutive ranks, so keep
#                        ranks-per-host a multiple of T: tp traffic stays
#                        inside a node, dp traffic crosses nodes)
#   --threads N          OMP_NUM_THREADS per rank (default: cores / ranks per host)
#   --env VAR            also forward VAR to the ranks (repeatable); forwarded
#                        always: PATH, LD_LIBRARY_PATH, OMP_NUM_THREADS and
#                        every RLHFD_*, NCCL_*, CUDA_*, UCX_*, OMPI_MCA_* set here
#   --oversubscribe      allow more ranks than cores (tests, laptops)
#   --mpi-args "..."     extra mpirun options, e.g. "--mca btl_tcp_if_include eth0"
#   --dry-run            print the mpirun command and exit
#
# Stopping: rlhfd checkpoints and exits 75 (RLHFD_EXIT_RESUMABLE) on SIGUSR1.
# mpirun forwards SIGUSR1 to every rank, but a SIGTERM to mpirun kills the
# ranks within ~2 s (too soon for a checkpoint), so this script traps
# TERM/INT/USR1 and sends USR1 to mpirun; a second TERM/INT is passed on as
# TERM (stop now). Its exit code is mpirun's: 75 means "resume me with
# --resume auto". Ranks bind to nothing by default (each rank runs OpenMP
# threads); pass binding options in --mpi-args.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }

hosts="" rph="" np="" tp="" threads="" over=0 dry=0 mpi_args="" extra_env=()
while (($#)); do
  case "$1" in
    --hosts) hosts="$2"; shift 2 ;;
    --ranks-per-host) rph="$2"; shift 2 ;;
    --np) np="$2"; shift 2 ;;
    --tp) tp="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --env) extra_env+=("$2"); shift 2 ;;
    --oversubscribe) over=1; shift ;;
    --mpi-args) mpi_args="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "mpirun.sh: unknown option '$1' (the command comes after --)" >&2; usage 2 ;;
  esac
done
(($#)) || { echo "mpirun.sh: no command given (deploy/mpirun.sh [options] -- build/rlhfd CMD ...)" >&2; exit 2; }
isnum() { [[ "$1" =~ ^[1-9][0-9]*$ ]] || { echo "mpirun.sh: $2 must be a positive integer, got '$1'" >&2; exit 2; }; }

nhosts=1
if [ -n "$hosts" ]; then
  [ -r "$hosts" ] || { echo "mpirun.sh: $hosts: cannot read the hostfile" >&2; exit 2; }
  nhosts=$(grep -cvE '^[[:space:]]*(#|$)' "$hosts" || true)
  ((nhosts > 0)) || { echo "mpirun.sh: $hosts: no hosts listed" >&2; exit 2; }
fi
if [ -z "$rph" ]; then
  gpus=0
  command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  rph=$((gpus > 0 ? gpus : 1))
  [ -n "$np" ] && [ -z "$hosts" ] && rph="$np"
fi
isnum "$rph" --ranks-per-host
[ -n "$np" ] || np=$((nhosts * rph))
isnum "$np" --np
if [ -n "$tp" ]; then
  isnum "$tp" --tp
  ((np % tp == 0)) || { echo "mpirun.sh: --np $np is not a multiple of --tp $tp" >&2; exit 2; }
  ((rph % tp == 0)) || echo "mpirun.sh: warning: $rph ranks per host is not a multiple of tp=$tp: tp groups will span hosts" >&2
fi
if [ -z "$threads" ]; then
  threads=${OMP_NUM_THREADS:-$(( $(nproc) / rph > 0 ? $(nproc) / rph : 1 ))}
fi
isnum "$threads" --threads
export OMP_NUM_THREADS="$threads"

cmd=(mpirun -np "$np" --bind-to none)
[ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)   # Open MPI refuses root without it
((over)) && cmd+=(--oversubscribe)
[ -n "$hosts" ] && cmd+=(--hostfile "$hosts" --map-by "ppr:${rph}:node")
vars=(PATH LD_LIBRARY_PATH OMP_NUM_THREADS "${extra_env[@]}")
while IFS='=' read -r name _; do
  case "$name" in RLHFD_*|NCCL_*|CUDA_*|UCX_*|OMPI_MCA_*) vars+=("$name") ;; esac
done < <(env)
for v in "${vars[@]}"; do [ -n "${!v+x}" ] && cmd+=(-x "$v"); done
# shellcheck disable=SC2206 # word splitting of the user's mpirun options is intended
[ -n "$mpi_args" ] && cmd+=($mpi_args)
cmd+=("$@")
[ -n "$tp" ] && cmd+=(--set "parallel.tp=$tp")

if ((dry)); then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
echo "mpirun.sh: $np ranks on $nhosts host(s), $rph per host, $threads threads each${tp:+, tp=$tp}" >&2

"${cmd[@]}" &
pid=$!
stops=0
stop() { # first TERM/INT/USR1: graceful (USR1 reaches every rank); then TERM
  stops=$((stops + 1))
  if ((stops == 1)); then
    echo "mpirun.sh: $1: asking rlhfd to checkpoint and stop (SIGUSR1 to the ranks)" >&2
    kill -USR1 "$pid" 2>/dev/null || true
  elif [ "$1" != USR1 ]; then
    echo "mpirun.sh: second $1: stopping now" >&2
    kill -TERM "$pid" 2>/dev/null || true
  fi
}
trap 'stop TERM' TERM
trap 'stop INT' INT
trap 'stop USR1' USR1
# wait returns early (status > 128) whenever a trapped signal arrives: wait
# again until mpirun itself has exited; the shell keeps its exit status.
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
wait "$pid" && rc=0 || rc=$?
exit "$rc"
