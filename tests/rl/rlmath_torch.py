#!/usr/bin/python3
"""PyTorch reference for worker/rl_math.c.

Runs tests/rl/rlmath_dump (the C functions on random inputs), then recomputes
every case in float64 PyTorch from the same float32 inputs -- gradients by
autograd -- and compares. Prints the max relative error per function.

usage: rlmath_torch.py --driver PATH [--perturb]
--perturb makes the driver corrupt two outputs; the test then passes only if
exactly those cases (gae_2, ppo_9) are reported as mismatches, showing that the
comparison can fail.
"""
import argparse
import json
import os
import sys
import tempfile
import subprocess

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"SKIP: {e} (run with /usr/bin/python3, which has torch)")
    sys.exit(77)

torch.set_default_dtype(torch.float64)
RTOL = 1e-5


def load(d, case, field):
    return torch.from_numpy(np.load(os.path.join(d, f"{case['name']}.{field}.npy")).astype(np.float64))


def load_int(d, case, field):
    return torch.from_numpy(np.load(os.path.join(d, f"{case['name']}.{field}.npy")).astype(np.int64))


def rel_err(c, ref):
    """max |c - ref| relative to the scale of ref (max |ref|, at least 1e-3)."""
    c = torch.as_tensor(c, dtype=torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    if c.shape != ref.shape:
        return float("inf")
    if c.numel() == 0:
        return 0.0
    scale = max(float(ref.abs().max()), 1e-3)
    return float((c - ref).abs().max()) / scale


def mask_or_ones(d, case, n):
    return load(d, case, "mask") if case.get("has_mask") else torch.ones(n)


# ---------------------------------------------------------------------------
# references


def ref_gae(d, case):
    r, v = load(d, case, "rewards"), load(d, case, "values")
    gamma, lam = case["gamma"], case["lam"]
    n = len(r)
    adv = torch.zeros(n)
    last = 0.0
    for t in reversed(range(n)):  # trlx get_advantages_and_returns
        next_v = v[t + 1] if t + 1 < n else 0.0
        delta = r[t] + gamma * next_v - v[t]
        last = delta + gamma * lam * last
        adv[t] = last
    ret = adv + v
    return {"adv": rel_err(load(d, case, "adv"), adv), "ret": rel_err(load(d, case, "ret"), ret)}


def ref_whiten(d, case):
    x = load(d, case, "x")
    m = mask_or_ones(d, case, len(x)).bool()
    sel = x[m]
    mean = sel.mean()
    std = sel.std(unbiased=True) if sel.numel() > 1 else torch.tensor(0.0)
    w = (x - mean) / (std + 1e-8)
    if not case["shift_mean"]:
        w = w + mean
    y = torch.where(m, w, x)
    return {"y": rel_err(load(d, case, "y"), y)}


def ref_ppo(d, case):
    lp = load(d, case, "logp_new").requires_grad_(True)
    old = load(d, case, "logp_old")
    adv = load(d, case, "adv")
    mask = mask_or_ones(d, case, len(lp))
    c = case["clip"]
    n = mask.sum()
    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - c, 1.0 + c)
    loss = torch.sum(torch.max(pg1, pg2) * mask) / n  # trlx AccelerratePPO loss
    loss.backward()
    clipfrac = torch.sum((pg2 > pg1).double() * mask) / n
    approx_kl = torch.sum(0.5 * log_ratio.detach() ** 2 * mask) / n
    out = {
        "loss": rel_err(case["loss"], loss.detach()),
        "dlogp": rel_err(load(d, case, "dlogp"), lp.grad),
        "clipfrac": abs(case["clipfrac"] - float(clipfrac)),
        "approx_kl": rel_err(case["approx_kl"], approx_kl),
    }
    if len(lp) >= 64 and not (0.05 < float(clipfrac) < 0.95):
        out["clip_not_exercised"] = 1.0
    return out


def ref_value(d, case):
    v = load(d, case, "v").requires_grad_(True)
    v_old, ret = load(d, case, "v_old"), load(d, case, "ret")
    mask = mask_or_ones(d, case, len(v))
    c = case["clip"]
    n = mask.sum()
    v_clipped = torch.clamp(v, v_old - c, v_old + c)  # trlx: clamp(values, old - c, old + c)
    vf1 = (v - ret) ** 2
    vf2 = (v_clipped - ret) ** 2
    loss = 0.5 * torch.sum(torch.max(vf1, vf2) * mask) / n
    loss.backward()
    clipfrac = torch.sum((vf2 > vf1).double() * mask) / n
    out = {
        "loss": rel_err(case["loss"], loss.detach()),
        "dv": rel_err(load(d, case, "dv"), v.grad),
        "vf_clipfrac": abs(case["vf_clipfrac"] - float(clipfrac)),
    }
    if len(v) >= 64 and not (0.02 < float(clipfrac) < 0.98):
        out["clip_not_exercised"] = 1.0
    return out


def ref_kl_token(d, case):
    lp, ref = load(d, case, "logp"), load(d, case, "logp_ref")
    est = case["estimator"]
    if est == 1:
        kl = lp - ref
    elif est == 2:
        kl = 0.5 * (lp - ref) ** 2
    else:
        r = ref - lp
        kl = torch.exp(r) - 1 - r
    return {"kl": rel_err(load(d, case, "kl"), kl)}


