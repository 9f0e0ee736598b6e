#!/usr/bin/python3
"""End-to-end tests of `rlhfd pg`, `rlhfd grpo`, `rlhfd rloo` and `rlhfd quark`.

The policy is a tiny GPT-2-vocab model (1 layer, 32 channels, ctx 32) made in
seconds: `rlhfd pretrain` for one step, then `rlhfd sft` on synthetic
demonstrations "The movie was" -> " good and sad." with words drawn uniformly
from five positive and five negative AFINN words. Its samples are then half
positive, half negative, and the AFINN-165 lexicon reward (comparative score,
worker/rewards.h) is dense and learnable.

    pgq_test.py learn ALGO   a short run of ALGO (pg, grpo, rloo, quark) raises
                             the training reward (last 3 iterations vs first 3)
                             and the held-out reward above the SFT policy's
                             (same evaluation, learning rate 0); the summary
                             and metrics.jsonl follow the RL contract
    pgq_test.py determinism  two identical GRPO runs (2 epochs: the clipped
                             ratio path) and two pg runs give identical
                             metrics.jsonl and summary except timing fields
    pgq_test.py quark_ctrl   Quark's control tokens: samples start with the
                             best token (eot - 1), every training row starts
                             with eot - K + bin, the bins are reward quantiles
                             of the pool (higher bin => reward not lower), and
                             after training the best token's held-out reward
                             beats the worst token's
    pgq_test.py errors       bad configs: one-line errors, non-zero exit

Needs RLHFD_BIN (ctest sets it) and data/dl (deploy/fetch-data.sh; exit 77
without it). Standard library only.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ.get("RLHFD_BIN")
SRC = os.environ.get("RLHFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
AFINN = os.path.join(SRC, "data/dl/sentiment/languages/en/labels.json")
SKIP = 77
EOT = 50256
failures = []

PROMPTS = ["The movie was", "This book is", "The food was", "Our stay was", "The show is", "That film was",
           "The service was", "My day was"]
WORDS = ["good", "bad", "great", "awful", "nice", "terrible", "fine", "boring", "happy", "sad"]

# shared settings of every RL run in these tests
COMMON = ["--set", "rl.reward=lexicon:" + AFINN, "--set", "rl.gold=", "--set", "rl.max_new_tokens=8",
          "--set", "rl.iterations=12", "--set", "train.threads=1", "--set", "train.weight_decay=0",
          "--set", "train.batch=16", "--set", "train.lr=3e-3"]
ALGO_SETS = {
    "pg": ["--set", "rl.batch=8"],
    "grpo": ["--set", "rl.batch=8", "--set", "grpo.group=4"],
    "rloo": ["--set", "rl.batch=8", "--set", "grpo.group=4"],
    "quark": ["--set", "rl.batch=16", "--set", "quark.steps=20"],
}
TIMING = lambda k: k.startswith("t_") or k.endswith("_per_s") or k.endswith("seconds")


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(args, expect=0):
    res = subprocess.run([BIN] + args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if expect is not None and res.returncode != expect:
        print(f"command {' '.join(args)} exited {res.returncode}, expected {expect}\n"
              f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}")
        failures.append(f"exit status of {args[0]}")
    return res


def summary_of(res):
    lines = res.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def metrics_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def make_policy(d):
    """The tiny SFT policy and the prompt files; returns the policy's run dir."""
    rnd = random.Random(0)
    with open(f"{d}/demos.jsonl", "w") as f:
        for _ in range(512):
            f.write(json.dumps({"prompt": rnd.choice(PROMPTS),
                                "response": f" {rnd.choice(WORDS)} and {rnd.choice(WORDS)}."}) + "\n")
    with open(f"{d}/prompts.jsonl", "w") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": p}) + "\n")
    run(["pretrain", "--set", "model.layers=1", "--set", "model.heads=2", "--set", "model.embd=32",
         "--set", "model.ctx=32", "--set", "train.steps=1", "--set", "train.batch=1", "--set", "train.seq=32",
         "--set", "train.threads=1", "--set", f"data.train={SRC}/data/dl/fortunes.bin",
         "--set", f"run.dir={d}/init"])
    run(["sft", "--model", f"{d}/init", "--set", f"sft.train={d}/demos.jsonl", "--set", "train.steps=80",
         "--set", "train.batch=16", "--set", "train.lr=1e-2", "--set", "train.warmup=0",
         "--set", "train.threads=1", "--set", f"run.dir={d}/sft"])
    if failures:
        sys.exit(1)
    return f"{d}/sft"


