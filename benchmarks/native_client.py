"""Shared plumbing of the target benchmarks: a launched server as a context manager, a streaming client for the
native ``POST /generate`` API, result files and the PASS/MISS table.

The launcher, metrics and table printer are bench_serving.py's; this module adds what the OpenAI client cannot
see: ``meta_info`` (``cached_tokens``, ``jump_forward_tokens``, finish reasons) and prompts sent as token ids,
so that hit rates are computed on exactly the tokens the server received.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_serving import RequestResult, StreamError, _finite, launch_server, sse_messages, stop_server, summarize

RESULTS = Path(__file__).resolve().parent / "results"
_FLUSH_TIMEOUT_S = 30.0


@dataclass
class NativeResult(RequestResult):
    """One /generate request: bench_serving's timings plus the native meta_info fields."""

    jump_forward_tokens: int = 0
    finish_reason: Any = None
    text: str = ""


@contextmanager
def launched(model: str, load_format: str, extra: list[str]) -> Iterator[tuple[Any, str]]:
    """Start our server with ``extra`` flags for the duration of the block; yields (process, base_url)."""
    proc, base = launch_server(model, load_format, extra)
    try:
        yield proc, base
    finally:
        stop_server(proc)


def server_info(base: str) -> dict[str, Any]:
    """``GET /get_server_info`` (server args, scheduler stats and the child ``pids``)."""
    resp = httpx.get(f"{base}/get_server_info", timeout=30.0)
    resp.raise_for_status()
    return resp.json()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far, in seconds. Unlike wall time it barely
    moves with other programs' load, so a ratio of CPU seconds cross-checks a wall-time ratio on a busy machine."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def measured_run(
    base: str,
    payloads: list[dict[str, Any]],
    max_concurrency: int | None = None,
    warmup: dict[str, Any] | None = None,
    flush: bool = True,
) -> tuple[list[NativeResult], dict[str, Any]]:
    """:func:`run_requests` on a cold cache (``flush``) with the scheduler's CPU seconds measured around it;
    returns the results and :func:`summarize_native`'s metrics plus ``scheduler_cpu_s``."""
    if flush:
        flush_cache(base)
    if warmup is not None:
        run_requests(base, [warmup])
    pid = int(server_info(base)["pids"]["scheduler"])
    cpu0 = cpu_seconds(pid)
    results, duration = run_requests(base, payloads, max_concurrency)
    m = summarize_native(results, duration)
    m["scheduler_cpu_s"] = cpu_seconds(pid) - cpu0  # includes the 2-token untimed warm-up request
    m["sample_texts"] = [r.text[:300] for r in results[:3]]
    return results, m


def flush_cache(base: str) -> None:
    """Empty the radix cache so that a run starts cold (raises if the server refuses)."""
    httpx.post(f"{base}/flush_cache", json={}, timeout=_FLUSH_TIMEOUT_S).raise_for_status()


async def send_generate(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> NativeResult:
    """One streaming ``/generate`` request; TTFT is the first chunk with output, ITL the gap between chunks
    (a jump-forward chunk carries several tokens). Token counts come from the final chunk's meta_info."""
    res = NativeResult()
    start = last = time.perf_counter()
    seen = 0  # completion tokens already received
    try:
        async for msg in sse_messages(client, url, {**payload, "stream": True}):
            meta = msg.get("meta_info", {})
            now = time.perf_counter()
            done = int(meta.get("completion_tokens", 0))
            if done > seen:
                if seen == 0:
                    res.ttft = now - start
                else:
                    res.itl.append(now - last)
                seen, last = done, now
            res.prompt_tokens = int(meta.get("prompt_tokens", res.prompt_tokens))
            res.output_tokens = done
            res.cached_tokens = int(meta.get("cached_tokens", 0))
            res.jump_forward_tokens = int(meta.get("jump_forward_tokens", 0))
            res.finish_reason = meta.get("finish_reason")
            res.text = msg.get("text", res.text)
        res.latency = time.perf_counter() - start
        res.ok = res.output_tokens > 0
        if not res.ok:
            res.error = "no tokens received"
    except StreamError as e:
        res.error = str(e)
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


async def _run(
    base: str, payloads: list[dict[str, Any]], max_concurrency: int | None, warmup: dict[str, Any] | None
) -> tuple[list[NativeResult], float]:
    url = f"{base}/generate"
    limits = httpx.Limits(max_connections=max_concurrency or len(payloads) or 1, max_keepalive_connections=None)
    sem = asyncio.Semaphore(max_concurrency or len(payloads) or 1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:

        async def one(p: dict[str, Any]) -> NativeResult:
            async with sem:
                return await send_generate(client, url, p)

        # warm-up (not timed) with its own prompt, so that no benchmark prompt is cached by it
        await send_generate(
            client, url, warmup or {"text": "Warm-up request.", "sampling_params": {"max_new_tokens": 2}}
        )
        start = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in payloads))
        return list(results), time.perf_counter() - start


def run_requests(
    base: str,
    payloads: list[dict[str, Any]],
    max_concurrency: int | None = None,
    warmup: dict[str, Any] | None = None,
) -> tuple[list[NativeResult], float]:
    """Send every ``/generate`` body (all at once, or at most ``max_concurrency`` in flight) after one untimed
    ``warmup`` body (default: a 2-token request on a prompt of its own); returns the results in payload order and
    the wall time in seconds."""
    return asyncio.run(_run(base, payloads, max_concurrency, warmup))


def summarize_native(results: list[NativeResult], duration: float) -> dict[str, Any]:
    """bench_serving's summary (latency percentiles in ms, tok/s) plus jump-forward tokens and finish reasons."""
    m = summarize(list(results), duration)
    ok = [r for r in results if r.ok]
    m["jump_forward_tokens"] = sum(r.jump_forward_tokens for r in ok)
    m["total_cached_tokens"] = sum(r.cached_tokens or 0 for r in ok)
    reasons: dict[str, int] = {}
    for r in ok:
        kind = r.finish_reason.get("type") if isinstance(r.finish_reason, dict) else str(r.finish_reason)
        reasons[kind] = reasons.get(kind, 0) + 1
    m["finish_reasons"] = reasons
    return m


def write_result(name: str, report: dict[str, Any]) -> Path:
    """Write ``report`` as ``benchmarks/results/<name>.json`` (inf / nan as strings); returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    report = {"measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_at_end": os.getloadavg(), **report}
    path.write_text(json.dumps(_finite(report), indent=2, default=str))
    print(f"wrote {path}")
    return path


def target(name: str, measured: float, goal: str, ok: bool | None, fmt: str = "{:.2f}x") -> dict[str, Any]:
    """One target row: what was measured against which goal, and whether it passed (None: information only)."""
    return {"target": name, "measured": measured, "display": fmt.format(measured), "goal": goal, "pass": ok}


def print_targets(title: str, rows: list[dict[str, Any]]) -> None:
    """The PASS/MISS table of a benchmark."""
    print(f"\n==================== {title} ====================")
    width = max(len(r["target"]) for r in rows) + 2
    for r in rows:
        verdict = "-" if r["pass"] is None else "PASS" if r["pass"] else "MISS"
        print(f"{r['target']:<{width}}{r['display']:>14}   goal {r['goal']:<12}{verdict}")
