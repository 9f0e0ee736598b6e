#!/usr/bin/python3
"""test_rm_torch.py - checks the C reward model against PyTorch.

Runs rm_dump (tests/rm/rm_dump.c) for one shape: a tiny GPT trunk + scalar
head, one batch of rankings with K = 2, 3, 4 (cycling) and responses of
different lengths padded to one T. Rebuilds the model in float64 PyTorch from
the dumped parameters, runs EACH sequence on its own, unpadded (so padding
must not matter), reads the head at its last token, and compares:

  rewards      head(lnf[len-1]) - offset
  loss         InstructGPT K-wise: mean over rankings of
               -1/C(K,2) * sum over pairs (w above l) log sigmoid(r_w - r_l)
  pairs        number of pairs with r_w > r_l, and of pairs
  gradients    every trunk tensor and the head (autograd of that loss)
  one update   global-norm clipping over trunk + head, AdamW (decay on 2-D
               trunk weights and head.w, not on head.b): the norm and every
               parameter afterwards

usage: test_rm_torch.py --driver PATH --shape NAME [--keep DIR]
Exit 0 pass, 1 mismatch, 77 skipped (no torch).
"""
import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # a missing tool is a skip, never a silent pass
    print(f"SKIP: {e} (run with Debian's /usr/bin/python3 and python3-torch)")
    sys.exit(77)

SHAPES = {
    # K = 2, 3, 4; no clipping
    "L2_C32_V67_G3": dict(layers=2, heads=2, channels=32, vocab=67, ctx=16, rankings=3, seed=7,
                          lr=1e-3, weight_decay=0.1, grad_clip=0.0, offset=0.25),
    # K = 2, 3, 4, 2, 3, 4, 2; clipping active (asserted)
    "L1_C48_V101_G7_clip": dict(layers=1, heads=4, channels=48, vocab=101, ctx=20, rankings=7,
                                seed=21, lr=2e-3, weight_decay=0.3, grad_clip=0.05, offset=-1.5),
}

TOL_REWARD = 2e-5   # absolute, rewards are O(1)
TOL_LOSS = 1e-5     # relative
TOL_GRAD = 1e-4     # scale-relative per tensor
TOL_NORM = 1e-4     # relative
TOL_PARAM = 2e-5    # absolute, after one step (each moved ~lr)

failures = []


def check(what, ok, msg):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}: {msg}")
    if not ok:
        failures.append(what)


def scale_rel(c, ref):
    err = (c - ref).abs().max().item()
    scale = ref.abs().max().item()
    return err, err / scale if scale > 0 else err


def load(d, name):
    return torch.from_numpy(np.load(os.path.join(d, name + ".npy")))


def param_shapes(m):
    V, T, L, C = m["vocab_size"], m["max_seq_len"], m["num_layers"], m["channels"]
    return {"wte": (V, C), "wpe": (T, C), "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C), "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C),
            "ln2b": (L, C), "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C),
            "fcprojb": (L, C), "lnfw": (C,), "lnfb": (C,)}


def trunk(p, m, idx):
    """GPT-2 trunk: idx (T,) -> lnf (T,C)."""
    L, C, NH = m["num_layers"], m["channels"], m["num_heads"]
    T, hs = idx.shape[0], C // NH
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    x = p["wte"][idx] + p["wpe"][:T]
    for l in range(L):
        h = F.layer_norm(x, (C,), p["ln1w"][l], p["ln1b"][l], 1e-5)
        q, k, v = (h @ p["qkvw"][l].T + p["qkvb"][l]).split(C, dim=-1)
        q, k, v = (t.view(T, NH, hs).transpose(0, 1) for t in (q, k, v))  # (NH,T,hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(T, C)
        x = x + y @ p["attprojw"][l].T + p["attprojb"][l]
        h = F.layer_norm(x, (C,), p["ln2w"][l], p["ln2b"][l], 1e-5)
        h = F.gelu(h @ p["fcw"][l].T + p["fcb"][l], approximate="tanh")
        x = x + h @ p["fcprojw"][l].T + p["fcprojb"][l]
    return F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], 1e-5)


def kwise_loss(r, ks, rankings):
    """mean over rankings of -1/C(K,2) sum log sigmoid(r_w - r_l); also (right, total)."""
    losses, right, total, off = [], 0, 0, 0
    for K in ks:
        order = rankings[off:off + K]
        terms = []
        for i, j in itertools.combinations(range(K), 2):
            d = r[off + order[i]] - r[off + order[j]]
            terms.append(F.logsigmoid(d))
            right += int(d.item() > 0)
            total += 1
        losses.append(-torch.stack(terms).mean())
        off += K
    return torch.stack(losses).mean(), right, total


