#!/usr/bin/env python3
"""deploy/make-review-data.py on a copy of npm sentiment's review fixtures:
the demonstrations and prompts it writes, the split, idempotence, bad input.
Exit 77 (skip) when the fixtures have not been fetched."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

SRC = os.environ.get("RLHFD_SRC", ".")
SCRIPT = os.path.join(SRC, "deploy/make-review-data.py")
FIXTURES = os.path.join(SRC, "data/dl/sentiment/test/fixtures")
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f]


def main():
    if not os.path.exists(os.path.join(FIXTURES, "imdb.json")):
        print("SKIP: %s missing: run deploy/fetch-data.sh" % FIXTURES)
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="test_review_data.")
    try:
        fx = os.path.join(tmp, "sentiment/test/fixtures")
        os.makedirs(fx)
        sentences = []
        for name in ("imdb", "yelp", "amazon"):
            shutil.copy(os.path.join(FIXTURES, name + ".json"), fx)
            with open(os.path.join(fx, name + ".json")) as f:
                sentences += [" ".join(r["text"].split()) for r in json.load(f)]
        r = subprocess.run([sys.executable, SCRIPT, tmp], capture_output=True, text=True)
        check(r.returncode == 0, "exit %d: %s" % (r.returncode, r.stderr))
        out = {k: read_jsonl(os.path.join(tmp, "reviews_%s.jsonl" % k))
               for k in ("sft_train", "sft_val", "prompts_train", "prompts_val")}
        known = set(sentences)
        for split in ("train", "val"):
            for d in out["sft_" + split]:
                n = len(d["prompt"].split(" "))
                check(3 <= n <= 5, "prompt of 3-5 words: %r" % d["prompt"])
                check(d["response"].startswith(" ") and not d["response"].startswith("  "),
                      "response with one leading space: %r" % d["response"])
                check(d["prompt"] + d["response"] in known, "prompt + response is a sentence: %r" % d)
                check(len((d["prompt"] + d["response"]).split()) <= 40, "at most 40 words")
                check(len(d["response"].split()) >= 2, "response of 2+ words")
        n_train, n_val = len(out["sft_train"]), len(out["sft_val"])
        frac = n_val / float(n_train + n_val)
        print("sft train %d val %d (val %.3f); prompts train %d val %d" %
              (n_train, n_val, frac, len(out["prompts_train"]), len(out["prompts_val"])))
        check(n_train + n_val > 2000, "most sentences make demonstrations (%d)" % (n_train + n_val))
        check(0.06 < frac < 0.14, "~10%% held out: %.3f" % frac)
        train_text = {d["prompt"] + d["response"] for d in out["sft_train"]}
        val_text = {d["prompt"] + d["response"] for d in out["sft_val"]}
        check(not (train_text & val_text), "no sentence on both sides")
        pt = [p["prompt"] for p in out["prompts_train"]]
        pv = [p["prompt"] for p in out["prompts_val"]]
        check(len(pt) == len(set(pt)) and len(pv) == len(set(pv)), "prompts are unique")
        check(not (set(pt) & set(pv)), "val prompts are held out")
        check(len(pv) > 100 and len(pt) > 1500, "prompt counts %d %d" % (len(pt), len(pv)))
        check(all(set(p) == {"prompt"} and p["prompt"] for p in out["prompts_train"]), "prompt records")
        # idempotent: a second run changes nothing
        before = {k: os.stat(os.path.join(tmp, "reviews_%s.jsonl" % k)).st_mtime_ns for k in out}
        r2 = subprocess.run([sys.executable, SCRIPT, tmp], capture_output=True, text=True)
        check(r2.returncode == 0 and r2.stdout.count("(unchanged)") == 4, "second run: %r" % r2.stdout)
        after = {k: os.stat(os.path.join(tmp, "reviews_%s.jsonl" % k)).st_mtime_ns for k in out}
        check(before == after, "files untouched by the second run")
        # bad input: a clear error naming the file
        with open(os.path.join(fx, "yelp.json"), "w") as f:
            f.write("[{\"text\": ")
        r3 = subprocess.run([sys.executable, SCRIPT, tmp], capture_output=True, text=True)
        check(r3.returncode != 0 and "yelp.json" in r3.stderr, "bad fixture: %d %r" % (r3.returncode, r3.stderr))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed" % len(failures), file=sys.stderr)
        sys.exit(1)
    print("review data: all checks passed")


if __name__ == "__main__":
    main()
