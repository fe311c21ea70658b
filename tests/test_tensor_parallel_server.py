"""Tensor parallelism in the server (``--tp-size 2``, gloo on this CPU): rank 0 schedules and broadcasts each batch
(runtime/tp_worker.py), rank 1 runs the same forward over its shard.

Greedy outputs equal one process's (the offline Engine), through the radix cache, chunked prefill and a grammar; the
ranks may span "machines" (``--nnodes 2``: two launchers meeting at ``--dist-init-addr``); a dead rank takes the server
down cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import httpx
import pytest
from server_fixtures import STORIES, ServerHandle, free_port, start_server

PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park. They saw a big tree and"]
GREEDY = {"max_new_tokens": 16, "temperature": 0.0}


@pytest.fixture(scope="module")
def reference() -> dict[str, str]:
    from radixgen.runtime.engine import Engine

    eng = Engine(str(STORIES))
    try:
        outs = eng.generate(PROMPTS, GREEDY)
        schema = eng.generate(PROMPTS[0], {**GREEDY, "json_schema": '{"type": "object", "properties": {"a": '
                                           '{"type": "integer"}}, "required": ["a"]}'})  # fmt: skip
    finally:
        eng.shutdown()
    return {**{p: o["text"] for p, o in zip(PROMPTS, outs, strict=True)}, "schema": schema["text"]}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(["--tp-size", "2", "--chunked-prefill-size", "8"])
    yield handle
    handle.stop()


def _texts(base: str, prompts: list[str], **params: object) -> list[str]:
    r = httpx.post(f"{base}/generate", json={"text": prompts, "sampling_params": {**GREEDY, **params}}, timeout=60)
    assert r.status_code == 200, r.text
    return [o["text"] for o in r.json()]


def test_tp2_equals_one_process(server: ServerHandle, reference: dict[str, str]) -> None:
    assert _texts(server.base_url, PROMPTS) == [reference[p] for p in PROMPTS]  # chunks of 8: chunked prefill
    again = httpx.post(f"{server.base_url}/generate", json={"text": PROMPTS[2], "sampling_params": GREEDY}).json()
    assert again["text"] == reference[PROMPTS[2]] and again["meta_info"]["cached_tokens"] > 8  # the radix cache
    schema = '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}'
    assert _texts(server.base_url, [PROMPTS[0]], json_schema=schema) == [reference["schema"]]
    info = httpx.get(f"{server.base_url}/get_server_info").json()
    assert info["tp_size"] == 2 and "tp-rank-1" in info["pids"]


def test_ranks_across_two_launchers(reference: dict[str, str]) -> None:
    """--nnodes 2: node 0 serves HTTP and rank 0, node 1 (another launcher) runs rank 1 and exits 0 when node 0
    stops."""
    addr = f"127.0.0.1:{free_port()}"
    common = ["--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr]
    fd, log = tempfile.mkstemp(prefix="radixgen-node1-", suffix=".log")
    node1 = subprocess.Popen(
        [sys.executable, "-P", "-m", "radixgen.runtime.launch_server", "--model", str(STORIES), *common,
         "--node-rank", "1"],
        stdout=fd, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    os.close(fd)
    node0 = start_server([*common, "--node-rank", "0"])
    try:
        assert _texts(node0.base_url, PROMPTS[:2]) == [reference[p] for p in PROMPTS[:2]]
    finally:
        node0.stop()
        try:
            code = node1.wait(30)
        except subprocess.TimeoutExpired:
            node1.kill()
            code = -9
    assert code == 0, open(log).read()  # stopped with rank 0 (its rank sees rank 0 go away)


def test_a_dead_rank_takes_the_server_down(server: ServerHandle) -> None:
    pid = httpx.get(f"{server.base_url}/get_server_info").json()["pids"]["tp-rank-1"]
    os.kill(pid, signal.SIGKILL)
    assert server.proc.wait(30) == 1
    assert "tp-rank-1 process" in server.logs()
