#!/usr/bin/env bash
# The main job (README): set up everything on a fresh Debian 12 machine, then
# pretrain a small GPT on real text, evaluate it on held-out text and sample
# from it with the KV-cache generator.
#   deploy/demo.sh [OUT_DIR]      (default runs/demo)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-runs/demo}"

bash deploy/install-deps.sh
bash deploy/fetch-data.sh "$root/data/dl"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
bash deploy/prepare-data.sh build/rlhfd "$root/data/dl"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
echo "== pretrain (deploy/configs/pretrain.ini) -> $out/pretrain"
build/rlhfd pretrain --config deploy/configs/pretrain.ini --set run.dir="$out/pretrain" --overwrite

echo "== held-out loss (fortunes_val)"
build/rlhfd eval --model "$out/pretrain" --tokens data/dl/fortunes_val.bin --seq 128 | tail -n 1

echo "== samples"
for prompt in "The meaning of life is" "A programmer" "Never trust"; do
  build/rlhfd generate --model "$out/pretrain" --prompt "$prompt" --max-new-tokens 40 \
    --temperature 0.8 --top-k 40 --seed 7
  echo "--"
done
echo "== done: checkpoints and metrics.jsonl in $out/pretrain"
