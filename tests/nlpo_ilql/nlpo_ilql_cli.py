#!/usr/bin/python3
"""End-to-end tests of `rlhfd nlpo` and `rlhfd ilql` on a tiny policy.

The policy is tests/rl/pgq_test.py's: a 1-layer GPT-2-vocab model SFT'd on
synthetic reviews "The movie was" -> " good and sad." (words drawn from five
positive and five negative AFINN words), so the AFINN lexicon reward is dense
and learnable. Held-out numbers use the 8 prompts x 8 seeds.

    nlpo_ilql_cli.py nlpo_learn  NLPO (top-p 0.9, mask refreshed every 4
                                 iterations) raises the training reward and the
                                 held-out reward above the SFT policy's; the mask
                                 keeps far fewer tokens than the vocab; the first
                                 iteration's KL is that of the masked policy (> 0),
                                 and nlpo.top_p = 1 is exactly PPO (same metrics)
    nlpo_ilql_cli.py ilql_learn  ILQL on the SFT demonstrations scored by the
                                 lexicon: decoding with beta * (Q - V) beats the
                                 SFT policy's held-out reward; the checkpoint holds
                                 the heads and `rlhfd evaluate` on it reproduces the
                                 command's own final evaluation (same seeds)
    nlpo_ilql_cli.py errors      bad keys, values and data: one-line errors

Needs RLHFD_BIN (ctest sets it) and data/dl (exit 77 without it).
"""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "rl"))
import pgq_test as pgq  # noqa: E402  (the tiny policy, run/check helpers)

check, run, summary_of, metrics_of = pgq.check, pgq.run, pgq.summary_of, pgq.metrics_of
TIMING = pgq.TIMING


def files(d):
    with open(f"{d}/val64.jsonl", "w") as f:
        for _ in range(8):
            for p in pgq.PROMPTS:
                f.write(json.dumps({"prompt": p}) + "\n")


def common(d, name):
    return ["--set", f"rl.prompts={d}/prompts.jsonl", "--set", f"rl.val_prompts={d}/val64.jsonl",
            "--set", f"run.dir={d}/{name}"] + pgq.COMMON


def nlpo(d, name, policy, extra=(), expect=0):
    args = ["nlpo", "--model", policy] + common(d, name) + [
        "--set", "rl.batch=16", "--set", "ppo.minibatch=8", "--set", "ppo.epochs=2", "--set", "rl.kl_coef=0.01",
        "--set", "nlpo.top_p=0.9", "--set", "nlpo.mask_refresh=4"] + list(extra)
    return run(args, expect)


def test_nlpo_learn(d):
    policy = pgq.make_policy(d)
    files(d)
    base = summary_of(nlpo(d, "base", policy, ["--set", "train.lr=0", "--set", "rl.iterations=1"]))
    s = summary_of(nlpo(d, "run", policy, ["--set", "rl.iterations=10"]))
    rows = [r for r in metrics_of(f"{d}/run") if not r.get("eval")]
    check(len(rows) == 10, f"nlpo: 10 metrics lines ({len(rows)})")
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-3:]) / 3
    print(f"nlpo: training reward {first:+.3f} -> {last:+.3f}; held-out {base['reward']:+.3f} (SFT) -> "
          f"{s['reward']:+.3f}, kl {s['kl']:.2f}, mask {s.get('mask_tokens', 0):.1f} tokens")
    check(last > first + 0.5, f"nlpo: training reward rises by > 0.5 ({first:+.3f} -> {last:+.3f})")
    check(s["reward"] > base["reward"] + 0.3, f"nlpo: held-out reward beats SFT's by > 0.3")
    check(0.0 <= s["kl"] < 20.0, f"nlpo: held-out kl bounded ({s['kl']:.2f})")
    check(all(1.0 <= r["mask_tokens"] < 1000 for r in rows), "nlpo: the mask keeps 1..1000 of 50257 tokens")
    check(rows[-1]["mask_refreshes"] == 2 and s.get("mask_refreshes") == 2,
          "nlpo: the masking policy is refreshed at iterations 5 and 9")
    check(rows[0]["kl"] > 0.01, f"nlpo: iteration 1 samples the masked policy, kl {rows[0]['kl']:.3f} > 0")
    # top_p = 1 masks nothing: the run is PPO's, line for line
    a = nlpo(d, "p1", policy, ["--set", "rl.iterations=2", "--set", "nlpo.top_p=1"])
    b = run(["ppo", "--model", policy] + common(d, "ppo") + [
        "--set", "rl.batch=16", "--set", "ppo.minibatch=8", "--set", "ppo.epochs=2", "--set", "rl.kl_coef=0.01",
        "--set", "rl.iterations=2"])
    ma = [{k: v for k, v in r.items() if not TIMING(k) and not k.startswith("mask_")} for r in metrics_of(f"{d}/p1")]
    mb = [{k: v for k, v in r.items() if not TIMING(k)} for r in metrics_of(f"{d}/ppo")]
    check(a.returncode == 0 and b.returncode == 0 and ma == mb, "nlpo with top_p = 1 is exactly PPO")
    check(ma[0]["kl"] == 0.0 or abs(ma[0]["kl"]) < 1e-3, f"ppo: iteration 1 kl ~ 0 ({ma[0]['kl']:.2e})")


