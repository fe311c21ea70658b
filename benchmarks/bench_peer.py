"""Issue 13: radixgen against llama.cpp's ``llama-server`` on the same CPU, weights and prompts, side by side.

For each of --models x --precisions the model's seeded dummy weights are written once as a Hugging Face directory
(radixgen's own ``--load-format dummy`` weights, saved) and converted with llama.cpp's own converter
(peer_setup.py; cached under --cache-dir). Then every --workloads entry runs --repeats rounds; a round runs it
once on each server, radixgen first in even rounds and llama.cpp first in odd ones. Each run starts a fresh server
(never both at once: 2 cores), so both begin with an empty prompt cache (llama-server has no cache flush), sends
bench_serving.py's untimed warm-up request, times the workload with bench_serving's streaming /v1/completions
client, and stops the server. Figures are medians over rounds; a ratio is the median of the per-round ratios
radixgen / llama.cpp. The 1-minute load average is recorded before and after every run, and CPU seconds of each
server's process tree as a cross-check that moves less with outside load than wall time, and the machine's CPU use
by others in the second before each timed run (--wait-quiet waits for a quiet machine). The machine is shared: runs
with others' CPU use well above 0% are not results (llama.cpp's spinning threads suffer most from competing load).

Servers: ``radixgen serve`` with its default flags plus ``--model`` and the precision's flags (--radixgen-args adds
more); ``llama-server -m X.gguf -c 65536 -np 16 -t 2`` (--llama-args). Precisions: f32 (radixgen float32, GGUF F32),
bf16 (radixgen bfloat16, GGUF F16), q8 (radixgen w8a8_int8 incl. the LM head — int8 weights and per-token int8
activations, as llama.cpp's CPU Q8_0 dot products quantize the activations to Q8_0 —, GGUF Q8_0 from
llama-quantize; llama.cpp's Q8_0 quantizes the tied embedding / output matrix too), q8wo (the same GGUF against
radixgen's int8 weight-only, bfloat16-rounded activations). Each keeps its default KV cache type (radixgen:
the model dtype; llama.cpp: F16). A server that fails to start is recorded as that row's error and the run goes on.

Workloads (--workloads: names, or the groups sharegpt / all):
  sharegpt-c1, -c4, -c16   --num-prompts ShareGPT first turns (<= 256 tokens), 64 out (ignore_eos), concurrency 1/4/16
  shared-prefix-c16        4 groups x 8 prompts, ~1,000-token GSM8K prefixes per group, 32 out, concurrency 16
  json-c16                 --num-prompts ShareGPT prompts (<= 128 tokens) behind "Reply with one JSON object.",
                           bench_json_decode's person schema (``json_schema`` field), up to 128 tokens, stops at
                           the end of the document; req/s is the figure, beside each server's output tokens
                           per request (the schema leaves lengths to the model and each server's grammar: radixgen's
                           fixed ", " / ": " separators by default, llama.cpp's own whitespace rules)
Before the first timed run of a row each server also answers a few greedy probes (identical texts at f32 show that
both serve the same weights) and one person-schema request, whose document is validated with jsonschema.

  python benchmarks/bench_peer.py --quick --models 40m --precisions f32      # smoke check, a few minutes
  python benchmarks/bench_peer.py --models 40m,220m --precisions f32,bf16,q8 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_serving
import httpx
import psutil
from bench_json_decode import PERSON_SCHEMA
from common import BENCH_220M_CONFIG, BENCH_MODEL, RESULTS
from peer_report import SERVERS, plot_peer, print_peer_table, run_line
from peer_setup import (
    DEFAULT_CACHE,
    GGUF_TYPES,
    checkpoint,
    environment,
    gguf_file,
    gguf_tensor_types,
    launch_llama_server,
)

MODELS: dict[str, Path | dict[str, Any]] = {"40m": BENCH_MODEL, "220m": BENCH_220M_CONFIG}
JSON_HEAD = "Reply with one JSON object.\n\n"
PROBES = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,")


@dataclass(frozen=True)
class Precision:
    """One side-by-side precision: radixgen's flags and the GGUF type llama.cpp loads."""

    radixgen_args: tuple[str, ...]
    gguf_type: str

    def __post_init__(self) -> None:
        if self.gguf_type not in GGUF_TYPES:
            raise ValueError(f"gguf_type: {self.gguf_type!r} is not one of {GGUF_TYPES}")


PRECISIONS = {
    "f32": Precision(("--dtype", "float32"), "f32"),
    "bf16": Precision(("--dtype", "bfloat16"), "f16"),
    "q8": Precision(("--dtype", "float32", "--quantization", "w8a8_int8", "--quantize-lm-head"), "q8_0"),
    "q8wo": Precision(("--dtype", "float32", "--quantization", "int8wo", "--quantize-lm-head"), "q8_0"),
}


