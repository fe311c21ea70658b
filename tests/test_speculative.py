"""Speculative decoding (runtime/speculative): n-gram and draft-model proposals verified by the target.

Greedy outputs must be token for token those of decoding without speculation — with n-gram proposals, with
stories260K as its own draft (acceptance ~100%) and with a random draft of the same shape (acceptance ~0) — also
under chunked prefill, retraction, grammar constraints and stop strings that fall inside a draft. The acceptance
rule's sampled tokens must follow the target's processed distribution (chi-square). After every step the
scheduler's (and the draft's) KV accounting holds, and after a run the pools are idle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from shared_paths import STORIES

from radixgen.runtime import Engine
from radixgen.runtime.io_struct import AbortReq, SchedulerStats
from radixgen.runtime.metrics import ServerMetrics
from radixgen.runtime.sampler import Sampler, SamplingBatchInfo, filtered_probs, process_logits
from radixgen.runtime.sampling_params import SamplingParams
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.speculative import NgramProposer, VerifyRows, accept_drafts

GOLDEN = (STORIES / "reference_greedy_from_bos_200.txt").read_text()
K = 4


def _prompts(engine: Engine) -> list[list[int]]:
    """16 mixed prompts: 8 plain story openings of different lengths, 8 that repeat a passage (copy-heavy)."""
    ids = engine.tokenizer.encode(GOLDEN)
    plain = [[1, *ids[(11 * i) % 80 : (11 * i) % 80 + 4 + 5 * i]] for i in range(8)]
    copy = [[1, *ids[9 * i : 9 * i + 24], *ids[9 * i : 9 * i + 6 + i]] for i in range(8)]
    return [p for pair in zip(plain, copy, strict=True) for p in pair]


def _params(i: int, **extra: Any) -> dict[str, Any]:
    return {"temperature": 0, "max_new_tokens": 20 + 3 * i, "ignore_eos": i % 3 != 0, **extra}


def _checked(engine: Engine) -> Engine:
    """Make every scheduler step of ``engine`` end with ``check_integrity``."""
    sched = engine.scheduler
    step = sched.step

    def checked_step() -> Any:
        out = step()
        sched.check_integrity()
        return out

    sched.step = checked_step  # type: ignore[method-assign]
    return engine


def _assert_idle(engine: Engine) -> None:
    """No request holds KV: every slot of the target's (and the draft's) pool is free or evictable cache."""
    sched = engine.scheduler
    sched.check_integrity()
    assert not sched.reqs
    pools = [(engine.model_runner.allocator, sched.tree_cache, engine.model_runner.max_total_tokens)]
    proposer = sched.spec.proposer if sched.spec is not None else None
    if hasattr(proposer, "runner"):
        pools.append((proposer.runner.allocator, proposer.kv.tree_cache, proposer.runner.max_total_tokens))
    for allocator, cache, total in pools:
        assert allocator.available_size() + cache.evictable_size() == total
        assert cache.protected_size() == 0


def _generate(engine: Engine, prompts: list[list[int]], **extra: Any) -> list[dict[str, Any]]:
    out = engine.generate(input_ids=prompts, sampling_params=[_params(i, **extra) for i in range(len(prompts))])
    assert isinstance(out, list)
    return out


@pytest.fixture(scope="module")
def prompts(engine: Engine) -> list[list[int]]:
    return _prompts(engine)


@pytest.fixture(scope="module")
def baseline(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    return [o["output_ids"] for o in _generate(engine, prompts)]


@pytest.fixture(scope="module")
def random_draft(tmp_path_factory: pytest.TempPathFactory) -> str:
    """stories260K's config and tokenizer with random weights (fixed seed): a draft that almost never agrees."""
    d = tmp_path_factory.mktemp("random_draft")
    for f in ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(STORIES / f, d / f)
    gen = torch.Generator().manual_seed(1234)
    weights = load_file(str(STORIES / "model.safetensors"))
    noisy = {k: torch.randn(v.shape, generator=gen) * float(v.float().std()) + float(v.float().mean())
             for k, v in weights.items()}  # fmt: skip
    save_file(noisy, str(d / "model.safetensors"))
    return str(d)


def _spec_engine(**kwargs: Any) -> Engine:
    base: dict[str, Any] = {"max_total_tokens": 8192, "max_running_requests": 64, "speculative_num_draft_tokens": K}
    return _checked(Engine(str(STORIES), **{**base, **kwargs}))


