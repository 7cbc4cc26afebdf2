#!/usr/bin/env python3
"""Prefill and decode speed: `ptero llm` against the official runtime's forward loop, in one run.

Ptero runs MODEL (e.g. the portable fp32 export of SmolLM2); the official runtime runs REF
(the same weights lowered to XNNPACK, what its users get) with the same prompt ids: one
`forward` over the whole prompt (prefill), then one call per generated token, greedy
(decode). Both at the same thread count; each side is run `--runs` times and the median of
each figure is kept. Prints a Markdown table (and JSON with --json).

Usage:
    .venv-ref/bin/python python/bench_llm.py models/big/smollm2/model.pte \\
        models/big/smollm2/model_xnnpack.pte --prompt-len 64 --new-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prompt_ids(n: int) -> list[int]:
    # Deterministic ids inside every small vocabulary we export (>= 32k tokens).
    return [(i * 7919) % 30000 + 100 for i in range(n)]


def run_ptero(exe: Path, model: Path, ids: list[int], new: int, threads: int) -> dict:
    cmd = [str(exe), "llm", str(model), "--prompt-ids", ",".join(map(str, ids)),
           "--max-new-tokens", str(new), "--ignore-eos", "--json", "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    s = out["stats"]
    return {
        "prefill_tokens_per_s": s["prefill_tokens_per_s"],
        "decode_tokens_per_s": s["decode_tokens_per_s"],
        "peak_rss_mb": s.get("peak_rss_mb"),
        "ids": out["ids"],
        "cmd": " ".join(cmd),
    }


def run_official(model: Path, ids: list[int], new: int, threads: int) -> dict:
    import torch
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama::sdpa_with_kv_cache)
    import executorch.kernels.quantized  # noqa: F401  (embedding_4bit and friends)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    program = Runtime.get().load_program(model.read_bytes())
    fwd = program.load_method("forward")
    t0 = time.perf_counter()
    logits = fwd.execute([torch.tensor([ids]), torch.tensor([0])])[0]
    prefill = time.perf_counter() - t0
    out, pos = [], len(ids)
    t0 = time.perf_counter()
    for _ in range(new):
        nxt = int(torch.argmax(logits.reshape(-1, logits.shape[-1])[-1]))
        out.append(nxt)
        logits = fwd.execute([torch.tensor([[nxt]]), torch.tensor([pos])])[0]
        pos += 1
    decode = time.perf_counter() - t0
    import resource
    return {
        "prefill_tokens_per_s": len(ids) / prefill,
        "decode_tokens_per_s": new / decode,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "ids": out,
    }


def median_of(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="the program Ptero runs")
    ap.add_argument("ref", type=Path, help="the program the official runtime runs")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ptero", type=Path, default=ROOT / "target/release/ptero")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ids = prompt_ids(args.prompt_len)
    ours, theirs = [], []
    for _ in range(args.runs):
        ours.append(run_ptero(args.ptero, args.model, ids, args.new_tokens, args.threads))
        # A fresh process per run: the official runtime keeps state between programs.
        r = subprocess.run([sys.executable, __file__, "--official-once", str(args.ref),
                            str(args.prompt_len), str(args.new_tokens), str(args.threads)],
                           capture_output=True, text=True, check=True)
        theirs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    agree = 0
    for a, b in zip(ours[0]["ids"], theirs[0]["ids"]):
        if a != b:
            break
        agree += 1
    res = {
        "threads": args.threads,
        "prompt_tokens": args.prompt_len,
        "new_tokens": args.new_tokens,
        "ptero": {k: median_of(ours, k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb")},
        "official": {k: median_of(theirs, k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb")},
        "greedy_ids_agree": agree,
        "ptero_cmd": ours[0]["cmd"],
    }
    if args.json:
        print(json.dumps(res))
    p, o = res["ptero"], res["official"]
    print(f"<!-- threads={args.threads} prompt={args.prompt_len} new={args.new_tokens} runs={args.runs} -->")
    print("| | Ptero | official | Ptero / official |")
    print("|---|---:|---:|---:|")
    for k, name in (("prefill_tokens_per_s", f"prefill tokens/s ({args.prompt_len})"),
                    ("decode_tokens_per_s", "decode tokens/s")):
        print(f"| {name} | {p[k]:.1f} | {o[k]:.1f} | {p[k] / o[k]:.2f}x |")
    print(f"| peak RSS MiB | {p['peak_rss_mb'] or 0:.0f} | {o['peak_rss_mb']:.0f} | |")
    print(f"\ngreedy ids agree for the first {agree} of {args.new_tokens} tokens")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--official-once":
        model, plen, new, threads = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(run_official(model, prompt_ids(plen), new, threads)))
        sys.exit(0)
    sys.exit(main())
