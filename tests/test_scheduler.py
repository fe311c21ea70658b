"""Scheduler policy tests without model weights: a fake runner whose next token is (last token + 1) % V.

Every output is then known exactly, so chunking, retraction, abort and cache reuse are checked token for token,
and check_integrity() runs after every step.
"""

from __future__ import annotations

import pytest
import torch
from shared_paths import STORIES

from radixgen.radix import ReqToTokenPool, TokenSlotAllocator
from radixgen.runtime.forward_batch import ForwardMode
from radixgen.runtime.io_struct import AbortReq, TokenizedGenerateReq
from radixgen.runtime.req import Req, ReqStatus
from radixgen.runtime.sampling_params import SamplingParams
from radixgen.runtime.scheduler import Scheduler
from radixgen.runtime.server_args import ServerArgs

VOCAB = 97
EOS = 0


class FakeRunner:
    """Pools plus a 'model' that predicts (input token + 1) % VOCAB at every position."""

    def __init__(self, max_total_tokens: int, rows: int = 16, context_len: int = 256) -> None:
        self.vocab_size = VOCAB
        self.context_len = context_len
        self.max_total_tokens = max_total_tokens
        self.req_to_token_pool = ReqToTokenPool(rows, context_len + 1)
        self.allocator = TokenSlotAllocator(max_total_tokens)
        self.calls: list[tuple[ForwardMode, list[int]]] = []

    def forward(self, plan, logits_rows):
        mode, input_ids, req_pool_indices = plan.mode, plan.input_ids, plan.req_pool_indices
        prefix_lens, extend_lens, out_cache_loc = plan.prefix_lens, plan.extend_lens, plan.out_cache_loc
        assert out_cache_loc.numel() == len(input_ids) == sum(extend_lens)
        # every new token's slot was written into req_to_token before the forward
        table = self.req_to_token_pool.req_to_token
        off = 0
        for row, p, n in zip(req_pool_indices, prefix_lens, extend_lens, strict=True):
            assert torch.equal(table[row, p : p + n].long(), out_cache_loc[off : off + n])
            off += n
        self.calls.append((mode, list(extend_lens)))
        ids = torch.tensor(input_ids, dtype=torch.int64)[logits_rows]
        logits = torch.full((len(logits_rows), VOCAB), -10.0)
        logits[torch.arange(len(logits_rows)), (ids + 1) % VOCAB] = 10.0
        return logits


def make(max_total_tokens: int = 4096, **kw) -> tuple[Scheduler, FakeRunner]:
    args = ServerArgs(model_path=str(STORIES), **kw)
    runner = FakeRunner(max_total_tokens)
    return Scheduler(args, runner, eos_token_ids=(EOS,)), runner


def submit(s: Scheduler, rid: str, ids: list[int], n: int, stream: bool = False, **sp) -> None:
    params = {"max_new_tokens": n, "temperature": 0, **sp}
    req = TokenizedGenerateReq(rid=rid, input_ids=ids, sampling_params=SamplingParams(**params), stream=stream)
    s.add_request(req)


_TOKS: dict[int, dict[str, list[int]]] = {}


def step(s: Scheduler, done: dict[str, dict] | None = None) -> None:
    """One scheduler step; token deltas accumulate per scheduler so no output is lost between calls."""
    toks = _TOKS.setdefault(id(s), {})
    for out in s.step():
        toks.setdefault(out.rid, []).extend(out.new_token_ids)
        if out.finish_reason is not None and done is not None:
            done[out.rid] = {
                "ids": toks.pop(out.rid),
                "finish": out.finish_reason.to_json(),
                "cached": out.cached_tokens,
            }
    s.check_integrity()


def run(s: Scheduler, max_steps: int = 10_000) -> dict[str, dict]:
    done: dict[str, dict] = {}
    for _ in range(max_steps):
        if not s.has_work():
            break
        step(s, done)
    assert not s.has_work()
    return done


def expected(prompt: list[int], n: int) -> list[int]:
    return [(prompt[-1] + i) % VOCAB for i in range(1, n + 1)]


def test_outputs_exact_and_memory_returned() -> None:
    s, runner = make()
    prompts = {f"r{i}": list(range(1 + i, 6 + 2 * i)) for i in range(8)}
    for rid, p in prompts.items():
        submit(s, rid, p, 10, ignore_eos=True)
    done = run(s)
    for rid, p in prompts.items():
        assert done[rid]["ids"] == expected(p, 10)
        assert done[rid]["finish"] == {"type": "length", "length": 10}
    # every slot is free or cached (evictable), nothing leaked
    assert runner.allocator.available_size() + s.tree_cache.evictable_size() == runner.max_total_tokens
    assert s.tree_cache.protected_size() == 0


