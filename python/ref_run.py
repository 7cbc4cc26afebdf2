#!/usr/bin/env python3
"""Run an ExecuTorch .pte with the official (reference) runtime.

Mirror of the future `ptero run` CLI, so Ptero can be diffed against the
reference on arbitrary programs:

    .venv-ref/bin/python python/ref_run.py MODEL.pte [--method NAME] \
        [--input a.npy ...] [--output-dir DIR] [--iterations N]

Inputs are .npy files (native dtypes, 0-d arrays for scalar inputs). The method
is executed N times on one loaded program (state such as mutable buffers
carries over); the outputs of the last iteration are written as
DIR/output_<i>.npy (non-tensor outputs as 0-d arrays).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def value_to_numpy(v) -> np.ndarray:
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().clone().contiguous().numpy()
    if isinstance(v, bool):
        return np.array(v, dtype=np.bool_)
    if isinstance(v, int):
        return np.array(v, dtype=np.int64)
    if isinstance(v, float):
        return np.array(v, dtype=np.float64)
    return np.asarray(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run a .pte with the official ExecuTorch runtime")
    ap.add_argument("model", help="path to the .pte")
    ap.add_argument("--method", default="forward")
    ap.add_argument("--input", nargs="*", default=[], help=".npy input files, in order")
    ap.add_argument("--output-dir", default=".")
    ap.add_argument("--iterations", type=int, default=1)
    args = ap.parse_args(argv)

    import torch
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(args.model).read_bytes())
    if args.method not in program.method_names:
        print(f"error: method {args.method!r} not in {sorted(program.method_names)}", file=sys.stderr)
        return 2
    meta = program.metadata(args.method)

    inputs = []
    for i, f in enumerate(args.input):
        arr = np.load(f)
        is_tensor = True
        if i < meta.num_inputs():
            try:
                meta.input_tensor_meta(i)
            except Exception:
                is_tensor = False
        if not is_tensor and arr.ndim == 0:
            inputs.append(arr.item())
        else:
            inputs.append(torch.from_numpy(np.ascontiguousarray(arr)))

    method = program.load_method(args.method)
    outputs = []
    times = []
    for _ in range(max(1, args.iterations)):
        t0 = time.perf_counter()
        outputs = method.execute(inputs)
        times.append(time.perf_counter() - t0)

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(outputs):
        arr = value_to_numpy(v)
        np.save(out_dir / f"output_{i}.npy", arr)
        print(f"output_{i}: dtype={arr.dtype} shape={list(arr.shape)}")
    print(
        f"iterations={len(times)} first={times[0]*1e3:.3f}ms "
        f"min={min(times)*1e3:.3f}ms mean={sum(times)/len(times)*1e3:.3f}ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
