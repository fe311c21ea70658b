"""Prefill compute efficiency: model FLOP/s during prefill vs the float32 matmul FLOP/s torch reaches here.

1. Matmul peak: best of several timed runs of ``a @ b`` for 2048x2048 @ 2048x2048 and of ``F.linear`` for each
   of the model's linear-layer shapes at M = 4096 tokens (float32, this process's torch threads).
2. Prefill: the Engine (bench-llama-40m, dummy weights, float32) prefills ``--prompts`` random prompts of
   ``--prompt-len`` tokens with ``max_new_tokens=1`` (one extend step over all of them plus the first token),
   radix cache flushed before each repeat; best of ``--repeats``.
3. FLOPs per prompt token = 2 * non-embedding parameters (the GEMMs each token runs through) + causal attention
   (per layer ``4 * num_heads * head_dim * (n + 1) / 2`` for a prompt of n tokens: QK^T and PV over the mean
   context); the LM head runs only on the last token of each prompt and is counted apart.

Efficiency = achieved prefill FLOP/s / the matmul peak (target >= 50%).

Run: python benchmarks/bench_prefill_flops.py [--prompts 8] [--prompt-len 512] [--repeats 5]
Writes benchmarks/results/prefill_flops.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import BENCH_MODEL, RESULTS

from radixgen.runtime import Engine


def best_seconds(fn: Callable[[], Any], repeats: int, inner: int) -> float:
    """Best (minimum) mean seconds per call of ``fn`` over ``repeats`` timings of ``inner`` calls each."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def matmul_peak(shapes: list[tuple[int, int, int]], repeats: int) -> dict[str, Any]:
    """Best float32 GFLOP/s of a square 2048 matmul and of ``F.linear`` on each (M, K, N) shape."""
    out: dict[str, Any] = {}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    out["mm_2048"] = 2 * 2048**3 / best_seconds(lambda: a @ b, repeats, 3) / 1e9
    for m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        out[f"linear_{m}x{k}x{n}"] = 2 * m * k * n / best_seconds(lambda x=x, w=w: F.linear(x, w), repeats, 3) / 1e9
    out["peak"] = max(out.values())
    return out


def model_flops(engine: Engine, prompt_len: int) -> dict[str, float]:
    """FLOPs per prompt token of a ``prompt_len``-token prefill (see the module docstring)."""
    cfg = engine.model_runner.model_config
    model = engine.model_runner.model
    embed = model.model.embed_tokens.weight.numel()
    non_embedding = sum(p.numel() for p in model.parameters()) - embed  # tied LM head: counted in embed
    attn = cfg.num_hidden_layers * 4 * cfg.num_attention_heads * cfg.head_dim * (prompt_len + 1) / 2
    return {
        "params_non_embedding": non_embedding,
        "gemm_flops_per_token": 2.0 * non_embedding,
        "attention_flops_per_token": attn,
        "flops_per_token": 2.0 * non_embedding + attn,
        "lm_head_flops_per_prompt": 2.0 * embed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "prefill_flops.json"))
    args = parser.parse_args()

    tokens = args.prompts * args.prompt_len
    engine = Engine(
        str(BENCH_MODEL),
        load_format="dummy",
        max_total_tokens=max(65536, 2 * tokens),
        chunked_prefill_size=tokens,
        max_prefill_tokens=tokens,
    )
    cfg = engine.model_runner.model_config
    h, inter, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.q_size, cfg.kv_size
    shapes = [(tokens, h, q + 2 * kv), (tokens, q, h), (tokens, h, 2 * inter), (tokens, inter, h)]
    gen = torch.Generator().manual_seed(0)
    params = {"temperature": 0, "max_new_tokens": 1, "ignore_eos": True}
    times = []
    for r in range(args.repeats + 1):  # the first run warms up
        ids = torch.randint(3, cfg.vocab_size, (args.prompts, args.prompt_len), generator=gen).tolist()
        engine.flush_cache()
        t0 = time.perf_counter()
        engine.generate(input_ids=ids, sampling_params=params)
        if r:
            times.append(time.perf_counter() - t0)
    info = engine.get_server_info()["step_timing"].get("extend", {})
    peak = matmul_peak(shapes, args.repeats)  # after the prefill runs, so both see similar background load
    flops = model_flops(engine, args.prompt_len)
    best = min(times)
    total_flops = tokens * flops["flops_per_token"] + args.prompts * flops["lm_head_flops_per_prompt"]
    achieved = total_flops / best / 1e9
    report = {
        "torch_threads": torch.get_num_threads(),
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "prefill_seconds": times,
        "prefill_tokens_per_s": tokens / best,
        "model": flops,
        "achieved_gflops": achieved,
        "matmul_gflops": peak,
        "efficiency": achieved / peak["peak"],
        "extend_step_timing": info,
    }
    print(f"prefill {args.prompts} x {args.prompt_len} tokens: best {best * 1e3:.0f} ms = {tokens / best:.0f} tok/s")
    print(f"    {flops['flops_per_token'] / 1e6:.1f} MFLOP/token (GEMM {flops['gemm_flops_per_token'] / 1e6:.1f}, "
          f"attention {flops['attention_flops_per_token'] / 1e6:.1f}) -> {achieved:.1f} GFLOP/s")
    for name, v in peak.items():
        print(f"    matmul {name:<24} {v:7.1f} GFLOP/s")
    print(f"    efficiency {report['efficiency']:.1%} of the matmul peak (target >= 50%)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
