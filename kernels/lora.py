"""Segmented LoRA matmuls (SGMV) for multi-LoRA serving: every row of a batch uses its own adapter's matrices.

The rows (new tokens) of a batch form ``G`` contiguous segments, one per request: segment ``g`` is rows
``seg_indptr[g] .. seg_indptr[g+1]-1`` and uses the adapter in slot ``weight_indices[g]`` of the stacked slot
buffers (-1: the base model, no delta). A LoRA layer is two such grouped matmuls:

* shrink  ``sgmv_shrink``:     ``a[t] = x[t] @ A[s_t]``          (``[T, K] → [T, r]``),
* expand  ``sgmv_expand_add``: ``out[t] += a[t] @ B[s_t]``       (``[T, r] → [T, M]``, in place).

This is the "segmented gather matrix-vector" (SGMV) formulation of Punica (Chen et al. 2023) and S-LoRA
(Sheng et al. 2023); SGLang's ``sgemm_lora_a`` / ``sgemm_lora_b`` Triton kernels follow the same design. Both
halves are one kernel, ``_sgmv_kernel``, specialised by the constexpr ``ACCUMULATE``: a program takes one segment,
one block of output columns and (through a strided loop) every ``num_programs(1)``-th block of the segment's rows;
it reads the segment's slot once and returns at once for -1, then accumulates ``BLOCK_M x BLOCK_N`` tiles in
float32 over ``K`` with ``tl.dot``. No sort or gather of rows is needed (rows stay in batch order).

The CPU path and the reference the runtime uses is ``radixgen.runtime.lora.ops`` (``torch._grouped_mm`` over
slot-sorted rows); the plain per-segment loops ``sgmv_shrink_ref`` / ``sgmv_expand_add_ref`` of
``radixgen.kernels.reference`` are the ground truth of tests/test_lora_kernels.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixgen.kernels._attention import dot_dtype
from radixgen.kernels._common import FLOAT_DTYPES, check_devices, check_tensor, next_power_of_2

#: CUDA's limit on grid dims 1 and 2; more row blocks than this are covered by the programs' strided row loop
_MAX_GRID_YZ = 65535


@triton.jit
def _sgmv_kernel(
    X, W, Out, Seg_indptr, Weight_indices, K, N,
    stride_xt, stride_ws, stride_wk, stride_ot,
    ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Program ``(g, p, c)``: rows of segment ``g`` in row blocks ``p, p + P, p + 2P, ...`` (``P =
    num_programs(1)``), output columns ``c * BLOCK_N ..``; ``Out[t] (+)= X[t] @ W[slot]`` for those rows."""
    seg = tl.program_id(0)
    slot = tl.load(Weight_indices + seg)
    if slot < 0:
        return
    start = tl.load(Seg_indptr + seg)
    end = tl.load(Seg_indptr + seg + 1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    w_base = W + slot.to(tl.int64) * stride_ws
    for m0 in range(start + tl.program_id(1) * BLOCK_M, end, tl.num_programs(1) * BLOCK_M):
        rows = m0 + offs_m
        mask_m = rows < end
        rows64 = rows.to(tl.int64)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            mask_k = ks < K
            x_ptrs = X + rows64[:, None] * stride_xt + ks[None, :]
            x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
            w_ptrs = w_base + ks[:, None].to(tl.int64) * stride_wk + offs_n[None, :]
            w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
            acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        o_ptrs = Out + rows64[:, None] * stride_ot + offs_n[None, :]
        o_mask = mask_m[:, None] & mask_n[None, :]
        if ACCUMULATE:
            acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=o_mask)


def sgmv_launch_config(max_seg_len: int, k: int, n: int, itemsize: int) -> tuple[int, int, int, int, int]:
    """Launch configuration of ``_sgmv_kernel`` for segments of at most ``max_seg_len`` rows, reduction dim ``k``,
    output width ``n`` and operand element size ``itemsize`` (bytes):
    ``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)``.

    Rows: the smallest power of two >= the longest segment, 16..64 (``tl.dot`` needs 16; decode segments are one
    row). Columns and reduction: the next power of two, 16..64 columns and 16..128 (16-bit) / 16..64 (float32)
    reduction, so that two pipeline stages stay well inside the shared memory of sm_80/86/90.
    """
    block_m = min(max(next_power_of_2(max_seg_len), 16), 64)
    block_n = min(max(next_power_of_2(n), 16), 64)
    block_k = min(max(next_power_of_2(k), 16), 128 if itemsize <= 2 else 64)
    return block_m, block_n, block_k, 4, 2