def ilql(d, name, policy, extra=(), expect=0):
    args = ["ilql", "--model", policy] + common(d, name) + [
        "--set", f"ilql.train={d}/demos.jsonl", "--set", "train.batch=16", "--set", "train.lr=3e-3",
        "--set", "train.min_lr=3e-3", "--set", "train.warmup=0", "--set", "ilql.head_lr=3e-3",
        "--set", "ilql.alpha=0.5", "--set", "ilql.beta=4"] + list(extra)
    return run(args, expect)


def test_ilql_learn(d):
    policy = pgq.make_policy(d)
    files(d)
    base = summary_of(ilql(d, "base", policy, ["--set", "train.lr=0", "--set", "train.min_lr=0", "--set", "ilql.beta=0",
                                                 "--set", "train.steps=1"]))
    res = ilql(d, "run", policy, ["--set", "train.steps=100"])
    s = summary_of(res)
    rows = metrics_of(f"{d}/run")
    print(f"ilql: held-out reward {base['reward']:+.3f} (SFT) -> {s['reward']:+.3f}, kl {s['kl']:.2f}; "
          f"loss_q {rows[0]['loss_q']:.3f} -> {rows[-1]['loss_q']:.3f}, data reward {s.get('data_reward'):+.3f}")
    check(base["kl"] == 0.0, f"ilql: lr 0 and beta 0 leave the SFT policy (kl {base['kl']})")
    check(s.get("samples") == 512, f"ilql: 512 samples scored by rl.reward ({s.get('samples')})")
    for key in ("loss", "loss_q", "loss_v", "loss_cql", "loss_awac", "q", "v", "target_q", "lr", "grad_norm"):
        check(all(key in r for r in rows), f"ilql: metrics have {key}")
    check(s["reward"] > base["reward"] + 0.3, "ilql: held-out reward with beta * (Q - V) beats SFT's by > 0.3")
    check(0.0 <= s["kl"] < 20.0, f"ilql: held-out kl bounded ({s['kl']:.2f})")
    ck = s.get("checkpoint", "")
    with open(os.path.join(ck, "model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    check(header.get("ilql.q1_target.w", {}).get("shape") == [50257, 32] and "ilql.v.w" in header,
          "ilql: the checkpoint holds the heads")
    ev = run(["evaluate", "--model", ck, "--ref", policy, "--reward", "lexicon:" + pgq.AFINN,
              "--prompts", f"{d}/val64.jsonl", "--max-new-tokens", "8", "--seed", str(1337 + 7777), "--threads", "1"])
    e = summary_of(ev)
    check(e.get("ilql_beta") == 4 and abs(e["reward"] - s["reward"]) < 1e-6 and abs(e["kl"] - s["kl"]) < 1e-4,
          f"ilql: rlhfd evaluate decodes with the checkpoint's heads (reward {e.get('reward')} vs {s['reward']})")
    # explicit rewards in the file, and rankings (each response scored with rl.reward)
    with open(f"{d}/scored.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "The movie was", "response": " good.", "reward": 2.5}) + "\n")
        f.write(json.dumps({"prompt": "The movie was", "response": " bad.", "reward": -1.5}) + "\n")
    s2 = summary_of(ilql(d, "scored", policy, ["--set", f"ilql.train={d}/scored.jsonl", "--set", "train.steps=2"]))
    check(s2.get("samples") == 2 and abs(s2.get("data_reward", 0) - 0.5) < 1e-6, "ilql: rewards read from the file")
    with open(f"{d}/ranks.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "The movie was", "responses": [" good.", " bad.", " fine."],
                            "ranking": [0, 2, 1]}) + "\n")
    s3 = summary_of(ilql(d, "ranks", policy, ["--set", f"ilql.train={d}/ranks.jsonl", "--set", "train.steps=2"]))
    check(s3.get("samples") == 3, "ilql: every response of a ranking is a sample")


