"""Radix-tree prefix cache over the KV slot pool (RadixAttention).

Source: SGLang's RadixAttention, "SGLang: Efficient Execution of Structured Language Model Programs"
(Zheng et al. 2024), and the shape of ``sglang/srt/mem_cache/radix_cache.py``; our own implementation.

The tree is keyed by token ids; each edge (node) holds the int64 KV slots of its tokens. Keys live in namespaces
(the base model's, ``None``, and one per loaded LoRA adapter: KV computed under one adapter is wrong for another),
each a tree of its own under its own root; eviction is one LRU over the leaves of all of them. Running requests lock
the node where their cached prefix ends (``inc_lock_ref``), which protects the whole root path from eviction.
``evict`` frees least-recently-used unlocked leaves first; ``last_access_time`` is a logical counter (not wall
time) so behaviour is deterministic. All operations are O(path length) except ``evict`` (heap over the
evictable leaves, which the cache maintains incrementally).
"""

from __future__ import annotations

import heapq

import torch

from radixgen.radix.memory_pool import TokenSlotAllocator
from radixgen.radix.prefix_cache import (
    BasePrefixCache,
    MatchResult,
    NoReuseCache,
    TreeNode,
    check_slot_accounting,
)

__all__ = [
    "BasePrefixCache",
    "MatchResult",
    "NoReuseCache",
    "RadixCache",
    "TreeNode",
    "create_prefix_cache",
]

_CHUNK = 64  # tokens compared per C-level slice comparison when locating a mismatch


def _common_prefix_len(node_key: list[int], key: list[int], start: int) -> int:
    """Length of the common prefix of ``node_key`` and ``key[start:]`` (slice compares, no per-token loop
    except inside the one chunk that holds the first mismatch)."""
    n = min(len(node_key), len(key) - start)
    if node_key[:n] == key[start : start + n]:
        return n
    i = 0
    while i + _CHUNK <= n and node_key[i : i + _CHUNK] == key[start + i : start + i + _CHUNK]:
        i += _CHUNK
    while i < n and node_key[i] == key[start + i]:
        i += 1
    return i


