"""ReqKVManager: the glue between requests and KV memory (request rows, KV slots, the radix prefix cache).

The scheduler decides which requests run; this object carries out what that means for memory: lock a
matched prefix, allocate slots (evicting cached leaves when needed), insert computed KV into the cache, release
everything a request holds. After SGLang's cache_finished_req / cache_unfinished_req.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from radixgen.radix import ReqToTokenPool, TokenSlotAllocator
from radixgen.radix.radix_cache import BasePrefixCache, MatchResult, NoReuseCache
from radixgen.runtime.req import Req

# a waiting request is deferred when this many of its uncached tokens are being computed by another request of
# the same extend batch (SGLang uses a similar threshold for its in-batch prefix caching check)
IN_BATCH_PREFIX_MIN = 32


class ReqKVManager:
    """Owns no memory itself: operates on the pools and the prefix cache it is given.

    Invariant (checked by ``check_integrity``): a request's slots ``req_to_token[row, :prefix_len]`` belong to the
    cache (locked through ``req.last_node``), ``[prefix_len:kv_len]`` to the request; every KV slot is exactly
    one of free, cached or request-owned.
    """

    def __init__(self, req_to_token_pool: ReqToTokenPool, allocator: TokenSlotAllocator, cache: BasePrefixCache):
        self.req_to_token_pool = req_to_token_pool
        self.allocator = allocator
        self.tree_cache = cache
        self.reuse = not isinstance(cache, NoReuseCache)
        # called with each request whose memory ``release`` gives back (the draft model drops its KV state then)
        self.release_hooks: list[Callable[[Req], None]] = []

    def available_tokens(self) -> int:
        """Slots that can be handed out now: free plus evictable (tokens)."""
        return self.allocator.available_size() + self.tree_cache.evictable_size()

    def lock(self, match: MatchResult) -> int:
        """Lock a matched prefix; returns how many evictable tokens that took away."""
        before = self.tree_cache.evictable_size()
        self.tree_cache.inc_lock_ref(match.last_node)
        return before - self.tree_cache.evictable_size()

    def unlock(self, match: MatchResult) -> int:
        """Undo ``lock``; returns how many tokens became evictable again."""
        before = self.tree_cache.evictable_size()
        self.tree_cache.dec_lock_ref(match.last_node)
        return self.tree_cache.evictable_size() - before

    def assign(self, req: Req, match: MatchResult) -> None:
        """Give an admitted request a row whose first entries are its (already locked) cached prefix."""
        row = self.req_to_token_pool.alloc()
        if row is None:
            raise RuntimeError("no free request row (the caller checks available rows first)")
        prefix_len = int(match.indices.numel())
        req.req_pool_idx, req.last_node = row, match.last_node
        req.prefix_len = req.kv_len = prefix_len
        if prefix_len:
            self.req_to_token_pool.req_to_token[row, :prefix_len] = match.indices.to(torch.int32)

    def alloc_slots(self, n: int) -> torch.Tensor:
        """``n`` KV slots (int64 ``[n]``), evicting least recently used cached leaves if needed.

        Raises:
            RuntimeError: even after eviction fewer than ``n`` slots exist (the admission budget was violated).
        """
        slots = self.allocator.alloc(n)
        if slots is None:
            self.tree_cache.evict(n - self.allocator.available_size())
            slots = self.allocator.alloc(n)
        if slots is None:
            raise RuntimeError(
                f"KV pool exhausted: need {n} slots, {self.allocator.available_size()} free (admission budget violated)"
            )
        return slots

    def write_slots(self, items: list[tuple[Req, int]], slots: torch.Tensor) -> None:
        """Record new slots in ``req_to_token``: each request's ``n`` new tokens follow its ``kv_len``."""
        table = self.req_to_token_pool.req_to_token
        if all(n == 1 for _, n in items):  # decode: one slot per request
            host = self.req_to_token_pool.req_to_token_host
            if host is None:  # one vectorised write on the device
                rows = torch.tensor([r.req_pool_idx for r, _ in items], dtype=torch.int64, device=table.device)
                cols = torch.tensor([r.kv_len for r, _ in items], dtype=torch.int64, device=table.device)
                table[rows, cols] = slots.to(torch.int32)
            elif len(items) == 1:  # CPU: numpy writes, one torch call at most
                host[items[0][0].req_pool_idx, items[0][0].kv_len] = slots.item()
            else:
                host[[r.req_pool_idx for r, _ in items], [r.kv_len for r, _ in items]] = slots.numpy()
            return
        offset = 0
        for req, n in items:
            assert req.req_pool_idx is not None
            table[req.req_pool_idx, req.kv_len : req.kv_len + n] = slots[offset : offset + n].to(torch.int32)
            offset += n

    def truncate(self, req: Req, kv_len: int) -> None:
        """Keep only ``req_to_token[row, :kv_len]``: the request's slots after it (KV of rejected draft tokens) go
        back to the free list at once and ``req.kv_len`` becomes ``kv_len``.

        Raises:
            ValueError: ``kv_len`` is below the cached prefix or above the current ``kv_len``.
        """
        assert req.req_pool_idx is not None
        if not req.prefix_len <= kv_len <= req.kv_len:
            raise ValueError(f"truncate: kv_len {kv_len} outside [{req.prefix_len}, {req.kv_len}] of {req}")
        if kv_len < req.kv_len:
            dropped = self.req_to_token_pool.req_to_token[req.req_pool_idx, kv_len : req.kv_len]
            self.allocator.free(dropped.to(torch.int64))
            req.kv_len = kv_len

    def _insert(self, req: Req) -> list[int]:
        """Insert ``seq[:kv_len]`` into the cache and free the request's slots that duplicate cached tokens."""
        assert req.req_pool_idx is not None
        key = req.seq()[: req.kv_len]
        slots = self.req_to_token_pool.req_to_token[req.req_pool_idx, : req.kv_len].to(torch.int64)
        already = self.tree_cache.insert(key, slots, req.lora_uid)
        if already > req.prefix_len:
            self.allocator.free(slots[req.prefix_len : already])
        return key

    def cache_unfinished(self, req: Req) -> None:
        """Insert a request's computed KV right after its extend, so requests arriving while it decodes reuse it;
        its duplicate slots are replaced by the cache's and its lock moves to the new last node."""
        if not self.reuse or req.req_pool_idx is None or req.kv_len <= req.prefix_len:
            return
        key = self._insert(req)
        match = self.tree_cache.match_prefix(key, req.lora_uid)
        self.req_to_token_pool.req_to_token[req.req_pool_idx, : match.indices.numel()] = match.indices.to(torch.int32)
        self.tree_cache.inc_lock_ref(match.last_node)
        if req.last_node is not None:
            self.tree_cache.dec_lock_ref(req.last_node)
        req.last_node = match.last_node
        req.prefix_len = int(match.indices.numel())

    def release(self, req: Req) -> None:
        """Give back everything a request holds: its KV goes into the cache, its lock and its row are dropped."""
        if req.req_pool_idx is None:
            return
        for hook in self.release_hooks:
            hook(req)
        self._insert(req)
        if req.last_node is not None:
            self.tree_cache.dec_lock_ref(req.last_node)
        self.req_to_token_pool.free(req.req_pool_idx)
        req.req_pool_idx = None
        req.last_node = None
        req.kv_len = req.prefix_len = 0

    def shares_uncached_prefix(self, key: list[int], namespace: int | None, admitted: list[Req]) -> bool:
        """In-batch prefix dedup (SGLang's in-batch prefix caching check): True when the uncached part of ``key``
        (in the cache ``namespace``) starts with >= IN_BATCH_PREFIX_MIN tokens that an ``admitted`` request of the
        same namespace is about to compute. Deferring that request one step lets it hit the cache instead of
        computing the same KV twice."""
        if not self.reuse or not admitted:
            return False
        cached = int(self.tree_cache.match_prefix(key, namespace).indices.numel())
        probe = key[cached : cached + IN_BATCH_PREFIX_MIN]
        if len(probe) < IN_BATCH_PREFIX_MIN:
            return False
        return any(
            other.lora_uid == namespace and other.origin_input_ids[cached : cached + IN_BATCH_PREFIX_MIN] == probe
            for other in admitted
        )

    def flush(self) -> None:
        """Drop every cached prefix and reset the pools (only when no request holds memory)."""
        self.tree_cache.reset()
        self.allocator.clear()
        self.req_to_token_pool.clear()

    def check_integrity(self, reqs: list[Req]) -> None:
        """Assert every KV slot is exactly one of free, cached (evictable/protected) or owned by one of ``reqs``,
        and that no request row leaked."""
        held = [r for r in reqs if r.req_pool_idx is not None]
        table = self.req_to_token_pool.req_to_token
        parts = [table[r.req_pool_idx, r.prefix_len : r.kv_len].to(torch.int64) for r in held]
        owned = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        self.tree_cache.check_integrity(owned)
        assert len(held) + self.req_to_token_pool.available_size() == self.req_to_token_pool.size, (
            "req_to_token rows leaked"
        )
