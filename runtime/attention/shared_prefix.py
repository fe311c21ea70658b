"""Shared-prefix ("cascade") decode attention: attend a group's common prefix once, then each request's suffix.

With the radix cache on, requests that share a prompt prefix also share its KV slots: their ``req_to_token``
rows hold the same slot ids for the first ``P`` positions. The plain decode path gathers every request's whole
K/V each step and layer (batch 64 x 1,200 tokens x 16 KiB = 1.2 GB per step), although a group of 16 such
requests reads the same ``P`` slots 16 times. Cascade attention (FlashInfer's cascade attention; Hydragen,
Juravsky et al. 2024; SGLang's radix attention) splits each request's softmax over two key ranges:

1. prefix: the ``g`` requests' queries ``[g, Hkv, G, D]`` (GQA: ``G = Hq / Hkv`` query heads per KV head) are
   folded into one query block ``[1, Hkv, g*G, D]`` and attend the prefix K/V ``[1, Hkv, P, D]``, gathered once
   per group — one fused SDPA call, no mask (every prefix position is visible to every query);
2. suffix: each request attends its own positions ``P..seq_len-1`` (padded to the longest suffix, masked);
3. merge with the log-sum-exp of each part (both SDPA calls return it):
   ``m = max(lse1, lse2); out = (e^(lse1-m) o1 + e^(lse2-m) o2) / (e^(lse1-m) + e^(lse2-m))``.

This equals softmax attention over the whole sequence up to float rounding. ``find_prefix_groups`` detects the
groups once per batch composition (vectorized over the batch); ``SharedPrefixStep`` holds one step's gather
indices for all layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixgen.radix.memory_pool import TokenToKVPool

# shortest shared prefix (tokens) worth a group, and the fewest requests in one
MIN_PREFIX = 64
MIN_GROUP = 2

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def find_prefix_groups(
    rows: torch.Tensor, seq_lens: list[int], min_prefix: int = MIN_PREFIX, min_group: int = MIN_GROUP
) -> list[tuple[list[int], int]]:
    """Groups of batch requests whose KV slots share a common prefix.

    A slot id shared by two rows means a shared radix-tree node, hence the same tokens up to that position, so
    the rows form a tree. Rows (each cut before its last position: the token being decoded always stays in the
    suffix) are sorted lexicographically; the longest common prefix (LCP) of neighbours is ``eq.cumprod(1).sum(1)``
    over the sorted rows, vectorized. A run of neighbours shares the smallest LCP between them; the runs are cut
    recursively at their smallest LCP (a Cartesian tree), keeping whichever side saves more prefix reads
    (``(g - 1) * P`` tokens for a group of ``g`` with prefix ``P``), so requests sharing only a short header
    (e.g. BOS + a few tokens) split into the groups that share long prefixes.

    Args:
        rows: int32/int64 ``[bs, L]`` the batch's ``req_to_token`` rows (batch order), ``L >= max(seq_lens)``.
        seq_lens: per request, the sequence length including the token being decoded.
    Returns:
        ``(batch indices sorted, P)`` per group, ``P >= min_prefix`` and ``len(indices) >= min_group``.
    """
    cand = [i for i, n in enumerate(seq_lens) if n > min_prefix]
    if len(cand) < min_group:
        return []
    width = min(max(seq_lens[i] for i in cand) - 1, rows.shape[1])
    table = rows[torch.tensor(cand, dtype=torch.int64, device=rows.device), :width]  # [m, width]
    lists = table.tolist()
    order = sorted(range(len(cand)), key=lambda j: lists[j][: seq_lens[cand[j]] - 1])  # lexicographic
    order_t = torch.tensor(order, dtype=torch.int64, device=rows.device)
    srt = table[order_t]  # [m, width] sorted rows
    lens = torch.tensor([seq_lens[cand[j]] for j in order], dtype=torch.int64, device=rows.device)  # [m]
    limit = torch.minimum(lens[1:], lens[:-1]) - 1  # [m-1] positions eligible between neighbours
    pos = torch.arange(width, device=rows.device)
    eq = (srt[1:] == srt[:-1]) & (pos[None, :] < limit[:, None])  # [m-1, width]
    lcp = eq.to(torch.int32).cumprod(1).sum(1).tolist()  # [m-1] LCP of sorted neighbours i, i+1
    members = [cand[j] for j in order]

    def split(lo: int, hi: int) -> tuple[int, list[tuple[list[int], int]]]:
        """Best grouping of sorted rows lo..hi-1: (prefix tokens saved, groups)."""
        if hi - lo < min_group:
            return 0, []
        seg = lcp[lo : hi - 1]
        p = min(seg)
        cut = lo + seg.index(p) + 1
        left, right = split(lo, cut), split(cut, hi)
        whole = (hi - lo - 1) * p
        if p >= min_prefix and whole >= left[0] + right[0]:
            return whole, [(sorted(members[lo:hi]), p)]
        return left[0] + right[0], left[1] + right[1]

    return split(0, len(members))[1]


@dataclass
class SharedPrefixStep:
    """One decode step's shared prefixes, for all layers.

    Attributes:
        rows: int64 ``[n]`` batch indices of the grouped requests, group after group.
        groups: per group, ``(first, end, prefix)``: its slice of ``rows`` and its prefix slots, int64 ``[P]``
            or, when they are consecutive, a ``slice`` of the pool (read as a view, no gather).
        starts: per request of the batch, where its own part (the suffix) begins: ``P`` of its group, else 0.
    """

    rows: torch.Tensor
    groups: list[tuple[int, int, torch.Tensor | slice]]
    starts: list[int]


def plan_step(groups: list[tuple[list[int], int]], rows: torch.Tensor, bs: int) -> SharedPrefixStep:
    """The step layout of ``groups`` (from ``find_prefix_groups``); ``rows``: ``[bs, L]`` the batch's
    ``req_to_token`` rows, ``L >= max P``."""
    starts = [0] * bs
    spans: list[tuple[int, int, torch.Tensor | slice]] = []
    members: list[int] = []
    for idx, p in groups:
        index = rows[idx[0], :p].to(torch.int64)  # [P]
        first = int(index[0])
        b = len(members)
        if int(index[-1]) - first == p - 1 and bool((index.diff() == 1).all()):
            spans.append((b, b + len(idx), slice(first, first + p)))  # consecutive slots: a view, no gather
        else:
            spans.append((b, b + len(idx), index))
        members += idx
        for i in idx:
            starts[i] = p
    return SharedPrefixStep(torch.tensor(members, dtype=torch.int64, device=rows.device), spans, starts)


def prefix_attention(
    qg: torch.Tensor, pool: TokenToKVPool, layer_id: int, step: SharedPrefixStep, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the grouped requests over their groups' shared prefixes (one fused call per group).

    Args:
        qg: ``[bs, Hkv, G, D]`` the whole batch's queries (batch order), any float dtype.
        pool, layer_id: the KV pool and layer the prefixes are read from (``pool.get_kv``: dequantized to qg's
            dtype; a view of the pool for consecutive slots of unquantized storage in qg's dtype).
    Returns:
        ``(out [n, Hkv, G, D] in qg's dtype, lse [n, Hkv, G] float32)`` for ``step.rows`` in order.
    """
    _, hkv, group, d = qg.shape
    q = qg.index_select(0, step.rows)  # [n, Hkv, G, D]
    n = q.shape[0]
    o1 = torch.empty(n, hkv, group, d, dtype=qg.dtype, device=qg.device)
    lse1 = torch.empty(n, hkv, group, dtype=torch.float32, device=qg.device)
    for b0, b1, index in step.groups:
        g = b1 - b0
        keys, values = pool.get_kv(layer_id, index, qg.dtype)  # [P, Hkv, D] each
        keys = keys.transpose(0, 1)[None]  # [1, Hkv, P, D]
        values = values.transpose(0, 1)[None]  # [1, Hkv, P, D]
        qb = q[b0:b1].transpose(0, 1).reshape(1, hkv, g * group, d)  # [1, Hkv, g*G, D]
        out, lse = flash_with_lse(qb, keys, values, None, scale)  # [1, Hkv, g*G, D], [1, Hkv, g*G]
        o1[b0:b1] = out.view(hkv, g, group, d).transpose(0, 1)  # [g, Hkv, G, D]
        lse1[b0:b1] = lse.view(hkv, g, group).transpose(0, 1)  # [g, Hkv, G]
    return o1, lse1


