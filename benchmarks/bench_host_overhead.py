"""Host overhead of a decode step: where the scheduler loop's time goes at a steady batch (bench-llama-40m, dummy).

For each batch size (default 32 and 64): that many ShareGPT prompts (<= 256 tokens) are prefilled, then the
scheduler runs ``--steps`` decode steps with every request still running (ignore_eos, fixed output length longer
than the run), and the per-phase timers of the scheduler (runtime/step_timing.py) report milliseconds per step
and shares of schedule / prepare / forward / sample / grammar / output. Host overhead = the share of the step
outside the model forward (target <= 10% at batch 32).

Run: python benchmarks/bench_host_overhead.py [--batch-sizes 32,64] [--steps 64] [--repeats 3]
     [--dtype bfloat16] [--quantization w8a8_int8]   (batch 1: --batch-sizes 1)
Prints a table per batch size (median over repeats) and writes benchmarks/results/host_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch
from common import BENCH_MODEL, RESULTS, sharegpt_prompts

from radixgen.runtime import Engine
from radixgen.runtime.io_struct import TokenizedGenerateReq
from radixgen.runtime.sampling_params import SamplingParams
from radixgen.runtime.step_timing import PHASES


def measure(engine: Engine, prompts: list[list[int]], steps: int, tag: str) -> dict[str, Any]:
    """Admit ``prompts``, prefill them all, then time ``steps`` decode steps of the full batch."""
    sched = engine.scheduler
    params = SamplingParams(temperature=0, max_new_tokens=steps + 8, ignore_eos=True)
    for i, ids in enumerate(prompts):
        sched.add_request(TokenizedGenerateReq(rid=f"{tag}-{i}", input_ids=ids, sampling_params=params))
    while sched.waiting or sched.chunked_req is not None:
        sched.step()
    for _ in range(2):  # first decode steps allocate buffers
        sched.step()
    if len(sched.running) != len(prompts):
        raise RuntimeError(f"expected {len(prompts)} running requests, got {len(sched.running)}")
    engine.reset_step_timing()
    for _ in range(steps):
        sched.step()
    summary = engine.get_server_info()["step_timing"]["decode"]
    while sched.has_work():  # finish the requests so the next run starts from an idle engine
        sched.step()
    engine.flush_cache()
    return summary


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over runs of every per-phase figure (each run is one ``step_timing["decode"]`` summary)."""
    return {
        "steps": runs[0]["steps"],
        "mean_batch_size": runs[0]["mean_batch_size"],
        "ms_per_step": {p: statistics.median(r["ms_per_step"][p] for r in runs) for p in PHASES},
        "share": {p: statistics.median(r["share"][p] for r in runs) for p in PHASES},
        "total_ms_per_step": statistics.median(r["total_ms_per_step"] for r in runs),
        "host_overhead_share": statistics.median(r["host_overhead_share"] for r in runs),
        "host_overhead_share_runs": [r["host_overhead_share"] for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="float32", help="the model dtype (float32 | bfloat16)")
    parser.add_argument("--quantization", default=None, help="e.g. w8a8_int8 (with the LM head quantized too)")
    parser.add_argument("--out", default=str(RESULTS / "host_overhead.json"))
    args = parser.parse_args()

    sizes = [int(x) for x in args.batch_sizes.split(",")]
    quant = {"quantization": args.quantization, "quantize_lm_head": True} if args.quantization else {}
    engine = Engine(
        str(BENCH_MODEL),
        load_format="dummy",
        max_total_tokens=65536,
        chunked_prefill_size=4096,
        dtype=args.dtype,
        **quant,
    )
    prompts = sharegpt_prompts(engine.tokenizer, max(sizes), args.max_prompt_tokens)
    measure(engine, prompts[:4], 4, "warmup")
    report: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "steps": args.steps, "batches": {}}
    for bs in sizes:
        runs = [measure(engine, prompts[:bs], args.steps, f"bs{bs}-{r}") for r in range(args.repeats)]
        res = median_summary(runs)
        report["batches"][str(bs)] = res
        print(f"batch {bs}: {res['total_ms_per_step']:.2f} ms/step (median of {args.repeats} x {args.steps} steps)")
        for p in PHASES:
            print(f"    {p:<9} {res['ms_per_step'][p]:8.3f} ms  {res['share'][p]:6.1%}")
        runs_txt = ", ".join(f"{x:.1%}" for x in res["host_overhead_share_runs"])
        print(f"    host overhead {res['host_overhead_share']:.1%} (runs: {runs_txt}; target <= 10%)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