class RadixCache(BasePrefixCache):
    """Radix tree mapping token-id prefixes to KV slots, with lock-protected LRU eviction.

    Args:
        allocator: the KV slot allocator; evicted slots are returned to it.

    ``match_prefix`` splits a node when the match ends inside it; ``insert`` reports how much of the key was
    already cached so the caller can free its duplicate slots. The roots (one per namespace: ``root`` for
    ``None``, created on first use for the others) are never evicted and never locked; only roots have empty keys.
    """

    def __init__(self, allocator: TokenSlotAllocator) -> None:
        self.allocator = allocator
        self._clock = 0
        self._next_id = 0
        self.reset()

    # ------------------------------------------------------------------ helpers
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _new_node(self, key: list[int], value: torch.Tensor, parent: TreeNode | None, t: int) -> TreeNode:
        self._next_id += 1
        return TreeNode(key, value, parent, node_id=self._next_id, last_access_time=t)

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.allocator.device)

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Split ``child`` after its first ``n`` tokens; returns the new upper node (``child`` keeps its
        identity as the lower part, so locks held on it stay valid). Sizes are unchanged."""
        parent = child.parent
        assert parent is not None and 0 < n < len(child.key)
        upper = self._new_node(child.key[:n], child.value[:n], parent, child.last_access_time)
        upper.lock_ref = child.lock_ref
        child.key = child.key[n:]
        child.value = child.value[n:]
        child.parent = upper
        upper.children[child.key[0]] = child
        parent.children[upper.key[0]] = upper
        return upper

    # ------------------------------------------------------------------ interface
    def match_prefix(self, key: list[int], namespace: int | None = None) -> MatchResult:
        """Longest cached prefix of ``key``.

        Args:
            key: token ids. namespace: the key's namespace (a LoRA adapter's uid; None: the base model).

        Returns:
            ``MatchResult(indices=int64 [n] KV slots, last_node)``; ``last_node`` is the namespace's root when
            ``n == 0``. Updates ``last_access_time`` of the matched path; splits the last node if the match
            ends inside it.
        """
        node, _, values, _ = self._descend(key, namespace)
        indices = torch.cat(values) if values else self._empty()
        return MatchResult(indices=indices, last_node=node)

    def _root(self, namespace: int | None) -> TreeNode:
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = self._new_node([], self._empty(), None, self._clock)
        return root

    def _descend(self, key: list[int], namespace: int | None) -> tuple[TreeNode, int, list[torch.Tensor], int]:
        """Walk the longest cached prefix of ``key``, splitting the last node where the match ends inside it and
        stamping the path with a new access time. Returns (last node, matched length, the path's slot tensors,
        the access time)."""
        t = self._tick()
        node = self._root(namespace)
        node.last_access_time = t
        values: list[torch.Tensor] = []
        pos = 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = _common_prefix_len(child.key, key, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access_time = t
            values.append(child.value)
            node = child
            pos += n
        return node, pos, values, t

    def insert(self, key: list[int], value: torch.Tensor, namespace: int | None = None) -> int:
        """Cache ``key`` → ``value`` (int64 ``[len(key)]`` KV slots; other integer dtypes are converted) in
        ``namespace``.

        Returns:
            The length of the prefix of ``key`` that was already cached. The tree takes ownership of
            ``value[returned:]``; the caller keeps responsibility for ``value[:returned]``.

        Raises:
            ValueError: ``value`` is not 1-D of ``len(key)`` entries.
        """
        if value.dim() != 1 or value.numel() != len(key):
            raise ValueError(f"insert: value must be 1-D with len(key)={len(key)} entries, got {value.shape}")
        node, pos, _, t = self._descend(key, namespace)
        if pos < len(key):
            leaf_value = value[pos:].to(device=self.allocator.device, dtype=torch.int64, copy=True)
            leaf = self._new_node(list(key[pos:]), leaf_value, node, t)
            node.children[leaf.key[0]] = leaf
            self._evictable_leaves.discard(node)
            self._evictable_leaves.add(leaf)
            self._evictable += len(leaf.key)
        return pos

    def inc_lock_ref(self, node: TreeNode) -> None:
        """Protect ``node`` and its ancestors from eviction; moves newly locked tokens evictable → protected.

        Raises:
            ValueError: ``node`` has been evicted (detached from the tree).
        """
        if node.key and node.parent is None:
            raise ValueError(f"inc_lock_ref: {node!r} has been evicted")
        cur: TreeNode | None = node
        while cur is not None and cur.key:  # up to the root (the only node with an empty key)
            if cur.lock_ref == 0:
                self._evictable -= len(cur.key)
                self._protected += len(cur.key)
                self._evictable_leaves.discard(cur)
            cur.lock_ref += 1
            cur = cur.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        """Release one lock on ``node`` and its ancestors; nodes whose ``lock_ref`` hits 0 become evictable.

        Raises:
            ValueError: ``node`` is not locked (unbalanced ``dec_lock_ref``).
        """
        if not node.key:  # a root
            return
        if node.lock_ref <= 0:
            raise ValueError(f"dec_lock_ref: {node!r} is not locked")
        cur: TreeNode | None = node
        while cur is not None and cur.key:
            cur.lock_ref -= 1
            if cur.lock_ref == 0:
                self._evictable += len(cur.key)
                self._protected -= len(cur.key)
                if not cur.children:
                    self._evictable_leaves.add(cur)
            cur = cur.parent

    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` KV slots into the allocator, least recently used unlocked leaves first
        (a parent left childless and unlocked becomes evictable in the same call); frees as many as are
        evictable if fewer. Returns the number of slots freed."""
        if num_tokens <= 0:
            return 0
        heap = [(n.last_access_time, n.node_id, n) for n in self._evictable_leaves]
        heapq.heapify(heap)
        freed: list[torch.Tensor] = []
        num_freed = 0
        while num_freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            assert parent is not None and node.lock_ref == 0 and not node.children
            freed.append(node.value)
            num_freed += len(node.key)
            del parent.children[node.key[0]]
            node.parent = None
            self._evictable_leaves.discard(node)
            self._evictable -= len(node.key)
            if parent.key and parent.lock_ref == 0 and not parent.children:
                self._evictable_leaves.add(parent)
                heapq.heappush(heap, (parent.last_access_time, parent.node_id, parent))
        if freed:
            self.allocator.free(torch.cat(freed))
        return num_freed

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def reset(self) -> None:
        """Drop all nodes of every namespace (slots are NOT freed; pair with ``allocator.clear()``)."""
        self.root = self._new_node([], self._empty(), None, self._clock)
        self._roots: dict[int | None, TreeNode] = {None: self.root}
        self._evictable = 0
        self._protected = 0
        self._evictable_leaves: set[TreeNode] = set()

    def check_integrity(self, owned_slots: torch.Tensor | None = None) -> None:
        """Check tree invariants and slot accounting (see ``BasePrefixCache.check_integrity``).

        Tree invariants: ``len(key) == len(value)`` and non-empty for every non-root node; children keyed by
        their key's first token with matching ``parent`` links; ``lock_ref >= 0`` and a child's ``lock_ref``
        ``<=`` its parent's; a child's ``last_access_time <=`` its parent's; evictable/protected sizes and the
        evictable-leaf set equal what is recomputed from the nodes.

        Raises:
            AssertionError: naming the first broken invariant.
        """
        for root in self._roots.values():
            if root.key or root.value.numel() or root.parent is not None or root.lock_ref:
                raise AssertionError(f"a root must have an empty key/value, no parent and no lock: {root!r}")
        roots = set(self._roots.values())
        evictable = protected = 0
        leaves: set[TreeNode] = set()
        values: list[torch.Tensor] = []
        stack = list(roots)
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                where = f"child {child!r} of {node!r}"
                if child.parent is not node:
                    raise AssertionError(f"{where}: parent link is wrong")
                if len(child.key) == 0:
                    raise AssertionError(f"{where}: empty non-root node")
                if child.key[0] != first:
                    raise AssertionError(f"{where}: keyed by {first} but its key starts with {child.key[0]}")
                if child.value.dim() != 1 or child.value.numel() != len(child.key):
                    raise AssertionError(f"{where}: value shape {tuple(child.value.shape)} != len(key)")
                if child.value.dtype != torch.int64:
                    raise AssertionError(f"{where}: value dtype {child.value.dtype} is not int64")
                if child.lock_ref < 0:
                    raise AssertionError(f"{where}: negative lock_ref")
                if node not in roots and child.lock_ref > node.lock_ref:
                    raise AssertionError(f"{where}: child lock_ref > parent lock_ref")
                if child.last_access_time > node.last_access_time:
                    raise AssertionError(f"{where}: child last_access_time > parent's")
                if child.lock_ref > 0:
                    protected += len(child.key)
                else:
                    evictable += len(child.key)
                    if not child.children:
                        leaves.add(child)
                values.append(child.value)
                stack.append(child)
        if evictable != self._evictable:
            raise AssertionError(f"evictable_size {self._evictable} != {evictable} recomputed from the nodes")
        if protected != self._protected:
            raise AssertionError(f"protected_size {self._protected} != {protected} recomputed from the nodes")
        if leaves != self._evictable_leaves:
            raise AssertionError(
                f"evictable-leaf set out of sync: missing {list(leaves - self._evictable_leaves)[:5]}, "
                f"stale {list(self._evictable_leaves - leaves)[:5]}"
            )
        check_slot_accounting(self.allocator, torch.cat(values) if values else self._empty(), owned_slots)


def create_prefix_cache(allocator: TokenSlotAllocator, disable: bool) -> BasePrefixCache:
    """The prefix cache for a server: ``NoReuseCache`` if ``disable`` (``--disable-radix-cache``), else
    ``RadixCache``, both over ``allocator``."""
    return NoReuseCache(allocator) if disable else RadixCache(allocator)
