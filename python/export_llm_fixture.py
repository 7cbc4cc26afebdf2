#!/usr/bin/env python3
"""Export tiny Llama LLM fixtures with the official ExecuTorch ``export_llm``.

Builds a small Llama-architecture model with seeded random weights as a
Meta-format checkpoint (consolidated.00.pth + params.json), exports it with

    python -m executorch.extension.llm.export.export_llm base.model_class=llama3 \
        base.checkpoint=... base.params=... base.metadata='{...}' \
        model.use_kv_cache=True model.use_sdpa_with_kv_cache=True \
        model.enable_dynamic_shape=True|False model.dtype_override=fp32 \
        export.max_seq_length=32 export.max_context_length=128 \
        backend.xnnpack.enabled=False

(non-delegated: portable ops + llama::custom_sdpa / llama::update_cache),
and writes expected greedy token ids computed with an independent eager
implementation (python/llm_eager.py), cross-checked against ExecuTorch's own
eager Transformer and -- when possible -- the official runtime on the exported
program (and on an XNNPACK-lowered export of the same weights).

Usage:
    .venv-ref/bin/python python/export_llm_fixture.py [--out tests/fixtures/llm]

Outputs:
    tests/fixtures/llm/tiny/{model.pte, expected.json, params.json, consolidated.00.pth}
    tests/fixtures/llm/tiny_static/{model.pte, expected.json}   (same weights)
    models/big/llm_tiny_xnnpack/model.pte                         (cross-check only)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from llm_eager import MetaLlama, greedy_generate  # noqa: E402
from list_ops import read_pte_ops  # noqa: E402

PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 512,
    "multiple_of": 32,  # -> hidden_dim = 32*ceil(int(2*4*64/3)/32) = 192
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "use_scaled_rope": False,
}
BOS, EOS = 1, 2
MAX_SEQ, MAX_CTX = 32, 128
PROMPT = [BOS, 17, 345, 90, 211, 5, 402, 77, 130, 256, 499, 3]  # 12 ids
# Extra case for the dynamic program: longest allowed prefill (tokens dim upper bound = max_seq_len-1).
LONG_PROMPT = [BOS] + [(37 * i + 11) % 512 for i in range(1, MAX_SEQ - 1)]  # 31 ids
LONG_NEW = 16
MAX_NEW = 64
SEED = 1234


def make_checkpoint(seed: int = SEED, params: dict | None = None):
    """Seeded Llama weights for `params` (default PARAMS), as export_llm's checkpoint."""
    g = torch.Generator().manual_seed(seed)
    p = PARAMS if params is None else params
    dim, nh, nkv = p["dim"], p["n_heads"], p["n_kv_heads"]
    hd = dim // nh
    hidden = 4 * dim
    hidden = int(2 * hidden / 3)
    hidden = p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])

    def lin(out_f, in_f, gain=1.0):
        return torch.randn(out_f, in_f, generator=g) * (gain / in_f ** 0.5)

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    sd = {"tok_embeddings.weight": torch.randn(p["vocab_size"], dim, generator=g)}
    for l in range(p["n_layers"]):
        a = f"layers.{l}."
        sd[a + "attention.wq.weight"] = lin(nh * hd, dim, 2.0)
        sd[a + "attention.wk.weight"] = lin(nkv * hd, dim, 2.0)
        sd[a + "attention.wv.weight"] = lin(nkv * hd, dim)
        sd[a + "attention.wo.weight"] = lin(dim, nh * hd)
        sd[a + "feed_forward.w1.weight"] = lin(hidden, dim)
        sd[a + "feed_forward.w2.weight"] = lin(dim, hidden)
        sd[a + "feed_forward.w3.weight"] = lin(hidden, dim)
        sd[a + "attention_norm.weight"] = norm(dim)
        sd[a + "ffn_norm.weight"] = norm(dim)
    sd["norm.weight"] = norm(dim)
    # Large-ish output gain: well separated logits => robust greedy argmax.
    sd["output.weight"] = lin(p["vocab_size"], dim, 4.0)
    return {k: v.contiguous() for k, v in sd.items()}


