"""Draft-model proposals: a smaller model with the target's vocabulary proposes K tokens autoregressively.

The draft has its own model runner, KV pools and radix cache (prefix reuse across requests, like the target's).
Per request it keeps a ``DraftSeq``: the tokens whose draft K/V are in its pool. Proposing for a batch is one
catch-up extend over the committed tokens the draft has not seen (normally the one or two tokens committed by the
last verify), then K - 1 decode steps; each step's logits are processed exactly as the target's are (the request's
sampling parameters, penalties over outputs + earlier drafts, eos suppression, the grammar mask of that
position), so the draft distribution ``q`` and the target's ``p`` are comparable in the rejection test. After
verification ``commit`` cuts the draft's KV back to the longest prefix that is still the committed sequence; the
draft's radix cache, like the target's, only ever receives committed tokens.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, cast

import torch

from radixgen.radix.radix_cache import create_prefix_cache
from radixgen.runtime.forward_batch import ForwardMode
from radixgen.runtime.req import Req
from radixgen.runtime.req_kv import ReqKVManager
from radixgen.runtime.sampler import Sampler, SamplingBatchInfo, argmax_rows, filtered_probs, process_logits
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.speculative.base import Draft
from radixgen.runtime.speculative.grammar_draft import DraftGrammar

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class DraftSeq:
    """A request's draft-side KV state, with the attributes ``ReqKVManager`` reads (``seq()`` = ``tokens``).

    Attributes:
        tokens: the tokens whose K/V the draft pool holds (``len == kv_len``): a committed prefix of the
            request's sequence, plus the draft's own proposals between ``propose`` and ``commit``.
    """

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.tokens: list[int] = []
        self.req_pool_idx: int | None = None
        self.kv_len = 0
        self.prefix_len = 0
        self.last_node: Any = None
        self.lora_uid: int | None = None  # the draft model's cache has one namespace (no LoRA with speculation)

    def seq(self) -> list[int]:
        return self.tokens


@dataclass
class DraftForward:
    """The fields of a forward plan ``ModelRunner.prepare`` reads (a ScheduleBatch stand-in for the draft)."""

    mode: ForwardMode
    input_ids: list[int]
    req_pool_indices: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    out_cache_loc: torch.Tensor


def check_same_vocabulary(args: ServerArgs, draft_vocab: int, target_vocab: int) -> None:
    """Refuse a draft model that does not share the target's tokenizer.

    Raises:
        ValueError: naming ``speculative_draft_model_path``: the vocabulary sizes differ, or the draft directory
            has a tokenizer whose vocabulary differs from the target's.
    """
    path = args.speculative_draft_model_path
    if draft_vocab != target_vocab:
        raise ValueError(
            f"speculative_draft_model_path: the draft model's vocabulary ({draft_vocab} tokens) differs from the "
            f"target's ({target_vocab}); a draft must share the target's tokenizer"
        )
    assert path is not None
    if any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        from radixgen.runtime.fast_tokenizer import load_hf_tokenizer

        if load_hf_tokenizer(path).get_vocab() != load_hf_tokenizer(args.resolved_tokenizer_path).get_vocab():
            raise ValueError(
                f"speculative_draft_model_path: the tokenizer in {path!r} differs from the target's "
                f"({args.resolved_tokenizer_path!r}); a draft must share the target's tokenizer"
            )


class DraftModelProposer:
    """The draft-model ``Proposer`` of SpecWorker.

    Args:
        args: the target's server args (``speculative_draft_model_path`` names the draft); the draft gets a KV pool
            of the target's size in tokens and the target's context length.
        target_runner: the target's model runner (vocabulary size, pool size, context length).
        sampler: its generator draws the proposals of unseeded requests.
        eos_token_ids: suppressed before ``min_new_tokens`` (as the target's sampler does).

    Raises:
        ValueError: the draft does not share the target's tokenizer (``check_same_vocabulary``), or from loading it.
    """

    def __init__(self, args: ServerArgs, target_runner: Any, sampler: Sampler, eos_token_ids: tuple[int, ...]) -> None:
        from radixgen.runtime.model_runner import ModelRunner
        from radixgen.runtime.models import ModelConfig

        path = args.speculative_draft_model_path
        assert path is not None
        check_same_vocabulary(args, ModelConfig.from_pretrained(path).vocab_size, target_runner.vocab_size)
        draft_args = dataclasses.replace(
            args,
            model_path=path,
            tokenizer_path=args.resolved_tokenizer_path,
            load_format="auto",
            speculative_algorithm=None,
            speculative_draft_model_path=None,
            max_total_tokens=target_runner.max_total_tokens,
            context_length=target_runner.context_len,
        )
        self.runner = ModelRunner(draft_args)
        self.vocab_size = target_runner.vocab_size
        self.sampler = sampler
        self.eos_token_ids = tuple(eos_token_ids)
        cache = create_prefix_cache(self.runner.allocator, disable=args.disable_radix_cache)
        self.kv = ReqKVManager(self.runner.req_to_token_pool, self.runner.allocator, cache)
        self._last_logits = torch.empty((0, self.vocab_size))  # logits of the last draft forward's items

    # ------------------------------------------------------------------ propose
    def propose(self, reqs: list[Req], ks: list[int], grammars: list[DraftGrammar | None]) -> list[Draft]:
        """Up to ``ks[i]`` tokens per request drawn from the draft (see the module docstring); a request the draft
        pool cannot hold gets none."""
        drafts = [Draft([]) for _ in reqs]
        active = [i for i, k in enumerate(ks) if k > 0 and self._ensure_row(reqs[i])]
        active = self._forward_catch_up(reqs, active)
        logits = self._last_logits
        probs: dict[int, list[torch.Tensor]] = {i: [] for i in active}
        while active:
            tokens, q = self._draw(reqs, active, drafts, grammars, logits)
            still: list[int] = []
            for row, i in enumerate(active):
                g = grammars[i]
                if g is not None and not g.advance(tokens[row]):
                    continue
                drafts[i].tokens.append(tokens[row])
                if q is not None:
                    probs[i].append(q[row])
                if len(drafts[i].tokens) < ks[i]:
                    still.append(i)
            active = self._forward_decode(reqs, still, drafts)
            logits = self._last_logits
        for i, d in enumerate(drafts):
            if d.tokens and probs.get(i):
                d.probs = torch.stack(probs[i])  # [K, V]
        return drafts

    def _ensure_row(self, req: Req) -> bool:
        """Give ``req`` a draft row (its committed prefix matched in the draft's cache) if it has none."""
        st = req.draft_state
        if st is None:
            st = req.draft_state = DraftSeq(req.rid)
        if st.req_pool_idx is not None:
            return True
        if self.runner.req_to_token_pool.available_size() == 0:
            return False
        seq = req.seq()
        match = self.kv.tree_cache.match_prefix(seq[:-1])  # at least the last token is computed: its logits
        self.kv.lock(match)
        self.kv.assign(cast(Req, st), match)
        st.tokens = seq[: st.kv_len]
        return True

    def _alloc(self, n: int) -> torch.Tensor | None:
        slots = self.runner.allocator.alloc(n)
        if slots is None:
            self.kv.tree_cache.evict(n - self.runner.allocator.available_size())
            slots = self.runner.allocator.alloc(n)
        return slots

    def _forward(self, mode: ForwardMode, reqs: list[Req], items: list[tuple[int, list[int]]]) -> list[int]:
        """Append ``tokens`` to the draft KV of each ``(index, tokens)`` item in one forward; the logits of each
        item's last token go to ``_last_logits`` (rows in item order). Items the pool cannot hold are dropped
        (their draft state released); returns the indices that ran."""
        slots = self._alloc(sum(len(t) for _, t in items)) if items else None
        while items and slots is None:
            dropped, _ = items.pop()  # the pool is full: this request drafts nothing this step
            self.release(reqs[dropped])
            slots = self._alloc(sum(len(t) for _, t in items)) if items else None
        if slots is None:
            self._last_logits = torch.empty((0, self.vocab_size))
            return []
        sts = [cast(DraftSeq, reqs[i].draft_state) for i, _ in items]
        plan = DraftForward(
            mode=mode,
            input_ids=[t for _, toks in items for t in toks],
            req_pool_indices=[cast(int, st.req_pool_idx) for st in sts],
            prefix_lens=[st.kv_len for st in sts],
            extend_lens=[len(t) for _, t in items],
            out_cache_loc=slots,
        )
        self.kv.write_slots([(cast(Req, st), len(t)) for st, (_, t) in zip(sts, items, strict=True)], slots)
        ends = torch.cumsum(torch.tensor(plan.extend_lens, dtype=torch.int64), 0) - 1
        self._last_logits = self.runner.forward(cast(Any, plan), ends)  # [len(items), V]
        for st, (_, toks) in zip(sts, items, strict=True):
            st.tokens.extend(toks)
            st.kv_len += len(toks)
        return [i for i, _ in items]

    def _forward_catch_up(self, reqs: list[Req], active: list[int]) -> list[int]:
        """Extend each active request's draft KV over its committed tokens the draft has not computed."""
        items = []
        for i in active:
            st = reqs[i].draft_state
            items.append((i, reqs[i].seq()[st.kv_len :]))
        return self._forward(ForwardMode.EXTEND, reqs, items)

    def _forward_decode(self, reqs: list[Req], active: list[int], drafts: list[Draft]) -> list[int]:
        """Feed each active request's newest draft token to the draft."""
        return self._forward(ForwardMode.DECODE, reqs, [(i, drafts[i].tokens[-1:]) for i in active])

    def _draw(
        self,
        reqs: list[Req],
        active: list[int],
        drafts: list[Draft],
        grammars: list[DraftGrammar | None],
        logits: torch.Tensor,
    ) -> tuple[list[int], torch.Tensor | None]:
        """The next draft token of each active request from the draft logits (float32 ``[len(active), V]``) and,
        unless every row is greedy, the processed distributions they were drawn from (float32 ``[n, V]``)."""
        logits = logits.clone()
        for row, i in enumerate(active):
            g = grammars[i]
            if g is not None:
                allowed = _unpack_bitmask(g.mask(), self.vocab_size)
                logits[row].masked_fill_(~allowed, float("-inf"))
        outputs = [reqs[i].output_ids + drafts[i].tokens for i in active]
        info = SamplingBatchInfo.build(
            params=[reqs[i].sampling_params for i in active],
            generators=[None] * len(active),
            output_ids=outputs,
            prompt_ids=[reqs[i].origin_input_ids for i in active],
            suppress_ids=[
                [*self.eos_token_ids, *reqs[i].sampling_params.stop_token_ids]
                if reqs[i].grammar is None and len(out) < reqs[i].sampling_params.min_new_tokens
                else []
                for i, out in zip(active, outputs, strict=True)
            ],
            vocab_size=self.vocab_size,
            device=logits.device,
        )
        x = process_logits(logits, info)
        greedy = argmax_rows(x).tolist()
        if info.all_greedy:
            return greedy, None
        q = filtered_probs(x, info)
        tokens = []
        for row, i in enumerate(active):
            if bool(info.is_greedy[row]):
                q[row].zero_()[greedy[row]] = 1.0  # greedy rows: q one-hot (the target compares argmaxes anyway)
                tokens.append(greedy[row])
                continue
            gen = reqs[i].generator or self.sampler.generator(q.device)
            tokens.append(int(torch.multinomial(q[row], 1, generator=gen).item()))
        return tokens, q

    # ------------------------------------------------------------------ after verification
    def commit(self, req: Req) -> None:
        """Cut the draft KV back to the longest prefix of ``req``'s committed sequence it holds."""
        st = req.draft_state
        if st is None or st.req_pool_idx is None:
            return
        seq = req.seq()
        n = 0
        limit = min(len(st.tokens), len(seq))
        while n < limit and st.tokens[n] == seq[n]:
            n += 1
        n = max(min(n, len(seq) - 1), st.prefix_len)  # the last token is recomputed: its logits start a draft
        if n < st.kv_len:
            self.kv.truncate(cast(Req, st), n)
            del st.tokens[n:]

    def release(self, req: Req) -> None:
        """The draft KV goes into the draft's radix cache; row and lock are dropped."""
        st = req.draft_state
        if st is not None and st.req_pool_idx is not None:
            self.commit(req)  # uncommitted proposals never reach the cache
            self.kv.release(cast(Req, st))
            st.tokens = []

    def check_integrity(self, reqs: list[Req]) -> None:
        """Every draft KV slot is exactly one of free, cached, or held by a live request's draft state."""
        states = [r.draft_state for r in reqs if r.draft_state is not None]
        self.kv.check_integrity(cast(list[Req], states))


def _unpack_bitmask(bits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool ``[V]`` allowed tokens of an int32 ``[ceil(V / 32)]`` grammar bitmask row (bit ``t % 32`` of word
    ``t // 32``)."""
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bits.unsqueeze(1) >> shifts) & 1).bool().view(-1)  # [32 * W]
    return allowed[:vocab_size]
