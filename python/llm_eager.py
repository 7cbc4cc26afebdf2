#!/usr/bin/env python3
"""Reference greedy generation for a Meta-format Llama checkpoint (PyTorch eager).

A small, self-contained re-implementation of the Llama architecture used by
ExecuTorch's ``examples/models/llama`` (Meta weight layout: tok_embeddings,
layers.N.attention.wq/wk/wv/wo, feed_forward.w1/w2/w3, attention_norm,
ffn_norm, norm, output; Meta "interleaved" RoPE, GQA, SwiGLU, RMSNorm) with a
KV cache, following the same generation procedure as the ExecuTorch LLM runner
(and as expected from a program exported by ``export_llm`` with
``use_kv_cache=True``):

* dynamic-shape program: prefill = ONE forward over all prompt tokens at
  input_pos 0, then one token at a time (input_pos = number of tokens so far);
* static-shape program (``--token-by-token``): the prompt is fed one token
  at a time too.

Each forward returns the logits of the LAST position only (what export_llm
programs return unless generate_full_logits is set); the next token is the
argmax (greedy, first index on ties, like torch.argmax).

Usage:
    .venv-ref/bin/python python/llm_eager.py MODEL_DIR --prompt-ids 1,2,3 \
        --max-new-tokens 16 [--token-by-token] [--json] [--stop-at-eos 2,0]

MODEL_DIR holds params.json and a checkpoint (*.pth); or pass --checkpoint and
--params explicitly. Prints the generated ids (and, with --json, per-step
top-1/top-2 logit margins, useful for judging how robust a fixture is).

Only the features of plain Llama/SmolLM2-style params are supported
(no scaled rope, no qk-norm, no biases, no MoE); unknown params raise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

SUPPORTED_PARAMS = {
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
    "ffn_dim_multiplier", "norm_eps", "rope_theta", "rope_freq_base",
    "use_scaled_rope", "hidden_dim", "head_dim", "max_seq_len",
    "max_context_len", "bos_idx", "eos_idx", "model_architecture",
}


class MetaLlama:
    def __init__(self, params: Dict, sd: Dict[str, torch.Tensor], dtype=torch.float32):
        unknown = set(params) - SUPPORTED_PARAMS
        if unknown:
            raise ValueError(f"unsupported params: {sorted(unknown)}")
        if params.get("use_scaled_rope", False):
            raise ValueError("use_scaled_rope not supported")
        self.dim = params["dim"]
        self.n_layers = params["n_layers"]
        self.n_heads = params["n_heads"]
        self.n_kv_heads = params.get("n_kv_heads") or self.n_heads
        self.head_dim = params.get("head_dim") or self.dim // self.n_heads
        self.eps = params.get("norm_eps", 1e-5)
        theta = params.get("rope_theta") or params.get("rope_freq_base", 10000.0)
        self.theta = float(theta)
        self.dtype = dtype
        self.w = {k: v.to(dtype) for k, v in sd.items()}
        if "output.weight" not in self.w:  # tied embeddings
            self.w["output.weight"] = self.w["tok_embeddings.weight"]
        self.k_cache: List[Optional[torch.Tensor]] = [None] * self.n_layers
        self.v_cache: List[Optional[torch.Tensor]] = [None] * self.n_layers

    def reset(self):
        self.k_cache = [None] * self.n_layers
        self.v_cache = [None] * self.n_layers

    def rmsnorm(self, x, w):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * w

    def rope(self, x, pos: torch.Tensor):
        # x: [S, H, D]; Meta layout: pairs (2i, 2i+1) rotated together.
        d = self.head_dim
        freqs = 1.0 / (self.theta ** (torch.arange(0, d, 2)[: d // 2].float() / d))
        ang = torch.outer(pos.float(), freqs)  # [S, D/2]
        cos, sin = ang.cos(), ang.sin()
        xr = x.float().reshape(*x.shape[:-1], d // 2, 2)
        a, b = xr[..., 0], xr[..., 1]
        cos = cos[:, None, :]
        sin = sin[:, None, :]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
        return out.flatten(-2).type_as(x)

    @torch.no_grad()
    def forward(self, tokens: Sequence[int], start_pos: int) -> torch.Tensor:
        """tokens at positions start_pos.. ; returns logits [vocab] of the last token."""
        S = len(tokens)
        W = self.w
        h = W["tok_embeddings.weight"][torch.tensor(tokens, dtype=torch.long)]  # [S, dim]
        pos = torch.arange(start_pos, start_pos + S)
        rep = self.n_heads // self.n_kv_heads
        for l in range(self.n_layers):
            p = f"layers.{l}."
            x = self.rmsnorm(h, W[p + "attention_norm.weight"])
            q = (x @ W[p + "attention.wq.weight"].T).view(S, self.n_heads, self.head_dim)
            k = (x @ W[p + "attention.wk.weight"].T).view(S, self.n_kv_heads, self.head_dim)
            v = (x @ W[p + "attention.wv.weight"].T).view(S, self.n_kv_heads, self.head_dim)
            q = self.rope(q, pos)
            k = self.rope(k, pos)
            if self.k_cache[l] is None:
                assert start_pos == 0
                self.k_cache[l], self.v_cache[l] = k, v
            else:
                assert self.k_cache[l].shape[0] == start_pos
                self.k_cache[l] = torch.cat([self.k_cache[l], k], 0)
                self.v_cache[l] = torch.cat([self.v_cache[l], v], 0)
            K = self.k_cache[l].repeat_interleave(rep, dim=1)  # [T, H, D]
            V = self.v_cache[l].repeat_interleave(rep, dim=1)
            T = K.shape[0]
            scores = torch.einsum("shd,thd->hst", q.float(), K.float()) / math.sqrt(self.head_dim)
            qpos = pos[:, None]
            kpos = torch.arange(T)[None, :]
            scores = scores.masked_fill((kpos > qpos)[None], float("-inf"))
            attn = torch.softmax(scores, dim=-1)
            o = torch.einsum("hst,thd->shd", attn, V.float()).reshape(S, -1).type_as(h)
            h = h + o @ W[p + "attention.wo.weight"].T
            x = self.rmsnorm(h, W[p + "ffn_norm.weight"])
            ff = (F.silu(x @ W[p + "feed_forward.w1.weight"].T) * (x @ W[p + "feed_forward.w3.weight"].T))
            h = h + ff @ W[p + "feed_forward.w2.weight"].T
        h = self.rmsnorm(h[-1:], W["norm.weight"])
        return (h @ W["output.weight"].T)[0].float()


def greedy_generate(model: MetaLlama, prompt_ids: Sequence[int], max_new_tokens: int,
                    token_by_token: bool = False, stop_ids: Sequence[int] = ()):
    """Returns (generated_ids, margins, first_logits)."""
    model.reset()
    if token_by_token:
        for i, t in enumerate(prompt_ids):
            logits = model.forward([t], i)
    else:
        logits = model.forward(list(prompt_ids), 0)
    first_logits = logits.clone()
    pos = len(prompt_ids)
    out: List[int] = []
    margins: List[float] = []
    for _ in range(max_new_tokens):
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        if nxt in stop_ids or len(out) == max_new_tokens:
            break
        logits = model.forward([nxt], pos)
        pos += 1
    return out, margins, first_logits


def load_meta(model_dir: Optional[str], checkpoint: Optional[str] = None, params: Optional[str] = None):
    d = Path(model_dir) if model_dir else None
    if params is None:
        params = str(d / "params.json")
    if checkpoint is None:
        cands = sorted(d.glob("*.pth"))
        if len(cands) != 1:
            raise SystemExit(f"expected exactly one .pth in {d}, found {cands}; use --checkpoint")
        checkpoint = str(cands[0])
    p = json.loads(Path(params).read_text())
    sd = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    if "model" in sd:
        sd = sd["model"]
    return p, sd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--checkpoint")
    ap.add_argument("--params")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--token-by-token", action="store_true",
                    help="prefill one token at a time (static-shape programs)")
    ap.add_argument("--stop-at-eos", default="", help="comma-separated ids that stop generation")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp64"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.model_dir and not (args.checkpoint and args.params):
        ap.error("give MODEL_DIR or --checkpoint and --params")
    params, sd = load_meta(args.model_dir, args.checkpoint, args.params)
    model = MetaLlama(params, sd, torch.float64 if args.dtype == "fp64" else torch.float32)
    prompt = [int(x) for x in args.prompt_ids.split(",") if x]
    stop = [int(x) for x in args.stop_at_eos.split(",") if x]
    ids, margins, _ = greedy_generate(model, prompt, args.max_new_tokens, args.token_by_token, stop)
    if args.json:
        print(json.dumps({"prompt_ids": prompt, "greedy_ids": ids,
                          "min_margin": min(margins) if margins else None,
                          "margins": [round(m, 5) for m in margins]}))
    else:
        print(",".join(map(str, ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
