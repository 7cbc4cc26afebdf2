#!/usr/bin/env python3
"""Read a Ptero ETDump with the official Inspector (executorch==1.5.1).

    .venv-ref/bin/python python/check_inspector.py --etdump X.etdp --etrecord etrecord.bin \
        [--debug-buffer X.debug.bin] [--quiet]

Prints the Inspector's table (print_data_tabular) and, with a debug buffer, the result
of calculate_numeric_gap("MSE"). Exits non-zero, saying why, if the Inspector cannot
read the file, if no operator has a timing, or if the numeric gap has no rows or a
non-finite gap. The last line is a JSON summary: operators seen, their total ms, and
the largest gap.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import warnings

warnings.filterwarnings("ignore")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--etdump", required=True)
    ap.add_argument("--etrecord", required=True)
    ap.add_argument("--debug-buffer")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()

    from executorch.devtools import Inspector

    insp = Inspector(
        etdump_path=a.etdump, etrecord=a.etrecord, debug_buffer_path=a.debug_buffer
    )
    table = io.StringIO()
    insp.print_data_tabular(file=table)
    if not a.quiet:
        print(table.getvalue())

    reserved = {"Method::init", "Program::load_method", "Method::execute", "OPERATOR_CALL"}
    ops = {}
    for block in insp.event_blocks:
        for e in block.events:
            if e.name in reserved or e.perf_data is None:
                continue
            ops.setdefault(e.name, 0.0)
            ops[e.name] += sum(e.perf_data.raw)
    if not ops:
        print("FAIL: the Inspector found no operator events with timings", file=sys.stderr)
        return 1
    with_types = [
        e.name
        for b in insp.event_blocks
        for e in b.events
        if e.op_types and e.name not in reserved
    ]
    summary = {"operators": sorted(ops), "total_ms": sum(ops.values()), "with_op_types": len(with_types)}
    if a.debug_buffer:
        gap = insp.calculate_numeric_gap("MSE")
        if not a.quiet:
            print(gap[["aot_ops", "runtime_ops", "gap"]].to_string())
        if len(gap) == 0:
            print("FAIL: calculate_numeric_gap returned no rows", file=sys.stderr)
            return 1
        gaps = [float(g[0]) if isinstance(g, (list, tuple)) else float(g) for g in gap["gap"]]
        if not all(math.isfinite(g) for g in gaps):
            print(f"FAIL: non-finite numeric gap: {gaps}", file=sys.stderr)
            return 1
        summary["gap_rows"] = len(gaps)
        summary["max_gap"] = max(gaps)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
