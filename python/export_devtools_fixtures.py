#!/usr/bin/env python3
"""Export the devtools fixtures with the official toolchain (executorch==1.5.1).

    .venv-ref/bin/python python/export_devtools_fixtures.py [bundled] [etrecord]

Writes tests/fixtures/devtools/:
  bundled/model.bpte       two methods (forward: conv + linear on f32; encode: int64
                           embedding-like arithmetic), several test cases each, expected
                           outputs from PyTorch eager, built with
                           serialize_from_bundled_program_to_flatbuffer and checked by the
                           official runtime's verify_result_with_bundled_expected_output;
  bundled/bad.bpte         the same file with one expected output of forward's case 1
                           changed (so `ptero test` must fail naming forward, case 1);
  bundled_xnnpack/model.bpte  an XNNPACK-lowered CNN with two cases;
  etrecord_cnn/            a small CNN (portable): model.pte, etrecord.bin, input.npy;
  etrecord_cnn_xnnpack/    the same CNN lowered with XnnpackPartitioner.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.export import export

from executorch.exir import to_edge, to_edge_transform_and_lower
from executorch.devtools import BundledProgram
from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
from executorch.devtools.bundled_program.serialize import (
    serialize_from_bundled_program_to_flatbuffer,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "devtools"


class Forward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x, bias):
        y = torch.relu(self.conv(x))
        return self.fc(y.flatten(1)) + bias, y.mean(dim=(2, 3))


class Encode(torch.nn.Module):
    def forward(self, ids):
        return (ids * 3 + 1) % 7, ids.sum()


class Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y))
        return self.fc(y.mean(dim=(2, 3)))


def cases(mod, inputs):
    out = []
    for inp in inputs:
        res = mod(*inp)
        if isinstance(res, torch.Tensor):
            res = (res,)
        out.append(MethodTestCase(inputs=list(inp), expected_outputs=list(res)))
    return out


def verify(buf: bytes, suites) -> None:
    from executorch.extension.pybindings.portable_lib import _load_bundled_program_from_buffer

    bm = _load_bundled_program_from_buffer(buf)
    for s in suites:
        for i in range(len(s.test_cases)):
            bm.verify_result_with_bundled_expected_output(s.method_name, i)


def bundled() -> None:
    torch.manual_seed(0)
    fwd, enc = Forward().eval(), Encode()
    f_in = [(torch.randn(1, 3, 6, 6), torch.randn(1, 5)) for _ in range(3)]
    e_in = [(torch.randint(0, 100, (4,), dtype=torch.int64),) for _ in range(2)]
    edge = to_edge(
        {
            "forward": export(fwd, f_in[0], strict=True),
            "encode": export(enc, e_in[0], strict=True),
        }
    )
    et = edge.to_executorch()
    with torch.no_grad():
        suites = [
            MethodTestSuite("forward", cases(fwd, f_in)),
            MethodTestSuite("encode", cases(enc, e_in)),
        ]
    buf = serialize_from_bundled_program_to_flatbuffer(BundledProgram(et, suites))
    verify(buf, suites)
    d = OUT / "bundled"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.bpte").write_bytes(buf)
    # forward, case 1, first output: add 1 to its first element.
    with torch.no_grad():
        bad_cases = cases(fwd, f_in)
        changed = f_in[1][0], f_in[1][1]
        outs = [t.clone() for t in fwd(*changed)]
        outs[0].view(-1)[0] += 1.0
        bad_cases[1] = MethodTestCase(inputs=list(changed), expected_outputs=outs)
        bad_suites = [MethodTestSuite("forward", bad_cases), MethodTestSuite("encode", cases(enc, e_in))]
    bad_buf = serialize_from_bundled_program_to_flatbuffer(BundledProgram(et, bad_suites))
    assert bad_buf != buf
    (d / "bad.bpte").write_bytes(bad_buf)
    print("bundled:", len(buf), "bytes")

    # XNNPACK-lowered CNN.
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    torch.manual_seed(1)
    cnn = Cnn().eval()
    c_in = [(torch.randn(1, 3, 8, 8),) for _ in range(2)]
    et = to_edge_transform_and_lower(
        export(cnn, c_in[0], strict=True), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    with torch.no_grad():
        suites = [MethodTestSuite("forward", cases(cnn, c_in))]
    buf = serialize_from_bundled_program_to_flatbuffer(BundledProgram(et, suites))
    d = OUT / "bundled_xnnpack"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.bpte").write_bytes(buf)
    print("bundled_xnnpack:", len(buf), "bytes")


def etrecord() -> None:
    """A small CNN exported with an ETRecord (representative inputs included, so that the
    Inspector's calculate_numeric_gap can run), portable and XNNPACK-lowered."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    torch.manual_seed(2)
    cnn = Cnn().eval()
    x = torch.randn(1, 3, 8, 8)
    for name, parts in (("etrecord_cnn", []), ("etrecord_cnn_xnnpack", [XnnpackPartitioner()])):
        ep = export(cnn, (x,), strict=True)
        edge = to_edge_transform_and_lower(ep, partitioner=parts, generate_etrecord=True)
        et = edge.to_executorch()
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.pte").write_bytes(et.buffer)
        rec = et.get_etrecord()
        rec.update_representative_inputs((x,))
        rec.save(str(d / "etrecord.bin"))
        np.save(d / "input.npy", x.numpy())
        print(name, len(et.buffer), "bytes,", (d / "etrecord.bin").stat().st_size, "bytes of ETRecord")


def main(argv) -> None:
    which = set(argv) or {"bundled", "etrecord"}
    if "bundled" in which:
        bundled()
    if "etrecord" in which:
        etrecord()


if __name__ == "__main__":
    main(sys.argv[1:])
