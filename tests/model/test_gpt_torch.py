#!/usr/bin/python3
"""test_gpt_torch.py - checks the C GPT-2 (worker/gpt.c) against PyTorch.

Runs the gpt_dump driver for one shape, which dumps the C model's initial
parameters, a random batch, logits, loss, activations, every gradient, 10
AdamW steps and greedy generations as .npy files. Then rebuilds the same
GPT-2 in plain PyTorch (minGPT style, float64 so the reference error is
negligible next to fp32) from the dumped initial parameters and compares:

  activations of the first forward  (to locate an error; scale-relative)
  logits, per-position losses, the masked mean loss
  every parameter gradient           (max abs / scale-relative error each)
  per-step losses, pre-clip gradient norms, final parameters after the
    AdamW steps (torch.optim.AdamW + clip_grad_norm_)
  greedy tokens of the KV-cache generation (exact) and their logprobs

usage: test_gpt_torch.py --driver PATH --shape NAME [--keep DIR]
       test_gpt_torch.py --reuse DIR  (compare an existing dump, no driver)
Exit 0 pass, 1 mismatch, 77 skipped (no torch).
"""
import argparse
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

# Shapes: odd vocabularies and channels, heads of size 16, 12, 16 and 9,
# T < ctx and T == ctx, and one run without a mask.
# grad_clip sits inside the range of the gradient norms of the 10 steps so
# that some steps clip and some do not (asserted below).
SHAPES = {
    "L2_C32_V67": dict(layers=2, heads=2, channels=32, vocab=67, ctx=16, batch=3, seq=11,
                       seed=11, lr=1e-3, weight_decay=0.5, grad_clip=2.45),
    "L3_C48_V101_fullctx": dict(layers=3, heads=4, channels=48, vocab=101, ctx=24, batch=2,
                                seq=24, seed=22, lr=2e-3, weight_decay=0.3, grad_clip=2.0),
    "L1_C64_V1000": dict(layers=1, heads=4, channels=64, vocab=1000, ctx=32, batch=2, seq=20,
                         seed=33, lr=1e-3, weight_decay=0.1, grad_clip=2.7),
    "L2_C36_V53_nomask": dict(layers=2, heads=4, channels=36, vocab=53, ctx=13, batch=4, seq=7,
                              seed=44, lr=1e-3, weight_decay=0.0, grad_clip=0.0, no_mask=True),
}

EXPECTED_DECAYS = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"}

# Tolerances (C fp32 against a float64 reference; measured errors are printed).
TOL_ACT = 2e-5       # activations, scale-relative: max|c-ref| / max|ref|
TOL_LOGITS = 2e-5    # logits, scale-relative
TOL_LOSS = 1e-5      # mean loss, relative
TOL_GRAD = 1e-4      # gradients, scale-relative per tensor
TOL_STEP_LOSS = 1e-5  # per-step losses, relative
TOL_NORM = 1e-4      # per-step gradient norms, relative
TOL_PARAM = 3e-5     # final parameters, absolute (each moved ~10*lr; no clipping: >1.7e-4)
TOL_LOGPROB = 1e-4   # generation logprobs, absolute
NEAR_TIE = 1e-5      # a greedy token may differ only where two logits are this close

failures = []


def check(what, ok, msg):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}: {msg}")
    if not ok:
        failures.append(what)


def scale_rel(c, ref):
    """max abs error and max abs error relative to the tensor's scale."""
    err = (c - ref).abs().max().item() if c.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return err, err / scale if scale > 0 else err


def load(d, name):
    return torch.from_numpy(np.load(os.path.join(d, name + ".npy")))


