#!/usr/bin/env python3
"""Export Ptero's test fixtures with the official ExecuTorch exporter.

    .venv-ref/bin/python python/export_fixtures.py [--list] [names...]

With no names every committed fixture is (re)generated; `mobilenet_v2_full`
(full-size MobileNetV2, ~14 MB) is only exported when named explicitly and goes
to the git-ignored models/big/.

Pipeline (pure portable-kernel path, no delegate / partitioner):
    torch.export.export -> executorch.exir.to_edge_transform_and_lower (or
    to_edge) -> .to_executorch() -> .buffer

Expected outputs come from the official runtime (executorch.runtime.Runtime)
run on deterministic seeded inputs; PyTorch eager is run too and the max abs
difference is printed for information. If the official runtime cannot run a
program, eager outputs are used instead and cases.json records
"expected_source": "eager".

Layout: tests/fixtures/<name>/{model.pte, cases.json, runN_inM.npy, runN_outM.npy}
cases.json:
    {"atol": float, "rtol": float, "expected_source": "runtime"|"eager",
     "description": str,
     "runs": [{"method": str, "inputs": [npy...], "expected": [npy...]}, ...]}
Runs are executed in order on ONE loaded program (state carries over).
Comparison semantics: |actual - expected| <= atol + rtol * |expected|
elementwise; dtypes and shapes must match exactly; non-tensor outputs are 0-d
arrays (int -> int64, float -> float64, bool -> bool).

At the end tests/fixtures/OPS.txt (union of operators over all fixtures) is
rewritten.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BIG = ROOT / "models" / "big"
MAX_FIXTURE_PTE = 2 * 1024 * 1024

sys.path.insert(0, str(Path(__file__).resolve().parent))

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.export import Dim  # noqa: E402

torch.set_num_threads(1)


# --------------------------------------------------------------------------
# Fixture description
# --------------------------------------------------------------------------


@dataclass
class MethodSpec:
    module: nn.Module  # exported via module.forward
    example_args: Tuple[Any, ...]
    dynamic_shapes: Any = None


@dataclass
class Fixture:
    methods: Dict[str, MethodSpec]
    # (method name, inputs) executed in order on one loaded program
    runs: List[Tuple[str, Tuple[Any, ...]]]
    # per method: callable used for the eager comparison (called in run order,
    # so a stateful eager module mirrors the program's mutable state)
    eager: Dict[str, Callable[..., Any]]
    atol: float = 1e-4
    rtol: float = 1e-4
    description: str = ""
    strict: bool = True
    use_to_edge: bool = False  # to_edge instead of to_edge_transform_and_lower
    backend_config_kwargs: Dict[str, Any] = field(default_factory=dict)
    edge_compile_config: Any = None
    constant_methods: Optional[Dict[str, Any]] = None
    # constant methods have no eager counterpart: value returned by them
    constant_eager: Dict[str, Any] = field(default_factory=dict)
    # "xnnpack": lowered with the official XnnpackPartitioner (fp32) instead of portable
    partitioner: Optional[str] = None
    # Quantization applied before lowering (see `quantize_methods`): "qs8" (PT2E static,
    # per-channel), "qs8_tensor" (PT2E static, per-tensor), "dq8" (PT2E dynamic int8
    # activations, per-channel int8 weights), "8da4w_g32" / "8da4w_qc4w" (torchao
    # Int8DynamicActivationIntxWeightConfig, group 32 / per-channel), "fp16" (module and
    # inputs in half precision).
    quant: Optional[str] = None
    # Weights exported to an external data file (`model.ptd`, FlatTensor): delegate
    # constants tagged before lowering, portable constants with `external_constants`.
    external_data: bool = False
    # Filled by export_pte when external_data: {file name: bytes}.
    data_files: Dict[str, bytes] = field(default_factory=dict)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(*shape, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype)


def randint(low: int, high: int, shape, seed: int, dtype=torch.int64) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=gen(seed)).to(dtype)


class MethodWrapper(nn.Module):
    """Exposes `inner.<name>` as forward so torch.export can export it."""

    def __init__(self, inner: nn.Module, name: str):
        super().__init__()
        self.inner = inner
        self.name = name

    def forward(self, *args):
        return getattr(self.inner, self.name)(*args)


def single(module: nn.Module, runs_inputs: List[Tuple[Any, ...]], example=None, dynamic_shapes=None, **kw) -> Fixture:
    """Single `forward` method fixture; eager comparison uses a deep copy."""
    module = module.eval()
    eager_mod = copy.deepcopy(module)
    example = example if example is not None else runs_inputs[0]
    return Fixture(
        methods={"forward": MethodSpec(module, tuple(example), dynamic_shapes)},
        runs=[("forward", tuple(r)) for r in runs_inputs],
        eager={"forward": eager_mod},
        **kw,
    )


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def fx_mlp() -> Fixture:
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(16, 32)
            self.l2 = nn.Linear(32, 32)
            self.l3 = nn.Linear(32, 24)
            self.l4 = nn.Linear(24, 8)

        def forward(self, x):
            x = F.relu(self.l1(x))
            x = F.gelu(self.l2(x))
            x = F.relu(self.l3(x))
            return self.l4(x)

    torch.manual_seed(1)
    m = MLP()
    return single(m, [(randn(4, 16, seed=101),), (randn(4, 16, seed=102, scale=3.0),)],
                  description="Linear-ReLU-Linear-GELU-Linear-ReLU-Linear, input [4,16]")


def fx_cnn() -> Fixture:
    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
            self.b2 = nn.BatchNorm2d(16)
            self.c3 = nn.Conv2d(16, 16, 3, stride=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(self.b1(self.c1(x)))
            x = F.max_pool2d(x, 2)  # 16 -> 8
            x = F.relu(self.b2(self.c2(x)))
            x = F.avg_pool2d(x, 2)  # 8 -> 4
            x = F.relu(self.c3(x))  # 4 -> 2
            x = F.adaptive_avg_pool2d(x, 1)
            x = torch.flatten(x, 1)
            return self.fc(x)

    torch.manual_seed(2)
    m = CNN()
    with torch.no_grad():
        for i, bn in enumerate([m.b1, m.b2]):
            c = bn.num_features
            bn.running_mean.copy_(randn(c, seed=200 + i, scale=0.3))
            bn.running_var.copy_(torch.rand(c, generator=gen(210 + i)) + 0.5)
            bn.weight.copy_(1.0 + randn(c, seed=220 + i, scale=0.2))
            bn.bias.copy_(randn(c, seed=230 + i, scale=0.2))
    return single(m, [(randn(2, 3, 16, 16, seed=201),)],
                  description="conv2d/batchnorm2d(eval)/relu/maxpool/avgpool/adaptive_avgpool/flatten/linear, input [2,3,16,16]")


def fx_resnet_block() -> Fixture:
    class Block(nn.Module):
        """A ResNet basic block over an image large enough for Ptero's Winograd path
        (3x3, stride 1, >= 100 tiles of 2x2 outputs), odd sizes, then a plain 3x3
        convolution with a bias and a strided one with more channels (Ptero's
        pixel-row path)."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.b1 = nn.BatchNorm2d(16)
            self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.b2 = nn.BatchNorm2d(16)
            self.c3 = nn.Conv2d(16, 20, 3, padding=1)
            self.c4 = nn.Conv2d(20, 40, 3, stride=2, padding=1)

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            y = F.relu(y + x)
            return self.c4(F.relu(self.c3(y)))

    torch.manual_seed(7)
    m = Block()
    with torch.no_grad():
        for i, bn in enumerate([m.b1, m.b2]):
            c = bn.num_features
            bn.running_mean.copy_(randn(c, seed=700 + i, scale=0.3))
            bn.running_var.copy_(torch.rand(c, generator=gen(710 + i)) + 0.5)
            bn.weight.copy_(1.0 + randn(c, seed=720 + i, scale=0.2))
            bn.bias.copy_(randn(c, seed=730 + i, scale=0.2))
    return single(m, [(randn(1, 16, 23, 21, seed=701),)],
                  description="ResNet basic block (conv-bn-relu, conv-bn, +identity, relu) then conv 16->20, relu, conv 20->40 stride 2, input [1,16,23,21]")


