"""Extend (prefill) attention over the token-indexed KV pool, FlashAttention-2 style.

One launch covers a ragged batch: request ``i`` has ``prefix_lens[i]`` cached tokens (read from the KV pool
through ``req_to_token``) and ``extend_lens[i]`` new tokens (read from the contiguous ``k``/``v`` of this
forward). Each program owns ``BLOCK_M`` new queries of one query head of one request and streams keys in two
phases with an online softmax (Dao 2023): the cached prefix (no mask beyond its length), then the new tokens
with the causal mask. GQA: query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)``. A quantized pool
(int8 / float8 with scales) is dequantized on load in phase 1; the new tokens' ``k``/``v`` are float.
Design follows SGLang's triton_ops/extend_attention.py; the code is this project's own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixgen.kernels import INTERPRET
from radixgen.kernels._attention import (
    attend_pooled_keys,
    attend_tile,
    attention_launch_args,
    attention_output,
    check_attention_tensors,
    kv_scale_args,
)
from radixgen.kernels._common import check_devices, check_index_tensors, check_shape


@triton.jit
def _extend_attention_kernel(
    Q, K_ext, V_ext, O, K_buf, V_buf, Req_to_token, Req_pool_indices, Prefix_lens, Extend_lens, Extend_start,
    K_scale, V_scale,
    qk_scale,  # sm_scale * log2(e): the softmax runs in base 2
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_kbt, stride_kbh, stride_vbt, stride_vbh, stride_req, stride_kst, stride_ksh, stride_vst, stride_vsh,
    KV_SCALED: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IN_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    head = tl.program_id(1)
    m_start = tl.program_id(2) * BLOCK_M
    ext_len = tl.load(Extend_lens + pid_b).to(tl.int32)
    if m_start >= ext_len:
        return
    prefix_len = tl.load(Prefix_lens + pid_b).to(tl.int32)
    tok0 = tl.load(Extend_start + pid_b).to(tl.int64)
    req = tl.load(Req_pool_indices + pid_b).to(tl.int64)
    kv_head = head // GROUP

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < ext_len
    mask_d = offs_d < HEAD_DIM

    # Phase 1: the cached prefix, gathered through req_to_token; every query sees all of it.
    q_ptrs = Q + (tok0 + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q, m_i, l_i, acc = attend_pooled_keys(
        q_ptrs, mask_m[:, None] & mask_d[None, :], K_buf, V_buf, Req_to_token, req, kv_head, 0, prefix_len, qk_scale,
        stride_kbt, stride_kbh, stride_vbt, stride_vbh, stride_req, offs_n, offs_d, mask_d,
        K_scale, V_scale, stride_kst, stride_ksh, stride_vst, stride_vsh, KV_SCALED,
        BLOCK_M, BLOCK_N, BLOCK_D, IN_DTYPE, DOT_DTYPE, DOT_PRECISION,
    )  # fmt: skip

    # Phase 2: the new tokens themselves, contiguous in K_ext/V_ext, causal (query j sees new keys 0..j).
    # Key 0 is visible to every row, so each row's running max is finite after the first block.
    n_end = tl.minimum(m_start + BLOCK_M, ext_len)
    for n0 in range(0, n_end, BLOCK_N):
        cols = n0 + offs_n
        mask_n = cols < ext_len
        visible = (offs_m[:, None] >= cols[None, :]) & mask_n[None, :]
        m_i, l_i, acc = attend_tile(
            q, K_ext, V_ext, tok0 + cols, kv_head, stride_kt, stride_kh, stride_vt, stride_vh, offs_d, mask_n, mask_d,
            visible, qk_scale, m_i, l_i, acc, K_scale, V_scale, 0, 0, 0, 0, False, IN_DTYPE, DOT_DTYPE, DOT_PRECISION,
        )  # fmt: skip

    out = acc / l_i[:, None]
    o_ptrs = O + (tok0 + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def extend_launch_config(
    head_dim: int, itemsize: int, capability: tuple[int, int] | None
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for ``head_dim`` and q's ``itemsize`` on a CUDA device of
    compute ``capability``; ``None`` is the interpreter, which runs programs one by one (fewer, larger blocks
    are faster there). Tiles fit the shared memory of sm_80 (163 KiB), sm_86/89 (99 KiB) and sm_90 (227 KiB).
    """
    if capability is None:
        return 32, 32, 4, 1
    if itemsize >= 4 or head_dim > 128:  # float32 tiles (and very wide heads) take twice the shared memory
        return 64, 32, 4 if head_dim <= 64 else 8, 2 if capability[0] >= 9 else 1
    if capability[0] >= 9 or head_dim <= 64:
        return 128, 64, 4 if head_dim <= 64 else 8, 2
    return 64, 64, 4, 2