def export_llm(ckpt: Path, params: Path, out_dir: Path, dynamic: bool, xnnpack: bool = False,
               log: Path | None = None, qmode: str | None = None, group: int = 32,
               embedding: str = "4,32", extra: tuple = ()) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = json.dumps({"get_bos_id": BOS, "get_eos_ids": [EOS]})
    cmd = [
        sys.executable, "-m", "executorch.extension.llm.export.export_llm",
        "base.model_class=llama3",
        f"base.checkpoint={ckpt}",
        f"base.params={params}",
        f"base.metadata='{metadata}'",
        "model.use_kv_cache=True",
        "model.use_sdpa_with_kv_cache=True",
        f"model.enable_dynamic_shape={dynamic}",
        "model.dtype_override=fp32",
        f"export.max_seq_length={MAX_SEQ}",
        f"export.max_context_length={MAX_CTX}",
        f"export.output_dir={out_dir}",
        f"export.output_name={out_dir}/model.pte",
        f"backend.xnnpack.enabled={xnnpack}",
    ]
    if qmode:
        cmd += [f"quantization.qmode={qmode}", f"quantization.group_size={group}",
                f"quantization.embedding_quantize='{embedding}'"]
    cmd += list(extra)
    print("+", " ".join(cmd), flush=True)
    with tempfile.TemporaryDirectory() as td:  # hydra writes outputs/ into cwd
        r = subprocess.run(cmd, cwd=td, capture_output=True, text=True)
    if log:
        log.write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-6000:], sep="\n")
        raise SystemExit(f"export_llm failed ({r.returncode})")
    pte = out_dir / "model.pte"
    assert pte.exists(), pte
    return pte


def et_eager_generate(ckpt: Path, params: Path, dynamic: bool, prompt, max_new):
    """ExecuTorch's own eager Transformer (examples/models/llama) with KV cache + custom sdpa."""
    from executorch.examples.models.llama.model import Llama2Model
    from executorch.extension.llm.export.config.llm_config import LlmConfig
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers llama::*)

    cfg = LlmConfig()
    cfg.base.checkpoint = str(ckpt)
    cfg.base.params = str(params)
    cfg.model.use_kv_cache = True
    cfg.model.use_sdpa_with_kv_cache = True
    cfg.model.enable_dynamic_shape = dynamic
    cfg.export.max_seq_length = MAX_SEQ
    cfg.export.max_context_length = MAX_CTX
    m = Llama2Model(cfg).get_eager_model().eval()
    out = []
    with torch.no_grad():
        if dynamic:
            logits = m(torch.tensor([prompt]), {"input_pos": torch.tensor([0])})
        else:
            for i, t in enumerate(prompt):
                logits = m(torch.tensor([[t]]), {"input_pos": torch.tensor([i])})
        pos = len(prompt)
        for _ in range(max_new):
            if isinstance(logits, tuple):
                logits = logits[0]
            nxt = int(torch.argmax(logits.reshape(-1, logits.shape[-1])[-1]))
            out.append(nxt)
            if len(out) == max_new:
                break
            logits = m(torch.tensor([[nxt]]), {"input_pos": torch.tensor([pos])})
            pos += 1
    return out


