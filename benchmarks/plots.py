"""Plots for benchmarks/README.md from the JSON results (matplotlib, Agg backend).

Reads benchmarks/results/{scaling,prefix_cache,json_decode,memory}.json (whichever exist) and writes small PNGs
to benchmarks/plots/: throughput vs concurrency, TTFT / TPOT percentiles, cache on/off, JSON decoding and
memory. A missing result file skips its plots.

  python benchmarks/plots.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

HERE = Path(__file__).resolve().parent
MB = 1_000_000


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _save(fig: Any, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def _bar_labels(ax: Any, bars: Any, fmt: str) -> None:
    for b in bars:
        ax.annotate(
            fmt.format(b.get_height()),
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def plot_scaling(r: dict[str, Any], out: Path) -> list[Path]:
    """Output tok/s vs concurrency (with linear scaling from concurrency 1 for reference), and TTFT / TPOT
    percentiles (ms) per concurrency."""
    runs = r["runs"]
    conc = [x["max_concurrency"] for x in runs]
    tps = [x["output_throughput"] for x in runs]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(conc, tps, "o-", label="output tok/s")
    ax.plot(conc, [tps[0] * c / conc[0] for c in conc], "--", color="grey", label="linear from c=1")
    ax.set_xscale("log", base=2)
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_xlabel("max concurrency")
    ax.set_ylabel("output tokens / s")
    ax.set_title(f"ShareGPT, {r['config']['output_len']} out tok: {r['ratio']:.1f}x at c={conc[-1]}")
    ax.legend(fontsize=8)
    paths = [_save(fig, out, "throughput_vs_concurrency")]

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    width = 0.25
    for ax, key, name in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "tpot_ms", "TPOT")):
        for i, q in enumerate(("p50", "p90", "p99")):
            xs = [j + (i - 1) * width for j in range(len(runs))]
            ax.bar(xs, [x[key][q] for x in runs], width, label=q)
        ax.set_xticks(range(len(runs)), [f"c={c}" for c in conc])
        ax.set_ylabel("ms")
        ax.set_title(f"{name} percentiles (ShareGPT)")
        ax.legend(fontsize=8)
    paths.append(_save(fig, out, "latency_percentiles"))
    return paths


def plot_prefix_cache(r: dict[str, Any], out: Path) -> list[Path]:
    """Wall time (s) and cache hit rate for radix cache off / on (fcfs) / on (lpm)."""
    labels = ["cache off", "cache on, fcfs", "cache on, lpm"]
    runs = [r["runs"][k] for k in labels]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    bars = axes[0].bar(labels, [x["duration_s"] for x in runs], color=["#bbbbbb", "#6699cc", "#336699"])
    _bar_labels(axes[0], bars, "{:.1f} s")
    axes[0].set_ylabel("wall time for all requests (s)")
    axes[0].set_title(
        f"shared prefix {r['config']['groups']}x{r['config']['per_group']}: {r['speedup_on_vs_off']:.1f}x"
    )
    bars = axes[1].bar(labels, [100 * (x["cache_hit_rate"] or 0) for x in runs], color="#6699cc")
    _bar_labels(axes[1], bars, "{:.1f}%")
    axes[1].axhline(100 * r["ideal_hit_rate"], ls="--", color="grey", label="ideal")
    axes[1].set_ylabel("cache hit rate (% of prompt tokens)")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    return [_save(fig, out, "prefix_cache")]


def plot_json_decode(r: dict[str, Any], out: Path) -> list[Path]:
    """Output tok/s with vs without a JSON schema (same token counts), and req/s with jump-forward off / on."""
    runs = r["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    bars = axes[0].bar(
        ["unconstrained", "json_schema"],
        [runs["unconstrained"]["output_throughput"], runs["json_schema"]["output_throughput"]],
        color=["#bbbbbb", "#336699"],
    )
    _bar_labels(axes[0], bars, "{:.0f}")
    axes[0].set_ylabel("output tokens / s")
    axes[0].set_title(f"schema vs free, c={r['config']['concurrency']}: {r['schema_vs_unconstrained']:.2f}x")
    bars = axes[1].bar(
        ["jump-forward off", "jump-forward on"],
        [runs["jump_forward_off"]["request_throughput"], runs["jump_forward_on"]["request_throughput"]],
        color=["#bbbbbb", "#336699"],
    )
    _bar_labels(axes[1], bars, "{:.2f}")
    axes[1].set_ylabel("requests / s")
    axes[1].set_title(f"fixed-key schema: {r['jump_forward_speedup_req_s']:.2f}x")
    return [_save(fig, out, "json_decode")]


def plot_memory(r: dict[str, Any], out: Path) -> list[Path]:
    """Peak RSS (MB) per process; the scheduler's split into weights, KV pool and the rest, against its budget."""
    peak = r["peak_rss_bytes"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    w, kv = r["weight_bytes"] / MB, r["kv_pool_bytes"] / MB
    rest = max(0.0, peak["scheduler"] / MB - w - kv)
    ax.bar(["scheduler"], [w], label="weights", color="#336699")
    ax.bar(["scheduler"], [kv], bottom=[w], label="KV pool", color="#6699cc")
    ax.bar(["scheduler"], [rest], bottom=[w + kv], label="rest of peak RSS", color="#bbbbbb")
    ax.bar(["http", "detokenizer"], [peak["http"] / MB, peak["detokenizer"] / MB], color="#bbbbbb")
    ax.hlines(r["budget_bytes"] / MB, -0.4, 0.4, colors="red", linestyles="--", label="budget")
    ax.hlines(400, 0.6, 2.4, colors="orange", linestyles="--", label="400 MB")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title(f"memory, max_total_tokens={r['max_total_tokens']}")
    ax.legend(fontsize=7)
    paths = [_save(fig, out, "memory")]
    if r.get("timeline"):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        t = [x["t"] for x in r["timeline"]]
        for name in ("scheduler", "http", "detokenizer"):
            ax.plot(t, [x[name] for x in r["timeline"]], label=name)
        ax.axhline(
            (r["weight_bytes"] + r["kv_pool_bytes"]) / MB
            + r["rss_at_ready_bytes"]["scheduler"] / MB
            - r["weight_bytes"] / MB,
            ls=":",
            color="grey",
            label="RSS at ready + KV pool",
        )
        ax.axhline(r["budget_bytes"] / MB, ls="--", color="red", label="budget")
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MB)")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out, "memory_timeline"))
    return paths


def main(argv: list[str] | None = None) -> list[Path]:
    """Write every plot whose results exist; returns the PNG paths."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--out", default=str(HERE / "plots"))
    args = p.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    paths: list[Path] = []
    for name, fn in (
        ("scaling", plot_scaling),
        ("prefix_cache", plot_prefix_cache),
        ("json_decode", plot_json_decode),
        ("memory", plot_memory),
    ):
        r = _load(results, name)
        if r is None:
            print(f"skip {name}: no {results / name}.json")
            continue
        paths += fn(r, out)
    return paths


if __name__ == "__main__":
    main()
