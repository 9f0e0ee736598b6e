#!/usr/bin/env bash
# The main job (README): set up everything on a fresh Debian 12 machine, then
# run the demo pipeline with the shipped configs:
#   pretrain a small GPT on real text (fortunes) -> SFT on review sentences
#   -> sample 4 responses per prompt, 5 simulated labelers rank them
#   -> reward model on the rankings
#   -> RL fine-tuning of the SFT policy against the reward model (PPO by default)
# and show the held-out before/after table (gold = AFINN score the policy never
# trains on, reward = the RM, KL to the SFT policy), samples side by side, and
# the learning curves in OUT_DIR/curves.png.
#   deploy/demo.sh [OUT_DIR] [ALGO]   (default runs/demo, ppo; ALGO: ppo quark pg grpo rloo dpo all)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-runs/demo}"
algo="${2:-ppo}"

bash deploy/install-deps.sh
bash deploy/fetch-data.sh "$root/data/dl"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
bash deploy/prepare-data.sh build/rlhfd "$root/data/dl"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
# the table and the samples come before the summary line on stdout
build/rlhfd demo --out "$out" --algo "$algo" | sed '$d'
echo
echo "== summary: $out/summary.json; curves: $out/curves.png; per-iteration metrics: $out/<algo>/metrics.jsonl"