def fx_transformer_encoder() -> Fixture:
    torch.manual_seed(3)
    m = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
    return single(m, [(randn(2, 5, 32, seed=301),)], atol=1e-4, rtol=1e-4,
                  description="nn.TransformerEncoderLayer(d_model=32, nhead=4, ff=64, batch_first) eval, input [2,5,32]")


def fx_lstm() -> Fixture:
    class LSTMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(input_size=8, hidden_size=16, num_layers=2, batch_first=True)

        def forward(self, x):
            out, (h, c) = self.lstm(x)
            return out, h, c

    torch.manual_seed(4)
    return single(LSTMNet(), [(randn(2, 6, 8, seed=401),)],
                  description="nn.LSTM(8,16,num_layers=2,batch_first) eval, input [2,6,8]; outputs (output, h_n, c_n)")


def fx_dynamic_batch() -> Fixture:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(10, 20)
            self.l2 = nn.Linear(20, 5)

        def forward(self, x):
            h = torch.tanh(self.l1(x))
            return torch.softmax(self.l2(h), dim=-1), h.sum(dim=0)

    torch.manual_seed(5)
    batch = Dim("batch", min=1, max=16)
    return single(
        Net(),
        [(randn(3, 10, seed=501),), (randn(7, 10, seed=502),), (randn(16, 10, seed=503),)],
        example=(randn(4, 10, seed=500),),
        dynamic_shapes=({0: batch},),
        description="dim 0 dynamic: Dim('batch', min=1, max=16), traced at batch 4; runs at batch 3, 7, 16",
    )


def fx_dynamic_seq() -> Fixture:
    """Dynamic sequence length, shape-dependent ops and an int (SymInt) output."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            b, s, d = x.shape
            pos = torch.arange(s, dtype=torch.float32).unsqueeze(-1) * 0.1  # [s,1]
            y = self.proj(x) + pos
            flat = y.reshape(b, -1)  # [b, s*d]
            return y.mean(dim=1), flat, s

    torch.manual_seed(6)
    seq = Dim("seq", min=2, max=12)
    return single(
        Net(),
        [(randn(2, 3, 8, seed=601),), (randn(2, 12, 8, seed=602),), (randn(2, 5, 8, seed=603),)],
        example=(randn(2, 6, 8, seed=600),),
        dynamic_shapes=({1: seq},),
        description="dim 1 dynamic (2..12): arange(seq), reshape(b,-1), mean; third output is the int seq length",
    )


def fx_mutable_buffer() -> Fixture:
    class Acc(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("acc", torch.linspace(-1.0, 1.0, 8).reshape(2, 4))
            self.register_buffer("count", torch.tensor(3, dtype=torch.int64))

        def forward(self, x):
            self.acc.add_(x)
            self.count.add_(1)
            return self.acc * 2.0, self.count + 0

    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    m = Acc()
    runs = [(randn(2, 4, seed=700 + i),) for i in range(3)]
    return single(
        m, runs, use_to_edge=True,
        # Without this pass ExecuTorch treats the initial contents of mutated
        # buffers as meaningless (only shape/dtype serialized). With it the
        # initial value is serialized and must be loaded into the planned slot.
        backend_config_kwargs={"passes": [InitializedMutableBufferPass(["acc", "count"])]},
        description="buffers acc (f32 [2,4], init linspace) and count (i64 0-d, init 3) updated in place; "
                    "3 runs on one program, state must persist; initial state serialized via InitializedMutableBufferPass",
    )


def fx_two_methods() -> Fixture:
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(8, 16)
            self.dec = nn.Linear(16, 4)

        def encode(self, x):
            return torch.tanh(self.enc(x))

        def forward(self, x):
            return self.dec(self.encode(x))

    torch.manual_seed(8)
    m = TwoHeads().eval()
    eager = copy.deepcopy(m)
    x0 = randn(3, 8, seed=800)
    return Fixture(
        methods={
            "forward": MethodSpec(m, (x0,)),
            "encode": MethodSpec(MethodWrapper(m, "encode"), (randn(5, 8, seed=801),)),
        },
        runs=[
            ("forward", (x0,)),
            ("encode", (randn(5, 8, seed=802),)),
            ("forward", (randn(3, 8, seed=803),)),
            ("num_classes", ()),
            ("encode", (randn(5, 8, seed=804),)),
        ],
        eager={"forward": eager.forward, "encode": eager.encode},
        constant_methods={"num_classes": 4},
        constant_eager={"num_classes": 4},
        description="multi-method program: forward([3,8])->[3,4], encode([5,8])->[5,16], "
                    "plus constant method num_classes() -> int 4",
    )


def _calibrate_bn(model: nn.Module, shape, seed: int, steps: int = 3):
    """Give BatchNorm layers realistic running stats (deterministic)."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(randn(*shape, seed=seed + i))
    model.eval()


def fx_mobilenet_v2() -> Fixture:
    import torchvision

    # The full MobileNetV2 (width 1.0, 1000 classes) is ~14 MB in fp32, over
    # the 2 MB fixture budget. This fixture uses width_mult=0.25 and
    # num_classes=100 (the last 1x1 conv stays 1280 wide in torchvision) with
    # a [1,3,96,96] input. The full-size model is `mobilenet_v2_full`.
    torch.manual_seed(9)
    m = torchvision.models.mobilenet_v2(weights=None, width_mult=0.25, num_classes=100)
    _calibrate_bn(m, (4, 3, 96, 96), seed=900)
    # logits are small (|y| < 0.1: random-init classifier), hence atol 1e-5
    return single(m, [(randn(1, 3, 96, 96, seed=910),)], atol=1e-5, rtol=1e-3,
                  description="torchvision mobilenet_v2(width_mult=0.25, num_classes=100) random init, "
                              "BN stats calibrated on random data, input [1,3,96,96]")


