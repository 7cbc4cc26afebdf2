#!/usr/bin/env python3
"""The official Inspector on Ptero's ETDumps, over models beyond the committed fixtures.

    .venv-ref/bin/python python/sweep_inspector.py [--out /tmp/sweep-inspector] [names...]

Each model is exported with an ETRecord (representative inputs included), portable and
lowered with XnnpackPartitioner; `ptero profile --etdump --debug-outputs` runs it, and
python/check_inspector.py reads the result (table and calculate_numeric_gap). Prints one
line per program and exits non-zero if any fails.

The official runtime's own ETDump of the same program is the oracle: where its
Inspector fails too (an Inspector limitation, e.g. a linear's AOT shape against
addmm's), the line says so and it does not count as Ptero's failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 64)
        self.n = nn.LayerNorm(64)
        self.b = nn.Linear(64, 10)

    def forward(self, x):
        return torch.softmax(self.b(nn.functional.gelu(self.n(self.a(x)))), -1)


class BnCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, groups=16, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        y = torch.nn.functional.hardtanh(self.c2(y)) + y
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)

    def forward(self, x):
        return self.l(x)


class Lstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.LSTM(8, 16, batch_first=True)

    def forward(self, x):
        return self.l(x)[0]


class TwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 8)

    def forward(self, ids, x):
        h = self.fc(self.e(ids)).sum(1) + x
        return h, torch.topk(h, 3, dim=-1).values


def pt2e(mod: nn.Module, inputs: tuple, dynamic: bool) -> nn.Module:
    """Quantized with the PT2E XNNPACKQuantizer (static per-channel int8, or dynamic)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    import executorch.kernels.quantized  # noqa: F401  (out variants for the portable export)

    cfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    gm = prepare_pt2e(torch.export.export(mod, inputs).module(), XNNPACKQuantizer().set_global(cfg))
    gm(*inputs)
    return convert_pt2e(gm)


MODELS = {
    "mlp": (Mlp, lambda: (torch.randn(4, 32),)),
    "bn_cnn": (BnCnn, lambda: (torch.randn(1, 3, 16, 16),)),
    "encoder": (Encoder, lambda: (torch.randn(1, 6, 32),)),
    "lstm": (Lstm, lambda: (torch.randn(1, 5, 8),)),
    "two_out": (TwoOut, lambda: (torch.randint(0, 50, (2, 3)), torch.randn(2, 8))),
    "q8_cnn": (BnCnn, lambda: (torch.randn(1, 3, 16, 16),)),
    "dq8_mlp": (Mlp, lambda: (torch.randn(4, 32),)),
}
QUANT = {"q8_cnn": False, "dq8_mlp": True}  # name -> dynamic


def export_one(name: str, xnn: bool, out: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(5)
    cls, make = MODELS[name]
    mod, inputs = cls().eval(), make()
    if name in QUANT:
        mod = pt2e(mod, inputs, QUANT[name])
    d = out / f"{name}{'_xnnpack' if xnn else ''}"
    d.mkdir(parents=True, exist_ok=True)
    ep = torch.export.export(mod, inputs, strict=True)
    edge = to_edge_transform_and_lower(
        ep, partitioner=[XnnpackPartitioner()] if xnn else [], generate_etrecord=True
    )
    et = edge.to_executorch()
    (d / "model.pte").write_bytes(et.buffer)
    rec = et.get_etrecord()
    rec.update_representative_inputs(inputs)
    rec.save(str(d / "etrecord.bin"))
    for i, t in enumerate(inputs):
        np.save(d / f"in{i}.npy", t.numpy())
    return d


def official_etdump(d: Path) -> None:
    """Runs the program on the official runtime with ETDump and a debug buffer."""
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed kernels)
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    m = _load_for_executorch(str(d / "model.pte"), enable_etdump=True, debug_buffer_size=1 << 24)
    ins = [torch.from_numpy(np.load(p)) for p in sorted(d.glob("in*.npy"))]
    m.forward(ins)
    m.write_etdump_result_to_file(str(d / "official.etdp"), str(d / "official.debug.bin"))


def inspect(d: Path, which: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HERE / "check_inspector.py"), "--quiet",
         "--etdump", str(d / f"{which}.etdp"), "--etrecord", str(d / "etrecord.bin"),
         "--debug-buffer", str(d / f"{which}.debug.bin")],
        capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(MODELS))
    ap.add_argument("--out", default="/tmp/sweep-inspector")
    ap.add_argument("--ptero", default=str(ROOT / "target" / "release" / "ptero"))
    a = ap.parse_args()
    failed = 0
    for name in a.names:
        for xnn in (False, True):
            label = f"{name}{' (xnnpack)' if xnn else ''}"
            try:
                d = export_one(name, xnn, Path(a.out))
            except Exception as e:  # an export the toolchain refuses is not Ptero's failure
                print(f"{label}: export failed, skipped: {str(e).splitlines()[0][:120]}")
                continue
            ins = sorted(d.glob("in*.npy"))
            cmd = [a.ptero, "profile", str(d / "model.pte"), "--iterations", "2",
                   "--etdump", str(d / "run.etdp"), "--debug-outputs"]
            for i in ins:
                cmd += ["--input", str(i)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{label}: ptero profile FAILED: {r.stderr.strip()}")
                failed += 1
                continue
            r = inspect(d, "run")
            last = r.stdout.strip().splitlines()[-1:] or [""]
            if r.returncode == 0:
                print(f"{label}: ok {last[0]}")
                continue
            try:
                official_etdump(d)
                o = inspect(d, "official")
                oracle = "passes" if o.returncode == 0 else "fails too"
            except Exception as e:
                oracle = f"could not run ({str(e).splitlines()[0][:80]})"
            if oracle == "fails too":
                print(f"{label}: Inspector fails on the official ETDump too, not counted: "
                      f"{r.stderr.strip()[-300:]}")
            else:
                print(f"{label}: Inspector FAILED (official {oracle}): {r.stderr.strip()[-600:]}")
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
