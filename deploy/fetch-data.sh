#!/usr/bin/env bash
# Fetches the real text corpora rlhfd uses and converts them, into DIR
# (default: $RLHFD_DATA, else <repo>/data/dl; git-ignored, nothing is committed):
#
#   DIR/fortunes.txt       Debian's fortunes + fortunes-min (apt-get download + dpkg -x,
#                          nothing installed): every entry followed by a line "%",
#                          backspace overstrikes resolved, empty entries dropped
#   DIR/fortunes.bin       that text as a GPT-2 token shard, made by the project's own
#                          tokenizer: rlhfd tokenize --eot-between % (every fortune starts
#                          with <|endoftext|>); needs a built rlhfd ($RLHFD_BIN or build/rlhfd)
#   DIR/sentiment/         npm sentiment@5.0.2 (AFINN, test/fixtures/{imdb,yelp,amazon}.json)
#   DIR/vader-sentiment/   npm vader-sentiment@1.1.3
#
# Usage: deploy/fetch-data.sh [DIR]. Safe to re-run: finished steps are skipped.
# Exits non-zero with a one-line reason when a download or a step fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-${RLHFD_DATA:-$here/data/dl}}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

say() { echo "fetch-data: $*"; }
die() { echo "fetch-data: error: $*" >&2; exit 1; }
work="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# ---- fortunes -> fortunes.txt
fetch_fortunes() {
  local out="$dir/fortunes.txt"
  if [ -s "$out" ]; then say "fortunes.txt: present ($(wc -c <"$out") bytes), skipped"; return 0; fi
  command -v apt-get >/dev/null || die "apt-get not found (fortunes come from Debian's fortunes, fortunes-min)"
  command -v perl >/dev/null || die "perl not found (needed to clean the fortune files)"
  local debs="$work/debs"
  mkdir -p "$debs"
  # APT::Sandbox::User=root: as root apt would download as _apt, which cannot write here
  local apt=(apt-get -q -o APT::Sandbox::User=root download fortunes fortunes-min)
  say "apt-get download fortunes fortunes-min"
  if ! (cd "$debs" && "${apt[@]}" >/dev/null 2>"$work/apt.err"); then
    if [ "$(id -u)" -eq 0 ]; then # maybe a stale package index: refresh it once
      say "download failed, running apt-get update and retrying"
      apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null 2>>"$work/apt.err" || true
    fi
    (cd "$debs" && "${apt[@]}" >/dev/null 2>>"$work/apt.err") ||
      die "apt-get download fortunes fortunes-min failed: $(grep -m1 -E '^E:' "$work/apt.err" || tail -n1 "$work/apt.err")"
  fi
  local deb
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$work/root" || die "dpkg -x $deb failed"; done
  local src="$work/root/usr/share/games/fortunes"
  [ -d "$src" ] || die "the fortunes packages hold no usr/share/games/fortunes"
  # the fortune files: regular files without an extension (*.dat are strfile
  # indexes, *.u8 symlinks to the same files)
  local files=()
  mapfile -t files < <(find "$src" -maxdepth 1 -type f ! -name '*.*' | LC_ALL=C sort)
  ((${#files[@]})) || die "no fortune files in the packages"
  # One entry per document, each followed by "%": a backspace erases the
  # character before it (overstrike: "_\bX" underlines X, "X\bX" bolds it),
  # and empty entries (the files hold a few) are dropped.
  perl -CSD -e '
    local $/;
    my $n = 0;
    for my $file (@ARGV) {
      open(my $fh, "<:encoding(UTF-8)", $file) or die "$file: $!\n";
      my $text = <$fh>;
      close $fh;
      1 while $text =~ s/[^\x08\n]\x08//g;
      $text =~ s/\x08//g;
      for my $entry (split /^%\n/m, $text) {
        $entry =~ s/\n?\z/\n/;            # the last entry of a file may lack its newline
        next if $entry =~ /\A\s*\z/;
        print $entry, "%\n";
        $n++;
      }
    }
    print STDERR "fetch-data: fortunes.txt: $n fortunes from ", scalar(@ARGV), " files\n";
  ' "${files[@]}" >"$work/fortunes.txt" || die "converting the fortune files failed"
  [ -s "$work/fortunes.txt" ] || die "fortunes.txt came out empty"
  mv "$work/fortunes.txt" "$out"
  say "fortunes.txt: $(wc -c <"$out") bytes"
}

# ---- npm packages: NAME@VERSION -> DIR/NAME
fetch_npm() {
  local spec="$1" dest="$dir/$2"
  if [ -f "$dest/.ok" ]; then say "$2/: present, skipped"; return 0; fi
  command -v npm >/dev/null || die "npm not found (needed for $spec; run deploy/install-deps.sh)"
  local tmp="$work/npm-$2"
  mkdir -p "$tmp"
  say "npm pack $spec"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null 2>"$tmp.err") ||
    die "npm pack $spec failed: $(tail -n1 "$tmp.err")"
  (cd "$tmp" && tar xzf ./*.tgz) || die "unpacking $spec failed"
  [ -d "$tmp/package" ] || die "$spec: no package/ folder in the tarball"
  rm -rf "$dest"
  mv "$tmp/package" "$dest"
  touch "$dest/.ok"
  say "$2/: $(find "$dest" -type f | wc -l) files"
}

# ---- fortunes.txt -> fortunes.bin with the project's tokenizer
make_shard() {
  local txt="$dir/fortunes.txt" bin="$dir/fortunes.bin"
  if [ -s "$bin" ] && [ "$bin" -nt "$txt" ]; then say "fortunes.bin: up to date, skipped"; return 0; fi
  local rlhfd="${RLHFD_BIN:-$here/build/rlhfd}"
  if [ ! -x "$rlhfd" ]; then
    say "fortunes.bin: not made, no rlhfd at $rlhfd (build it, or set RLHFD_BIN, and re-run)"
    return 0
  fi
  "$rlhfd" tokenize --eot-between % --in "$txt" --out "$bin" || die "rlhfd tokenize failed on $txt"
}

fetch_fortunes
fetch_npm sentiment@5.0.2 sentiment
fetch_npm vader-sentiment@1.1.3 vader-sentiment
make_shard
say "ok (data in $dir)"
