"""Tests for the batched sampler, penalties and logprob helpers (CPU, deterministic, fast)."""

from __future__ import annotations

import math

import pytest
import torch

from radixgen.runtime.sampler import (
    Sampler,
    SamplingBatchInfo,
    compute_logprobs,
    filtered_probs,
    gather_token_logprobs,
    process_logits,
    top_logprobs,
)
from radixgen.runtime.sampling_params import SamplingParams

V = 32


def make_info(
    params: list[SamplingParams],
    generators: list[torch.Generator | None] | None = None,
    output_ids: list[list[int]] | None = None,
    prompt_ids: list[list[int]] | None = None,
    suppress_ids: list[list[int]] | None = None,
    vocab_size: int = V,
) -> SamplingBatchInfo:
    n = len(params)
    return SamplingBatchInfo.build(
        params,
        generators if generators is not None else [None] * n,
        output_ids if output_ids is not None else [[] for _ in range(n)],
        prompt_ids if prompt_ids is not None else [[] for _ in range(n)],
        suppress_ids if suppress_ids is not None else [[] for _ in range(n)],
        vocab_size,
    )


def rand_logits(bs: int, vocab: int = V, seed: int = 0) -> torch.Tensor:
    return torch.randn(bs, vocab, generator=torch.Generator().manual_seed(seed)) * 2.0


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_is_argmax_and_input_untouched() -> None:
    logits = rand_logits(6)
    before = logits.clone()
    info = make_info([SamplingParams(temperature=0.0)] * 6)
    ids = Sampler().sample(logits, info)
    assert ids.dtype == torch.int64 and ids.shape == (6,)
    assert torch.equal(ids, logits.argmax(-1))
    assert torch.equal(logits, before)


def test_top_k_one_is_greedy_even_at_temperature_one() -> None:
    logits = rand_logits(8, seed=1)
    params = [SamplingParams(temperature=1.0, top_k=1)] * 4 + [SamplingParams(temperature=1.0)] * 4
    info = make_info(params)
    assert info.is_greedy.tolist() == [True] * 4 + [False] * 4
    for step in range(20):
        ids = Sampler(seed=step).sample(logits, info)
        assert torch.equal(ids[:4], logits[:4].argmax(-1))


def _step_logits(history: list[int], row_key: int) -> torch.Tensor:
    """Logits that depend on a row's own history (like a model would): ``[V]`` float32."""
    g = torch.Generator().manual_seed(1000 * row_key + (history[-1] if history else 0) + 7 * len(history))
    return torch.randn(V, generator=g)


def _generate(params: list[SamplingParams], seeds: list[int | None], steps: int, sampler_seed: int) -> list:
    """Run ``steps`` decode steps for a batch; returns each row's generated ids."""
    gens = [seeded(s) if s is not None else None for s in seeds]
    outs: list[list[int]] = [[] for _ in params]
    prompts = [[1, 2, 3] for _ in params]
    sampler = Sampler(seed=sampler_seed)
    for _ in range(steps):
        keys = [s if s is not None else 10_000 + i for i, s in enumerate(seeds)]
        logits = torch.stack([_step_logits(o, key) for key, o in zip(keys, outs, strict=True)])
        info = SamplingBatchInfo.build(params, gens, outs, prompts, [[] for _ in params], V)
        for o, t in zip(outs, sampler.sample(logits, info).tolist(), strict=True):
            o.append(t)
    return outs


@pytest.mark.parametrize(
    "p",
    [SamplingParams(temperature=0.9, top_p=0.95, frequency_penalty=0.3), SamplingParams(temperature=1.0)],
    ids=["filtered-penalised", "plain"],
)
def test_seeded_row_independent_of_batch_composition(p: SamplingParams) -> None:
    alone = _generate([p], [42], steps=40, sampler_seed=0)[0]
    others = [
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, min_p=0.1, repetition_penalty=1.2),
        SamplingParams(temperature=1.0, presence_penalty=0.5),
    ]
    batch5 = _generate([others[0], others[1], p, others[2], others[3]], [None, 7, 42, 9, None], 40, 123)
    assert batch5[2] == alone
    batch3 = _generate([others[2], p, others[0]], [None, 42, 5], steps=40, sampler_seed=9)
    assert batch3[1] == alone
    assert len(set(alone)) > 5  # it really sampled


