#!/usr/bin/env bash
# Plots the learning curves of every RL stage of a demo run:
#   deploy/plot-curves.sh DIR [OUT.png]      (default DIR/curves.png)
# reads DIR/<algo>/metrics.jsonl (one JSON object per iteration, written by
# `rlhfd ppo|quark|pg|grpo|rloo|dpo|nlpo|ilql`) and draws three panels, one line per
# algorithm: reward (the RM score the policy trains on), gold (AFINN score it
# never sees) and KL to the SFT reference (nats per sequence), per iteration.
# Needs gnuplot (gnuplot-nox, installed by deploy/install-deps.sh); exits 3
# with a one-line reason when it is missing, so callers can warn and go on.
set -euo pipefail
dir="${1:?usage: deploy/plot-curves.sh DIR [OUT.png]}"
png="${2:-$dir/curves.png}"
command -v gnuplot >/dev/null || { echo "plot-curves: gnuplot is not installed (apt-get install gnuplot-nox)" >&2; exit 3; }
[ -d "$dir" ] || { echo "plot-curves: $dir: no such directory" >&2; exit 1; }

algos=()
for a in ppo quark pg grpo rloo dpo nlpo ilql; do
  [ -s "$dir/$a/metrics.jsonl" ] && algos+=("$a")
done
((${#algos[@]})) || { echo "plot-curves: no $dir/<algo>/metrics.jsonl to plot" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# metrics.jsonl -> "iter reward gold kl" columns (x = "iter", else "step"). Our own compact JSON writer
# puts every number as "key":value, so a regex per key is enough; a missing
# key becomes "NaN" (gnuplot skips it).
for a in "${algos[@]}"; do
  awk '
    function get(key,    s) {
      if (!match($0, "\"" key "\":[-+0-9.eE]+")) return "NaN"
      s = substr($0, RSTART, RLENGTH)
      sub(/^"[^"]*":/, "", s)
      return s
    }
    {
      x = get("iter"); if (x == "NaN") x = get("step")
      r = get("reward"); g = get("gold"); k = get("kl")
      if (x != "NaN" && (r != "NaN" || g != "NaN" || k != "NaN")) print x, r, g, k
    }
  ' "$dir/$a/metrics.jsonl" > "$tmp/$a.dat"
done
# offline algorithms (DPO, ILQL) log losses per step, not samples: nothing to draw
plotted=()
for a in "${algos[@]}"; do
  if [ -s "$tmp/$a.dat" ]; then plotted+=("$a"); else echo "plot-curves: $a logs no reward/gold/kl per iteration; left out" >&2; fi
done
((${#plotted[@]})) || { echo "plot-curves: no reward/gold/kl curves in $dir/<algo>/metrics.jsonl" >&2; exit 1; }
algos=("${plotted[@]}")

plot_panel() { # COLUMN TITLE
  local col="$1" cmd="" sep=""
  for a in "${algos[@]}"; do
    cmd+="$sep'$tmp/$a.dat' using 1:$col with lines lw 2 title '$a'"
    sep=", "
  done
  printf "set title '%s'\nplot %s\n" "$2" "$cmd"
}

{
  echo "set terminal pngcairo size 1500,460 font 'sans,10'"
  echo "set output '$png'"
  echo "set datafile missing 'NaN'"
  echo "set grid"
  echo "set key top left"
  echo "set xlabel 'iteration'"
  echo "set multiplot layout 1,3 title 'RL fine-tuning from the SFT policy ($dir)'"
  plot_panel 2 "reward (reward model score, trained on)"
  plot_panel 3 "gold (AFINN comparative, never trained on)"
  plot_panel 4 "KL to SFT (nats / sequence)"
  echo "unset multiplot"
} > "$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
echo "plot-curves: wrote $png (${algos[*]})" >&2