def fx_inverted_residual() -> Fixture:
    """Inverted-residual blocks whose wide intermediates are large enough for Ptero's
    fused pointwise -> depthwise path, plus one small enough for its fallback."""

    class Block(nn.Module):
        def __init__(self, cin, cmid, cout, k, stride, act):
            super().__init__()
            self.expand = nn.Conv2d(cin, cmid, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cmid)
            self.dw = nn.Conv2d(cmid, cmid, k, stride, padding=k // 2, groups=cmid, bias=False)
            self.bn2 = nn.BatchNorm2d(cmid)
            self.project = nn.Conv2d(cmid, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.act = act
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.act(self.bn1(self.expand(x)))
            y = self.act(self.bn2(self.dw(y)))
            y = self.bn3(self.project(y))
            return x + y if self.residual else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1 = Block(8, 32, 8, 3, 1, nn.ReLU6())
            self.b2 = Block(8, 40, 12, 5, 2, nn.SiLU())
            self.b3 = Block(12, 48, 12, 3, 1, nn.ReLU())

        def forward(self, x):
            return self.b3(self.b2(self.b1(x)))

    torch.manual_seed(12)
    m = Net()
    _calibrate_bn(m, (2, 8, 112, 112), seed=1200)
    return single(m, [(randn(1, 8, 112, 112, seed=1210),)], atol=1e-4, rtol=1e-3,
                  description="three inverted-residual blocks (ReLU6 residual; SiLU 5x5 stride 2; ReLU), "
                              "intermediates up to [1,40,112,112], input [1,8,112,112]")


def fx_mobilenet_v2_full() -> Fixture:
    import torchvision

    torch.manual_seed(9)
    m = torchvision.models.mobilenet_v2(weights=None)
    _calibrate_bn(m, (2, 3, 224, 224), seed=950)
    return single(m, [(randn(1, 3, 224, 224, seed=960),)], atol=1e-5, rtol=1e-3,
                  description="torchvision mobilenet_v2() full size random init, input [1,3,224,224] (not committed)")


def fx_tiny_llama() -> Fixture:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        use_cache=False,
        initializer_range=0.1,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(10)
    model = LlamaForCausalLM(cfg).eval()

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    w = Logits(model).eval()
    runs = [(randint(0, 256, (1, 8), seed=1000 + i),) for i in range(2)]
    return single(w, runs, strict=False, atol=2e-4, rtol=1e-4,
                  description="HF LlamaForCausalLM (vocab 256, hidden 64, 2 layers, 4 heads, 2 kv heads, "
                              "ff 128) random init, no KV cache; forward(input_ids i64 [1,8]) -> logits [1,8,256]")


# ---------------- op grab-bag fixtures ----------------


def fx_ops_activation() -> Fixture:
    class M(nn.Module):
        def forward(self, x):
            return (
                torch.softmax(x, dim=-1),
                torch.log_softmax(x, dim=0),
                F.hardswish(x),
                F.hardsigmoid(x),
                F.hardtanh(x, -0.5, 0.75),
                F.silu(x),
                torch.sigmoid(x),
                torch.tanh(x),
                F.gelu(x, approximate="tanh"),
                F.gelu(x),
                F.leaky_relu(x, 0.1),
                F.elu(x),
                F.relu6(x * 4),
                F.softplus(x),
            )

    return single(M(), [(randn(3, 7, seed=1100, scale=2.0),)],
                  description="softmax, log_softmax, hardswish, hardsigmoid, hardtanh, silu, sigmoid, tanh, "
                              "gelu(tanh), gelu, leaky_relu, elu, relu6, softplus")


def fx_ops_elementwise() -> Fixture:
    class M(nn.Module):
        def forward(self, x, y, z):
            gt = x > y
            return (
                torch.where(gt, x, y * 2),
                gt,
                x <= 0.25,
                x == y,
                x != z,
                torch.exp(x),
                torch.log(x.abs() + 1),
                torch.sqrt(x.abs()),
                torch.rsqrt(x.abs() + 0.1),
                -x.abs(),
                x ** 2,
                torch.pow(x.abs() + 0.5, y),
                torch.clamp(x, -0.3, 0.4),
                x / (y.abs() + 0.5),
                x - z,  # broadcast [3,7] - [7]
                x * z + 1.0,
                torch.maximum(x, y),
                torch.minimum(x, z),
                torch.erf(x),
                torch.floor(x * 3),
                torch.ceil(x * 3),
                torch.round(x * 3),
                torch.sign(x),
                torch.reciprocal(y.abs() + 1),
                torch.sin(x),
                torch.cos(x),
                torch.logical_not(gt),
                torch.logical_and(gt, x > 0),
                x.masked_fill(gt, -1.5),
                torch.remainder(x * 5, 1.5),
                torch.atan2(x, y),
                torch.expm1(x * 0.1),
                torch.log1p(x.abs()),
                torch.trunc(x * 3),
                torch.isnan(torch.log(x)),
                torch.fmod(x * 5, 1.5),
            )

    return single(
        M(),
        [(randn(3, 7, seed=1200), randn(3, 7, seed=1201), randn(7, seed=1202))],
        description="where, comparisons -> bool, math unary/binary ops, broadcasting, logical ops, masked_fill",
    )


def fx_ops_norm() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(6)
            self.ln2 = nn.LayerNorm([5, 6], elementwise_affine=False)
            self.gn = nn.GroupNorm(4, 8)
            self.inorm = nn.InstanceNorm2d(8, affine=True)
            self.bn1d = nn.BatchNorm1d(8)

        def forward(self, x, img):
            return (
                self.ln(x),
                self.ln2(x),
                self.gn(img),
                self.inorm(img),
                self.bn1d(img.flatten(2)),
                F.normalize(x, dim=-1),
                F.rms_norm(x, (6,), eps=1e-6),
            )

    torch.manual_seed(13)
    m = M()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(randn(*p.shape, seed=1300 + p.numel(), scale=0.5) + 1.0)
        m.bn1d.running_mean.copy_(randn(8, seed=1310, scale=0.5))
        m.bn1d.running_var.copy_(torch.rand(8, generator=gen(1311)) + 0.5)
    return single(m, [(randn(4, 5, 6, seed=1301, scale=2.0) + 0.5, randn(2, 8, 4, 4, seed=1302))],
                  description="layer_norm (1 and 2 dims), group_norm, instance_norm, batch_norm1d, normalize, rms_norm")


def fx_ops_reduce() -> Fixture:
    class M(nn.Module):
        def forward(self, x):
            mx = x.max(dim=1)
            return (
                x.mean(dim=-1),
                x.sum(dim=(0, 2), keepdim=True),
                x.var(dim=1),
                x.var(dim=2, correction=0, keepdim=True),
                x.std(dim=0),
                x.amax(dim=1),
                x.amin(dim=(1, 2)),
                x.argmax(dim=-1),
                x.argmin(dim=1),
                mx.values,
                mx.indices,
                x.sum(),
                x.mean(),
                torch.cumsum(x, dim=1),
                torch.logsumexp(x, dim=-1),
                x.prod(dim=2),
                (x > 0).any(dim=1),
                (x > -2).all(dim=2),
                x.norm(dim=-1),
                x.argmax(),
            )

    return single(M(), [(randn(4, 5, 6, seed=1400),)],
                  description="mean/sum/var/std/amax/amin/argmax/argmin/max.dim/cumsum/logsumexp/prod/any/all/norm")


def fx_ops_shape() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, x, y, idx, tokens):
            a, b = torch.split(x, [1, 3], dim=2)
            c0, c1, c2 = torch.chunk(y, 3, dim=1)
            ar = torch.arange(6, dtype=torch.float32)
            full = torch.full((2, 3), 1.5)
            z = torch.zeros(2, 3, 4) + x
            o = torch.ones(4) * 2
            xi = x.clone()
            xi[:, 0, :] = 7.0
            return (
                torch.cat([x, y], dim=1),
                torch.stack([x, y], dim=0),
                a + 1, b * 2,
                c0 - c2, c1,
                x[:, 1:3, ::2] + 0,
                x.select(1, 0) * 3,
                x[:, -1] - 1,
                torch.gather(x, 2, idx),
                x[tokens[:2]],  # index.Tensor
                x[:, :, tokens[:3]],
                torch.index_select(y, 2, tokens[1:3]),
                self.emb(tokens),
                ar * 2 + full.sum(),
                z,
                o,
                x.permute(2, 0, 1).contiguous() + 0,
                x.transpose(0, 1) * 1.5,
                x[:, :1, :].expand(2, 3, 4) + 0,
                x.reshape(4, 6) - 1,
                x.view(2, 12).unsqueeze(1) + 0,
                x[:, :1, :].squeeze(1) * 2,
                torch.flip(x, dims=[2]),
                x.repeat(1, 2, 1),
                F.pad(x, (1, 2, 0, 1), value=-1.0),
                torch.triu(x[0]),
                torch.roll(x, 1, dims=2),
                xi,
                x.new_zeros(3) + x.sum(),
                torch.narrow(y, 2, 1, 2) + 0,
            )

    torch.manual_seed(15)
    m = M()
    x = randn(2, 3, 4, seed=1500)
    y = randn(2, 3, 4, seed=1501)
    idx = randint(0, 4, (2, 3, 2), seed=1502)
    tokens = randint(0, 2, (5,), seed=1503)  # valid for dim 0 (2), dim 2 (4) and embedding (10)
    return single(m, [(x, y, idx, tokens)],
                  description="cat/stack/split/chunk/slice/select/gather/index.Tensor/index_select/embedding/"
                              "arange/full/zeros/ones/permute/transpose/expand/reshape/view/squeeze/flip/repeat/"
                              "pad/triu/roll/index_put/narrow")


def fx_ops_matmul() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 5, bias=False)
            self.w = nn.Parameter(randn(6, 3, seed=1610))
            self.b = nn.Parameter(randn(3, seed=1611))

        def forward(self, a, b, v):
            return (
                torch.bmm(a, b),
                torch.matmul(a, b[0]),  # broadcast batch
                torch.addmm(self.b, a[0], self.w),
                torch.baddbmm(torch.ones(2, 4, 3), a, self.w.expand(2, 6, 3), beta=0.5, alpha=2.0),
                torch.einsum("bij,bjk->bik", a, b),
                self.lin(a),
                torch.mm(a[1], self.w),
                torch.matmul(a, v),  # matrix-vector
                torch.matmul(v, v),  # dot
            )

    torch.manual_seed(16)
    return single(M(), [(randn(2, 4, 6, seed=1600), randn(2, 6, 3, seed=1601), randn(6, seed=1602))],
                  description="bmm, matmul (broadcast, mv, dot), addmm, baddbmm, einsum, linear without bias, mm")


