"""Shared-prefix (cascade) decode attention (runtime/attention/shared_prefix.py) against a plain per-request
softmax reference and against the torch backend with the cascade path off: groups of several sizes, GQA, requests
in no group, members with different suffix lengths, prefixes at the grouping threshold, dense KV copy on and off,
and several decode steps (the grouping is cached while the batch stays the same)."""

from __future__ import annotations

import pytest
import torch

from radixgen.radix.memory_pool import ReqToTokenPool, TokenToKVPool
from radixgen.runtime.attention import AttentionLayer, TorchAttentionBackend
from radixgen.runtime.attention.shared_prefix import MIN_PREFIX, find_prefix_groups, merge_attention, plan_step
from radixgen.runtime.forward_batch import ForwardBatch, ForwardMode

HKV, D, SLOTS, CTX = 2, 32, 4096, 512

# (shared prefix id or None, shared prefix length, sequence length before the first decode step)
REQUESTS = [
    ("a", 100, 101),  # group a: 5 members, suffixes 1 (only the new token) .. 30
    ("a", 100, 130),
    (None, 0, 90),  # no shared prefix
    ("a", 100, 115),
    ("b", MIN_PREFIX, 80),  # group b: prefix exactly at the threshold, in consecutive slots
    ("a", 100, 102),
    ("c", 70, 75),  # c: its two members share 70 slots ...
    ("b", MIN_PREFIX, MIN_PREFIX + 1),
    ("c", 70, 140),
    ("c*", 50, 120),  # ... this one only c's first 50 slots: not in the group
    ("d", MIN_PREFIX - 1, 100),  # d: below the threshold, no group
    ("d", MIN_PREFIX - 1, 100),
    ("a", 100, 128),
    ("a", 4, 5),  # a short request sharing group a's first slots: no group (and it must not stop a's)
]


def _pools(dtype: torch.dtype, seed: int) -> tuple[ReqToTokenPool, TokenToKVPool, list[int]]:
    """Pools with random K/V and the REQUESTS' slot rows (shared prefixes share slot ids); returns their rows."""
    gen = torch.Generator().manual_seed(seed)
    req_pool = ReqToTokenPool(len(REQUESTS) + 3, CTX)
    kv = TokenToKVPool(SLOTS, 2, HKV, D, dtype=dtype)
    for layer in range(2):
        for buf in kv.get_kv_buffer(layer):
            buf.copy_(torch.randn(buf.shape, generator=gen).to(dtype))
    free = iter(torch.randperm(SLOTS - 100, generator=gen).add(1).tolist())
    prefixes = {"b": list(range(SLOTS - 99, SLOTS + 1))}  # consecutive slots: read as a view of the pool
    rows = []
    for i, (pid, plen, seq) in enumerate(REQUESTS):
        row = len(REQUESTS) + 2 - i  # rows in another order than the batch
        if pid is None:
            slots = []
        else:
            base = prefixes.setdefault(pid[0], [next(free) for _ in range(100)])
            slots = base[:plen]
        slots = slots + [next(free) for _ in range(seq + 4 - len(slots))]  # room for 4 more decode steps
        req_pool.req_to_token[row, : len(slots)] = torch.tensor(slots, dtype=torch.int32)
        rows.append(row)
    return req_pool, kv, rows


def _reference(q: torch.Tensor, kv: TokenToKVPool, layer: AttentionLayer, slots: list[torch.Tensor]) -> torch.Tensor:
    """Per request, float64 softmax(q K^T * scale) V over its whole gathered K/V; ``[bs, Hq * D]``."""
    k_buf, v_buf = kv.get_kv_buffer(layer.layer_id)
    group = layer.num_heads // layer.num_kv_heads
    outs = []
    for i, idx in enumerate(slots):
        keys = k_buf[idx].double().repeat_interleave(group, 1).transpose(0, 1)  # [Hq, L, D]
        values = v_buf[idx].double().repeat_interleave(group, 1).transpose(0, 1)  # [Hq, L, D]
        qi = q[i].view(layer.num_heads, 1, D).double()  # [Hq, 1, D]
        p = torch.softmax(qi @ keys.transpose(1, 2) * layer.scaling, -1)  # [Hq, 1, L]
        outs.append((p @ values).view(-1))  # [Hq * D]
    return torch.stack(outs).to(q.dtype)


