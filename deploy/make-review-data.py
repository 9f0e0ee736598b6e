#!/usr/bin/env python3
"""make-review-data.py - the demo's review datasets (standard library only).

    deploy/make-review-data.py DATA_DIR

Reads the 3,000 labelled review sentences of npm sentiment@5.0.2
(DATA_DIR/sentiment/test/fixtures/{imdb,yelp,amazon}.json, [{text, class}])
and writes, in DATA_DIR:

  reviews_sft_train.jsonl / reviews_sft_val.jsonl
      demonstrations {"prompt", "response", "class", "source"}: prompt = the
      first 3-5 words of a sentence (3 + hash % 3), response = the rest with
      its leading space. Sentences of fewer than PROMPT+2 words or more than
      40 words are left out.
  reviews_prompts_train.jsonl / reviews_prompts_val.jsonl
      prompts {"prompt"}: the same prompts (first 3-5 words) of every
      sentence with at least 5 words, duplicates removed (for labelling and RL;
      the val prompts come from held-out sentences only and are not among the
      train prompts).

The split is ~90/10 by a hash (crc32) of the normalised sentence text, so it is
deterministic, independent of file order, and a sentence that appears twice
lands on one side only. Whitespace is normalised (runs -> one space, trimmed).
Idempotent: a file is rewritten only when its content changes.
"""
import json
import os
import sys
import zlib

SOURCES = ("imdb", "yelp", "amazon")
MAX_WORDS = 40
VAL_PER_10 = 1  # sentences with crc % 10 < VAL_PER_10 are held out


def normalise(text):
    return " ".join(text.split())


def prompt_words(text):
    return 3 + zlib.crc32(("prompt:" + text).encode("utf-8")) % 3


def is_val(text):
    return zlib.crc32(text.encode("utf-8")) % 10 < VAL_PER_10


def load_sentences(data_dir):
    seen = set()
    out = []
    for name in SOURCES:
        path = os.path.join(data_dir, "sentiment", "test", "fixtures", name + ".json")
        try:
            with open(path, encoding="utf-8") as f:
                records = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit("make-review-data: %s: %s (run deploy/fetch-data.sh %s)" % (path, e, data_dir))
        if not isinstance(records, list):
            sys.exit("make-review-data: %s: expected a JSON array of {text, class}" % path)
        for i, r in enumerate(records):
            if not isinstance(r, dict) or not isinstance(r.get("text"), str):
                sys.exit("make-review-data: %s: record %d has no string \"text\"" % (path, i))
            text = normalise(r["text"])
            if not text or text in seen:
                continue
            seen.add(text)
            out.append((text, r.get("class"), name))
    return out


def build(sentences):
    files = {k: [] for k in ("sft_train", "sft_val", "prompts_train", "prompts_val")}
    prompts_seen = {"train": set(), "val": set()}
    for text, cls, source in sentences:
        split = "val" if is_val(text) else "train"
        words = text.split(" ")
        n = prompt_words(text)
        if len(words) < 5:
            continue
        prompt = " ".join(words[:min(n, len(words) - 2)])
        if prompt not in prompts_seen[split]:
            prompts_seen[split].add(prompt)
            files["prompts_" + split].append({"prompt": prompt})
        if n + 2 <= len(words) <= MAX_WORDS:
            demo = {"prompt": " ".join(words[:n]), "response": " " + " ".join(words[n:]),
                    "class": cls, "source": source}
            files["sft_" + split].append(demo)
    # a held-out prompt is one the training side never shows
    files["prompts_val"] = [p for p in files["prompts_val"] if p["prompt"] not in prompts_seen["train"]]
    return files


def write_if_changed(path, lines):
    content = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in lines)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return False
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(content)
    os.replace(tmp, path)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make-review-data.py DATA_DIR")
    data_dir = sys.argv[1]
    files = build(load_sentences(data_dir))
    report = []
    for key, lines in files.items():
        path = os.path.join(data_dir, "reviews_%s.jsonl" % key)
        changed = write_if_changed(path, lines)
        report.append("%s %d%s" % (os.path.basename(path), len(lines), "" if changed else " (unchanged)"))
    print("make-review-data: " + ", ".join(report))


if __name__ == "__main__":
    main()
