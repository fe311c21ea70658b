"""The prefix-cache interface shared by the radix cache and the disabled (no-reuse) cache.

A prefix cache maps token-id sequences to the KV slots that hold their K/V, so a new request whose prompt
shares a prefix with an earlier one reuses that KV instead of recomputing it. Design after SGLang's
RadixAttention ("SGLang: Efficient Execution of Structured Language Model Programs", Zheng et al. 2024)
and its ``sglang/srt/mem_cache`` package.

Slot accounting (checked by :meth:`BasePrefixCache.check_integrity`): every KV slot ``1..allocator.size`` is
at any time exactly one of free (in ``allocator.free_slots``), in the cache (evictable or protected), or owned
by a running request (not yet inserted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from radixgen.radix.memory_pool import TokenSlotAllocator


class TreeNode:
    """One node of the radix tree: an edge label ``key`` (token ids) and the KV slots ``value`` of its tokens.

    Attributes:
        children: child nodes keyed by the first token id of their ``key``.
        parent: the parent node; ``None`` for the root and for a node that has been evicted.
        key: token ids of this edge (empty only for the root).
        value: int64 ``[len(key)]`` KV slots of those tokens.
        lock_ref: number of running requests using this node (directly or through a descendant); a node with
            ``lock_ref > 0`` is protected from eviction.
        last_access_time: logical clock value of the last match/insert touching this node (not wall time).
        node_id: unique per cache, breaks ties in the eviction heap.
    """

    __slots__ = ("children", "parent", "key", "value", "lock_ref", "last_access_time", "node_id")

    def __init__(
        self,
        key: list[int],
        value: torch.Tensor,
        parent: TreeNode | None,
        node_id: int,
        last_access_time: int = 0,
        lock_ref: int = 0,
    ) -> None:
        self.children: dict[int, TreeNode] = {}
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = lock_ref
        self.last_access_time = last_access_time
        self.node_id = node_id

    def __repr__(self) -> str:
        head = self.key[:8]
        more = "..." if len(self.key) > 8 else ""
        return (
            f"TreeNode(id={self.node_id}, key={head}{more}, len={len(self.key)}, lock_ref={self.lock_ref}, "
            f"t={self.last_access_time}, children={len(self.children)})"
        )


@dataclass
class MatchResult:
    """Result of :meth:`BasePrefixCache.match_prefix`.

    Attributes:
        indices: int64 ``[n]`` KV slots of the longest cached prefix of the key (``n`` may be 0). A fresh
            tensor (not a view of the tree's storage).
        last_node: the node where the match ends (the root when ``n == 0``). Lock it with ``inc_lock_ref``
            while a request uses the prefix, and ``dec_lock_ref`` it when done.
    """

    indices: torch.Tensor
    last_node: TreeNode


class BasePrefixCache(ABC):
    """Interface of a KV prefix cache (implemented by ``RadixCache`` and ``NoReuseCache``).

    Sizes are in tokens (= KV slots, page size 1).
    """

    allocator: TokenSlotAllocator
    root: TreeNode

    @abstractmethod
    def match_prefix(self, key: list[int], namespace: int | None = None) -> MatchResult:
        """Longest cached prefix of ``key`` in ``namespace`` (None: the base model; else a LoRA adapter's uid,
        whose KV is never shared with another namespace): its KV slots and the node where it ends."""

    @abstractmethod
    def insert(self, key: list[int], value: torch.Tensor, namespace: int | None = None) -> int:
        """Cache ``key`` with KV slots ``value`` (int64 ``[len(key)]``) in ``namespace``.

        Returns the length of the prefix of ``key`` that was already cached before the call. The cache takes
        ownership of ``value[returned:]``; ``value[:returned]`` stays the caller's responsibility (the caller
        frees those of its slots that are duplicates of the cached ones).
        """

    @abstractmethod
    def inc_lock_ref(self, node: TreeNode) -> None:
        """Protect ``node`` and all its ancestors from eviction (one more user)."""

    @abstractmethod
    def dec_lock_ref(self, node: TreeNode) -> None:
        """Undo one ``inc_lock_ref(node)``."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free >= ``num_tokens`` slots into the allocator (or all evictable ones); returns the count."""

    @abstractmethod
    def evictable_size(self) -> int:
        """Tokens cached in unlocked nodes."""

    @abstractmethod
    def protected_size(self) -> int:
        """Tokens cached in locked nodes (``lock_ref > 0``)."""

    def total_size(self) -> int:
        """Tokens cached in total (evictable + protected)."""
        return self.evictable_size() + self.protected_size()

    @abstractmethod
    def reset(self) -> None:
        """Drop every node. Does NOT free slots: use together with ``allocator.clear()``."""

    @abstractmethod
    def check_integrity(self, owned_slots: torch.Tensor | None = None) -> None:
        """Check the cache's invariants and the slot accounting.

        Args:
            owned_slots: int64 ``[k]`` slots held by running requests and not in the cache (``None`` = none).

        Raises:
            AssertionError: with a message naming the broken invariant.
        """