def fx_ops_conv() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1d = nn.Conv1d(4, 6, 3, padding=1, stride=2)
            self.ct2d = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.grp = nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2)
            self.s2 = nn.Conv2d(4, 5, (3, 2), stride=(2, 1), bias=False)
            self.ct1d = nn.ConvTranspose1d(4, 2, 4, stride=2)

        def forward(self, x, seq):
            return (
                self.c1d(seq),
                self.ct2d(x),
                self.dw(x),
                self.grp(x),
                self.s2(x),
                self.ct1d(seq),
                F.avg_pool2d(x, 3, stride=2, padding=1),
                F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
                F.max_pool2d(x, 3, stride=2, padding=1),
                F.adaptive_avg_pool2d(x, (3, 3)),
                F.interpolate(x, scale_factor=2, mode="nearest"),
                F.interpolate(x, size=(7, 13), mode="bilinear", align_corners=False),
                F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
                F.max_pool1d(seq, 2),
                F.pixel_shuffle(x, 2),
            )

    torch.manual_seed(17)
    return single(M(), [(randn(1, 4, 10, 10, seed=1700), randn(1, 4, 12, seed=1701))],
                  description="conv1d, conv_transpose2d, depthwise conv2d, grouped+dilated conv2d, strided conv no bias, "
                              "conv_transpose1d, avg/max pool, adaptive avg pool, upsample nearest/bilinear, pixel_shuffle")


def fx_ops_int() -> Fixture:
    class M(nn.Module):
        def forward(self, a, b, c, f):
            return (
                a + b,
                a * b,
                a - b * 3,
                torch.floor_divide(a, b),
                torch.remainder(a.abs(), b.abs()),  # negative operands: see ops_int_remainder
                torch.div(a, b, rounding_mode="trunc"),
                a & b,
                a | b,
                a ^ b,
                a.sum(dim=1),
                a.max(),
                a.argmax(dim=1),
                a > b,
                c == 2,
                c + c,
                c * 2 - 1,
                c.to(torch.float32) / 2,
                a.abs(),
                -a,
                torch.clamp(a, -3, 3),
                torch.where(a > 0, a, c.to(torch.int64)),
                a.to(torch.int32),
                torch.cumsum(a, dim=1),
                (c > 0) & (a < 2),
                (c > 0) | (a < -2),
                ~(a > 0),
                a + c,  # int64 + int32 -> int64
                a * f,  # int64 * float -> float
                (f * 10).to(torch.int64),
                torch.ones_like(c) * 5,
                torch.arange(10, dtype=torch.int64) * 3,
                (a > 0).to(torch.int32).sum(),
                torch.true_divide(a, 4),
            )

    a = randint(-10, 10, (2, 5), seed=1800)
    b = randint(1, 6, (2, 5), seed=1801) * torch.tensor([1, -1, 1, -1, 1])
    c = randint(-5, 5, (2, 5), seed=1802, dtype=torch.int32)
    f = randn(2, 5, seed=1803)
    return single(M(), [(a, b, c, f)], atol=0.0, rtol=1e-6,
                  description="int64/int32/bool arithmetic, bitwise, floor_divide/remainder with negatives, "
                              "casts, type promotion, int reductions")


def fx_ops_f64() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 8)
            self.ln = nn.LayerNorm(8)

        def forward(self, x):
            h = torch.tanh(self.l1(x))
            h = self.ln(h)
            return torch.softmax(h, dim=-1), torch.exp(x).sum(dim=0), torch.sqrt(x.abs()) * 2, x.to(torch.float32)

    torch.manual_seed(19)
    m = M().double()
    # The official portable runtime computes some float64 ops (exp, softmax)
    # with float32 intermediates: it differs from eager by ~1.5e-7, hence the
    # 1e-6 tolerance (covers both a float32-ish and a true float64 result).
    return single(m, [(randn(3, 4, seed=1900, dtype=torch.float64),)], atol=1e-6, rtol=1e-6,
                  description="float64 model: linear, tanh, layer_norm, softmax, exp, sum, sqrt, cast to f32")


