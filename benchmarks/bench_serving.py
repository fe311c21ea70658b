"""Serving benchmark: a load generator for any OpenAI-compatible server (streaming /v1/completions).

Workloads:
  sharegpt       first human turns of the ShareGPT file, truncated to --max-prompt-tokens
  shared-prefix  --groups x --prompts-per-group prompts; each group shares a --prefix-tokens prefix of GSM8K text,
                 each prompt ends with its own GSM8K question (radix-cache reuse)
  random         random token strings of --random-input-len tokens

Arrivals follow a Poisson process at --request-rate (inf: all at once), optionally capped by --max-concurrency
(a comma-separated list runs one benchmark per value against the same server; the prefix cache is flushed
before each run where the server has SGLang's /flush_cache, unless --no-flush-cache).
Every request asks for exactly --output-len tokens (ignore_eos) unless --no-ignore-eos. Reported: TTFT, TPOT, ITL
and end-to-end latency (mean, p50, p90, p99 in ms), request / output-token / total-token throughput, and the
prefix-cache hit rate from usage.prompt_tokens_details.cached_tokens.

Examples:
  python benchmarks/bench_serving.py --launch --model ../shared/models/bench-llama-40m --load-format dummy \
      --workload shared-prefix --output-len 32 --max-concurrency 1,4,16 --out results.json
  python benchmarks/bench_serving.py --base-url http://127.0.0.1:30000 --tokenizer ../shared/models/stories260K
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHAREGPT = SHARED / "datasets" / "sharegpt" / "ShareGPT_V3_filtered_500.json"
GSM8K = SHARED / "datasets" / "gsm8k" / "test.jsonl"


# ------------------------------------------------------------------------------------------------ workloads
def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _truncate(tok: Any, text: str, n: int) -> str:
    ids = tok.encode(text, add_special_tokens=False)
    return text if len(ids) <= n else tok.decode(ids[:n])


def sharegpt_prompts(tok: Any, num: int, max_tokens: int, path: Path, rng: random.Random) -> list[str]:
    """First human turns of ShareGPT conversations (shuffled), each at most ``max_tokens`` tokens."""
    data = json.loads(path.read_text())
    turns = [c["conversations"][0]["value"] for c in data if c.get("conversations")]
    turns = [t for t in turns if t.strip()]
    rng.shuffle(turns)
    if not turns:
        raise SystemExit(f"no prompts in {path}")
    return [_truncate(tok, turns[i % len(turns)], max_tokens) for i in range(num)]


def shared_prefix_prompts(tok: Any, groups: int, per_group: int, prefix_tokens: int, path: Path) -> list[str]:
    """``groups`` distinct GSM8K-text prefixes of ``prefix_tokens`` tokens, each followed by distinct questions."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    need = groups * per_group
    questions = [r["question"] for r in rows[-need:]]
    context = [f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[: len(rows) - need]]
    prompts, cursor = [], 0
    for g in range(groups):
        parts: list[str] = []
        while len(tok.encode("".join(parts), add_special_tokens=False)) < prefix_tokens:
            parts.append(context[cursor % len(context)])
            cursor += 1
        prefix = _truncate(tok, "".join(parts), prefix_tokens)
        for q in questions[g * per_group : (g + 1) * per_group]:
            prompts.append(f"{prefix}\n\nQuestion: {q}\nAnswer:")
    return prompts


def random_prompts(tok: Any, num: int, input_len: int, rng: random.Random) -> list[str]:
    """Strings decoded from ``input_len`` random non-special token ids."""
    special = set(getattr(tok, "all_special_ids", []) or [])
    vocab = [i for i in range(len(tok)) if i not in special]
    return [tok.decode([rng.choice(vocab) for _ in range(input_len)]) for _ in range(num)]


# ------------------------------------------------------------------------------------------------ client
@dataclass
class RequestResult:
    ok: bool = False
    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None


class StreamError(Exception):
    """A streamed request failed: a non-200 status, or an error message inside the stream."""