@pytest.mark.parametrize(
    ("stream", "server_interval", "own_interval", "n", "sizes"),
    [
        (True, 1, None, 4, [1, 1, 1, 1]),  # streamed: every token
        (True, 3, None, 10, [1, 3, 3, 3]),  # --stream-interval 3: the first token, then every 3
        (True, 3, 5, 12, [1, 5, 5, 1]),  # the request's own stream_interval wins
        (False, 1, None, 120, [1, 50, 50, 19]),  # not streamed: the first token, every 50, the end
    ],
)
def test_outputs_go_out_at_the_stream_interval(
    stream: bool, server_interval: int, own_interval: int | None, n: int, sizes: list[int]
) -> None:
    """Req.output_due: a request's tokens reach the detokenizer in deltas of these sizes, none lost."""
    s, _ = make(stream_interval=server_interval)
    submit(s, "r", [3, 4, 5], n, stream=stream, ignore_eos=True, stream_interval=own_interval)
    deltas: list[list[int]] = []
    while s.has_work():
        deltas += [out.new_token_ids for out in s.step() if out.rid == "r"]
        s.check_integrity()
    assert [len(d) for d in deltas] == sizes
    assert [t for d in deltas for t in d] == expected([3, 4, 5], n)


def test_chunked_prefill_interleaves_with_decode() -> None:
    """Without mixed batches, extend steps alternate with decode steps."""
    s, runner = make(chunked_prefill_size=8, disable_mixed_chunk=True)
    submit(s, "short", [5, 6, 7], 30, ignore_eos=True)
    step(s)  # prefill of the short request
    submit(s, "long", list(range(1, 41)), 3, ignore_eos=True)
    done = run(s)
    assert done["long"]["ids"] == expected(list(range(1, 41)), 3)
    assert done["short"]["ids"] == expected([5, 6, 7], 30)
    extend_sizes = [lens for mode, lens in runner.calls if mode == ForwardMode.EXTEND]
    assert [8] * 5 == [x for lens in extend_sizes for x in lens if x == 8][:5]  # 40 tokens in 5 chunks
    modes = [m for m, _ in runner.calls]
    # between two chunks of the long prompt, the short request decoded
    first_chunk = next(i for i, (m, lens) in enumerate(runner.calls) if m == ForwardMode.EXTEND and lens == [8])
    assert modes[first_chunk + 1] == ForwardMode.DECODE


def test_mixed_batches_carry_decode_rows_within_the_chunk_budget() -> None:
    """A prefill chunk rides with one decode token of every running request; the chunk budget counts them first."""
    s, runner = make(chunked_prefill_size=8)
    submit(s, "a", [5, 6, 7], 30, ignore_eos=True)
    submit(s, "b", [50, 51], 30, ignore_eos=True)
    step(s)  # both prompts in one extend
    step(s)  # a decode step
    long = list(range(1, 41))
    submit(s, "long", long, 3, ignore_eos=True)
    before = len(runner.calls)
    step(s)
    mode, lens = runner.calls[before]
    assert mode == ForwardMode.EXTEND and lens == [1, 1, 6]  # a and b decode, 8 - 2 prompt tokens
    assert s.step_timer.summary()["mixed"]["steps"] == 1
    done = run(s)
    assert done["long"]["ids"] == expected(long, 3)
    assert done["a"]["ids"] == expected([5, 6, 7], 30)
    assert done["b"]["ids"] == expected([50, 51], 30)
    chunk_steps = [lens for mode, lens in runner.calls[before:] if mode == ForwardMode.EXTEND]
    assert all(sum(lens) <= 8 for lens in chunk_steps)
    assert sum(lens[-1] for lens in chunk_steps) == 40  # the prompt in 7 chunks, never a decode-only step between
    assert all(mode == ForwardMode.EXTEND for mode, _ in runner.calls[before : before + len(chunk_steps)])
    assert runner.allocator.available_size() + s.tree_cache.evictable_size() == runner.max_total_tokens


def test_retraction_when_pool_is_full_finishes_every_request() -> None:
    s, runner = make(max_total_tokens=160)
    prompts = {f"r{i}": [1 + i] * 10 for i in range(8)}
    for rid, p in prompts.items():
        submit(s, rid, p, 30, ignore_eos=True)
    done = run(s)
    assert s.num_retractions > 0
    for rid, p in prompts.items():
        assert done[rid]["ids"] == expected(p, 30), rid


def test_abort_queued_and_running_frees_everything() -> None:
    s, runner = make()
    submit(s, "a", [1, 2, 3, 4], 50, ignore_eos=True)
    submit(s, "b", [9, 9, 9], 50, ignore_eos=True)
    step(s)
    step(s)
    assert s.abort_request(AbortReq("a"))
    submit(s, "c", [7, 7], 50, ignore_eos=True)
    assert s.abort_request(AbortReq("c"))  # still queued
    assert not s.abort_request(AbortReq("nope"))
    done = run(s)
    assert done["a"]["finish"]["type"] == "abort"
    assert done["c"]["finish"]["type"] == "abort"
    assert done["b"]["ids"] == expected([9, 9, 9], 50)
    assert s.tree_cache.protected_size() == 0
    assert runner.allocator.available_size() + s.tree_cache.evictable_size() == runner.max_total_tokens


