#!/usr/bin/env python3
"""Single CNN blocks: Ptero's portable program vs the official runtime's XNNPACK program.

    .venv-ref/bin/python python/bench_blocks.py export
    .venv-ref/bin/python python/bench_blocks.py bench [names...] [--ptero target/release/ptero] \
        [--threads 2] [--rounds 3] [--iterations 50]

Where a whole model is slower, this says which kind of block: MobileNetV2-style
inverted-residual blocks (1 x 1 expansion, 3 x 3 depthwise, 1 x 1 projection, ReLU6,
residual when shapes allow) at each of MobileNetV2's resolutions, ResNet basic blocks
(two 3 x 3 convolutions with a residual) at each of ResNet-18's, and a stem convolution.
Convolutions carry a bias and no norm (as after folding norms at export). Seeded random
weights (torch.manual_seed(0)), eval mode.

`export` writes <name>.pte (portable), <name>_xnnpack.pte (XnnpackPartitioner, fp32) and
<name>_in0.npy into the git-ignored models/big/blocks/. `bench` alternates the two
runtimes `--rounds` times per block and prints medians and the median per-round ratio
official XNNPACK / Ptero (above 1: Ptero faster). The official program converts its input
to NHWC and its output back inside the delegate, which a whole model does once: small
blocks flatter Ptero a little. Ptero's load-time layout pass leaves a lone block in the
exported (channels-first) layout, since its input and output are the method's: inverted
residual blocks here measure the channels-first kernels, not the channels-last ones a
whole MobileNetV2 runs (`PTERO_CHANNELS_LAST` and docs/layout-pass.md; compare whole
models with python/bench_core.py for those).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "big" / "blocks"


def blocks():
    import torch.nn as nn

    def cba(ci, co, k=1, s=1, g=1, act=True):
        layers = [nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=True)]
        if act:
            layers.append(nn.ReLU6())
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, ci, expand, co, stride):
            super().__init__()
            h = ci * expand
            self.body = nn.Sequential(cba(ci, h), cba(h, h, 3, stride, h), cba(h, co, act=False))
            self.residual = stride == 1 and ci == co

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class Basic(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a = nn.Conv2d(c, c, 3, 1, 1)
            self.b = nn.Conv2d(c, c, 3, 1, 1)

        def forward(self, x):
            import torch

            return torch.relu(x + self.b(torch.relu(self.a(x))))

    return {
        "ir_16_96_s2_112": (lambda: InvertedResidual(16, 6, 24, 2), (1, 16, 112, 112)),
        "ir_24_144_s1_56": (lambda: InvertedResidual(24, 6, 24, 1), (1, 24, 56, 56)),
        "ir_32_192_s1_28": (lambda: InvertedResidual(32, 6, 32, 1), (1, 32, 28, 28)),
        "ir_64_384_s1_14": (lambda: InvertedResidual(64, 6, 64, 1), (1, 64, 14, 14)),
        "ir_160_960_s1_7": (lambda: InvertedResidual(160, 6, 160, 1), (1, 160, 7, 7)),
        "basic_64_56": (lambda: Basic(64), (1, 64, 56, 56)),
        "basic_128_28": (lambda: Basic(128), (1, 128, 28, 28)),
        "basic_256_14": (lambda: Basic(256), (1, 256, 14, 14)),
        "basic_512_7": (lambda: Basic(512), (1, 512, 7, 7)),
        "stem_3_32_224": (lambda: cba(3, 32, 3, 2), (1, 3, 224, 224)),
    }


def export(names) -> int:
    import numpy as np
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    OUT.mkdir(parents=True, exist_ok=True)
    for name, (make, shape) in blocks().items():
        if names and name not in names:
            continue
        torch.manual_seed(0)
        m = make().eval()
        x = torch.randn(*shape)
        ep = torch.export.export(m, (x,))
        for suffix, part in (("", None), ("_xnnpack", [XnnpackPartitioner()])):
            edge = to_edge_transform_and_lower(ep, partitioner=part) if part else to_edge_transform_and_lower(ep)
            (OUT / f"{name}{suffix}.pte").write_bytes(edge.to_executorch(ExecutorchBackendConfig()).buffer)
        np.save(OUT / f"{name}_in0.npy", x.numpy())
        print(name, flush=True)
    return 0


def median_ms(cmd) -> float:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return float(json.loads(r.stdout.strip().splitlines()[-1])["median_ms"])


def bench(args) -> int:
    names = args.names or list(blocks())
    common = ["--threads", str(args.threads), "--iterations", str(args.iterations), "--warmup", "5", "--json"]
    print(f"| block | Ptero ms | official XNNPACK ms | ratio (range) |")
    print("|---|---:|---:|---:|")
    for name in names:
        pte, inp = OUT / f"{name}.pte", OUT / f"{name}_in0.npy"
        if not pte.exists():
            print(f"{name}: not exported (run `export` first)", file=sys.stderr)
            return 1
        rounds = []
        for _ in range(args.rounds):
            p = median_ms([args.ptero, "bench", str(pte), "--input", str(inp), *common])
            o = median_ms([sys.executable, str(ROOT / "python" / "time_ref.py"),
                           str(OUT / f"{name}_xnnpack.pte"), "--input", str(inp), *common])
            rounds.append((p, o))
        ratios = [o / p for p, o in rounds]
        print(f"| {name} | {statistics.median(p for p, _ in rounds):.3f} | "
              f"{statistics.median(o for _, o in rounds):.3f} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="export the blocks (portable + XNNPACK) and inputs")
    ex.add_argument("names", nargs="*")
    be = sub.add_parser("bench", help="time Ptero and the official runtime per block")
    be.add_argument("names", nargs="*")
    be.add_argument("--ptero", default=str(ROOT / "target" / "release" / "ptero"))
    be.add_argument("--threads", type=int, default=2)
    be.add_argument("--rounds", type=int, default=3)
    be.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args(argv)
    return export(args.names) if args.cmd == "export" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
