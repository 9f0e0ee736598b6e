#!/usr/bin/python3
"""End-to-end tests of `rlhfd rm` and `rlhfd score`.

    test_rm_cli.py cli    a tiny RM from random init on a few rankings/pairs:
                          summary, metrics, checkpoint (head + offset), offset
                          = mean raw reward on the norm samples, determinism,
                          `score` format and order, bad input -> PATH:LINE
    test_rm_cli.py learn  rankings of real review sentences
                          (data/dl/sentiment/test/fixtures/*.json) by their
                          AFINN-165 score: a tiny RM from random init must
                          reach held-out pairwise accuracy > 0.6 and, scored
                          with `rlhfd score`, agree with AFINN on pairs of
                          held-out sentences more often than not (exit 77
                          when deploy/fetch-data.sh has not been run)

Needs RLHFD_BIN (ctest sets it). Standard library only.
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ.get("RLHFD_BIN")
SRC = os.environ.get("RLHFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
SKIP = 77
failures = []

# a tiny model from random init (the GPT-2 vocabulary: the RM reads BPE tokens)
TINY = ["model.layers=1", "model.heads=2", "model.embd=32", "model.vocab=50257", "model.ctx=32",
        "train.threads=1", "train.log_every=1", "train.warmup=0"]


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(args, expect=0):
    res = subprocess.run([BIN] + args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if expect is not None and res.returncode != expect:
        print(f"command {' '.join(args)} exited {res.returncode}, expected {expect}\n"
              f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-2000:]}")
    return res


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def rm_train(d, name, train, extra=(), expect=0, val=None, skip_bad=False):
    args = ["rm", "--set", f"rm.train={train}", "--set", f"run.dir={d}/{name}"]
    if val:
        args += ["--set", f"rm.val={val}"]
    for s in TINY + list(extra):
        args += ["--set", s]
    if skip_bad:
        args.append("--skip-bad")
    return run(args, expect)


def scores(res):
    return [json.loads(line)["reward"] for line in res.stdout.splitlines()]


def one_line_error(res, *needles):
    lines = [l for l in res.stderr.strip().splitlines() if l]
    last = lines[-1] if lines else ""
    return res.returncode == 1 and all(n in last for n in needles), last


# ----------------------------------------------------------------------------

def part_cli(d):
    train = os.path.join(d, "train.jsonl")
    val = os.path.join(d, "val.jsonl")
    recs = [
        {"prompt": "Rate the movie:", "responses": [" great fun", " dull", " quite good"], "ranking": [0, 2, 1]},
        {"prompt": "Say hi", "chosen": " hello there, friend", "rejected": " go away"},
        {"prompt": "Q: 2+2?", "responses": [" 4", " 5", " four", " 22"], "ranking": [0, 2, 3, 1], "extra": 1},
        "",  # blank lines are ignored
        {"prompt": "Describe the sea", "responses": [" blue and wide", " wet"], "ranking": [1, 0]},
    ]
    write_jsonl(train, recs)
    write_jsonl(val, [{"prompt": "Hi", "chosen": " hi!", "rejected": " no"},
                      {"prompt": "Pick", "responses": [" a", " b", " c"], "ranking": [2, 0, 1]}])
    res = rm_train(d, "run1", train, ["train.steps=4", "train.batch=2", "train.eval_every=2", "rm.norm_max=0"], val=val)
    if res.returncode != 0:
        check(False, "rlhfd rm runs")
        return
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    print("summary:", summary)
    check(summary["steps"] == 4 and summary["train_rankings"] == 4 and summary["val_rankings"] == 2,
          "summary: steps 4, 4 train rankings, 2 val rankings")
    check(summary["val_pairs"] == 1 + 3, "val pairs = C(2,2) + C(3,2) = 4")
    check(isinstance(summary["val_accuracy"], float) and 0 <= summary["val_accuracy"] <= 1,
          "summary has val_accuracy in [0,1]")
    check("offset" in summary and "loss" in summary, "summary has offset and loss")
    metrics = [json.loads(l) for l in open(os.path.join(d, "run1", "metrics.jsonl"))]
    check([m["step"] for m in metrics] == [1, 2, 3, 4], "metrics.jsonl: one row per step")
    check(all("val_accuracy" in m for m in metrics if m["step"] in (2, 4)) and
          "val_accuracy" not in metrics[0], "val_accuracy every train.eval_every steps and at the end")
    check(all(m["pairs"] > 0 and 0 <= m["accuracy"] <= 1 for m in metrics), "metrics: pairs and accuracy")
    ckpt = summary["checkpoint"]
    state = json.load(open(os.path.join(ckpt, "state.json")))
    check(state["state"]["kind"] == "rm" and abs(state["state"]["reward_offset"] - summary["offset"]) < 1e-6,
          "state.json: kind rm and reward_offset")
    check("model.safetensors" in state["files"], "checkpoint lists model.safetensors with its crc32")
    with open(os.path.join(ckpt, "model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    check(header.get("head.w", {}).get("shape") == [32] and header.get("head.b", {}).get("shape") == [1],
          "model.safetensors holds head.w (C) and head.b (1)")

    # the offset: mean reward over the norm samples (= every response of rm.train) is 0
    flat = []
    for r in recs:
        if isinstance(r, str):
            continue
        for resp in r.get("responses") or [r["chosen"], r["rejected"]]:
            flat.append({"prompt": r["prompt"], "response": resp})
    samples = os.path.join(d, "samples.jsonl")
    write_jsonl(samples, flat)
    res = run(["score", "--model", os.path.join(d, "run1"), "--in", samples])
    s = scores(res)
    check(len(s) == len(flat), f"score prints one line per record ({len(s)} of {len(flat)})")
    mean = sum(s) / max(len(s), 1)
    print(f"mean normalised reward on the norm samples: {mean:.2e} (offset {summary['offset']:.4f})")
    check(abs(mean) < 1e-4, "rewards have mean 0 on the norm samples")
    check(all(re.fullmatch(r'\{"reward": -?[0-9.e+-]+\}', l) for l in res.stdout.splitlines()),
          'each line is exactly {"reward": x}')
    check(len(set(round(x, 6) for x in s)) > 1, "different responses get different rewards")

    # order: reversed input gives reversed output; batch size does not matter
    rev = os.path.join(d, "rev.jsonl")
    write_jsonl(rev, list(reversed(flat)))
    s_rev = scores(run(["score", "--model", ckpt, "--in", rev]))
    check(len(s_rev) == len(s) and all(abs(a - b) < 1e-5 for a, b in zip(s, reversed(s_rev))),
          "output follows input order (reversed input -> reversed scores)")
    s_b1 = scores(run(["score", "--model", ckpt, "--in", samples, "--batch", "1"]))
    check(len(s_b1) == len(s) and max(abs(a - b) for a, b in zip(s, s_b1)) < 1e-5,
          "scores do not depend on --batch (padding is ignored)")

    # determinism
    res2 = rm_train(d, "run2", train, ["train.steps=4", "train.batch=2", "train.eval_every=2", "rm.norm_max=0"], val=val)
    m2 = [json.loads(l) for l in open(os.path.join(d, "run2", "metrics.jsonl"))]
    check(res2.returncode == 0 and [m["loss"] for m in m2] == [m["loss"] for m in metrics],
          "same config and seed -> same losses")
    # hold-out from rm.train when rm.val is empty
    res3 = rm_train(d, "run3", train, ["train.steps=2", "rm.val_fraction=0.5"])
    if res3.returncode == 0:
        s3 = json.loads(res3.stdout.strip().splitlines()[-1])
        check(s3["train_rankings"] == 2 and s3["val_rankings"] == 2, "rm.val_fraction=0.5 holds out 2 of 4")
    else:
        check(False, "rm with rm.val empty runs")
    # norm samples from a file: mean 0 on that file
    norm = os.path.join(d, "norm.jsonl")
    write_jsonl(norm, [{"prompt": "A", "response": " b"}, {"prompt": "C", "response": " d e f"},
                       {"prompt": "Q", "response": " yes"}])
    res4 = rm_train(d, "run4", train, ["train.steps=2", f"rm.norm_samples={norm}"], val=val)
    s4 = scores(run(["score", "--model", os.path.join(d, "run4"), "--in", norm]))
    check(res4.returncode == 0 and len(s4) == 3 and abs(sum(s4) / 3) < 1e-4, "rm.norm_samples: mean 0 on that file")

    # ---- bad input: score
    bad = os.path.join(d, "bad.jsonl")
    long_resp = " word" * 40  # > ctx 32 tokens
    write_jsonl(bad, [{"prompt": "A", "response": " ok"}, '{"prompt": "B", "response": ', {"prompt": "C"},
                      {"prompt": "D", "response": long_resp}, {"prompt": "E", "response": " fine"}])
    ok, last = one_line_error(run(["score", "--model", ckpt, "--in", bad], 1), f"{bad}:2:")
    check(ok, f"score: bad JSON -> PATH:LINE ({last})")
    write_jsonl(bad, [{"prompt": "A", "response": " ok"}, {"prompt": "C"}])
    ok, last = one_line_error(run(["score", "--model", ckpt, "--in", bad], 1), f"{bad}:2:", "response")
    check(ok, f"score: missing field -> PATH:LINE ({last})")
    write_jsonl(bad, [{"prompt": "A", "response": " ok"}, {"prompt": "D", "response": long_resp}])
    ok, last = one_line_error(run(["score", "--model", ckpt, "--in", bad], 1), f"{bad}:2: prompt+response is",
                              "longer than the context (32)")
    check(ok, f"score: too long -> PATH:LINE ({last})")
    write_jsonl(bad, [{"prompt": "A", "response": " ok"}, '{"prompt": "B", "response": ', {"prompt": "C"},
                      {"prompt": "D", "response": long_resp}, {"prompt": "A", "response": " ok"}])
    res = run(["score", "--model", ckpt, "--in", bad, "--skip-bad"])
    s = scores(res)
    check(res.returncode == 0 and len(s) == 2 and abs(s[0] - s[1]) < 1e-6,
          "score --skip-bad: only the good records, in order")
    check("3 bad records skipped" in res.stderr, "score --skip-bad reports the count on stderr")
    res = run(["score", "--in", bad], 2)
    check(res.returncode == 2 and "--model" in res.stderr, "score without --model: usage error, exit 2")
    plain = os.path.join(d, "plain")
    run(["convert", "--model", ckpt, "--out", plain, "--to", "native"])
    ok, last = one_line_error(run(["score", "--model", plain, "--in", samples], 1), "not a reward model")
    check(ok, f"score on a plain GPT checkpoint -> clear error ({last})")
    corrupt = os.path.join(d, "corrupt")
    shutil.copytree(ckpt, corrupt)
    with open(os.path.join(corrupt, "model.safetensors"), "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x13\x37\x00")
    ok, last = one_line_error(run(["score", "--model", corrupt, "--in", samples], 1), "crc32")
    check(ok, f"score on a corrupted checkpoint -> crc32 error ({last})")

    # ---- bad input: rm
    cases = [
        ("not a permutation", {"prompt": "P", "responses": [" a", " b", " c"], "ranking": [0, 0, 1]}, "ranking"),
        ("k < 2", {"prompt": "P", "responses": [" a"], "ranking": [0]}, ""),
        ("bad JSON", '{"prompt": "P", "responses": [" a", " b"], "ranking": [0, 1]', ""),
        ("too long", {"prompt": "P", "responses": [" a", long_resp], "ranking": [0, 1]},
         "longer than the context (32)"),
    ]
    good = {"prompt": "P", "chosen": " yes", "rejected": " no"}
    for what, rec, needle in cases:
        write_jsonl(bad, [good, good, rec, good])
        res = rm_train(d, "bad_" + what.replace(" ", "_"), bad, ["train.steps=1"], expect=1, val=val)
        ok, last = one_line_error(res, f"{bad}:3:", needle)
        check(ok, f"rm: {what} -> PATH:LINE, exit 1 ({last})")
    write_jsonl(bad, [good, cases[0][1], cases[2][1], good, cases[3][1], good])
    res = rm_train(d, "skip", bad, ["train.steps=1"], val=val, skip_bad=True)
    summary = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}
    check(summary.get("skipped") == 3 and summary.get("train_rankings") == 3,
          f"rm --skip-bad: 3 bad records skipped, 3 kept ({summary.get('skipped')}, {summary.get('train_rankings')})")
    res = rm_train(d, "run1", train, ["train.steps=1"], expect=1, val=val)
    check(res.returncode == 1 and "--overwrite" in res.stderr, "rm refuses to reuse a run dir without --overwrite")
    res = run(["rm", "--set", "run.dir=" + d + "/x"], 1)
    check(res.returncode == 1 and "rm.train" in res.stderr, "rm without rm.train: clear error")


# ----------------------------------------------------------------------------

def afinn_comparative(text, afinn):
    """AFINN-style comparative: sum of word scores / number of words."""
    words = re.findall(r"[a-z']+", text.lower())
    return sum(afinn.get(w, 0) for w in words) / len(words) if words else 0.0


def part_learn(d):
    fixtures = os.path.join(SRC, "data", "dl", "sentiment", "test", "fixtures")
    labels = os.path.join(SRC, "data", "dl", "sentiment", "languages", "en", "labels.json")
    files = [os.path.join(fixtures, f + ".json") for f in ("imdb", "yelp", "amazon")]
    if not all(os.path.exists(p) for p in files + [labels]):
        print(f"SKIP: {fixtures} or {labels} missing (run deploy/fetch-data.sh)")
        sys.exit(SKIP)
    afinn = json.load(open(labels))
    sents = {}
    for p in files:
        for r in json.load(open(p)):
            t = " ".join(r["text"].split())
            if 10 <= len(t) <= 150:
                sents[t] = afinn_comparative(t, afinn)
    rng = random.Random(5)
    items = sorted(sents.items())
    rng.shuffle(items)
    cut = int(0.8 * len(items))
    train_pool, val_pool = items[:cut], items[cut:]
    print(f"{len(items)} review sentences ({len(train_pool)} train, {len(val_pool)} held out); "
          f"{sum(1 for _, s in items if s != 0)} with a nonzero AFINN score")

    def rankings(pool, n):
        out = []
        while len(out) < n:
            k = rng.choice([2, 3, 4])
            pick = rng.sample(pool, k)
            if len({s for _, s in pick}) < k:
                continue  # ties have no order
            order = sorted(range(k), key=lambda i: -pick[i][1])
            out.append({"prompt": "Review:", "responses": [" " + t for t, _ in pick], "ranking": order})
        return out

    train, val = os.path.join(d, "train.jsonl"), os.path.join(d, "val.jsonl")
    write_jsonl(train, rankings(train_pool, 2000))
    write_jsonl(val, rankings(val_pool, 300))
    res = run(["rm", "--skip-bad", "--set", f"rm.train={train}", "--set", f"rm.val={val}",
               "--set", f"run.dir={d}/run", "--set", "model.layers=1", "--set", "model.heads=4",
               "--set", "model.embd=64", "--set", "model.vocab=50257", "--set", "model.ctx=64",
               "--set", "train.threads=1", "--set", "train.batch=16", "--set", "rm.epochs=2",
               "--set", "train.lr=2e-3", "--set", "train.min_lr=2e-4", "--set", "train.warmup=10",
               "--set", "train.weight_decay=0.0", "--set", "train.eval_every=100",
               "--set", "train.log_every=50"])
    print(res.stderr[-3000:])
    if res.returncode != 0:
        check(False, "rlhfd rm on AFINN rankings runs")
        return
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    acc = summary["val_accuracy"]
    print(f"held-out pairwise accuracy: {acc:.3f} on {summary['val_pairs']} pairs "
          f"(chance 0.5), steps {summary['steps']}, skipped {summary['skipped']}")
    check(acc > 0.6, f"held-out pairwise accuracy {acc:.3f} > 0.6")
    check(summary["skipped"] <= 10, f"few rankings skipped for length ({summary['skipped']})")

    # agreement with AFINN on held-out sentences, scored by `rlhfd score`
    recs = [{"prompt": "Review:", "response": " " + t} for t, _ in val_pool]
    path = os.path.join(d, "heldout.jsonl")
    write_jsonl(path, recs)
    res = run(["score", "--model", os.path.join(d, "run"), "--in", path, "--skip-bad"])
    s = scores(res)
    if res.returncode != 0 or len(s) != len(val_pool):
        check(False, f"score the {len(val_pool)} held-out sentences")
        return
    agree = total = 0
    for _ in range(5000):
        i, j = rng.randrange(len(val_pool)), rng.randrange(len(val_pool))
        a, b = val_pool[i][1], val_pool[j][1]
        if a == b:
            continue
        total += 1
        agree += (s[i] > s[j]) == (a > b)
    rate = agree / total
    print(f"RM prefers the response AFINN scores higher in {rate:.3f} of {total} held-out pairs")
    check(rate > 0.55, f"prefers higher-AFINN responses more often than not ({rate:.3f} > 0.55)")


def main():
    if not BIN or not os.path.exists(BIN):
        print("FAIL: RLHFD_BIN is not set to the rlhfd binary")
        return 1
    part = sys.argv[1] if len(sys.argv) > 1 else "cli"
    with tempfile.TemporaryDirectory() as d:
        {"cli": part_cli, "learn": part_learn}[part](d)
    print("FAILED: " + "; ".join(failures) if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
