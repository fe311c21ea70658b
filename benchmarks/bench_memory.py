"""Issue 7 target 7: memory of the three server processes.

Launches the server (bench-llama-40m, dummy weights, --max-total-tokens 65536) and samples the RSS of the HTTP
(launcher), scheduler and detokenizer processes every --interval seconds in a thread (psutil) from start-up to
the end of a workload that touches the whole KV pool: --fill x max_total_tokens tokens of distinct random
prompts (1024 tokens each, all at once, 16 output tokens; the pool is written through and evicted from; its
pages are committed only when written), then a few JSON-schema requests (grammar compile and masks).

Budget: the scheduler's peak RSS <= weights + KV pool + 1 GiB, where weights = parameter count (from config.json)
x dtype bytes and KV pool = 2 x layers x kv_heads x head_dim x dtype bytes x max_total_tokens (from
/get_server_info). The HTTP and detokenizer processes must map no libtorch (/proc/<pid>/maps; no torch means no
tensors, so no weights) and stay under 400 MB RSS each.

  python benchmarks/bench_memory.py                 # writes benchmarks/results/memory.json
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from bench_json_decode import PERSON_SCHEMA
from common import BENCH_MODEL
from native_client import launched, print_targets, run_requests, server_info, target, write_result

GIB = 1 << 30
MB = 1_000_000
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


class RssSampler(threading.Thread):
    """Samples the RSS (bytes) of named processes every ``interval`` seconds until :meth:`stop`; keeps the peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.peak = dict.fromkeys(pids, 0)
        self.samples = 0
        self.timeline: list[tuple[float, dict[str, int]]] = []  # (seconds since start, RSS bytes by name)
        self._t0 = time.perf_counter()
        self._halt = threading.Event()

    def sample(self) -> dict[str, int]:
        """One reading of every process (0 for one that is gone); updates the peaks."""
        now = {}
        for name, proc in self.procs.items():
            try:
                now[name] = proc.memory_info().rss
            except psutil.Error:
                now[name] = 0
            self.peak[name] = max(self.peak[name], now[name])
        self.samples += 1
        self.timeline.append((time.perf_counter() - self._t0, now))
        return now

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """End sampling (takes one last reading first)."""
        self.sample()
        self._halt.set()
        self.join()


def maps_torch(pid: int) -> list[str]:
    """Paths of torch shared libraries mapped into ``pid`` (empty: torch was never imported there)."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if "libtorch" in path or "/torch/_C" in path or "libc10" in path:
            paths.add(path)
    return sorted(paths)


def weight_bytes(config: dict[str, Any], dtype_bytes: int) -> tuple[int, int]:
    """(parameter count, bytes) of a Llama-family model from its config.json (embedding tied or not)."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim", h // heads)
    vocab = config["vocab_size"]
    attn = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2
    if config.get("attention_bias"):
        attn += heads * head_dim + 2 * kv_heads * head_dim
    per_layer = attn + 3 * h * inter + 2 * h
    params = vocab * h * (1 if config.get("tie_word_embeddings") else 2) + layers * per_layer + h
    return params, params * dtype_bytes