async def sse_messages(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """POST ``payload`` to ``url`` and yield each server-sent ``data:`` JSON message until ``[DONE]``.

    Raises:
        StreamError: the status is not 200 (the message has the start of the body), or a message carries "error".
    """
    async with client.stream("POST", url, json=payload) as resp:
        if resp.status_code != 200:
            raise StreamError(f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            msg = json.loads(data)
            if "error" in msg:
                raise StreamError(str(msg["error"].get("message", msg["error"])))
            yield msg


async def send_one(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> RequestResult:
    """One streaming completion; times every content chunk."""
    res = RequestResult()
    start = time.perf_counter()
    last = start
    chunks = 0
    try:
        async for msg in sse_messages(client, url, payload):
            now = time.perf_counter()
            if any(c.get("text") for c in msg.get("choices", [])):
                if chunks == 0:
                    res.ttft = now - start
                else:
                    res.itl.append(now - last)
                chunks += 1
                last = now
            usage = msg.get("usage")
            if usage:
                res.prompt_tokens = int(usage.get("prompt_tokens", 0))
                res.output_tokens = int(usage.get("completion_tokens", 0))
                details = usage.get("prompt_tokens_details") or {}
                if details.get("cached_tokens") is not None:
                    res.cached_tokens = int(details["cached_tokens"])
        res.latency = time.perf_counter() - start
        res.output_tokens = res.output_tokens or chunks
        res.ok = chunks > 0
        if not res.ok:
            res.error = "no tokens received"
    except StreamError as e:
        res.error = str(e)
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


async def run_load(
    base_url: str,
    model: str,
    prompts: list[str],
    args: argparse.Namespace,
    max_concurrency: int | None,
    extra_body: dict[str, Any] | None = None,
) -> tuple[list[RequestResult], float]:
    """Send every prompt with Poisson arrivals; returns the results (prompt order) and the wall time.
    ``extra_body`` fields (e.g. ``json_schema``) are added to every request, the warm-up included."""
    output_len, request_rate, api_key = args.output_len, args.request_rate, args.api_key
    url = f"{base_url.rstrip('/')}/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_concurrency or len(prompts) or 1, max_keepalive_connections=None)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    rng = np.random.default_rng(args.seed)

    def payload(prompt: str) -> dict[str, Any]:
        p: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0.0}
        p.update(stream=True, stream_options={"include_usage": True})
        if not args.no_ignore_eos:
            p["ignore_eos"] = True
        return {**p, **(extra_body or {})}

    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), headers=headers, limits=limits) as client:

        async def one(prompt: str) -> RequestResult:
            if sem is None:
                return await send_one(client, url, payload(prompt))
            async with sem:
                return await send_one(client, url, payload(prompt))

        # warm-up (not timed), with a prompt of its own so that no benchmark prompt is cached by it
        await send_one(client, url, {**payload("Warm-up request."), "max_tokens": 2})
        start = time.perf_counter()
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(one(prompt)))
            if math.isfinite(request_rate):
                await asyncio.sleep(float(rng.exponential(1.0 / request_rate)))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ metrics
def summarize(results: list[RequestResult], duration: float) -> dict[str, Any]:
    """Latency percentiles (ms), throughputs and the cache hit rate."""
    ok = [r for r in results if r.ok]

    def stats(xs: list[float]) -> dict[str, float]:
        if not xs:
            return {k: float("nan") for k in ("mean", "p50", "p90", "p99")}
        a = np.asarray(xs) * 1000.0
        return {"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)}}

    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    prompt_tok = sum(r.prompt_tokens for r in ok)
    out_tok = sum(r.output_tokens for r in ok)
    with_cache = [r for r in ok if r.cached_tokens is not None]
    hit = sum(r.cached_tokens or 0 for r in with_cache) / max(1, sum(r.prompt_tokens for r in with_cache))
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out_tok / duration if duration else 0.0,
        "total_throughput": (prompt_tok + out_tok) / duration if duration else 0.0,
        "total_prompt_tokens": prompt_tok,
        "total_output_tokens": out_tok,
        "cache_hit_rate": hit if with_cache else None,
        "ttft_ms": stats([r.ttft for r in ok]),
        "tpot_ms": stats(tpot),
        "itl_ms": stats([x for r in ok for x in r.itl]),
        "e2e_ms": stats([r.latency for r in ok]),
    }