# ---------------------------------------------------------------------------------------------------- proposer
def test_ngram_proposer_longest_then_most_recent_match() -> None:
    p = NgramProposer(1, 3)
    # suffix [5, 6] occurs at 0-1 (followed by 7, 8) and [4, 5, 6] at 4-6 (followed by 9): the longest wins
    assert p.propose([5, 6, 7, 8, 4, 5, 6, 9, 1, 4, 5, 6], 3) == [9, 1, 4]
    assert p.propose([3, 1, 3, 2, 3], 2) == [2, 3]  # equal length: the most recent occurrence
    assert p.propose([3, 1, 3, 2, 3], 4) == [2, 3, 2, 3]  # past the end: the period-2 repetition continues
    assert p.propose([8, 9, 9, 9], 4) == [9, 9, 9, 9]  # a run of one token: full-length proposals
    assert p.propose([1, 2, 3, 4], 4) == []  # no earlier occurrence of the last token
    assert NgramProposer(2, 3).propose([7, 1, 7], 2) == []  # a 1-gram match is below the minimum window
    assert p.propose([1, 2, 1, 2], 0) == []


# ---------------------------------------------------------------------------------------------------- greedy
def test_greedy_equal_ngram(prompts: list[list[int]], baseline: list[list[int]]) -> None:
    eng = _spec_engine(speculative_algorithm="ngram")
    outs = _generate(eng, prompts)
    assert [o["output_ids"] for o in outs] == baseline
    stats = eng.scheduler.spec.stats
    assert stats.accepted > 0 and stats.proposed > stats.accepted  # the copy-heavy prompts pay, others miss
    meta = outs[1]["meta_info"]  # a copy-heavy prompt
    assert meta["spec_verify_ct"] >= 1
    assert meta["spec_accept_length"] == pytest.approx(
        (meta["completion_tokens"] - 1) / meta["spec_verify_ct"]
    )  # every output but the prefill's came from a verify forward (none stopped inside a draft here)
    _assert_idle(eng)


def test_greedy_equal_self_draft(prompts: list[list[int]], baseline: list[list[int]]) -> None:
    eng = _spec_engine(speculative_algorithm="draft", speculative_draft_model_path=str(STORIES))
    assert [o["output_ids"] for o in _generate(eng, prompts)] == baseline
    assert eng.scheduler.spec.stats.acceptance_rate > 0.97
    _assert_idle(eng)


def test_greedy_equal_random_draft(prompts: list[list[int]], baseline: list[list[int]], random_draft: str) -> None:
    eng = _spec_engine(speculative_algorithm="draft", speculative_draft_model_path=random_draft)
    assert [o["output_ids"] for o in _generate(eng, prompts)] == baseline
    assert eng.scheduler.spec.stats.acceptance_rate < 0.1
    _assert_idle(eng)


def test_greedy_equal_chunked_prefill(prompts: list[list[int]], baseline: list[list[int]]) -> None:
    eng = _spec_engine(speculative_algorithm="ngram", chunked_prefill_size=8)
    assert [o["output_ids"] for o in _generate(eng, prompts)] == baseline
    assert eng.scheduler.num_extend_steps > len(prompts)  # prompts took several chunks
    _assert_idle(eng)


@pytest.mark.parametrize("algorithm", ["ngram", "draft"])
def test_greedy_equal_under_retraction(engine: Engine, prompts: list[list[int]], algorithm: str) -> None:
    params = [_params(i, max_new_tokens=40, ignore_eos=True) for i in range(len(prompts))]
    alone = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
    draft = {"speculative_draft_model_path": str(STORIES)} if algorithm == "draft" else {}
    eng = _spec_engine(speculative_algorithm=algorithm, max_total_tokens=200, max_running_requests=16, **draft)
    outs = eng.generate(input_ids=prompts, sampling_params=params)
    assert eng.scheduler.num_retractions > 0
    assert [o["output_ids"] for o in outs] == alone
    _assert_idle(eng)


CONSTRAINTS = [
    {"regex": "(Once upon a time|One day), [a-z ]{3,40}\\."},
    {"json_schema": json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                "age": {"type": "integer"}}, "required": ["name", "age"]})},  # fmt: skip
]


@pytest.mark.parametrize("algorithm", ["ngram", "draft"])
@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=["regex", "json_schema"])
def test_greedy_equal_with_grammar(
    engine: Engine, prompts: list[list[int]], algorithm: str, constraint: dict[str, str]
) -> None:
    batch = prompts[:6]
    params = [{"temperature": 0, "max_new_tokens": 48, **constraint} for _ in batch]
    ref = engine.generate(input_ids=batch, sampling_params=params)
    draft = {"speculative_draft_model_path": str(STORIES)} if algorithm == "draft" else {}
    eng = _spec_engine(speculative_algorithm=algorithm, **draft)
    outs = eng.generate(input_ids=batch, sampling_params=params)
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in ref]
    assert [o["meta_info"]["finish_reason"] for o in outs] == [o["meta_info"]["finish_reason"] for o in ref]
    if algorithm == "draft":
        assert eng.scheduler.spec.stats.accepted > 0  # drafts were drawn under the grammar's masks and verified
    _assert_idle(eng)


