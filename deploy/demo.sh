#!/usr/bin/env bash
# The main job (README): set up everything on a fresh Debian 12 machine, then
# run the demo pipeline with the shipped configs:
#   pretrain a small GPT on real text (fortunes) -> SFT on review sentences
#   -> sample 4 responses per prompt, 5 simulated labelers rank them
#   -> reward model on the rankings
# and show samples from the SFT model and the reward model's scores of them.
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
build/rlhfd demo --out "$out"

echo
echo "== samples from the SFT model, scored by the reward model (higher = more positive, mean 0 on SFT samples)"
samples="$out/samples.jsonl"
: > "$samples"
for prompt in "The movie was" "I would not recommend" "The food here" "This phone is"; do
  build/rlhfd generate --model "$out/sft" --prompt "$prompt" --max-new-tokens 24 --temperature 0.8 \
    --top-k 40 --seed 7 --json | tail -n 1 |
    PROMPT="$prompt" python3 -c 'import json,os,sys; g=json.loads(sys.stdin.read()); p=os.environ["PROMPT"]; t=g["text"]; print(json.dumps({"prompt": p, "response": t[len(p):].split("<|endoftext|>")[0]}))' >> "$samples"
done
build/rlhfd score --model "$out/rm" --in "$samples" > "$out/samples.scores"
paste -d' ' "$out/samples.scores" "$samples" | python3 -c '
import json, sys
for line in sys.stdin:
    score, rec = line.split(" ", 1)
    r = json.loads(rec); print("%+.2f  %s|%s" % (json.loads(score)["reward"], r["prompt"], r["response"]))'
echo
echo "== summary ($out/summary.json)"
cat "$out/summary.json"
