"""Decode attention (one new query per request) over the token-indexed KV pool, Flash-Decoding style.

Stage 1: each program takes one request, one block of ``BLOCK_H`` query heads that share a KV head (GQA: the
KV tile is loaded once for the whole group and used in a ``[BLOCK_H, D] x [D, BLOCK_N]`` dot), and one of
``num_kv_splits`` contiguous chunks of the request's sequence (gathered through ``req_to_token``); it writes
the chunk's normalised partial output and its log-sum-exp. Stage 2 merges the chunks of each (request, head)
with the usual LSE rescaling. Splitting the sequence keeps the GPU busy when ``batch * heads`` is small
(Dao et al. 2023, "Flash-Decoding"). A quantized pool (int8 / float8 with scales) is dequantized on load in
stage 1. Design follows SGLang's triton_ops/decode_attention.py; the code is this
project's own.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from radixgen.kernels import INTERPRET
from radixgen.kernels._attention import (
    attend_pooled_keys,
    attention_launch_args,
    attention_output,
    check_attention_tensors,
    kv_scale_args,
)
from radixgen.kernels._common import check_devices, check_index_tensors, check_shape, next_power_of_2

MAX_KV_SPLITS = 64


@triton.jit
def _decode_stage1_kernel(
    Q, K_buf, V_buf, Req_to_token, Req_pool_indices, Seq_lens, Mid_o, Mid_lse, K_scale, V_scale,
    qk_scale, num_splits,
    stride_qb, stride_qh, stride_kbt, stride_kbh, stride_vbt, stride_vbh, stride_req,
    stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh, stride_kst, stride_ksh, stride_vst, stride_vsh,
    KV_SCALED: tl.constexpr, GROUP: tl.constexpr, HEAD_BLOCKS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, IN_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    kv_head = tl.program_id(1) // HEAD_BLOCKS
    split = tl.program_id(2)
    seq_len = tl.load(Seq_lens + pid_b).to(tl.int32)
    # Every split but the last covers the same whole number of BLOCK_N tiles (stage 2 recomputes this).
    split_len = ((seq_len + num_splits - 1) // num_splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    if start >= end:
        return
    req = tl.load(Req_pool_indices + pid_b).to(tl.int64)

    offs_g = (tl.program_id(1) % HEAD_BLOCKS) * BLOCK_H + tl.arange(0, BLOCK_H)  # index inside the group
    mask_h = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)

    q_ptrs = Q + pid_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    _, m_i, l_i, acc = attend_pooled_keys(
        q_ptrs, mask_h[:, None] & mask_d[None, :], K_buf, V_buf, Req_to_token, req, kv_head, start, end, qk_scale,
        stride_kbt, stride_kbh, stride_vbt, stride_vbh, stride_req, offs_n, offs_d, mask_d,
        K_scale, V_scale, stride_kst, stride_ksh, stride_vst, stride_vsh, KV_SCALED,
        BLOCK_H, BLOCK_N, BLOCK_D, IN_DTYPE, DOT_DTYPE, DOT_PRECISION,
    )  # fmt: skip

    mo_ptrs = Mid_o + pid_b * stride_mob + heads[:, None] * stride_moh + split * stride_mos + offs_d[None, :]
    tl.store(mo_ptrs, acc / l_i[:, None], mask=mask_h[:, None] & mask_d[None, :])
    ml_ptrs = Mid_lse + pid_b * stride_mlb + heads * stride_mlh + split
    tl.store(ml_ptrs, m_i + tl.log2(l_i), mask=mask_h)  # base-2 log-sum-exp of the split's scores


@triton.jit
def _decode_stage2_kernel(
    Mid_o, Mid_lse, O, Seq_lens, num_splits,
    stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(Seq_lens + pid_b).to(tl.int32)
    split_len = ((seq_len + num_splits - 1) // num_splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    offs_s = tl.arange(0, BLOCK_S)
    valid = (offs_s < num_splits) & (offs_s * split_len < seq_len)  # splits stage 1 wrote
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    lse = tl.load(Mid_lse + pid_b * stride_mlb + head * stride_mlh + offs_s, mask=valid, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # seq_len == 0: no split, output zeros
    w = tl.exp2(lse - m)  # [BLOCK_S], 0 for invalid splits
    mo_ptrs = Mid_o + pid_b * stride_mob + head * stride_moh + offs_s[:, None] * stride_mos + offs_d[None, :]
    part = tl.load(mo_ptrs, mask=valid[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    denom = tl.sum(w, 0)
    denom = tl.where(denom == 0.0, 1.0, denom)
    out = tl.sum(w[:, None] * part, 0) / denom  # [BLOCK_D]
    tl.store(O + pid_b * stride_ob + head * stride_oh + offs_d, out.to(O.dtype.element_ty), mask=mask_d)


def decode_block_n(interpret: bool = INTERPRET) -> int:
    """Keys per stage-1 tile (the split granularity)."""
    return 32 if interpret else 64


def decode_block_h(group: int, interpret: bool = INTERPRET) -> int:
    """Query heads per stage-1 program: 16 on GPU (tl.dot's minimum M), the group size in the interpreter."""
    return next_power_of_2(group) if interpret else 16


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_num_kv_splits(
    batch: int, num_kv_heads: int, group: int, max_seq_len: int, num_sms: int | None
) -> int:
    """Splits per sequence so that stage 1 has about 4 programs per SM, each split >= 4 tiles of keys.

    ``num_sms`` None means the interpreter (programs run one by one, splitting only adds work): 1 split per
    512 keys, which still exercises the reduction.
    """
    if num_sms is None:
        return max(1, min(MAX_KV_SPLITS, triton.cdiv(max_seq_len, 512)))
    head_programs = num_kv_heads * triton.cdiv(group, decode_block_h(group, interpret=False))
    want = triton.cdiv(4 * num_sms, max(batch * head_programs, 1))
    cap = max(1, triton.cdiv(max_seq_len, 4 * decode_block_n(interpret=False)))
    return max(1, min(want, cap, MAX_KV_SPLITS))


def decode_attention_fwd(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int | None = None,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    num_kv_splits: int | None = None,
    block_h: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query per request over the request's whole KV sequence (split-KV, two stages).

    Shapes (``B`` requests, ``S`` KV slots, ``R`` request rows, ``C`` max context):
        q: ``[B, Hq, D]`` float32 / float16 / bfloat16; math in q's dtype with float32 accumulation (float32
            dot products in IEEE precision).
        k_buffer, v_buffer: ``[S, Hkv, D]`` the layer's KV pool: any float dtype (cast to q's dtype), or int8 /
            float8_e4m3fn / float8_e5m2 with scales (read as ``float32(stored) * scale``, then cast to q's dtype;
            float8_e4m3fn needs compute capability >= 8.9 when compiled); ``Hq % Hkv == 0``.
        req_to_token: int32 ``[R, C]``; request i attends to slots ``req_to_token[req_pool_indices[i],
            :seq_lens[i]]`` (its new token's K/V must already be stored).
        req_pool_indices, seq_lens: int32 or int64 ``[B]``, contiguous. ``seq_lens[i] == 0`` gives zeros.
        max_seq_len: ``max(seq_lens)`` as a host int, used only to choose ``num_kv_splits``
            (default: read from ``seq_lens``, a device sync).
        sm_scale: softmax scale, default ``D ** -0.5``.
        out: optional ``[B, Hq, D]`` float output (default: new contiguous tensor of q's dtype).
        num_kv_splits: sequence chunks per request in 1..64 (default ``default_num_kv_splits``).
        block_h: query heads per stage-1 program (power of two; default ``decode_block_h``).
        k_scale, v_scale: the pool's float32 scales, ``[S, Hkv]`` (per slot and KV head) or one element (per
            tensor); both or neither, required for an int8 / float8 pool (see ``kv_scale_args``).

    Strides: q, out, k_buffer, v_buffer, req_to_token need stride 1 in the last dim, other strides free.
    Limits: ``D <= 256``; all tensors on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``); index values
    are not range-checked. Workspace: float32 ``[B, Hq, num_kv_splits, D + 1]`` allocated per call.

    Returns:
        ``out`` (``[B, Hq, D]``).

    Raises:
        ValueError: a shape, dtype, stride, device or argument is invalid.
    """
    fn = "decode_attention_fwd"
    tensors = {"q": q, "k_buffer": k_buffer, "v_buffer": v_buffer}
    num_heads, num_kv_heads, head_dim = check_attention_tensors(fn, tensors, req_to_token, "k_buffer", "KV")
    batch = q.shape[0]
    if k_buffer.shape[2] != head_dim:
        raise ValueError(f"{fn}: k_buffer head_dim {k_buffer.shape[2]} != q head_dim {head_dim}")
    check_shape(fn, "v_buffer", v_buffer, k_buffer.shape)
    index_args = {"req_pool_indices": req_pool_indices, "seq_lens": seq_lens}
    check_index_tensors(fn, index_args, batch)
    out = attention_output(fn, out, q)
    device = check_devices(fn, {**tensors, "req_to_token": req_to_token, **index_args, "out": out})
    capability = None if INTERPRET else torch.cuda.get_device_capability(device)
    scales = kv_scale_args(fn, k_buffer, k_scale, v_scale, capability)
    group = num_heads // num_kv_heads
    block_h = decode_block_h(group) if block_h is None else block_h
    if block_h < 1 or block_h & (block_h - 1):
        raise ValueError(f"{fn}: block_h must be a power of two, got {block_h}")
    if batch == 0:
        return out
    if num_kv_splits is None:
        max_len = int(seq_lens.max()) if max_seq_len is None else max_seq_len
        num_sms = None
        if not INTERPRET:
            num_sms = _num_sms(torch.cuda.current_device() if device.index is None else device.index)
        num_kv_splits = default_num_kv_splits(batch, num_kv_heads, group, max_len, num_sms)
    if not isinstance(num_kv_splits, int) or not 1 <= num_kv_splits <= MAX_KV_SPLITS:
        raise ValueError(f"{fn}: num_kv_splits must be an int in 1..{MAX_KV_SPLITS}, got {num_kv_splits!r}")

    mid_o = torch.empty((batch, num_heads, num_kv_splits, head_dim), dtype=torch.float32, device=device)
    mid_lse = torch.empty((batch, num_heads, num_kv_splits), dtype=torch.float32, device=device)
    qk_scale, consts = attention_launch_args(q.dtype, head_dim, sm_scale)
    block_n = decode_block_n()
    head_blocks = triton.cdiv(group, block_h)
    _decode_stage1_kernel[(batch, num_kv_heads * head_blocks, num_kv_splits)](
        q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, mid_o, mid_lse,
        qk_scale=qk_scale, num_splits=num_kv_splits,
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_kbt=k_buffer.stride(0), stride_kbh=k_buffer.stride(1),
        stride_vbt=v_buffer.stride(0), stride_vbh=v_buffer.stride(1), stride_req=req_to_token.stride(0),
        stride_mob=mid_o.stride(0), stride_moh=mid_o.stride(1), stride_mos=mid_o.stride(2),
        stride_mlb=mid_lse.stride(0), stride_mlh=mid_lse.stride(1),
        **scales, GROUP=group, HEAD_BLOCKS=head_blocks, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_N=block_n, **consts,
        num_warps=4, num_stages=2,
    )  # fmt: skip
    _decode_stage2_kernel[(batch, num_heads)](
        mid_o, mid_lse, out, seq_lens, num_kv_splits,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=consts["BLOCK_D"], BLOCK_N=block_n, BLOCK_S=next_power_of_2(num_kv_splits),
        num_warps=4 if head_dim <= 128 else 8,
    )  # fmt: skip
    return out
