#!/usr/bin/python3
"""Data-parallel scaling of rlhfd on this machine (issue 5): pretrain steps and
PPO iterations at np=1 and np=2 under mpirun, one thread per rank.

    bench/bench_scaling.py [--bin build/rlhfd] [--steps 12] [--iters 4]

Strong scaling: the same global batch on 1 and 2 ranks (ideal: half the time).
Weak scaling: the same per-rank batch (ideal: the same time per step).
Efficiency = ideal time / measured time. comm = the share of the step spent
inside collectives (the metrics' comm_ms / t_comm: gradient all-reduce,
statistics, reports). Times are medians over the steps after the first two.
Needs data/dl/fortunes.bin (deploy/fetch-data.sh + prepare-data.sh).
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
SHAPE = ["model.layers=4", "model.heads=4", "model.embd=192", "model.ctx=64", "model.vocab=50257"]


def launch(bin_, np_, args):
    cmd = (["mpirun", "--oversubscribe", "-np", str(np_)] if np_ > 1 else []) + [bin_] + args
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return r


def sets(kv):
    return sum((["--set", x] for x in kv), [])


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if '"eval"' not in l]


def pretrain(bin_, d, np_, batch, steps):
    run = f"{d}/pre-{np_}-{batch}"
    launch(bin_, np_, ["pretrain", "--overwrite"] + sets(SHAPE + [
        f"train.batch={batch}", "train.seq=64", f"train.steps={steps}", "train.threads=1", "train.warmup=0",
        "data.train=data/dl/fortunes.bin", f"run.dir={run}", "status.socket=none"]))
    r = rows(run)[2:]
    ms = statistics.median(x["ms"] for x in r)
    comm = statistics.median(x["comm_ms"] for x in r)
    return ms, comm, batch * 64 / (ms / 1e3)


def ppo(bin_, d, np_, batch, iters, model):
    run = f"{d}/ppo-{np_}-{batch}"
    with open(f"{d}/prompts.jsonl", "w") as f:
        for p in ["The", "A man", "You will", "It is", "When the", "Life is", "All the", "In a"] * 4:
            f.write(json.dumps({"prompt": p}) + "\n")
    with open(f"{d}/lex.json", "w") as f:
        json.dump({"the": 5, "a": 5, "of": 5}, f)
    launch(bin_, np_, ["ppo", "--model", model, "--overwrite"] + sets([
        f"rl.reward=lexicon:{d}/lex.json", f"rl.prompts={d}/prompts.jsonl", f"rl.batch={batch}",
        "rl.max_new_tokens=24", f"rl.iterations={iters}", "ppo.minibatch=8", "ppo.epochs=2", "train.threads=1",
        f"run.dir={run}", "status.socket=none"]))
    r = rows(run)[1:]
    t = statistics.median(x["t_generate"] + x["t_score"] + x["t_logprobs"] + x["t_train"] for x in r)
    comm = statistics.median(x.get("t_comm", 0.0) for x in r)
    return t, comm


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build/rlhfd"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--iters", type=int, default=4)
    a = ap.parse_args()
    if not os.path.exists(os.path.join(ROOT, "data/dl/fortunes.bin")):
        sys.exit("data/dl/fortunes.bin is missing: run deploy/fetch-data.sh and deploy/prepare-data.sh")
    d = tempfile.mkdtemp(prefix="rlhfd-scaling-")
    print(f"model L4 C192 ctx64 (GPT-2 vocab), 1 thread per rank, {os.cpu_count()} cores", flush=True)
    out = []
    base_ms, base_comm, base_tps = pretrain(a.bin, d, 1, 8, a.steps)
    s_ms, s_comm, s_tps = pretrain(a.bin, d, 2, 8, a.steps)   # strong: same global batch
    w_ms, w_comm, w_tps = pretrain(a.bin, d, 2, 16, a.steps)  # weak: same per-rank batch
    out.append(("pretrain B=8 T=64", "np=1", base_ms, base_tps, 1.0, base_comm / base_ms))
    out.append(("pretrain B=8 T=64 (strong)", "np=2", s_ms, s_tps, base_ms / (2 * s_ms), s_comm / s_ms))
    out.append(("pretrain B=16 T=64 (weak)", "np=2", w_ms, w_tps, base_ms / w_ms, w_comm / w_ms))
    model = f"{d}/pre-1-8"
    p1, c1 = ppo(a.bin, d, 1, 16, a.iters, model)
    p2, c2 = ppo(a.bin, d, 2, 16, a.iters, model)
    p3, c3 = ppo(a.bin, d, 2, 32, a.iters, model)
    out.append(("ppo iteration, 16 prompts", "np=1", p1 * 1e3, float("nan"), 1.0, c1 / p1))
    out.append(("ppo iteration, 16 prompts (strong)", "np=2", p2 * 1e3, float("nan"), p1 / (2 * p2), c2 / p2))
    out.append(("ppo iteration, 32 prompts (weak)", "np=2", p3 * 1e3, float("nan"), p1 / p3, c3 / p3))
    print(f"\n{'workload':36s} {'ranks':>6s} {'ms/step':>9s} {'tok/s':>9s} {'efficiency':>11s} {'comm':>6s}")
    for name, np_, ms, tps, eff, comm in out:
        tok = "" if tps != tps else f"{tps:9.0f}"
        print(f"{name:36s} {np_:>6s} {ms:9.1f} {tok:>9s} {eff:10.0%} {comm:6.1%}")


if __name__ == "__main__":
    main()
