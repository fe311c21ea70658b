"""SpecWorker: the scheduler's speculative-decoding hooks — propose, verify, commit — and their statistics.

One decode step with speculation (DESIGN.md, "Speculative decoding sits between schedule and sample"):

1. ``propose``: the proposer (n-gram lookup or a draft model) offers up to K tokens per running request, capped
   by what the request may still emit (``max_new_tokens``) and by the KV slots left once every running request
   has its one decode slot, so a proposal never causes a retraction. A grammar-constrained request's draft ends
   at the first token its grammar forbids; the mask of every verified position is recorded.
2. The scheduler lays out one extend forward over ``[last token, d_1..d_K]`` per request (a request without a
   proposal just decodes inside it) — when nobody has a proposal it runs a plain decode batch instead.
3. ``verify``: grammar masks go on the target logits, then ``verify.accept_drafts`` decides what each request
   emits (exact speculative sampling; greedy = token for token the target's argmax).
4. The scheduler appends the emitted tokens one by one through the stop checker and the grammar (a stop inside
   the draft truncates there), keeps the KV of the tokens that stay, frees the rest at once
   (``ReqKVManager.truncate``), then calls ``commit``: statistics, and the draft model drops its KV of rejected
   tokens. The radix cache only ever receives committed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from radixgen.grammar.base import bitmask_width
from radixgen.runtime.constrained import apply_token_bitmask
from radixgen.runtime.req import Req
from radixgen.runtime.sampler import Sampler
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.speculative.base import Draft, Proposer
from radixgen.runtime.speculative.grammar_draft import DraftGrammar
from radixgen.runtime.speculative.verify import VerifyRows, accept_drafts


@dataclass
class SpecStats:
    """Cumulative speculation counters of one scheduler.

    Attributes:
        verify_forwards: per-request decode-phase target forwards (a batch of 8 counts 8).
        proposed / accepted: draft tokens proposed and accepted.
        emitted: tokens emitted by those forwards (accepted + one per forward, less stop truncation).
        stopped_inside: forwards whose tokens were cut by a stop (eos, stop string, grammar end, length).
        accept_hist: ``accept_hist[n]`` = forwards that emitted ``n`` tokens (index 0 unused).
    """

    verify_forwards: int = 0
    proposed: int = 0
    accepted: int = 0
    emitted: int = 0
    stopped_inside: int = 0
    accept_hist: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def mean_accept_length(self) -> float:
        """Tokens per target forward (SGLang's ``spec_accept_length``)."""
        return self.emitted / self.verify_forwards if self.verify_forwards else 0.0

    def scheduler_fields(self) -> dict[str, Any]:
        """The ``spec_*`` fields of ``io_struct.SchedulerStats`` (what /metrics reports)."""
        return {
            "spec_verify_forwards": self.verify_forwards,
            "spec_proposed_tokens": self.proposed,
            "spec_accepted_tokens": self.accepted,
            "spec_accept_hist": list(self.accept_hist),
        }


class SpecWorker:
    """Speculative decoding for one scheduler.

    Args:
        args: server args (``speculative_*`` fields).
        proposer: n-gram or draft-model proposer.
        sampler: the scheduler's sampler (its generator serves unseeded requests).
        vocab_size: the target's vocabulary size (logits width).
        eos_token_ids: suppressed (with each request's stop_token_ids) before ``min_new_tokens`` outputs, as the
            sampler does; not on grammar-constrained requests.
    """

    def __init__(
        self, args: ServerArgs, proposer: Proposer, sampler: Sampler, vocab_size: int, eos_token_ids: tuple[int, ...]
    ) -> None:
        self.eos_token_ids = tuple(eos_token_ids)
        self.num_draft_tokens = args.speculative_num_draft_tokens
        self.proposer = proposer
        self.sampler = sampler
        self.vocab_size = vocab_size
        self.stats = SpecStats(accept_hist=[0] * (self.num_draft_tokens + 2))
        self._drafts: list[Draft] = []
        self._masks: list[torch.Tensor | None] = []

    def propose(self, reqs: list[Req], spare_slots: int) -> list[list[int]] | None:
        """Draft tokens per running request (lists may be empty), or None when no request got any.

        Args:
            reqs: the running requests, in batch order (each about to decode: ``kv_len == seq_len - 1``).
            spare_slots: KV slots available beyond one per request; the drafts use at most this many.
        """
        ks: list[int] = []
        for req in reqs:
            k = max(0, min(self.num_draft_tokens, req.remaining_new_tokens - 1, spare_slots))
            spare_slots -= k
            ks.append(k)
        if not any(ks):
            return None
        grammars = [
            DraftGrammar(r.grammar, k, self.vocab_size) if r.grammar is not None and k > 0 else None
            for r, k in zip(reqs, ks, strict=True)
        ]
        drafts = self.proposer.propose(reqs, ks, grammars)
        self._masks = []
        for req, g in zip(reqs, grammars, strict=True):
            if g is not None:
                self._masks.append(g.finish())
            elif req.grammar is not None:  # no proposal: the one decode position's mask comes from the matcher
                one = DraftGrammar(req.grammar, 0, self.vocab_size)
                self._masks.append(one.finish())
            else:
                self._masks.append(None)
        if not any(d.tokens for d in drafts):
            self._masks = []
            return None
        self._drafts = drafts
        return [d.tokens for d in drafts]

    def verify(self, reqs: list[Req], logits: torch.Tensor, keep_raw: bool) -> tuple[list[list[int]], torch.Tensor]:
        """Tokens each request emits from the verify forward (see ``verify.accept_drafts``).

        Args:
            reqs: the batch's requests (the ones ``propose`` saw, same order).
            logits: float32 ``[sum(K_i + 1), V]`` target logits of every verify position.
            keep_raw: leave ``logits`` unmasked (someone reads logprobs from it) and mask a copy.

        Returns:
            (tokens per request, the logits the logprobs are to be read from).
        """
        drafts, masks = self._drafts, self._masks
        self._drafts, self._masks = [], []
        masked = logits
        if any(m is not None for m in masks):
            masked = logits.clone() if keep_raw else logits
            bitmask = torch.zeros((logits.shape[0], bitmask_width(self.vocab_size)), dtype=torch.int32)
            rows: list[int] = []
            base = 0
            for d, m in zip(drafts, masks, strict=True):
                n = len(d.tokens) + 1
                if m is not None:
                    bitmask[base : base + n] = m[:n]
                    rows.extend(range(base, base + n))
                base += n
            apply_token_bitmask(masked, bitmask, rows, self.vocab_size)
        rows_in = [
            VerifyRows(
                params=r.sampling_params,
                generator=r.generator,
                prompt_ids=r.origin_input_ids,
                output_ids=r.output_ids,
                drafts=d.tokens,
                draft_probs=d.probs,
                suppress_ids=[] if r.grammar is not None else [*self.eos_token_ids, *r.sampling_params.stop_token_ids],
            )
            for r, d in zip(reqs, drafts, strict=True)
        ]
        return accept_drafts(masked, rows_in, self.sampler), logits

    def commit(self, req: Req, num_drafts: int, produced: int, emitted: int) -> None:
        """Record one decode-phase forward of ``req`` that offered ``num_drafts`` tokens, produced ``produced``
        (accepted + 1) and emitted ``emitted`` of them (fewer when a stop came first); the proposer drops state of
        tokens that were not committed."""
        accepted = max(0, min(emitted - 1, num_drafts))
        req.spec_verify_ct += 1
        req.spec_draft_tokens += num_drafts
        req.spec_accepted_tokens += accepted
        s = self.stats
        s.verify_forwards += 1
        s.proposed += num_drafts
        s.accepted += accepted
        s.emitted += emitted
        s.stopped_inside += int(emitted < produced)
        if emitted < len(s.accept_hist):
            s.accept_hist[emitted] += 1
        self.proposer.commit(req)

    def release(self, req: Req) -> None:
        """``ReqKVManager`` release hook: the proposer frees what it holds for ``req``."""
        self.proposer.release(req)

    def check_integrity(self, reqs: list[Req]) -> None:
        """The proposer's memory accounting (the draft model's KV pool) given the live requests."""
        self.proposer.check_integrity(reqs)
