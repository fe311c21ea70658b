"""What the two attention kernels (extend, decode) share: the checks of their common arguments, their launch
arguments (softmax scale, head-dim tile, the dtypes fed to ``tl.dot``), the KV-pool scales of a quantized cache,
and the ``@triton.jit`` online-softmax steps over a tile of keys (FlashAttention-2, Dao 2023).

Quantized KV pools (int8, float8_e4m3fn, float8_e5m2) are dequantized on load: a key tile is read in the storage
dtype, widened to float32 and multiplied by its scale (one per slot and KV head, or one per tensor), then cast to
q's dtype for ``tl.dot`` — the same float32 ``stored * scale`` the torch pool (``TokenToKVPool.get_kv``) and the
references compute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl

from radixgen.kernels import INTERPRET
from radixgen.kernels._common import (
    FLOAT_DTYPES,
    KV_DTYPES,
    QUANT_KV_DTYPES,
    check_shape,
    check_tensor,
    next_power_of_2,
)

#: largest head dim the attention kernels take
MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634


def check_attention_tensors(
    fn: str, tensors: Mapping[str, object], req_to_token: object, kv: str, kv_label: str
) -> tuple[int, int, int]:
    """The inputs the attention wrappers share: ``tensors`` (``"q"`` and the K/V inputs) 3-D tensors — float,
    except the pool buffers ``k_buffer``/``v_buffer``, which may also be int8 / float8 (see ``KV_DTYPES``) — and
    ``req_to_token`` a 2-D int32 one, all with stride 1 in the last dim; q's heads a positive multiple of the KV
    heads (dim 1 of ``tensors[kv]``, called ``kv_label`` heads in messages), q's head dim in 1..MAX_HEAD_DIM.

    Returns:
        ``(num_heads, num_kv_heads, head_dim)``.
    """
    checked = {
        name: check_tensor(fn, name, t, ndim=3, dtypes=KV_DTYPES if name.endswith("_buffer") else FLOAT_DTYPES)
        for name, t in tensors.items()
    }
    check_tensor(fn, "req_to_token", req_to_token, ndim=2, dtypes=(torch.int32,))
    _, num_heads, head_dim = checked["q"].shape
    num_kv_heads = checked[kv].shape[1]
    if num_kv_heads == 0 or num_heads % num_kv_heads != 0:
        raise ValueError(f"{fn}: q heads ({num_heads}) must be a multiple of {kv_label} heads ({num_kv_heads}) > 0")
    if not 0 < head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{fn}: head_dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    return num_heads, num_kv_heads, head_dim


def kv_scale_args(
    fn: str, k_buffer: torch.Tensor, k_scale: object, v_scale: object, capability: tuple[int, int] | None
) -> dict[str, Any]:
    """Check the pool scales and return the scale arguments of the attention kernels.

    Args:
        k_buffer: the (already checked) ``[S, Hkv, D]`` K pool; V's has the same shape and dtype.
        k_scale, v_scale: None (unscaled pool), or float32 tensors on k_buffer's device, each ``[S, Hkv]`` (a
            scale per slot and KV head: int8) or one element (``[]`` / ``[1]``: per tensor, fp8). Both or neither;
            required when the pool is int8 / float8.
        capability: the CUDA device's compute capability, None in the interpreter.
    Returns:
        keyword arguments ``K_scale, V_scale, stride_kst, stride_ksh, stride_vst, stride_vsh, KV_SCALED``
        (a per-tensor scale gets strides 0, so the kernels read it for every slot; unscaled: k_buffer as a
        placeholder that is never read).
    Raises:
        ValueError: a missing, extra or malformed scale, or float8_e4m3fn on a GPU below compute capability 8.9
            (compiled Triton has no fp8e4nv conversion there).
    """
    if (k_scale is None) != (v_scale is None):
        raise ValueError(f"{fn}: k_scale and v_scale must be given together")
    if capability is not None and k_buffer.dtype == getattr(torch, "float8_e4m3fn", None) and capability < (8, 9):
        raise ValueError(
            f"{fn}: k_buffer dtype float8_e4m3fn needs compute capability >= 8.9 in compiled Triton (fp8e4nv), this "
            f"GPU has {capability[0]}.{capability[1]}; use --kv-cache-dtype fp8_e5m2 or int8"
        )
    if k_scale is None:
        if k_buffer.dtype in QUANT_KV_DTYPES:
            raise ValueError(f"{fn}: a {k_buffer.dtype} KV pool needs k_scale and v_scale")
        return {"K_scale": k_buffer, "V_scale": k_buffer, "stride_kst": 0, "stride_ksh": 0, "stride_vst": 0,
                "stride_vsh": 0, "KV_SCALED": False}  # fmt: skip
    out: dict[str, Any] = {"KV_SCALED": True}
    for name, scale, key in (("k_scale", k_scale, "k"), ("v_scale", v_scale, "v")):
        if not isinstance(scale, torch.Tensor):
            raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(scale).__name__}")
        if scale.dtype != torch.float32:
            raise ValueError(f"{fn}: {name} dtype must be float32, got {scale.dtype}")
        if scale.device != k_buffer.device:
            raise ValueError(f"{fn}: {name} must be on k_buffer's device {k_buffer.device}, got {scale.device}")
        if scale.dim() <= 1 and scale.numel() == 1:  # per tensor
            strides = (0, 0)
        else:
            check_shape(fn, name, scale, k_buffer.shape[:2])
            strides = (scale.stride(0), scale.stride(1))
        out[f"{key.upper()}_scale"] = scale
        out[f"stride_{key}st"], out[f"stride_{key}sh"] = strides
    return out


def attention_output(fn: str, out: object, q: torch.Tensor) -> torch.Tensor:
    """``out`` checked to be a float tensor of q's shape, or (``None``) a new contiguous tensor like q."""
    if out is None:
        return torch.empty_like(q, memory_format=torch.contiguous_format)
    checked = check_tensor(fn, "out", out, ndim=3, dtypes=FLOAT_DTYPES)
    check_shape(fn, "out", checked, q.shape)
    return checked


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_dtype(dtype: torch.dtype, interpret: bool = INTERPRET) -> tl.dtype:
    """Operand dtype of the attention kernels' ``tl.dot``: q's dtype, except bfloat16 in the interpreter.

    Triton's interpreter stores bfloat16 as raw uint16 bits and its ``tl.dot`` multiplies those bits
    (triton 3.x), so under the interpreter bfloat16 operands are first rounded to bfloat16 and then widened
    exactly to float32 — the same products a GPU's bfloat16 MMA with float32 accumulation computes.
    ``interpret=False`` gives the plain triton dtype of ``dtype``.
    """
    if interpret and dtype == torch.bfloat16:
        return tl.float32
    return _TL_DTYPES[dtype]