def fx_ops_int_remainder() -> Fixture:
    # Integer remainder with negative operands. PyTorch eager gives floor-mod
    # (sign of divisor); the official portable kernel (math_util.h
    # remainder_override for integral types) returns C `a % b` (sign of
    # dividend). Expected values are the official runtime's; cases.json notes it.
    class M(nn.Module):
        def forward(self, a, b, f):
            return torch.remainder(a, b), torch.remainder(a, 3), torch.remainder(f, -1.5), torch.fmod(a, b)

    a = torch.tensor([[-7, -6, -3, 0, 3, 7], [8, -8, 5, -5, 1, -1]], dtype=torch.int64)
    b = torch.tensor([[3, -4, 2, 5, -2, -3], [-3, 3, -5, 5, -1, 1]], dtype=torch.int64)
    f = randn(2, 6, seed=1810, scale=4.0)
    return single(M(), [(a, b, f)], atol=0.0, rtol=1e-6,
                  description="remainder/fmod with negative operands (int64 and float32). NOTE: the official "
                              "runtime's integer remainder follows C '%' (sign of dividend) while PyTorch eager "
                              "follows floor-mod (sign of divisor); expected = official runtime")


def fx_ops_f16() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(8, 16)
            self.l2 = nn.Linear(16, 4)

        def forward(self, x):
            h = F.relu(self.l1(x))
            y = self.l2(h) + x[:, :4]
            return y, torch.softmax(y.float(), dim=-1), (x * 2).to(torch.float32)

    torch.manual_seed(20)
    m = M().half()
    return single(m, [(randn(3, 8, seed=2000, dtype=torch.float16),)], atol=1e-2, rtol=1e-2,
                  description="float16 model: linear, relu, add, slice, cast to f32, softmax in f32")


FIXTURES_REGISTRY: Dict[str, Callable[[], Fixture]] = {
    "mlp": fx_mlp,
    "cnn": fx_cnn,
    "resnet_block": fx_resnet_block,
    "transformer_encoder": fx_transformer_encoder,
    "lstm": fx_lstm,
    "dynamic_batch": fx_dynamic_batch,
    "dynamic_seq": fx_dynamic_seq,
    "mutable_buffer": fx_mutable_buffer,
    "two_methods": fx_two_methods,
    "mobilenet_v2": fx_mobilenet_v2,
    "inverted_residual": fx_inverted_residual,
    "tiny_llama": fx_tiny_llama,
    "ops_activation": fx_ops_activation,
    "ops_elementwise": fx_ops_elementwise,
    "ops_norm": fx_ops_norm,
    "ops_reduce": fx_ops_reduce,
    "ops_shape": fx_ops_shape,
    "ops_matmul": fx_ops_matmul,
    "ops_conv": fx_ops_conv,
    "ops_int": fx_ops_int,
    "ops_int_remainder": fx_ops_int_remainder,
    "ops_f64": fx_ops_f64,
    "ops_f16": fx_ops_f16,
}


def xnnpack(make: Callable[[], Fixture], what: str) -> Callable[[], Fixture]:
    """The same fixture lowered with the official XnnpackPartitioner (fp32)."""

    def build() -> Fixture:
        fx = make()
        fx.partitioner = "xnnpack"
        fx.description = f"XNNPACK-lowered (XnnpackPartitioner, fp32) {what}: {fx.description}"
        return fx

    return build


