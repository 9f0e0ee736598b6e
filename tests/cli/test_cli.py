#!/usr/bin/python3
"""End-to-end tests of `rlhfd pretrain` and `rlhfd eval` on synthetic shards.

    test_cli.py train     training, determinism, checkpoints, eval, --model
    test_cli.py errors    bad configs, shards and arguments: one-line errors
    test_cli.py tiny      deploy/configs/tiny.ini on data/dl/fortunes (skips, 77,
                          when deploy/fetch-data.sh has not been run)

Needs RLHFD_BIN (ctest sets it). Standard library only.
"""
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

BIN = os.environ.get("RLHFD_BIN")
SRC = os.environ.get("RLHFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
SKIP = 77
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)


def write_shard(path, tokens, header_ntok=None):
    """llm.c shard: 256 int32 header (magic, version, ntok) + uint16 ids."""
    header = [0] * 256
    header[0], header[1] = 20240520, 1
    header[2] = len(tokens) if header_ntok is None else header_ntok
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack("<%dH" % len(tokens), *tokens))


def markov_tokens(n, seed, vocab=64):
    """Learnable: next = 7*prev+3 mod vocab 90% of the time, else uniform."""
    rng = random.Random(seed)
    toks = [1]
    while len(toks) < n:
        toks.append((toks[-1] * 7 + 3) % vocab if rng.random() < 0.9 else rng.randrange(vocab))
    return toks


