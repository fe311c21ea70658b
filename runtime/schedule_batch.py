"""ScheduleBatch: the requests of one forward, with the token layout and the logits rows it needs.

Logits are computed only for the rows that are used (the hidden states of all other tokens are dropped before
the LM head): each request's last position when its sequence end is computed (to sample), and the prompt
positions whose input logprobs were asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from radixgen.runtime.forward_batch import ForwardMode
from radixgen.runtime.req import Req
from radixgen.runtime.sampler import (
    Sampler,
    SamplingBatchInfo,
    argmax_rows,
    compute_logprobs,
    gather_token_logprobs,
    plain_greedy,
    top_logprobs,
)


@dataclass
class ScheduleBatch:
    """One forward's requests and layout.

    Attributes:
        reqs / extend_lens / prefix_lens: per request, new tokens this step and tokens already in the KV pool.
        input_ids: the new tokens of all requests, concatenated (``sum(extend_lens)``).
        out_cache_loc: int64 ``[sum(extend_lens)]`` KV slots for the new tokens.
        logits_rows: token indices (into ``input_ids``) whose logits are computed.
        sample_index: per request, its index among the sampled rows, or -1 if it does not sample this step.
        sample_rows: for each sampled request, its row in the computed logits.
        input_lp: per request, ``(first_position, logits_row_indices)``: the logits rows predicting prompt
            positions ``first_position, first_position + 1, ...``.
        drafts: a speculative verify batch (runtime/speculative): per request the draft tokens ``d_1..d_K`` that
            follow its sequence; the request's new tokens are its last token and the drafts, and its logits rows
            are all ``K + 1`` positions from ``sample_rows[sample_index[i]]`` on. None for any other batch.
        greedy_ids: int64 ``[len(logits_rows)]``, each logits row's argmax when the forward took it in passing
            (``ForwardBatch.greedy_ids``); greedy sampling returns it when nothing changes the logits first.
    """

    mode: ForwardMode
    reqs: list[Req]
    extend_lens: list[int]
    prefix_lens: list[int]
    input_ids: list[int]
    req_pool_indices: list[int]
    out_cache_loc: torch.Tensor
    logits_rows: list[int] = field(default_factory=list)
    sample_index: list[int] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)
    input_lp: list[tuple[int, list[int]]] = field(default_factory=list)
    drafts: list[list[int]] | None = None
    greedy_ids: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        mode: ForwardMode,
        items: list[tuple[Req, int]],
        out_cache_loc: torch.Tensor,
        drafts: list[list[int]] | None = None,
    ) -> ScheduleBatch:
        """Lay out ``items`` (request, number of new tokens) for one forward; with ``drafts`` (a verify batch) each
        request's new tokens end with its draft tokens and every draft position gets a logits row."""
        batch = cls(
            mode=mode,
            reqs=[r for r, _ in items],
            extend_lens=[n for _, n in items],
            prefix_lens=[r.kv_len for r, _ in items],
            input_ids=[],
            req_pool_indices=[r.req_pool_idx for r, _ in items],  # type: ignore[misc]
            out_cache_loc=out_cache_loc,
            drafts=drafts,
        )
        base = 0
        for i, (req, n) in enumerate(items):
            start = req.kv_len
            tail = len(drafts[i]) if drafts is not None else 0
            seq = req.seq() + drafts[i] if drafts is not None else req.seq()
            batch.input_ids.extend(seq[start : start + n])
            # input logprobs: prompt position p is predicted by the logits at position p - 1
            n_prompt = len(req.origin_input_ids)
            first_p = max(req.input_logprob_pos, start + 1)
            last_p = min(n_prompt, start + n + 1)
            rows: list[int] = []
            if req.input_logprob_pos < n_prompt and first_p < last_p:
                for p in range(first_p, last_p):
                    rows.append(len(batch.logits_rows))
                    batch.logits_rows.append(base + (p - 1 - start))
            batch.input_lp.append((first_p, rows))
            if start + n == req.seq_len + tail and len(req.output_ids) < req.sampling_params.max_new_tokens:
                batch.sample_index.append(len(batch.sample_rows))
                batch.sample_rows.append(len(batch.logits_rows))
                batch.logits_rows.extend(range(base + n - 1 - tail, base + n))
            else:
                batch.sample_index.append(-1)
            base += n
        return batch

    def logits_rows_tensor(self) -> torch.Tensor:
        """int64 ``[num_logits_rows]`` token indices whose logits the model runner computes."""
        return torch.tensor(self.logits_rows, dtype=torch.int64)

    @property
    def every_token_row(self) -> bool:
        """A decode step in which every request samples: the logits rows are the new tokens, in order (the model
        runner then takes them without an index tensor or a gather)."""
        return self.mode == ForwardMode.DECODE and len(self.logits_rows) == len(self.input_ids)

    @property
    def is_verify(self) -> bool:
        """A speculative verify forward (running requests, K + 1 positions each), not a prefill."""
        return self.drafts is not None

    @property
    def is_prefill(self) -> bool:
        return self.mode == ForwardMode.EXTEND and self.drafts is None

    def sampling_reqs(self) -> list[Req]:
        return [r for r, i in zip(self.reqs, self.sample_index, strict=True) if i >= 0]

    def tokens_per_req(self, next_ids: torch.Tensor) -> list[list[int]]:
        """The sampled ids (int64 ``[num_sampling]``) as one list per request: ``[token]``, or ``[]`` for a request
        that does not sample this step."""
        ids = next_ids.tolist()
        return [[ids[j]] if j >= 0 else [] for j in self.sample_index]

    def sample(
        self,
        sampler: Sampler,
        logits: torch.Tensor,
        eos_token_ids: tuple[int, ...],
        vocab_size: int,
        grammar_mask: Callable[[list[Req], torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Next token of each sampling request: int64 ``[len(sample_rows)]``.

        eos ids and stop_token_ids are suppressed while a request has fewer than min_new_tokens outputs (not on
        grammar-constrained requests: their grammar decides where eos may come). ``grammar_mask(reqs, rows)``
        masks the sampling rows in place before sampling when some request carries a grammar matcher. When every
        logits row samples (decode) the logits are used without a copy — masked in place, unless a request of the
        batch returns logprobs (those read the unmasked logits afterwards), then a copy is masked.
        """
        reqs = self.sampling_reqs()
        if not reqs:
            return torch.empty(0, dtype=torch.int64)
        constrained = grammar_mask is not None and any(r.grammar is not None for r in reqs)
        # logprobs are read from the unmasked logits after sampling: a grammar may mask in place only without them
        keep_raw = constrained and any(r.return_logprob for r in self.reqs)
        if not keep_raw and len(self.sample_rows) == logits.shape[0]:
            rows = logits  # every logits row samples, in order (decode); the sampler never modifies it, a grammar may
        else:
            rows = logits[torch.tensor(self.sample_rows, dtype=torch.int64)]  # [num_sampling, vocab] (a copy)
        if constrained:
            assert grammar_mask is not None
            grammar_mask(reqs, rows)
        suppress = [
            (
                [*eos_token_ids, *r.sampling_params.stop_token_ids]
                if len(r.output_ids) < r.sampling_params.min_new_tokens and r.grammar is None
                else []
            )
            for r in reqs
        ]
        if not any(suppress) and all(plain_greedy(r.sampling_params) for r in reqs):
            if self.greedy_ids is not None and rows is logits and not constrained:
                return self.greedy_ids  # the LM head's argmax of these very logits, taken in passing
            return argmax_rows(rows)  # nothing to apply before the argmax: what sampler.sample would return
        info = SamplingBatchInfo.build(
            params=[r.sampling_params for r in reqs],
            generators=[r.generator for r in reqs],
            output_ids=[r.output_ids for r in reqs],
            prompt_ids=[r.origin_input_ids for r in reqs],
            suppress_ids=suppress,
            vocab_size=vocab_size,
            device=logits.device,
        )
        return sampler.sample(rows, info)

    def compute_logprobs(self, logits: torch.Tensor) -> torch.Tensor | None:
        """float32 ``[num_logits_rows, vocab]`` log-softmax of the raw logits, or None when no request asked."""
        if not any(r.return_logprob for r in self.reqs):
            return None
        return compute_logprobs(logits)

    def append_logprobs(self, i: int, logprobs: torch.Tensor | None, tokens: list[int]) -> None:
        """Append request ``i``'s input-token logprobs and the output logprobs of ``tokens`` (the tokens it emits
        this step, in order: token ``j`` was drawn from its sampling row ``j``) to its deltas, if it asked; call
        before its ``kv_len`` advances."""
        req = self.reqs[i]
        if logprobs is None or not req.return_logprob:
            return
        k = req.top_logprobs_num
        first_p, rows = self.input_lp[i]
        asked = req.token_ids_logprob
        if req.input_logprob_pos == 0 and req.kv_len == 0 and len(req.origin_input_ids) > 0:
            req.delta_input_logprobs.append([None, req.origin_input_ids[0]])
            req.delta_input_top.append([])
            if asked:
                req.delta_input_ids_lp.append([])
            req.input_logprob_pos = 1
        if rows:
            idx = torch.tensor(rows, dtype=torch.int64)
            targets = torch.tensor(req.origin_input_ids[first_p : first_p + len(rows)], dtype=torch.int64)
            dst = (req.delta_input_logprobs, req.delta_input_top, req.delta_input_ids_lp)
            _append(dst, logprobs[idx], targets, k, asked)
            req.input_logprob_pos = first_p + len(rows)
        j = self.sample_index[i]
        if j >= 0 and tokens:
            first = self.sample_rows[j]
            dst = (req.delta_output_logprobs, req.delta_output_top, req.delta_output_ids_lp)
            _append(dst, logprobs[first : first + len(tokens)], torch.tensor(tokens, dtype=torch.int64), k, asked)


def _append(
    dst: tuple[list[list[Any]], list[list[list[Any]]], list[list[list[Any]]]],
    logprobs: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    asked: list[int],
) -> None:
    """Per row of ``logprobs`` (float32 ``[n, vocab]``; ``targets`` int64 ``[n]``): append ``[logprob, id]`` of the
    target to ``dst[0]``, the top-``k`` ``[logprob, id]`` list to ``dst[1]``, and — when ``asked`` (SGLang's
    ``token_ids_logprob``) — the ``[logprob, id]`` of each asked id to ``dst[2]``."""
    tokens, tops, ids_lp = dst
    values = gather_token_logprobs(logprobs, targets)
    for v, t in zip(values, targets.tolist(), strict=True):
        tokens.append([v, t])
    if k > 0:
        top_vals, top_ids = top_logprobs(logprobs, k)
        for vs, ids in zip(top_vals, top_ids, strict=True):
            tops.append([[v, t] for v, t in zip(vs, ids, strict=True)])
    else:
        tops.extend([] for _ in range(len(values)))
    if asked:
        picked = logprobs[:, torch.tensor(asked, dtype=torch.int64)].tolist()  # [n, len(asked)]
        ids_lp.extend([[v, t] for v, t in zip(row, asked, strict=True)] for row in picked)
