"""Data parallelism (``--dp-size N``): N scheduler replicas behind one HTTP front end, each request sent to the
replica most likely to hold its prefix in its radix cache, balanced against load. Torch-free (the HTTP process).

The policy is SGLang's cache-aware router's (sgl-router, ``policies/cache_aware``): while the replicas' loads are
balanced, a request goes to the replica whose approximate prefix tree matches the largest share of its prompt if that
share reaches ``cache_threshold``, else to the least loaded replica; when the loads are imbalanced (the busiest
replica has more than ``balance_abs_threshold`` requests above the idlest and more than ``balance_rel_threshold``
times its load), to the least loaded one. The approximate tree of each replica is kept as the chained hashes of the
``BLOCK``-token blocks of the prompts it was sent — a radix tree over blocks in which every node is named by the hash
of its path (the block-hash scheme of vLLM's prefix caching) — bounded by an LRU over blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from radixgen.runtime.io_struct import SchedulerStats
from radixgen.runtime.ipc import ENCODER, push_socket

BLOCK = 16  # tokens per block of the approximate prefix trees
LOAD_BALANCE_METHODS = ("cache_aware", "round_robin", "shortest_queue")


@dataclass
class PrefixAffinity:
    """What one replica has been sent, as an LRU set of block-path hashes (``capacity`` blocks at most)."""

    capacity: int
    blocks: OrderedDict[int, None] = field(default_factory=OrderedDict)

    @staticmethod
    def path_hashes(input_ids: list[int]) -> list[int]:
        """The hash of each full block's path from the root: ``h_k = hash((h_{k-1}, block_k))``."""
        out, h = [], 0
        for start in range(0, len(input_ids) - BLOCK + 1, BLOCK):
            h = hash((h, tuple(input_ids[start : start + BLOCK])))
            out.append(h)
        return out

    def match_blocks(self, hashes: list[int]) -> int:
        """Leading blocks of ``hashes`` this replica was sent."""
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n

    def insert(self, hashes: list[int]) -> None:
        """Record the blocks (most recently used), evicting the least recently used beyond ``capacity``."""
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


@dataclass
class CacheAwarePolicy:
    """Which replica gets a request (``load_balance_method``; see the module docstring for ``cache_aware``).

    ``round_robin`` cycles through the replicas; ``shortest_queue`` takes the least loaded one (ties: the one that
    has been sent the fewest blocks). ``select`` records the request's blocks in the chosen replica's tree whatever
    the method, so the trees stay a fair picture of each replica's cache.
    """

    size: int
    method: str = "cache_aware"
    cache_threshold: float = 0.5
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.5
    capacity_blocks: int = 1 << 16
    trees: list[PrefixAffinity] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        if self.method not in LOAD_BALANCE_METHODS:
            raise ValueError(f"load_balance_method: must be one of {', '.join(LOAD_BALANCE_METHODS)}")
        self.trees = [PrefixAffinity(self.capacity_blocks) for _ in range(self.size)]

    def select(self, input_ids: list[int], load: list[int]) -> int:
        """The replica for a prompt given each replica's requests in flight (``load``)."""
        hashes = PrefixAffinity.path_hashes(input_ids)
        least = min(range(self.size), key=lambda r: (load[r], len(self.trees[r].blocks), r))
        if self.method == "round_robin":
            rank, self._next = self._next, (self._next + 1) % self.size
        elif self.method == "shortest_queue":
            rank = least
        elif max(load) - min(load) > self.balance_abs_threshold and max(load) > self.balance_rel_threshold * min(
            load
        ):
            rank = least  # imbalanced: load first
        else:
            matched = [t.match_blocks(hashes) for t in self.trees]
            best = max(range(self.size), key=lambda r: (matched[r], -load[r], -r))
            share = matched[best] * BLOCK / max(len(input_ids), 1)
            rank = best if matched[best] and share >= self.cache_threshold else least
        self.trees[rank].insert(hashes)
        return rank


class DataParallelDispatcher:
    """The tokenizer manager's link to the scheduler replicas: one PUSH socket each, the routing policy and the
    per-replica load (requests in flight).

    Args:
        ctx: the ZeroMQ context; addresses: each replica's input socket (``IpcEndpoints.scheduler_inputs``).
        method: ``load_balance_method`` (``CacheAwarePolicy``).
    """

    def __init__(self, ctx: zmq.Context[Any], addresses: list[str], method: str = "cache_aware") -> None:
        self.socks = [push_socket(ctx, a) for a in addresses]
        self.size = len(addresses)
        self.policy = CacheAwarePolicy(self.size, method)
        self.load = [0] * self.size
        self.sent = [0] * self.size  # requests routed to each replica so far
        self._rank_of: dict[str, int] = {}

    def send_request(self, rid: str, input_ids: list[int], msg: msgspec.Struct) -> int:
        """Route a new request and send it; returns the replica."""
        rank = 0 if self.size == 1 else self.policy.select(input_ids, self.load)
        self._rank_of[rid] = rank
        self.load[rank] += 1
        self.sent[rank] += 1
        self.send(msg, rank)
        return rank

    def finished(self, rid: str) -> None:
        """A request ended (finished, failed or aborted): its replica's load drops."""
        rank = self._rank_of.pop(rid, None)
        if rank is not None:
            self.load[rank] -= 1

    def send(self, msg: msgspec.Struct, rank: int) -> None:
        sock = self.socks[rank]
        if not sock.closed:  # shutting down: the schedulers are being stopped anyway
            sock.send(ENCODER.encode(msg), copy=False)

    def broadcast(self, msg: msgspec.Struct) -> None:
        """Send to every replica (aborts, control requests)."""
        for rank in range(self.size):
            self.send(msg, rank)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)


def combine_stats(stats: list[SchedulerStats]) -> SchedulerStats:
    """The server-wide view of the replicas' stats: counts and token totals summed (``dp_rank`` 0)."""
    if len(stats) == 1:
        return stats[0]
    fields: dict[str, Any] = {}
    for name in SchedulerStats.__struct_fields__:
        values = [getattr(s, name) for s in stats]
        if name == "dp_rank":
            fields[name] = 0
        elif isinstance(values[0], list):  # histograms: element-wise sums
            width = max(len(v) for v in values)
            fields[name] = [sum(v[i] for v in values if i < len(v)) for i in range(width)]
        else:
            fields[name] = sum(values)
    return SchedulerStats(**fields)
