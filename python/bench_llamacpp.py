#!/usr/bin/env python3
"""Times llama.cpp (llama-cpp-python, built from source with -DGGML_NATIVE=ON) on a GGUF
model with the prompt ids `bench_llm.py` uses: prefill of the prompt, then greedy decode.

    python3 -m venv models/big/venv-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=ON" models/big/venv-llamacpp/bin/pip install llama-cpp-python
    models/big/venv-llamacpp/bin/python python/bench_llamacpp.py MODEL.gguf --threads 2

Prints one JSON object per run (prefill and decode tokens/s, peak RSS).
"""
import argparse
import json
import resource
import time

from llama_cpp import Llama


def prompt_ids(n):
    # Same ids as bench_llm.py.
    return [(i * 7919) % 30000 + 100 for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    llm = Llama(a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads,
                n_batch=512, verbose=False)
    ids = prompt_ids(a.prompt_len)
    for _ in range(a.runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        out = []
        for _ in range(a.new_tokens):
            tok = int(llm.sample(temp=0.0))
            out.append(tok)
            llm.eval([tok])
        t2 = time.perf_counter()
        print(json.dumps({
            "prefill_tokens_per_s": len(ids) / (t1 - t0),
            "decode_tokens_per_s": a.new_tokens / (t2 - t1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ids": out[:8],
        }), flush=True)


if __name__ == "__main__":
    main()
