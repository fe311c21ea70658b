"""Data parallelism (``--dp-size``): scheduler replicas behind one HTTP front end, routed by SGLang's cache-aware
policy (runtime/dp_dispatch.py).

The policy is checked on its own (prefix affinity, spreading of new prefixes, load balance, LRU bound); a real
server with two replicas serves greedy outputs equal to one scheduler's, keeps each shared prefix on one replica
(it is computed once), broadcasts control requests (flush, LoRA load) to both, and goes down cleanly when a replica
dies.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lora_adapters import make_adapter
from server_fixtures import STORIES, ServerHandle, start_server

from radixgen.runtime.dp_dispatch import BLOCK, CacheAwarePolicy

PREFIXES = [[1, *range(10 + 40 * g, 10 + 40 * g + 3 * BLOCK)] for g in range(3)]  # three 49-token prefixes


def test_same_prefix_same_replica_and_new_prefixes_spread() -> None:
    policy = CacheAwarePolicy(2)
    load = [0, 0]
    first = [policy.select(p + [400 + g], load) for g, p in enumerate(PREFIXES)]
    assert first[:2] == [0, 1]  # a new prefix goes to the replica that has seen least
    for g, p in enumerate(PREFIXES):
        for tail in range(3):
            assert policy.select(p + [300 + tail], load) == first[g]


def test_imbalance_beats_affinity_and_short_matches_do_not_count() -> None:
    policy = CacheAwarePolicy(2, balance_abs_threshold=4, balance_rel_threshold=1.5)
    assert policy.select(PREFIXES[0], [0, 0]) == 0
    assert policy.select(PREFIXES[0] + [6], [3, 0]) == 0  # within the thresholds: the prefix wins
    assert policy.select(PREFIXES[0] + [5], [10, 0]) == 1  # replica 0 is far busier: load wins
    fresh = CacheAwarePolicy(2)
    assert fresh.select(PREFIXES[1][: 2 * BLOCK], [0, 0]) == 0
    long_tail = PREFIXES[1][:BLOCK] + list(range(300, 300 + 4 * BLOCK))  # shares 1 block of 5 with replica 0
    assert fresh.select(long_tail, [0, 0]) == 1  # 1/5 < cache_threshold: the replica that has seen least


def test_round_robin_and_shortest_queue() -> None:
    rr = CacheAwarePolicy(3, method="round_robin")
    assert [rr.select(PREFIXES[0], [0, 0, 0]) for _ in range(4)] == [0, 1, 2, 0]
    sq = CacheAwarePolicy(3, method="shortest_queue")
    assert sq.select(PREFIXES[0], [2, 1, 3]) == 1
    with pytest.raises(ValueError, match="load_balance_method"):
        CacheAwarePolicy(2, method="random")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=80), min_size=1, max_size=30), st.integers(1, 8))
def test_trees_stay_bounded(prompts: list[list[int]], capacity: int) -> None:
    policy = CacheAwarePolicy(2, capacity_blocks=capacity)
    for p in prompts:
        assert policy.select(p, [0, 0]) in (0, 1)
        assert all(len(t.blocks) <= capacity for t in policy.trees)


# ---------------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(["--dp-size", "2", "--enable-lora", "--max-lora-rank", "8"])
    yield handle
    handle.stop()


def _generate(client: httpx.Client, ids: list[int], **kw: object) -> dict:
    r = client.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": 6, "temperature": 0},
                                       **kw})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def test_replicas_serve_and_keep_prefixes_apart(server: ServerHandle, tmp_path: Path) -> None:
    from radixgen.runtime.engine import Engine

    with server.client() as client:
        info = client.get("/get_server_info").json()
        assert [s["dp_rank"] for s in info["internal_states"]] == [0, 1]
        assert {"scheduler", "scheduler-1", "detokenizer"} <= set(info["pids"])
        assert client.post("/flush_cache", json={}).status_code == 200  # answered by both replicas
        outs = {}
        for tail in range(4):
            for g, prefix in enumerate(PREFIXES):
                outs[(g, tail)] = _generate(client, prefix + [200 + tail])
        info = client.get("/get_server_info").json()
    assert all(n > 0 for n in info["dp_requests_routed"]), info["dp_requests_routed"]
    for (g, tail), out in outs.items():  # each prefix computed once: on its replica every later request hits it
        if tail:
            assert out["meta_info"]["cached_tokens"] >= len(PREFIXES[g]) - 1
    eng = Engine(str(STORIES))
    try:
        for (g, tail), out in outs.items():
            ref = eng.generate(input_ids=PREFIXES[g] + [200 + tail], sampling_params={"max_new_tokens": 6,
                                                                                       "temperature": 0})
            assert out["output_ids"] == ref["output_ids"]
    finally:
        eng.shutdown()
    # a LoRA adapter loaded at run time is loaded by every replica
    adapter = make_adapter(tmp_path / "a", ("q_proj", "v_proj"), r=4, seed=1)
    with server.client() as client:
        r = client.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": str(adapter)})
        assert r.status_code == 200 and r.json()["loaded_adapters"] == {"a": str(adapter)}
        before = client.get("/get_server_info").json()["dp_requests_routed"]
        lora_outs = [_generate(client, p + [7], lora_path="a") for p in PREFIXES]
        after = client.get("/get_server_info").json()["dp_requests_routed"]
        assert all(b > a for a, b in zip(before, after, strict=True))  # both replicas served the adapter
        assert all(o["meta_info"]["cached_tokens"] <= 1 for o in lora_outs)  # the adapter's own cache namespace
        assert client.post("/unload_lora_adapter", json={"lora_name": "a"}).status_code == 200


def test_a_dead_replica_takes_the_server_down(server: ServerHandle) -> None:
    with server.client() as client:
        pid = client.get("/get_server_info").json()["pids"]["scheduler-1"]
    os.kill(pid, signal.SIGKILL)
    assert server.proc.wait(30) == 1
    assert "scheduler-1 process" in server.logs()
