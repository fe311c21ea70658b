"""Issue 7 target 6: output tok/s at concurrency 16 >= 6x concurrency 1, ShareGPT through the server.

Runs bench_serving.py (streaming /v1/completions, the same server for every concurrency, cache flushed before
each run): --num-prompts ShareGPT first turns (<= 256 tokens), --output-len tokens each (ignore_eos, greedy), at
each of --max-concurrency. The ratio is output tok/s at the largest over the smallest concurrency.

  python benchmarks/bench_scaling.py               # writes benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
from typing import Any

import bench_serving
from common import BENCH_MODEL
from native_client import print_targets, target, write_result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the concurrency sweep and print / write the scaling ratio."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(BENCH_MODEL))
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--server-args", default="--max-total-tokens 65536", help="flags for the launched server")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--max-concurrency", default="1,4,16")
    args = p.parse_args(argv)

    report = bench_serving.main(
        [
            "--launch",
            "--model",
            args.model,
            "--load-format",
            args.load_format,
            f"--server-args={args.server_args}",
            "--workload",
            "sharegpt",
            "--num-prompts",
            str(args.num_prompts),
            "--output-len",
            str(args.output_len),
            "--max-concurrency",
            args.max_concurrency,
        ]
    )
    runs = sorted(report["runs"], key=lambda r: r["max_concurrency"])
    lo, hi = runs[0], runs[-1]
    ratio = hi["output_throughput"] / lo["output_throughput"]
    targets = [
        target(
            f"out tok/s, concurrency {hi['max_concurrency']} / {lo['max_concurrency']}", ratio, ">= 6x", ratio >= 6.0
        ),
    ]
    print_targets(
        f"target 6: sharegpt, {args.num_prompts} prompts, {args.output_len} out; "
        + ", ".join(f"c{r['max_concurrency']} {r['output_throughput']:.1f} tok/s" for r in runs),
        targets,
    )
    out = {
        "benchmark": "scaling",
        "config": vars(args),
        "workload": "sharegpt",
        "runs": runs,
        "ratio": ratio,
        "targets": targets,
    }
    write_result("scaling", out)
    return out


if __name__ == "__main__":
    main()
