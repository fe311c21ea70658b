"""radixgen servers as workers of SGLang's own router (the ``sglang-router`` package, its Rust cache-aware router).

Two stories260K servers on 127.0.0.1 behind ``python -m sglang_router.launch_router``: the router's health, info and
request routes work against them unchanged (native /generate and the OpenAI routes, with the extra fields the router
adds); a shared-prefix workload reaches a higher radix-cache hit rate under the ``cache_aware`` policy than under
``round_robin``; and killing one worker keeps traffic flowing through the other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_fixtures import STORIES, ServerHandle, free_port, start_server, wait_healthy

pytest.importorskip("sglang_router")

# three groups of requests, each sharing a long prefix; interleaved so that round robin sends every group to both
# workers while a prefix-aware router keeps each group on one
GROUPS = [
    "Once upon a time, in a small village near the big forest, there lived a little girl named Lily who loved "
    "to play with her red ball every day after school with her best friend",
    "One sunny morning, a happy little dog named Max went to the park with his family to see the ducks in the "
    "pond and to run after the birds that sang in the tall green trees",
    "There was a big old tree in the garden where a wise owl lived with his three small children who were always "
    "hungry and asked their father for more food every single night",
]
SUFFIXES = [" and", " but", " so", " then", " when", " because"]


class Router:
    def __init__(self, workers: list[str], policy: str, *extra: str) -> None:
        self.port = free_port()
        cmd = [
            sys.executable, "-P", "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(self.port),
            "--prometheus-port", str(free_port()), "--policy", policy, "--worker-urls", *workers,
            "--log-level", "warn", *extra,
        ]  # fmt: skip
        fd, self.log = tempfile.mkstemp(prefix="sglang-router-", suffix=".log")
        self.proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        os.close(fd)
        self.url = f"http://127.0.0.1:{self.port}"
        if not wait_healthy(self.proc, self.url, 60, Path(self.log)):
            self.stop()
            raise RuntimeError(f"router not ready: {Path(self.log).read_text(errors='replace')}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def workers() -> Iterator[list[ServerHandle]]:
    handles = [start_server(wait=False) for _ in range(2)]
    for h in handles:
        h.wait_ready()
    yield handles
    for h in handles:
        h.stop()


def _hit_rate(router: Router, workers: list[ServerHandle]) -> float:
    for w in workers:
        assert httpx.post(f"{w.base_url}/flush_cache", json={}).status_code == 200
    cached = prompt = 0
    with httpx.Client(base_url=router.url, timeout=60) as client:
        for suffix in SUFFIXES:
            for group in GROUPS:
                body = {"text": group + suffix, "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
                r = client.post("/generate", json=body)
                assert r.status_code == 200, r.text
                meta = r.json()["meta_info"]
                cached += meta["cached_tokens"]
                prompt += meta["prompt_tokens"]
    return cached / prompt


def test_router_routes_and_cache_aware_policy(workers: list[ServerHandle]) -> None:
    urls = [w.base_url for w in workers]
    rates = {}
    for policy in ("round_robin", "cache_aware"):
        router = Router(urls, policy)
        try:
            rates[policy] = _hit_rate(router, workers)
            if policy == "cache_aware":
                with httpx.Client(base_url=router.url, timeout=60) as client:
                    comp = client.post("/v1/completions", json={"model": str(STORIES), "prompt": GROUPS[0],
                                                                "max_tokens": 4, "temperature": 0})  # fmt: skip
                    assert comp.status_code == 200, comp.text
                    assert comp.json()["choices"][0]["text"]
                    models = client.get("/v1/models")
                    assert models.status_code == 200 and str(STORIES) in models.text
        finally:
            router.stop()
    # round robin computes each group's prefix on both workers; cache-aware routing on one
    assert rates["cache_aware"] > rates["round_robin"] + 0.05, rates


def test_killing_a_worker_keeps_traffic_flowing(workers: list[ServerHandle]) -> None:
    """The router's circuit breaker (opened after one failure here) takes the dead worker out: the request that
    found it dead fails (the router's retries go to the same worker), every later one is served by the other."""
    router = Router([w.base_url for w in workers], "cache_aware", "--cb-failure-threshold", "1")
    try:
        with httpx.Client(base_url=router.url, timeout=60) as client:
            body = {"text": GROUPS[1], "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
            assert client.post("/generate", json=body).status_code == 200
            workers[1].stop()
            codes = [client.post("/generate", json={**body, "text": g + s}).status_code
                     for s in SUFFIXES[:4] for g in GROUPS]  # fmt: skip
        assert all(c in (200, 500, 502, 503) for c in codes) and codes.count(200) >= len(codes) - 1, codes
        assert codes[-8:] == [200] * 8, codes
    finally:
        router.stop()
