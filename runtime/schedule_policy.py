"""Waiting-queue order (fcfs, lpm) and token-budget admission of new requests into an extend batch.

After SGLang's SchedulePolicy / PrefillAdder (sglang/srt/managers/schedule_policy.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from radixgen.radix.radix_cache import BasePrefixCache
from radixgen.runtime.req import Req

# Above this many waiting requests lpm falls back to fcfs: matching every queued prompt each step costs more
# than the reuse it buys (SGLang uses the same cut-off).
LPM_MAX_QUEUE = 128


def prefix_match_key(req: Req) -> list[int]:
    """The part of a request's sequence that may come from the cache.

    The last token is always recomputed (its logits are needed to sample), and when input logprobs are asked
    for, positions from ``input_logprob_pos - 1`` on must be computed too.
    """
    limit = req.seq_len - 1
    if req.input_logprob_pos < len(req.origin_input_ids):
        limit = min(limit, max(req.input_logprob_pos - 1, 0))
    return req.seq()[: max(limit, 0)]


def order_waiting(waiting: list[Req], policy: str, cache: BasePrefixCache) -> dict[str, int]:
    """Sort ``waiting`` in place by ``policy``; returns the cached-prefix length found for each rid (lpm).

    fcfs: arrival order (retracted requests keep their original arrival and so go first).
    lpm: longest cached prefix first (ties by arrival), which visits the tree depth-first and maximises reuse.
    """
    if policy == "lpm" and len(waiting) <= LPM_MAX_QUEUE:
        lens = {r.rid: int(cache.match_prefix(prefix_match_key(r), r.lora_uid).indices.numel()) for r in waiting}
        waiting.sort(key=lambda r: (-lens[r.rid], r.arrival))
        return lens
    waiting.sort(key=lambda r: r.arrival)
    return {}


@dataclass
class PrefillAdder:
    """Admits requests into one extend batch while their tokens fit the budgets.

    Budgets (tokens): ``rem_total`` = free + evictable KV slots minus the reserve for running requests'
    future output (remaining new tokens × new_token_ratio); ``rem_prefill`` = max_prefill_tokens for this
    batch; ``rem_chunk`` = chunked_prefill_size. A request whose uncached part exceeds ``rem_chunk`` is
    admitted with a chunk of it (at most one chunked request per batch).
    """

    rem_total: int
    rem_prefill: int
    rem_chunk: int
    new_token_ratio: float
    admitted: list[tuple[Req, int]] = field(default_factory=list)  # (req, extend tokens this step)
    chunked: Req | None = None

    def reserve(self, req: Req) -> int:
        return math.ceil(req.remaining_new_tokens * self.new_token_ratio)

    def try_add(self, req: Req, prefix_len: int) -> bool:
        """Admit ``req`` whose first ``prefix_len`` tokens are cached; False when it does not fit."""
        extend = req.seq_len - prefix_len
        if extend <= 0 or self.rem_chunk <= 0 or self.rem_prefill <= 0:
            return False
        if extend <= min(self.rem_chunk, self.rem_prefill):
            need = extend + self.reserve(req)
            if need > self.rem_total:
                return False
            take = extend
        else:
            # chunk it: only this chunk's tokens are needed now; the rest is budgeted when its turn comes
            take = min(self.rem_chunk, self.rem_prefill)
            if take > self.rem_total:
                return False
            self.chunked = req
        self.admitted.append((req, take))
        self.rem_total -= take + (0 if self.chunked is req else self.reserve(req))
        self.rem_prefill -= take
        self.rem_chunk -= take
        return True