class RefGPT:
    """GPT-2 in plain PyTorch over the stacked parameter tensors of gpt.h."""

    def __init__(self, meta, params):
        self.L = meta["num_layers"]
        self.C = meta["channels"]
        self.NH = meta["num_heads"]
        self.V = meta["vocab_size"]
        self.p = params  # name -> tensor, stacked layers first, Linear weights (out, in)

    def forward(self, idx, acts=None):
        """idx (B,T) -> logits (B,T,V); fills acts (dict) with the intermediates."""
        p, C, NH = self.p, self.C, self.NH
        B, T = idx.shape
        hs = C // NH
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        rec = acts is not None and {}

        def ln(x, w, b, key):
            if rec is not False:
                mean = x.mean(-1)
                rstd = 1.0 / torch.sqrt(x.var(-1, unbiased=False) + 1e-5)
                rec.setdefault(key + "_mean", []).append(mean)
                rec.setdefault(key + "_rstd", []).append(rstd)
            return F.layer_norm(x, (C,), w, b, 1e-5)

        def keep(key, t):
            if rec is not False:
                rec.setdefault(key, []).append(t)

        x = p["wte"][idx] + p["wpe"][:T]  # (B,T,C)
        if rec is not False:
            rec["encoded"] = [x]
        for l in range(self.L):
            h = ln(x, p["ln1w"][l], p["ln1b"][l], "ln1")
            keep("ln1", h)
            qkv = h @ p["qkvw"][l].T + p["qkvb"][l]  # (B,T,3C)
            keep("qkv", qkv)
            q, k, v = qkv.split(C, dim=-1)
            q = q.view(B, T, NH, hs).transpose(1, 2)  # (B,NH,T,hs)
            k = k.view(B, T, NH, hs).transpose(1, 2)
            v = v.view(B, T, NH, hs).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B,NH,T,T)
            att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            keep("att", att)
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
            keep("atty", y)
            y = y @ p["attprojw"][l].T + p["attprojb"][l]
            keep("attproj", y)
            x = x + y
            keep("residual2", x)
            h = ln(x, p["ln2w"][l], p["ln2b"][l], "ln2")
            keep("ln2", h)
            h = h @ p["fcw"][l].T + p["fcb"][l]  # (B,T,4C)
            keep("fch", h)
            h = F.gelu(h, approximate="tanh")
            keep("fch_gelu", h)
            h = h @ p["fcprojw"][l].T + p["fcprojb"][l]
            keep("fcproj", h)
            x = x + h
            keep("residual3", x)
        x = ln(x, p["lnfw"], p["lnfb"], "lnf")
        keep("lnf", x)
        logits = x @ p["wte"].T  # tied LM head, (B,T,V)
        if rec is not False:
            for key, val in rec.items():  # per-layer lists -> (L, ...) like gpt.h
                per_layer = key not in ("encoded", "lnf", "lnf_mean", "lnf_rstd")
                acts[key] = torch.stack(val) if per_layer else val[0]
        return logits

    @staticmethod
    def loss(logits, targets, mask):
        """mean of per-position losses weighted by mask; targets < 0 weigh 0."""
        V = logits.shape[-1]
        losses = F.cross_entropy(logits.reshape(-1, V), targets.clamp(min=0).reshape(-1),
                                 reduction="none").view(targets.shape)
        w = (targets >= 0).to(logits.dtype)
        if mask is not None:
            w = w * mask
        return (losses * w).sum() / w.sum(), losses


def compare_forward(d, meta, ref, data):
    print("forward (batch 0):")
    inputs, targets, mask = data
    acts = {}
    with torch.no_grad():
        logits = ref.forward(inputs[0], acts)
        loss, losses = RefGPT.loss(logits, targets[0], mask[0] if mask is not None else None)
    causal = torch.tril(torch.ones(inputs.shape[2], inputs.shape[2], dtype=torch.bool))
    for name in ["encoded", "ln1", "ln1_mean", "ln1_rstd", "qkv", "att", "atty", "attproj",
                 "residual2", "ln2", "ln2_mean", "ln2_rstd", "fch", "fch_gelu", "fcproj",
                 "residual3", "lnf", "lnf_mean", "lnf_rstd"]:
        c = load(d, "act_" + name).double()
        r = acts[name]
        if name == "att":  # only the causal part is defined
            c, r = c[..., causal], r[..., causal]
        err, rel = scale_rel(c, r)
        check(f"act {name}", rel <= TOL_ACT, f"max abs err {err:.3e}, rel {rel:.3e}")
    err, rel = scale_rel(load(d, "act_logits").double(), logits)
    check("logits", rel <= TOL_LOGITS, f"max abs err {err:.3e}, rel {rel:.3e} "
          f"(scale {logits.abs().max().item():.3f})")
    valid = targets[0] >= 0
    err, rel = scale_rel(load(d, "act_losses").double()[valid], losses[valid])
    check("per-position losses", rel <= TOL_ACT, f"max abs err {err:.3e}, rel {rel:.3e}")
    c_loss = load(d, "loss").double()[0].item()
    rel = abs(c_loss - loss.item()) / abs(loss.item())
    check("mean loss", rel <= TOL_LOSS, f"C {c_loss:.7f} torch {loss.item():.7f} rel {rel:.2e}")


