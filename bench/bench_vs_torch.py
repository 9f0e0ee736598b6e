#!/usr/bin/python3
"""Side-by-side speed of rlhfd and PyTorch on the same shapes, same threads.

Runs `rlhfd bench ...` and an equivalent PyTorch 1.13 GPT-2 (fp32, CPU) in one
run and prints a table: training step time (forward + backward + AdamW with
clipping) and KV-cache generation tokens/s, with achieved GFLOP/s against the
machine's sgemm ceiling measured in the same run.

usage: bench/bench_vs_torch.py [--rlhfd build/rlhfd] [--threads 2] [--quick]
"""
import argparse, json, math, os, statistics, subprocess, sys, time

import torch
import torch.nn.functional as F


def train_flops(L, C, V, B, T):
    # same formula as rlhfd bench: 3 x (2 x params-in-matmuls + attention) per token
    per_tok = 2.0 * (L * 12.0 * C * C + C * V) + 2.0 * 2.0 * L * T * C
    return 3.0 * per_tok * B * T


class TorchGPT(torch.nn.Module):
    """GPT-2 with nn.Linear layers, tied head, GELU tanh: the usual PyTorch way."""

    def __init__(self, L, H, C, V, N):
        super().__init__()
        self.L, self.H, self.C = L, H, C
        self.wte = torch.nn.Embedding(V, C)
        self.wpe = torch.nn.Embedding(N, C)
        self.blocks = torch.nn.ModuleList()
        for _ in range(L):
            b = torch.nn.Module()
            b.ln1 = torch.nn.LayerNorm(C)
            b.qkv = torch.nn.Linear(C, 3 * C)
            b.proj = torch.nn.Linear(C, C)
            b.ln2 = torch.nn.LayerNorm(C)
            b.fc = torch.nn.Linear(C, 4 * C)
            b.fcproj = torch.nn.Linear(4 * C, C)
            self.blocks.append(b)
        self.lnf = torch.nn.LayerNorm(C)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)

    def attn(self, b, x, past=None):
        Bsz, T, C = x.shape
        q, k, v = b.qkv(x).split(C, dim=2)
        sh = lambda t: t.view(Bsz, T, self.H, C // self.H).transpose(1, 2)
        q, k, v = sh(q), sh(k), sh(v)
        if past is not None:
            if past[0] is not None:
                k = torch.cat([past[0], k], dim=2)
                v = torch.cat([past[1], v], dim=2)
            past[0], past[1] = k, v
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        if T > 1:
            S = k.size(2)
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
            att = att.masked_fill(~mask, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return b.proj(y.transpose(1, 2).contiguous().view(Bsz, T, C))

    def forward(self, idx, pos0=0, cache=None):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(pos0, pos0 + T))
        for i, b in enumerate(self.blocks):
            x = x + self.attn(b, b.ln1(x), None if cache is None else cache[i])
            x = x + b.fcproj(F.gelu(b.fc(b.ln2(x)), approximate="tanh"))
        return self.lnf(x) @ self.wte.weight.t()


def torch_train(L, H, C, V, N, B, T, steps):
    torch.manual_seed(0)
    m = TorchGPT(L, H, C, V, N)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    x = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))
    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(m(x).view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])


@torch.no_grad()
def torch_generate(L, H, C, V, N, B, new_tokens, runs):
    torch.manual_seed(0)
    m = TorchGPT(L, H, C, V, N).eval()
    best = []
    for r in range(runs + 1):
        idx = torch.randint(0, V, (B, 8))
        t0 = time.perf_counter()
        cache = [[None, None] for _ in range(L)]
        logits = m(idx, 0, cache)[:, -1, :]
        pos = 8
        for _ in range(new_tokens):
            tok = torch.multinomial(F.softmax(logits, dim=-1), 1)
            logits = m(tok, pos, cache)[:, -1, :]
            pos += 1
        best.append(time.perf_counter() - t0)
    return B * new_tokens / statistics.median(best[1:])


def rlhfd(binary, args, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "bench"] + args + ["--threads", str(threads)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rlhfd", default=os.path.join(os.path.dirname(__file__), "..", "build", "rlhfd"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small shapes only (smoke test)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    ceiling = rlhfd(a.rlhfd, ["sgemm", "--size", "2048"], a.threads)["gflops"]
    t0 = time.perf_counter()
    M = torch.randn(2048, 2048)
    for _ in range(3):
        M @ M
    tt = time.perf_counter()
    for _ in range(5):
        M @ M
    torch_ceiling = 5 * 2 * 2048 ** 3 / (time.perf_counter() - tt) / 1e9

    train_shapes = [("GPT-2 124M", 12, 12, 768, 50257, 1024, 4, 64),
                    ("L6 C384", 6, 6, 384, 50257, 1024, 8, 256)]
    gen_shapes = [("GPT-2 124M", 12, 12, 768, 50257, 1024, 1, 64),
                  ("GPT-2 124M", 12, 12, 768, 50257, 1024, 16, 64)]
    if a.quick:
        train_shapes = [("L2 C64", 2, 2, 64, 1000, 64, 4, 32)]
        gen_shapes = [("L2 C64", 2, 2, 64, 1000, 128, 4, 16)]

    rows = []
    for name, L, H, C, V, N, B, T in train_shapes:
        r = rlhfd(a.rlhfd, ["train", "--layers", str(L), "--heads", str(H), "--embd", str(C), "--vocab", str(V),
                            "--ctx", str(N), "--batch", str(B), "--seq", str(T), "--steps", str(a.steps)], a.threads)
        tms = torch_train(L, H, C, V, N, B, T, a.steps)
        fl = train_flops(L, C, V, B, T)
        rows.append((f"train {name} B={B} T={T}", "ms/step", r["ms_per_step"], tms,
                     fl / r["ms_per_step"] / 1e6, fl / tms / 1e6, tms / r["ms_per_step"]))
    for name, L, H, C, V, N, B, new in gen_shapes:
        r = rlhfd(a.rlhfd, ["generate", "--layers", str(L), "--heads", str(H), "--embd", str(C), "--vocab", str(V),
                            "--ctx", str(N), "--batch", str(B), "--new-tokens", str(new), "--steps", str(a.steps)],
                  a.threads)
        ttoks = torch_generate(L, H, C, V, N, B, new, a.steps)
        rows.append((f"generate {name} batch {B}", "tokens/s", r["tokens_per_s"], ttoks, None, None,
                     r["tokens_per_s"] / ttoks))

    print(f"\nthreads: {a.threads}; sgemm 2048^3 ceiling: rlhfd/OpenBLAS {ceiling:.0f} GFLOP/s, "
          f"PyTorch matmul {torch_ceiling:.0f} GFLOP/s; torch {torch.__version__}\n")
    print(f"| {'benchmark':34} | {'unit':8} | {'rlhfd':>9} | {'PyTorch':>9} | {'rlhfd GFLOP/s':>13} | "
          f"{'torch GFLOP/s':>13} | {'rlhfd % ceiling':>15} | {'speed-up':>8} |")
    print("|" + "|".join("-" * (w + 2) for w in (34, 8, 9, 9, 13, 13, 15, 8)) + "|")
    for name, unit, ours, theirs, g_ours, g_theirs, speed in rows:
        gs = lambda g: f"{g:13.1f}" if g is not None else f"{'-':>13}"
        pct = f"{100 * g_ours / ceiling:14.0f}%" if g_ours is not None else f"{'-':>15}"
        print(f"| {name:34} | {unit:8} | {ours:9.1f} | {theirs:9.1f} | {gs(g_ours)} | {gs(g_theirs)} | {pct} | "
              f"{speed:7.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