def test_stop_strings_inside_draft(engine: Engine, prompts: list[list[int]], baseline: list[list[int]]) -> None:
    # a stop string from the middle of each greedy output; with the target as its own draft (4 tokens accepted
    # per forward) it falls inside a draft, so the emitted tokens after it must be dropped
    stops = []
    for out in baseline:
        text = engine.tokenizer.decode(out[8:])
        stops.append(text[: max(3, min(8, len(text)))].strip() or text[:3])
    params = [_params(i, stop=[s]) for i, s in enumerate(stops)]
    ref = engine.generate(input_ids=prompts, sampling_params=params)
    eng = _spec_engine(speculative_algorithm="draft", speculative_draft_model_path=str(STORIES))
    outs = eng.generate(input_ids=prompts, sampling_params=params)
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in ref]
    assert [o["text"] for o in outs] == [o["text"] for o in ref]
    assert sum(o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs) >= 12
    assert eng.scheduler.spec.stats.stopped_inside >= 8  # the stop came inside a verified draft
    _assert_idle(eng)


def test_logprobs_are_the_targets(engine: Engine, prompts: list[list[int]]) -> None:
    kw = {"return_logprob": True, "top_logprobs_num": 3}
    ref = engine.generate(input_ids=prompts[:4], sampling_params=[_params(i) for i in range(4)], **kw)
    eng = _spec_engine(speculative_algorithm="draft", speculative_draft_model_path=str(STORIES))
    outs = eng.generate(input_ids=prompts[:4], sampling_params=[_params(i) for i in range(4)], **kw)
    for o, r in zip(outs, ref, strict=True):
        got, want = o["meta_info"]["output_token_logprobs"], r["meta_info"]["output_token_logprobs"]
        assert [t[1] for t in got] == [t[1] for t in want] == r["output_ids"]
        assert [t[0] for t in got] == pytest.approx([t[0] for t in want], abs=1e-4)
        assert len(o["meta_info"]["output_top_logprobs"]) == len(o["output_ids"])


def test_abort_mid_draft_and_pool_idle(prompts: list[list[int]]) -> None:
    eng = _spec_engine(speculative_algorithm="draft", speculative_draft_model_path=str(STORIES))
    states = [eng._submit(p) for p in _planned(eng, prompts)]
    for _ in range(4):
        eng._dispatch()
    assert any(r.draft_state is not None and r.draft_state.kv_len > 0 for r in eng.scheduler.reqs.values())
    for st in states[::2]:
        eng.scheduler.abort_request(AbortReq(st.rid))
        eng.scheduler.check_integrity()
    while eng.scheduler.has_work():
        eng._dispatch()
    assert all(st.finished for st in states)
    assert {st.finish_reason.type for st in states[::2]} == {"abort"}  # type: ignore[union-attr]
    _assert_idle(eng)


def _planned(eng: Engine, prompts: list[list[int]]) -> list[Any]:
    from radixgen.runtime.generate_request import GenerateReqInput, plan_requests

    obj = GenerateReqInput(input_ids=prompts, sampling_params=[_params(i) for i in range(len(prompts))])
    planned, _ = plan_requests(obj, eng.tokenizer, eng.model_runner.context_len, eng.model_runner.vocab_size, "prompt")
    return planned


