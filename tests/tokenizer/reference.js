// reference.js - the reference GPT-2 encoder (npm gpt-3-encoder@1.1.4, the
// package deploy/install-deps.sh fetches) for the tokenizer tests.
//
//   node reference.js corpus TEXT SHARD   encode the file TEXT (read as node reads
//                                         UTF-8) and compare with the shard rlhfd wrote
//   node reference.js write-cases DIR     write the hard cases: DIR/NAME.txt (the bytes
//                                         rlhfd gets) and DIR/NAME.json (reference ids)
//   node reference.js check-cases DIR     compare DIR/NAME.json with DIR/NAME.bin
//   node reference.js classes OUT         the regex class (L N S O) of every code point
//
// Exit status 0 = identical, 1 = a difference (the first one is printed).
'use strict';
const fs = require('fs');
const path = require('path');

const encoderDir = process.env.RLHFD_TOKENIZER ||
    path.join(process.env.RLHFD_SRC || path.join(__dirname, '../..'), 'data/dl/gpt-3-encoder');
const { encode, decode } = require(path.join(encoderDir, 'index.js'));

function fail(msg) {
  console.error('reference.js: ' + msg);
  process.exit(1);
}

function readShard(file) {
  const b = fs.readFileSync(file);
  if (b.length < 1024 || b.readInt32LE(0) !== 20240520 || b.readInt32LE(4) !== 1) fail(`${file}: not a token shard`);
  const n = b.readInt32LE(8);
  if (b.length !== 1024 + 2 * n) fail(`${file}: header says ${n} tokens but the file is ${b.length} bytes`);
  const ids = new Array(n);
  for (let i = 0; i < n; i++) ids[i] = b.readUInt16LE(1024 + 2 * i);
  return ids;
}

// Compares id arrays; on a difference prints where, with context, and fails.
function compareIds(what, ref, ours) {
  const n = Math.min(ref.length, ours.length);
  let i = 0;
  while (i < n && ref[i] === ours[i]) i++;
  if (i === n && ref.length === ours.length) return;
  const lo = Math.max(0, i - 8);
  console.error(`${what}: first difference at token ${i} (reference has ${ref.length} tokens, rlhfd ${ours.length})`);
  console.error(`  reference ids[${lo}..]: ${JSON.stringify(ref.slice(lo, i + 8))}`);
  console.error(`  rlhfd     ids[${lo}..]: ${JSON.stringify(ours.slice(lo, i + 8))}`);
  console.error(`  text near there: ${JSON.stringify(decode(ref.slice(Math.max(0, i - 20), i + 10)))}`);
  process.exit(1);
}

// Encode.js's encode() concatenates arrays once per word, which is quadratic:
// the whole 2.6 MB fortunes corpus takes it ~25 minutes. So the corpus is
// encoded in pieces cut where the regex always cuts too: before a character
// c at p with s[p-1] == '\n' and both s[p-2] and c printable ASCII
// non-spaces. There the '\n' is its own match in the whole text (a lone
// whitespace before a non-space: "\s+"), and alone at the end of the piece
// ("\s+(?!\S)" at the end), no earlier match can look past it (every
// alternative stops at whitespace), and the match at p starts fresh. The
// self-check in corpus() tests this on the corpus' first 64K characters.
function isNeutralCut(s, p) {
  if (p < 2 || p >= s.length || s.charCodeAt(p - 1) !== 10) return false;
  const a = s.charCodeAt(p - 2), c = s.charCodeAt(p);
  return a > 0x20 && a < 0x7f && c > 0x20 && c < 0x7f;
}

function encodeInPieces(text, pieceChars) {
  const out = [];
  let start = 0;
  while (start < text.length) {
    let end = Math.min(text.length, start + pieceChars);
    while (end < text.length && !isNeutralCut(text, end)) end++;
    for (const id of encode(text.slice(start, end))) out.push(id);
    start = end;
  }
  return out;
}

