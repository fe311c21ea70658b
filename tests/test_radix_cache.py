"""Tests for the radix-tree prefix cache (radixgen.radix.radix_cache) and the no-reuse cache."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixgen.radix import (
    BasePrefixCache,
    NoReuseCache,
    RadixCache,
    TokenSlotAllocator,
    TreeNode,
    create_prefix_cache,
)


def _cache(size: int = 64) -> tuple[TokenSlotAllocator, RadixCache]:
    allocator = TokenSlotAllocator(size)
    return allocator, RadixCache(allocator)


def _insert(allocator: TokenSlotAllocator, cache: RadixCache, key: list[int]) -> tuple[int, torch.Tensor]:
    """Insert ``key`` with fresh slots, freeing the duplicates as a caller would; returns (m, slots)."""
    slots = allocator.alloc(len(key))
    assert slots is not None
    m = cache.insert(key, slots)
    allocator.free(slots[:m])
    return m, slots


# ---------------------------------------------------------------------------------------------- unit tests
def test_match_on_empty_tree() -> None:
    _, cache = _cache()
    for key in ([], [1, 2, 3]):
        res = cache.match_prefix(key)
        assert res.indices.dtype == torch.int64 and res.indices.numel() == 0
        assert res.last_node is cache.root
    assert cache.total_size() == 0
    cache.check_integrity()


def test_insert_returns_already_cached_length() -> None:
    allocator, cache = _cache()
    assert _insert(allocator, cache, [1, 2, 3, 4])[0] == 0
    assert _insert(allocator, cache, [1, 2, 3, 4])[0] == 4
    assert _insert(allocator, cache, [1, 2, 3, 4, 5, 6])[0] == 4
    assert _insert(allocator, cache, [1, 2, 9])[0] == 2
    assert _insert(allocator, cache, [7])[0] == 0
    assert _insert(allocator, cache, [])[0] == 0
    assert cache.total_size() == 8 and cache.evictable_size() == 8 and cache.protected_size() == 0
    assert allocator.available_size() == 64 - 8
    cache.check_integrity()


def test_insert_then_match_returns_inserted_slots() -> None:
    allocator, cache = _cache()
    _, first = _insert(allocator, cache, [1, 2, 3, 4])
    _, second = _insert(allocator, cache, [1, 2, 3, 4, 5, 6])
    res = cache.match_prefix([1, 2, 3, 4, 5, 6, 7])
    assert res.indices.tolist() == first.tolist() + second[4:].tolist()
    assert res.last_node.key == [5, 6]


def test_split_in_the_middle_of_a_node() -> None:
    allocator, cache = _cache()
    _, slots = _insert(allocator, cache, [1, 2, 3, 4, 5])
    res = cache.match_prefix([1, 2, 3, 7])
    assert res.indices.tolist() == slots[:3].tolist()
    upper = res.last_node
    assert upper.key == [1, 2, 3] and upper.parent is cache.root and cache.root.children[1] is upper
    assert list(upper.children) == [4] and upper.children[4].key == [4, 5]
    assert upper.children[4].value.tolist() == slots[3:].tolist()
    assert cache.total_size() == 5
    cache.check_integrity()
    # a match that ends exactly at the key's end inside a node also splits
    res2 = cache.match_prefix([1, 2])
    assert res2.indices.tolist() == slots[:2].tolist() and res2.last_node.key == [1, 2]
    cache.check_integrity()
    # insert diverging inside a node splits and adds a leaf
    assert _insert(allocator, cache, [1, 2, 3, 4, 6])[0] == 4
    assert cache.total_size() == 6
    cache.check_integrity()


def test_long_keys_mismatch_positions() -> None:
    allocator, cache = _cache(size=1024)
    key = [i % 7 for i in range(300)]
    _, slots = _insert(allocator, cache, key)
    for cut in (0, 1, 63, 64, 65, 128, 200, 299):
        probe = key[:cut] + [99] + key[cut + 1 :]
        res = cache.match_prefix(probe)
        assert res.indices.tolist() == slots[:cut].tolist()
    assert cache.match_prefix(key + [5]).indices.tolist() == slots.tolist()
    cache.check_integrity()


def test_insert_converts_dtype_and_validates_shape() -> None:
    allocator, cache = _cache()
    slots = allocator.alloc(3)
    assert slots is not None
    assert cache.insert([1, 2, 3], slots.to(torch.int32)) == 0
    assert cache.match_prefix([1, 2, 3]).indices.dtype == torch.int64
    cache.check_integrity()
    with pytest.raises(ValueError):
        cache.insert([4, 5], torch.tensor([1], dtype=torch.int64))


def test_lock_protects_from_eviction() -> None:
    allocator, cache = _cache()
    _, a = _insert(allocator, cache, [1, 2, 3])
    res = cache.match_prefix([1, 2, 3])
    cache.inc_lock_ref(res.last_node)
    assert cache.evict(100) == 0
    _insert(allocator, cache, [5, 6])
    assert cache.evict(100) == 2
    assert cache.match_prefix([1, 2, 3]).indices.tolist() == a.tolist()
    cache.check_integrity()
    cache.dec_lock_ref(res.last_node)
    assert cache.evict(1) == 3
    assert cache.total_size() == 0 and allocator.available_size() == 64
    cache.check_integrity()
    with pytest.raises(ValueError):
        cache.inc_lock_ref(res.last_node)  # evicted node


def test_lock_of_a_child_protects_the_parent() -> None:
    allocator, cache = _cache()
    _insert(allocator, cache, [1, 2, 3])
    _insert(allocator, cache, [1, 2, 4])
    res = cache.match_prefix([1, 2, 3])
    cache.inc_lock_ref(res.last_node)
    assert cache.evict(100) == 1  # only the [4] leaf
    assert cache.match_prefix([1, 2, 3]).indices.numel() == 3
    cache.check_integrity()


def test_eviction_is_lru() -> None:
    allocator, cache = _cache()
    for key in ([1, 1], [2, 2], [3, 3]):
        _insert(allocator, cache, key)
    cache.match_prefix([1, 1])  # now [2, 2] is the least recently used, then [3, 3]
    assert cache.evict(1) == 2
    assert cache.match_prefix([2, 2]).indices.numel() == 0
    assert cache.match_prefix([3, 3]).indices.numel() == 2  # touching [3, 3] makes [1, 1] the oldest
    assert cache.evict(1) == 2
    assert cache.match_prefix([1, 1]).indices.numel() == 0
    assert cache.match_prefix([3, 3]).indices.numel() == 2
    cache.check_integrity()


def test_evict_cascades_to_parent_in_one_call() -> None:
    allocator, cache = _cache()
    _insert(allocator, cache, [1, 2, 3])
    _insert(allocator, cache, [1, 2, 4])
    assert cache.total_size() == 4
    assert cache.evict(3) == 4  # leaves [3] and [4], then their parent [1, 2]
    assert cache.total_size() == 0 and allocator.available_size() == 64
    assert not cache.root.children
    cache.check_integrity()
    assert cache.evict(0) == 0 and cache.evict(5) == 0


def test_evictable_and_protected_accounting() -> None:
    allocator, cache = _cache()
    _insert(allocator, cache, [1, 2, 3, 4])
    _insert(allocator, cache, [1, 2, 5, 6])
    n1 = cache.match_prefix([1, 2, 3, 4]).last_node
    n2 = cache.match_prefix([1, 2, 5, 6]).last_node
    assert (cache.evictable_size(), cache.protected_size()) == (6, 0)
    cache.inc_lock_ref(n1)
    assert (cache.evictable_size(), cache.protected_size()) == (2, 4)
    cache.inc_lock_ref(n2)
    assert (cache.evictable_size(), cache.protected_size()) == (0, 6)
    cache.inc_lock_ref(n2)
    assert (cache.evictable_size(), cache.protected_size()) == (0, 6)
    cache.check_integrity()
    cache.dec_lock_ref(n1)
    assert (cache.evictable_size(), cache.protected_size()) == (2, 4)
    cache.dec_lock_ref(n2)
    assert (cache.evictable_size(), cache.protected_size()) == (2, 4)
    cache.dec_lock_ref(n2)
    assert (cache.evictable_size(), cache.protected_size()) == (6, 0)
    assert cache.total_size() == 6
    cache.check_integrity()
    with pytest.raises(ValueError):
        cache.dec_lock_ref(n2)
    cache.inc_lock_ref(cache.root)  # the root is never locked: no-op
    cache.dec_lock_ref(cache.root)
    assert cache.protected_size() == 0


def test_split_keeps_lock_and_access_time_consistent() -> None:
    allocator, cache = _cache()
    _insert(allocator, cache, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(node)
    upper = cache.match_prefix([1, 2, 9]).last_node  # splits the locked node
    assert upper is not node and node.parent is upper and upper.lock_ref == node.lock_ref == 1
    assert upper.last_access_time >= node.last_access_time
    assert (cache.evictable_size(), cache.protected_size()) == (0, 4)
    cache.check_integrity()
    cache.dec_lock_ref(node)
    assert (cache.evictable_size(), cache.protected_size()) == (4, 0)
    cache.check_integrity()


def test_reset_with_allocator_clear() -> None:
    allocator, cache = _cache()
    _insert(allocator, cache, [1, 2, 3])
    cache.reset()
    allocator.clear()
    assert cache.total_size() == 0 and not cache.root.children
    cache.check_integrity()


def test_no_reuse_cache() -> None:
    allocator = TokenSlotAllocator(16)
    cache = NoReuseCache(allocator)
    slots = allocator.alloc(3)
    assert slots is not None
    cache.check_integrity(owned_slots=slots)
    res = cache.match_prefix([1, 2, 3])
    assert res.indices.numel() == 0 and res.last_node is cache.root
    cache.inc_lock_ref(res.last_node)
    assert cache.insert([1, 2, 3], slots) == 3
    allocator.free(slots)  # the caller frees all of them
    cache.dec_lock_ref(res.last_node)
    assert cache.match_prefix([1, 2, 3]).indices.numel() == 0
    assert cache.evict(10) == 0
    assert (cache.evictable_size(), cache.protected_size(), cache.total_size()) == (0, 0, 0)
    cache.reset()
    cache.check_integrity()
    with pytest.raises(AssertionError):
        cache.check_integrity(owned_slots=torch.tensor([1], dtype=torch.int64))  # slot 1 is free too


def test_create_prefix_cache() -> None:
    allocator = TokenSlotAllocator(8)
    assert isinstance(create_prefix_cache(allocator, disable=True), NoReuseCache)
    radix = create_prefix_cache(allocator, disable=False)
    assert isinstance(radix, RadixCache) and isinstance(radix, BasePrefixCache)


def test_check_integrity_catches_corruption() -> None:
    # a slot both free and in the tree
    allocator, cache = _cache(16)
    _, slots = _insert(allocator, cache, [1, 2, 3])
    allocator.free(slots[:1])
    with pytest.raises(AssertionError, match="duplicated"):
        cache.check_integrity()

    # a leaked slot (allocated, neither cached nor declared owned)
    allocator, cache = _cache(16)
    owned = allocator.alloc(2)
    assert owned is not None
    cache.check_integrity(owned_slots=owned)
    with pytest.raises(AssertionError, match="leaked"):
        cache.check_integrity()

    # wrong size bookkeeping
    allocator, cache = _cache(16)
    _insert(allocator, cache, [1, 2, 3])
    cache._evictable += 1
    with pytest.raises(AssertionError, match="evictable_size"):
        cache.check_integrity()

    # child more locked than its parent, and len(key) != len(value)
    allocator, cache = _cache(16)
    _insert(allocator, cache, [1, 2, 3])
    _insert(allocator, cache, [1, 2, 4])
    parent = cache.root.children[1]
    parent.children[3].lock_ref = 1
    with pytest.raises(AssertionError, match="lock_ref"):
        cache.check_integrity()
    parent.children[3].lock_ref = 0
    parent.key = [1, 2, 2]
    with pytest.raises(AssertionError, match="len"):
        cache.check_integrity()

    # a slot out of range
    allocator, cache = _cache(16)
    allocator.free_slots = torch.cat((allocator.free_slots[1:], torch.tensor([0])))
    with pytest.raises(AssertionError, match="out of range"):
        cache.check_integrity()


# ---------------------------------------------------------------------------------------------- state machine
KEYS = st.lists(st.integers(0, 3), min_size=0, max_size=8)
POOL_SIZE = 24


@dataclass
class _Req:
    """A running request: it locked ``last_node`` (where its cached ``prefix`` ends) and owns ``owned``."""

    key: list[int]
    prefix: torch.Tensor
    last_node: TreeNode
    owned: torch.Tensor
    ns: int | None = None


NAMESPACES = st.sampled_from([None, 1, 2])  # the base model's and two LoRA adapters'


class RadixCacheMachine(RuleBasedStateMachine):
    """Random insert / match / lock (request start) / unlock (finish or abort) / evict / reset sequences over three
    key namespaces, checked against a flat model ``{(namespace, token-prefix tuple): KV slot}`` of everything cached:
    a key never matches what another namespace cached, and eviction is one LRU over all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.allocator = TokenSlotAllocator(POOL_SIZE)
        self.cache = RadixCache(self.allocator)
        self.model: dict[tuple[int | None, tuple[int, ...]], int] = {}
        self.reqs: list[_Req] = []

    # --------------------------------------------------------------------- helpers
    def _model_match(self, key: list[int], ns: int | None) -> list[int]:
        out: list[int] = []
        for i in range(len(key)):
            slot = self.model.get((ns, tuple(key[: i + 1])))
            if slot is None:
                break
            out.append(slot)
        return out

    def _model_insert(self, key: list[int], value: torch.Tensor, ns: int | None) -> None:
        vals = value.tolist()
        for i in range(len(key)):
            self.model.setdefault((ns, tuple(key[: i + 1])), vals[i])

    def _evict(self, n: int) -> int:
        evictable, available = self.cache.evictable_size(), self.allocator.available_size()
        freed = self.cache.evict(n)
        assert min(n, evictable) <= freed <= evictable
        assert self.cache.evictable_size() == evictable - freed
        assert self.allocator.available_size() == available + freed
        free = set(self.allocator.free_slots.tolist())
        kept = {k: v for k, v in self.model.items() if v not in free}
        assert len(self.model) - len(kept) == freed
        assert all(len(k) == 1 or (ns, k[:-1]) in kept for ns, k in kept), "eviction removed an inner node"
        self.model = kept
        for req in self.reqs:  # locked prefixes must survive eviction, unchanged
            res = self.cache.match_prefix(req.key[: req.prefix.numel()], req.ns)
            assert torch.equal(res.indices, req.prefix) and res.last_node is req.last_node
        return freed

    def _alloc(self, n: int) -> torch.Tensor | None:
        short = n - self.allocator.available_size()
        if short > 0:
            self._evict(short)
        return self.allocator.alloc(n)

    # --------------------------------------------------------------------- rules
    @rule(key=KEYS, ns=NAMESPACES)
    def insert_fresh(self, key: list[int], ns: int | None) -> None:
        slots = self._alloc(len(key))
        if slots is None:
            return
        expected = len(self._model_match(key, ns))
        total = self.cache.total_size()
        m = self.cache.insert(key, slots, ns)
        assert m == expected
        self.allocator.free(slots[:m])
        self._model_insert(key, slots, ns)
        assert self.cache.total_size() == total + len(key) - m

    @rule(key=KEYS, ns=NAMESPACES)
    def match(self, key: list[int], ns: int | None) -> None:
        res = self.cache.match_prefix(key, ns)
        assert res.indices.tolist() == self._model_match(key, ns)
        if res.indices.numel() == 0:
            assert not res.last_node.key and res.last_node.parent is None  # the namespace's root
            assert (res.last_node is self.cache.root) == (ns is None)

    @rule(key=KEYS, ns=NAMESPACES)
    def start_request(self, key: list[int], ns: int | None) -> None:
        res = self.cache.match_prefix(key, ns)
        assert res.indices.tolist() == self._model_match(key, ns)
        self.cache.inc_lock_ref(res.last_node)
        owned = self._alloc(len(key) - res.indices.numel())
        if owned is None:
            self.cache.dec_lock_ref(res.last_node)
            return
        self.reqs.append(_Req(key, res.indices, res.last_node, owned, ns))

    @precondition(lambda self: bool(self.reqs))
    @rule(i=st.integers(0, 63))
    def finish_request(self, i: int) -> None:
        req = self.reqs.pop(i % len(self.reqs))
        n = req.prefix.numel()
        value = torch.cat((req.prefix, req.owned))
        expected = len(self._model_match(req.key, req.ns))
        m = self.cache.insert(req.key, value, req.ns)
        assert m == expected and m >= n
        self.allocator.free(req.owned[: m - n])  # the duplicates; value[:n] was the tree's own
        self._model_insert(req.key, value, req.ns)
        self.cache.dec_lock_ref(req.last_node)

    @precondition(lambda self: bool(self.reqs))
    @rule(i=st.integers(0, 63))
    def abort_request(self, i: int) -> None:
        req = self.reqs.pop(i % len(self.reqs))
        self.allocator.free(req.owned)
        self.cache.dec_lock_ref(req.last_node)

    @rule(n=st.integers(0, 24))
    def evict(self, n: int) -> None:
        self._evict(n)

    @precondition(lambda self: not self.reqs)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        self.allocator.clear()
        self.model.clear()

    # --------------------------------------------------------------------- invariants
    @invariant()
    def integrity(self) -> None:
        owned = [r.owned for r in self.reqs]
        self.cache.check_integrity(owned_slots=torch.cat(owned) if owned else None)
        assert self.cache.total_size() == len(self.model)
        locked = {(r.ns, tuple(r.key[:j])) for r in self.reqs for j in range(1, r.prefix.numel() + 1)}
        assert self.cache.protected_size() == len(locked)

    @invariant()
    def locked_paths_attached(self) -> None:
        for req in self.reqs:  # walk last_node -> root without mutating the tree
            parts: list[torch.Tensor] = []
            node = req.last_node
            while node.key:  # up to the namespace's root
                parent = node.parent
                assert parent is not None and parent.children[node.key[0]] is node, "locked node detached"
                assert node.lock_ref > 0
                parts.append(node.value)
                node = parent
            path = torch.cat(parts[::-1]) if parts else torch.empty(0, dtype=torch.int64)
            assert torch.equal(path, req.prefix)


RadixCacheMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, derandomize=True, database=None
)
TestRadixCacheMachine = RadixCacheMachine.TestCase


def test_namespaces_never_share_and_evict_as_one_lru() -> None:
    """The same tokens under two adapters (namespaces) are two entries; eviction takes the least recently used leaf
    whatever its namespace."""
    allocator, cache = _cache(16)
    base = allocator.alloc(4)
    lora = allocator.alloc(4)
    assert base is not None and lora is not None
    assert cache.insert([1, 2, 3, 4], base) == 0
    assert cache.insert([1, 2, 3, 4], lora, namespace=7) == 0  # nothing shared with the base model's entry
    assert cache.match_prefix([1, 2, 3, 4], namespace=7).indices.tolist() == lora.tolist()
    assert cache.match_prefix([1, 2, 3, 4]).indices.tolist() == base.tolist()
    assert cache.match_prefix([1, 2, 3, 4], namespace=8).indices.numel() == 0
    cache.match_prefix([1, 2, 3, 4, 5], namespace=7)  # the adapter's entry is now the more recent one
    assert cache.evict(1) == 4 and cache.match_prefix([1, 2, 3, 4]).indices.numel() == 0
    assert cache.match_prefix([1, 2, 3, 4], namespace=7).indices.numel() == 4
    cache.check_integrity()
