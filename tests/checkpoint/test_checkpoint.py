#!/usr/bin/python3
"""File-format tests for `rlhfd convert` and the model loader.

Writes random GPT-2 models in Hugging Face layout (safetensors written by hand,
with and without the "transformer." prefix, with attn.bias buffers) and in
llm.c .bin layout, converts them with rlhfd between native / hf / llmc and
checks every tensor bit for bit; checks the run-dir fallback and that bad input
gives one clean error line. Usage: test_checkpoint.py roundtrip|rundir|errors
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

try:
    import numpy as np
    import torch
except ImportError as e:  # needs Debian's python3-torch / python3-numpy
    print(f"skip: {e} (run with /usr/bin/python3)")
    sys.exit(77)

BIN = os.environ.get("RLHFD_BIN")
FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILS.append(what)


# ---------------------------------------------------------------- safetensors

DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}
NP_OF = {"F32": np.float32, "F16": np.float16}


def write_st(path, tensors, metadata=None):
    header, offset, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.tobytes()
        header[name] = {"dtype": DTYPES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_st(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(buf[8 + n + b:8 + n + end], dtype=NP_OF[e["dtype"]]).reshape(e["shape"])
    return out, meta


# ---------------------------------------------------------------- model layouts

LAYER = [  # (HF suffix, native name, Conv1D transposed)
    ("ln_1.weight", "ln1w", False), ("ln_1.bias", "ln1b", False),
    ("attn.c_attn.weight", "qkvw", True), ("attn.c_attn.bias", "qkvb", False),
    ("attn.c_proj.weight", "attprojw", True), ("attn.c_proj.bias", "attprojb", False),
    ("ln_2.weight", "ln2w", False), ("ln_2.bias", "ln2b", False),
    ("mlp.c_fc.weight", "fcw", True), ("mlp.c_fc.bias", "fcb", False),
    ("mlp.c_proj.weight", "fcprojw", True), ("mlp.c_proj.bias", "fcprojb", False),
]
NATIVE_ORDER = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]


def hf_params(cfg, seed):
    """Random HF GPT-2 tensors (un-prefixed keys, Conv1D (in,out) layout)."""
    rng = np.random.default_rng(seed)
    C, L, V, T = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    p = {"wte.weight": r(V, C), "wpe.weight": r(T, C)}
    shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C),
              "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
              "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (C, 4 * C),
              "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
    for l in range(L):
        for suffix, _, _ in LAYER:
            p[f"h.{l}.{suffix}"] = r(*shapes[suffix])
    p["ln_f.weight"], p["ln_f.bias"] = r(C), r(C)
    return p


def hf_buffers(cfg):
    T = cfg["n_positions"]
    b = {}
    for l in range(cfg["n_layer"]):
        b[f"h.{l}.attn.bias"] = np.tril(np.ones((T, T), np.float32)).reshape(1, 1, T, T)
        b[f"h.{l}.attn.masked_bias"] = np.array(-1e4, np.float32)
    return b


def hf_to_native(cfg, p):
    n = {"wte": p["wte.weight"], "wpe": p["wpe.weight"], "lnfw": p["ln_f.weight"], "lnfb": p["ln_f.bias"]}
    for suffix, name, transposed in LAYER:
        per_layer = [p[f"h.{l}.{suffix}"] for l in range(cfg["n_layer"])]
        n[name] = np.stack([x.T if transposed else x for x in per_layer])
    return n


def hf_config(cfg):
    return dict(cfg, model_type="gpt2", activation_function="gelu_new", n_ctx=cfg["n_positions"],
                architectures=["GPT2LMHeadModel"])


def write_hf_dir(d, cfg, params, prefix="", buffers=True, lm_head=False, dtype=np.float32):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f)
    t = {prefix + k: v.astype(dtype) for k, v in params.items()}
    if buffers:
        t.update({prefix + k: v.astype(dtype) for k, v in hf_buffers(cfg).items()})
    if lm_head:
        t["lm_head.weight"] = params["wte.weight"].astype(dtype)
    write_st(os.path.join(d, "model.safetensors"), dict(sorted(t.items())), {"format": "pt"})


def llmc_bytes(cfg, native, pad_fill=0.0, version=3):
    C, V = cfg["n_embd"], cfg["vocab_size"]
    Vp = (V + 127) // 128 * 128
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, version, cfg["n_positions"], V, cfg["n_layer"], cfg["n_head"], C, Vp]
    wte = np.full((Vp, C), pad_fill, np.float32)
    wte[:V] = native["wte"]
    parts = [wte] + [native[k] for k in NATIVE_ORDER[1:]]
    flat = np.concatenate([x.reshape(-1) for x in parts]).astype(np.float32)
    if version == 5:  # bf16: the top half of each float (round toward zero)
        flat = (flat.view(np.uint32) >> 16).astype(np.uint16)
    return header.tobytes() + flat.tobytes()


def read_llmc(path):
    with open(path, "rb") as f:
        buf = f.read()
    h = np.frombuffer(buf[:1024], np.int32)
    return h, np.frombuffer(buf[1024:], np.float32)


# ---------------------------------------------------------------- running rlhfd

def run(args):
    p = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    for bad in ("Segmentation", "AddressSanitizer", "runtime error", "LeakSanitizer"):
        if bad in out:
            check(False, f"no '{bad}' in output of rlhfd {' '.join(args)}:\n{out}")
    return p


def convert(src, out, to):
    p = run(["convert", "--model", src, "--out", out, "--to", to])
    check(p.returncode == 0, f"convert {os.path.basename(src)} -> {to}" +
          ("" if p.returncode == 0 else f": rc={p.returncode} {p.stderr.strip()}"))
    return p


def expect_error(args, needles, what, rc=1):
    p = run(args)
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l]
    last = lines[-1] if lines else ""
    ok = (p.returncode == rc and len(errors) == 1 and last == errors[0]
          and all(n.lower() in last.lower() for n in needles))
    check(ok, f"{what}: rc={p.returncode} (want {rc}), one error line containing {needles}; got: {last!r}"
          + ("" if len(errors) <= 1 else f" ({len(errors)} error lines)"))


def same(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


CFG_A = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=16)
CFG_B = dict(n_layer=1, n_embd=16, n_head=2, vocab_size=50304 + 3, n_positions=8)


# ---------------------------------------------------------------- tests

def test_roundtrip(tmp):
    for tag, cfg, prefix in (("A", CFG_A, ""), ("B", CFG_B, "transformer.")):
        params = hf_params(cfg, seed=1 if tag == "A" else 2)
        native_ref = hf_to_native(cfg, params)
        src = os.path.join(tmp, f"hf{tag}")
        write_hf_dir(src, cfg, params, prefix=prefix, lm_head=(tag == "B"))

        # HF -> native: names, shapes, transposition, metadata, state.json checksums
        nat = os.path.join(tmp, f"nat{tag}")
        convert(src, nat, "native")
        t, meta = read_st(os.path.join(nat, "model.safetensors"))
        check(list(t) == NATIVE_ORDER, f"[{tag}] native tensor names in GPT_PARAM_NAMES order")
        check(all(same(t[k], native_ref[k]) for k in NATIVE_ORDER),
              f"[{tag}] HF -> native: all 16 tensors bit-exact (Conv1D transposed)")
        L, C = cfg["n_layer"], cfg["n_embd"]
        check(t["qkvw"].shape == (L, 3 * C, C) and t["fcprojw"].shape == (L, C, 4 * C),
              f"[{tag}] native qkvw (L,3C,C), fcprojw (L,C,4C)")
        l = L - 1
        hf_w = params[f"h.{l}.attn.c_attn.weight"]
        check(t["qkvw"][l, 5, 3] == hf_w[3, 5] and t["qkvw"][l, 2 * C + 1, 7] == hf_w[7, 2 * C + 1],
              f"[{tag}] qkvw[l, out, in] == HF c_attn.weight[in, out] (specific values)")
        # the transposed weight computes what Conv1D computes: x @ W_hf + b == F.linear(x, W_ours, b)
        x = torch.randn(3, C, dtype=torch.float64)
        y_hf = x @ torch.from_numpy(hf_w).double() + torch.from_numpy(params[f"h.{l}.attn.c_attn.bias"]).double()
        y_ours = torch.nn.functional.linear(x, torch.from_numpy(t["qkvw"][l].copy()).double(),
                                            torch.from_numpy(t["qkvb"][l].copy()).double())
        check(torch.allclose(y_hf, y_ours, rtol=0, atol=1e-12), f"[{tag}] Conv1D(x) == Linear(x) after transpose")
        check(meta.get("format") == "rlhfd" and meta.get("num_layers") == str(L) and
              meta.get("vocab_size") == str(cfg["vocab_size"]), f"[{tag}] native metadata records format + config")
        with open(os.path.join(nat, "state.json")) as f:
            st = json.load(f)
        with open(os.path.join(nat, "model.safetensors"), "rb") as f:
            blob = f.read()
        fe = st["files"]["model.safetensors"]
        check(st["format"] == "rlhfd" and st["config"]["channels"] == C and
              fe["bytes"] == len(blob) and fe["crc32"] == zlib.crc32(blob),
              f"[{tag}] state.json: format, config, size and crc32 of model.safetensors")

        # native -> hf: identical to the source (buffers and lm_head dropped, prefix removed)
        hf_out = os.path.join(tmp, f"hfout{tag}")
        convert(nat, hf_out, "hf")
        t2, meta2 = read_st(os.path.join(hf_out, "model.safetensors"))
        check(set(t2) == set(params) and all(same(t2[k], params[k]) for k in params),
              f"[{tag}] HF -> native -> HF: {len(params)} tensors bit-exact, un-prefixed, no buffers")
        check(meta2.get("format") == "pt", f"[{tag}] HF export metadata format 'pt'")
        with open(os.path.join(hf_out, "config.json")) as f:
            hc = json.load(f)
        want_bos = 50256 if cfg["vocab_size"] > 50256 else cfg["vocab_size"] - 1
        check(hc["model_type"] == "gpt2" and hc["architectures"] == ["GPT2LMHeadModel"] and
              all(hc[k] == cfg[k] for k in cfg) and hc["n_ctx"] == cfg["n_positions"] and
              hc["activation_function"] == "gelu_new" and hc["layer_norm_epsilon"] == 1e-5 and
              hc["bos_token_id"] == want_bos and hc["eos_token_id"] == want_bos,
              f"[{tag}] HF config.json keys (bos/eos {want_bos})")

        # hf -> llmc: header, padding, order
        bin_path = os.path.join(tmp, f"m{tag}.bin")
        convert(hf_out, bin_path, "llmc")
        h, flat = read_llmc(bin_path)
        V = cfg["vocab_size"]
        Vp = (V + 127) // 128 * 128
        check(list(h[:8]) == [20240326, 3, cfg["n_positions"], V, L, cfg["n_head"], C, Vp] and not h[8:].any(),
              f"[{tag}] llm.c header (magic, version 3, maxT V L NH C Vp={Vp})")
        with open(bin_path, "rb") as f:
            check(f.read() == llmc_bytes(cfg, native_ref), f"[{tag}] llm.c .bin byte-identical to reference layout")
        check(not flat[V * C:Vp * C].any(), f"[{tag}] llm.c wte padding rows are zero")

        # llmc -> native -> compare with the first native (and the loader reads .bin directly)
        nat2 = os.path.join(tmp, f"nat{tag}2")
        convert(bin_path, nat2, "native")
        t3, _ = read_st(os.path.join(nat2, "model.safetensors"))
        check(all(same(t3[k], native_ref[k]) for k in NATIVE_ORDER), f"[{tag}] llmc -> native bit-exact")

        # the loader also takes a bare model.safetensors (HF with config.json beside it, or native)
        bin2 = os.path.join(tmp, f"m{tag}_from_file.bin")
        convert(os.path.join(src, "model.safetensors"), bin2, "llmc")
        bin3 = os.path.join(tmp, f"m{tag}_from_native_file.bin")
        convert(os.path.join(nat, "model.safetensors"), bin3, "llmc")
        with open(bin_path, "rb") as a, open(bin2, "rb") as b, open(bin3, "rb") as c:
            ab = a.read()
            check(ab == b.read() and ab == c.read(), f"[{tag}] HF and native model.safetensors files load directly")

    # llm.c file with garbage in the padding rows: padding dropped
    cfg = CFG_A
    params = hf_params(cfg, seed=3)
    ref = hf_to_native(cfg, params)
    garbage = os.path.join(tmp, "garbage_pad.bin")
    with open(garbage, "wb") as f:
        f.write(llmc_bytes(cfg, ref, pad_fill=7.0))
    out = os.path.join(tmp, "from_garbage")
    convert(garbage, out, "hf")
    t, _ = read_st(os.path.join(out, "model.safetensors"))
    check(all(same(t[k], params[k]) for k in params), "llm.c padding rows dropped, rest bit-exact")

    # llm.c bf16 (version 5)
    bf = os.path.join(tmp, "bf16.bin")
    with open(bf, "wb") as f:
        f.write(llmc_bytes(cfg, ref, version=5))
    out = os.path.join(tmp, "from_bf16")
    convert(bf, out, "native")
    t, _ = read_st(os.path.join(out, "model.safetensors"))
    trunc = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in ref.items()}
    check(all(same(t[k], trunc[k]) for k in NATIVE_ORDER), "llm.c bf16 (version 5) -> f32 exact")

    # half-precision HF file, with special values
    p16 = {k: v.astype(np.float16).astype(np.float32) for k, v in params.items()}
    special = np.array([0.0, -0.0, 2.0 ** -24, -(2.0 ** -24), 2.0 ** -14, 65504.0, -65504.0, np.inf, 1 / 3],
                       np.float16).astype(np.float32)
    p16["wte.weight"].reshape(-1)[:len(special)] = special
    d16 = os.path.join(tmp, "hf16")
    write_hf_dir(d16, cfg, p16, dtype=np.float16)
    out = os.path.join(tmp, "from16")
    convert(d16, out, "hf")
    t, _ = read_st(os.path.join(out, "model.safetensors"))
    check(all(same(t[k], p16[k]) for k in params), "F16 HF file -> f32 exact (incl. subnormal, -0, max, inf)")

    # native -> native keeps step and caller state; replacing an existing checkpoint is safe
    nat = os.path.join(tmp, "natA")
    again = os.path.join(tmp, "natA_copy")
    convert(nat, again, "native")
    convert(os.path.join(tmp, "natB"), again, "native")  # replace with a different model
    t, _ = read_st(os.path.join(again, "model.safetensors"))
    check(t["wte"].shape[0] == CFG_B["vocab_size"], "existing checkpoint dir replaced by the new one")
    leftovers = [n for n in os.listdir(tmp) if ".tmp-" in n or ".old-" in n]
    check(not leftovers, f"no temp dirs left behind ({leftovers})")


def test_rundir(tmp):
    run_dir = os.path.join(tmp, "run")
    models = []
    for i, step in enumerate((10, 20)):
        cfg = CFG_A
        params = hf_params(cfg, seed=10 + i)
        src = os.path.join(tmp, f"src{i}")
        write_hf_dir(src, cfg, params)
        convert(src, os.path.join(run_dir, f"ckpt-{step:08d}"), "native")
        models.append(hf_to_native(cfg, params))
    # a crashed save: partial directory without state.json
    os.makedirs(os.path.join(run_dir, "ckpt-00000030"))
    shutil.copy(os.path.join(run_dir, "ckpt-00000020", "model.safetensors"),
                os.path.join(run_dir, "ckpt-00000030"))

    out = os.path.join(tmp, "latest.bin")
    p = convert(run_dir, out, "llmc")
    with open(out, "rb") as f:
        check(f.read() == llmc_bytes(CFG_A, models[1]), "run dir -> newest valid checkpoint (step 20)")
    check("warning" in p.stderr and "ckpt-00000030" in p.stderr and "state.json" in p.stderr,
          "partial ckpt-00000030 skipped with a warning naming state.json")

    # corrupt one byte of the newest valid checkpoint: falls back to step 10 with a warning
    path = os.path.join(run_dir, "ckpt-00000020", "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    p = convert(run_dir, out, "llmc")
    with open(out, "rb") as f:
        check(f.read() == llmc_bytes(CFG_A, models[0]), "corrupted newest -> falls back to step 10")
    warn = [l for l in p.stderr.splitlines() if "warning" in l and "ckpt-00000020" in l]
    check(len(warn) == 1 and "crc32" in warn[0] and "corrupted" in warn[0],
          f"warning names the corrupted checkpoint and crc32: {warn}")

    # nothing valid left -> clear error
    path = os.path.join(run_dir, "ckpt-00000010", "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    expect_error(["convert", "--model", run_dir, "--out", out, "--to", "llmc"],
                 ["no valid checkpoint", run_dir], "run dir without a valid checkpoint")


def test_errors(tmp):
    cfg = CFG_A
    params = hf_params(cfg, seed=5)
    good = os.path.join(tmp, "good")
    write_hf_dir(good, cfg, params)
    nat = os.path.join(tmp, "nat")
    convert(good, nat, "native")
    out = os.path.join(tmp, "out")
    conv = lambda src, to="hf": ["convert", "--model", src, "--out", out, "--to", to]

    def copy_native(name):
        d = os.path.join(tmp, name)
        shutil.copytree(nat, d)
        return d, os.path.join(d, "model.safetensors")

    # truncated checkpoint
    d, m = copy_native("truncated")
    with open(m, "r+b") as f:
        f.truncate(os.path.getsize(m) - 1000)
    expect_error(conv(d), ["model.safetensors", "size", "expected", "truncated"], "truncated checkpoint")
    # one corrupted byte: crc32 mismatch
    d, m = copy_native("corrupt")
    with open(m, "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 1]))
    expect_error(conv(d), ["model.safetensors", "crc32", "expected", "corrupted"], "corrupted byte")
    # state.json missing / garbage
    d, m = copy_native("nostate")
    os.remove(os.path.join(d, "state.json"))
    expect_error(conv(d), ["model.safetensors", "state.json"], "native dir without state.json")
    d, m = copy_native("badstate")
    with open(os.path.join(d, "state.json"), "w") as f:
        f.write('{"format": "rlhfd", "config": ')
    expect_error(conv(d), ["state.json", "invalid JSON"], "garbage state.json")

    # shape mismatch between config.json and the tensors
    bad = os.path.join(tmp, "shape")
    shutil.copytree(good, bad)
    c = hf_config(cfg)
    c["n_positions"] = c["n_ctx"] = 20
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(c, f)
    expect_error(conv(bad), ["wpe.weight", "[16, 32]", "[20, 32]", "config.json"], "config.json vs tensor shape")
    # native model.safetensors whose tensors disagree with its own config (metadata)
    t, meta = read_st(os.path.join(nat, "model.safetensors"))
    meta = dict(meta, max_seq_len="20")
    bad_native = os.path.join(tmp, "bad_native.safetensors")
    write_st(bad_native, t, meta)
    expect_error(conv(bad_native), ["'wpe'", "[16, 32]", "[20, 32]"], "native tensor vs its config")
    # missing tensor
    p = dict(params)
    del p["h.1.mlp.c_fc.bias"]
    miss = os.path.join(tmp, "missing_tensor")
    write_hf_dir(miss, cfg, p)
    expect_error(conv(miss), ["h.1.mlp.c_fc.bias", "missing"], "missing tensor")
    # untied lm_head
    untied = os.path.join(tmp, "untied")
    write_hf_dir(untied, cfg, params)
    t, meta = read_st(os.path.join(untied, "model.safetensors"))
    t = dict(t)
    t["lm_head.weight"] = params["wte.weight"] + 1
    write_st(os.path.join(untied, "model.safetensors"), t, meta)
    expect_error(conv(untied), ["lm_head.weight", "wte"], "lm_head different from wte")
    # config.json missing key / missing file
    nokey = os.path.join(tmp, "nokey")
    shutil.copytree(good, nokey)
    c = hf_config(cfg)
    del c["n_head"]
    with open(os.path.join(nokey, "config.json"), "w") as f:
        json.dump(c, f)
    expect_error(conv(nokey), ["config.json", "n_head", "missing"], "config.json without n_head")
    lone = os.path.join(tmp, "lone")
    os.makedirs(lone)
    shutil.copy(os.path.join(good, "model.safetensors"), lone)
    expect_error(conv(os.path.join(lone, "model.safetensors")), ["config.json", "missing"],
                 "HF model.safetensors without config.json")

    # garbage safetensors headers
    def bad_st(name, raw, needles):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(hf_config(cfg), f)
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(raw)
        expect_error(conv(d), needles, f"bad safetensors: {name}")

    def st_raw(header, data=b""):
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data

    bad_st("st_json", struct.pack("<Q", 12) + b"{not json!!}", ["model.safetensors", "invalid JSON"])
    bad_st("st_hugelen", struct.pack("<Q", 1 << 40) + b"{}" * 10, ["model.safetensors", "header length"])
    bad_st("st_short", b"\x01\x02", ["model.safetensors"])
    bad_st("st_offsets", st_raw({"wte.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8),
           ["wte.weight", "data_offsets", "past the data"])
    bad_st("st_size", st_raw({"wte.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, b"\0" * 16),
           ["wte.weight", "needs 24"])
    bad_st("st_overlap", st_raw({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16),
           ["overlap"])
    bad_st("st_dtype", st_raw({"wte.weight": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
           ["wte.weight", "dtype"])
    bad_st("st_noshape", st_raw({"wte.weight": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4),
           ["wte.weight", "shape"])

    # llm.c: truncated, bad version; unrecognised file; missing path
    ref = hf_to_native(cfg, params)
    raw = llmc_bytes(cfg, ref)
    for name, data, needles in (("trunc.bin", raw[:-10], ["trunc.bin", "truncated"]),
                                ("v9.bin", raw[:4] + struct.pack("<i", 9) + raw[8:], ["version 9"]),
                                ("short.bin", raw[:100], ["short.bin", "header"]),
                                ("random.bin", b"hello world, not a model" * 10, ["random.bin", "unrecognised"])):
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        expect_error(conv(path), needles, f"bad llm.c file {name}")
    expect_error(conv(os.path.join(tmp, "does_not_exist")), ["does_not_exist", "No such file"], "missing path")
    empty = os.path.join(tmp, "emptydir")
    os.makedirs(empty)
    expect_error(conv(empty), ["emptydir", "not a model directory"], "empty dir")

    # refusing to overwrite something that is not a checkpoint
    precious = os.path.join(tmp, "precious")
    os.makedirs(precious)
    with open(os.path.join(precious, "notes.txt"), "w") as f:
        f.write("keep me")
    expect_error(["convert", "--model", nat, "--out", precious, "--to", "native"],
                 ["precious", "refusing"], "refuse to replace a non-checkpoint dir")
    check(os.path.exists(os.path.join(precious, "notes.txt")), "non-checkpoint dir left intact")
    leftovers = [n for n in os.listdir(tmp) if ".tmp-" in n]
    check(not leftovers, f"refused save leaves no temp dir ({leftovers})")
    # bad arguments: exit 2
    p = run(["convert", "--model", nat, "--out", out, "--to", "onnx"])
    check(p.returncode == 2 and "onnx" in p.stderr, "--to onnx: usage error, exit 2")
    p = run(["convert", "--model", nat])
    check(p.returncode == 2 and "--out" in p.stderr, "missing --out: usage error, exit 2")


def main():
    if not BIN:
        print("RLHFD_BIN not set")
        return 1
    group = sys.argv[1] if len(sys.argv) > 1 else "all"
    tests = {"roundtrip": test_roundtrip, "rundir": test_rundir, "errors": test_errors}
    with tempfile.TemporaryDirectory(prefix="rlhfd-ckpt-") as tmp:
        for name, fn in tests.items():
            if group in (name, "all"):
                d = os.path.join(tmp, name)
                os.makedirs(d)
                fn(d)
    print(f"{len(FAILS)} failure(s)")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