@dataclass(frozen=True)
class Workload:
    """A named load: bench_serving.py flags that build its prompts and its client settings, the concurrency, and
    extra request fields. ``metric``: the figure compared (``output_throughput`` or ``request_throughput``)."""

    name: str
    serving_args: tuple[str, ...]
    concurrency: int
    extra_body: dict[str, Any] = field(default_factory=dict)
    prompt_head: str = ""
    metric: str = "output_throughput"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.metric not in ("output_throughput", "request_throughput"):
            raise ValueError(f"metric: {self.metric!r} is not output_throughput or request_throughput")


def workloads(num_prompts: int, quick: bool) -> dict[str, Workload]:
    """The issue's workloads (--quick: 4 prompts, 8 output tokens, 256-token prefixes)."""
    n = str(4 if quick else num_prompts)

    def out(tokens: int) -> tuple[str, str]:
        return "--output-len", str(8 if quick else tokens)

    share = ("--workload", "sharegpt", "--num-prompts", n, "--max-prompt-tokens", "256", *out(64))
    groups = ("2", "2", "256") if quick else ("4", "8", "1000")
    prefix = ("--workload", "shared-prefix", "--groups", groups[0], "--prompts-per-group", groups[1])
    js = ("--workload", "sharegpt", "--num-prompts", n, "--max-prompt-tokens", "128", *out(128), "--no-ignore-eos")
    return {
        **{f"sharegpt-c{c}": Workload(f"sharegpt-c{c}", share, c) for c in (1, 4, 16)},
        "shared-prefix-c16": Workload("shared-prefix-c16", (*prefix, "--prefix-tokens", groups[2], *out(32)), 16),
        "json-c16": Workload(
            "json-c16", js, 16, {"json_schema": PERSON_SCHEMA}, JSON_HEAD, metric="request_throughput"
        ),
    }


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (radixgen's scheduler and detokenizer)."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _wait_quiet(max_wait: float, below_pct: float) -> tuple[float, float]:
    """Sample the whole machine's CPU use (%, all cores) over 1-s windows until a sample is below ``below_pct`` or
    ``max_wait`` seconds have passed (0: one sample); returns (the last sample, seconds spent). Called with the
    freshly started server idle, so the figure is other programs' load."""
    t0 = time.monotonic()
    while True:
        busy = float(psutil.cpu_percent(interval=1.0))
        if busy < below_pct or time.monotonic() - t0 >= max_wait:
            return busy, time.monotonic() - t0


def _complete(base: str, body: dict[str, Any]) -> tuple[str, str]:
    """A non-streaming /v1/completions call; returns (text, finish_reason)."""
    resp = httpx.post(f"{base}/v1/completions", json=body, timeout=600.0)
    resp.raise_for_status()
    choice = resp.json()["choices"][0]
    return str(choice["text"]), str(choice.get("finish_reason"))


def _probe(base: str, model: str) -> dict[str, Any]:
    """Greedy 16-token completions of PROBES (ignore_eos), and one person-schema document (up to 128 tokens)
    with whether it parses and validates (``jsonschema``) or was cut at max_tokens, non-streaming."""
    import jsonschema

    greedy = {"model": model, "max_tokens": 16, "temperature": 0.0, "ignore_eos": True}
    texts = [_complete(base, {**greedy, "prompt": prompt})[0] for prompt in PROBES]
    body = {"model": model, "prompt": JSON_HEAD + PROBES[0], "max_tokens": 128, "temperature": 0.0}
    doc, finish = _complete(base, {**body, "json_schema": PERSON_SCHEMA})
    try:
        jsonschema.validate(json.loads(doc), PERSON_SCHEMA)
        valid = "valid"
    except (ValueError, jsonschema.ValidationError) as e:
        cut = " (cut at max_tokens)" if finish == "length" else ""
        valid = f"invalid{cut}: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return {"greedy": texts, "json": doc, "json_check": valid}


class Runner:
    """Runs one (model, precision) row: fresh servers per run, alternating, results kept per workload."""

    def __init__(self, args: argparse.Namespace, precision: str, hf_dir: Path, gguf: Path) -> None:
        self.args, self.hf_dir, self.gguf = args, hf_dir, gguf
        self.radixgen_flags = [*PRECISIONS[precision].radixgen_args, *args.radixgen_args.split()]
        self.start_error: dict[str, str] = {}  # server -> why it would not start (its later runs are skipped)
        self.probes: dict[str, dict[str, Any]] = {}

    def _start(self, server: str) -> tuple[Any, str]:
        if server == "radixgen":
            timeout = self.args.startup_timeout
            return bench_serving.launch_server(str(self.hf_dir), "safetensors", self.radixgen_flags, timeout)
        return launch_llama_server(self.gguf, self.args.llama_args.split(), self.args.startup_timeout)

    def run(self, server: str, wl: Workload, prompts: list[str], ns: argparse.Namespace) -> dict[str, Any]:
        """One timed run of ``wl`` on a fresh ``server``; returns bench_serving's metrics plus start-up seconds,
        CPU seconds of the server's processes, the machine's CPU use just before (others' load) and the 1-minute
        load averages right before and after the timed part (or ``{"error": ...}``)."""
        rec: dict[str, Any] = {"server": server, "load_before": os.getloadavg()}
        if server in self.start_error:
            return {**rec, "error": self.start_error[server], "skipped": True}
        t0 = time.perf_counter()
        try:
            proc, base = self._start(server)
        except SystemExit as e:
            self.start_error[server] = str(e)[-2000:]
            return {**rec, "error": self.start_error[server], "load_after": os.getloadavg()}
        try:
            rec["startup_s"] = time.perf_counter() - t0
            try:
                model = httpx.get(f"{base}/v1/models", timeout=30.0).json()["data"][0]["id"]
                if server not in self.probes:
                    self.probes[server] = _probe(base, model)
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
                return {**rec, "error": f"before the timed run: {type(e).__name__}: {e}"}
            rec["busy_pct_before"], rec["quiet_wait_s"] = _wait_quiet(self.args.wait_quiet, self.args.quiet_below)
            rec["load_before"] = os.getloadavg()
            cpu0 = _tree_cpu_seconds(proc.pid)
            load = bench_serving.run_load(base, model, prompts, ns, wl.concurrency, wl.extra_body)
            results, duration = asyncio.run(load)
            rec["cpu_s"] = _tree_cpu_seconds(proc.pid) - cpu0  # includes the untimed warm-up request
        finally:
            bench_serving.stop_server(proc)
        rec["load_after"] = os.getloadavg()
        return {**rec, **bench_serving.summarize(results, duration)}


def _median(runs: list[dict[str, Any]], get: Any) -> float | None:
    vals = [get(r) for r in runs if "error" not in r and r["completed"]]
    return statistics.median(vals) if vals else None


def summarize_workload(wl: Workload, rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians per server over rounds, and the median of the per-round ratios radixgen / llama.cpp of
    ``wl.metric``."""
    out: dict[str, Any] = {"metric": wl.metric, "concurrency": wl.concurrency}
    for s in SERVERS:
        runs = [r[s] for r in rounds]
        out[s] = {
            "output_throughput": _median(runs, lambda r: r["output_throughput"]),
            "request_throughput": _median(runs, lambda r: r["request_throughput"]),
            "tpot_p50_ms": _median(runs, lambda r: r["tpot_ms"]["p50"]),
            "ttft_p50_ms": _median(runs, lambda r: r["ttft_ms"]["p50"]),
            "output_tokens_per_request": _median(runs, lambda r: r["total_output_tokens"] / r["completed"]),
            "cpu_s_per_1k_out": _median(runs, lambda r: 1000 * r["cpu_s"] / max(1, r["total_output_tokens"])),
            "errors": sorted({str(r.get("error") or "; ".join(r.get("errors", []))) for r in runs} - {""}),
        }
    ratios = [
        r["radixgen"][wl.metric] / r["llama.cpp"][wl.metric]
        for r in rounds
        if all("error" not in r[s] and r[s][wl.metric] > 0 for s in SERVERS)
    ]
    out["ratio"] = statistics.median(ratios) if ratios else None
    out["ratios"] = ratios
    return out


def run_row(args: argparse.Namespace, row: dict[str, Any], save: Callable[[], None]) -> None:
    """Every workload of one (model, precision) row, alternated, filled into ``row`` (``model``, ``precision``);
    ``save()`` after each workload."""
    name, precision = row["model"], row["precision"]
    hf_dir = checkpoint(args.cache, name, MODELS[name], args.seed)
    gguf = gguf_file(hf_dir, PRECISIONS[precision].gguf_type, args.cache)
    tok = bench_serving.load_tokenizer(str(hf_dir))
    runner = Runner(args, precision, hf_dir, gguf)
    row.update(hf_dir=str(hf_dir), gguf=str(gguf), gguf_tensor_types=gguf_tensor_types(gguf, args.cache))
    row.update(radixgen_flags=runner.radixgen_flags, workloads={}, probes=runner.probes, probes_identical=None)
    for wl in args.workload_list:
        ns = bench_serving.parse_args(list(wl.serving_args))
        prompts = [wl.prompt_head + p for p in bench_serving.build_prompts(ns, tok)]
        rounds: list[dict[str, dict[str, Any]]] = []
        for r in range(args.repeats):
            order = SERVERS if r % 2 == 0 else SERVERS[::-1]
            rounds.append({s: runner.run(s, wl, prompts, ns) for s in order})
            for s in SERVERS:
                print(run_line(f"{name} {precision} {wl.name} round {r}", rounds[-1][s]), flush=True)
        row["workloads"][wl.name] = {"runs": rounds, "summary": summarize_workload(wl, rounds)}
        texts = [runner.probes[s]["greedy"] for s in SERVERS if s in runner.probes]
        row["probes_identical"] = sum(a == b for a, b in zip(*texts, strict=True)) if len(texts) == 2 else None
        save()


def _choose(spec: str, known: dict[str, Any], flag: str, groups: dict[str, list[str]] | None = None) -> list[str]:
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        expanded = (groups or {}).get(part, [part])
        unknown = [x for x in expanded if x not in known]
        if unknown:
            raise SystemExit(f"{flag}: unknown {unknown[0]!r} (choose from {sorted(known)} or {sorted(groups or {})})")
        names += [x for x in expanded if x not in names]
    if not names:
        raise SystemExit(f"{flag}: empty")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="40m,220m", help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--precisions", default="f32,bf16,q8", help=f"comma-separated, of {sorted(PRECISIONS)}")
    p.add_argument("--workloads", default="all", help="comma-separated names, or the groups sharegpt / all")
    p.add_argument("--repeats", type=int, default=3, help="alternated rounds per workload; medians are reported")
    p.add_argument("--num-prompts", type=int, default=32, help="sharegpt / json: requests per run")
    p.add_argument("--quick", action="store_true", help="smoke check: 4 prompts, 8 output tokens, 1 round")
    p.add_argument("--seed", type=int, default=0, help="seed of the dummy weights")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="weights, GGUF files and the converter")
    p.add_argument("--radixgen-args", default="", help="extra flags for radixgen serve, one string")
    p.add_argument("--llama-args", default="-c 65536 -np 16 -t 2", help="llama-server flags besides -m/--host/--port")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds "
        "for the machine's CPU use (others' load) to drop below --quiet-below",
    )
    p.add_argument("--quiet-below", type=float, default=25.0, help="percent of all cores, for --wait-quiet")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for a server's /health")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_peer_<time>.json)")
    p.add_argument("--plot-dir", default=None, help="PNG folder (default benchmarks/plots; results/ with --quick)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.num_prompts < 1:
        raise SystemExit("--repeats and --num-prompts must be >= 1")
    if args.quick and "--repeats" not in (argv if argv is not None else sys.argv[1:]):
        args.repeats = 1
    all_wl = workloads(args.num_prompts, args.quick)
    groups = {"all": list(all_wl), "sharegpt": [w for w in all_wl if w.startswith("sharegpt")]}
    args.model_list = _choose(args.models, MODELS, "--models")
    args.precision_list = _choose(args.precisions, PRECISIONS, "--precisions")
    args.workload_list = [all_wl[w] for w in _choose(args.workloads, all_wl, "--workloads", groups)]
    args.cache = Path(args.cache_dir).expanduser()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every row, print the tables, write the JSON and the plots; returns the report."""
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else RESULTS / f"bench_peer_{stamp}{'_quick' if args.quick else ''}.json"
    plot_dir = Path(args.plot_dir) if args.plot_dir else (RESULTS if args.quick else Path(__file__).parent / "plots")
    report: dict[str, Any] = {
        "benchmark": "bench_peer",
        "started": stamp,
        "argv": sys.argv if argv is None else argv,
        "config": {k: v for k, v in vars(args).items() if k not in ("workload_list", "cache")},
        "workloads": {
            w.name: {
                "bench_serving_args": w.serving_args,
                "concurrency": w.concurrency,
                "extra_body": w.extra_body,
                "metric": w.metric,
            }
            for w in args.workload_list
        },
        "environment": environment(),
        "load_average_start": os.getloadavg(),
        "rows": [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every workload, so that a long run that stops keeps what it measured
        out.write_text(json.dumps(bench_serving._finite(report), indent=2, default=str))

    for name in args.model_list:
        for precision in args.precision_list:
            report["rows"].append({"model": name, "precision": precision})
            run_row(args, report["rows"][-1], save)
    report["load_average_end"] = os.getloadavg()
    save()
    print_peer_table(report)
    print(f"wrote {out}")
    plot_peer(report, plot_dir, f"peer{'_quick' if args.quick else ''}")
    return report


if __name__ == "__main__":
    main()
