"""The dense decode KV copy (runtime/attention/dense_decode_kv.py) against the gather path it replaces: same greedy
tokens and logprobs while requests finish at different steps (rebuilds), sequences grow past the copy's headroom,
and new requests join mid-decode; and the fallback when the copy does not fit its budget."""

from __future__ import annotations

import torch
from shared_paths import STORIES

from radixgen.runtime import Engine
from radixgen.runtime.attention.dense_decode_kv import CAP_HEADROOM, DenseDecodeKV
from radixgen.runtime.io_struct import TokenizedGenerateReq
from radixgen.runtime.sampling_params import SamplingParams


def _run(engine: Engine) -> list[dict]:
    prompts = [[1, *range(10 + 3 * i, 10 + 3 * i + 5 + 7 * i)] for i in range(6)]
    params = [
        {"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in (5, CAP_HEADROOM + 30, 17, 40, 3, 90)
    ]
    first = engine.generate(input_ids=prompts[:4], sampling_params=params[:4], return_logprob=True)
    # a second batch after the first finished: the copy is rebuilt for other rows
    second = engine.generate(input_ids=prompts[4:], sampling_params=params[4:], return_logprob=True)
    return [*first, *second]  # type: ignore[list-item]


def test_dense_matches_gather_path() -> None:
    dense = Engine(str(STORIES), max_total_tokens=4096)
    gather = Engine(str(STORIES), max_total_tokens=4096, dense_decode_kv_mb=0)
    assert dense.model_runner.attn_backend.dense is not None
    assert gather.model_runner.attn_backend.dense is None
    a, b = _run(dense), _run(gather)
    for x, y in zip(a, b, strict=True):
        assert x["output_ids"] == y["output_ids"]
        lx = torch.tensor([e[0] for e in x["meta_info"]["output_token_logprobs"]])
        ly = torch.tensor([e[0] for e in y["meta_info"]["output_token_logprobs"]])
        torch.testing.assert_close(lx, ly, atol=1e-4, rtol=0)
    dense.scheduler.check_integrity()


def test_dense_mid_decode_join_matches_alone() -> None:
    engine = Engine(str(STORIES), max_total_tokens=4096)
    params = {"temperature": 0, "max_new_tokens": 30, "ignore_eos": True}
    prompts = [[1, 50 + i, 60 + i] for i in range(3)]
    alone = [engine.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
    sched, got, sp = engine.scheduler, {}, SamplingParams(**params)
    sched.add_request(TokenizedGenerateReq(rid="0", input_ids=prompts[0], sampling_params=sp))
    for step in range(200):
        if step == 10:  # request 0 has decoded alone (the dense copy holds one row); two more join
            for i in (1, 2):
                sched.add_request(TokenizedGenerateReq(rid=str(i), input_ids=prompts[i], sampling_params=sp))
        for out in sched.step():
            got.setdefault(out.rid, []).extend(out.new_token_ids)
        if step > 10 and not sched.has_work():
            break
    assert [got[str(i)] for i in range(3)] == alone


def test_budget_refusal_falls_back() -> None:
    kv = DenseDecodeKV(budget_bytes=1, bucket=16)
    table = torch.zeros((4, 64), dtype=torch.int32)
    assert kv.prepare([0, 1], [5, 7], table, num_layers=2, kv_shape=(4, 8), dtype=torch.float32) is None
    small = Engine(str(STORIES), max_total_tokens=4096, dense_decode_kv_mb=0)
    big = Engine(str(STORIES), max_total_tokens=4096, dense_decode_kv_mb=1)
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    ids = [[1, 20, 30], [1, 40]]
    assert [o["output_ids"] for o in small.generate(input_ids=ids, sampling_params=params)] == [
        o["output_ids"] for o in big.generate(input_ids=ids, sampling_params=params)
    ]
