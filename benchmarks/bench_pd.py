"""Issue 21: prefill/decode disaggregation — the time to move a prompt prefix's KV from a prefill server's pool to a
decode server's pool (runtime/disaggregation: ZeroMQ over TCP on 127.0.0.1, 64-token pages).

Two servers (``--disaggregation-mode prefill`` and ``decode``, the bench model, dummy weights by default). For each
of --repeats fresh random prompts of --prefix-tokens + 1 tokens:

  transfer   the prefill server has the prompt cached (a plain /generate on it first), so the decode server's fetch
             measures the transfer alone: the decode side's ``pd_transfer_seconds`` delta (fetch sent → last page
             written into its pool), and the bytes moved per second;
  fetch+prefill
             a prompt the prefill server has not seen: its extend is part of the fetch;
  local      the same kind of prompt computed by the decode server itself (no bootstrap fields): the prefill the
             transfer replaces.

  python benchmarks/bench_pd.py [--prefix-tokens 1000 --repeats 3]
  # from another script: bench_pd.measure_pd_transfer(model, load_format, prefix_tokens, repeats) -> dict
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

import httpx
from bench_serving import _free_port, launch_server, stop_server
from common import BENCH_MODEL


def _generate(base: str, ids: list[int], **extra: Any) -> float:
    """POST /generate (one output token, greedy); returns the wall time in seconds."""
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}, **extra}
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/generate", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0


def _info(base: str) -> dict[str, Any]:
    return httpx.get(f"{base}/get_server_info", timeout=60).json()


def measure_pd_transfer(model: str, load_format: str, prefix_tokens: int = 1000, repeats: int = 3) -> dict[str, Any]:
    """Start a prefill and a decode server, measure (see the module docstring), stop them.

    Returns:
        ``{"prefix_tokens", "kv_bytes_per_token", "transfer_s", "transfer_mb_per_s", "fetch_with_prefill_s",
        "local_prefill_request_s", "pd_request_s"}``: medians over ``repeats`` in seconds (MB = 10^6 bytes).
    """
    bootstrap = _free_port()
    flags = ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bootstrap)]
    prefill, p_url = launch_server(model, load_format, flags)
    decode, d_url = launch_server(model, load_format, ["--disaggregation-mode", "decode"])
    try:
        info = _info(d_url)
        vocab, per_token = info["vocab_size"], info["kv_bytes_per_token"]
        rng = random.Random(0)
        fetch = {"bootstrap_host": "127.0.0.1", "bootstrap_port": bootstrap}

        def prompt() -> list[int]:
            return [rng.randrange(3, vocab) for _ in range(prefix_tokens + 1)]

        transfer, with_prefill, local, pd_request = [], [], [], []
        _generate(d_url, prompt(), **fetch)  # warm-up: sockets, first-use allocations
        for _ in range(repeats):
            ids = prompt()
            _generate(p_url, ids)  # the prefill server now caches it
            before = _info(d_url)
            pd_request.append(_generate(d_url, ids, **fetch))
            after = _info(d_url)
            assert after["pd_transfer_tokens"] - before["pd_transfer_tokens"] == prefix_tokens, (before, after)
            transfer.append(after["pd_transfer_seconds"] - before["pd_transfer_seconds"])
            before = after
            _generate(d_url, prompt(), **fetch)
            with_prefill.append(_info(d_url)["pd_transfer_seconds"] - before["pd_transfer_seconds"])
            local.append(_generate(d_url, prompt()))
        t = statistics.median(transfer)
        return {
            "prefix_tokens": prefix_tokens,
            "kv_bytes_per_token": per_token,
            "transfer_s": t,
            "transfer_mb_per_s": prefix_tokens * per_token / t / 1e6,
            "fetch_with_prefill_s": statistics.median(with_prefill),
            "local_prefill_request_s": statistics.median(local),
            "pd_request_s": statistics.median(pd_request),
        }
    finally:
        stop_server(decode)
        stop_server(prefill)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(BENCH_MODEL))
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--prefix-tokens", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    r = measure_pd_transfer(args.model, args.load_format, args.prefix_tokens, args.repeats)
    mb = r["prefix_tokens"] * r["kv_bytes_per_token"] / 1e6
    print(f"KV of a {r['prefix_tokens']}-token prefix: {mb:.1f} MB ({r['kv_bytes_per_token']} B/token)")
    print(f"transfer (prefill side cached)      {r['transfer_s'] * 1e3:9.1f} ms  ({r['transfer_mb_per_s']:.0f} MB/s)")
    print(f"fetch incl. the prefill's extend    {r['fetch_with_prefill_s'] * 1e3:9.1f} ms")
    print(f"PD request, 1 output token          {r['pd_request_s'] * 1e3:9.1f} ms")
    print(f"local request (decode computes)     {r['local_prefill_request_s'] * 1e3:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
