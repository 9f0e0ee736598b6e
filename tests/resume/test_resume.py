#!/usr/bin/python3
"""Exact resume and resharding (issue 6).

    test_resume.py pretrain   N steps straight vs SIGUSR1 at an arbitrary step
                              (exit 75 + checkpoint) then --resume auto to N:
                              the same metrics.jsonl and bit-identical weights
                              and AdamW state; alone and at mpirun -np 2; a dp=2
                              checkpoint resumed at np 1 and np 4 (resharding,
                              fp32 reduction-order tolerance); a corrupt newest
                              checkpoint is skipped with a warning
Needs RLHFD_BIN, mpirun, data/dl. Exit 77 without the data.
"""
import json, os, shutil, signal, subprocess, sys, tempfile, time
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


def main():
    if not os.path.exists(os.path.join(SRC, "data/dl/fortunes_val.bin")):
        print("skip: data/dl is missing (run deploy/fetch-data.sh and deploy/prepare-data.sh)")
        sys.exit(77)
    d = tempfile.mkdtemp(prefix="rlhfd-resume-")
    try:
        {"pretrain": test_pretrain}[sys.argv[1]](d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
