"""Prefill/decode disaggregation (runtime/disaggregation): a prefill server, a decode server and the PD router as
real processes on 127.0.0.1; the prompt's KV travels between the two pools over ZeroMQ, page by page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_fixtures import ServerHandle, free_port, start_server
from shared_paths import STORIES

from radixgen.runtime.server_args import ServerArgs

PAGE_DELAY = 0.25  # seconds between two pages on the prefill side (RADIXGEN_TEST_PD_PAGE_DELAY)
LONG = (
    "Once upon a time there was a little girl named Lily. She loved to play outside in the park with her dog. "
    "One day she saw a big red ball under a tree and she ran to get it, but the ball rolled away into the pond. "
    "Her mom came to help her and they looked for the ball all day, until the sun went down behind the hills."
) * 2
PROMPTS = ["Once upon a time", "The little dog", LONG]
GREEDY = {"max_new_tokens": 12, "temperature": 0.0}


def _router(prefill: ServerHandle, decode: ServerHandle) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-P", "-m", "radixgen.runtime.disaggregation.router", "--prefill", prefill.base_url,
           "--decode", decode.base_url, "--port", str(port)]  # fmt: skip
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    log.seek(0)
    raise RuntimeError(f"router not ready: {log.read().decode(errors='replace')}")


@pytest.fixture(scope="module")
def pd() -> Iterator[dict[str, Any]]:
    bootstrap = free_port()
    prefill = start_server(
        ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bootstrap)],
        env={"RADIXGEN_TEST_PD_PAGE_DELAY": str(PAGE_DELAY)},
    )
    decode = start_server(["--disaggregation-mode", "decode", "--disaggregation-transfer-timeout", "3"])
    router, url = _router(prefill, decode)
    yield {"prefill": prefill, "decode": decode, "router": url, "bootstrap": bootstrap}
    router.terminate()
    router.wait()
    decode.stop()
    prefill.stop()


def _info(server: ServerHandle) -> dict[str, Any]:
    return httpx.get(f"{server.base_url}/get_server_info", timeout=30).json()


def _wait_idle(server: ServerHandle, timeout: float = 10.0) -> dict[str, Any]:
    """The server info once no KV is held (kv_used_tokens == 0); fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    info = _info(server)
    while info["kv_used_tokens"] and time.monotonic() < deadline:
        time.sleep(0.1)
        info = _info(server)
    assert info["kv_used_tokens"] == 0, info
    return info


def _generate(url: str, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/generate", json={"text": text, "sampling_params": GREEDY, **extra}, timeout=60)


def test_outputs_equal_a_single_server_and_the_prefix_is_cached(pd: dict[str, Any]) -> None:
    expected = [_generate(pd["prefill"].base_url, p).json() for p in PROMPTS]  # a plain server's path
    before_info = _info(pd["decode"])
    before, before_tokens = before_info["pd_transfers"], before_info["pd_transfer_tokens"]
    got = [_generate(pd["router"], p).json() for p in PROMPTS]
    for want, have in zip(expected, got, strict=True):
        assert have["text"] == want["text"]
        assert have["output_ids"] == want["output_ids"]
        prompt_tokens = have["meta_info"]["prompt_tokens"]
        assert have["meta_info"]["cached_tokens"] == prompt_tokens - 1  # only the last prompt token computed here
    assert expected[2]["meta_info"]["prompt_tokens"] > 2 * 64  # several pages travelled
    info = _wait_idle(pd["decode"])
    assert info["pd_transfers"] == before + len(PROMPTS)
    # the prompts' shared start ("Once upon a time") was cached here after the first transfer: not fetched again
    assert 2 * 64 < info["pd_transfer_tokens"] - before_tokens < sum(g["meta_info"]["prompt_tokens"] - 1 for g in got)
    assert info["kv_cached_tokens"] > 0
    _wait_idle(pd["prefill"])
    # the decode server's radix cache now holds the prompt: a second request needs no transfer
    again = _generate(pd["router"], LONG).json()
    assert again["output_ids"] == expected[2]["output_ids"]
    assert again["meta_info"]["cached_tokens"] == again["meta_info"]["prompt_tokens"] - 1
    assert _info(pd["decode"])["pd_transfers"] == before + len(PROMPTS)


def test_streaming_through_the_router(pd: dict[str, Any]) -> None:
    want = _generate(pd["prefill"].base_url, "A cat sat").json()
    body = {"text": "A cat sat", "sampling_params": GREEDY, "stream": True}
    with httpx.stream("POST", f"{pd['router']}/generate", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert '"text": ' in events[-1] or '"text":' in events[-1]
    assert httpx.Response(200, content=events[-1][6:]).json()["text"] == want["text"]


def test_unreachable_prefill_server_fails_the_request_cleanly(pd: dict[str, Any]) -> None:
    decode = pd["decode"]
    text = "Tom and Sam went to the market to buy apples and bread."  # not in the decode cache: needs a fetch
    r = _generate(decode.base_url, text, bootstrap_host="127.0.0.1", bootstrap_port=free_port())
    assert r.status_code == 503
    assert "did not answer" in r.json()["error"]["message"]
    assert _generate(decode.base_url, "Once upon a time").status_code == 200  # still serving
    _wait_idle(decode)


def test_bad_requests_and_configurations_are_refused(pd: dict[str, Any]) -> None:
    r = _generate(pd["prefill"].base_url, "Hi", bootstrap_host="127.0.0.1", bootstrap_port=pd["bootstrap"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "bootstrap_host"
    r = _generate(pd["decode"].base_url, "Hi", bootstrap_host="127.0.0.1", bootstrap_port=0)
    assert r.status_code == 400 and r.json()["error"]["param"] == "bootstrap_port"
    r = _generate(pd["router"], "Hi", bootstrap_port=1234)
    assert r.status_code == 400 and r.json()["error"]["param"] == "bootstrap_port"
    for field, value in (("tp_size", 2), ("kv_cache_dtype", "int8"), ("disable_radix_cache", True)):
        with pytest.raises(ValueError, match=f"^{field}: .*disaggregation"):
            ServerArgs(str(STORIES), disaggregation_mode="decode", **{field: value})
    with pytest.raises(ValueError, match="^disaggregation_mode: "):
        ServerArgs(str(STORIES), disaggregation_mode="both")


def test_decode_server_dying_mid_transfer(pd: dict[str, Any]) -> None:
    prefill = pd["prefill"]
    decode = start_server(["--disaggregation-mode", "decode"])
    router, url = _router(prefill, decode)
    pids = [decode.proc.pid, *_info(decode)["pids"].values()]
    result: dict[str, Any] = {}
    long_prompt = LONG  # 250 tokens: 4 pages, PAGE_DELAY apart
    thread = threading.Thread(target=lambda: result.setdefault("r", _generate(url, long_prompt)))
    try:
        thread.start()
        deadline = time.monotonic() + 20
        while _info(prefill)["kv_used_tokens"] == 0:  # the computed prefix is locked while its pages go out
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.05)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        thread.join(30)
        r = result["r"]
        assert r.status_code == 502
        assert "decode server" in r.json()["error"]["message"]
        _wait_idle(prefill)  # the prefill side noticed and released the KV
        assert "the decode server has gone away" in prefill.logs()
        assert _generate(prefill.base_url, "Once upon a time").status_code == 200  # still serving
    finally:
        router.terminate()
        router.wait()
        decode.stop()
