#!/usr/bin/env python3
"""Exports seeded Llama programs of other shapes with export_llm's quantization options
(8da4w group sizes, 4- and 8-bit embeddings, with or without XNNPACK) and compares
`ptero llm --prompt-ids ... --json` greedy ids with the official runtime's.

    .venv-ref/bin/python python/check_llm_quant.py [--only NAME] [--keep]

Programs go to models/big/llm_check/ (git-ignored). Prints, per variant, how many of
the first greedy ids agree.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from export_llm_fixture import make_checkpoint, runtime_generate  # noqa: E402

# name: (params, quantization options, xnnpack)
BASE = {"dim": 256, "n_layers": 4, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 2048,
        "multiple_of": 64, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": False}
VARIANTS = {
    "g32_e4": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=32",
                      "quantization.embedding_quantize='4,32'"], True),
    "g64_e8": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=64",
                      "quantization.embedding_quantize='8,0'"], True),
    "g128": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=128"], True),
    "g256_e4": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=256",
                       "quantization.embedding_quantize='4,32'"], True),
    "fp32_xnn": (BASE, [], True),
    "e8_portable": (BASE, ["quantization.embedding_quantize='8,0'"], False),
    "g32_kvq": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=32",
                       "quantization.embedding_quantize='4,32'", "model.quantize_kv_cache=True"], True),
    "g32_kvq_static": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=32",
                              "model.static_quantize_kv_cache=True",
                              "model.enable_dynamic_shape=False"], True),
    "g32_shared_emb": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=32",
                              "quantization.embedding_quantize='4,32'",
                              "model.use_shared_embedding=True"], True),
    "g32_e8": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=32",
                      "quantization.embedding_quantize='8,0'"], True),
    "g64_e4": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=64",
                      "quantization.embedding_quantize='4,32'"], True),
    "portable_8da4w": (BASE, ["quantization.qmode=8da4w", "quantization.group_size=32"], False),
}
PROMPT = [1] + [(53 * i + 7) % 2048 for i in range(1, 20)]
NEW = 64


def checkpoint(p, seed=99):
    return make_checkpoint(seed, p)


def export(name, params, opts, xnn, out):
    out.mkdir(parents=True, exist_ok=True)
    ckpt, pj = out / "ckpt.pth", out / "params.json"
    torch.save(checkpoint(params), ckpt)
    pj.write_text(json.dumps(params))
    meta = json.dumps({"get_bos_id": 1, "get_eos_ids": [2]})
    cmd = [sys.executable, "-m", "executorch.extension.llm.export.export_llm",
           "base.model_class=llama3", f"base.checkpoint={ckpt}", f"base.params={pj}",
           f"base.metadata='{meta}'", "model.use_kv_cache=True", "model.use_sdpa_with_kv_cache=True",
           "model.dtype_override=fp32",
           "export.max_seq_length=32", "export.max_context_length=128",
           f"export.output_dir={out}", f"export.output_name={out}/model.pte",
           f"backend.xnnpack.enabled={xnn}"] + opts
    if "model.enable_dynamic_shape=False" not in opts:
        cmd.append("model.enable_dynamic_shape=True")
    with tempfile.TemporaryDirectory() as td:
        r = subprocess.run(cmd, cwd=td, capture_output=True, text=True)
    (out / "export.log").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"{name}: export_llm failed, see {out}/export.log")
    return out / "model.pte"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append")
    ap.add_argument("--keep", action="store_true", help="reuse exported programs")
    ap.add_argument("--ptero", default=str(ROOT / "target/release/ptero"))
    a = ap.parse_args()
    for name, (params, opts, xnn) in VARIANTS.items():
        if a.only and name not in a.only:
            continue
        out = ROOT / "models/big/llm_check" / name
        pte = out / "model.pte"
        dynamic = "model.enable_dynamic_shape=False" not in opts
        if not (a.keep and pte.exists()):
            try:
                pte = export(name, params, opts, xnn, out)
            except SystemExit as e:
                print(e, flush=True)
                continue
        ref = out / "official.json"
        if a.keep and ref.exists():
            want = json.loads(ref.read_text())
        else:
            want = runtime_generate(pte, dynamic, PROMPT, NEW)[0]
            ref.write_text(json.dumps(want))
        r = subprocess.run([a.ptero, "llm", str(pte), "--prompt-ids", ",".join(map(str, PROMPT)),
                            "--max-new-tokens", str(NEW), "--ignore-eos", "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: ptero failed: {r.stderr.strip()[-500:]}")
            continue
        got = json.loads(r.stdout)["ids"]
        agree = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
        print(f"{name}: {agree} of {NEW} ids agree ({pte.stat().st_size} bytes)", flush=True)


if __name__ == "__main__":
    main()