def runtime_generate(pte: Path, dynamic: bool, prompt, max_new):
    """Official ExecuTorch Python runtime; returns (ids, metadata dict, signature) or raises."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (loads libcustom_ops_aot_lib)
    import executorch.kernels.quantized  # noqa: F401  (embedding_4bit for quantized exports)
    from executorch.runtime import Runtime

    rt = Runtime.get()
    prog = rt.load_program(pte.read_bytes())
    consts = {}
    for name in sorted(prog.method_names):
        if name == "forward":
            continue
        v = list(prog.load_method(name).execute([]))
        v = v if (len(v) != 1 or name == "get_eos_ids") else v[0]
        consts[name] = v
    fwd = prog.load_method("forward")
    out = []

    def step(tokens, pos):
        res = fwd.execute([torch.tensor([tokens], dtype=torch.long), torch.tensor([pos], dtype=torch.long)])
        return res[0]

    if dynamic:
        logits = step(prompt, 0)
    else:
        for i, t in enumerate(prompt):
            logits = step([t], i)
    first_logits = logits.clone()
    pos = len(prompt)
    for _ in range(max_new):
        nxt = int(torch.argmax(logits.reshape(-1, logits.shape[-1])[-1]))
        out.append(nxt)
        if len(out) == max_new:
            break
        logits = step([nxt], pos)
        pos += 1
    return out, consts, first_logits


def _dtype_name(d) -> str:
    from executorch.exir.schema import ScalarType
    try:
        return ScalarType(int(str(d))).name
    except (ValueError, TypeError):
        return getattr(d, "name", str(d))


def signature(pte: Path):
    from executorch.runtime import Runtime

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    prog = Runtime.get().load_program(pte.read_bytes())
    meta = prog.metadata("forward")
    sig = {"inputs": [], "outputs": []}
    for i in range(meta.num_inputs()):
        t = meta.input_tensor_meta(i)
        sig["inputs"].append({"dtype": _dtype_name(t.dtype()), "sizes": list(t.sizes())})
    for i in range(meta.num_outputs()):
        t = meta.output_tensor_meta(i)
        sig["outputs"].append({"dtype": _dtype_name(t.dtype()), "sizes": list(t.sizes())})
    return sig


def program_details(pte: Path):
    """Operators, constant methods (from the serialized program) and input/output info."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte_obj = deserialize_pte_binary(pte.read_bytes())
    program = getattr(pte_obj, "program", pte_obj)
    ops = read_pte_ops(pte)
    consts = {}
    fwd_io = {}
    for plan in program.execution_plan:
        if plan.name == "forward":
            def desc(idx):
                v = plan.values[idx].val
                if hasattr(v, "sizes"):
                    return {"scalar_type": getattr(v.scalar_type, "name", str(v.scalar_type)),
                            "sizes_upper_bound": list(v.sizes),
                            "dim_order": list(v.dim_order),
                            "shape_dynamism": getattr(v.shape_dynamism, "name", str(v.shape_dynamism))}
                return {"value_type": type(v).__name__}
            fwd_io = {"inputs": [desc(i) for i in plan.inputs],
                      "outputs": [desc(i) for i in plan.outputs]}
            continue
        # constant methods: single output value, no instructions
        vals = [plan.values[i].val for i in plan.outputs]
        py = []
        for v in vals:
            if hasattr(v, "int_val"):
                py.append(v.int_val)
            elif hasattr(v, "bool_val"):
                py.append(v.bool_val)
            elif hasattr(v, "double_val"):
                py.append(v.double_val)
            elif hasattr(v, "items"):  # IntList -> indices into values
                py.append([plan.values[j].val.int_val for j in v.items])
            else:
                py.append(repr(v))
        # one EValue per output; get_eos_ids has one Int output per eos id
        consts[plan.name] = py if (len(py) != 1 or plan.name == "get_eos_ids") else py[0]
    return ops, consts, fwd_io