def test_find_prefix_groups() -> None:
    req_pool, _, rows = _pools(torch.float32, 0)
    lens = [seq + 1 for _, _, seq in REQUESTS]
    table = req_pool.req_to_token[torch.tensor(rows), : max(lens)]
    groups = find_prefix_groups(table, lens)
    assert sorted(groups) == [([0, 1, 3, 5, 12], 100), ([4, 7], MIN_PREFIX), ([6, 8], 70)]
    assert find_prefix_groups(table[:1], lens[:1]) == []
    step = plan_step(groups, table, len(lens))
    kinds = {int(step.rows[b0]): type(prefix) for b0, _, prefix in step.groups}
    assert kinds == {0: torch.Tensor, 4: slice, 6: torch.Tensor}  # b's consecutive prefix is a slice
    assert [step.starts[i] for i in (0, 2, 4, 6, 9, 13)] == [100, 0, MIN_PREFIX, 70, 0, 0]
    # the token being decoded stays in the suffix: two identical rows group over all but their last position
    same = table[[0, 0]]
    assert find_prefix_groups(same, [101, 101]) == [([0, 1], 100)]


def _tree_rows(shared: list[list[tuple[int, int]]], length: int) -> torch.Tensor:
    """``[len(shared), length]`` slot rows: row i takes positions ``[0, n)`` from source ``s`` for each ``(s, n)``
    of ``shared[i]`` (longest first), and unique slots after the longest."""
    sources = torch.arange(1, 1 + 20 * length).view(20, length)  # 20 slot sequences, all slot ids distinct
    out = torch.arange(10**6, 10**6 + len(shared) * length).view(len(shared), length).clone()  # unique slots
    for i, spans in enumerate(shared):
        for src, n in spans:
            out[i, :n] = sources[src, :n]
    return out


