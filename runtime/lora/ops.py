"""The segmented (grouped) LoRA matmuls of one forward batch: every row adds the low-rank delta of its own adapter.

A batch mixes requests of several adapters and of the base model. Each linear layer computes
``out[t] += (x[t] @ A[s_t]) @ B[s_t]`` for every token ``t`` whose request uses the adapter in slot ``s_t``
(no-op for base-model rows), where ``A`` / ``B`` are the stacked, preallocated slot buffers of ``LoRAManager``.
This is the SGMV ("segmented gather matrix-vector") formulation of Punica (Chen et al. 2023, "Punica: Multi-Tenant
LoRA Serving") and S-LoRA (Sheng et al. 2023): one shrink ``[T, K] → [T, r]`` and one expand ``[T, r] → [T, M]``
per layer, grouped by adapter, with no per-request loop.

CPU / torch path (``lora_site_torch``), one of three layouts chosen per batch by ``LoRASegments.build``:
- one adapter in the batch: two plain matmuls with that slot's weights (views, no copy) over its rows;
- several adapters and few rows per adapter (decode): the rows are gathered into a ``[G, M, K]`` block padded to the
  largest adapter's row count ``M`` and each matmul is one ``torch.bmm`` over the ``G`` adapters' weights;
- otherwise (prefill): the rows are gathered in slot order (a stable sort computed once per batch) and each matmul
  is one ``torch._grouped_mm`` over the slot groups.
Every fused part's delta goes into one full-width buffer that is added to the output once (in place when the adapter
rows are the batch's first rows in order, else with ``index_add_``). CUDA path: the Triton SGMV kernels of
``radixgen.kernels.lora`` over the same ``LoRASegments`` (per-request segments, no sort), checked against this
module under ``TRITON_INTERPRET``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LoRASegments", "lora_expand_add_torch", "lora_shrink_torch", "lora_site_torch"]


@dataclass(frozen=True)
class LoRASegments:
    """How the rows (new tokens) of one forward batch map to adapter slots.

    Attributes:
        seg_indptr: int32 ``[num_segments + 1]`` row offsets of each request's tokens, in batch order (Triton).
        weight_indices: int32 ``[num_segments]`` slot of each request's adapter; -1 = base model (no delta).
        sort_perm: int64 ``[num_lora_rows]`` the rows that use an adapter, stably sorted by slot; None when those
            rows are already ``0 .. num_lora_rows - 1`` in slot order (then no gather/scatter is needed).
        group_offs: int32 ``[num_slots]`` cumulative row counts per slot over the sorted rows (the ``offs`` of
            ``torch._grouped_mm``; a slot without rows repeats the previous offset).
        num_lora_rows: rows that use an adapter.
        num_rows: all rows of the batch (tokens).
        max_seg_len: the longest segment (sizes the Triton grid without reading ``seg_indptr`` back to the host).
        single_slot: the slot when exactly one adapter has rows, else None.
        used_slots: int64 ``[G]`` the slots with rows, ascending (the ``bmm`` layout's weight order);
            used_range: ``(first, last + 1)`` when they are consecutive (the weights are then a view, not a copy).
        padded_rows: int64 ``[G, M]`` for the ``bmm`` layout: the batch rows of each used slot, padded with its first
            row; None when the padding would cost more than the rows themselves (then ``_grouped_mm``).
        padded_valid: int64 ``[num_lora_rows]`` positions in the flattened ``padded_rows`` that are real rows, in
            the order of ``valid_rows``; valid_rows: int64 ``[num_lora_rows]`` their batch rows.
    """

    seg_indptr: torch.Tensor
    weight_indices: torch.Tensor
    sort_perm: torch.Tensor | None
    group_offs: torch.Tensor
    num_lora_rows: int
    num_rows: int
    max_seg_len: int
    single_slot: int | None = None
    used_slots: torch.Tensor | None = None
    used_range: tuple[int, int] | None = None
    padded_rows: torch.Tensor | None = None
    padded_valid: torch.Tensor | None = None
    valid_rows: torch.Tensor | None = None

    @classmethod
    def build(
        cls, slots: list[int], extend_lens: list[int], num_slots: int, device: torch.device | str = "cpu"
    ) -> LoRASegments:
        """Segments of a batch whose request ``i`` has ``extend_lens[i]`` new tokens and uses slot ``slots[i]``
        (-1: base model).

        Raises:
            ValueError: the lists differ in length, a length is negative, or a slot is outside ``[-1, num_slots)``.
        """
        if len(slots) != len(extend_lens):
            raise ValueError(f"LoRASegments.build: {len(slots)} slots for {len(extend_lens)} requests")
        if any(n < 0 for n in extend_lens):
            raise ValueError("LoRASegments.build: extend_lens must be >= 0")
        if any(not -1 <= s < num_slots for s in slots):
            raise ValueError(f"LoRASegments.build: slots must be in [-1, {num_slots}), got {slots}")
        indptr = [0]
        for n in extend_lens:
            indptr.append(indptr[-1] + n)
        counts = [0] * num_slots
        for s, n in zip(slots, extend_lens, strict=True):
            if s >= 0:
                counts[s] += n
        offs, total = [], 0
        for c in counts:
            total += c
            offs.append(total)
        # rows sorted by slot (stable); the identity when the adapter rows already come first, in slot order
        order = sorted((s, i) for i, s in enumerate(slots) if s >= 0 and extend_lens[i] > 0)
        perm_rows: list[int] = []
        for _, i in order:
            perm_rows.extend(range(indptr[i], indptr[i + 1]))
        sort_perm = (
            None
            if perm_rows == list(range(total))
            else torch.tensor(perm_rows, dtype=torch.int64, device=device)
        )
        rows_of: dict[int, list[int]] = {}
        for s, i in order:
            rows_of.setdefault(s, []).extend(range(indptr[i], indptr[i + 1]))
        used = sorted(rows_of)
        width = max((len(r) for r in rows_of.values()), default=0)
        padded = valid = valid_rows = None
        if len(used) > 1 and len(used) * width <= 2 * total:  # the bmm layout wastes at most as much as it computes
            grid = [rows_of[s] + [rows_of[s][0]] * (width - len(rows_of[s])) for s in used]  # [G, M]
            padded = torch.tensor(grid, dtype=torch.int64, device=device)
            valid = torch.tensor(
                [g * width + j for g, s in enumerate(used) for j in range(len(rows_of[s]))], dtype=torch.int64,
                device=device,
            )
            valid_rows = torch.tensor([r for s in used for r in rows_of[s]], dtype=torch.int64, device=device)
        return cls(
            seg_indptr=torch.tensor(indptr, dtype=torch.int32, device=device),
            weight_indices=torch.tensor(slots, dtype=torch.int32, device=device),
            sort_perm=sort_perm,
            group_offs=torch.tensor(offs, dtype=torch.int32, device=device),
            num_lora_rows=total,
            num_rows=indptr[-1],
            max_seg_len=max(extend_lens, default=0),
            single_slot=used[0] if len(used) == 1 else None,
            used_slots=torch.tensor(used, dtype=torch.int64, device=device),
            used_range=(used[0], used[-1] + 1) if used and used[-1] - used[0] + 1 == len(used) else None,
            padded_rows=padded,
            padded_valid=valid,
            valid_rows=valid_rows,
        )


def _fit(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``rows [n, K]`` in ``weights``' dtype, zero-padded to its ``K' >= K`` rows and with dense rows (what
    ``torch._grouped_mm`` needs); a copy only when needed."""
    rows = rows.to(weights.dtype)
    k = weights.shape[-2]
    if rows.shape[1] == k and (rows.shape[0] <= 1 or rows.stride(0) == k):
        return rows
    return F.pad(rows, (0, k - rows.shape[1]))  # [n, K'] (a fresh, dense copy)


def lora_shrink_torch(x: torch.Tensor, weights: torch.Tensor, seg: LoRASegments) -> torch.Tensor:
    """The shrink half: ``x[t] @ weights[s_t]`` for the adapter rows, in sorted (slot) order, in ``weights``' dtype.

    Args:
        x: ``[T, K]`` layer input (float32 / bfloat16 / float16), ``T = seg.num_rows``.
        weights: ``[num_slots, K', N]`` stacked A matrices, ``K' >= K`` (rows past ``K`` are zero padding).
        seg: the batch's segments.
    Returns:
        ``[seg.num_lora_rows, N]``: row ``j`` belongs to batch row ``seg.sort_perm[j]`` (or ``j``).
    """
    rows = x[: seg.num_lora_rows] if seg.sort_perm is None else x.index_select(0, seg.sort_perm)  # [T_l, K]
    return torch._grouped_mm(_fit(rows, weights), weights, offs=seg.group_offs)  # [T_l, N]


def lora_expand_add_torch(out: torch.Tensor, a: torch.Tensor, weights: torch.Tensor, seg: LoRASegments) -> None:
    """The expand half, in place: ``out[t] += a_t @ weights[s_t]`` for the adapter rows.

    Args:
        out: ``[T, M]`` layer output (may be a column slice of a fused projection's output).
        a: ``[seg.num_lora_rows, R]`` shrink result in sorted order (may be a column slice).
        weights: ``[num_slots, R, M']`` stacked B matrices (scaling folded in), ``M' >= M`` (zero padding).
        seg: the batch's segments.
    """
    delta = torch._grouped_mm(a.contiguous(), weights, offs=seg.group_offs)  # [T_l, M']
    delta = delta[:, : out.shape[1]].to(out.dtype)  # [T_l, M]
    if seg.sort_perm is None:
        out[: seg.num_lora_rows] += delta
    else:
        out.index_add_(0, seg.sort_perm, delta)


def _slots(weights: torch.Tensor, seg: LoRASegments) -> torch.Tensor:
    """The used slots' weights ``[G, ...]``: a view when they are consecutive, else a gathered copy."""
    if seg.used_range is not None:
        return weights[seg.used_range[0] : seg.used_range[1]]
    assert seg.used_slots is not None
    return weights.index_select(0, seg.used_slots)


def lora_site_torch(
    x: torch.Tensor,
    out: torch.Tensor,
    a_buf: torch.Tensor,
    b_bufs: list[torch.Tensor],
    cols: list[tuple[int, int]],
    rank: int,
    parts: list[int],
    seg: LoRASegments,
) -> None:
    """``out += delta`` in place for one fused projection (see the module docstring for the three layouts).

    Args:
        x: ``[T, K]`` the projection's input; out: ``[T, M_total]`` its output (model dtype).
        a_buf: ``[slots, K', n * R]`` stacked A (float32, K' >= K); b_bufs: per part ``[slots, R, M_i']`` (M_i' >= M_i).
        cols: per part, its ``(start, end)`` columns of ``out``; rank: ``R``; parts: the parts some adapter adapts.
        seg: the batch's segments.
    """
    if seg.num_lora_rows == 0:
        return
    lo, hi = cols[parts[0]][0], cols[parts[-1]][1]
    if seg.single_slot is not None or seg.padded_rows is not None:
        if seg.single_slot is not None:
            s = seg.single_slot
            rows = x[: seg.num_lora_rows] if seg.sort_perm is None else x.index_select(0, seg.sort_perm)  # [n, K]
            a = _fit(rows, a_buf) @ a_buf[s]  # [n, n_parts * R]
            if seg.sort_perm is None and out.dtype == a.dtype:  # rows in order: accumulate straight into out
                for i in parts:
                    c0, c1 = cols[i]
                    out[: seg.num_lora_rows, c0:c1].addmm_(a[:, i * rank : (i + 1) * rank], b_bufs[i][s, :, : c1 - c0])
                return
            deltas = [a[:, i * rank : (i + 1) * rank] @ b_bufs[i][s] for i in parts]  # each [n, M_i']
            target_rows = seg.sort_perm
        else:
            assert seg.padded_rows is not None and seg.used_slots is not None
            g, m = seg.padded_rows.shape
            rows = _fit(x.index_select(0, seg.padded_rows.flatten()), a_buf).view(g, m, -1)  # [G, M, K']
            a = torch.bmm(rows, _slots(a_buf, seg))  # [G, M, n_parts * R]
            deltas = [
                torch.bmm(a[:, :, i * rank : (i + 1) * rank], _slots(b_bufs[i], seg))
                .view(g * m, -1)
                .index_select(0, seg.padded_valid)  # type: ignore[arg-type]
                for i in parts
            ]  # each [n, M_i'], rows in valid_rows order
            target_rows = seg.valid_rows
        full = torch.zeros(seg.num_lora_rows, hi - lo, dtype=out.dtype, device=out.device)  # [n, parts' columns]
        for i, d in zip(parts, deltas, strict=True):
            c0, c1 = cols[i]
            full[:, c0 - lo : c1 - lo] = d[:, : c1 - c0]
        if target_rows is None:
            out[: seg.num_lora_rows, lo:hi] += full
        else:
            out[:, lo:hi].index_add_(0, target_rows, full)
        return
    a = lora_shrink_torch(x, a_buf, seg)  # [T_lora, n*R] float32, rows in slot order
    for i in parts:
        c0, c1 = cols[i]
        lora_expand_add_torch(out[:, c0:c1], a[:, i * rank : (i + 1) * rank], b_bufs[i], seg)