def test_seeded_sampling_reproducible_and_max_new_tokens(prompts: list[list[int]]) -> None:
    eng = _spec_engine(speculative_algorithm="ngram")
    params = [{"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 30, "ignore_eos": True, "seed": 7 + i}
              for i in range(len(prompts))]  # fmt: skip
    first = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
    second = [o["output_ids"] for o in eng.generate(input_ids=prompts[::-1], sampling_params=params[::-1])][::-1]
    assert first == second  # a seeded request draws from its own generator whatever else runs with it
    assert all(len(o) == 30 for o in first)
    _assert_idle(eng)


# ---------------------------------------------------------------------------------------------------- sampling
def _exact_sampling_counts(
    target: torch.Tensor, draft_q: torch.Tensor | None, params: SamplingParams, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``n`` verify rounds over fixed target logits ``[3, V]`` (K = 2 drafts) and return (counts of the first
    emitted token, its expected probabilities, counts of the second emitted token when the first draft was
    accepted, its expected probabilities)."""
    V = target.shape[1]
    sampler = Sampler(seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    rows, drafts_used = [], []
    for _ in range(n):
        if draft_q is None:
            d = [int(target[0].argsort()[-2]), int(target[1].argmax())]  # a plausible, often rejected n-gram guess
        else:
            d = [int(torch.multinomial(draft_q[j], 1, generator=gen)) for j in range(2)]
        drafts_used.append(d)
        rows.append(VerifyRows(params, None, [1], [], d, draft_q, []))
    logits = target.repeat(n, 1)  # [3n, V]
    out = accept_drafts(logits, rows, sampler)
    first = torch.bincount(torch.tensor([o[0] for o in out]), minlength=V).double()
    second_tokens = [o[1] for o, d in zip(out, drafts_used, strict=True) if len(o) > 1 and o[0] == d[0]]
    second = torch.bincount(torch.tensor(second_tokens, dtype=torch.int64), minlength=V).double()
    # expected: the sampler's processed distribution at each position (row 1 sees the first draft as an output)
    info0 = SamplingBatchInfo.build([params], [None], [[]], [[1]], [[]], V)
    p0 = filtered_probs(process_logits(target[:1], info0), info0)[0]
    info1 = SamplingBatchInfo.build([params], [None], [[drafts_used[0][0]]], [[1]], [[]], V)
    p1 = filtered_probs(process_logits(target[1:2], info1), info1)[0]
    return first, p0.double(), second, p1.double()


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness-of-fit p-value (the chi-square survival function is the regularised upper
    incomplete gamma function Q(df / 2, x / 2))."""
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was emitted"
    expected = probs[keep] / probs[keep].sum() * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = torch.tensor(float(keep.sum() - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


@pytest.mark.parametrize("kind", ["ngram", "draft"])
def test_sampling_exactness_chi_square(kind: str) -> None:
    """Tiny random "model" (fixed-seed logits over V = 12): the emitted tokens follow the target's processed
    distribution (temperature 0.8, top-k 9), for deterministic n-gram drafts and for a draft distribution q."""
    V, n = 12, 20000
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, V, generator=g) * 1.5  # [K + 1 = 3, V]
    params = SamplingParams(temperature=0.8, top_k=9)
    q = None
    if kind == "draft":
        q = torch.softmax(torch.randn(2, V, generator=g) * 1.5, dim=-1)  # [K = 2, V] a different distribution
    first, p0, second, p1 = _exact_sampling_counts(target, q, params, n, seed=3)
    assert _chi2_pvalue(first, p0) > 1e-3
    if kind == "ngram":  # one fixed first draft: the second token is conditioned on it when it was accepted
        assert second.sum() > 2000
        assert _chi2_pvalue(second, p1) > 1e-3
    # power: the same counts against a distribution with 2% of the mass moved between two likely tokens
    shifted = p0.clone()
    top = torch.argsort(p0, descending=True)
    shifted[top[0]] -= 0.02
    shifted[top[1]] += 0.02
    assert _chi2_pvalue(first, shifted) < 1e-3


# ---------------------------------------------------------------------------------------------------- options
def test_server_args_and_vocab_check(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speculative_draft_model_path"):
        ServerArgs(str(STORIES), speculative_algorithm="draft")
    with pytest.raises(ValueError, match="speculative_num_draft_tokens"):
        ServerArgs(str(STORIES), speculative_algorithm="ngram", speculative_num_draft_tokens=0)
    with pytest.raises(ValueError, match="speculative_algorithm"):
        ServerArgs(str(STORIES), speculative_algorithm="eagle")  # type: ignore[arg-type]
    cfg = json.loads((STORIES / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "vocab_size": 256}))
    with pytest.raises(ValueError, match="speculative_draft_model_path: the draft model's vocabulary"):
        Engine(str(STORIES), speculative_algorithm="draft", speculative_draft_model_path=str(tmp_path))


def test_cli_flags() -> None:
    from radixgen.runtime.server_args import server_args_from_cli

    flags = ["--speculative-algorithm", "draft", "--speculative-draft-model", str(STORIES)]
    args = server_args_from_cli(["--model", str(STORIES), *flags, "--speculative-num-draft-tokens", "6"])
    assert (args.speculative_algorithm, args.speculative_draft_model_path) == ("draft", str(STORIES))
    assert args.speculative_num_draft_tokens == 6


def test_metrics_accept_length_histogram() -> None:
    m = ServerMetrics()
    base = SchedulerStats(0, 0, 0, 0, 0, 0, 100)
    for verify, proposed, accepted, hist in [(3, 8, 5, [0, 1, 0, 2]), (5, 12, 8, [0, 2, 0, 3])]:
        m.observe_stats(SchedulerStats(**{**{f: getattr(base, f) for f in base.__struct_fields__},
                                          "spec_verify_forwards": verify, "spec_proposed_tokens": proposed,
                                          "spec_accepted_tokens": accepted, "spec_accept_hist": hist}))  # fmt: skip
    text = m.render().decode()
    assert "radixgen_spec_accept_length_count 5.0" in text
    assert "radixgen_spec_accept_length_sum 11.0" in text  # 2 forwards of 1 token, 3 of 3
    assert "radixgen_spec_acceptance_rate 0.666" in text
    assert "radixgen_spec_proposed_tokens_total 12.0" in text
