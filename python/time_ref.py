#!/usr/bin/env python3
"""Time the official ExecuTorch runtime on a .pte: the rival of `ptero bench`.

    .venv-ref/bin/python python/time_ref.py MODEL.pte [--method NAME] [--input a.npy ...] \
        [--iterations N] [--warmup W] [--threads T] [--json]

Prints the same keys as `ptero bench --json`: load_ms, min_ms, median_ms, p90_ms,
peak_rss_mb (this process, so it includes Python and torch), plus rss_delta_mb (growth
of resident memory across loading and running the program: the runtime's own share).
Without inputs, float inputs are filled with the same deterministic pattern as `ptero`.
--threads T resizes the runtime's shared threadpool (XNNPACK and the optimized kernels use
it) with `_unsafe_reset_threadpool(T)`; without it the runtime's default size is kept.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def pattern(shape, dtype):
    n = int(np.prod(shape)) if len(shape) else 1
    k = np.arange(n, dtype=np.int64)
    if np.issubdtype(dtype, np.floating):
        v = ((k * 7919 + 13) % 2000) / 1000.0 - 1.0
    elif dtype == np.bool_:
        v = k % 2 == 0
    else:
        v = k % 4
    return v.astype(dtype).reshape(shape)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--method", default="forward")
    ap.add_argument("--input", action="append", default=[])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threadpool size (default: runtime's own)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch
    from executorch.runtime import Runtime

    # ExecuTorch scalar type codes (scalar_type.fbs) to NumPy.
    dtypes = {6: np.float32, 7: np.float64, 4: np.int64, 3: np.int32, 11: np.bool_, 5: np.float16,
              0: np.uint8, 1: np.int8, 2: np.int16}
    runtime = Runtime.get()
    if args.threads is not None:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(args.threads)
    rss0 = rss_mb()
    data = Path(args.model).read_bytes()
    t0 = time.perf_counter()
    program = runtime.load_program(data)
    method = program.load_method(args.method)
    load_ms = (time.perf_counter() - t0) * 1e3
    meta = program.metadata(args.method)
    if args.input:
        inputs = [torch.from_numpy(np.ascontiguousarray(np.load(f))) for f in args.input]
    else:
        inputs = []
        for i in range(meta.num_inputs()):
            tm = meta.input_tensor_meta(i)
            inputs.append(torch.from_numpy(pattern(tuple(tm.sizes()), dtypes.get(int(tm.dtype()), np.float32))))
    for _ in range(args.warmup):
        method.execute(inputs)
    times = []
    for _ in range(max(1, args.iterations)):
        t = time.perf_counter()
        method.execute(inputs)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    pct = lambda p: times[round((len(times) - 1) * p)]
    out = {
        "model": args.model,
        "method": args.method,
        "load_ms": load_ms,
        "min_ms": times[0],
        "median_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "mean_ms": statistics.fmean(times),
        "iterations": len(times),
        "warmup": args.warmup,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_delta_mb": rss_mb() - rss0,
    }
    if args.threads is not None:
        out["threads"] = args.threads
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>12}  {v:.3f}" if isinstance(v, float) else f"{k:>12}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