def _check_segments(
    fn: str, tensors: dict[str, torch.Tensor], seg_indptr: object, weight_indices: object, num_rows: int,
    num_slots: int, max_seg_len: object,
) -> int:  # fmt: skip
    """Check the segment tensors (on the device of the already checked ``tensors``); return the longest segment's
    length (or the caller's ``max_seg_len``).

    Without ``max_seg_len`` the values are read to the host (one device sync) and checked: ``seg_indptr`` starts
    at 0, never decreases and ends at ``num_rows``; every slot is in ``[-1, num_slots)``. With it they are not
    read (no sync) and must be valid (else the result is undefined).
    """
    indptr = check_tensor(fn, "seg_indptr", seg_indptr, ndim=1, dtypes=(torch.int32,), contiguous=True)
    indices = check_tensor(fn, "weight_indices", weight_indices, ndim=1, dtypes=(torch.int32,), contiguous=True)
    if indptr.shape[0] < 1:
        raise ValueError(f"{fn}: seg_indptr must have num_segments + 1 >= 1 entries, got shape (0,)")
    if indices.shape[0] != indptr.shape[0] - 1:
        raise ValueError(
            f"{fn}: weight_indices must have shape ({indptr.shape[0] - 1},) (one slot per segment of seg_indptr), "
            f"got {tuple(indices.shape)}"
        )
    check_devices(fn, tensors | {"seg_indptr": indptr, "weight_indices": indices})
    if max_seg_len is not None:
        if not isinstance(max_seg_len, int) or isinstance(max_seg_len, bool) or max_seg_len < 0:
            raise ValueError(f"{fn}: max_seg_len must be an int >= 0 or None, got {max_seg_len!r}")
        return max_seg_len
    values = torch.cat([indptr, indices]).tolist()  # one transfer for both
    offsets, slots = values[: indptr.shape[0]], values[indptr.shape[0] :]
    lengths = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    if offsets[0] != 0 or offsets[-1] != num_rows or any(n < 0 for n in lengths):
        raise ValueError(
            f"{fn}: seg_indptr must start at 0, never decrease and end at the row count {num_rows}, got {offsets}"
        )
    if any(not -1 <= s < num_slots for s in slots):
        raise ValueError(f"{fn}: weight_indices must be in [-1, {num_slots}) (-1 = no adapter), got {slots}")
    return max(lengths, default=0)


def _launch(
    x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, seg_indptr: torch.Tensor,
    weight_indices: torch.Tensor, max_seg_len: int, accumulate: bool,
) -> None:  # fmt: skip
    """Run ``_sgmv_kernel`` over checked arguments: ``out[t] (+)= x[t] @ weights[slot of t's segment]``."""
    num_rows, k = x.shape
    n = weights.shape[2]
    num_segments = weight_indices.shape[0]
    if num_rows == 0 or n == 0 or num_segments == 0:
        return
    block_m, block_n, block_k, warps, stages = sgmv_launch_config(max_seg_len, k, n, x.element_size())
    dot = dot_dtype(x.dtype)
    row_programs = min(max(triton.cdiv(max_seg_len, block_m), 1), _MAX_GRID_YZ)  # any count is correct
    grid = (num_segments, row_programs, triton.cdiv(n, block_n))
    _sgmv_kernel[grid](
        x, weights, out, seg_indptr, weight_indices, k, n,
        x.stride(0), weights.stride(0), weights.stride(1), out.stride(0),
        ACCUMULATE=accumulate, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_DTYPE=dot,
        DOT_PRECISION="ieee" if dot == tl.float32 else "tf32", num_warps=warps, num_stages=stages,
    )  # fmt: skip


