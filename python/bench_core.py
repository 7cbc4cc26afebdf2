#!/usr/bin/env python3
"""Core benchmark models: Ptero vs the official ExecuTorch runtime (portable and XNNPACK).

    .venv-ref/bin/python python/bench_core.py export [names...]
    .venv-ref/bin/python python/bench_core.py bench [names...] [--ptero target/release/ptero] \
        [--iterations N] [--warmup W] [--threads 1,2]
    .venv-ref/bin/python python/bench_core.py --list

Models (seeded random weights, torch.manual_seed(0), eval mode): resnet18, mobilenet_v2,
efficientnet_b0, vit_b_16 (torchvision, input 1x3x224x224) and transformer_encoder
(nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True), input 1x128x512).

`export` writes into the git-ignored models/big/core/:
    <name>.pte          portable kernels only: torch.export.export ->
                        to_edge_transform_and_lower (no partitioner) -> to_executorch,
                        the same pipeline as python/export_fixtures.py / sweep.py
    <name>_xnnpack.pte  the same, lowered with the official XnnpackPartitioner (fp32)
    <name>_in0.npy      the seeded random float32 input
Both programs are run once with the official runtime (executorch.runtime) and must agree
with PyTorch eager: max|out - eager| <= 1e-3 * max|eager|.

`bench` times, per model and per thread count T, `ptero bench` on the portable program,
and python/time_ref.py (official runtime, `--threads T` resizes its threadpool with
`_unsafe_reset_threadpool`) on the portable and the XNNPACK programs, one process at a
time, and prints a Markdown table of medians. Ratio = official XNNPACK / Ptero
(above 1 means Ptero is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "python"
OUT = ROOT / "models" / "big" / "core"
NAMES = ["resnet18", "mobilenet_v2", "efficientnet_b0", "vit_b_16", "transformer_encoder"]
# Static int8 flavours (PT2E XNNPACKQuantizer, per-channel weights), XNNPACK-lowered only.
QS8_NAMES = ["resnet18_qs8", "mobilenet_v2_qs8"]
RTOL = 1e-3


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------


def build(name: str):
    """(eval module, example input) with seeded random weights and input."""
    import torch

    if name.endswith("_qs8"):
        return build(name[: -len("_qs8")])
    torch.manual_seed(0)
    if name == "transformer_encoder":
        m = torch.nn.TransformerEncoderLayer(d_model=512, nhead=8, dim_feedforward=2048, batch_first=True)
        shape = (1, 128, 512)
    else:
        import torchvision

        m = getattr(torchvision.models, name)(weights=None)
        shape = (1, 3, 224, 224)
        if name == "vit_b_16":  # torchvision zero-inits the head: all-zero logits would
            torch.nn.init.normal_(m.heads.head.weight, std=0.02)  # make the check vacuous
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float32)
    return m.eval(), x


def lower(ep, xnnpack: bool) -> bytes:
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    if xnnpack:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    else:
        edge = to_edge_transform_and_lower(ep)  # no partitioner: portable kernels only
    return edge.to_executorch(ExecutorchBackendConfig()).buffer


def run_official(data: bytes, x) -> np.ndarray:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(data)
    out = program.load_method("forward").execute([x])
    return out[0].detach().clone().contiguous().numpy()


def op_summary(data: bytes) -> str:
    """Operator names and delegate count of a program (for the log)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    prog = deserialize_pte_binary(data)
    prog = getattr(prog, "program", prog)
    plan = prog.execution_plan[0]
    ops = sorted({o.name + (f".{o.overload}" if o.overload else "") for o in plan.operators})
    return f"{len(ops)} ops, {len(plan.delegates)} delegate(s): {', '.join(ops) or '-'}"


