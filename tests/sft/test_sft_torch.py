#!/usr/bin/python3
"""test_sft_torch.py - checks SFT's prompt/pad masking against PyTorch.

Runs the sft_dump driver (a padded batch of 3 demonstrations built by
coordinator/sft_data.c, one forward + backward of the C model) and checks:

  layout      inputs/targets/mask follow the token convention: targets are
              the next tokens, mask 1 exactly on response tokens + eot, pads
              are eot inputs with target -1
  logits      at every real position equal those of each example run ALONE,
              unpadded, in PyTorch (float64): padding never leaks
  loss        = mean cross-entropy over the response tokens only (and not
              the mean over all positions)
  d(logits)   exactly 0 at prompt and pad positions, non-zero on every
              response position, equal to torch's d(loss)/d(logits)
  gradients   every parameter gradient equals torch's gradient of the
              response-only loss of the unpadded examples (rel 1e-4)
  targets     changing the target of masked prompt positions leaves loss,
              d(logits) and every gradient bit-identical
  eval        sft_eval (other batching) gives the same response-token mean

usage: test_sft_torch.py --driver PATH [--keep DIR]
Exit 0 pass, 1 mismatch, 77 skipped (no torch).
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
except ImportError as e:  # a missing tool is a skip, never a silent pass
    print(f"SKIP: {e} (run with Debian's /usr/bin/python3 and python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from test_gpt_torch import RefGPT, scale_rel  # noqa: E402  the reference GPT-2

TOL_LOGITS = 2e-5  # scale-relative
TOL_LOSS = 1e-5    # relative
TOL_GRAD = 1e-4    # scale-relative per tensor

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--driver", required=True)
    ap.add_argument("--keep", help="dump directory to keep (default: a temp dir)")
    args = ap.parse_args()
    d = args.keep or tempfile.mkdtemp(prefix="sft_dump_")
    p = subprocess.run([args.driver, "--out", d], capture_output=True, text=True)
    print(p.stdout, end="")
    if p.returncode != 0:
        print(f"FAIL: driver exited {p.returncode}: {p.stderr.strip()}")
        return 1

    def load(name):
        return np.load(os.path.join(d, name + ".npy"))

    meta = json.load(open(os.path.join(d, "meta.json")))
    shapes = param_shapes(meta)
    names = meta["param_names"]
    eot, B, T = meta["eot"], meta["B"], meta["T"]
    ex, lens, plens = load("examples"), load("ex_len"), load("ex_prompt_len")
    inputs, targets, mask = load("inputs"), load("targets"), load("mask")

    print("batch layout:")
    exp_in = np.full((B, T), eot, np.int32)
    exp_tg = np.full((B, T), -1, np.int32)
    exp_mask = np.zeros((B, T), np.float32)
    for b in range(B):
        n = lens[b] - 1
        exp_in[b, :n] = ex[b, :n]
        exp_tg[b, :n] = ex[b, 1:n + 1]
        exp_mask[b, plens[b] - 1:n] = 1
    check("T = longest example - 1", T == lens.max() - 1, f"T {T}, lengths {lens.tolist()}")
    check("lengths differ", len(set(lens.tolist())) == B and len(set(plens.tolist())) == B,
          f"len {lens.tolist()} prompt {plens.tolist()}")
    check("inputs", np.array_equal(inputs, exp_in), "tokens, eot pads")
    check("targets", np.array_equal(targets, exp_tg), "next tokens, -1 on pads")
    check("mask", np.array_equal(mask, exp_mask), f"response+eot positions: {int(mask.sum())}")
    check("ends in eot", all(ex[b, lens[b] - 1] == eot for b in range(B)), "each example")

    params = {n: torch.from_numpy(load("param_" + n)).double().view(shapes[n]) for n in names}
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = RefGPT(meta, leaf)

    print("forward, each example alone (unpadded) in torch:")
    c_logits = torch.from_numpy(load("logits")).double()
    loss_sum, loss_all_sum, count, count_all = 0.0, 0.0, 0, 0
    worst = 0.0
    for b in range(B):
        n = int(lens[b]) - 1
        idx = torch.from_numpy(ex[b, :n].astype(np.int64)).view(1, n)
        tgt = torch.from_numpy(ex[b, 1:n + 1].astype(np.int64))
        logits = ref.forward(idx)[0]  # (n,V)
        _, rel = scale_rel(c_logits[b, :n], logits.detach())
        worst = max(worst, rel)
        ce = F.cross_entropy(logits, tgt, reduction="none")  # (n)
        P = int(plens[b])
        loss_sum = loss_sum + ce[P - 1:].sum()
        count += n - (P - 1)
        loss_all_sum += ce.sum().item()
        count_all += n
    check("logits at real positions", worst <= TOL_LOGITS, f"scale-rel err {worst:.2e}")
    ref_loss = loss_sum / count
    ref_loss.backward()
    c_loss = float(load("loss")[0])
    rel = abs(c_loss - ref_loss.item()) / abs(ref_loss.item())
    check("loss = mean over response tokens", rel <= TOL_LOSS,
          f"C {c_loss:.7f} torch {ref_loss.item():.7f} rel {rel:.2e} ({count} tokens)")
    all_mean = loss_all_sum / count_all
    check("loss != mean over all tokens", abs(c_loss - all_mean) > 1e-3,
          f"all-position mean {all_mean:.5f}")

    print("d(logits):")
    dl = load("dlogits")  # (B,T,V)
    zero_rows = mask == 0
    check("prompt positions exactly 0", all(np.all(dl[b, t] == 0) for b in range(B)
                                            for t in range(T) if t < lens[b] - 1 and mask[b, t] == 0),
          f"{int(sum((mask[b, :lens[b] - 1] == 0).sum() for b in range(B)))} positions")
    check("pad positions exactly 0", all(np.all(dl[b, t] == 0) for b in range(B)
                                         for t in range(int(lens[b]) - 1, T)),
          f"{int(sum(T - lens[b] + 1 for b in range(B)))} positions")
    nonzero = np.abs(dl).max(axis=-1) > 0  # (B,T)
    check("response positions non-zero", bool(np.all(nonzero[mask == 1])),
          f"{int(nonzero[mask == 1].sum())}/{int((mask == 1).sum())}")
    check("zero exactly where masked", np.array_equal(nonzero, ~zero_rows), "")
    # torch's d(loss)/d(logits) on the padded batch with the same mask
    lg = ref.forward(torch.from_numpy(inputs.astype(np.int64))).detach().requires_grad_(True)
    V = lg.shape[-1]
    ce = F.cross_entropy(lg.reshape(-1, V), torch.from_numpy(targets.astype(np.int64)).clamp(min=0).reshape(-1),
                         reduction="none").view(B, T)
    w = torch.from_numpy(mask).double()
    ((ce * w).sum() / w.sum()).backward()
    err, rel = scale_rel(torch.from_numpy(dl).double(), lg.grad)
    check("d(logits) = torch", rel <= TOL_GRAD, f"max abs err {err:.2e}, rel {rel:.2e}")

    print("parameter gradients vs torch (response-only loss of the unpadded examples):")
    for n in names:
        c = torch.from_numpy(load("grad_" + n)).double().view(shapes[n])
        r = leaf[n].grad
        err, rel = scale_rel(c, r)
        check(f"grad {n}", rel <= TOL_GRAD and r.abs().max().item() > 0,
              f"max abs err {err:.2e}, rel {rel:.2e} (scale {r.abs().max().item():.2e})")

    print("changed prompt targets (mask 0):")
    changed, targets2 = load("changed"), load("targets2")
    differs = all(targets2[b, t] != targets[b, t] and targets2[b, t] >= 0 for b, t in changed)
    check("targets really changed", len(changed) >= 3 and differs and
          int((targets2 != targets).sum()) == len(changed),
          f"{len(changed)} positions, rows {sorted(set(changed[:, 0].tolist()))}")
    check("loss bit-identical", load("loss2")[0] == load("loss")[0], "")
    check("d(logits) bit-identical", np.array_equal(load("dlogits2"), dl), "")
    same = [n for n in names if np.array_equal(load("grad2_" + n), load("grad_" + n))]
    check("gradients bit-identical", len(same) == len(names), f"{len(same)}/{len(names)} tensors")

    print("held-out loss (sft_eval, batches of 2):")
    ev = float(load("eval_loss")[0])
    rel = abs(ev - ref_loss.item()) / abs(ref_loss.item())
    check("eval = response-token mean", rel <= TOL_LOSS and int(load("eval_tokens")[0]) == count,
          f"C {ev:.7f} torch {ref_loss.item():.7f} rel {rel:.2e}, {int(load('eval_tokens')[0])} tokens")

    if failures:
        print(f"FAILED: {len(failures)} check(s): {', '.join(failures)}")
        return 1
    print("all SFT masking checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