function corpus(textFile, shardFile) {
  const text = fs.readFileSync(textFile, 'utf8');
  let head = Math.min(text.length, 65536);
  while (head < text.length && !isNeutralCut(text, head)) head++;
  const t0 = Date.now();
  const whole = encode(text.slice(0, head));
  const t1 = Date.now();
  compareIds(`self-check: encoding the first ${head} characters in pieces`, whole,
             encodeInPieces(text.slice(0, head), 2048));
  const ref = encodeInPieces(text, 4096);
  const t2 = Date.now();
  compareIds(`${textFile} -> ${shardFile}`, ref, readShard(shardFile));
  console.log(`reference.js: ${textFile}: ${text.length} characters, ${ref.length} tokens identical ` +
              `(reference: ${t2 - t1} ms in pieces; ${t1 - t0} ms for the first ${head} characters whole)`);
}

// ---- hard cases

// Deterministic PRNG (mulberry32) for the fuzz cases.
function rng(seed) {
  return () => {
    seed |= 0;
    seed = (seed + 0x6D2B79F5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function fuzzText(seed, n) {
  const r = rng(seed);
  const pieces = [' ', '  ', '\t', '\n', '\r\n', '\u00a0', '\u3000', '\u2028', '\u0085', '\ufeff', "'s", "'S", "'ll",
                  "'", '"', ',', '",', '","', '},{"', '...', '<|endoftext|>', 'the', ' the', 'The', 'naïve', 'e\u0301',
                  '日本', '한국어', '👍🏽', '👨‍👩‍👧', '🏳️‍🌈', '123', '٣', 'Ⅻ', '½', '\u0000', '\u200d', 'x', 'Q', '-', '_',
                  '\ud800', '\udfff', '\u{10D4A}', '\u{2EBF0}', '\u0897'];
  let s = '';
  while (s.length < n) {
    if (r() < 0.3) s += String.fromCodePoint(Math.floor(r() * 0x30000)); // any code point, lone surrogates too
    else s += pieces[Math.floor(r() * pieces.length)];
  }
  return s;
}

function randomBytes(seed, n) {
  const r = rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r() < 0.5 ? 0x20 + Math.floor(r() * 0x5f) : Math.floor(r() * 256);
  return b;
}

// name -> a JS string (the file holds its UTF-8; lone surrogates become
// U+FFFD there, as TextEncoder makes them in the reference) or a Buffer
// (raw bytes, maybe invalid UTF-8; the reference gets node's decoding).
const CASES = {
  empty: '',
  ascii: 'Hello world! This is a test of the GPT-2 tokenizer, isn\'t it?\n',
  cjk: '日本語のテキストです。中文文本，繁體中文。한국어 텍스트입니다. 漢字かな交じり文',
  emoji_zwj: '👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🧑🏿‍🚀 astronaut, 👍🏻👍🏼👍🏽👍🏾👍🏿, 🇫🇷🇯🇵, ❤️‍🔥 #️⃣',
  combining: 'e\u0301 cafe\u0301 n\u0303o a\u0308\u0304 Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d ' +
             '\u0301start x\u20dd \u0915\u094d\u0937 \u0e01\u0e34\u0e19 ễ ǖ',
  whitespace: 'a \t b\r\n\r\nc\u00a0\u00a0d\u3000e  \n  f   \n\n\n\t\t x \u2028y\u2029z \u0085w \u180ev \ufeffu' +
              ' \u00a0\u00a0x \u200b\u200bq \u2000\u2001\u2002\u200a|\u202f\u205f trailing   ',
  whitespace_only: ' \t\n \u00a0 \r\n   ',
  trailing_spaces: 'line one   \nline two\t\t\nline three \u3000',
  leading_bom: '\ufeffhello \ufeff world',
  contractions: "I'm you're we've they'll he'd it's can't won't WE'RE SHE'S IT'S 'S 's'll 'ss ''s ' s 'd'd " +
                "rock'n'roll o'clock y'all 'tis 're've'm ’s l’été",
  digits: '0 12 123 1234 12345678901234567890 3.14159 1,000,000 -42 +7e10 0x1F 1st 2nd ١٢٣٤ ۱۲۳ ४२ Ⅻ ⅯⅭ ½ ¾ ²³ ① 〇',
  endoftext: 'hello<|endoftext|>world <|endoftext|> <|endoftext|><|endoftext|>\n<|endoftext|>',
  rank_key_quirk: '"," ",", "}," "]," ")," ".","\n"],[" \'),(\' ",,,,,,,," \',\' {"a":"b","c":"d"},{"e":"f"}' +
                  ' [1,2],[3] ",,",,"\n",,,,," "\'",\'" ",\'," ".,"',
  long_word: 'a'.repeat(700) + ' ' + 'ab'.repeat(300) + ' ' + '9'.repeat(400) + ' ' + '!?'.repeat(300),
  long_spaces: ' '.repeat(500) + 'x' + '\t'.repeat(200) + '\n'.repeat(100) + 'y' + ' \n'.repeat(100),
  mixed_scripts: 'Ελληνικά русский עברית العربية हिन्दी ไทย ქართული Հայերեն አማርኛ ᏣᎳᎩ 𐌰𐌱 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﬁ ﬀ',
  newer_unicode: 'new letters: \u0897 \u{10D4A}\u{10D4B} \u{2EBF0}\u{2EBF1} \u{11380}x \u{16D40} \u{1E5D0}',
  lone_surrogates: 'a\ud800b \udc00 x\ud83d\ude00y \ud83d \ud800\ud800 end\udfff',
  nul_and_controls: 'a\u0000b\u0001\u0007c\u001b[0m\u007f\u0080\u009f d',
  invalid_utf8: Buffer.from([0x61, 0xff, 0x62, 0x20, 0xc3, 0x28, 0x20, 0xed, 0xa0, 0x80, 0x20, 0xe2, 0x82, 0x41, 0x20,
                             0xf0, 0x9f, 0x98, 0x20, 0xe0, 0x80, 0x80, 0x20, 0xf4, 0x90, 0x80, 0x80, 0x20, 0xc0, 0xaf,
                             0x20, 0xf0, 0x9f, 0x98, 0x80, 0x80, 0x20, 0xf8, 0x88, 0x80, 0x80, 0x80, 0x20, 0xe2, 0x82]),
  fuzz_unicode_1: fuzzText(1, 20000),
  fuzz_unicode_2: fuzzText(2, 20000),
  fuzz_bytes: randomBytes(3, 20000),
  fuzz_punct: (() => {
    const r = rng(4), a = ' ",}{][).:\'!?-\n';
    let s = '';
    for (let i = 0; i < 20000; i++) s += a[Math.floor(r() * a.length)];
    return s;
  })(),
};

function writeCases(dir) {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, value] of Object.entries(CASES)) {
    const bytes = Buffer.isBuffer(value) ? value : Buffer.from(value, 'utf8');
    const text = Buffer.isBuffer(value) ? value.toString('utf8') : value;
    fs.writeFileSync(path.join(dir, name + '.txt'), bytes);
    fs.writeFileSync(path.join(dir, name + '.json'), JSON.stringify(encode(text)));
  }
  console.log(Object.keys(CASES).join(' '));
}

function checkCases(dir) {
  let n = 0, tokens = 0;
  for (const name of Object.keys(CASES)) {
    const ref = JSON.parse(fs.readFileSync(path.join(dir, name + '.json'), 'utf8'));
    compareIds(`case ${name}`, ref, readShard(path.join(dir, name + '.bin')));
    n++;
    tokens += ref.length;
  }
  console.log(`reference.js: ${n} hard cases, ${tokens} tokens, all identical`);
}

function classes(out) {
  const b = Buffer.alloc(0x110000);
  const S = /^\s$/u, L = /^\p{L}$/u, N = /^\p{N}$/u;
  for (let cp = 0; cp < 0x110000; cp++) {
    const ch = String.fromCodePoint(cp);
    b[cp] = S.test(ch) ? 0x53 : L.test(ch) ? 0x4c : N.test(ch) ? 0x4e : 0x4f;
  }
  fs.writeFileSync(out, b);
}

const [mode, a, b] = process.argv.slice(2);
if (mode === 'corpus' && a && b) corpus(a, b);
else if (mode === 'write-cases' && a) writeCases(a);
else if (mode === 'check-cases' && a) checkCases(a);
else if (mode === 'classes' && a) classes(a);
else fail('usage: node reference.js corpus TEXT SHARD | write-cases DIR | check-cases DIR | classes OUT');