def ref_kl_controller(d, case):
    kls, n_steps = load(d, case, "kls"), load_int(d, case, "n_steps")
    value = np.float32(case["init"])
    values = []
    for kl, ns in zip(kls.tolist(), n_steps.tolist()):
        if case["adaptive"]:  # trlx AdaptiveKLController.update
            err = np.clip(kl / case["target"] - 1, -0.2, 0.2)
            mult = 1 + err * ns / case["horizon"]
            value = np.float32(float(value) * mult)  # the C controller stores a float
        values.append(float(value))
    return {"values": rel_err(load(d, case, "values"), torch.tensor(values))}


def ref_entropy(d, case):
    logits = load(d, case, "logits").view(case["rows"], case["V"])
    ent = torch.distributions.Categorical(logits=logits).entropy()
    return {"entropy": rel_err(load(d, case, "entropy"), ent)}


def ref_explained_variance(d, case):
    v, ret = load(d, case, "v"), load(d, case, "ret")
    m = mask_or_ones(d, case, len(v)).bool()
    ev = 1 - torch.var(ret[m] - v[m]) / torch.var(ret[m])  # trlx explained variance
    return {"ev": rel_err(case["ev"], ev)}


def ref_quantile_bins(d, case):
    r = load(d, case, "rewards")
    K = case["K"]
    n = len(r)
    order = torch.sort(r, stable=True).indices  # ties keep index order
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    bins = rank * K // n
    c = load_int(d, case, "bins")
    return {"bins_mismatch": float((c != bins).sum())}


def ref_group_adv(d, case):
    G = case["G"]
    r = load(d, case, "r").view(case["groups"], G)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(mean)
    grpo_std = ((r - mean) / (std + 1e-8)).flatten()
    grpo_nostd = (r - mean).flatten()
    if G > 1:
        rloo = (r - (r.sum(dim=1, keepdim=True) - r) / (G - 1)).flatten()
    else:
        rloo = r.flatten()
    return {
        "grpo_std": rel_err(load(d, case, "grpo_std"), grpo_std),
        "grpo_nostd": rel_err(load(d, case, "grpo_nostd"), grpo_nostd),
        "rloo": rel_err(load(d, case, "rloo"), rloo),
    }


def ref_dpo(d, case):
    pc = load(d, case, "pc").requires_grad_(True)
    pr = load(d, case, "pr").requires_grad_(True)
    rc, rr = load(d, case, "rc"), load(d, case, "rr")
    beta = case["beta"]
    logits = beta * ((pc - rc) - (pr - rr))
    loss = -torch.nn.functional.logsigmoid(logits).mean()  # Rafailov et al. / TRL sigmoid loss
    loss.backward()
    acc = (logits > 0).double().mean()
    return {
        "loss": rel_err(case["loss"], loss.detach()),
        "dpc": rel_err(load(d, case, "dpc"), pc.grad),
        "dpr": rel_err(load(d, case, "dpr"), pr.grad),
        "acc": abs(case["acc"] - float(acc)),
    }


REFS = {
    "gae": ref_gae, "whiten": ref_whiten, "ppo": ref_ppo, "value": ref_value, "kl_token": ref_kl_token,
    "kl_controller": ref_kl_controller, "entropy": ref_entropy, "explained_variance": ref_explained_variance,
    "quantile_bins": ref_quantile_bins, "group_adv": ref_group_adv, "dpo": ref_dpo,
}
# absolute limits for fractions and counts (a fraction of n is exact up to float rounding)
ABS_LIMITS = {"clipfrac": 1e-6, "vf_clipfrac": 1e-6, "acc": 1e-6, "bins_mismatch": 0.0, "clip_not_exercised": 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--perturb", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cmd = [args.driver, "--out", d] + (["--perturb"] if args.perturb else [])
        subprocess.run(cmd, check=True)
        with open(os.path.join(d, "meta.json")) as f:
            cases = json.load(f)["cases"]
        worst = {}
        failed = set()
        for case in cases:
            errs = REFS[case["fn"]](d, case)
            for key, err in errs.items():
                limit = ABS_LIMITS.get(key, RTOL)
                name = f"{case['fn']}.{key}"
                worst[name] = max(worst.get(name, 0.0), err)
                if not err <= limit:
                    failed.add(case["name"])
                    print(f"MISMATCH {case['name']}.{key}: error {err:.3e} > {limit:g}")
        seen = {c["fn"] for c in cases}
        missing = set(REFS) - seen
        print(f"{len(cases)} cases over {len(seen)} functions")
        for name in sorted(worst):
            print(f"  {name:32s} max error {worst[name]:.3e}")
    if missing:
        print(f"FAIL: no cases for {sorted(missing)}")
        return 1
    if args.perturb:
        expected = {"gae_2", "ppo_9"}
        if failed == expected:
            print(f"OK: the perturbed outputs were caught ({sorted(failed)})")
            return 0
        print(f"FAIL: perturbed run flagged {sorted(failed)}, expected {sorted(expected)}")
        return 1
    if failed:
        print(f"FAIL: {len(failed)} cases differ from PyTorch")
        return 1
    print("OK: every rl_math function equals the PyTorch reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