def print_table(title: str, m: dict[str, Any]) -> None:
    print(f"\n==================== {title} ====================")
    rows = [
        ("Successful / failed requests", f"{m['completed']} / {m['failed']}"),
        ("Benchmark duration (s)", f"{m['duration_s']:.2f}"),
        ("Total prompt / output tokens", f"{m['total_prompt_tokens']} / {m['total_output_tokens']}"),
        ("Request throughput (req/s)", f"{m['request_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{m['output_throughput']:.1f}"),
        ("Total token throughput (tok/s)", f"{m['total_throughput']:.1f}"),
        ("Cache hit rate", "n/a" if m["cache_hit_rate"] is None else f"{m['cache_hit_rate']:.1%}"),
    ]
    for label, value in rows:
        print(f"{label:<34}{value:>20}")
    print(f"{'(ms)':<10}{'mean':>12}{'p50':>12}{'p90':>12}{'p99':>12}")
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        s = m[key]
        print(f"{key[:-3].upper():<10}" + "".join(f"{s[k]:>12.1f}" for k in ("mean", "p50", "p90", "p99")))
    for err in m["errors"]:
        print(f"error: {err}")


# ------------------------------------------------------------------------------------------------ --launch
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_server(model: str, load_format: str, extra: list[str], timeout: float = 300.0) -> tuple[Any, str]:
    """Start ``python -m radixgen.runtime.launch_server`` and wait for /health; returns (process, base_url)."""

    def cmd(port: int) -> list[str]:
        head = [sys.executable, "-P", "-m", "radixgen.runtime.launch_server", "--model", os.path.abspath(model)]
        return head + ["--load-format", load_format, "--host", "127.0.0.1", "--port", str(port), *extra]

    return launch_process(cmd, "bench-server-", timeout)