def test_different_seeds_differ_and_sampler_seed_is_deterministic() -> None:
    p = SamplingParams(temperature=1.0)
    a = _generate([p, p], [1, 2], steps=30, sampler_seed=0)
    assert a[0] != a[1]
    assert _generate([p, p], [None, None], 30, 5) == _generate([p, p], [None, None], 30, 5)


def test_empirical_distribution_matches_softmax() -> None:
    vocab, n, temp = 8, 40000, 0.7
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, 2.0, -1.0, 0.3, 1.5]])
    info = make_info([SamplingParams(temperature=temp)] * n, vocab_size=vocab)
    ids = Sampler(seed=0).sample(logits.expand(n, vocab), info)
    counts = torch.bincount(ids, minlength=vocab).double()
    expected = torch.softmax(logits[0].double() / temp, -1) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30.0  # df = 7: p(chi2 > 30) ~ 1e-4


def test_top_p_keeps_minimal_nucleus() -> None:
    probs = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.2])
    logits = probs.log().unsqueeze(0)
    cases = [(0.3, {1}), (0.5, {1, 3}), (0.7, {1, 3, 4}), (0.9, {1, 3, 4, 2}), (1.0, set(range(5)))]
    for top_p, kept in cases:
        info = make_info([SamplingParams(top_p=top_p)], vocab_size=5)
        out = filtered_probs(logits, info)[0]
        assert set(out.nonzero().flatten().tolist()) == kept, top_p
        assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-6)
        expect = torch.zeros(5)
        expect[list(kept)] = probs[list(kept)] / probs[list(kept)].sum()
        torch.testing.assert_close(out, expect)
    info = make_info([SamplingParams(top_p=0.5)] * 2000, vocab_size=5)
    ids = Sampler().sample(logits.expand(2000, 5), info)
    assert set(ids.tolist()) == {1, 3}


def test_min_p_drops_tokens_below_threshold() -> None:
    probs = torch.tensor([0.5, 0.24, 0.16, 0.1])
    info = make_info([SamplingParams(min_p=0.3)], vocab_size=4)  # threshold 0.15
    out = filtered_probs(probs.log().unsqueeze(0), info)[0]
    assert out.nonzero().flatten().tolist() == [0, 1, 2]
    torch.testing.assert_close(out[:3], probs[:3] / probs[:3].sum())
    info = make_info([SamplingParams(min_p=0.3)] * 2000, vocab_size=4)
    ids = Sampler().sample(probs.log().expand(2000, 4), info)
    assert set(ids.tolist()) == {0, 1, 2}


def test_top_k_restricts_support() -> None:
    logits = rand_logits(1, seed=3)
    best = set(logits[0].topk(4).indices.tolist())
    info = make_info([SamplingParams(top_k=4, temperature=2.0)] * 3000)
    ids = Sampler().sample(logits.expand(3000, V), info)
    assert set(ids.tolist()) == best
    out = filtered_probs(logits, make_info([SamplingParams(top_k=4)]))[0]
    assert set(out.nonzero().flatten().tolist()) == best


def test_top_k_then_top_p_renormalises() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    # after top-k=2: [4/7, 3/7]; top_p=0.5 keeps only the best (4/7 >= 0.5)
    info = make_info([SamplingParams(top_k=2, top_p=0.5)], vocab_size=4)
    out = filtered_probs(probs.log().unsqueeze(0), info)
    assert out[0].nonzero().flatten().tolist() == [0]


def test_logit_bias_forces_and_forbids() -> None:
    logits = rand_logits(200, seed=4)
    params = [SamplingParams(logit_bias={5: 100.0})] * 100 + [SamplingParams(temperature=0.0)] * 100
    ids = Sampler().sample(logits, make_info(params))
    assert (ids[:100] == 5).all()
    best = logits[100:].argmax(-1)
    forbid = [SamplingParams(temperature=0.0, logit_bias={int(t): -100.0}) for t in best]
    ids = Sampler().sample(logits[100:], make_info(forbid))
    assert (ids != best).all()
    torch.testing.assert_close(process_logits(logits[:1], make_info(params[:1]))[0, 5], logits[0, 5] + 100.0)


def test_suppress_ids_never_sampled() -> None:
    logits = torch.zeros(500, V)
    logits[:, 3] = 10.0  # would dominate
    info = make_info([SamplingParams(temperature=1.5)] * 500, suppress_ids=[[3, 7, 11]] * 500)
    ids = Sampler().sample(logits, info)
    assert not set(ids.tolist()) & {3, 7, 11}
    greedy = make_info([SamplingParams(temperature=0.0)], suppress_ids=[[3]])
    assert Sampler().sample(logits[:1], greedy).item() != 3