def attention_launch_args(dtype: torch.dtype, head_dim: int, sm_scale: float | None) -> tuple[float, dict[str, Any]]:
    """What the attention kernels are launched with for q's ``dtype`` and ``head_dim``: ``(qk_scale, consts)``.

    ``qk_scale`` is ``sm_scale`` (default ``head_dim ** -0.5``) times log2(e), for a softmax in base 2.
    ``consts`` are the shared constexprs: the head-dim tile ``BLOCK_D`` and the ``tl.dot`` settings ``IN_DTYPE``
    (q's dtype), ``DOT_DTYPE`` (see :func:`dot_dtype`) and ``DOT_PRECISION`` (IEEE for float32 dot products,
    not TF32).
    """
    scale = head_dim**-0.5 if sm_scale is None else float(sm_scale)
    dot = dot_dtype(dtype)
    consts = {
        "BLOCK_D": max(next_power_of_2(head_dim), 16),
        "IN_DTYPE": dot_dtype(dtype, interpret=False),
        "DOT_DTYPE": dot,
        "DOT_PRECISION": "ieee" if dot == tl.float32 else "tf32",
    }
    return scale * _LOG2E, consts


@triton.jit
def attend_tile(
    q, K, V, rows, kv_head, stride_kt, stride_kh, stride_vt, stride_vh, offs_d, mask_n, mask_d, visible,
    qk_scale, m_i, l_i, acc, K_scale, V_scale, stride_kst, stride_ksh, stride_vst, stride_vsh,
    KV_SCALED: tl.constexpr, IN_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One online-softmax step (FlashAttention-2) of queries ``q`` ``[M, BLOCK_D]`` (already ``DOT_DTYPE``) over
    one tile of ``N`` keys: key ``j``'s K/V are row ``rows[j]``, head ``kv_head`` of ``K``/``V`` (``mask_n``
    ``[N]``: valid keys; ``mask_d`` ``[BLOCK_D]``: valid dims; ``offs_d``: ``arange(0, BLOCK_D)``). ``visible``
    ``[M, N]`` (or ``[1, N]``) says which scores count; scores are ``q . k * qk_scale``, in base 2. With
    ``KV_SCALED`` the stored K/V are dequantized on load: row ``r``, head ``h`` is ``float32(stored) *
    K_scale[r * stride_kst + h * stride_ksh]`` (likewise V; strides 0 for a per-tensor scale). Returns the
    updated ``(m_i, l_i, acc)``: running max ``[M]``, running sum ``[M]`` and unnormalised output
    ``[M, BLOCK_D]``, all float32. Each row must see a key in the first tile it is given, so that its running
    max is finite from then on."""
    k_ptrs = K + rows[None, :] * stride_kt + kv_head * stride_kh + offs_d[:, None]
    k = tl.load(k_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # [BLOCK_D, N]
    if KV_SCALED:
        k_s = tl.load(K_scale + rows * stride_kst + kv_head * stride_ksh, mask=mask_n, other=0.0)  # [N]
        k = k.to(tl.float32) * k_s[None, :]
    kt = k.to(IN_DTYPE).to(DOT_DTYPE)
    qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale  # [M, N]
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v_ptrs = V + rows[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :]
    v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [N, BLOCK_D]
    if KV_SCALED:
        v_s = tl.load(V_scale + rows * stride_vst + kv_head * stride_vsh, mask=mask_n, other=0.0)  # [N]
        v = v.to(tl.float32) * v_s[:, None]
    pv = tl.dot(p.to(IN_DTYPE).to(DOT_DTYPE), v.to(IN_DTYPE).to(DOT_DTYPE), input_precision=DOT_PRECISION)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit
def attend_pooled_keys(
    q_ptrs, q_mask, K_buf, V_buf, Req_to_token, req, kv_head, start, end, qk_scale,
    stride_kbt, stride_kbh, stride_vbt, stride_vbh, stride_req, offs_n, offs_d, mask_d,
    K_scale, V_scale, stride_kst, stride_ksh, stride_vst, stride_vsh, KV_SCALED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IN_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Load ``BLOCK_M`` queries (``q_ptrs``/``q_mask`` ``[BLOCK_M, BLOCK_D]``) and run :func:`attend_tile` from a
    fresh online-softmax state over positions ``start..end-1`` of request row ``req``, all visible to every
    query: position ``j``'s K/V live in KV-pool slot ``req_to_token[req, j]`` (``offs_n``:
    ``arange(0, BLOCK_N)``), dequantized with the pool's scales when ``KV_SCALED`` (see :func:`kv_scale_args`).
    Returns ``(q, m_i, l_i, acc)``: the queries as ``DOT_DTYPE`` and the state."""
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)  # [BLOCK_M, BLOCK_D]
    q = q.to(DOT_DTYPE)  # no-op except bfloat16 in the interpreter (see dot_dtype)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + offs_n
        mask_n = cols < end  # column n0 is always valid: each row's running max is finite after a tile
        slot = tl.load(Req_to_token + req * stride_req + cols, mask=mask_n, other=0).to(tl.int64)
        m_i, l_i, acc = attend_tile(
            q, K_buf, V_buf, slot, kv_head, stride_kbt, stride_kbh, stride_vbt, stride_vbh, offs_d, mask_n, mask_d,
            mask_n[None, :], qk_scale, m_i, l_i, acc, K_scale, V_scale, stride_kst, stride_ksh, stride_vst, stride_vsh,
            KV_SCALED, IN_DTYPE, DOT_DTYPE, DOT_PRECISION,
        )  # fmt: skip
    return q, m_i, l_i, acc
