#!/usr/bin/python3
"""dpo_torch.py - the gradient path of `rlhfd dpo` against PyTorch.

Runs dpo_dump (coordinator/dpo.h on a tiny random policy and a different
random reference, 4 preference pairs of different prompt/response lengths in
one padded batch) and checks, with each sequence run ALONE (unpadded) in
float64 PyTorch:
  layout     rows chosen/rejected alternate; mask = 1 exactly on the response
             tokens and the eot of each row
  sums       pc, pr (policy) and rc, rr (reference) = sum of log p over the
             response tokens and the eot
  loss       = mean(-log sigmoid(beta*((pc-rc)-(pr-rr)))) (the rl_math
             reference formula), and acc/margin/implicit rewards
  d sums     dpc, dpr by autograd
  gradients  every parameter gradient of the policy = torch's gradient of the
             DPO loss (scale-relative 1e-4)
  step       one AdamW step lowers the loss; dpo_evaluate (batches of 2)
             gives the same loss for the new policy as a direct recomputation

usage: dpo_torch.py --driver PATH [--perturb]
--perturb: the driver corrupts one reference sum; the test passes only if the
comparison then fails (exit 0 when caught).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(f"SKIP: {e} (run with Debian's /usr/bin/python3 and python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from test_gpt_torch import RefGPT, scale_rel  # noqa: E402  the reference GPT-2

torch.set_default_dtype(torch.float64)
TOL_SUM = 2e-5   # relative to the sum's magnitude
TOL_LOSS = 1e-5
TOL_GRAD = 1e-4  # scale-relative per tensor

failures = []


def check(what, ok, msg):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}: {msg}")
    if not ok:
        failures.append(what)


def param_shapes(meta):
    V, C, L, T = meta["vocab_size"], meta["channels"], meta["num_layers"], meta["max_seq_len"]
    return {"wte": (V, C), "wpe": (T, C), "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C), "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C),
            "ln2b": (L, C), "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C),
            "fcprojb": (L, C), "lnfw": (C,), "lnfb": (C,)}


def seq_logprob_sum(model, seq, P):
    """sum of log p(seq[t+1] | seq[:t+1]) over t = P-1 .. len-2 (response + eot)."""
    idx = torch.tensor(seq[:-1], dtype=torch.int64).view(1, -1)
    logits = model.forward(idx)[0]  # (n,V)
    lp = F.log_softmax(logits, dim=-1)
    tgt = torch.tensor(seq[1:], dtype=torch.int64)
    per = lp.gather(1, tgt.view(-1, 1)).view(-1)
    return per[P - 1:].sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--perturb", action="store_true")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="dpo_dump_")
    p = subprocess.run([args.driver, "--out", d] + (["--perturb"] if args.perturb else []),
                       capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAIL: driver exited {p.returncode}: {p.stderr.strip()}")
        return 1

    def load(name):
        return np.load(os.path.join(d, name + ".npy"))

    meta = json.load(open(os.path.join(d, "meta.json")))
    shapes = param_shapes(meta)
    names = meta["param_names"]
    eot, B, T, beta = meta["eot"], meta["B"], meta["T"], meta["beta"]

    # the pairs as token lists
    toks, layout = load("pair_tokens").tolist(), load("pair_layout").tolist()
    seqs, plens = [], []  # rows: chosen 0, rejected 0, ...
    at = 0
    for p_ in range(len(layout) // 3):
        P, Rc, Rr = layout[3 * p_:3 * p_ + 3]
        prompt, ch, rj = toks[at:at + P], toks[at + P:at + P + Rc], toks[at + P + Rc:at + P + Rc + Rr]
        at += P + Rc + Rr
        seqs += [prompt + ch + [eot], prompt + rj + [eot]]
        plens += [P, P]
    n_pairs = len(seqs) // 2

    print("batch layout:")
    mask = load("mask").reshape(B, T)
    exp = np.zeros((B, T), np.float32)
    for b, (s, P) in enumerate(zip(seqs, plens)):
        exp[b, P - 1:len(s) - 1] = 1
    check("rows", B == 2 * n_pairs and T == max(len(s) for s in seqs) - 1, f"B {B} T {T}")
    check("mask = response tokens + eot", np.array_equal(mask, exp), f"{int(mask.sum())} positions")
    inputs = load("inputs").reshape(B, T)
    check("inputs", all(inputs[b, :len(s) - 1].tolist() == s[:-1] for b, s in enumerate(seqs)), "tokens of each row")

    pol = {n: torch.from_numpy(load("param_" + n)).double().view(shapes[n]).requires_grad_(True) for n in names}
    refp = {n: torch.from_numpy(load("ref_" + n)).double().view(shapes[n]) for n in names}
    policy, ref = RefGPT(meta, pol), RefGPT(meta, refp)

    print("sequence log-prob sums (each sequence alone, float64):")
    sums = torch.stack([seq_logprob_sum(policy, s, P) for s, P in zip(seqs, plens)])
    with torch.no_grad():
        rsums = torch.stack([seq_logprob_sum(ref, s, P) for s, P in zip(seqs, plens)])
    pc, pr = sums[0::2], sums[1::2]
    rc, rr = rsums[0::2], rsums[1::2]
    for name, c, r in (("pc", load("pc"), pc), ("pr", load("pr"), pr), ("rc", load("rc"), rc),
                       ("rr", load("rr"), rr)):
        err, rel = scale_rel(torch.from_numpy(c).double(), r.detach())
        check(f"{name} sums", rel <= TOL_SUM, f"max abs err {err:.2e} rel {rel:.2e} ({r.detach().numpy().round(3)})")
    check("reference differs from policy", float((rsums - sums.detach()).abs().max()) > 0.1,
          "so the reference sums are exercised")

    print("DPO loss and gradients:")
    pc_l, pr_l = pc.detach().requires_grad_(True), pr.detach().requires_grad_(True)
    logits = beta * ((pc_l - rc) - (pr_l - rr))
    loss = -F.logsigmoid(logits).mean()
    loss.backward()
    rel = abs(meta["loss"] - loss.item()) / abs(loss.item())
    check("loss", rel <= TOL_LOSS, f"C {meta['loss']:.7f} torch {loss.item():.7f} rel {rel:.2e}")
    check("loss != log 2", abs(loss.item() - np.log(2)) > 1e-3, "the reference is really used")
    acc = float((logits > 0).double().mean())
    check("acc", abs(meta["acc"] - acc) < 1e-9, f"{meta['acc']} vs {acc}")
    margin = float(logits.mean())
    cr, rj = float((beta * (pc_l - rc)).mean()), float((beta * (pr_l - rr)).mean())
    check("margin, implicit rewards", abs(meta["margin"] - margin) <= 1e-4 * max(1, abs(margin)) and
          abs(meta["chosen_reward"] - cr) <= 1e-4 * max(1, abs(cr)) and
          abs(meta["rejected_reward"] - rj) <= 1e-4 * max(1, abs(rj)), f"margin {margin:.4f}")
    for name, c, g in (("dpc", load("dpc"), pc_l.grad), ("dpr", load("dpr"), pr_l.grad)):
        err, rel = scale_rel(torch.from_numpy(c).double(), g)
        check(name, rel <= TOL_LOSS * 10, f"max abs err {err:.2e} rel {rel:.2e}")

    # the full path: d loss / d every policy parameter
    logits_full = beta * ((pc - rc) - (pr - rr))
    (-F.logsigmoid(logits_full).mean()).backward()
    for n in names:
        c = torch.from_numpy(load("grad_" + n)).double().view(shapes[n])
        r = pol[n].grad
        err, rel = scale_rel(c, r)
        check(f"grad {n}", rel <= TOL_GRAD and r.abs().max().item() > 0,
              f"max abs err {err:.2e}, rel {rel:.2e} (scale {r.abs().max().item():.2e})")

    print("one AdamW step, evaluation path:")
    check("AdamW step lowers the loss", meta["loss_after_step"] < meta["loss"] - 1e-4,
          f"{meta['loss']:.5f} -> {meta['loss_after_step']:.5f}")
    rel = abs(meta["eval_loss"] - meta["loss_after_step"]) / abs(meta["loss_after_step"])
    check("dpo_evaluate (batches of 2) = batch loss", rel <= TOL_LOSS,
          f"{meta['eval_loss']:.7f} vs {meta['loss_after_step']:.7f}")

    if args.perturb:
        if failures:
            print(f"OK: the perturbed reference sum was caught ({', '.join(failures)})")
            return 0
        print("FAIL: the perturbed run passed every check")
        return 1
    if failures:
        print(f"FAILED: {len(failures)} check(s): {', '.join(failures)}")
        return 1
    print("DPO gradient path equals PyTorch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