def fx_xnn_ops() -> Fixture:
    """Operators the XNNPACK partitioner delegates beyond the model fixtures' (exported
    lowered only)."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.prelu = nn.PReLU(4)
            with torch.no_grad():
                self.prelu.weight.copy_(torch.tensor([0.1, -0.2, 0.3, 0.5]))

        def forward(self, x, y):
            a = torch.floor(x) + torch.ceil(y)
            b = torch.sqrt(torch.abs(x)) - torch.rsqrt(torch.abs(y) + 0.5)
            c = torch.square(x) * torch.neg(y)
            d = torch.maximum(x, y) / (torch.minimum(x, y).abs() + 1.0)
            e = self.prelu(x) + F.elu(y) + F.leaky_relu(x, 0.2) + F.hardswish(y)
            f = F.pad(x, (1, 2, 0, 1), value=0.5)
            g = torch.exp(x * 0.3) + torch.log(torch.abs(y) + 1.0) + torch.sin(x) + torch.cos(y)
            h = torch.cat([x[:, 1:3], y[:, :2]], dim=1)
            i = F.max_pool2d(x, 3, stride=2, padding=1) + F.avg_pool2d(y, 2)[:, :, :3, :3]
            return a, b, c, d, e, f, g, h, i

    return single(M(), [(randn(1, 4, 6, 6, seed=1500, scale=2.0), randn(1, 4, 6, 6, seed=1501, scale=2.0))],
                  partitioner="xnnpack",
                  description="XNNPACK-lowered (XnnpackPartitioner, fp32) floor, ceil, sqrt, rsqrt, square, "
                              "neg, maximum, minimum, div, prelu, elu, leaky_relu, hardswish, constant pad, "
                              "exp, log, sin, cos, cat of slices, max/avg pooling, inputs [1,4,6,6] x 2")


FIXTURES_REGISTRY["xnn_ops"] = fx_xnn_ops

def fx_q_cnn() -> nn.Module:
    class QCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(8, 8, 1)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(self.c1(x))
            y = F.hardtanh(self.dw(x), 0.0, 6.0)
            x = x + self.pw(y)
            x = F.max_pool2d(x, 2)  # 16 -> 8
            x = F.relu(self.c2(x))  # 8 -> 4
            x = self.c3(x) * x
            x = torch.mean(x, dim=(2, 3), keepdim=True)
            x = torch.flatten(x, 1)
            return self.fc(x)

    torch.manual_seed(31)
    return QCNN()


def fx_xnn_qs8_cnn(per_tensor: bool = False) -> Fixture:
    inputs = [(randn(1, 3, 16, 16, seed=1600 + i),) for i in range(3)]
    fx = single(fx_q_cnn(), inputs, partitioner="xnnpack", quant="qs8_tensor" if per_tensor else "qs8",
                atol=1e-6, rtol=0.0,  # integer arithmetic: exact
                description="XNNPACK-lowered static int8 CNN (PT2E XNNPACKQuantizer, per-"
                            + ("tensor" if per_tensor else "channel")
                            + " weights): conv+relu, depthwise+hardtanh, 1x1, residual add, max pool, "
                            "strided conv, mul, mean, linear; input [1,3,16,16]")
    return fx


def fx_xnn_dq8_mlp() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(32, 64)
            self.l2 = nn.Linear(64, 48, bias=False)
            self.l3 = nn.Linear(48, 16)

        def forward(self, x):
            x = F.relu(self.l1(x))
            x = self.l2(x)
            return self.l3(torch.tanh(x))

    torch.manual_seed(32)
    return single(M(), [(randn(2, 5, 32, seed=1610),), (randn(2, 5, 32, seed=1611, scale=4.0),)],
                  partitioner="xnnpack", quant="dq8", atol=1e-5, rtol=1e-5,
                  description="XNNPACK-lowered dynamic int8 MLP (qd8 activations x qc8w weights, "
                              "PT2E dynamic XNNPACKQuantizer), input [2,5,32]")


def fx_xnn_8da4w(quant: str) -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(64, 96)
            self.l2 = nn.Linear(96, 128, bias=False)
            self.l3 = nn.Linear(128, 40)

        def forward(self, x):
            return self.l3(F.silu(self.l2(F.relu(self.l1(x)))))

    torch.manual_seed(33)
    what = "group-wise int4 weights, group 32 (qb4w)" if quant == "8da4w_g32" else "per-channel int4 weights (qc4w)"
    return single(M(), [(randn(3, 64, seed=1620),), (randn(3, 64, seed=1621, scale=3.0),)],
                  example=(randn(3, 64, seed=1620),),
                  dynamic_shapes=None,
                  partitioner="xnnpack", quant=quant, atol=1e-5, rtol=1e-5,
                  description=f"XNNPACK-lowered 8da4w linears (torchao Int8DynamicActivationIntxWeightConfig, "
                              f"{what}): Linear-ReLU-Linear-SiLU-Linear, inputs [3,64]")


def fx_xnn_fp16_cnn() -> Fixture:
    fx = FIXTURES_REGISTRY["cnn"]()
    fx.partitioner = "xnnpack"
    fx.quant = "fp16"
    fx.atol, fx.rtol = 1e-3, 4e-3  # one fp16 step of the outputs
    fx.description = "XNNPACK-lowered fp16 CNN (module and input in half precision): " + fx.description
    return fx


def fx_xnn_deconv_resize() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
            self.up2 = nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2, bias=False)
            self.up3 = nn.ConvTranspose2d(4, 3, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1))

        def forward(self, x):
            y = F.relu(self.up(x))  # 8 -> 16
            z = self.up2(y)  # 16 -> 32
            a = F.interpolate(x, size=(13, 11), mode="bilinear", align_corners=False)
            b = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            return z, a, b, self.up3(x)

    torch.manual_seed(34)
    return single(M(), [(randn(1, 4, 8, 8, seed=1630),)], partitioner="xnnpack",
                  description="XNNPACK-lowered transposed convolutions (stride, padding, output padding, "
                              "groups, dilation) and bilinear resizing (half-pixel and align_corners), "
                              "input [1,4,8,8]")


def fx_xnn_ptd() -> Fixture:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.l = nn.Linear(8, 4)
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, ids, y):
            return self.l(self.emb(ids)), torch.sigmoid(self.c(y))

    torch.manual_seed(35)
    fx = single(M(), [(randint(0, 10, (2, 5), seed=1640), randn(1, 3, 6, 6, seed=1641))],
                partitioner="xnnpack",
                description="weights in an external data file (model.ptd): XNNPACK-lowered linear and "
                            "conv (delegate constants tagged external) and a portable embedding table")
    fx.external_data = True
    return fx


def fx_xnn_resnet18_narrow() -> Fixture:
    """torchvision's ResNet-18 topology (BasicBlock x [2, 2, 2, 2]) at 1/8 of the width."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class Narrow(ResNet):
        def __init__(self):
            super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=10)
            # Rebuild the layers 8x narrower (the stem and heads follow).
            self.inplanes = 8
            self.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.layer1 = self._make_layer(BasicBlock, 8, 2)
            self.layer2 = self._make_layer(BasicBlock, 16, 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, 32, 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, 64, 2, stride=2)
            self.fc = nn.Linear(64, 10)

    torch.manual_seed(36)
    m = Narrow().eval()
    with torch.no_grad():
        for i, bn in enumerate(x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(randn(c, seed=1700 + i, scale=0.2))
            bn.running_var.copy_(torch.rand(c, generator=gen(1750 + i)) + 0.5)
            bn.weight.copy_(1.0 + randn(c, seed=1800 + i, scale=0.2))
            bn.bias.copy_(randn(c, seed=1850 + i, scale=0.2))
    return single(m, [(randn(1, 3, 64, 64, seed=1660),)], partitioner="xnnpack",
                  description="XNNPACK-lowered ResNet-18 topology (torchvision BasicBlock x [2,2,2,2]) at 1/8 "
                              "width, seeded batch norm, input [1,3,64,64]")


def fx_xnn_vit_tiny() -> Fixture:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(37)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                          mlp_dim=128, num_classes=10)
    return single(m, [(randn(1, 3, 32, 32, seed=1670),)], partitioner="xnnpack",
                  description="XNNPACK-lowered tiny torchvision VisionTransformer (2 encoder blocks, 4 heads, "
                              "width 64, patch 8), input [1,3,32,32]")


def fx_xnn_hf_llama() -> Fixture:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attn_implementation="eager", use_cache=False, tie_word_embeddings=False)
    torch.manual_seed(38)
    model = LlamaForCausalLM(cfg).eval()

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, use_cache=False).logits

    return single(Logits(model), [(randint(0, 128, (1, 12), seed=1680),)], partitioner="xnnpack",
                  description="XNNPACK-lowered tiny Hugging Face LlamaForCausalLM (2 layers, GQA 4/2 heads, "
                              "width 64, vocab 128, eager attention, no cache), logits for 12 ids")