def compare_grads(d, meta, params, data):
    print("gradients (batch 0):")
    inputs, targets, mask = data
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = RefGPT(meta, leaf)
    loss, _ = RefGPT.loss(ref.forward(inputs[0]), targets[0],
                          mask[0] if mask is not None else None)
    loss.backward()
    for name in meta["param_names"]:
        c = load(d, "grad_" + name).double()
        r = leaf[name].grad
        err, rel = scale_rel(c, r)
        check(f"grad {name}", rel <= TOL_GRAD,
              f"max abs err {err:.3e}, rel {rel:.3e} (scale {r.abs().max().item():.3e})")


def key_bias_mask(meta):
    """qkvb's K slice: its true gradient is exactly 0 (softmax is shift
    invariant), so fp32 noise decides the sign of Adam's update there."""
    L, C = meta["num_layers"], meta["channels"]
    m = torch.zeros(L, 3 * C, dtype=torch.bool)
    m[:, C:2 * C] = True
    return m


def compare_training(d, meta, params, data):
    steps, clip = meta["steps"], meta["grad_clip"]
    print(f"training ({steps} AdamW steps, lr {meta['lr']:.3g}, wd {meta['weight_decay']:.3g}, "
          f"clip {clip:.3g}):")
    inputs, targets, mask = data
    names = meta["param_names"]
    decays = dict(zip(names, meta["param_decays"]))
    check("param_decays", {n for n in names if decays[n]} == EXPECTED_DECAYS,
          f"decayed: {sorted(n for n in names if decays[n])}")
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = RefGPT(meta, leaf)
    groups = [
        {"params": [leaf[n] for n in names if decays[n]], "weight_decay": meta["weight_decay"]},
        {"params": [leaf[n] for n in names if not decays[n]], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=meta["lr"], betas=(meta["beta1"], meta["beta2"]),
                            eps=meta["eps"])
    ref_losses, ref_norms = [], []
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, _ = RefGPT.loss(ref.forward(inputs[s]), targets[s],
                              mask[s] if mask is not None else None)
        loss.backward()
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(list(leaf.values()), clip)
        else:
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in leaf.values()))
        ref_losses.append(loss.item())
        ref_norms.append(norm.item())
        opt.step()
    c_losses = load(d, "step_losses").double()
    c_norms = load(d, "step_norms").double()
    ref_losses = torch.tensor(ref_losses, dtype=torch.float64)
    ref_norms = torch.tensor(ref_norms, dtype=torch.float64)
    print("    step  loss C / torch           grad norm C / torch")
    for s in range(steps):
        print(f"    {s:4d}  {c_losses[s]:.6f} / {ref_losses[s]:.6f}    "
              f"{c_norms[s]:.6f} / {ref_norms[s]:.6f}"
              f"{'  clipped' if clip > 0 and ref_norms[s] > clip else ''}")
    rel = ((c_losses - ref_losses).abs() / ref_losses.abs()).max().item()
    check("step losses", rel <= TOL_STEP_LOSS, f"max rel err {rel:.2e}")
    rel = ((c_norms - ref_norms).abs() / ref_norms).max().item()
    check("step grad norms", rel <= TOL_NORM, f"max rel err {rel:.2e}")
    if clip > 0:
        n_clipped = int((ref_norms > clip).sum())
        check("clipping exercised", 0 < n_clipped < steps,
              f"{n_clipped} of {steps} steps clipped (norms {ref_norms.min():.3f}"
              f"..{ref_norms.max():.3f}, clip {clip:.3g})")
    kmask = key_bias_mask(meta)
    for name in names:
        c = load(d, "final_" + name).double()
        r = leaf[name].detach()
        moved = (r - params[name]).abs().max().item()
        if name == "qkvb":
            # the K bias gets ~random +-lr steps in both; bound it by the steps taken
            kerr = (c[kmask] - r[kmask]).abs().max().item()
            bound = 2.0 * steps * meta["lr"] * 1.01
            check("final qkvb (K slice)", kerr <= bound,
                  f"max abs err {kerr:.3e} (bound {bound:.1e}: zero-gradient noise)")
            c, r = c[~kmask], r[~kmask]
        err = (c - r).abs().max().item()
        check(f"final {name}", err <= TOL_PARAM,
              f"max abs err {err:.3e} (moved up to {moved:.3e})")