def rl(d, algo, name, policy, extra=(), expect=0):
    args = [algo, "--model", policy, "--set", f"rl.prompts={d}/prompts.jsonl",
            "--set", f"rl.val_prompts={d}/prompts.jsonl", "--set", f"run.dir={d}/{name}"]
    args += COMMON + ALGO_SETS[algo] + list(extra)
    return run(args, expect)


def test_learn(d, algo):
    policy = make_policy(d)
    base = summary_of(rl(d, algo, "base", policy, ["--set", "train.lr=0", "--set", "rl.iterations=1"]))
    res = rl(d, algo, "run", policy)
    s = summary_of(res)
    for key in ("gold", "reward", "kl", "checkpoint", "seconds", "t_generate", "t_score", "t_logprobs", "t_train"):
        check(key in s, f"{algo}: summary has {key}")
    check(os.path.isdir(s.get("checkpoint", "")), f"{algo}: checkpoint {s.get('checkpoint')} exists")
    rows = [r for r in metrics_of(f"{d}/run") if not r.get("eval")]
    check(len(rows) == 12 and [r["iter"] for r in rows] == list(range(1, 13)), f"{algo}: 12 metrics lines")
    for key in ("reward", "gold", "kl", "entropy", "response_len", "loss", "t_generate", "t_score", "t_logprobs",
                "t_train", "rollout_tokens_per_s"):
        check(all(key in r for r in rows), f"{algo}: metrics have {key}")
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-3:]) / 3
    print(f"{algo}: training reward {first:+.3f} (iterations 1-3) -> {last:+.3f} (10-12); held-out "
          f"{base['reward']:+.3f} (SFT) -> {s['reward']:+.3f}, kl {s['kl']:.2f}")
    check(last > first + 0.5, f"{algo}: training reward rises by > 0.5 ({first:+.3f} -> {last:+.3f})")
    check(s["reward"] > base["reward"] + 0.3,
          f"{algo}: held-out reward beats the SFT policy's by > 0.3 ({base['reward']:+.3f} -> {s['reward']:+.3f})")
    check(base["kl"] == 0.0 or algo == "quark", f"{algo}: lr 0 leaves the policy at the reference (kl {base['kl']})")
    check(0.0 <= s["kl"] < 20.0, f"{algo}: held-out kl bounded ({s['kl']:.2f})")
    if algo == "quark":
        check(s["reward"] > s["worst_reward"] + 0.5,
              f"quark: best token's reward {s['reward']:+.3f} > worst token's {s['worst_reward']:+.3f} + 0.5")


def strip_timing(obj):
    return {k: v for k, v in obj.items() if not TIMING(k)}


def test_determinism(d):
    policy = make_policy(d)
    for algo, extra in (("grpo", ["--set", "grpo.epochs=2", "--set", "rl.iterations=4"]),
                        ("pg", ["--set", "pg.epochs=2", "--set", "rl.iterations=4"])):
        s1 = summary_of(rl(d, algo, f"{algo}1", policy, extra))
        s2 = summary_of(rl(d, algo, f"{algo}2", policy, extra))
        m1 = [strip_timing(r) for r in metrics_of(f"{d}/{algo}1")]
        m2 = [strip_timing(r) for r in metrics_of(f"{d}/{algo}2")]
        check(len(m1) == 4 and m1 == m2, f"{algo}: identical metrics.jsonl without timing fields")
        drop = ("checkpoint", "run_dir")
        s1 = {k: v for k, v in strip_timing(s1).items() if k not in drop}
        s2 = {k: v for k, v in strip_timing(s2).items() if k not in drop}
        check(s1 == s2 and "gold" in s1, f"{algo}: identical summary without timing fields")
        check(any(r.get("loss", 0) != 0 for r in m1), f"{algo}: the loss is not identically zero")