def fx_xnn_bert_tiny() -> Fixture:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32, attn_implementation="eager")
    torch.manual_seed(39)
    model = BertModel(cfg).eval()

    class Hidden(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            o = self.m(input_ids=ids, attention_mask=mask)
            return o.last_hidden_state, o.pooler_output

    mask = torch.ones(1, 10, dtype=torch.int64)
    mask[0, 8:] = 0
    return single(Hidden(model), [(randint(0, 100, (1, 10), seed=1690), mask)], partitioner="xnnpack",
                  description="XNNPACK-lowered tiny Hugging Face BertModel (2 layers, 4 heads, width 64), "
                              "ids [1,10] with a padding mask")


def fx_xnn_dq8_cnn() -> Fixture:
    fx = single(fx_q_cnn(), [(randn(1, 3, 16, 16, seed=1605),)], partitioner="xnnpack", quant="dq8",
                atol=1e-5, rtol=1e-5,
                description="XNNPACK-lowered CNN with dynamically quantized int8 activations (PT2E dynamic "
                            "XNNPACKQuantizer, per-channel int8 weights), input [1,3,16,16]")
    return fx


FIXTURES_REGISTRY["xnn_dq8_cnn"] = fx_xnn_dq8_cnn
FIXTURES_REGISTRY["xnn_resnet18_narrow"] = fx_xnn_resnet18_narrow
FIXTURES_REGISTRY["xnn_vit_tiny"] = fx_xnn_vit_tiny
FIXTURES_REGISTRY["xnn_hf_llama"] = fx_xnn_hf_llama
FIXTURES_REGISTRY["xnn_bert_tiny"] = fx_xnn_bert_tiny
FIXTURES_REGISTRY["xnn_deconv_resize"] = fx_xnn_deconv_resize
FIXTURES_REGISTRY["xnn_ptd"] = fx_xnn_ptd
FIXTURES_REGISTRY["xnn_qs8_cnn"] = fx_xnn_qs8_cnn
FIXTURES_REGISTRY["xnn_qs8_tensor_cnn"] = lambda: fx_xnn_qs8_cnn(per_tensor=True)
FIXTURES_REGISTRY["xnn_dq8_mlp"] = fx_xnn_dq8_mlp
FIXTURES_REGISTRY["xnn_8da4w_g32"] = lambda: fx_xnn_8da4w("8da4w_g32")
FIXTURES_REGISTRY["xnn_8da4w_qc4w"] = lambda: fx_xnn_8da4w("8da4w_qc4w")
FIXTURES_REGISTRY["xnn_fp16_cnn"] = fx_xnn_fp16_cnn

# The fp32 programs of issue 8, lowered to the XNNPACK delegate.
for _name in ["mlp", "cnn", "resnet_block", "transformer_encoder", "lstm", "dynamic_batch",
              "mobilenet_v2", "inverted_residual"]:
    FIXTURES_REGISTRY[f"xnn_{_name}"] = xnnpack(FIXTURES_REGISTRY[_name], _name)

# Not committed; exported only when named explicitly.
EXTRA_REGISTRY: Dict[str, Callable[[], Fixture]] = {
    "mobilenet_v2_full": fx_mobilenet_v2_full,
}


# --------------------------------------------------------------------------
# Export / run machinery
# --------------------------------------------------------------------------


def quantize_methods(fx: Fixture) -> None:
    """Applies `fx.quant` to each method's module in place; the eager callables become the
    quantized modules, so the eager comparison measures the delegate, not the quantization."""
    if fx.quant is None:
        return
    for name, spec in fx.methods.items():
        if fx.quant in ("qs8", "qs8_tensor", "dq8"):
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            cfg = get_symmetric_quantization_config(is_per_channel=fx.quant != "qs8_tensor",
                                                    is_dynamic=fx.quant == "dq8")
            gm = torch.export.export(spec.module, spec.example_args,
                                     dynamic_shapes=spec.dynamic_shapes).module()
            gm = prepare_pt2e(gm, XNNPACKQuantizer().set_global(cfg))
            for method, inputs in fx.runs:  # calibration on the fixture's own inputs
                if method == name:
                    gm(*inputs)
            gm(*spec.example_args)
            gm = convert_pt2e(gm)
            spec.module = gm
            fx.eager[name] = gm
        elif fx.quant.startswith("8da4w"):
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
            from torchao.quantization.granularity import PerAxis, PerGroup

            gran = PerAxis(0) if fx.quant == "8da4w_qc4w" else PerGroup(int(fx.quant.split("_g")[1]))
            quantize_(spec.module, Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4, weight_granularity=gran))
            fx.eager[name] = spec.module
        elif fx.quant == "fp16":
            spec.module = spec.module.half()
            spec.example_args = tuple(a.half() if isinstance(a, torch.Tensor) else a for a in spec.example_args)
            fx.eager[name] = spec.module
            fx.runs = [(m, tuple(a.half() if isinstance(a, torch.Tensor) else a for a in ins))
                       for m, ins in fx.runs]
        else:
            raise ValueError(f"unknown quantization {fx.quant}")


def export_pte(fx: Fixture) -> bytes:
    from executorch.exir import ExecutorchBackendConfig, to_edge, to_edge_transform_and_lower

    quantize_methods(fx)
    eps = {}
    for name, spec in fx.methods.items():
        eps[name] = torch.export.export(
            spec.module, spec.example_args, dynamic_shapes=spec.dynamic_shapes, strict=fx.strict
        )
        if fx.external_data:
            from executorch.exir.passes.external_constants_pass import (
                delegate_external_constants_pass_unlifted)

            gm = eps[name].module()
            delegate_external_constants_pass_unlifted(module=gm, gen_tag_fn=lambda _n: "model")
            eps[name] = torch.export.export(gm, spec.example_args, dynamic_shapes=spec.dynamic_shapes,
                                            strict=fx.strict)
    if fx.external_data:
        # One file for both kinds (the official loader takes a single data file).
        fx.backend_config_kwargs["external_constants"] = lambda _n: "model"
    kwargs = {}
    if fx.edge_compile_config is not None:
        kwargs["compile_config"] = fx.edge_compile_config
    if fx.constant_methods:
        kwargs["constant_methods"] = fx.constant_methods
    if fx.partitioner == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        edge = to_edge_transform_and_lower(eps, partitioner=[XnnpackPartitioner()], **kwargs)
    elif fx.use_to_edge:
        edge = to_edge(eps, **kwargs)
    else:
        edge = to_edge_transform_and_lower(eps, **kwargs)  # no partitioner: portable kernels only
    et = edge.to_executorch(ExecutorchBackendConfig(**fx.backend_config_kwargs))
    if fx.external_data:
        with tempfile.TemporaryDirectory() as d:
            et.write_tensor_data_to_file(d)
            fx.data_files = {f: (Path(d) / f).read_bytes() for f in sorted(os.listdir(d))}
    return et.buffer


def to_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().clone().contiguous().numpy()
    if isinstance(v, bool):
        return np.array(v, dtype=np.bool_)
    if isinstance(v, int):
        return np.array(v, dtype=np.int64)
    if isinstance(v, float):
        return np.array(v, dtype=np.float64)
    if isinstance(v, torch.SymInt):
        return np.array(int(v), dtype=np.int64)
    raise TypeError(f"unsupported output type {type(v)}")


def flatten_outputs(out) -> List[Any]:
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(out)
    return leaves


def run_runtime(pte: bytes, runs, data_files: Optional[Dict[str, bytes]] = None) -> List[List[np.ndarray]]:
    from executorch.runtime import Runtime

    if data_files:
        # The official loader takes one data file, by path.
        assert len(data_files) == 1, f"one data file expected, got {list(data_files)}"
        tmp = tempfile.mkdtemp()
        for f, b in data_files.items():
            (Path(tmp) / f).write_bytes(b)
        program = Runtime.get().load_program(pte, data_path=str(Path(tmp) / next(iter(data_files))))
    else:
        program = Runtime.get().load_program(pte)
    results = []
    for method, inputs in runs:
        m = program.load_method(method)
        outs = m.execute(list(inputs))
        results.append([to_numpy(o) for o in outs])
    return results


def run_eager(fx: Fixture) -> List[List[np.ndarray]]:
    results = []
    for method, inputs in fx.runs:
        if method in fx.constant_eager:
            results.append([to_numpy(fx.constant_eager[method])])
            continue
        with torch.no_grad():
            out = fx.eager[method](*[i.clone() if isinstance(i, torch.Tensor) else i for i in inputs])
        results.append([to_numpy(o) for o in flatten_outputs(out)])
    return results


def max_abs_diff(a: List[List[np.ndarray]], b: List[List[np.ndarray]]) -> Tuple[float, List[str]]:
    worst = 0.0
    problems = []
    for r, (ra, rb) in enumerate(zip(a, b)):
        if len(ra) != len(rb):
            problems.append(f"run{r}: {len(ra)} vs {len(rb)} outputs")
        for j, (x, y) in enumerate(zip(ra, rb)):
            if x.shape != y.shape:
                problems.append(f"run{r} out{j}: shape {x.shape} vs {y.shape}")
                continue
            if x.dtype != y.dtype:
                problems.append(f"run{r} out{j}: dtype {x.dtype} vs {y.dtype}")
            if x.size:
                d = np.abs(x.astype(np.float64) - y.astype(np.float64))
                d = np.where(np.isnan(x.astype(np.float64)) & np.isnan(y.astype(np.float64)), 0.0, d)
                worst = max(worst, float(np.nanmax(d)) if not np.isnan(d).all() else math.inf)
    return worst, problems


