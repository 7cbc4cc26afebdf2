#!/usr/bin/env python3
"""List the operators and delegates used by each method of an ExecuTorch .pte.

Usage:
    .venv-ref/bin/python python/list_ops.py MODEL.pte [MODEL2.pte ...] [--json]

Parses the program with the official deserializer
(executorch.exir._serialize._program.deserialize_pte_binary) and prints, per
method (execution plan), every operator as ``namespace::op.overload`` with the
number of KernelCall instructions using it, and the delegate ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List


def op_full_name(op) -> str:
    return f"{op.name}.{op.overload}" if op.overload else op.name


def read_pte_ops(path: str | Path) -> Dict[str, Dict[str, object]]:
    """Return {method_name: {"operators": {name: n_calls}, "delegates": [ids]}}."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import KernelCall, DelegateCall

    data = Path(path).read_bytes()
    pte = deserialize_pte_binary(data)
    program = getattr(pte, "program", pte)
    result: Dict[str, Dict[str, object]] = {}
    for plan in program.execution_plan:
        names = [op_full_name(o) for o in plan.operators]
        calls: Counter = Counter({n: 0 for n in names})
        delegate_calls: Counter = Counter()
        for chain in plan.chains:
            for instr in chain.instructions:
                a = instr.instr_args
                if isinstance(a, KernelCall):
                    calls[names[a.op_index]] += 1
                elif isinstance(a, DelegateCall):
                    delegate_calls[plan.delegates[a.delegate_index].id] += 1
        result[plan.name] = {
            "operators": dict(calls),
            "delegates": [d.id for d in plan.delegates],
            "delegate_calls": dict(delegate_calls),
        }
    return result


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pte", nargs="+")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    all_res = {p: read_pte_ops(p) for p in args.pte}
    if args.json:
        print(json.dumps(all_res, indent=2, sort_keys=True))
        return 0
    for p, methods in all_res.items():
        print(f"{p}:")
        for mname, info in methods.items():
            print(f"  method {mname}:")
            for op, n in sorted(info["operators"].items()):
                print(f"    {op}  ({n} call{'s' if n != 1 else ''})")
            if info["delegates"]:
                print(f"    delegates: {', '.join(info['delegates'])}")
            else:
                print("    delegates: (none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
