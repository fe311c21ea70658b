"""Batch-1 server path (issue 13): what the HTTP and detokenizer processes add per token over the offline Engine.

For each ``--precisions`` entry (bench_peer.py's radixgen flags: f32, bf16, q8 = w8a8_int8 with the LM head) on
bench-llama-40m with seeded dummy weights, one greedy request of ``--output-len`` tokens (ignore_eos) after a fixed
prompt runs ``--repeats`` times in each of three ways, one at a time:

- ``engine``: the offline Engine in this process (the same scheduler, no HTTP, no detokenizer process);
- ``stream``: a launched server, streaming ``/v1/completions`` (an SSE chunk per token: every token crosses the
  scheduler → detokenizer → HTTP processes);
- ``no-stream``: the same server, one JSON response (the scheduler sends the tokens every 50, ``Req.output_due``).

It prints milliseconds per output token (request wall time / tokens, median over repeats), the server's overhead
over the Engine, and for the streamed runs the CPU milliseconds per token of each server process (psutil; the
scheduler's figure counts both of its compute threads). Writes ``benchmarks/results/bench_server_path.json``.

    python benchmarks/bench_server_path.py [--precisions f32,bf16,q8] [--output-len 1024] [--repeats 3]

Run on a quiet machine: the figures are wall times of one request on 2 cores; the script prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import bench_serving
import httpx
import psutil
from bench_peer import PRECISIONS
from common import BENCH_MODEL, RESULTS

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def engine_kwargs(flags: tuple[str, ...]) -> dict[str, Any]:
    """``radixgen serve`` flags as Engine keyword arguments: ``--dtype float32`` → ``dtype="float32"``, a flag
    without a value → True."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(flags):
        key = flags[i].removeprefix("--").replace("-", "_")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[key], i = flags[i + 1], i + 2
        else:
            out[key], i = True, i + 1
    return out


def engine_ms_per_token(flags: tuple[str, ...], output_len: int, repeats: int) -> list[float]:
    """The offline Engine's wall milliseconds per output token, one value per repeat (after a warm-up request)."""
    from radixgen.runtime import Engine

    engine = Engine(str(BENCH_MODEL), load_format="dummy", **engine_kwargs(flags))
    params = {"max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}
    try:
        engine.generate(PROMPT, {**params, "max_new_tokens": 16})
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = engine.generate(PROMPT, params)
            runs.append((time.perf_counter() - t0) * 1e3 / out["meta_info"]["completion_tokens"])
            engine.flush_cache()
        return runs
    finally:
        engine.shutdown()


def server_runs(flags: tuple[str, ...], output_len: int, repeats: int) -> dict[str, Any]:
    """Streamed and non-streamed requests against one launched server: ms per token per repeat, and CPU ms per
    token of each server process during the streamed runs."""
    proc, base = bench_serving.launch_server(str(BENCH_MODEL), "dummy", list(flags))
    try:
        model = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
        body = {"model": model, "prompt": PROMPT, "max_tokens": output_len, "temperature": 0, "ignore_eos": True}

        def one(stream: bool) -> float:
            t0 = time.perf_counter()
            if stream:
                with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=600) as r:
                    for _ in r.iter_lines():
                        pass
            else:
                r = httpx.post(f"{base}/v1/completions", json=body, timeout=600)
                assert r.json()["usage"]["completion_tokens"] == output_len, r.text
            return (time.perf_counter() - t0) * 1e3 / output_len

        one(True)  # warm-up
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        names = {p.pid: _role(p) for p in tree}
        cpu0 = {p.pid: sum(p.cpu_times()[:2]) for p in tree}
        stream = [one(True) for _ in range(repeats)]
        cpu = {names[p.pid]: (sum(p.cpu_times()[:2]) - cpu0[p.pid]) * 1e3 / (repeats * output_len) for p in tree}
        no_stream = [one(False) for _ in range(repeats)]
        return {"stream": stream, "no_stream": no_stream, "stream_cpu_ms_per_token": cpu}
    finally:
        bench_serving.stop_server(proc)


def _role(p: psutil.Process) -> str:
    """The server process's job, from its command line and its place in the tree."""
    cmd = " ".join(p.cmdline())
    if "launch_server" in cmd:
        return "http"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return f"child-{p.pid}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="f32,bf16,q8", help=f"comma-separated, of {sorted(PRECISIONS)}")
    parser.add_argument("--output-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "bench_server_path.json"))
    args = parser.parse_args()

    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "output_len": args.output_len, "rows": {}}
    print(f"load average {os.getloadavg()}")
    for name in args.precisions.split(","):
        flags = PRECISIONS[name].radixgen_args
        engine = engine_ms_per_token(flags, args.output_len, args.repeats)
        server = server_runs(flags, args.output_len, args.repeats)
        report["rows"][name] = {"flags": list(flags), "engine": engine, **server}
    report["load_average_end"] = os.getloadavg()

    print(f"\nbench-llama-40m, batch 1, {args.output_len} output tokens, medians of {args.repeats}")
    print("| precision | Engine ms/tok | stream ms/tok (over Engine) | no-stream ms/tok (over Engine) | "
          "stream CPU ms/tok: HTTP / scheduler / detokenizer |")  # fmt: skip
    print("|---|---:|---:|---:|---|")
    for name, row in report["rows"].items():
        e, s, n = (statistics.median(row[k]) for k in ("engine", "stream", "no_stream"))
        children = sorted((k, v) for k, v in row["stream_cpu_ms_per_token"].items() if k.startswith("child-"))
        # the scheduler is the busiest child (its compute threads), the detokenizer the other one
        kids = sorted((v for _, v in children), reverse=True)
        cpu = " / ".join(f"{v:.3f}" for v in [row["stream_cpu_ms_per_token"]["http"], *kids])
        over = f"{s:.2f} ({(s / e - 1) * 100:+.0f}%) | {n:.2f} ({(n / e - 1) * 100:+.0f}%)"
        print(f"| {name} | {e:.2f} | {over} | {cpu} |")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