def compare_generation(d, meta):
    print("greedy generation (KV cache; reference: full recompute, C's final params):")
    final = {n: load(d, "final_" + n).double() for n in meta["param_names"]}
    ref = RefGPT(meta, final)
    tokens = load(d, "gen_tokens")
    logprobs = load(d, "gen_logprobs").double()
    lens = load(d, "gen_len").tolist()
    plens = load(d, "gen_prompt_len").tolist()
    maxT = meta["max_seq_len"]
    for i in range(tokens.shape[0]):
        want_len = min(plens[i] + 8, maxT)
        check(f"gen {i} length", lens[i] == want_len,
              f"prompt {plens[i]}, total {lens[i]} (want {want_len})")
        seq = tokens[i, :lens[i]].long()
        exact, ties, lp_err = True, 0, 0.0
        with torch.no_grad():
            logits = ref.forward(seq.view(1, -1))[0]  # (T,V); causal: one pass serves all
        for j in range(plens[i], lens[i]):
            row = logits[j - 1]
            best = int(row.argmax())
            got = int(seq[j])
            if got != best:
                gap = (row[best] - row[got]).item()
                if gap <= NEAR_TIE:
                    ties += 1
                else:
                    exact = False
                    print(f"    gen {i} pos {j}: C chose {got}, torch argmax {best} "
                          f"(logit gap {gap:.3e})")
            lp = torch.log_softmax(row, -1)[got].item()
            lp_err = max(lp_err, abs(lp - logprobs[i, j - plens[i]].item()))
        n_new = lens[i] - plens[i]
        check(f"gen {i} tokens", exact,
              (f"{n_new} greedy tokens match" if exact else f"mismatch among {n_new} tokens")
              + (f" ({ties} near-ties)" if ties else ""))
        check(f"gen {i} logprobs", lp_err <= TOL_LOGPROB, f"max abs err {lp_err:.3e}")


def run_driver(driver, shape, out):
    cfg = SHAPES[shape]
    cmd = [driver, "--out", out, "--threads", "2"]
    for key in ["layers", "heads", "channels", "vocab", "ctx", "batch", "seq", "seed", "lr",
                "weight_decay", "grad_clip"]:
        cmd += ["--" + key.replace("_", "-"), str(cfg[key])]
    if cfg.get("no_mask"):
        cmd.append("--no-mask")
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(r.stdout, end="")
    if r.returncode != 0:
        print(f"FAIL: driver exited with {r.returncode}")
        sys.exit(1)


def compare(d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    print(f"config: L={meta['num_layers']} NH={meta['num_heads']} C={meta['channels']} "
          f"V={meta['vocab_size']} ctx={meta['max_seq_len']} B={meta['B']} T={meta['T']} "
          f"mask={'yes' if meta['use_mask'] else 'NULL'}")
    params = {n: load(d, "param_" + n).double() for n in meta["param_names"]}
    inputs = load(d, "inputs").long()
    targets = load(d, "targets").long()
    mask = load(d, "mask").double() if meta["use_mask"] else None
    data = (inputs, targets, mask)
    ref = RefGPT(meta, params)
    compare_forward(d, meta, ref, data)
    compare_grads(d, meta, params, data)
    compare_training(d, meta, params, data)
    if meta["generated"]:
        compare_generation(d, meta)
    else:
        check("generation", False, "the driver did not dump a generation")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--driver", help="path of the gpt_dump program")
    ap.add_argument("--shape", choices=sorted(SHAPES), action="append",
                    help="shape(s) to run (default: all)")
    ap.add_argument("--keep", help="dump into this directory and keep it")
    ap.add_argument("--reuse", help="compare an existing dump directory; no driver run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.reuse:
        compare(args.reuse)
    else:
        if not args.driver:
            ap.error("--driver is required unless --reuse is given")
        for shape in args.shape or sorted(SHAPES):
            print(f"=== {shape}")
            if args.keep:
                out = os.path.join(args.keep, shape)
                os.makedirs(out, exist_ok=True)
                run_driver(args.driver, shape, out)
                compare(out)
            else:
                with tempfile.TemporaryDirectory(prefix="gpt_dump_") as out:
                    run_driver(args.driver, shape, out)
                    compare(out)
    if failures:
        print(f"FAILED: {len(failures)} check(s): {', '.join(failures)}")
        sys.exit(1)
    print("PASSED")


if __name__ == "__main__":
    main()