def test_prefix_cache_hit_and_eos_stop() -> None:
    s, _ = make()
    prefix = list(range(10, 60))
    submit(s, "first", prefix + [1], 5, ignore_eos=True)
    run(s)
    submit(s, "second", prefix + [2], 5, ignore_eos=True)
    done = run(s)
    assert done["second"]["cached"] >= len(prefix)
    # the fake model emits EOS (0) after 96: the request stops there with matched=0
    submit(s, "eos", [94], 20)
    done = run(s)
    assert done["eos"]["ids"] == [95, 96, 0]
    assert done["eos"]["finish"] == {"type": "stop", "matched": 0}


def test_lpm_orders_by_cached_prefix() -> None:
    order = {}
    for policy in ("fcfs", "lpm"):
        s, runner = make(schedule_policy=policy)
        shared = list(range(20, 70))
        submit(s, "warm", shared + [3], 1)
        run(s)
        submit(s, "cold", list(range(1, 40)), 1)  # arrives first, nothing cached
        submit(s, "hot", shared + [4], 1)  # 50 tokens cached: extends 1 token
        step(s)
        order[policy] = runner.calls[-1][1]
        run(s)
    assert order["fcfs"] == [39, 1]
    assert order["lpm"] == [1, 39]


def test_max_new_tokens_zero_only_prefills_and_caches() -> None:
    s, _ = make()
    submit(s, "p", list(range(30, 60)), 0)
    done = run(s)
    assert done["p"]["ids"] == [] and done["p"]["finish"]["type"] == "length"
    assert s.tree_cache.total_size() >= 29


def test_requests_sharing_an_uncached_prefix_compute_it_once() -> None:
    s, runner = make()
    prefix = list(range(1, 81))
    for i in range(4):
        submit(s, f"g{i}", prefix + [90 + i], 4, ignore_eos=True)
    done = run(s)
    # the first computes the prefix; the other three are deferred one step and hit the cache
    assert sorted(d["cached"] for d in done.values()) == [0, 80, 80, 80]
    extended = sum(sum(lens) for mode, lens in runner.calls if mode == ForwardMode.EXTEND)
    assert extended == 81 + 3 * 1 + 1  # and g0's decode token, which rides in the second (mixed) extend
    for i in range(4):
        assert done[f"g{i}"]["ids"] == expected(prefix + [90 + i], 4)


def test_running_request_prompt_is_reusable_before_it_finishes() -> None:
    s, _ = make()
    prefix = list(range(5, 65))
    submit(s, "long", prefix + [1], 40, ignore_eos=True)
    step(s)
    step(s)  # "long" is decoding now; its prompt is already in the cache
    submit(s, "late", prefix + [2], 3, ignore_eos=True)
    done = run(s)
    assert done["late"]["cached"] == len(prefix)


# ---------------------------------------------------------------------------------------------------- request states
def test_req_status_transitions_are_checked() -> None:
    req = Req("r", [1, 2, 3], SamplingParams())
    assert req.status is ReqStatus.WAITING
    with pytest.raises(RuntimeError, match="waiting -> running"):
        req.set_status(ReqStatus.RUNNING)  # a request is prefilled before it decodes
    for status in (ReqStatus.PREFILLING, ReqStatus.RUNNING, ReqStatus.RETRACTED, ReqStatus.PREFILLING,
                   ReqStatus.RUNNING, ReqStatus.WAITING, ReqStatus.PREFILLING, ReqStatus.FINISHED):
        req.set_status(status)
    for status in ReqStatus:
        if status is not ReqStatus.FINISHED:
            with pytest.raises(RuntimeError, match="illegal status transition finished"):
                req.set_status(status)


def test_statuses_follow_the_request_through_chunks_decode_retraction_and_finish() -> None:
    s, _ = make(max_total_tokens=140, chunked_prefill_size=8)
    seen: dict[str, list[ReqStatus]] = {}
    for i in range(8):
        submit(s, f"r{i}", [1 + i] * 10, 30, ignore_eos=True)
    done: dict[str, dict] = {}
    live = dict(s.reqs)
    while s.has_work():
        step(s, done)  # check_integrity after every step: queues == statuses
        for rid, req in live.items():
            if not seen.get(rid) or seen[rid][-1] is not req.status:
                seen.setdefault(rid, []).append(req.status)
    assert s.num_retractions > 0 and not s.reqs
    assert seen["r0"][:2] == [ReqStatus.PREFILLING, ReqStatus.RUNNING]  # 10 tokens in chunks of 8, then decode
    assert any(ReqStatus.RETRACTED in v for v in seen.values())
    assert all(v[-1] is ReqStatus.FINISHED for v in seen.values())
    assert set(done) == set(live)


def test_check_integrity_finds_a_request_in_the_wrong_queue() -> None:
    s, _ = make()
    submit(s, "a", [1, 2, 3], 10, ignore_eos=True)
    step(s)
    assert s.reqs["a"].status is ReqStatus.RUNNING and s.running == [s.reqs["a"]]
    s.reqs["a"].status = ReqStatus.WAITING  # corrupt: running, but the status says waiting
    with pytest.raises(AssertionError, match="in the running batch"):
        s.check_integrity()
    s.reqs["a"].status = ReqStatus.RUNNING
    s.running.clear()  # corrupt: live, but in no queue
    with pytest.raises(AssertionError, match="live requests and queues differ"):
        s.check_integrity()
