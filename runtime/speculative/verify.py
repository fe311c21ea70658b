"""Acceptance of draft tokens against the target's verify forward: exact speculative sampling.

The target computed logits at the K+1 positions ``[last, d_1, ..., d_K]`` of each request in one forward (row
``j`` predicts the token after ``d_j``). Every row is processed exactly as the sampler processes a decode row
(``sampler.process_logits`` then ``sampler.filtered_probs``: logit bias, eos suppression before
``min_new_tokens``, penalties counted over the outputs *including* the earlier draft tokens, temperature, top-k /
top-p / min-p; the grammar mask of that position is applied by the caller), which gives the target distribution
``p_j``. Then, per request (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding",
arXiv:2211.17192, Algorithm 1; Chen et al. 2023, arXiv:2302.01318):

* greedy rows accept ``d_{j+1}`` while it equals ``argmax p_j``; the first mismatch position emits the argmax —
  token for token what decoding without speculation emits;
* sampled rows accept ``d_{j+1}`` with probability ``min(1, p_j(d) / q_j(d))`` (``q_j`` the draft's distribution,
  one-hot for n-gram proposals, so the test is ``u < p_j(d)``); on the first rejection a token is drawn from the
  residual ``norm(max(0, p_j - q_j))`` and the rest is dropped; when all K are accepted a bonus token is drawn
  from ``p_K``. Every emitted token is then distributed exactly as the target's sampler would draw it.

Random draws come from the request's own generator when it has a seed (so a seeded request is reproducible
whatever else is in the batch), else from the Sampler's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixgen.runtime.sampler import Sampler, SamplingBatchInfo, argmax_rows, filtered_probs, process_logits
from radixgen.runtime.sampling_params import SamplingParams


@dataclass
class VerifyRows:
    """The rows of one request in a verify forward.

    Attributes:
        params: the request's sampling parameters.
        generator: its seeded generator, or None (the Sampler's generator is used).
        prompt_ids / output_ids: its tokens before this step (penalties count them).
        drafts: the proposed tokens ``d_1..d_K`` (K may be 0: the request just decodes).
        draft_probs: float32 ``[K, V]`` the draft's processed distributions ``q_1..q_K``, or None for
            deterministic proposals (n-gram: ``q`` one-hot on the draft token).
        suppress_ids: ids suppressed (min_new_tokens) while fewer than ``min_new_tokens`` outputs exist.
    """

    params: SamplingParams
    generator: torch.Generator | None
    prompt_ids: list[int]
    output_ids: list[int]
    drafts: list[int]
    draft_probs: torch.Tensor | None
    suppress_ids: list[int]


def expanded_info(rows: list[VerifyRows], vocab_size: int, device: torch.device) -> SamplingBatchInfo:
    """SamplingBatchInfo over every verify row: row ``j`` of a request sees its outputs plus ``d_1..d_j`` (for
    penalties and for the ``min_new_tokens`` suppression), exactly the state a decode step there would see."""
    params: list[SamplingParams] = []
    outputs: list[list[int]] = []
    prompts: list[list[int]] = []
    suppress: list[list[int]] = []
    for r in rows:
        for j in range(len(r.drafts) + 1):
            out = r.output_ids + r.drafts[:j]
            params.append(r.params)
            outputs.append(out)
            prompts.append(r.prompt_ids)
            suppress.append(r.suppress_ids if len(out) < r.params.min_new_tokens else [])
    return SamplingBatchInfo.build(
        params=params,
        generators=[None] * len(params),
        output_ids=outputs,
        prompt_ids=prompts,
        suppress_ids=suppress,
        vocab_size=vocab_size,
        device=device,
    )


def accept_drafts(logits: torch.Tensor, rows: list[VerifyRows], sampler: Sampler) -> list[list[int]]:
    """Tokens each request emits from one verify forward: the accepted drafts plus one target token.

    Args:
        logits: float32 ``[sum(K_i + 1), V]`` target logits, request after request, grammar masks already applied.
        rows: per request, its verify inputs (module docstring).
        sampler: supplies the generator of unseeded requests.

    Returns:
        Per request ``d_1..d_m`` followed by the token drawn at position ``m`` (``m + 1 <= K + 1`` tokens).

    Raises:
        ValueError: ``logits`` has a row count other than ``sum(K_i + 1)``.
    """
    total = sum(len(r.drafts) + 1 for r in rows)
    if logits.shape[0] != total:
        raise ValueError(f"accept_drafts: {logits.shape[0]} logits rows for {total} verify positions")
    info = expanded_info(rows, logits.shape[1], logits.device)
    x = process_logits(logits, info)  # [total, V]
    greedy_ids = argmax_rows(x).tolist() if info.any_greedy else []
    probs = None if info.all_greedy else filtered_probs(x, info)  # [total, V], rows sum to 1
    out: list[list[int]] = []
    base = 0
    for r in rows:
        k = len(r.drafts)
        if bool(info.is_greedy[base]):
            target = greedy_ids[base : base + k + 1]
            m = 0
            while m < k and r.drafts[m] == target[m]:
                m += 1
            out.append([*r.drafts[:m], target[m]])
        else:
            assert probs is not None
            out.append(_accept_sampled(probs[base : base + k + 1], r, sampler))
        base += k + 1
    return out


def _accept_sampled(p: torch.Tensor, r: VerifyRows, sampler: Sampler) -> list[int]:
    """Rejection sampling over one request's rows ``p`` (float32 ``[K + 1, V]``, normalised)."""
    k = len(r.drafts)
    gen = r.generator if r.generator is not None else sampler.generator(p.device)
    if k:
        idx = torch.arange(k, device=p.device)
        d = torch.tensor(r.drafts, dtype=torch.int64, device=p.device)
        p_d = p[idx, d]  # [K] target probability of each draft token
        q_d = r.draft_probs[idx, d] if r.draft_probs is not None else torch.ones_like(p_d)
        u = torch.rand(k, generator=gen, device=p.device)
        accept = (u * q_d < p_d).tolist()  # u < p/q without dividing by a zero q
        for j in range(k):
            if not accept[j]:
                q_j = r.draft_probs[j] if r.draft_probs is not None else _one_hot(r.drafts[j], p.shape[1], p)
                residual = (p[j] - q_j).clamp_(min=0.0)
                if float(residual.sum()) <= 0.0:  # p == q up to rounding: any rejection is rounding noise
                    residual = p[j]
                return [*r.drafts[:j], _draw(residual, gen)]
    return [*r.drafts, _draw(p[k], gen)]


def _one_hot(token: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    q = torch.zeros(vocab, dtype=like.dtype, device=like.device)
    q[token] = 1.0
    return q


def _draw(weights: torch.Tensor, gen: torch.Generator) -> int:
    """One token drawn with probability proportional to ``weights`` (float32 ``[V]``, not all zero)."""
    return int(torch.multinomial(weights, 1, generator=gen).item())