def export_8da4w(out: Path, tiny: Path, name: str = "tiny_8da4w_xnnpack", group: int = 32,
                 embedding: str = "4,32", extra: tuple = ()) -> int:
    """tiny_8da4w_xnnpack: the tiny weights quantized by export_llm (8da4w, group 32, 4-bit
    embeddings) and lowered to XNNPACK; the greedy ids are the official runtime's (an fp32
    eager reference differs by the quantization). tiny_8da4w_g64_kvq: group 64, 8-bit
    per-channel embeddings and an int8 per-token KV cache (`custom_quantized_sdpa`)."""
    vdir = out / name
    ckpt, params = (tiny / "consolidated.00.pth").resolve(), (tiny / "params.json").resolve()
    pte = export_llm(ckpt, params, vdir.resolve(), True, xnnpack=True, qmode="8da4w",
                     group=group, embedding=embedding, extra=extra)
    ids, consts, first = runtime_generate(pte, True, PROMPT, MAX_NEW)
    l_ids = runtime_generate(pte, True, LONG_PROMPT, LONG_NEW)[0]
    expected = {
        "prompt_ids": PROMPT,
        "max_new_tokens": MAX_NEW,
        "greedy_ids": ids,
        "max_seq_len": MAX_SEQ,
        "max_context_len": MAX_CTX,
        "bos_id": BOS,
        "eos_ids": [EOS],
        "enable_dynamic_shape": True,
        "extra_cases": [{"prompt_ids": LONG_PROMPT, "max_new_tokens": LONG_NEW, "greedy_ids": l_ids}],
        "runtime_constant_methods": consts,
        "pte_bytes": pte.stat().st_size,
        "weights": "../tiny/consolidated.00.pth + ../tiny/params.json (seed %d)" % SEED,
        "notes": (f"Exported with executorch 1.5.1 export_llm: quantization.qmode=8da4w, group_size={group}, "
                  f"embedding_quantize='{embedding}', {' '.join(extra)} backend.xnnpack.enabled=True (qd8 x qb4w fully connected "
                  "in the delegate, quantized_decomposed::embedding_4bit outside). Greedy ids from the "
                  "official runtime (executorch.runtime), one forward over the prompt then one per token."),
    }
    (vdir / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"{name}: {pte} {pte.stat().st_size} bytes, ids {ids[:8]}...")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/llm"))
    ap.add_argument("--big", default=str(ROOT / "models/big"))
    ap.add_argument("--skip-xnnpack", action="store_true")
    ap.add_argument("--8da4w", dest="q8da4w", action="store_true",
                    help="only (re)export tiny_8da4w_xnnpack from the committed tiny weights: int8 "
                         "dynamic activations x int4 weights (group 32), 4-bit embeddings, XNNPACK; "
                         "expected ids from the official runtime")
    args = ap.parse_args(argv)
    out = Path(args.out)
    tiny = out / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    if args.q8da4w:
        return export_8da4w(out, tiny) or export_8da4w(
            out, tiny, "tiny_8da4w_g64_kvq", 64, "8,0", ("model.quantize_kv_cache=True",))

    sd = make_checkpoint()
    ckpt = tiny / "consolidated.00.pth"
    params = tiny / "params.json"
    torch.save(sd, ckpt)
    params.write_text(json.dumps(PARAMS, indent=2) + "\n")

    ref_model = MetaLlama(PARAMS, sd)
    ref64 = MetaLlama(PARAMS, sd, torch.float64)

    variants = [("tiny", True), ("tiny_static", False)]
    if not args.skip_xnnpack:
        variants.append(("xnnpack", True))
    results = {}
    for name, dynamic in variants:
        xnn = name == "xnnpack"
        vdir = Path(args.big) / "llm_tiny_xnnpack" if xnn else out / name
        log = (Path(args.big) / "llm_tiny_xnnpack_export.log") if xnn else Path(tempfile.mktemp(suffix=".log"))
        pte = export_llm(ckpt.resolve(), params.resolve(), vdir.resolve(), dynamic, xnnpack=xnn, log=log)
        size = pte.stat().st_size
        print(f"{name}: {pte} {size} bytes")

        ids, margins, first_logits = greedy_generate(ref_model, PROMPT, MAX_NEW, token_by_token=not dynamic)
        ids64, _, first64 = greedy_generate(ref64, PROMPT, MAX_NEW, token_by_token=not dynamic)
        et_ids = et_eager_generate(ckpt, params, dynamic, PROMPT, MAX_NEW)
        checks = {
            "llm_eager_fp64_matches": ids64 == ids,
            "executorch_eager_transformer_matches": et_ids == ids,
        }
        try:
            rt_ids, rt_consts, rt_first = runtime_generate(pte, dynamic, PROMPT, MAX_NEW)
            checks["official_runtime_matches"] = rt_ids == ids
            checks["official_runtime_first_logits_max_abs_diff"] = float((rt_first.reshape(-1) - first_logits).abs().max())
            if rt_ids != ids:
                checks["official_runtime_ids"] = rt_ids
        except Exception as e:  # noqa: BLE001
            checks["official_runtime_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rt_consts = None
        extra_cases = []
        if dynamic and not xnn:
            l_ids, l_margins, _ = greedy_generate(ref_model, LONG_PROMPT, LONG_NEW)
            case = {"prompt_ids": LONG_PROMPT, "max_new_tokens": LONG_NEW, "greedy_ids": l_ids,
                    "min_top1_top2_margin": min(l_margins)}
            case["executorch_eager_transformer_matches"] = et_eager_generate(ckpt, params, True, LONG_PROMPT, LONG_NEW) == l_ids
            try:
                case["official_runtime_matches"] = runtime_generate(pte, True, LONG_PROMPT, LONG_NEW)[0] == l_ids
            except Exception as e:  # noqa: BLE001
                case["official_runtime_error"] = str(e)[:300]
            extra_cases.append(case)
            checks["extra_cases_ok"] = all(c.get("official_runtime_matches") and c["executorch_eager_transformer_matches"] for c in extra_cases)
        print(name, json.dumps(checks))
        if ids != et_ids:
            print("ref ids", ids, "\net ids ", et_ids)
        results[name] = checks
        if xnn:
            continue

        ops, consts, fwd_io = program_details(pte)
        try:
            sig = signature(pte)
        except Exception as e:  # noqa: BLE001
            sig = {"error": str(e)}
        expected = {
            "prompt_ids": PROMPT,
            "max_new_tokens": MAX_NEW,
            "greedy_ids": ids,
            "prefill": "one forward over all prompt tokens at input_pos 0" if dynamic
                       else "token by token (static shape: tokens [1,1])",
            "max_seq_len": MAX_SEQ,
            "max_context_len": MAX_CTX,
            "bos_id": BOS,
            "eos_ids": [EOS],
            "enable_dynamic_shape": dynamic,
            "first_logits_top5": torch.topk(first_logits, 5).indices.tolist(),
            "first_logits_top5_values": [round(float(x), 5) for x in torch.topk(first_logits, 5).values],
            "first_logits_fp64_sum": float(first64.sum()),
            "min_top1_top2_margin": min(margins),
            "extra_cases": extra_cases,
            "constant_methods": consts,
            "runtime_constant_methods": rt_consts,
            "forward_io": fwd_io,
            "forward_signature_runtime": sig,
            "operators": ops,
            "validation": checks,
            "pte_bytes": size,
            "weights": "../tiny/consolidated.00.pth + ../tiny/params.json (seed %d)" % SEED,
            "notes": (
                "Exported with executorch 1.5.1 export_llm (base.model_class=llama3, fp32, "
                "use_kv_cache, use_sdpa_with_kv_cache, no backend). forward(tokens int64 [1,S], "
                "input_pos int64 [1]) -> logits fp32 [1,vocab] for the last position; KV caches are "
                "mutable buffers updated in place by llama::update_cache / custom_sdpa. Greedy = "
                "argmax of returned logits, no EOS stopping (generate exactly max_new_tokens; the "
                "first generated id comes from the prefill logits; ids 0/2 may appear, random model). "
                "prefill_logits.npy = logits [1,vocab] returned by the prefill (last prompt token) in the "
                "official runtime (eager if the runtime failed). Expected ids computed by "
                "python/llm_eager.py (independent eager implementation); see 'validation' for "
                "agreement with ExecuTorch's eager Transformer and the official runtime."
            ),
        }
        import numpy as np
        np.save(vdir / "prefill_logits.npy", (rt_first if rt_consts is not None else first_logits).reshape(1, -1).numpy().astype(np.float32))
        (vdir / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        print(f"wrote {vdir/'expected.json'}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