def sgmv_shrink(
    x: torch.Tensor,
    weights: torch.Tensor,
    seg_indptr: torch.Tensor,
    weight_indices: torch.Tensor,
    *,
    max_seg_len: int | None = None,
) -> torch.Tensor:
    """LoRA shrink: ``y[t] = x[t] @ weights[s_t]`` for the rows of each segment with a slot (SGMV).

    Args:
        x: ``[T, K]`` float32 / bfloat16 / float16 layer input, stride 1 in the last dim (row stride free).
        weights: ``[S, K, N]`` stacked per-slot A matrices (``x[t] @ weights[s]`` orientation), x's dtype, stride
            1 in the last dim.
        seg_indptr: int32 ``[G + 1]`` contiguous row offsets of the ``G`` segments (0 first, ``T`` last,
            non-decreasing; a segment may be empty).
        weight_indices: int32 ``[G]`` contiguous slot of each segment's adapter; -1 = no adapter.
        max_seg_len: optional bound on a segment's length, which sizes the grid without reading the segment
            tensors (no device sync; their values are then not checked). Any value >= 0 gives the same result:
            one below the longest segment is only less parallel (programs loop over the extra row blocks), one
            above it launches programs that find no rows. Default: computed from
            ``seg_indptr`` (one sync) and all values checked.

    Limits: all tensors on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``). float32 accumulation; float32
    operands multiply in IEEE float32 (no TF32).

    Returns:
        a new ``[T, N]`` tensor in x's dtype; rows of segments with slot -1 (and rows outside every segment) are 0.

    Raises:
        ValueError: a shape, dtype, stride, device or segment value is invalid (the message names the argument).
    """
    fn = "sgmv_shrink"
    check_tensor(fn, "x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor(fn, "weights", weights, ndim=3, dtypes=FLOAT_DTYPES)
    if weights.dtype != x.dtype:
        raise ValueError(f"{fn}: weights dtype must be x's dtype {x.dtype}, got {weights.dtype}")
    if weights.shape[1] != x.shape[1]:
        raise ValueError(
            f"{fn}: weights must be [S, K, N] with K = x's {x.shape[1]} columns, got shape {tuple(weights.shape)}"
        )
    tensors = {"x": x, "weights": weights}
    seg_len = _check_segments(fn, tensors, seg_indptr, weight_indices, x.shape[0], weights.shape[0], max_seg_len)
    y = torch.zeros((x.shape[0], weights.shape[2]), dtype=x.dtype, device=x.device)
    _launch(x, weights, y, seg_indptr, weight_indices, seg_len, accumulate=False)
    return y


def sgmv_expand_add(
    out: torch.Tensor,
    a: torch.Tensor,
    weights: torch.Tensor,
    seg_indptr: torch.Tensor,
    weight_indices: torch.Tensor,
    *,
    max_seg_len: int | None = None,
) -> torch.Tensor:
    """LoRA expand, in place: ``out[t] += a[t] @ weights[s_t]`` for the rows of each segment with a slot (SGMV).

    The sum ``out[t] + a[t] @ weights[s_t]`` is formed in float32 and rounded once to out's dtype.

    Args:
        out: ``[T, M]`` float32 / bfloat16 / float16, stride 1 in the last dim, any row stride (e.g. a column
            slice of a fused projection's output). Rows of segments with slot -1 are not touched.
        a: ``[T, R]`` shrink result in batch row order, out's dtype, stride 1 in the last dim, any row stride (e.g.
            a column slice of a stacked shrink output). Must not overlap ``out``.
        weights: ``[S, R, M]`` stacked per-slot B matrices (LoRA scaling folded in), out's dtype, stride 1 in the
            last dim.
        seg_indptr, weight_indices, max_seg_len: as in :func:`sgmv_shrink`.

    Returns:
        ``out`` (modified in place).

    Raises:
        ValueError: a shape, dtype, stride, device or segment value is invalid (the message names the argument).
    """
    fn = "sgmv_expand_add"
    check_tensor(fn, "out", out, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor(fn, "a", a, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor(fn, "weights", weights, ndim=3, dtypes=FLOAT_DTYPES)
    for name, t in (("a", a), ("weights", weights)):
        if t.dtype != out.dtype:
            raise ValueError(f"{fn}: {name} dtype must be out's dtype {out.dtype}, got {t.dtype}")
    if a.shape[0] != out.shape[0]:
        raise ValueError(f"{fn}: a must have out's {out.shape[0]} rows, got shape {tuple(a.shape)}")
    if tuple(weights.shape[1:]) != (a.shape[1], out.shape[1]):
        raise ValueError(
            f"{fn}: weights must be [S, R, M] with R = a's {a.shape[1]} columns and M = out's {out.shape[1]}, "
            f"got shape {tuple(weights.shape)}"
        )
    tensors = {"out": out, "a": a, "weights": weights}
    seg_len = _check_segments(fn, tensors, seg_indptr, weight_indices, out.shape[0], weights.shape[0], max_seg_len)
    _launch(a, weights, out, seg_indptr, weight_indices, seg_len, accumulate=True)
    return out
