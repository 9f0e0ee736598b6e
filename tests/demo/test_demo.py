#!/usr/bin/python3
"""rlhfd demo end to end with tiny stage configs: every stage runs, leaves its
checkpoint in OUT/<stage>/, and summary.json holds each stage's numbers; then
--until stops early, and the reward model scores through `rlhfd score`."""
import json, os, subprocess, sys, tempfile

BIN = os.environ["RLHFD_BIN"]
SRC = os.environ["RLHFD_SRC"]
DATA = os.path.join(SRC, "data", "dl")
CONFIGS = os.path.join(SRC, "tests", "demo", "configs")


def check(cond, msg):
    if not cond:
        print("FAIL:", msg)
        sys.exit(1)
    print("ok:", msg)


def run(args, **kw):
    p = subprocess.run([BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    return p


for f in ["fortunes_train.bin", "fortunes_val.bin", "reviews_sft_train.jsonl", "reviews_prompts_val.jsonl"]:
    if not os.path.exists(os.path.join(DATA, f)):
        print(f"FAIL: {DATA}/{f} missing: run deploy/fetch-data.sh data/dl && deploy/prepare-data.sh build/rlhfd data/dl")
        sys.exit(1)

with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "demo")
    p = run(["demo", "--out", out, "--configs", CONFIGS, "--data", DATA, "--threads", "1", "--label-prompts", "12"])
    if p.returncode != 0:
        print(p.stderr[-3000:])
    check(p.returncode == 0, "demo exits 0")
    last = json.loads(p.stdout.strip().splitlines()[-1])
    summary = json.load(open(os.path.join(out, "summary.json")))
    check(last == summary, "last stdout line equals summary.json")
    for stage in ["pretrain", "sft", "label", "rm"]:
        check(stage in summary and summary[stage]["seconds"] > 0, f"summary has {stage} with its time")
    check(summary["pretrain"]["val_loss"] > 0 and summary["pretrain"]["tokens"] == 12 * 4 * 32,
          "pretrain: held-out loss and tokens")
    check(summary["sft"]["val_loss"] > 0 and summary["sft"]["tokens"] > 0, "sft: held-out loss and tokens")
    check(summary["label"]["records"] == 12 and summary["label"]["val_records"] == 12, "label: 12 prompts per split")
    check(0.0 <= summary["rm"]["val_accuracy"] <= 1.0, "rm: held-out pairwise accuracy")
    for stage in ["pretrain", "sft", "rm"]:
        ck = summary[stage]["checkpoint"]
        check(ck.startswith(os.path.join(out, stage)) and os.path.exists(os.path.join(ck, "state.json")),
              f"{stage} checkpoint in OUT/{stage}/")
    rankings = [json.loads(l) for l in open(os.path.join(out, "label", "rankings_train.jsonl"))]
    check(all(sorted(r["ranking"]) == list(range(4)) for r in rankings), "rankings are permutations of K=4")
    # the RM scores what the labelers saw
    recs = os.path.join(tmp, "score.jsonl")
    with open(recs, "w") as f:
        for r in rankings[:5]:
            f.write(json.dumps({"prompt": r["prompt"], "response": r["responses"][0]}) + "\n")
    p = run(["score", "--model", os.path.join(out, "rm"), "--in", recs])
    check(p.returncode == 0 and len(p.stdout.strip().splitlines()) == 5, "rlhfd score on the demo's RM")

    out2 = os.path.join(tmp, "demo2")
    p = run(["demo", "--out", out2, "--configs", CONFIGS, "--data", DATA, "--threads", "1", "--until", "pretrain"])
    s2 = json.load(open(os.path.join(out2, "summary.json")))
    check(p.returncode == 0 and list(k for k in s2 if k != "total_seconds") == ["pretrain"], "--until pretrain stops")
    p = run(["demo", "--out", out2, "--until", "ppo"])
    check(p.returncode == 2 and "--until" in p.stderr, "bad --until exits 2 naming the option")
print("demo: all checks passed")