def check_slot_accounting(
    allocator: TokenSlotAllocator, cached_slots: torch.Tensor, owned_slots: torch.Tensor | None
) -> None:
    """Assert every slot ``1..allocator.size`` is exactly once in free ∪ cached ∪ owned (and slot 0 nowhere).

    Args:
        allocator: its ``free_slots`` are the free slots.
        cached_slots: int64 ``[m]`` slots held by the cache.
        owned_slots: int64 ``[k]`` slots held by running requests, or ``None``.

    Raises:
        AssertionError: a slot is out of range, missing (leaked), or in more than one place / duplicated.
    """
    size = allocator.size
    device = allocator.free_slots.device
    parts = {
        "free": allocator.free_slots.to(torch.int64).flatten(),
        "cached": cached_slots.to(device=device, dtype=torch.int64).flatten(),
        "owned": (
            torch.empty(0, dtype=torch.int64, device=device)
            if owned_slots is None
            else owned_slots.to(device=device, dtype=torch.int64).flatten()
        ),
    }
    for name, slots in parts.items():
        bad = slots[(slots < 1) | (slots > size)]
        if bad.numel():
            raise AssertionError(f"{name} slots out of range [1, {size}]: {bad[:10].tolist()}")
    counts = torch.bincount(torch.cat(list(parts.values())), minlength=size + 1)[1:]
    if bool((counts == 1).all()):
        return

    def where(slot: int) -> str:
        return "+".join(f"{n}x{int((s == slot).sum())}" for n, s in parts.items() if bool((s == slot).any()))

    dup = (torch.nonzero(counts > 1).flatten() + 1)[:10].tolist()
    missing = (torch.nonzero(counts == 0).flatten() + 1)[:10].tolist()
    raise AssertionError(
        "slot accounting broken (each slot must be exactly one of free / cached / owned): "
        f"duplicated slots {[(s, where(s)) for s in dup]}, leaked slots (in none) {missing}; "
        f"free={parts['free'].numel()} cached={parts['cached'].numel()} owned={parts['owned'].numel()} "
        f"size={size}"
    )


class NoReuseCache(BasePrefixCache):
    """Prefix cache that caches nothing (``--disable-radix-cache``), for A/B measurement of the radix cache.

    ``match_prefix`` always returns an empty match at the root; ``insert`` stores nothing and returns
    ``len(key)`` so the caller frees all its slots; ``evict`` frees nothing; all sizes are 0.
    """

    def __init__(self, allocator: TokenSlotAllocator) -> None:
        self.allocator = allocator
        self.root = TreeNode([], torch.empty(0, dtype=torch.int64, device=allocator.device), None, node_id=0)

    def match_prefix(self, key: list[int], namespace: int | None = None) -> MatchResult:
        return MatchResult(torch.empty(0, dtype=torch.int64, device=self.allocator.device), self.root)

    def insert(self, key: list[int], value: torch.Tensor, namespace: int | None = None) -> int:
        if value.dim() != 1 or value.numel() != len(key):
            raise ValueError(f"insert: value must be 1-D with len(key)={len(key)} entries, got {value.shape}")
        return len(key)

    def inc_lock_ref(self, node: TreeNode) -> None:
        if node is not self.root:
            raise ValueError(f"NoReuseCache.inc_lock_ref: unknown node {node!r}")

    def dec_lock_ref(self, node: TreeNode) -> None:
        if node is not self.root:
            raise ValueError(f"NoReuseCache.dec_lock_ref: unknown node {node!r}")

    def evict(self, num_tokens: int) -> int:
        return 0

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def reset(self) -> None:
        pass

    def check_integrity(self, owned_slots: torch.Tensor | None = None) -> None:
        if self.root.children or self.root.key or self.root.value.numel():
            raise AssertionError("NoReuseCache: root must stay empty")
        check_slot_accounting(
            self.allocator, torch.empty(0, dtype=torch.int64, device=self.allocator.device), owned_slots
        )