def launch_process(cmd_for_port: Callable[[int], list[str]], log_prefix: str, timeout: float) -> tuple[Any, str]:
    """Start the server command ``cmd_for_port(port)`` on a free 127.0.0.1 port (output to a temp log file named
    ``log_prefix*.log``) and poll its /health until it answers 200; returns (process, base_url).

    Raises:
        SystemExit: the process exited first (the message has the end of its log), or ``timeout`` seconds passed
            (the process is stopped first).
    """
    port = _free_port()
    cmd = cmd_for_port(port)
    log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
    print(f"launching: {' '.join(cmd)}  (log: {log.name})", file=sys.stderr)
    # outside the repository root, so that its top-level folders do not shadow installed packages
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log.name).read_text(errors="replace")[-3000:]
            raise SystemExit(f"server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"server not ready after {timeout:.0f} s; log: {log.name}")


def stop_server(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------ main
def _finite(x: Any) -> Any:
    """JSON-safe copy: inf / nan floats become strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:30000", help="server to load (ignored with --launch)")
    p.add_argument("--launch", action="store_true", help="start our server with --model/--load-format, stop it after")
    p.add_argument("--model", default=None, help="model path (for --launch and the default tokenizer)")
    p.add_argument("--load-format", default="auto", help="with --launch: auto | safetensors | dummy")
    p.add_argument("--server-args", default="", help="extra flags for the launched server, one string")
    p.add_argument("--served-model-name", default=None, help="the request's model field (default: /v1/models[0])")
    p.add_argument("--tokenizer", default=None, help="tokenizer for prompt building (default: --model)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--workload", choices=("sharegpt", "shared-prefix", "random"), default="sharegpt")
    p.add_argument("--dataset-path", default=None, help="ShareGPT json / GSM8K jsonl (defaults: ../shared/datasets)")
    p.add_argument("--num-prompts", type=int, default=32, help="sharegpt / random: number of requests")
    p.add_argument("--max-prompt-tokens", type=int, default=256, help="sharegpt: truncate prompts to this")
    p.add_argument("--groups", type=int, default=4, help="shared-prefix: number of distinct prefixes")
    p.add_argument("--prompts-per-group", type=int, default=8, help="shared-prefix: prompts per prefix")
    p.add_argument("--prefix-tokens", type=int, default=512, help="shared-prefix: tokens in each common prefix")
    p.add_argument("--random-input-len", type=int, default=128, help="random: prompt tokens")
    p.add_argument("--output-len", type=int, default=32, help="output tokens per request")
    p.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at eos (do not send ignore_eos)")
    p.add_argument("--request-rate", type=float, default=float("inf"), help="Poisson rate in req/s (inf: all at 0)")
    p.add_argument("--max-concurrency", default=None, help="max requests in flight; a list (1,4,16) = one run each")
    p.add_argument("--no-flush-cache", action="store_true", help="do not POST /flush_cache before each run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the config and metrics as JSON here")
    return p.parse_args(argv)


def build_prompts(args: argparse.Namespace, tok: Any) -> list[str]:
    rng = random.Random(args.seed)
    if args.workload == "sharegpt":
        path = Path(args.dataset_path) if args.dataset_path else SHAREGPT
        return sharegpt_prompts(tok, args.num_prompts, args.max_prompt_tokens, path, rng)
    if args.workload == "shared-prefix":
        path = Path(args.dataset_path) if args.dataset_path else GSM8K
        prompts = shared_prefix_prompts(tok, args.groups, args.prompts_per_group, args.prefix_tokens, path)
        rng.shuffle(prompts)  # groups interleave, as independent users would
        return prompts
    return random_prompts(tok, args.num_prompts, args.random_input_len, rng)


def _concurrencies(spec: str | None) -> list[int | None]:
    if spec is None:
        return [None]
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--max-concurrency: expected integers, got {spec!r}") from None
    if not values or any(v < 1 for v in values):
        raise SystemExit("--max-concurrency: values must be >= 1")
    return list(values)


def _flush_cache(base: str, headers: dict[str, str]) -> None:
    """Best effort: SGLang-style servers (ours included) drop their prefix cache; others just 404."""
    try:
        httpx.post(f"{base}/flush_cache", json={}, headers=headers, timeout=30.0)
    except httpx.HTTPError:
        pass


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.launch and not args.model:
        raise SystemExit("--launch needs --model")
    tok_path = args.tokenizer or args.model
    if not tok_path:
        raise SystemExit("give --tokenizer (or --model) to build prompts")
    concurrencies = _concurrencies(args.max_concurrency)
    tok = load_tokenizer(tok_path)
    prompts = build_prompts(args, tok)
    proc = None
    base = args.base_url
    if args.launch:
        proc, base = launch_server(args.model, args.load_format, args.server_args.split())
    runs = []
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        model = args.served_model_name or httpx.get(f"{base}/v1/models", headers=headers).json()["data"][0]["id"]
        for conc in concurrencies:
            if not args.no_flush_cache:
                _flush_cache(base, headers)
            results, duration = asyncio.run(run_load(base, model, prompts, args, conc))
            metrics = {"max_concurrency": conc, **summarize(results, duration)}
            title = (
                f"{args.workload}: {len(prompts)} prompts, output {args.output_len}, "
                f"rate {args.request_rate}, concurrency {conc or 'unbounded'}"
            )
            print_table(title, metrics)
            runs.append(metrics)
    finally:
        if proc is not None:
            stop_server(proc)
    report = {"config": {k: v for k, v in vars(args).items() if k != "api_key"}, "model": model, "runs": runs}
    if args.out:
        Path(args.out).write_text(json.dumps(_finite(report), indent=2, default=str))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
