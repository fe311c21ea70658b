"""Threads under outside load: concurrency-16 ShareGPT against radixgen with and without a competing process.

For each thread setting (``--settings``: ``adaptive`` = the server default, ``runtime/cpu_threads.py``'s governor
that takes the cores other processes leave free; ``N`` = ``--num-threads N`` fixed) one server is launched
(bench-llama-40m, seeded dummy weights, float32 unless ``--server-args`` says otherwise) and loaded twice with the
same ``--num-prompts`` ShareGPT prompts (<= 256 tokens, ``--output-len`` tokens each, ``--concurrency`` in
flight, bench_serving.py's client): once on the quiet machine, once while a Python busy loop (``--hogs`` of them,
default one) competes for the cores. Prints throughput, end-to-end latency p50 / p99 and TPOT p50 per run and the
loaded / quiet throughput ratio; writes ``benchmarks/results/bench_threads.json``.

    python benchmarks/bench_threads.py [--settings adaptive,2] [--num-prompts 480] [--hogs 1]

OpenMP threads that share a core with another process stall every parallel region until the preempted thread
runs again, so a fixed thread count equal to the core count collapses under load; run on an otherwise quiet
machine (the script prints the load average) — the hogs are the only outside load it means to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import bench_serving
from common import BENCH_MODEL, RESULTS


def run(setting: str, hogs: int, args: argparse.Namespace) -> dict[str, Any]:
    """One launched server and load, with ``hogs`` busy-loop processes running meanwhile."""
    threads = "" if setting == "adaptive" else f"--num-threads {int(setting)}"
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        report = bench_serving.main([
            "--launch", "--model", str(BENCH_MODEL), "--load-format", "dummy",
            "--server-args", f"{args.server_args} {threads}".strip(), "--num-prompts", str(args.num_prompts),
            "--output-len", str(args.output_len), "--max-concurrency", str(args.concurrency),
        ])  # fmt: skip
    finally:
        for p in busy:
            p.kill()
            p.wait()
    m = report["runs"][0]
    return {
        "setting": setting, "hogs": hogs, "duration_s": m["duration_s"], "output_throughput": m["output_throughput"],
        "e2e_p50_ms": m["e2e_ms"]["p50"], "e2e_p99_ms": m["e2e_ms"]["p99"], "tpot_p50_ms": m["tpot_ms"]["p50"],
        "completed": m["completed"], "failed": m["failed"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="adaptive,2", help="comma-separated: adaptive and/or thread counts")
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes in the loaded runs")
    parser.add_argument("--num-prompts", type=int, default=480)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--server-args", default="--dtype float32")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = [run(s, h, args) for s in args.settings.split(",") for h in (0, args.hogs)]
    print(f"\n{'threads':>10s} {'outside':>8s} {'out tok/s':>10s} {'e2e p50 ms':>11s} {'e2e p99 ms':>11s} "
          f"{'TPOT p50':>9s} {'vs quiet':>9s}")  # fmt: skip
    quiet = {r["setting"]: r["output_throughput"] for r in rows if r["hogs"] == 0}
    for r in rows:
        ratio = r["output_throughput"] / quiet[r["setting"]]
        print(f"{r['setting']:>10s} {r['hogs']:>8d} {r['output_throughput']:10.1f} {r['e2e_p50_ms']:11.0f} "
              f"{r['e2e_p99_ms']:11.0f} {r['tpot_p50_ms']:9.1f} {ratio:8.2f}x")  # fmt: skip
    out = {"args": vars(args), "rows": rows, "load_average_before": load_before, "load_average_after": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_threads.json").write_text(json.dumps(out, indent=2))
    print("load average before", load_before, "after", out["load_average_after"])


if __name__ == "__main__":
    main()
