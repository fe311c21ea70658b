"""Plain-torch references of the kernels in this package (the ground truth of tests/test_kernels.py).

They take the same arguments as the Triton wrappers, loop over requests in Python, and compute in float32;
they favour obviousness over speed. A quantized KV pool (``k_scale``/``v_scale`` given) is read as
``float32(stored) * scale`` and then cast to q's dtype, as the kernels do.
"""

from __future__ import annotations

import torch


def _gqa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """q ``[Lq, Hq, D]``, k/v ``[Lk, Hkv, D]``, mask bool ``[Lq, Lk]`` (True = attend) → f32 ``[Lq, Hq, D]``.

    A query row with no visible key yields zeros.
    """
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)  # [Lk, Hq, D]
    vf = v.float().repeat_interleave(group, dim=1)  # [Lk, Hq, D]
    scores = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale  # [Hq, Lq, Lk]
    scores = scores.masked_fill(~mask[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows → 0
    return torch.einsum("hqk,khd->qhd", probs, vf)  # [Lq, Hq, D]


def _pool_rows(
    buffer: torch.Tensor, scale: torch.Tensor | None, slots: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Rows ``slots`` of a KV pool buffer ``[S, Hkv, D]`` as ``dtype``: ``float32(buffer) * scale`` when scaled
    (``scale`` ``[S, Hkv]`` per slot and head, or one element per tensor), else a plain cast."""
    rows = buffer[slots]  # [n, Hkv, D]
    if scale is None:
        return rows.to(dtype)
    s = scale.reshape(()) if scale.numel() == 1 and scale.dim() <= 1 else scale[slots][..., None]
    return (rows.float() * s).to(dtype)


def extend_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    sm_scale: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference of ``extend_attention_fwd``: same arguments, returns ``[num_tokens, Hq, D]`` in q's dtype.

    Request ``i``'s queries ``q[s:s+e]`` (``s = extend_start_loc[i]``, ``e = extend_lens[i]``) attend to its
    ``p = prefix_lens[i]`` cached tokens ``k_buffer[req_to_token[req_pool_indices[i], :p]]`` and causally to
    its own new tokens ``k[s:s+e]`` (query j sees new keys 0..j). K/V are cast to q's dtype before the math.
    """
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for i in range(req_pool_indices.shape[0]):
        p, e, s = int(prefix_lens[i]), int(extend_lens[i]), int(extend_start_loc[i])
        if e == 0:
            continue
        slots = req_to_token[int(req_pool_indices[i]), :p].long()
        ki = torch.cat([_pool_rows(k_buffer, k_scale, slots, q.dtype), k[s : s + e].to(q.dtype)])  # [p+e, Hkv, D]
        vi = torch.cat([_pool_rows(v_buffer, v_scale, slots, q.dtype), v[s : s + e].to(q.dtype)])  # [p+e, Hkv, D]
        q_pos = torch.arange(p, p + e, device=q.device)
        mask = torch.arange(p + e, device=q.device)[None, :] <= q_pos[:, None]  # [e, p+e]
        out[s : s + e] = _gqa_attention(q[s : s + e], ki, vi, mask, scale)
    return out.to(q.dtype)


def decode_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference of ``decode_attention_fwd``: q ``[B, Hq, D]`` → ``[B, Hq, D]`` in q's dtype.

    Request ``i`` attends to ``k_buffer[req_to_token[req_pool_indices[i], :seq_lens[i]]]``; a request with
    ``seq_lens[i] == 0`` gets zeros. K/V are cast to q's dtype before the math.
    """
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for i in range(q.shape[0]):
        n = int(seq_lens[i])
        slots = req_to_token[int(req_pool_indices[i]), :n].long()
        ki = _pool_rows(k_buffer, k_scale, slots, q.dtype)  # [n, Hkv, D]
        vi = _pool_rows(v_buffer, v_scale, slots, q.dtype)  # [n, Hkv, D]
        mask = torch.ones((1, n), dtype=torch.bool, device=q.device)
        out[i] = _gqa_attention(q[i : i + 1], ki, vi, mask, scale)[0]
    return out.to(q.dtype)


def unpack_token_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 ``[R, W]`` packed bitmask → bool ``[R, vocab_size]`` (True = allowed).

    Bit j of word w is token 32 * w + j (xgrammar's layout).
    """
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask[:, :, None] >> shifts) & 1  # [R, W, 32]
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()  # [R, W*32] → [R, vocab_size]


def apply_token_bitmask_ref(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    indices: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Reference of ``apply_token_bitmask_inplace`` (also in place; returns ``logits``).

    ``logits[r, t] = -inf`` for ``t < vocab_size`` whose bit is 0 in ``bitmask[r]``, for every row ``r`` (or
    only the rows listed in ``indices``); columns ``>= vocab_size`` are untouched.
    """
    vocab = logits.shape[1] if vocab_size is None else vocab_size
    rows = torch.arange(logits.shape[0], device=logits.device) if indices is None else indices.long()
    allowed = unpack_token_bitmask(bitmask[rows], vocab)  # [len(rows), vocab]
    sub = logits[rows, :vocab].masked_fill(~allowed, float("-inf"))
    logits[rows, :vocab] = sub
    return logits


def sgmv_shrink_ref(
    x: torch.Tensor, weights: torch.Tensor, seg_indptr: torch.Tensor, weight_indices: torch.Tensor
) -> torch.Tensor:
    """Reference of ``sgmv_shrink``: x ``[T, K]``, weights ``[S, K, N]`` → ``[T, N]`` in x's dtype.

    Segment ``g`` (rows ``seg_indptr[g] .. seg_indptr[g+1]-1``) gets ``x[rows] @ weights[weight_indices[g]]`` in
    float32; segments with slot -1 (and rows outside every segment) stay 0.
    """
    out = torch.zeros((x.shape[0], weights.shape[2]), dtype=torch.float32, device=x.device)
    for g in range(weight_indices.shape[0]):
        slot, start, end = int(weight_indices[g]), int(seg_indptr[g]), int(seg_indptr[g + 1])
        if slot >= 0:
            out[start:end] = x[start:end].float() @ weights[slot].float()
    return out.to(x.dtype)


def sgmv_expand_add_ref(
    out: torch.Tensor, a: torch.Tensor, weights: torch.Tensor, seg_indptr: torch.Tensor, weight_indices: torch.Tensor
) -> torch.Tensor:
    """Reference of ``sgmv_expand_add`` (also in place; returns ``out``): for each segment ``g`` with a slot,
    ``out[rows] = round(float32(out[rows]) + a[rows] @ weights[weight_indices[g]])`` with the product in float32;
    rows of slot -1 segments are untouched."""
    for g in range(weight_indices.shape[0]):
        slot, start, end = int(weight_indices[g]), int(seg_indptr[g]), int(seg_indptr[g + 1])
        if slot >= 0:
            delta = a[start:end].float() @ weights[slot].float()
            out[start:end] = (out[start:end].float() + delta).to(out.dtype)
    return out