def flash_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused CPU SDPA returning the log-sum-exp too (``aten._scaled_dot_product_flash_attention_for_cpu``).

    Args:
        q: ``[B, H, Lq, D]``; k, v: ``[B, H, Lk, D]`` (strided views are fine); valid: bool ``[B, Lk]`` or None.
    Returns:
        ``(out [B, H, Lq, D] in q's dtype, lse [B, H, Lq] float32)``.
    """
    mask = None
    if valid is not None:  # the op takes an additive mask of q's dtype, not a boolean one
        mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~valid, float("-inf"))
        mask = mask[:, None, None, :]  # [B, 1, 1, Lk]
    if q.device.type == "cpu":
        return _flash_cpu(q, k, v, attn_mask=mask, scale=scale)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B, H, Lq, Lk], other devices: plain math
    if mask is not None:
        scores = scores + mask.float()
    lse = torch.logsumexp(scores, -1)  # [B, H, Lq]
    return (torch.exp(scores - lse[..., None]) @ v.float()).to(q.dtype), lse


def merge_attention(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """Combine two softmax attention results over disjoint key sets, in float32.

    Args:
        o1, o2: ``[..., D]`` outputs; lse1, lse2: ``[...]`` float32 log-sum-exp of their scaled scores.
    Returns:
        float32 ``[..., D]`` the attention output over the union of the key sets.
    """
    m = torch.maximum(lse1, lse2)
    w1 = torch.exp(lse1 - m)[..., None]  # [..., 1]
    w2 = torch.exp(lse2 - m)[..., None]
    return (w1 * o1.float() + w2 * o2.float()) / (w1 + w2)
