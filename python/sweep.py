#!/usr/bin/env python3
"""Differential sweep: many varied models, official ExecuTorch runtime vs Ptero.

    .venv-ref/bin/python python/sweep.py --ptero /path/to/ptero [--only a,b] \
        [--skip-export] [--failing] [--list] [--timeout S]

For every case below the model is exported with the same pipeline as
python/export_fixtures.py (torch.export.export -> to_edge_transform_and_lower
without partitioner, or to_edge for mutable buffers -> to_executorch) into the
git-ignored folder models/sweep/<name>/ (model.pte, case.json, r<k>_in<j>.npy).
Each "run" k is one fresh load of the program executing the method
`iterations` times (state carries over), like `ref_run.py` / `ptero run`.

Reference: official runtime (executorch.runtime), in a forked child process so
an abort in the C++ runtime cannot take the sweep down.  Ptero: the CLI
(`ptero run model.pte --input ... --output-dir D`).  PyTorch eager is also run
and its max abs difference to the reference is recorded (information only).

Comparison per output: dtype and shape must be equal, then
    |ptero - ref| <= atol_eff + rtol * |ref|,  atol_eff = atol * max(1, max|ref|)
(atol/rtol default 1e-4 for fp32, larger per case for deep nets / fp16 / bf16).
Bool/int outputs are compared exactly.

Status per model: match | mismatch | ptero error | ref error | export error.
Prints a table and writes models/sweep/results.json.
`--failing` re-runs only models whose last status in results.json was not
"match" (implies --skip-export when the export exists).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "models" / "sweep"
sys.path.insert(0, str(Path(__file__).resolve().parent))

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.export import Dim  # noqa: E402

torch.set_num_threads(1)


# --------------------------------------------------------------------------
# Case description
# --------------------------------------------------------------------------


@dataclass
class Case:
    module: nn.Module
    runs: List[Tuple[Any, ...]]  # each run: a fresh program load
    example: Optional[Tuple[Any, ...]] = None  # export example (default runs[0])
    dynamic_shapes: Any = None
    strict: bool = True
    use_to_edge: bool = False
    passes: Optional[list] = None  # ExecutorchBackendConfig(passes=...)
    atol: float = 1e-4
    rtol: float = 1e-4
    iterations: int = 1
    note: str = ""


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(*shape, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype)


def randint(low, high, shape, seed: int, dtype=torch.int64) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=gen(seed)).to(dtype)


def img(n=1, c=3, h=64, w=64, seed=0):
    return randn(n, c, h, w, seed=seed)


class Lambda(nn.Module):
    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, *args):
        return self.fn(self, *args)


CASES: Dict[str, Callable[[], Case]] = {}


def case(name: str):
    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------


def calibrate_bn(m: nn.Module, shape) -> nn.Module:
    """Random-init nets in eval mode use BN stats (0, 1), which makes activations of deep
    nets vanish (outputs ~1e-10, so any comparison passes). One train-mode pass with
    momentum 1 sets the running stats to real batch statistics -> O(1) outputs."""
    bns = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for bn in bns:
            bn.momentum = 1.0
        m.train()
        with torch.no_grad():
            m(randn(*shape, seed=999))
        for bn in bns:
            bn.momentum = 0.1
    return m.eval()


def _tv(ctor, size=64, atol=1e-3, rtol=1e-3, **kw):
    import torchvision.models as tvm

    torch.manual_seed(0)
    m = getattr(tvm, ctor)(weights=None, **kw)
    m = calibrate_bn(m, (4, 3, size, size))
    return m, [(img(1, 3, size, size, seed=11),)], atol, rtol


for _name, _kw in [
    ("resnet18", {}),
    ("squeezenet1_1", {}),
    ("shufflenet_v2_x0_5", {}),
    ("mnasnet0_5", {}),
    ("mobilenet_v2", {}),
    ("mobilenet_v3_small", {}),
    ("efficientnet_b0", {}),
    ("regnet_y_400mf", {}),
    ("densenet121", {}),
    ("googlenet", {"aux_logits": False, "init_weights": True}),
]:

    def _mk(_name=_name, _kw=_kw):
        m, runs, atol, rtol = _tv(_name, **_kw)
        return Case(m, runs, atol=atol, rtol=rtol, note=f"torchvision {_name} 1x3x64x64")

    CASES["tv_" + _name] = _mk


@case("tv_vgg11_smallhead")
def _():
    import torchvision.models as tvm

    torch.manual_seed(0)
    m = tvm.vgg11(weights=None).eval()
    m.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))
    return Case(calibrate_bn(m, (2, 3, 32, 32)), [(img(1, 3, 32, 32, seed=12),)], atol=1e-3, rtol=1e-3,
                note="vgg11 features + small classifier (full one is ~500MB), 32x32")


@case("tv_alexnet_smallhead")
def _():
    import torchvision.models as tvm

    torch.manual_seed(0)
    m = tvm.alexnet(weights=None).eval()
    m.classifier = nn.Sequential(nn.Dropout(), nn.Linear(256 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10))
    return Case(m.eval(), [(img(1, 3, 64, 64, seed=13),)], atol=1e-3, rtol=1e-3,
                note="alexnet features + small classifier, 64x64")


@case("tv_convnext_tiny")
def _():
    m, runs, atol, rtol = _tv("convnext_tiny", size=32)
    return Case(m, runs, atol=atol, rtol=rtol, note="convnext_tiny (~110MB) 32x32")


@case("tv_vit_tiny")
def _():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                          mlp_dim=64, num_classes=10).eval()
    nn.init.normal_(m.heads.head.weight, std=0.2)  # torchvision zero-inits the head -> all-zero output
    return Case(m, [(img(2, 3, 32, 32, seed=14),)], atol=1e-3, rtol=1e-3, note="torchvision ViT tiny")


@case("tv_swin_tiny")
def _():
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    m = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                        window_size=[4, 4], num_classes=10).eval()
    return Case(m, [(img(1, 3, 32, 32, seed=15),)], atol=1e-3, rtol=1e-3,
                note="torchvision SwinTransformer embed16 depths[2,2] window4, 32x32")


@case("tv_resnet18_channels_last")
def _():
    m, runs, atol, rtol = _tv("resnet18", size=32)
    m = m.to(memory_format=torch.channels_last)
    x = runs[0][0].to(memory_format=torch.channels_last)
    return Case(m, [(x,)], atol=atol, rtol=rtol, note="resnet18 with channels_last weights+input (dim_order)")


# --------------------------------------------------------------------------
# sequence / attention
# --------------------------------------------------------------------------


@case("gru_2layer")
def _():
    torch.manual_seed(1)
    g = nn.GRU(8, 16, num_layers=2, batch_first=True)
    m = Lambda(lambda s, x, h: s.g(x, h), g=g)
    return Case(m, [(randn(2, 5, 8, seed=20), randn(2, 2, 16, seed=21))], note="GRU with h0 input")


@case("lstm_bidir")
def _():
    torch.manual_seed(2)
    m = Lambda(lambda s, x: s.l(x), l=nn.LSTM(8, 12, num_layers=1, batch_first=True, bidirectional=True))
    return Case(m, [(randn(2, 6, 8, seed=22),)], note="bidirectional LSTM, outputs (out, (h, c))")


@case("rnn_tanh")
def _():
    torch.manual_seed(3)
    m = Lambda(lambda s, x: s.r(x), r=nn.RNN(6, 10, num_layers=2, nonlinearity="tanh"))
    return Case(m, [(randn(5, 3, 6, seed=23),)], note="RNN tanh seq-first")


@case("rnn_relu")
def _():
    torch.manual_seed(4)
    m = Lambda(lambda s, x: s.r(x), r=nn.RNN(6, 10, nonlinearity="relu", batch_first=True))
    return Case(m, [(randn(3, 5, 6, seed=24),)], note="RNN relu batch-first")


@case("mha_kpm")
def _():
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    m = Lambda(lambda s, q, k, kpm: s.a(q, k, k, key_padding_mask=kpm), a=mha)
    kpm = torch.tensor([[False, False, False, True, True], [False, False, False, False, False]])
    return Case(m, [(randn(2, 3, 16, seed=25), randn(2, 5, 16, seed=26), kpm)],
                note="MultiheadAttention with bool key_padding_mask; returns (out, avg weights)")


@case("transformer_decoder_layer")
def _():
    torch.manual_seed(6)
    dl = nn.TransformerDecoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.0)
    mask = nn.Transformer.generate_square_subsequent_mask(4)
    m = Lambda(lambda s, t, mem: s.d(t, mem, tgt_mask=s.mask), d=dl)
    m.register_buffer("mask", mask)
    return Case(m, [(randn(2, 4, 16, seed=27), randn(2, 6, 16, seed=28))], note="decoder layer, causal tgt_mask")


@case("sdpa_causal_and_mask")
def _():
    def f(s, q, k, v, mask):
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return a, b

    m = Lambda(f)
    mask = torch.rand(4, 4, generator=gen(33)) > 0.3
    mask[:, 0] = True
    return Case(m, [(randn(1, 2, 4, 8, seed=30), randn(1, 2, 4, 8, seed=31), randn(1, 2, 4, 8, seed=32), mask)],
                note="SDPA is_causal=True and with bool mask")


@case("embedding_bag_mean")
def _():
    torch.manual_seed(7)

    def f(s, ids, bag_ids, offsets):
        return s.e(ids), s.eb(bag_ids, offsets)

    m = Lambda(f, e=nn.Embedding(20, 8), eb=nn.EmbeddingBag(20, 8, mode="mean"))
    return Case(m, [(randint(0, 20, (2, 5), seed=34), randint(0, 20, (10,), seed=35), torch.tensor([0, 3, 7]))],
                note="Embedding + EmbeddingBag(mode=mean, offsets)")


@case("conv1d_audio_groupnorm")
def _():
    torch.manual_seed(8)
    m = nn.Sequential(
        nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.GroupNorm(4, 16), nn.GELU(),
        nn.Conv1d(16, 32, 5, stride=2, padding=2, groups=2), nn.GroupNorm(8, 32), nn.SiLU(),
        nn.Conv1d(32, 32, 3, dilation=2, padding=2), nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(128, 6),
    ).eval()
    return Case(m, [(randn(2, 1, 400, seed=36),)], note="conv1d stack with GroupNorm, groups, dilation")


@case("layernorm_lastdims")
def _():
    torch.manual_seed(9)
    m = Lambda(lambda s, x: (s.a(x), s.b(x), F.layer_norm(x, (6,))), a=nn.LayerNorm((5, 6)),
               b=nn.LayerNorm(6, elementwise_affine=False))
    with torch.no_grad():
        m.a.weight.normal_()
        m.a.bias.normal_()
    return Case(m, [(randn(3, 4, 5, 6, seed=37, scale=3.0),)], note="LayerNorm over 2 last dims, no-affine")


# --------------------------------------------------------------------------
# resampling / padding / shuffles
# --------------------------------------------------------------------------


@case("interp_nearest")
def _():
    m = Lambda(lambda s, x: (F.interpolate(x, scale_factor=2, mode="nearest"),
                             F.interpolate(x, size=(7, 5), mode="nearest")))
    return Case(m, [(randn(1, 2, 5, 6, seed=40),)], note="nearest scale 2 and size (7,5)")


@case("interp_bilinear")
def _():
    m = Lambda(lambda s, x: (F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
                             F.interpolate(x, size=(9, 11), mode="bilinear", align_corners=True),
                             F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)))
    return Case(m, [(randn(1, 2, 6, 8, seed=41),)], note="bilinear ac False/True, scale up/down, size")


@case("interp_bicubic")
def _():
    m = Lambda(lambda s, x: F.interpolate(x, scale_factor=1.5, mode="bicubic", align_corners=False))
    return Case(m, [(randn(1, 2, 6, 6, seed=42),)], note="bicubic")


@case("interp_linear1d_nearest3d")
def _():
    m = Lambda(lambda s, x, y: (F.interpolate(x, scale_factor=3, mode="linear"),
                                F.interpolate(y, scale_factor=2, mode="nearest")))
    return Case(m, [(randn(1, 2, 5, seed=43), randn(1, 1, 2, 3, 2, seed=44))], note="1d linear, 3d nearest")


@case("pixel_shuffle")
def _():
    m = Lambda(lambda s, x: (F.pixel_shuffle(x, 2), F.pixel_unshuffle(x, 2)))
    return Case(m, [(randn(1, 8, 4, 6, seed=45),)], note="pixel_shuffle/unshuffle")


@case("pad_modes")
def _():
    m = Lambda(lambda s, x: (F.pad(x, (1, 2, 0, 1), mode="constant", value=0.5),
                             F.pad(x, (2, 1, 1, 2), mode="reflect"),
                             F.pad(x, (1, 1, 2, 0), mode="replicate"),
                             F.pad(x, (1, 1, 1, 1), mode="circular")))
    return Case(m, [(randn(1, 2, 4, 5, seed=46),)], note="pad constant/reflect/replicate/circular")


# --------------------------------------------------------------------------
# sort / scan / index
# --------------------------------------------------------------------------


@case("topk")
def _():
    m = Lambda(lambda s, x: (torch.topk(x, 3, dim=-1), torch.topk(x, 2, dim=0, largest=False)))
    return Case(m, [(randn(4, 10, seed=50),)], note="topk largest/smallest, values+indices")


@case("sort")
def _():
    m = Lambda(lambda s, x: (torch.sort(x, dim=-1), torch.sort(x, dim=0, descending=True), torch.argsort(x, dim=1)))
    return Case(m, [(randn(4, 7, seed=51),)], note="sort asc/desc, argsort")


@case("cumsum_cumprod")
def _():
    m = Lambda(lambda s, x, i: (torch.cumsum(x, 1), torch.cumsum(i, 0), torch.cumsum(x, 0, dtype=torch.float64)))
    return Case(m, [(randn(3, 6, seed=52), randint(-5, 5, (4, 3), seed=53))], note="cumsum f32/i64/->f64")


@case("cumprod")
def _():
    return Case(Lambda(lambda s, x: torch.cumprod(x * 0.5 + 1, -1)), [(randn(3, 6, seed=52),)],
                note="cumprod (not core ATen: expected export error)")


@case("argmax_dims")
def _():
    m = Lambda(lambda s, x: (x.argmax(dim=1), x.argmin(dim=-1, keepdim=True), x.max(dim=0), x.min(dim=2),
                             x.argmax()))
    return Case(m, [(randn(3, 4, 5, seed=54),)], note="argmax/argmin dims, max/min with indices, global argmax")


@case("index_ops")
def _():
    def f(s, x, idx, src):
        a = torch.gather(x, 1, idx)
        b = x.index_select(0, idx[:, 0])
        c = torch.scatter(x, 1, idx, src)
        d = x.scatter_add(1, idx, src)
        e = x[idx[:, 0]]
        g = x.clone()
        g[idx[:, 0], 1] = 9.0
        return a, b, c, d, e, g

    return Case(Lambda(f), [(randn(4, 6, seed=55), torch.tensor([[0, 2], [1, 5], [3, 3], [2, 0]]),
                             randn(4, 2, seed=56))], note="gather/index_select/scatter/scatter_add/index/index_put")


@case("masked_fill_bool")
def _():
    m = Lambda(lambda s, x, msk: (x.masked_fill(msk, -1e4), x.masked_fill(~msk[0], 0.0)))
    msk = torch.rand(2, 3, 4, generator=gen(58)) > 0.5
    return Case(m, [(randn(2, 3, 4, seed=57), msk)], note="masked_fill with bool mask (broadcast)")


@case("where_broadcast")
def _():
    m = Lambda(lambda s, c, x, y: (torch.where(c, x, y), torch.where(x > 0, x, 0.0), torch.where(c, 1.0, y)))
    c = torch.rand(3, 1, 4, generator=gen(59)) > 0.5
    return Case(m, [(c, randn(1, 2, 4, seed=60), randn(3, 2, 1, seed=61))], note="where with broadcasting, scalars")


# --------------------------------------------------------------------------
# integer / bool / misc elementwise
# --------------------------------------------------------------------------


@case("int_arith")
def _():
    def f(s, a32, b32, a64, b64):
        return (a32 // b32, a64 // b64, torch.remainder(a64, b64), a32 % 5, a64 * 3 - b64,
                torch.div(a64, b64, rounding_mode="trunc"), a32 + b32, a64 / b64)

    return Case(Lambda(f), [(randint(0, 100, (3, 4), seed=62, dtype=torch.int32),
                             randint(1, 9, (3, 4), seed=63, dtype=torch.int32),
                             randint(0, 1000, (3, 4), seed=64), randint(1, 17, (3, 4), seed=65))],
                note="int32/int64 floordiv, remainder (positive), trunc div, true div -> float")


@case("compare_bool")
def _():
    def f(s, x, y):
        return (x > y, x <= 0.1, x == y, x != 0.0, torch.logical_and(x > 0, y > 0),
                torch.logical_or(x > 1, y < -1), torch.logical_not(x > 0), torch.isnan(x / (y * 0)),
                (x > 0).any(dim=1), (x > -2).all())

    y = randn(3, 5, seed=67)
    x = randn(3, 5, seed=66)
    x[0, :2] = y[0, :2]
    return Case(Lambda(f), [(x, y)], note="comparisons/logical ops -> bool outputs, any/all")


@case("bitwise")
def _():
    def f(s, a, b, p, q):
        return (a & b, a | b, a ^ b, ~a, p & q, p | q, p ^ q, ~p, a & 7)

    return Case(Lambda(f), [(randint(0, 256, (2, 5), seed=68, dtype=torch.int32),
                             randint(0, 256, (2, 5), seed=69, dtype=torch.int32),
                             torch.rand(2, 5, generator=gen(70)) > 0.5, torch.rand(2, 5, generator=gen(71)) > 0.5)],
                note="bitwise and/or/xor/not on int32 and bool")


@case("bitwise_shift")
def _():
    return Case(Lambda(lambda s, a: (torch.bitwise_left_shift(a, 2), torch.bitwise_right_shift(a, 1), a >> a.clamp(0, 3))),
                [(randint(0, 256, (2, 5), seed=68, dtype=torch.int32),)], note="shifts (Tensor_Scalar not core ATen)")


@case("clamp_tensor")
def _():
    m = Lambda(lambda s, x, lo, hi: (torch.clamp(x, lo, hi), torch.clamp(x, min=-0.5), torch.clamp(x, max=hi),
                                     x.clamp(-1, 1), torch.maximum(x, lo), torch.minimum(x, hi)))
    return Case(m, [(randn(3, 4, seed=72, scale=2), randn(1, 4, seed=73) - 1, randn(3, 1, seed=74) + 1)],
                note="clamp with tensor bounds (broadcast), scalar bounds, maximum/minimum")


@case("activations")
def _():
    def f(s, x):
        return (F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x), F.hardswish(x), F.hardsigmoid(x), F.elu(x),
                F.leaky_relu(x, 0.1), F.softplus(x), F.mish(x), torch.sigmoid(x), torch.tanh(x), F.relu6(x * 4),
                F.softmax(x, -1), F.log_softmax(x, 0), F.glu(x, -1), F.prelu(x, torch.tensor([0.2])),
                F.hardtanh(x, -0.5, 0.5), F.selu(x), F.celu(x), F.logsigmoid(x))

    return Case(Lambda(f), [(randn(3, 8, seed=75, scale=3),)], note="activation zoo")


@case("math_unary")
def _():
    def f(s, x):
        p = x.abs() + 0.1
        return (torch.exp(x), torch.log(p), torch.log1p(p), torch.sqrt(p), torch.rsqrt(p), torch.pow(p, 1.7),
                torch.pow(x, 2), torch.erf(x), torch.atan2(x, p), torch.sin(x), torch.cos(x), torch.floor(x),
                torch.ceil(x), torch.round(x), torch.trunc(x), torch.sign(x), torch.reciprocal(p), torch.log2(p),
                torch.expm1(x), torch.asin(x.clamp(-1, 1)), torch.atan(x), torch.logsumexp(x, -1), torch.frac(x))

    return Case(Lambda(f), [(randn(4, 6, seed=76, scale=2),)], note="unary math zoo")


@case("reductions")
def _():
    def f(s, x):
        return (x.sum(), x.sum(dim=(0, 2)), x.mean(dim=-1, keepdim=True), x.var(dim=1), x.std(dim=0, unbiased=False),
                x.amax(dim=(1, 2)), x.amin(dim=0), x.prod(dim=2), torch.linalg.vector_norm(x, dim=-1),
                x.norm(p=1, dim=1))

    return Case(Lambda(f), [(randn(3, 4, 5, seed=77),)], note="sum/mean/var/std/amax/amin/prod/norm")


@case("shape_ops")
def _():
    def f(s, x):
        a, b = x.split([1, 2], dim=1)
        return (x.repeat(1, 2, 1), x.expand(2, 3, 3, 4), x.flip(-1), torch.roll(x, 2, dims=2), x.narrow(2, 1, 2),
                torch.stack([a.squeeze(1), b[:, 0]], 0), torch.cat([a, b], 1).transpose(0, 2), x.tile((2, 1, 1)),
                x.permute(2, 0, 1).contiguous().view(4, -1), x.unsqueeze(0).movedim(0, 3), torch.tril(x[0]),
                torch.triu(x[0], 1), x[:, ::2, 1:3], x.unflatten(2, (2, 2)), torch.chunk(x, 2, dim=2))

    return Case(Lambda(f), [(randn(3, 3, 4, seed=78),)], note="split/repeat/expand/flip/roll/narrow/stack/cat/...")


@case("creation_ops")
def _():
    def f(s, x):
        n = x.shape[1]
        return (x + torch.arange(n, dtype=torch.float32), torch.zeros_like(x), torch.ones(2, 3) * x.mean(),
                torch.full((2, 2), 3.5), x * torch.linspace(0, 1, n), torch.eye(n) @ x.t()[:n, :],
                torch.arange(1, 10, 3), F.one_hot(torch.tensor([0, 2, 1]), 4))

    return Case(Lambda(f), [(randn(3, 5, seed=79),)], note="arange/zeros_like/ones/full/linspace/eye/one_hot")


@case("einsum")
def _():
    m = Lambda(lambda s, a, b, c: (torch.einsum("bij,bjk->bik", a, b), torch.einsum("bhqd,bhkd->bhqk", c, c),
                                   torch.einsum("ij->ji", a[0]), torch.einsum("bij->b", a)))
    return Case(m, [(randn(2, 3, 4, seed=80), randn(2, 4, 5, seed=81), randn(1, 2, 3, 4, seed=82))],
                note="einsum -> bmm/permute/sum")


@case("matmul_broadcast")
def _():
    m = Lambda(lambda s, a, b, v: (a @ b, torch.matmul(a, v), torch.matmul(v, b[0, 0]), b[0, 0] @ b[0, 0].t(),
                                   torch.mm(a[0, 0], b[0, 0]), torch.addmm(v[:3], a[0, 0], b[0, 0]) if False else a.sum()))
    return Case(m, [(randn(2, 1, 3, 4, seed=83), randn(1, 5, 4, 6, seed=84), randn(4, seed=85))],
                note="matmul with batch broadcasting, mat-vec, vec-mat, mm")


@case("baddbmm_addmm")
def _():
    m = Lambda(lambda s, i, a, b, c, w: (torch.baddbmm(i, a, b, beta=0.5, alpha=2.0), torch.addmm(c, a[0], b[0]),
                                         torch.bmm(a, b), w))
    return Case(m, [(randn(2, 3, 5, seed=86), randn(2, 3, 4, seed=87), randn(2, 4, 5, seed=88),
                     randn(5, seed=89), randn(3, seed=90))], note="baddbmm(beta,alpha), addmm, bmm")


@case("addmv")
def _():
    return Case(Lambda(lambda s, w, a, v: torch.addmv(w, a, v, beta=0.5)), [(randn(3, seed=90), randn(3, 4, seed=87),
                randn(4, seed=88))], note="addmv (not core ATen: expected export error)")


# --------------------------------------------------------------------------
# conv / pool / norm
# --------------------------------------------------------------------------


@case("conv_variants")
def _():
    torch.manual_seed(10)

    def f(s, x):
        return (s.ct(x), s.ct2(x), s.dw(x), s.dil(x), s.ct1(x[:, :, 0]))

    m = Lambda(f, ct=nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
               ct2=nn.ConvTranspose2d(4, 4, 4, stride=2, groups=2, dilation=1),
               dw=nn.Conv2d(4, 8, 3, groups=4, padding="same", bias=False),
               dil=nn.Conv2d(4, 2, 3, dilation=2, stride=(1, 2), padding=(2, 1)),
               ct1=nn.ConvTranspose1d(4, 2, 3, stride=3))
    return Case(m.eval(), [(randn(1, 4, 6, 7, seed=91),)], note="conv_transpose 1d/2d, groups, dilation")


@case("conv3d")
def _():
    torch.manual_seed(10)
    return Case(nn.Conv3d(4, 2, (2, 3, 3), padding=(0, 1, 1)).eval(), [(randn(1, 4, 3, 6, 7, seed=91),)],
                note="conv3d (portable runtime supports 3-d/4-d conv input only)")


@case("channels_last_convnet")
def _():
    torch.manual_seed(18)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, groups=2),
                      nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    m = m.to(memory_format=torch.channels_last)
    return Case(m, [(randn(2, 3, 12, 12, seed=119).to(memory_format=torch.channels_last),)],
                note="conv net without BN, channels_last weights+input (dim_order ops)")


@case("pool_variants")
def _():
    def f(s, x):
        return (F.max_pool2d(x, 3, 2, ceil_mode=True), F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False),
                F.adaptive_avg_pool2d(x, (3, 2)), F.max_pool2d(x, 2, return_indices=True),
                F.avg_pool2d(x, 2, ceil_mode=True), F.max_pool1d(x[:, :, 0], 2), F.avg_pool1d(x[:, :, 0], 3))

    return Case(Lambda(f), [(randn(1, 2, 7, 9, seed=92),)], note="pool variants incl. ceil_mode, indices")


@case("adaptive_max_pool")
def _():
    return Case(Lambda(lambda s, x: F.adaptive_max_pool2d(x, 2)), [(randn(1, 2, 7, 9, seed=92),)],
                note="adaptive_max_pool2d (not core ATen: expected export error)")


@case("norm_variants")
def _():
    torch.manual_seed(11)

    def f(s, x, y):
        return s.bn1(y), s.inn(x), s.bn2(x), F.normalize(x, dim=1), s.inn_aff(x)

    m = Lambda(f, bn1=nn.BatchNorm1d(4), inn=nn.InstanceNorm2d(3), bn2=nn.BatchNorm2d(3),
               inn_aff=nn.InstanceNorm2d(3, affine=True))
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.normal_()
    return Case(m.eval(), [(randn(2, 3, 5, 5, seed=93), randn(3, 4, 6, seed=94))],
                note="BatchNorm1d/2d eval with stats, InstanceNorm2d, F.normalize")


@case("unfold_fold")
def _():
    m = Lambda(lambda s, x: (F.unfold(x, 2, stride=2), F.unfold(x, 3, padding=1), x.unfold(3, 2, 2)))
    return Case(m, [(randn(1, 2, 4, 6, seed=95),)], note="im2col (F.unfold), Tensor.unfold")


@case("fold")
def _():
    m = Lambda(lambda s, x: F.fold(x, (4, 6), 3, padding=1))
    return Case(m, [(randn(1, 18, 24, seed=95),)], note="col2im (F.fold, padding=1 -> decomposes with negative pad)")


# --------------------------------------------------------------------------
# dtypes / dynamic / IO structure / state
# --------------------------------------------------------------------------


class _SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.l = nn.Linear(8, 5)
        self.n = nn.LayerNorm(5)

    def forward(self, x):
        h = F.relu(self.c(x))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        y = self.n(self.l(h))
        return torch.softmax(y, -1), F.gelu(y) * 2 + 1, y.sum(-1)


@case("fp16_net")
def _():
    torch.manual_seed(12)
    m = _SmallNet().half().eval()
    return Case(m, [(randn(2, 3, 8, 8, seed=96, dtype=torch.float16),)], atol=1e-2, rtol=1e-2,
                note="conv/linear/layernorm/softmax/gelu in float16")


@case("bf16_net")
def _():
    torch.manual_seed(12)
    net = _SmallNet().to(torch.bfloat16).eval()
    m = Lambda(lambda s, x: s.net(x.to(torch.bfloat16)), net=net)
    return Case(m, [(randn(2, 3, 8, 8, seed=97),)], atol=5e-2, rtol=5e-2,
                note="conv/linear/layernorm/softmax/gelu in bfloat16 (f32 input cast inside: .npy has no bf16; "
                     "bf16 outputs compared as float32)")


@case("f64_net")
def _():
    torch.manual_seed(13)

    def f(s, x):
        y = s.l(x)
        return torch.tanh(y) @ y.t(), torch.exp(-y.abs()).cumsum(-1), y.to(torch.float32), y.var(0)

    m = Lambda(f, l=nn.Linear(6, 4)).double()
    return Case(m, [(randn(3, 6, seed=98, dtype=torch.float64),)], atol=1e-9, rtol=1e-9,
                note="float64 linear/tanh/matmul/exp/cumsum/var, cast to f32")


@case("mixed_dtype_promotion")
def _():
    def f(s, x, i, h):
        return x + i, i * 2.5, h.float() + x, (i > 2).to(torch.int32) + i.to(torch.int32), x.to(torch.int64), h * 2

    return Case(Lambda(f), [(randn(2, 3, seed=99, scale=4), randint(0, 5, (2, 3), seed=100),
                             randn(2, 3, seed=101, dtype=torch.float16))], atol=1e-3, rtol=1e-3,
                note="type promotion f32+i64, f16->f32, casts")


@case("dynamic_batch_cnn")
def _():
    torch.manual_seed(14)
    m = _SmallNet().eval()
    b = Dim("batch", min=1, max=8)
    return Case(m, [(randn(3, 3, 8, 8, seed=102),), (randn(1, 3, 8, 8, seed=103),), (randn(8, 3, 8, 8, seed=104),)],
                example=(randn(2, 3, 8, 8, seed=105),), dynamic_shapes=({0: b},),
                note="Dim batch 1..8 traced at 2, runs at 3,1,8")


@case("dynamic_seq_encoder")
def _():
    torch.manual_seed(15)
    enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    emb = nn.Embedding(50, 16)

    def f(s, ids):
        h = s.emb(ids)
        n = ids.shape[1]
        h = h + torch.arange(n, dtype=torch.float32).unsqueeze(-1) * 0.01
        return s.enc(h).mean(1), s.enc(h)[:, -1]

    m = Lambda(f, enc=enc, emb=emb).eval()
    seq = Dim("seq", min=2, max=32)
    return Case(m, [(randint(0, 50, (2, 5), seed=106),), (randint(0, 50, (2, 17), seed=107),),
                    (randint(0, 50, (2, 2), seed=108),)],
                example=(randint(0, 50, (2, 8), seed=109),), dynamic_shapes=({1: seq},),
                note="Dim seq 2..32 traced at 8, runs at 5,17,2: embedding+encoder layer")


@case("dynamic_batch_gru")
def _():
    torch.manual_seed(16)
    m = Lambda(lambda s, x: s.g(x)[0].sum(1), g=nn.GRU(4, 8, batch_first=True))
    b = Dim("b", min=1, max=6)
    return Case(m, [(randn(2, 7, 4, seed=110),), (randn(5, 7, 4, seed=111),)], example=(randn(3, 7, 4, seed=112),),
                dynamic_shapes=({0: b},), note="GRU with dynamic batch (dynamic time fails: the loop is unrolled)")


@case("outputs_tuple_list_scalar")
def _():
    def f(s, x):
        return x * 2, [x.sum(0), x.max()], (x.shape[0], 1.5, x.mean())

    return Case(Lambda(f), [(randn(3, 4, seed=113),)], note="nested tuple/list outputs, int and float constants")


@case("multi_input_int_bool")
def _():
    torch.manual_seed(17)

    def f(s, x, ids, mask, scale):
        e = s.e(ids)  # [b, t, 8]
        e = e.masked_fill(~mask.unsqueeze(-1), 0.0)
        pooled = e.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
        return s.l(torch.cat([pooled, x], -1)) * scale, mask.sum(1), ids.max()

    m = Lambda(f, e=nn.Embedding(30, 8), l=nn.Linear(12, 3))
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    return Case(m, [(randn(2, 4, seed=114), randint(0, 30, (2, 4), seed=115), mask, randn(1, seed=116))],
                note="float + int64 ids + bool mask + 1-elem tensor inputs")


@case("mutable_buffer")
def _():
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    class Acc(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("state", torch.linspace(-1, 1, 12).reshape(3, 4))
            self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))

        def forward(self, x):
            self.state.mul_(0.5).add_(x)
            self.steps.add_(1)
            return self.state.sum(0), self.steps.clone(), torch.tanh(self.state)

    return Case(Acc(), [(randn(3, 4, seed=117),)], use_to_edge=True, iterations=3,
                passes=[InitializedMutableBufferPass(["state", "steps"])],
                note="buffers updated in place (to_edge), 3 iterations on one load")


@case("kv_cache_index_copy")
def _():
    class Cache(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("k", torch.zeros(1, 6, 4))

        def forward(self, x, pos):
            self.k.index_copy_(1, pos, x)
            return self.k.sum(1), self.k.clone()

    return Case(Cache(), [(randn(1, 2, 4, seed=118), torch.tensor([1, 3]))], use_to_edge=True, iterations=2,
                note="index_copy_ into a mutable buffer (kv-cache style), 2 iterations")


# --------------------------------------------------------------------------
# HF transformers (random init, tiny configs)
# --------------------------------------------------------------------------


class HFWrap(nn.Module):
    def __init__(self, m, kind):
        super().__init__()
        self.m = m
        self.kind = kind

    def forward(self, *args):
        if self.kind == "ids_mask":
            o = self.m(input_ids=args[0], attention_mask=args[1])
        elif self.kind == "ids":
            o = self.m(input_ids=args[0], use_cache=False) if hasattr(self.m.config, "use_cache") else self.m(input_ids=args[0])
        else:
            o = self.m(pixel_values=args[0])
        if hasattr(o, "logits") and o.logits is not None:
            return o.logits
        return o.last_hidden_state


def _ids_mask(seed, b=2, t=8, vocab=128):
    ids = randint(0, vocab, (b, t), seed=seed)
    mask = torch.ones(b, t, dtype=torch.int64)
    mask[0, t - 3:] = 0
    return ids, mask


@case("hf_bert_tiny")
def _():
    from transformers import BertConfig, BertModel

    torch.manual_seed(20)
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    m = HFWrap(BertModel(cfg, add_pooling_layer=False).eval(), "ids_mask").eval()
    return Case(m, [_ids_mask(120)], strict=False, atol=2e-4, note="BertModel hidden32 2 layers, ids+mask")


@case("hf_distilbert_tiny")
def _():
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(21)
    cfg = DistilBertConfig(vocab_size=128, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    m = HFWrap(DistilBertModel(cfg).eval(), "ids_mask").eval()
    return Case(m, [_ids_mask(121)], strict=False, atol=2e-4, note="DistilBertModel dim32 2 layers")


@case("hf_gpt2_tiny")
def _():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(22)
    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64, use_cache=False)
    m = HFWrap(GPT2LMHeadModel(cfg).eval(), "ids").eval()
    return Case(m, [(randint(0, 128, (1, 8), seed=122),)], strict=False, atol=2e-4, note="GPT2LMHead tiny, logits")


@case("hf_llama_tiny")
def _():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(23)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    m = HFWrap(LlamaForCausalLM(cfg).eval(), "ids").eval()
    return Case(m, [(randint(0, 128, (1, 8), seed=123),)], strict=False, atol=2e-4, note="Llama tiny GQA, logits")


@case("hf_t5_encoder_tiny")
def _():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(24)
    cfg = T5Config(vocab_size=128, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    m = HFWrap(T5EncoderModel(cfg).eval(), "ids_mask").eval()
    return Case(m, [_ids_mask(124)], strict=False, atol=2e-4, note="T5EncoderModel tiny (relative position bias)")


@case("hf_vit_tiny")
def _():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(25)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_channels=3)
    m = HFWrap(ViTModel(cfg, add_pooling_layer=False).eval(), "pixels").eval()
    return Case(m, [(img(1, 3, 32, 32, seed=125),)], strict=False, atol=2e-4, note="HF ViTModel tiny")


# --------------------------------------------------------------------------
# machinery
# --------------------------------------------------------------------------


def to_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().clone().contiguous().numpy() if v.dtype != torch.bfloat16 else \
            v.detach().float().contiguous().numpy()
    if isinstance(v, bool):
        return np.array(v, dtype=np.bool_)
    if isinstance(v, int):
        return np.array(v, dtype=np.int64)
    if isinstance(v, float):
        return np.array(v, dtype=np.float64)
    if isinstance(v, torch.SymInt):
        return np.array(int(v), dtype=np.int64)
    return np.asarray(v)


def save_input(path: Path, t) -> str:
    """Inputs are .npy; bfloat16 has no numpy dtype -> stored as raw uint16 bits ('bf16' marker in case.json)."""
    if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16:
        np.save(path, t.contiguous().view(torch.int16).numpy().view(np.uint16))
        return "bfloat16"
    np.save(path, to_numpy(t))
    return str(to_numpy(t).dtype)


def load_input(path: Path, kind: str):
    arr = np.load(path)
    if kind == "bfloat16":
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(arr))


def export_case(c: Case) -> bytes:
    from executorch.exir import ExecutorchBackendConfig, to_edge, to_edge_transform_and_lower

    ex = c.example if c.example is not None else c.runs[0]
    ds = c.dynamic_shapes
    if ds is not None and isinstance(c.module, Lambda):
        ds = (tuple(ds),)  # forward(self, *args): one entry for the varargs tuple
    ep = torch.export.export(c.module, tuple(ex), dynamic_shapes=ds, strict=c.strict)
    edge = to_edge(ep) if c.use_to_edge else to_edge_transform_and_lower(ep)
    cfg = ExecutorchBackendConfig(passes=c.passes) if c.passes else ExecutorchBackendConfig()
    return edge.to_executorch(cfg).buffer


def flatten(out) -> List[Any]:
    from torch.utils._pytree import tree_flatten

    return tree_flatten(out)[0]


def run_eager(c: Case, module_copy: nn.Module, inputs) -> List[np.ndarray]:
    out = None
    with torch.no_grad():
        for _ in range(c.iterations):
            out = module_copy(*[i.clone() if isinstance(i, torch.Tensor) else i for i in inputs])
    return [to_numpy(o) for o in flatten(out)]


def _ref_child(pte_path: str, run_inputs: List[List[Tuple[str, str]]], iterations: int, out_dirs: List[str],
               err_path: str):
    try:
        fd = os.open(str(Path(err_path).with_name("ref_stderr.txt")), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)  # keep the C++ runtime's log noise out of the sweep output
        from executorch.runtime import Runtime

        data = Path(pte_path).read_bytes()
        for files, od in zip(run_inputs, out_dirs):
            program = Runtime.get().load_program(data)
            method = program.load_method("forward")
            inputs = [load_input(Path(f), k) for f, k in files]
            outs = []
            for _ in range(iterations):
                outs = method.execute(inputs)
            Path(od).mkdir(parents=True, exist_ok=True)
            for i, o in enumerate(outs):
                np.save(Path(od) / f"output_{i}.npy", to_numpy(o))  # bf16 -> float32, as ptero writes it
        os._exit(0)
    except BaseException as e:  # noqa: BLE001
        Path(err_path).write_text(f"{type(e).__name__}: {e}")
        os._exit(3)


def run_ref(pte: Path, run_inputs, iterations: int, out_dirs: List[Path], timeout: float) -> Optional[str]:
    err = pte.parent / "ref_error.txt"
    if err.exists():
        err.unlink()
    for od in out_dirs:
        if od.exists():
            for f in od.iterdir():
                f.unlink()
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_ref_child, args=(str(pte), run_inputs, iterations, [str(d) for d in out_dirs], str(err)))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return f"timeout after {timeout}s"
    if p.exitcode != 0:
        msg = first_line(err.read_text()) if err.exists() else f"runtime process died (exit code {p.exitcode})"
        log = err.with_name("ref_stderr.txt")
        if log.exists():
            hints = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
                     if ("Check failed" in ln and not ln.rstrip().endswith("): ")) or "not found" in ln
                     or "Missing operator" in ln]
            if hints:
                msg += " | " + hints[0][:200]
        return msg
    return None


def first_line(s: str) -> str:
    for line in s.strip().splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return ""


def run_ptero(ptero: str, pte: Path, files: List[str], iterations: int, out_dir: Path, timeout: float) -> Optional[str]:
    if out_dir.exists():
        for f in out_dir.iterdir():
            f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [ptero, "run", str(pte)]
    for f in files:
        cmd += ["--input", f]
    cmd += ["--output-dir", str(out_dir)]
    if iterations != 1:
        cmd += ["--iterations", str(iterations)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout}s"
    if p.returncode != 0:
        msg = first_line(p.stderr) or first_line(p.stdout) or f"exit code {p.returncode}"
        return msg
    return None


def load_outputs(d: Path) -> List[np.ndarray]:
    outs = []
    i = 0
    while (d / f"output_{i}.npy").exists():
        outs.append(np.load(d / f"output_{i}.npy"))
        i += 1
    return outs


def compare(actual: List[np.ndarray], expected: List[np.ndarray], atol: float, rtol: float) -> Dict[str, Any]:
    """Returns {"ok": bool, "problems": [...], "max_abs": float, "worst": str}."""
    res = {"ok": True, "problems": [], "max_abs": 0.0, "worst": None, "ref_absmax": 0.0}
    if len(actual) != len(expected):
        res["ok"] = False
        res["problems"].append(f"{len(actual)} outputs vs {len(expected)} expected")
    for j, (x, y) in enumerate(zip(actual, expected)):
        if x.dtype != y.dtype:
            res["ok"] = False
            res["problems"].append(f"out{j}: dtype {x.dtype} vs {y.dtype}")
            continue
        if x.shape != y.shape:
            res["ok"] = False
            res["problems"].append(f"out{j}: shape {list(x.shape)} vs {list(y.shape)}")
            continue
        if x.size == 0:
            continue
        if x.dtype.kind in "biu":
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            m = float(d.max())
            if m > res["max_abs"]:
                res["max_abs"], res["worst"] = m, f"out{j}"
            if m != 0:
                res["ok"] = False
                n = int((d != 0).sum())
                res["problems"].append(f"out{j}: {n}/{x.size} elements differ, max abs {m:g} shape {list(x.shape)}")
            continue
        xf, yf = x.astype(np.float64), y.astype(np.float64)
        both_nan = np.isnan(xf) & np.isnan(yf)
        d = np.where(both_nan, 0.0, np.abs(xf - yf))
        d = np.where(np.isnan(d), np.inf, d)
        fin = np.isfinite(yf)
        absmax = float(np.abs(yf[fin]).max()) if fin.any() else 0.0
        res["ref_absmax"] = max(res["ref_absmax"], absmax)
        scale = max(1.0, absmax)
        tol = atol * scale + rtol * np.abs(np.where(fin, yf, 0.0))
        same_inf = np.isinf(xf) & np.isinf(yf) & (np.sign(xf) == np.sign(yf))
        bad = (d > tol) & ~same_inf
        m = float(np.where(same_inf, 0.0, d).max())
        if m > res["max_abs"] or res["worst"] is None:
            res["max_abs"], res["worst"] = max(m, res["max_abs"]), f"out{j}" if m >= res["max_abs"] else res["worst"]
        if bad.any():
            res["ok"] = False
            res["problems"].append(
                f"out{j}: max abs diff {m:.3g} (tol atol {atol:g}*{scale:.3g} + rtol {rtol:g}), "
                f"{int(bad.sum())}/{x.size} outside, shape {list(x.shape)} {x.dtype}")
    return res


def list_ops(pte: Path) -> List[str]:
    from list_ops import read_pte_ops

    ops = set()
    for info in read_pte_ops(pte).values():
        ops.update(info["operators"])
    return sorted(ops)


def process(name: str, args, old: Dict[str, Any]) -> Dict[str, Any]:
    d = SWEEP / name
    rec: Dict[str, Any] = {"model": name}
    t0 = time.time()
    c: Optional[Case] = None
    # --- build case + export
    try:
        torch.manual_seed(0)
        c = CASES[name]()
        rec["note"] = c.note
    except Exception as e:  # noqa: BLE001
        rec.update(status="export error", detail=f"case construction: {first_line(f'{type(e).__name__}: {e}')}")
        return rec
    pte = d / "model.pte"
    meta_path = d / "case.json"
    if args.skip_export and pte.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*"):
            if f.is_file():
                f.unlink()
        try:
            eager_mod = copy.deepcopy(c.module).eval()
            buf = export_case(c)
        except Exception as e:  # noqa: BLE001
            msg = first_line(f"{type(e).__name__}: {e}")
            if msg.endswith(":") or "SpecViolation" in msg:
                import re
                mm = re.search(r"_core_aten_ops_exception_list=\[([^\]]+)\]", str(e))
                msg += f" not core ATen: {mm.group(1)}" if mm else " " + " ".join(str(e).split())[:200]
            (d / "export_error.txt").write_text(traceback.format_exc())
            rec.update(status="export error", detail=msg, seconds=round(time.time() - t0, 1))
            return rec
        pte.write_bytes(buf)
        runs_meta = []
        for r, inputs in enumerate(c.runs):
            files = []
            for j, t in enumerate(inputs):
                fn = d / f"r{r}_in{j}.npy"
                kind = save_input(fn, t)
                files.append([str(fn), kind])
            eager_dir = d / f"r{r}_eager"
            eager_dir.mkdir(exist_ok=True)
            try:
                outs = run_eager(c, copy.deepcopy(eager_mod), inputs)
                for j, o in enumerate(outs):
                    np.save(eager_dir / f"output_{j}.npy", o)
            except Exception as e:  # noqa: BLE001
                (eager_dir / "error.txt").write_text(str(e))
            runs_meta.append(files)
        meta = {"runs": runs_meta, "iterations": c.iterations, "atol": c.atol, "rtol": c.rtol, "note": c.note,
                "pte_bytes": len(buf)}
        meta_path.write_text(json.dumps(meta, indent=1))
    rec["pte_bytes"] = meta.get("pte_bytes", pte.stat().st_size)
    rec["export_seconds"] = round(time.time() - t0, 1)
    try:
        rec["ops"] = list_ops(pte)
    except Exception as e:  # noqa: BLE001
        rec["ops"] = [f"<list_ops failed: {e}>"]
    atol, rtol, iters = meta["atol"], meta["rtol"], meta["iterations"]
    runs = meta["runs"]
    ref_dirs = [d / f"r{r}_ref" for r in range(len(runs))]
    pt_dirs = [d / f"r{r}_ptero" for r in range(len(runs))]
    # --- reference
    ref_err = None
    if args.skip_export and old.get("status") in ("match", "mismatch", "ptero error") and all(
            (od / "output_0.npy").exists() or not runs for od in ref_dirs):
        pass  # reuse reference outputs
    else:
        ref_err = run_ref(pte, runs, iters, ref_dirs, args.timeout)
    # --- ptero
    pt_err = None
    for r, files in enumerate(runs):
        e = run_ptero(args.ptero, pte, [f for f, _ in files], iters, pt_dirs[r], args.timeout)
        if e:
            pt_err = f"run{r}: {e}" if len(runs) > 1 else e
            break
    rec["seconds"] = round(time.time() - t0, 1)
    # --- eager vs ref (information)
    if ref_err is None:
        worst = 0.0
        for r in range(len(runs)):
            ed = d / f"r{r}_eager"
            if (ed / "error.txt").exists():
                continue
            cr = compare(load_outputs(ed), load_outputs(ref_dirs[r]), atol, rtol)
            worst = max(worst, cr["max_abs"])
            if not cr["ok"]:
                rec.setdefault("eager_vs_ref", []).extend(f"run{r} {p}" for p in cr["problems"])
        rec["eager_vs_ref_max_abs"] = worst
    if ref_err is not None:
        rec["status"] = "ref error"
        rec["detail"] = ref_err
        if pt_err:
            rec["ptero_error"] = pt_err
        else:  # informational: ptero vs eager
            probs = []
            for r in range(len(runs)):
                cr = compare(load_outputs(pt_dirs[r]), load_outputs(d / f"r{r}_eager"), atol, rtol)
                probs += [f"run{r} {p}" for p in cr["problems"]]
            rec["ptero_vs_eager"] = "match" if not probs else probs
        return rec
    if pt_err is not None:
        rec.update(status="ptero error", detail=pt_err)
        return rec
    problems = []
    worst = (0.0, None)
    absmax = 0.0
    for r in range(len(runs)):
        cr = compare(load_outputs(pt_dirs[r]), load_outputs(ref_dirs[r]), atol, rtol)
        absmax = max(absmax, cr["ref_absmax"])
        problems += [f"run{r} {p}" if len(runs) > 1 else p for p in cr["problems"]]
        if cr["max_abs"] >= worst[0]:
            worst = (cr["max_abs"], (f"run{r} " if len(runs) > 1 else "") + str(cr["worst"]))
    rec["max_abs_diff"] = worst[0]
    rec["worst_output"] = worst[1]
    rec["ref_float_absmax"] = absmax  # largest |value| among float reference outputs (is the check meaningful?)
    if problems:
        rec.update(status="mismatch", detail="; ".join(problems))
    else:
        rec.update(status="match", detail=f"max abs diff {worst[0]:.3g}, ref max|x| {absmax:.3g}")
    return rec


def short(rec) -> str:
    s = rec["status"]
    if s == "mismatch":
        return f"mismatch ({rec['detail'][:150]})"
    if s in ("ptero error", "ref error", "export error"):
        return f"{s}: {rec.get('detail', '')[:150]}"
    return f"match ({rec.get('detail', '')})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Ptero vs official ExecuTorch runtime sweep")
    ap.add_argument("--ptero", default=str(ROOT / "target" / "release" / "ptero"))
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--skip-export", action="store_true", help="reuse existing models/sweep/<name> exports")
    ap.add_argument("--failing", action="store_true", help="only cases not 'match' in results.json")
    ap.add_argument("--results", default=str(SWEEP / "results.json"))
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for n in CASES:
            print(n)
        return 0
    SWEEP.mkdir(parents=True, exist_ok=True)
    gi = SWEEP / ".gitignore"
    if not gi.exists():
        gi.write_text("# generated by python/sweep.py: everything here is scratch\n*\n")
    results_path = Path(args.results)
    old_results: Dict[str, Any] = {}
    if results_path.exists():
        try:
            old_results = {r["model"]: r for r in json.loads(results_path.read_text())["results"]}
        except Exception:  # noqa: BLE001
            old_results = {}
    names = [n for n in args.only.split(",") if n] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown cases: {unknown}", file=sys.stderr)
        return 2
    if args.failing:
        names = [n for n in names if old_results.get(n, {}).get("status") != "match"]
        args.skip_export = True
    results = dict(old_results)
    for n in names:
        print(f"[{time.strftime('%H:%M:%S')}] {n} ...", flush=True)
        try:
            rec = process(n, args, old_results.get(n, {}))
        except Exception as e:  # noqa: BLE001
            rec = {"model": n, "status": "sweep error", "detail": first_line(f"{type(e).__name__}: {e}")}
        results[n] = rec
        print(f"    -> {short(rec)}", flush=True)
        # write incrementally
        ordered = [results[k] for k in CASES if k in results]
        results_path.write_text(json.dumps({"ptero": args.ptero, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                            "results": ordered}, indent=1))
    ordered = [results[k] for k in CASES if k in results]
    # table
    w = max(len(r["model"]) for r in ordered)
    print()
    print(f"{'model':<{w}}  status")
    print("-" * (w + 60))
    for r in ordered:
        print(f"{r['model']:<{w}}  {short(r)}")
        if r.get("ops"):
            print(f"{'':<{w}}    ops: {', '.join(o.replace('aten::', '') for o in r['ops'])}")
    counts: Dict[str, int] = {}
    for r in ordered:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print()
    print("summary: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