def run(d, shape):
    meta = json.load(open(os.path.join(d, "meta.json")))
    names = meta["param_names"]
    shapes = param_shapes(meta)
    p0 = {n: load(d, "param_" + n).double().view(shapes[n]) for n in names}
    p0["head_w"] = load(d, "head_w").double()
    p0["head_b"] = load(d, "head_b").double()
    offset = load(d, "offset").double()[0].item()
    tokens, lens = load(d, "tokens").long(), load(d, "lens").long()
    ks = [int(k) for k in load(d, "ks")]
    rankings = [int(r) for r in load(d, "rankings")]
    print(f"{shape}: B={tokens.shape[0]} T={tokens.shape[1]} K={ks} lens={lens.tolist()}")

    leaf = {k: v.clone().requires_grad_(True) for k, v in p0.items()}
    rewards = []
    for b in range(tokens.shape[0]):  # each sequence alone, unpadded
        h = trunk(leaf, meta, tokens[b, :lens[b]])[-1]
        rewards.append(h @ leaf["head_w"] + leaf["head_b"][0] - offset)
    r = torch.stack(rewards)
    loss, right, total = kwise_loss(r, ks, rankings)
    loss.backward()

    err, _ = scale_rel(load(d, "rewards").double(), r.detach())
    check("rewards", err <= TOL_REWARD, f"max abs err {err:.2e} (rewards {r.detach().numpy().round(3)})")
    c_loss = load(d, "loss").double()[0].item()
    rel = abs(c_loss - loss.item()) / abs(loss.item())
    check("K-wise loss", rel <= TOL_LOSS, f"C {c_loss:.7f} torch {loss.item():.7f} rel {rel:.1e}")
    c_pairs = load(d, "pairs").tolist()
    want_total = sum(k * (k - 1) // 2 for k in ks)
    check("pair counts", c_pairs == [right, total] and total == want_total,
          f"C {c_pairs} torch {[right, total]} (C(K,2) summed: {want_total})")

    # The loss sees rewards only through differences within a ranking, so the
    # gradients of head.b and lnfb (which shift every reward equally) are
    # exactly 0; the C values are float rounding noise. They get an absolute
    # test; every other tensor a scale-relative one.
    shift_only = ("head_b", "lnfb")
    worst = 0.0
    for n in names + ["head_w", "head_b"]:
        c = load(d, "grad_" + n).double().view(leaf[n].shape)
        err, rel = scale_rel(c, leaf[n].grad)
        if n in shift_only:
            check(f"grad {n} (exactly 0 in theory)", err <= 1e-6, f"max abs err {err:.2e}")
            continue
        worst = max(worst, rel)
        if rel > TOL_GRAD or n in ("wte", "qkvw", "lnfw", "head_w"):
            check(f"grad {n}", rel <= TOL_GRAD, f"max abs err {err:.2e}, rel {rel:.2e}")
    check("all gradients", worst <= TOL_GRAD, f"worst scale-relative error {worst:.2e}")
    nonzero = all(leaf[n].grad.abs().max().item() > 0 for n in ("wte", "qkvw", "fcw", "head_w"))
    check("trunk gets gradient", nonzero, "wte, qkvw, fcw, head_w gradients are nonzero")

    # one update: clip over trunk + head, AdamW with decay groups
    decays = dict(zip(names, meta["param_decays"]))
    decays["head_w"], decays["head_b"] = True, False
    params = [leaf[n] for n in names + ["head_w", "head_b"]]
    norm = torch.sqrt(sum((q.grad ** 2).sum() for q in params)).item()
    c_norm = load(d, "norm").double()[0].item()
    check("grad norm (trunk + head)", abs(c_norm - norm) / norm <= TOL_NORM, f"C {c_norm:.6f} torch {norm:.6f}")
    clip = meta["grad_clip"]
    if clip > 0:
        check("clipping is active", norm > clip, f"norm {norm:.4f} > clip {clip}")
        torch.nn.utils.clip_grad_norm_(params, clip)
    groups = [{"params": [leaf[n] for n in leaf if decays[n]], "weight_decay": meta["weight_decay"]},
              {"params": [leaf[n] for n in leaf if not decays[n]], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=meta["lr"], betas=(meta["beta1"], meta["beta2"]), eps=meta["eps"])
    opt.step()
    worst, worst_name = 0.0, ""
    for n in names + ["head_w"]:
        if n in shift_only:
            continue
        c = load(d, "final_" + n).double().view(leaf[n].shape)
        err = (c - leaf[n].detach()).abs().max().item()
        if err > worst:
            worst, worst_name = err, n
    check("parameters after one AdamW step", worst <= TOL_PARAM, f"max abs err {worst:.2e} ({worst_name})")
    # Adam turns the noise gradient of the shift-only tensors into a step of
    # random sign; it must still be an Adam step (|delta| <= lr), no decay blow-up.
    for n in shift_only:
        step = (load(d, "final_" + n).double().view(leaf[n].shape) - p0[n]).abs().max().item()
        check(f"{n} step bounded by lr", step <= meta["lr"] * 1.001, f"|delta| {step:.2e} (lr {meta['lr']:.0e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--keep", help="dump into this directory and keep it")
    a = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    s = SHAPES[a.shape]
    with tempfile.TemporaryDirectory() as tmp:
        d = a.keep or os.path.join(tmp, "dump")
        cmd = [a.driver, "--out", d, "--threads", "1"]
        for k, v in s.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        print(res.stdout.strip())
        if res.returncode != 0:
            print(f"FAIL: driver exited {res.returncode}: {res.stderr.strip()}")
            return 1
        run(d, a.shape)
    print("FAILED: " + ", ".join(failures) if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