def export_one(name: str) -> bool:
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    m, x = build(name)
    np.save(OUT / f"{name}_in0.npy", x.numpy())
    with torch.no_grad():
        ref = m(x).numpy()
    # Exported with grad enabled, as export_fixtures.py does: under no_grad the encoder
    # layer traces to the fused aten._transformer_encoder_layer_fwd (not core ATen).
    t0 = time.perf_counter()
    flavours = (("", False), ("_xnnpack", True))
    if name.endswith("_qs8"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        gm = torch.export.export(m, (x,), strict=True).module()
        gm = prepare_pt2e(gm, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
        gm(x)  # calibration on the benchmark input
        m = convert_pt2e(gm)
        with torch.no_grad():
            ref = m(x).numpy()
        flavours = (("_xnnpack", True),)
    ep = torch.export.export(m, (x,), strict=True)
    print(f"[{name}] torch.export {time.perf_counter() - t0:.1f}s", flush=True)
    ok = True
    for suffix, xnn in flavours:
        t0 = time.perf_counter()
        data = lower(ep, xnn)
        path = OUT / f"{name}{suffix}.pte"
        path.write_bytes(data)
        took = time.perf_counter() - t0
        try:
            summary = op_summary(data)
        except Exception as e:  # informational only
            summary = f"(op list unavailable: {e})"
        out = run_official(data, x)
        err = float(np.max(np.abs(out - ref))) if out.shape == ref.shape else float("inf")
        scale = float(np.max(np.abs(ref)))
        good = err <= RTOL * max(scale, 1e-12)
        ok &= good
        print(f"[{name}] {path.name}: {len(data) / 2**20:.2f} MiB, lower {took:.1f}s, "
              f"max|off-eager| {err:.3g} (max|eager| {scale:.3g}) {'OK' if good else 'MISMATCH'}\n"
              f"    {summary}", flush=True)
    return ok


# --------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------


def run_json(cmd, timeout: float):
    """Last stdout line of `cmd` as JSON, or the error text."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f}s"
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-5:]
        return None, f"exit {r.returncode}: " + " | ".join(tail)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, "no JSON in output: " + r.stdout.strip()[-300:]


def bench(args) -> int:
    ptero = str(Path(args.ptero).resolve())
    if not Path(ptero).exists():
        print(f"error: {ptero} does not exist (build it first)", file=sys.stderr)
        return 2
    common = ["--iterations", str(args.iterations), "--warmup", str(args.warmup), "--json"]
    threads = [int(t) for t in args.threads.split(",")]
    rows, errors, raw = [], [], {}
    for name in args.names:
        pte, xnn, inp = OUT / f"{name}.pte", OUT / f"{name}_xnnpack.pte", OUT / f"{name}_in0.npy"
        if name.endswith("_qs8") or args.delegate:
            pte = xnn
            args.skip_portable_ref = True
        if not (xnn.exists() and inp.exists() and (pte.exists() or pte == xnn)):
            errors.append(f"{name}: export missing (run `export {name}` first)")
            continue
        if args.delegate or name.endswith("_qs8"):
            pte = xnn  # the same delegated file for both runtimes
        for t in threads:
            runs = {
                "ptero": [ptero, "bench", str(pte), "--input", str(inp), "--threads", str(t), *common],
                "official": [sys.executable, str(HERE / "time_ref.py"), str(pte), "--input", str(inp),
                             "--threads", str(t), *common],
                "official_xnnpack": [sys.executable, str(HERE / "time_ref.py"), str(xnn), "--input", str(inp),
                                     "--threads", str(t), *common],
            }
            if args.skip_portable_ref:
                del runs["official"]
            res = {"official": None}
            per = {key: [] for key in runs}
            ratios = []
            # Rounds alternate the runtimes, so a shared machine's slow spells hit both;
            # each round gives one ratio, and the table shows their median and range.
            for rnd in range(args.rounds):
                for key, cmd in runs.items():  # strictly one process at a time
                    print(f"# {name} T={t} {key} round {rnd + 1}: {' '.join(cmd)}", file=sys.stderr, flush=True)
                    r, err = run_json(cmd, args.timeout)
                    if err:
                        errors.append(f"{name} T={t} {key}: {err}")
                    elif r:
                        per[key].append(r)
                if per["ptero"] and per["official_xnnpack"] and len(per["ptero"]) == len(per["official_xnnpack"]):
                    ratios.append(per["official_xnnpack"][-1]["median_ms"] / per["ptero"][-1]["median_ms"])
            for key, rs in per.items():
                if rs:
                    rs = sorted(rs, key=lambda r: r["median_ms"])
                    res[key] = rs[len(rs) // 2]
            res["ratios"] = ratios
            raw[f"{name}/T{t}"] = {**res, "rounds": per}
            rows.append((name, t, res))

    fmt = lambda r, k="median_ms": f"{r[k]:.1f}" if r else "-"
    print(f"<!-- {platform.node()} {platform.processor() or platform.machine()} cpus={os.cpu_count()} "
          f"iterations={args.iterations} warmup={args.warmup} -->")
    print("| model | threads | Ptero portable ms | official portable ms | official XNNPACK ms "
          "| official XNNPACK / Ptero | Ptero peak RSS MiB | Ptero RSS growth MiB | official RSS growth MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, t, r in rows:
        p, o, x = r["ptero"], r["official"], r["official_xnnpack"]
        rs = sorted(r.get("ratios") or [])
        ratio = f"{rs[len(rs) // 2]:.2f}x" if rs else "-"
        if len(rs) > 1:
            ratio += f" ({rs[0]:.2f}-{rs[-1]:.2f})"
        rss = f"{fmt(o, 'rss_delta_mb')} / {fmt(x, 'rss_delta_mb')}"  # portable / XNNPACK
        print(f"| {name} | {t} | {fmt(p)} | {fmt(o)} | {fmt(x)} | {ratio} | {fmt(p, 'peak_rss_mb')} | {fmt(p, 'rss_growth_mb') if p and 'rss_growth_mb' in p else '-'} | {rss} |")
    print("\nofficial RSS growth is shown as portable / XNNPACK. RSS growth: resident memory after the "
          "runs less before the program was loaded, measured the same way in both runtimes.")
    for e in errors:
        print(f"- {e}")
    if args.save:
        Path(args.save).write_text(json.dumps(raw, indent=1))
    return 1 if errors else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list model names and exit")
    sub = ap.add_subparsers(dest="cmd")
    ex = sub.add_parser("export", help="export portable + XNNPACK programs and inputs")
    ex.add_argument("names", nargs="*", default=[])
    be = sub.add_parser("bench", help="time Ptero and the official runtime")
    be.add_argument("names", nargs="*", default=[])
    be.add_argument("--ptero", default=str(ROOT / "target" / "release" / "ptero"))
    be.add_argument("--iterations", type=int, default=20)
    be.add_argument("--warmup", type=int, default=3)
    be.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    be.add_argument("--timeout", type=float, default=1800.0, help="per process, seconds")
    be.add_argument("--save", help="also write the raw JSON results here")
    be.add_argument("--rounds", type=int, default=1,
                    help="alternate the runtimes this many times; the ratio is the median of the rounds'")
    be.add_argument("--delegate", action="store_true",
                    help="Ptero runs the XNNPACK-lowered file too (the same file for both runtimes)")
    be.add_argument("--skip-portable-ref", action="store_true",
                    help="do not time the official runtime on the portable program (very slow)")
    args = ap.parse_args(argv)
    if args.list or not args.cmd:
        print("\n".join(NAMES + QS8_NAMES))
        return 0
    names = args.names or NAMES
    bad = [n for n in names if n not in NAMES + QS8_NAMES]
    if bad:
        ap.error(f"unknown model(s) {bad}; known: {NAMES + QS8_NAMES}")
    args.names = names
    if args.cmd == "bench":
        return bench(args)

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    failed = [n for n in names if not export_one(n)]
    if failed:
        print(f"MISMATCH vs eager: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