def extend_attention_fwd(
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
    max_extend_len: int,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of a ragged batch of new tokens over their cached prefixes and themselves.

    Shapes (``T`` new tokens, ``B`` requests, ``S`` KV slots, ``R`` request rows, ``C`` max context):
        q: ``[T, Hq, D]`` float32 / float16 / bfloat16; the math runs in q's dtype with float32 accumulation
            (float32 dot products in IEEE precision, not TF32).
        k, v: ``[T, Hkv, D]`` the new tokens' K/V, any float dtype (cast to q's dtype); ``Hq % Hkv == 0``.
        k_buffer, v_buffer: ``[S, Hkv, D]`` the layer's KV pool: any float dtype (cast to q's dtype), or int8 /
            float8_e4m3fn / float8_e5m2 with scales (read as ``float32(stored) * scale``, then cast to q's dtype;
            float8_e4m3fn needs compute capability >= 8.9 when compiled).
        req_to_token: int32 ``[R, C]``; ``req_to_token[req_pool_indices[i], :prefix_lens[i]]`` are the slots
            of request i's cached prefix.
        req_pool_indices, prefix_lens, extend_lens, extend_start_loc: int32 or int64 ``[B]``; request i's new
            tokens are rows ``extend_start_loc[i] : extend_start_loc[i] + extend_lens[i]`` of q/k/v/out.
            Lengths may be 0 (a request with ``extend_lens[i] == 0`` writes nothing).
        max_extend_len: ``>= max(extend_lens)`` (a host int: sizes the grid, no device sync). A smaller value
            silently leaves the tail queries of longer requests unwritten.
        sm_scale: softmax scale, default ``D ** -0.5``.
        out: optional ``[T, Hq, D]`` float output (default: new tensor of q's dtype).
        block_m, block_n: tile sizes (powers of two, >= 16); default per device (``extend_launch_config``).
        k_scale, v_scale: the pool's float32 scales, ``[S, Hkv]`` (per slot and KV head) or one element (per
            tensor); both or neither, required for an int8 / float8 pool (see ``kv_scale_args``).

    Strides: q, k, v, out, k_buffer, v_buffer need stride 1 in the last dim (other strides are free, e.g.
    views into a fused QKV projection); req_to_token likewise; the ``[B]`` tensors must be contiguous.
    Limits: ``D <= 256``; all tensors on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``); index values
    are not range-checked (out-of-range slots are undefined behaviour).

    Returns:
        ``out`` (``[T, Hq, D]``).

    Raises:
        ValueError: a shape, dtype, stride, device or argument is invalid.
    """
    fn = "extend_attention_fwd"
    tensors = {"q": q, "k": k, "v": v, "k_buffer": k_buffer, "v_buffer": v_buffer}
    num_heads, num_kv_heads, head_dim = check_attention_tensors(fn, tensors, req_to_token, "k", "k")
    num_tokens = q.shape[0]
    check_shape(fn, "k", k, (num_tokens, num_kv_heads, head_dim))
    check_shape(fn, "v", v, (num_tokens, num_kv_heads, head_dim))
    check_shape(fn, "v_buffer", v_buffer, k_buffer.shape)
    if tuple(k_buffer.shape[1:]) != (num_kv_heads, head_dim):
        want = f"[S, {num_kv_heads}, {head_dim}]"
        raise ValueError(f"{fn}: k_buffer must be {want}, got {list(k_buffer.shape)}")
    batch = req_pool_indices.shape[0] if isinstance(req_pool_indices, torch.Tensor) else -1
    index_args = {
        "req_pool_indices": req_pool_indices,
        "prefix_lens": prefix_lens,
        "extend_lens": extend_lens,
        "extend_start_loc": extend_start_loc,
    }
    check_index_tensors(fn, index_args, batch)
    out = attention_output(fn, out, q)
    device = check_devices(fn, {**tensors, "req_to_token": req_to_token, "out": out, **index_args})
    if not isinstance(max_extend_len, int) or max_extend_len < 0:
        raise ValueError(f"{fn}: max_extend_len must be an int >= 0, got {max_extend_len!r}")
    capability = None if INTERPRET else torch.cuda.get_device_capability(device)
    scales = kv_scale_args(fn, k_buffer, k_scale, v_scale, capability)
    cfg_m, cfg_n, num_warps, num_stages = extend_launch_config(head_dim, q.element_size(), capability)
    block_m = cfg_m if block_m is None else block_m
    block_n = cfg_n if block_n is None else block_n
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{fn}: {name} must be a power of two >= 16, got {b}")
    if num_tokens == 0 or batch == 0 or max_extend_len == 0:
        return out
    qk_scale, consts = attention_launch_args(q.dtype, head_dim, sm_scale)
    grid = (batch, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_attention_kernel[grid](
        q, k, v, out, k_buffer, v_buffer, req_to_token, req_pool_indices, prefix_lens, extend_lens,
        extend_start_loc,
        qk_scale=qk_scale,
        stride_qt=q.stride(0), stride_qh=q.stride(1), stride_kt=k.stride(0), stride_kh=k.stride(1),
        stride_vt=v.stride(0), stride_vh=v.stride(1), stride_ot=out.stride(0), stride_oh=out.stride(1),
        stride_kbt=k_buffer.stride(0), stride_kbh=k_buffer.stride(1), stride_vbt=v_buffer.stride(0),
        stride_vbh=v_buffer.stride(1), stride_req=req_to_token.stride(0),
        **scales,
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        **consts,
        num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip
    return out
