#!/usr/bin/env bash
# Tokenizes the fetched corpora into llm.c token shards (idempotent).
#   deploy/prepare-data.sh RLHFD_BINARY DATA_DIR
# Makes DATA_DIR/fortunes.bin (all fortunes) and a document-level split:
# fortunes_train.bin (19 of every 20 fortunes) and fortunes_val.bin (the 20th).
set -euo pipefail
bin="${1:?usage: prepare-data.sh RLHFD_BINARY DATA_DIR}"
dir="${2:?usage: prepare-data.sh RLHFD_BINARY DATA_DIR}"
src="$dir/fortunes.txt"
[ -f "$src" ] || { echo "prepare-data: $src missing: run deploy/fetch-data.sh $dir" >&2; exit 1; }

tokenize() { # TEXT SHARD
  if [ ! -f "$2" ] || [ "$1" -nt "$2" ]; then
    "$bin" tokenize --in "$1" --out "$2" --eot-between %
  fi
}
if [ ! -f "$dir/fortunes_val.txt" ] || [ "$src" -nt "$dir/fortunes_val.txt" ]; then
  # documents are separated by a line holding only '%'
  awk -v train="$dir/fortunes_train.txt.tmp" -v val="$dir/fortunes_val.txt.tmp" '
    BEGIN { doc = 0 }
    $0 == "%" { doc++; print > ((doc - 1) % 20 == 19 ? val : train); next }
    { print > (doc % 20 == 19 ? val : train) }' "$src"
  mv "$dir/fortunes_train.txt.tmp" "$dir/fortunes_train.txt"
  mv "$dir/fortunes_val.txt.tmp" "$dir/fortunes_val.txt"
fi
tokenize "$src" "$dir/fortunes.bin"
tokenize "$dir/fortunes_train.txt" "$dir/fortunes_train.bin"
tokenize "$dir/fortunes_val.txt" "$dir/fortunes_val.bin"
echo "prepare-data: shards in $dir: fortunes.bin fortunes_train.bin fortunes_val.bin"
# the demo's review data (demonstrations and prompts) from npm sentiment's fixtures
python3 "$(dirname "$0")/make-review-data.py" "$dir"