def kv_pool_bytes(config: dict[str, Any], tokens: int, dtype_bytes: int) -> int:
    """K and V buffers of every layer for ``tokens`` slots, in bytes."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    kv_heads = config.get("num_key_value_heads", heads)
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes * tokens


def fill_payloads(total_tokens: int, prompt_len: int, vocab: int, seed: int = 0) -> list[dict[str, Any]]:
    """Distinct random prompts of ``prompt_len`` tokens adding up to ``total_tokens``, 16 output tokens each."""
    rng = random.Random(seed)
    n = max(1, total_tokens // prompt_len)
    params = {"max_new_tokens": 16, "ignore_eos": True, "temperature": 0.0}
    return [
        {"input_ids": [rng.randrange(3, vocab) for _ in range(prompt_len)], "sampling_params": params} for _ in range(n)
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Launch, load, sample and print the breakdown."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(BENCH_MODEL))
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--max-total-tokens", type=int, default=65536)
    p.add_argument("--server-args", default="", help="extra flags for the launched server, one string")
    p.add_argument("--fill", type=float, default=1.05, help="prompt tokens sent, as a multiple of the KV pool")
    p.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds")
    args = p.parse_args(argv)

    config = json.loads((Path(args.model) / "config.json").read_text())
    extra = ["--max-total-tokens", str(args.max_total_tokens), *args.server_args.split()]
    with launched(args.model, args.load_format, extra) as (proc, base):
        info = server_info(base)
        pids = {"http": proc.pid, **info["pids"]}
        sampler = RssSampler(pids, args.interval)
        at_ready = sampler.sample()
        sampler.start()
        t0 = time.perf_counter()
        fill = fill_payloads(int(args.fill * info["max_total_tokens"]), 1024, int(info["vocab_size"]))
        fill_results, _ = run_requests(base, fill)
        schema = {"json_schema": json.dumps(PERSON_SCHEMA), "max_new_tokens": 64, "temperature": 0.0}
        json_results, _ = run_requests(base, [{"text": f"Person {i}:", "sampling_params": schema} for i in range(16)])
        after = server_info(base)
        sampler.stop()
        torch_maps = {name: maps_torch(pid) for name, pid in pids.items()}
    failed = sum(not r.ok for r in fill_results + json_results)

    dtype_bytes = DTYPE_BYTES.get(str(info.get("dtype", "float32")).replace("torch.", ""), 4)
    params, w_bytes = weight_bytes(config, dtype_bytes)
    kv = kv_pool_bytes(config, int(info["max_total_tokens"]), dtype_bytes)
    budget = w_bytes + kv + GIB
    peak = sampler.peak
    rows = [
        target(
            "scheduler peak RSS / (weights + KV + 1 GiB)",
            peak["scheduler"] / budget,
            "<= 100%",
            peak["scheduler"] <= budget,
            "{:.1%}",
        ),
        target(
            "HTTP peak RSS (MB)",
            peak["http"] / MB,
            "< 400 MB",
            peak["http"] < 400 * MB and not torch_maps["http"],
            "{:.0f}",
        ),
        target(
            "detokenizer peak RSS (MB)",
            peak["detokenizer"] / MB,
            "< 400 MB",
            peak["detokenizer"] < 400 * MB and not torch_maps["detokenizer"],
            "{:.0f}",
        ),
    ]
    print(
        f"\nworkload: {len(fill)} x 1024 random prompt tokens + 16 JSON requests in {time.perf_counter() - t0:.1f} s, "
        f"{failed} failed, {after['num_retractions']} retractions, {sampler.samples} RSS samples"
    )
    print(
        f"weights {params / 1e6:.1f} M params x {dtype_bytes} B = {w_bytes / MB:.0f} MB; KV pool "
        f"{info['max_total_tokens']} tokens = {kv / MB:.0f} MB; budget {budget / MB:.0f} MB"
    )
    print(f"{'process':<13}{'pid':>8}{'RSS ready (MB)':>16}{'peak RSS (MB)':>15}  libtorch mapped")
    for name, pid in pids.items():
        print(
            f"{name:<13}{pid:>8}{at_ready[name] / MB:>16.0f}{peak[name] / MB:>15.0f}  "
            f"{'yes' if torch_maps[name] else 'no'}"
        )
    overhead = peak["scheduler"] - w_bytes - kv
    print(f"scheduler peak - weights - KV pool = {overhead / MB:.0f} MB (runtime, torch, activations; budget 1074 MB)")
    print_targets("target 7: memory", rows)
    report = {
        "benchmark": "memory",
        "config": vars(args),
        "max_total_tokens": info["max_total_tokens"],
        "params": params,
        "weight_bytes": w_bytes,
        "kv_pool_bytes": kv,
        "budget_bytes": budget,
        "scheduler_overhead_bytes": overhead,
        "rss_at_ready_bytes": at_ready,
        "peak_rss_bytes": peak,
        "torch_libraries": torch_maps,
        "pids": pids,
        "timeline": [{"t": round(t, 2), **{k: v // MB for k, v in rss.items()}} for t, rss in sampler.timeline],
        "failed_requests": failed,
        "targets": rows,
    }
    write_result("memory", report)
    return report


if __name__ == "__main__":
    main()