def test_penalty_formulas_exact() -> None:
    logits = rand_logits(3, seed=5)
    prompt = [[1, 2, 2], [], [4]]
    output = [[2, 3, 3, 3], [0, 0, 9], [4, 4]]
    params = [
        SamplingParams(repetition_penalty=1.5),
        SamplingParams(frequency_penalty=0.5, presence_penalty=0.25),
        SamplingParams(),  # unpenalised row in a penalised batch
    ]
    out = process_logits(logits, make_info(params, output_ids=output, prompt_ids=prompt))
    expect = logits.clone()
    for t in {1, 2, 3}:  # prompt + output of row 0
        x = logits[0, t]
        expect[0, t] = x / 1.5 if x > 0 else x * 1.5
    for t, c in {0: 2, 9: 1}.items():
        expect[1, t] = logits[1, t] - 0.5 * c - 0.25
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    torch.testing.assert_close(logits, rand_logits(3, seed=5), rtol=0, atol=0)  # input untouched


def test_unpenalised_batch_fast_path() -> None:
    info = make_info([SamplingParams(), SamplingParams(temperature=0.5)], output_ids=[[1, 1], [2]])
    assert info.penalties is None and info.bias is None and info.suppress is None
    assert not (info.need_top_k or info.need_top_p or info.need_min_p)
    logits = rand_logits(2)
    assert process_logits(logits, info) is logits
    info = make_info([SamplingParams(), SamplingParams(presence_penalty=1.0)], output_ids=[[1], [2, 2]])
    pen = info.penalties
    assert pen is not None and pen.repetition is None and pen.counts is not None
    assert pen.rows is not None and pen.rows.tolist() == [1] and pen.counts.shape == (1, V)
    assert pen.counts[0, 2] == 2


def test_build_validates() -> None:
    with pytest.raises(ValueError, match="output_ids"):
        make_info([SamplingParams(frequency_penalty=1.0)], output_ids=[[V]])
    with pytest.raises(ValueError, match="suppress_ids"):
        make_info([SamplingParams()], suppress_ids=[[-1]])
    with pytest.raises(ValueError, match="generators"):
        SamplingBatchInfo.build([SamplingParams()], [], [[]], [[]], [[]], V)
    with pytest.raises(ValueError, match="shape"):
        Sampler().sample(torch.zeros(2, V + 1), make_info([SamplingParams()] * 2))


def test_compute_logprobs_and_helpers() -> None:
    logits = rand_logits(4, seed=6)
    lp = compute_logprobs(logits)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1))
    ids = torch.tensor([0, 5, 31, 7])
    expect = [lp[i, t].item() for i, t in enumerate(ids.tolist())]
    assert gather_token_logprobs(lp, ids) == pytest.approx(expect)
    values, tops = top_logprobs(lp, 3)
    assert len(values) == 4 and all(len(v) == 3 for v in values)
    for row, (v, t) in enumerate(zip(values, tops, strict=True)):
        assert v == sorted(v, reverse=True)
        assert t[0] == int(lp[row].argmax())
        assert v == pytest.approx([lp[row, i].item() for i in t])
    assert top_logprobs(lp, 0) == ([[], [], [], []], [[], [], [], []])
    with pytest.raises(ValueError):
        top_logprobs(lp, -1)


def test_plain_greedy_only_where_nothing_applies_before_the_argmax() -> None:
    """ScheduleBatch.sample skips SamplingBatchInfo for rows that are plain greedy: greedy with no logit bias and
    no penalty (each of those changes the argmax)."""
    from radixgen.runtime.sampler import plain_greedy

    assert plain_greedy(SamplingParams(temperature=0.0))
    assert plain_greedy(SamplingParams(temperature=0.7, top_k=1))
    assert not plain_greedy(SamplingParams(temperature=0.7))
    assert not plain_greedy(SamplingParams(temperature=0.0, logit_bias={5: 3.0}))
    assert not plain_greedy(SamplingParams(temperature=0.0, frequency_penalty=0.5))
    assert not plain_greedy(SamplingParams(temperature=0.0, presence_penalty=-0.5))
    assert not plain_greedy(SamplingParams(temperature=0.0, repetition_penalty=1.2))