def check_close(actual, expected, atol, rtol) -> List[str]:
    bad = []
    for r, (ra, re_) in enumerate(zip(actual, expected)):
        for j, (x, y) in enumerate(zip(ra, re_)):
            if x.shape != y.shape or x.dtype != y.dtype:
                bad.append(f"run{r} out{j} shape/dtype")
                continue
            if not np.allclose(x.astype(np.float64), y.astype(np.float64), atol=atol, rtol=rtol, equal_nan=True):
                bad.append(f"run{r} out{j}")
    return bad


def write_fixture(out_dir: Path, fx: Fixture, pte: bytes, expected, source: str, extra: Dict[str, Any]):
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / "model.pte").write_bytes(pte)
    runs_json = []
    for r, ((method, inputs), outs) in enumerate(zip(fx.runs, expected)):
        in_names, out_names = [], []
        for j, t in enumerate(inputs):
            n = f"run{r}_in{j}.npy"
            np.save(out_dir / n, to_numpy(t))
            in_names.append(n)
        for j, o in enumerate(outs):
            n = f"run{r}_out{j}.npy"
            np.save(out_dir / n, o)
            out_names.append(n)
        runs_json.append({"method": method, "inputs": in_names, "expected": out_names})
    cases = {
        "atol": fx.atol,
        "rtol": fx.rtol,
        "expected_source": source,
        "description": fx.description,
        "runs": runs_json,
    }
    cases.update(extra)
    (out_dir / "cases.json").write_text(json.dumps(cases, indent=2) + "\n")


def build(name: str, factory: Callable[[], Fixture], out_dir: Path) -> Dict[str, Any]:
    t0 = time.time()
    torch.manual_seed(0)
    fx = factory()
    pte = export_pte(fx)
    size = len(pte)
    eager = run_eager(fx)
    source = "runtime"
    extra: Dict[str, Any] = {}
    runtime_err = None
    try:
        expected = run_runtime(pte, fx.runs, fx.data_files)
    except Exception as e:  # official runtime could not run it
        runtime_err = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        expected = eager
        source = "eager"
        extra["runtime_error"] = runtime_err
    diff, problems = max_abs_diff(eager, expected)
    outside = check_close(expected, eager, fx.atol, fx.rtol) if source == "runtime" else []
    if outside:
        # official runtime and eager disagree beyond the fixture tolerance
        extra["eager_mismatch"] = outside
    if fx.data_files:
        extra["data_files"] = list(fx.data_files)
    write_fixture(out_dir, fx, pte, expected, source, extra)
    for f, b in fx.data_files.items():
        (out_dir / f).write_bytes(b)
    info = {
        "name": name,
        "pte_bytes": size,
        "source": source,
        "max_abs_diff_eager_vs_runtime": diff if source == "runtime" else None,
        "problems": problems,
        "eager_outside_tol": outside,
        "runtime_error": runtime_err,
        "seconds": round(time.time() - t0, 1),
    }
    return info


def write_ops_txt() -> None:
    from list_ops import read_pte_ops

    usage: Dict[str, set] = {}
    delegates: Dict[str, set] = {}
    for d in sorted(p for p in FIXTURES.iterdir() if (p / "model.pte").exists()):
        for method, info in read_pte_ops(d / "model.pte").items():
            for op in info["operators"]:
                usage.setdefault(op, set()).add(d.name)
            for dl in info["delegates"]:
                delegates.setdefault(dl, set()).add(d.name)
    lines = [
        "# Operators used by tests/fixtures/*/model.pte (generated by python/export_fixtures.py).",
        "# Format: <namespace::op.overload><TAB><comma-separated fixtures>",
    ]
    if delegates:
        lines.append("# delegates: " + "; ".join(f"{k}: {','.join(sorted(v))}" for k, v in sorted(delegates.items())))
    else:
        lines.append("# delegates: none")
    for op in sorted(usage):
        lines.append(f"{op}\t{','.join(sorted(usage[op]))}")
    (FIXTURES / "OPS.txt").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export Ptero test fixtures")
    ap.add_argument("names", nargs="*", help="fixtures to build (default: all committed fixtures)")
    ap.add_argument("--list", action="store_true", help="list fixture names and exit")
    args = ap.parse_args(argv)
    if args.list:
        for n in FIXTURES_REGISTRY:
            print(n)
        for n in EXTRA_REGISTRY:
            print(f"{n} (models/big, not committed)")
        return 0
    names = args.names or list(FIXTURES_REGISTRY)
    unknown = [n for n in names if n not in FIXTURES_REGISTRY and n not in EXTRA_REGISTRY]
    if unknown:
        print(f"unknown fixtures: {unknown}", file=sys.stderr)
        return 2

    results, failures = [], []
    for name in names:
        print(f"=== {name}", flush=True)
        try:
            if name in EXTRA_REGISTRY:
                out_dir = BIG / name.replace("_full", "")
                info = build(name, EXTRA_REGISTRY[name], out_dir)
                # models/big/<model>.pte; the case directory links to it
                big_pte = BIG / f"{out_dir.name}.pte"
                if big_pte.exists() or big_pte.is_symlink():
                    big_pte.unlink()
                (out_dir / "model.pte").rename(big_pte)
                (out_dir / "model.pte").symlink_to(Path("..") / big_pte.name)
            else:
                info = build(name, FIXTURES_REGISTRY[name], FIXTURES / name)
                if info["pte_bytes"] > MAX_FIXTURE_PTE:
                    info["problems"].append(f"model.pte is {info['pte_bytes']} bytes > 2 MB")
        except Exception as e:
            traceback.print_exc()
            failures.append((name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            continue
        results.append(info)
        diff = info["max_abs_diff_eager_vs_runtime"]
        print(
            f"    pte={info['pte_bytes']/1024:.1f} KiB expected_source={info['source']} "
            f"max|eager-runtime|={'n/a' if diff is None else f'{diff:.3g}'} ({info['seconds']}s)"
        )
        if info["runtime_error"]:
            print(f"    RUNTIME ERROR: {info['runtime_error']}")
        for p in info["problems"]:
            print(f"    PROBLEM: {p}")
        if info["eager_outside_tol"]:
            print(f"    note: eager differs from runtime beyond fixture tolerance at {info['eager_outside_tol']}")

    if FIXTURES.exists():
        write_ops_txt()

    print("\n=== summary")
    for info in results:
        diff = info["max_abs_diff_eager_vs_runtime"]
        print(
            f"{info['name']:22s} {info['pte_bytes']/1024:9.1f} KiB  {info['source']:7s} "
            f"max|eager-runtime|={'n/a' if diff is None else f'{diff:.3g}'}"
        )
    for name, err in failures:
        print(f"{name:22s} FAILED: {err}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