def one_line(res, needle, what):
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    ok = res.returncode != 0 and lines and needle in lines[-1]
    if not ok:
        print(f"      rc={res.returncode} stderr: {res.stderr[-500:]}")
    check(ok, what)


def test_errors(d):
    policy = pgq.make_policy(d)
    files(d)
    one_line(nlpo(d, "e1", policy, ["--set", "nlpo.top_p=0"], expect=None), "nlpo.top_p", "nlpo.top_p = 0 is rejected")
    one_line(nlpo(d, "e2", policy, ["--set", "nlpo.top_pp=0.5"], expect=None), "nlpo.top_p",
             "an unknown nlpo key names the nearest one")
    one_line(nlpo(d, "e3", policy, ["--set", "nlpo.mask_refresh=0"], expect=None), "nlpo.mask_refresh",
             "nlpo.mask_refresh = 0 is rejected")
    one_line(ilql(d, "e4", policy, ["--set", "ilql.train="], expect=None), "ilql.train", "no ilql.train: one-line error")
    with open(f"{d}/bad.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "a", "response": " b", "reward": 1}) + "\n")
        f.write(json.dumps({"prompt": "a", "response": " b", "reward": "high"}) + "\n")
    one_line(ilql(d, "e5", policy, ["--set", f"ilql.train={d}/bad.jsonl"], expect=None), "bad.jsonl:2",
             "a non-numeric reward is an error naming FILE:LINE")
    one_line(ilql(d, "e6", policy, ["--set", "ilql.tau=0.2"], expect=None), "ilql.tau", "ilql.tau below 0.5 is rejected")
    res = run(["ilql", "--bogus"], expect=2)
    check(res.returncode == 2, "unknown option exits 2")


def main():
    if not pgq.BIN:
        print("RLHFD_BIN is not set (run through ctest)")
        return 1
    if not os.path.exists(pgq.AFINN) or not os.path.exists(f"{pgq.SRC}/data/dl/fortunes.bin"):
        print(f"skip: {pgq.AFINN} or fortunes.bin missing (run deploy/fetch-data.sh)")
        return pgq.SKIP
    tests = {"nlpo_learn": test_nlpo_learn, "ilql_learn": test_ilql_learn, "errors": test_errors}
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in tests:
        print(f"usage: {sys.argv[0]} {' | '.join(tests)}")
        return 2
    d = tempfile.mkdtemp(prefix="rlhfd-nlpo-ilql-")
    try:
        tests[what](d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"{len(pgq.failures)} failure(s)" if pgq.failures else "all passed")
    return 1 if pgq.failures else 0


if __name__ == "__main__":
    sys.exit(main())