def test_find_prefix_groups_tree() -> None:
    lens = [400] * 8
    # all share a 3-token header (BOS + "Question:"); rows 0, 2, 4, 6 share 200 slots, rows 1, 3, 5, 7 share 150
    rows = _tree_rows([[(i % 2 + 1, 200 - 50 * (i % 2)), (0, 3)] for i in range(8)], 400)
    assert sorted(find_prefix_groups(rows, lens)) == [([0, 2, 4, 6], 200), ([1, 3, 5, 7], 150)]
    # 4 share 100, pairs 300: two groups of 300 save more than one of 100
    rows = _tree_rows([[(i // 2 + 1, 300), (0, 100)] for i in range(4)], 400)
    assert sorted(find_prefix_groups(rows, lens[:4])) == [([0, 1], 300), ([2, 3], 300)]
    # 8 share 300, pairs 310: one group of 300 saves more
    rows = _tree_rows([[(i // 2 + 1, 310), (0, 300)] for i in range(8)], 400)
    assert find_prefix_groups(rows, lens) == [(list(range(8)), 300)]


def test_merge_attention_matches_softmax_over_union() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 8, generator=gen), torch.randn(10, 8, generator=gen), torch.randn(10, 8, generator=gen)
    s = q @ k.T
    parts = [(torch.softmax(s[:, a:b], -1) @ v[a:b], torch.logsumexp(s[:, a:b], -1)) for a, b in ((0, 6), (6, 10))]
    got = merge_attention(parts[0][0], parts[0][1], parts[1][0], parts[1][1])
    torch.testing.assert_close(got, torch.softmax(s, -1) @ v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("q_per_kv", [1, 2, 4])
@pytest.mark.parametrize("dense_bytes", [0, 1 << 26])
def test_cascade_decode_matches_reference(q_per_kv: int, dense_bytes: int) -> None:
    layers = [AttentionLayer(0, HKV * q_per_kv, HKV, D, D**-0.5), AttentionLayer(1, HKV * q_per_kv, HKV, D, 0.3)]
    # cpu_kernel=False: the torch paths (dense copy, buckets, cascade) under test; the CPU kernel has its own tests
    worlds = [
        (TorchAttentionBackend(dense_bytes, shared_prefix=on, cpu_kernel=False), *_pools(torch.float32, 7))
        for on in (1, 0)
    ]
    gen = torch.Generator().manual_seed(q_per_kv)
    seq = [s for _, _, s in REQUESTS]
    for step in range(3):
        outs = []
        for backend, req_pool, kv, rows in worlds:
            table = req_pool.req_to_token
            loc = torch.stack([table[r, n] for r, n in zip(rows, seq, strict=True)]).to(torch.int64)
            batch = ForwardBatch.build(ForwardMode.DECODE, [0] * len(rows), rows, seq, [1] * len(rows), loc,
                                       req_pool, kv, backend)  # fmt: skip
            backend.init_forward_metadata(batch)
            assert ("shared_step" in batch.metadata) == backend.shared_prefix
            assert (batch.metadata.get("dense_step") is not None) == (dense_bytes > 0)
            if dense_bytes and step > 0:  # later steps append to the dense copy (of the suffixes) without a rebuild
                assert batch.metadata["dense_step"].rebuild_index is None
            slots = [table[r, : n + 1].to(torch.int64) for r, n in zip(rows, seq, strict=True)]
            gen_state = gen.get_state()
            got = []
            for layer in layers:
                q = torch.randn(len(rows), layer.num_heads * D, generator=gen)
                k, v = torch.randn(2, len(rows), HKV * D, generator=gen)
                out = backend.forward(q, k, v, layer, batch)
                torch.testing.assert_close(out, _reference(q, kv, layer, slots), atol=1e-5, rtol=0)
                got.append(out)
            gen.set_state(gen_state)  # the other world sees the same q/k/v
            outs.append(got)
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        gen.manual_seed(100 + step)
        seq = [s + 1 for s in seq]


def test_cascade_decode_bfloat16_pool() -> None:
    layer = AttentionLayer(0, HKV * 2, HKV, D, D**-0.5)
    backend = TorchAttentionBackend(cpu_kernel=False)
    req_pool, kv, rows = _pools(torch.bfloat16, 3)
    seq = [s for _, _, s in REQUESTS]
    table = req_pool.req_to_token
    loc = torch.stack([table[r, n] for r, n in zip(rows, seq, strict=True)]).to(torch.int64)
    batch = ForwardBatch.build(ForwardMode.DECODE, [0] * len(rows), rows, seq, [1] * len(rows), loc, req_pool, kv,
                               backend)  # fmt: skip
    backend.init_forward_metadata(batch)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(len(rows), layer.num_heads * D, generator=gen)
    k, v = torch.randn(2, len(rows), HKV * D, generator=gen)
    out = backend.forward(q, k, v, layer, batch)
    slots = [table[r, : n + 1].to(torch.int64) for r, n in zip(rows, seq, strict=True)]
    torch.testing.assert_close(out, _reference(q, kv, layer, slots), atol=1e-5, rtol=0)


def test_engine_shared_prefix_matches_plain_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared_paths import STORIES

    from radixgen.runtime import Engine
    from radixgen.runtime.attention import shared_prefix, torch_backend

    calls = []
    monkeypatch.setattr(
        torch_backend, "prefix_attention", lambda *a: calls.append(1) or shared_prefix.prefix_attention(*a)
    )
    prefix = [1, *(10 + (7 * i) % 200 for i in range(90))]
    prompts = [prefix + [20 + i, 30 + 2 * i][: 1 + i % 2] for i in range(5)] + [[1, 5, 6]]
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    results = []
    for on in (True, False):
        engine = Engine(str(STORIES), max_total_tokens=4096)
        engine.model_runner.attn_backend.shared_prefix = on
        engine.model_runner.attn_backend.allow_cpu_kernel = False  # the torch paths: the CPU kernel has no cascade
        engine.generate(input_ids=prefix, sampling_params=params | {"max_new_tokens": 1})  # caches the prefix
        outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
        results.append(outs)
        engine.scheduler.check_integrity()
    assert calls  # the cascade path ran
    for x, y in zip(*results, strict=True):
        assert x["output_ids"] == y["output_ids"]
        lx = torch.tensor([e[0] for e in x["meta_info"]["output_token_logprobs"]])
        ly = torch.tensor([e[0] for e in y["meta_info"]["output_token_logprobs"]])
        torch.testing.assert_close(lx, ly, atol=1e-4, rtol=0)