def test_quark_ctrl(d):
    policy = make_policy(d)
    K = 3
    res = rl(d, "quark", "q", policy, ["--set", f"quark.bins={K}", "--set", "quark.log_rows=true",
                                        "--set", "rl.iterations=4", "--set", "quark.steps=3"])
    s = summary_of(res)
    check(s.get("best_token") == EOT - 1 and s.get("worst_token") == EOT - K,
          f"quark: control tokens {EOT - K}..{EOT - 1} reported ({s.get('worst_token')}..{s.get('best_token')})")
    with open(f"{d}/q/quark_rows.jsonl") as f:
        rows = [json.loads(l) for l in f]
    samples = [r for r in rows if r["kind"] == "sample"]
    train = [r for r in rows if r["kind"] == "train"]
    check(len(samples) == 4 * 16, f"quark: 64 samples logged ({len(samples)})")
    check(all(r["tokens"][0] == EOT - 1 for r in samples), "quark: every sample starts with the best token")
    check(len(train) == 4 * 3 * 16, f"quark: 4 iterations x 3 steps x 16 training rows ({len(train)})")
    check(all(0 <= r["bin"] < K and r["tokens"][0] == EOT - K + r["bin"] for r in train),
          "quark: every training row starts with its bin's control token")
    # the bins are reward quantiles: within one step, a higher bin never has a lower reward
    ok = True
    for it in range(1, 5):
        for step in range(1, 4):
            rs = [r for r in train if r["iter"] == it and r["step"] == step]
            for a in rs:
                for b in rs:
                    if a["bin"] < b["bin"] and a["reward"] > b["reward"]:
                        ok = False
    check(ok, "quark: higher bins never hold lower rewards")
    check(len({r["bin"] for r in train if r["iter"] == 4}) == K, "quark: all bins are used")
    # the training row after the control token is a pool sample: prompt ++ response
    sample_bodies = {tuple(r["tokens"][1:]) for r in samples}
    check(all(tuple(r["tokens"][1:]) in sample_bodies for r in train), "quark: training rows are pool samples")


def test_errors(d):
    policy = make_policy(d)
    res = rl(d, "grpo", "e1", policy, ["--set", "grpo.group=1"], expect=1)
    check("grpo.group" in res.stderr and len(res.stderr.strip().splitlines()) == 1,
          f"grpo.group=1 is a one-line error naming the key: {res.stderr.strip()[:200]}")
    res = rl(d, "quark", "e2", policy, ["--set", "quark.binz=3"], expect=1)
    check("quark.bins" in res.stderr, f"unknown key names the nearest one: {res.stderr.strip()[:200]}")
    res = rl(d, "rloo", "e3", policy, ["--set", "quark.bins=1"], expect=1)
    check("quark.bins" in res.stderr, f"quark.bins below 2 is rejected: {res.stderr.strip()[:200]}")
    res = run(["pg", "--set", "rl.reward=lexicon:" + AFINN, "--set", f"run.dir={d}/e4"], expect=1)
    check("--model" in res.stderr, f"no policy: one-line error: {res.stderr.strip()[:200]}")
    res = run(["pg", "--bogus"], expect=2)
    check(res.returncode == 2, "unknown option exits 2")


def main():
    if not BIN:
        print("RLHFD_BIN is not set (run through ctest)")
        return 1
    if not os.path.exists(AFINN) or not os.path.exists(f"{SRC}/data/dl/fortunes.bin"):
        print(f"skip: {AFINN} or fortunes.bin missing (run deploy/fetch-data.sh)")
        return SKIP
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    d = tempfile.mkdtemp(prefix="rlhfd-pgq-")
    try:
        if what == "learn":
            test_learn(d, sys.argv[2])
        elif what == "determinism":
            test_determinism(d)
        elif what == "quark_ctrl":
            test_quark_ctrl(d)
        elif what == "errors":
            test_errors(d)
        else:
            print(f"usage: {sys.argv[0]} learn ALGO | determinism | quark_ctrl | errors")
            return 2
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"{len(failures)} failure(s)" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