def run(args, cwd):
    p = subprocess.run([BIN] + args, cwd=cwd, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def last_json(stdout):
    lines = [l for l in stdout.strip().splitlines() if l.strip()]
    return json.loads(lines[-1])


def read_metrics(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


TEST_INI = """\
; synthetic test model
[model]
layers = 2
heads = 2
embd = 32
vocab = 256
ctx = 32

[train]
batch = 4
seq = 32
steps = 30
lr = 3e-3
min_lr = 3e-4
warmup = 5
eval_every = 10
eval_batches = 4
checkpoint_every = 10
keep_checkpoints = 2
log_every = 5
seed = 1234
threads = 1

[data]
train = train.bin
val = val.bin

[run]
dir = runA
"""


def test_train(tmp):
    train = markov_tokens(4096, 1)
    val = markov_tokens(300, 2)  # 9 windows of 33: all fit in eval_batches*batch
    write_shard(os.path.join(tmp, "train.bin"), train)
    write_shard(os.path.join(tmp, "val.bin"), val)
    with open(os.path.join(tmp, "t.ini"), "w") as f:
        f.write(TEST_INI)

    # ---- a run
    rc, out, err = run(["pretrain", "--config", "t.ini"], tmp)
    check(rc == 0, "pretrain exits 0 (rc=%d, stderr: %s)" % (rc, err[-500:]))
    if rc != 0:
        return
    summary = last_json(out)
    check(summary["tokens"] == 30 * 4 * 32, "summary tokens = steps*B*T (%s)" % summary["tokens"])
    check(summary["checkpoint"] == "runA/ckpt-00000030", "summary checkpoint path (%s)" % summary["checkpoint"])
    check(summary["val_loss"] is not None, "summary has val_loss")
    check(sum(1 for l in err.splitlines() if l.startswith("step ")) == 7,
          "progress lines at steps 1,5,...,30 (%d)" % sum(1 for l in err.splitlines() if l.startswith("step ")))
    check("ETA" in err and "tok/s" in err, "progress line shows tok/s and ETA")

    m = read_metrics(os.path.join(tmp, "runA", "metrics.jsonl"))
    check(len(m) == 30, "metrics.jsonl has 30 rows (%d)" % len(m))
    check([r["step"] for r in m] == list(range(1, 31)), "metrics steps 1..30")
    for key in ("step", "loss", "lr", "grad_norm", "ms", "tokens_per_s"):
        check(all(key in r for r in m), "every metrics row has %s" % key)
    check([r["step"] for r in m if "val_loss" in r] == [10, 20, 30], "val_loss at steps 10, 20, 30")
    first = sum(r["loss"] for r in m[:5]) / 5
    last = sum(r["loss"] for r in m[-5:]) / 5
    print("loss: first 5 steps %.4f, last 5 steps %.4f (ln 256 = %.4f)" % (first, last, math.log(256)))
    check(abs(m[0]["loss"] - math.log(256)) < 0.3, "initial loss near ln(V) (%.4f)" % m[0]["loss"])
    check(last < first - 0.8, "loss falls by > 0.8 (%.4f -> %.4f)" % (first, last))
    check(summary["loss"] == m[-1]["loss"], "summary loss is the last step's")

    # LR: linear warmup over 5 steps to 3e-3, then cosine to 3e-4 at step 30
    def lr_at(step):
        if step <= 5:
            return 3e-3 * step / 5
        p = (step - 5) / 25
        return 3e-4 + 0.5 * (3e-3 - 3e-4) * (1 + math.cos(math.pi * p))
    check(all(abs(r["lr"] - lr_at(r["step"])) < 1e-7 for r in m), "lr follows warmup + cosine")

    # checkpoints every 10 steps, keep the last 2
    ckpts = sorted(d for d in os.listdir(os.path.join(tmp, "runA")) if d.startswith("ckpt-"))
    check(ckpts == ["ckpt-00000020", "ckpt-00000030"], "kept checkpoints 20 and 30 (%s)" % ckpts)
    check(os.path.isfile(os.path.join(tmp, "runA", "config.json")), "run dir has config.json")

    # ---- same seed + config: identical metrics (timings aside); another seed differs
    rc, out_b, err = run(["pretrain", "--config", "t.ini", "--set", "run.dir=runB"], tmp)
    check(rc == 0, "second pretrain exits 0 (%s)" % err[-300:])
    mb = read_metrics(os.path.join(tmp, "runB", "metrics.jsonl")) if rc == 0 else []
    fields = ("step", "loss", "lr", "grad_norm", "tokens", "val_loss")
    check([{k: r.get(k) for k in fields} for r in m] == [{k: r.get(k) for k in fields} for r in mb],
          "same seed: identical loss/lr/grad_norm/val_loss at every step")
    rc, _, err = run(["pretrain", "--config", "t.ini", "--set", "run.dir=runC",
                      "--set", "train.seed=99", "--set", "train.steps=3"], tmp)
    mc = read_metrics(os.path.join(tmp, "runC", "metrics.jsonl")) if rc == 0 else []
    check(rc == 0 and mc[0]["loss"] != m[0]["loss"], "another seed gives other losses")

    # ---- the run dir refuses to be overwritten unless asked
    rc, _, err = run(["pretrain", "--config", "t.ini", "--set", "train.steps=2"], tmp)
    check(rc == 1 and "already holds checkpoints" in err, "existing checkpoints: error (%s)" % err.strip())
    rc, _, err = run(["pretrain", "--config", "t.ini", "--set", "run.dir=runC", "--set", "train.steps=2",
                      "--overwrite"], tmp)
    ckpts = sorted(d for d in os.listdir(os.path.join(tmp, "runC")) if d.startswith("ckpt-"))
    check(rc == 0 and ckpts == ["ckpt-00000002"], "--overwrite clears old checkpoints (%s)" % ckpts)

    # ---- eval: checkpoint and run dir agree; token count formula
    T = 32
    rc, out1, err = run(["eval", "--model", "runA/ckpt-00000030", "--tokens", "train.bin"], tmp)
    check(rc == 0, "eval on checkpoint exits 0 (%s)" % err[-300:])
    rc2, out2, err = run(["eval", "--model", "runA", "--tokens", "train.bin"], tmp)
    check(rc2 == 0, "eval on run dir exits 0 (%s)" % err[-300:])
    if rc == 0 and rc2 == 0:
        e1, e2 = last_json(out1), last_json(out2)
        check(e1["loss"] == e2["loss"], "eval: checkpoint and run dir give the same loss")
        want = ((4096 - T - 1) // T + 1) * T
        check(e1["tokens"] == want, "eval tokens = windows*T (%d vs %d)" % (e1["tokens"], want))
        check(abs(e1["loss"] - summary["loss"]) < 0.25,
              "eval loss on the training data ~ final training loss (%.4f vs %.4f)" % (e1["loss"], summary["loss"]))
    # val shard: pretrain's val_loss covered all 9 windows with B=4, T=32 -> same number
    rc, out, err = run(["eval", "--model", "runA", "--tokens", "val.bin", "--batch", "4"], tmp)
    if rc == 0:
        e = last_json(out)
        check(e["tokens"] == 9 * 32, "eval val tokens = 9*32 (%d)" % e["tokens"])
        check(abs(e["loss"] - summary["val_loss"]) < 1e-5,
              "eval loss on val = pretrain val_loss (%.6f vs %.6f)" % (e["loss"], summary["val_loss"]))
    else:
        check(False, "eval on val exits 0 (%s)" % err[-300:])
    # other window length and a batch that leaves a short last batch (stride 16:
    # (300-17)//16+1 = 18 windows, batches of 5 -> 5,5,5,3)
    rc, out, err = run(["eval", "--model", "runA", "--tokens", "val.bin", "--seq", "16", "--batch", "5"], tmp)
    rc1, out1, _ = run(["eval", "--model", "runA", "--tokens", "val.bin", "--seq", "16", "--batch", "1"], tmp)
    if rc == 0 and rc1 == 0:
        e, e1 = last_json(out), last_json(out1)
        check(e["tokens"] == 18 * 16 and e["windows"] == 18, "eval --seq 16: 18 windows, 288 tokens (%d)" % e["tokens"])
        check(abs(e["loss"] - e1["loss"]) < 1e-5, "eval loss independent of --batch (%.6f vs %.6f)" % (e["loss"], e1["loss"]))
    else:
        check(False, "eval --seq 16 exits 0 (%s)" % err[-300:])
    # two shards read as one set: windows add up
    rc, out, err = run(["eval", "--model", "runA", "--tokens", "val.bin,train.bin"], tmp)
    check(rc == 0 and last_json(out)["tokens"] == 9 * 32 + ((4096 - 33) // 32 + 1) * 32,
          "eval over two shards counts the windows of both")

    # ---- continue from a checkpoint: shape taken from the model; a contradiction is an error
    rc, out, err = run(["pretrain", "--model", "runA", "--set", "data.train=train.bin", "--set", "run.dir=runD",
                        "--set", "train.steps=3", "--set", "train.lr=1e-3", "--set", "train.warmup=0",
                        "--set", "train.seq=32", "--set", "train.threads=1"], tmp)
    check(rc == 0, "pretrain --model exits 0 (%s)" % err[-300:])
    if rc == 0:
        md = read_metrics(os.path.join(tmp, "runD", "metrics.jsonl"))
        check(md[0]["loss"] < m[0]["loss"] - 0.8, "--model starts from the trained weights (%.4f)" % md[0]["loss"])
        with open(os.path.join(tmp, "runD", "config.json")) as f:
            cfg = json.load(f)
        check(cfg["model.embd"] == 32 and cfg["model.vocab"] == 256 and cfg["model.init"] == "runA",
              "config.json records the loaded model's shape")
    rc, _, err = run(["pretrain", "--model", "runA", "--set", "model.layers=3", "--set", "data.train=train.bin",
                      "--set", "run.dir=runE"], tmp)
    check(rc == 1 and "model.layers" in err and len(err.strip().splitlines()) == 1,
          "--model with a contradicting model.layers: one-line error (%s)" % err.strip())

    # ---- --print-config shows the effective value and where it came from
    rc, out, _ = run(["pretrain", "--config", "t.ini", "--set", "train.lr=0.005", "--print-config"], tmp)
    check(rc == 0 and any(l.startswith("lr = 0.005") and "--set" in l for l in out.splitlines()),
          "--print-config shows the --set value and its origin")
    check(any(l.startswith("steps = 30") and "t.ini:" in l for l in out.splitlines()),
          "--print-config shows file:line origins")


def expect_error(tmp, args, rc_want, needles, what):
    rc, out, err = run(args, tmp)
    lines = err.strip().splitlines()
    ok = (rc == rc_want and len(lines) == 1 and all(n in err for n in needles)
          and "Sanitizer" not in err and "internal error" not in err)
    check(ok, "%s: want rc %d and one line containing %s; got rc %d, stderr %r" % (what, rc_want, needles, rc, err))
    if ok:
        print("ok   %-40s %s" % (what, lines[0]))


def test_errors(tmp):
    write_shard(os.path.join(tmp, "ok.bin"), markov_tokens(200, 3))
    write_shard(os.path.join(tmp, "id60000.bin"), [1, 2, 3, 60000, 5] + [7] * 100)
    write_shard(os.path.join(tmp, "short.bin"), [1, 2, 3] * 100, header_ntok=1000)

    def ini(name, text):
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)

    ini("typo.ini", "[model]\nlayers = 2\n\n[train]\nsteps = 3\n; the typo:\nlerning_rate = 0.1\n")
    expect_error(tmp, ["pretrain", "--config", "typo.ini"], 1,
                 ["typo.ini:7", "unknown key 'train.lerning_rate'", "did you mean 'train.lr'"], "unknown key in file")
    expect_error(tmp, ["pretrain", "--set", "trian.warmup=3"], 1,
                 ["--set", "'trian.warmup'", "did you mean 'train.warmup'"], "unknown key in --set")
    ini("badint.ini", "[train]\nsteps = ten\n")
    expect_error(tmp, ["pretrain", "--config", "badint.ini"], 1,
                 ["badint.ini:2", "train.steps", "'ten'", "integer"], "bad int value")
    ini("badfloat.ini", "[train]\nlr = fast\n")
    expect_error(tmp, ["pretrain", "--config", "badfloat.ini"], 1,
                 ["badfloat.ini:2", "train.lr", "number"], "bad float value")
    expect_error(tmp, ["pretrain", "--set", "model.layers=0"], 1,
                 ["model.layers", "'0'", "[1, 1024]"], "out-of-range value")
    ini("syntax.ini", "[train]\nsteps 3\n")
    expect_error(tmp, ["pretrain", "--config", "syntax.ini"], 1, ["syntax.ini:2", "syntax"], "INI syntax error")
    expect_error(tmp, ["pretrain", "--config", "missing.ini"], 1, ["missing.ini", "No such file"],
                 "missing config file")
    expect_error(tmp, ["pretrain", "--set", "train.steps"], 1, ["--set", "section.key=value"],
                 "--set without '='")

    base = ["--set", "model.layers=1", "--set", "model.embd=16", "--set", "model.heads=2",
            "--set", "model.ctx=16", "--set", "train.steps=1", "--set", "train.threads=1"]
    expect_error(tmp, ["pretrain"] + base + ["--set", "data.train=id60000.bin", "--set", "run.dir=r0"], 1,
                 ["id60000.bin", "60000", "50257"], "pretrain: token id >= vocab")
    expect_error(tmp, ["pretrain"] + base + ["--set", "data.train=short.bin", "--set", "run.dir=r0"], 1,
                 ["short.bin", "1000", "bytes"], "pretrain: shard size != header")
    expect_error(tmp, ["pretrain"] + base + ["--set", "data.train=nothere.bin", "--set", "run.dir=r0"], 1,
                 ["nothere.bin"], "pretrain: missing shard")
    expect_error(tmp, ["pretrain"] + base + ["--set", "data.train=no*.bin", "--set", "run.dir=r0"], 1,
                 ["data.train", "no*.bin"], "pretrain: glob matching nothing")
    expect_error(tmp, ["pretrain"] + base + ["--set", "data.train=ok.bin", "--set", "train.seq=32",
                                             "--set", "run.dir=r0"], 1,
                 ["train.seq", "32", "16"], "pretrain: train.seq > model.ctx")
    expect_error(tmp, ["pretrain"] + base + ["--set", "data.train=ok.bin", "--set", "model.heads=3",
                                             "--set", "run.dir=r0"], 1, [], "pretrain: heads not dividing embd")

    # eval against a vocab-50257 model (one quick step of a 1-layer model)
    rc, _, err = run(["pretrain"] + base + ["--set", "data.train=ok.bin", "--set", "run.dir=r1"], tmp)
    check(rc == 0, "1-step vocab-50257 pretrain exits 0 (%s)" % err[-300:])
    expect_error(tmp, ["eval", "--model", "r1", "--tokens", "id60000.bin"], 1,
                 ["id60000.bin", "60000", "50257"], "eval: token id >= vocab")
    expect_error(tmp, ["eval", "--model", "r1", "--tokens", "short.bin"], 1, ["short.bin", "bytes"],
                 "eval: shard size != header")
    write_shard(os.path.join(tmp, "tiny.bin"), [1, 2, 3])
    expect_error(tmp, ["eval", "--model", "r1", "--tokens", "tiny.bin"], 1, ["3 tokens", "17"],
                 "eval: shard shorter than a window")
    expect_error(tmp, ["eval", "--model", "nowhere", "--tokens", "ok.bin"], 1, ["nowhere"], "eval: missing model")

    # bad command lines: exit 2, one line
    expect_error(tmp, ["pretrain", "--bogus"], 2, ["rlhfd pretrain", "--bogus"], "pretrain: unknown option")
    expect_error(tmp, ["pretrain", "--config"], 2, ["--config"], "pretrain: option without value")
    expect_error(tmp, ["pretrain", "stray"], 2, ["stray"], "pretrain: positional argument")
    expect_error(tmp, ["eval", "--tokens", "ok.bin"], 2, ["--model"], "eval: no --model")
    expect_error(tmp, ["eval", "--model", "r1"], 2, ["--tokens"], "eval: no --tokens")
    expect_error(tmp, ["eval", "--model", "r1", "--tokens", "ok.bin", "--batch", "x"], 2, ["--batch"],
                 "eval: non-integer --batch")
    expect_error(tmp, ["eval", "--model", "r1", "--tokens", "ok.bin", "--batch", "0"], 2, ["--batch"],
                 "eval: --batch 0")
    expect_error(tmp, ["eval", "--model", "r1", "--tokens", "ok.bin", "--seq", "17"], 2, ["--seq", "16"],
                 "eval: --seq > ctx")

    # help works and lists the keys
    rc, out, _ = run(["pretrain", "--help"], tmp)
    check(rc == 0 and "--config" in out and "--model" in out, "pretrain --help")
    rc, out, _ = run(["pretrain", "--help-config"], tmp)
    check(rc == 0 and "train.lr" in out and "model.init" in out, "pretrain --help-config lists keys")


def test_tiny(tmp):
    """deploy/configs/tiny.ini end to end on the fortunes corpus."""
    src = os.path.abspath(SRC)
    cfg = os.path.join(src, "deploy", "configs", "tiny.ini")
    rc, out, err = run(["pretrain", "--config", cfg, "--print-config"], tmp)
    check(rc == 0 and "vocab = 50257" in out, "tiny.ini parses (%s)" % err.strip())
    data = os.environ.get("RLHFD_DATA", os.path.join(src, "data", "dl"))
    text = os.path.join(data, "fortunes.txt")
    if not os.path.isfile(text):
        print("SKIP: %s not found (run deploy/fetch-data.sh)" % text)
        return SKIP
    shard = os.path.join(tmp, "fortunes.bin")
    rc, _, err = run(["tokenize", "--in", text, "--out", shard], tmp)
    check(rc == 0, "rlhfd tokenize fortunes (%s)" % err.strip()[-300:])
    if rc != 0:
        return 1
    rc, out, err = run(["pretrain", "--config", cfg, "--set", "data.train=" + shard, "--set", "run.dir=run",
                        "--set", "train.steps=15"], tmp)
    check(rc == 0, "tiny.ini pretrain exits 0 (%s)" % err[-500:])
    if rc == 0:
        m = read_metrics(os.path.join(tmp, "run", "metrics.jsonl"))
        print("tiny.ini on fortunes: loss %.3f -> %.3f" % (m[0]["loss"], m[-1]["loss"]))
        check(abs(m[0]["loss"] - math.log(50257)) < 0.5, "initial loss near ln(50257)")
        check(m[-1]["loss"] < m[0]["loss"] - 1.0, "tiny.ini: loss falls by > 1 in 15 steps")
    return 0


def main():
    if not BIN or not os.path.exists(BIN):
        print("RLHFD_BIN is not set to the rlhfd binary")
        return 1
    which = sys.argv[1] if len(sys.argv) > 1 else "train"
    base = os.environ.get("RLHFD_BUILD") or None
    tmp = tempfile.mkdtemp(prefix="cli_%s_" % which, dir=base)
    try:
        rc = {"train": test_train, "errors": test_errors, "tiny": test_tiny}[which](tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    if rc == SKIP:
        return SKIP
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
