"""Python entry points of radixgen's CPU kernels (``paged_attention.c``, ``fused_ops.c``; built by ``build``).

- ``paged_attention``: each query token over the first ``kv_len`` positions of its request, read straight from the
  KV pool through ``req_to_token`` (decode rows and short extends; GQA-grouped online softmax, FlashAttention's
  rescaling). At batch 1 on this project's CPU it replaces ~130 us of torch ops per layer (dense-copy upkeep,
  index ops, masks, SDPA) with one ~10 us call.
- ``rms_norm`` (optionally fused with the residual add), ``rotary_inplace``, ``silu_and_mul``: the element-wise
  parts of a decoder layer, one call each instead of 5-10 torch ops (SGLang's and vLLM's fused CPU/GPU ops of
  the same names).

Every function takes float32 or bfloat16 CPU tensors (``supports``) and raises ValueError naming the argument
otherwise; ``available()`` says whether the library built (callers keep their torch path when it did not).
Calls cost ~2 us of ctypes overhead each.
"""

from __future__ import annotations

import ctypes

import torch

from radixgen.runtime.cpu.build import load_library

#: the activation dtypes the kernels take, as the C entry points' ``dtype`` argument
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
#: largest head dimension ``paged_attention`` takes
MAX_HEAD_DIM = 256
#: below this many (positions x KV heads) in a call, ``paged_attention`` stays on the calling thread
MIN_PARALLEL_WORK = 1024


def available() -> bool:
    """True when the kernels are built and loaded (see ``radixgen.runtime.cpu.build``)."""
    return load_library() is not None


def supports(dtype: torch.dtype, kv_dtype: torch.dtype | None = None, head_dim: int | None = None) -> bool:
    """True when the kernels take activations of ``dtype`` (float32, bfloat16), attention over a pool of
    ``kv_dtype`` (the same dtype) and heads of ``head_dim`` (at most ``MAX_HEAD_DIM``)."""
    if dtype not in DTYPE_CODES or (kv_dtype is not None and kv_dtype != dtype):
        return False
    return head_dim is None or 1 <= head_dim <= MAX_HEAD_DIM


def _lib(fn: str) -> ctypes.CDLL:
    lib = load_library()
    if lib is None:
        raise RuntimeError(f"{fn}: the CPU kernels are unavailable (see the log for why)")
    return lib


def _check(fn: str, name: str, t: torch.Tensor, dtype: torch.dtype, *, rows_strided: bool = False) -> None:
    """``t`` on the CPU with ``dtype``, contiguous (with ``rows_strided``: contiguous within each row)."""
    if t.device.type != "cpu" or t.dtype != dtype:
        raise ValueError(f"{fn}: {name} must be a CPU {dtype} tensor, got {t.dtype} on {t.device}")
    if not (t.stride(-1) == 1 if rows_strided else t.is_contiguous()):
        where = " within rows" if rows_strided else ""
        raise ValueError(f"{fn}: {name} must be contiguous{where}, got strides {t.stride()}")


def _dtype_code(fn: str, dtype: torch.dtype) -> int:
    if dtype not in DTYPE_CODES:
        raise ValueError(f"{fn}: dtype must be float32 or bfloat16, got {dtype}")
    return DTYPE_CODES[dtype]


class PagedAttentionPlan:
    """The per-batch arguments of ``paged_attention``, checked once; ``run`` per layer.

    Args:
        req_to_token: int32 ``[R, max_context]`` contiguous: slot of each (request row, position).
        rows: int64 ``[T]`` request row of each query token.
        kv_lens: int64 ``[T]`` positions each query token sees (``1 <= kv_lens[t] <= max_context``).
    Raises:
        ValueError: a dtype, layout or shape the kernel does not take (named).
    """

    def __init__(self, req_to_token: torch.Tensor, rows: torch.Tensor, kv_lens: torch.Tensor) -> None:
        fn = "paged_attention"
        for name, t, dt in (("req_to_token", req_to_token, torch.int32), ("rows", rows, torch.int64),
                            ("kv_lens", kv_lens, torch.int64)):  # fmt: skip
            _check(fn, name, t, dt)
        if rows.shape != kv_lens.shape or rows.dim() != 1:
            raise ValueError(f"{fn}: rows {tuple(rows.shape)} and kv_lens {tuple(kv_lens.shape)} must be [T]")
        self.lib = _lib(fn)
        self.num_tokens = rows.shape[0]
        self.req_to_token, self.rows, self.kv_lens = req_to_token, rows, kv_lens  # kept alive for the pointers
        # (req_to_token address, its row stride, rows address, kv_lens address) for the native calls
        self.pointers = (req_to_token.data_ptr(), req_to_token.stride(0), rows.data_ptr(), kv_lens.data_ptr())

    def run(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention of each query token over its request's first ``kv_lens[t]`` pooled positions.

        Args:
            q: ``[T, Hq, D]`` float32 or bfloat16, each token's heads contiguous (rows may be strided, e.g. a view
                of the fused qkv projection's output).
            k_pool, v_pool: one layer's pool storage ``[S, Hkv, D]``, contiguous, q's dtype (``Hq % Hkv == 0``).
            scale: softmax scale (normally ``D ** -0.5``).
        Returns:
            ``[T, Hq, D]`` contiguous, q's dtype.
        Raises:
            ValueError: dtypes, layouts or shapes the kernel does not take (named).
        """
        num_tokens, hq, d = q.shape
        hkv = k_pool.shape[1]
        dtype = q.dtype
        if (
            dtype not in DTYPE_CODES
            or k_pool.dtype != dtype
            or v_pool.dtype != dtype
            or not 1 <= d <= MAX_HEAD_DIM
            or hq % hkv
            or k_pool.shape[2] != d
            or v_pool.shape != k_pool.shape
            or num_tokens != self.num_tokens
        ):
            raise ValueError(f"paged_attention: q {tuple(q.shape)} {dtype} and pools {tuple(k_pool.shape)} "
                             f"{k_pool.dtype} / {tuple(v_pool.shape)} {v_pool.dtype} do not match {self.num_tokens} "
                             f"tokens (head_dim <= {MAX_HEAD_DIM}, Hq % Hkv == 0)")  # fmt: skip
        if q.stride(2) != 1 or q.stride(1) != d or not (k_pool.is_contiguous() and v_pool.is_contiguous()):
            raise ValueError(f"paged_attention: q's heads must be contiguous within a token (strides {q.stride()}) "
                             "and the pools contiguous")  # fmt: skip
        out = torch.empty((num_tokens, hq, d), dtype=dtype)
        rtt, rtt_stride, rows, kv_lens = self.pointers
        self.lib.radixgen_paged_attention(
            DTYPE_CODES[dtype], q.data_ptr(), q.stride(0), k_pool.data_ptr(), v_pool.data_ptr(), rtt, rtt_stride,
            rows, kv_lens, out.data_ptr(), num_tokens, hq, hkv, d, scale, MIN_PARALLEL_WORK,
        )  # fmt: skip
        return out


def paged_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    req_to_token: torch.Tensor,
    rows: torch.Tensor,
    kv_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``PagedAttentionPlan(req_to_token, rows, kv_lens).run(q, k_pool, v_pool, scale)``: one call's attention.

    Raises:
        RuntimeError: the kernels are unavailable (check ``available()`` first).
        ValueError: dtypes, layouts or shapes the kernel does not take (named).
    """
    return PagedAttentionPlan(req_to_token, rows, kv_lens).run(q, k_pool, v_pool, scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of rows ``x [T, H]`` (rows may be strided): ``weight * round(x / sqrt(mean(x^2) + eps))``.

    With ``residual [T, H]`` (contiguous, updated in place): first ``residual = x + residual`` (rounded to the
    dtype), then the norm of that sum (vLLM's ``fused_add_rms_norm``). ``weight [H]`` has x's dtype.
    Returns a new contiguous ``[T, H]`` tensor. Raises ValueError on a dtype, layout or shape mismatch.
    """
    fn = "rms_norm"
    lib = _lib(fn)
    code = _dtype_code(fn, x.dtype)
    num_tokens, hidden = x.shape
    _check(fn, "x", x, x.dtype, rows_strided=True)
    _check(fn, "weight", weight, x.dtype)
    if weight.shape != (hidden,):
        raise ValueError(f"{fn}: weight {tuple(weight.shape)} must be [{hidden}]")
    if residual is not None:
        _check(fn, "residual", residual, x.dtype)
        if residual.shape != x.shape:
            raise ValueError(f"{fn}: residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    out = torch.empty((num_tokens, hidden), dtype=x.dtype)
    res_ptr = None if residual is None else residual.data_ptr()
    lib.radixgen_rms_norm(code, x.data_ptr(), x.stride(0), res_ptr, weight.data_ptr(), out.data_ptr(), num_tokens,
                          hidden, eps)  # fmt: skip
    return out


def rotary_inplace(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> None:
    """Rotate-half RoPE, in place, of the q and k heads of the fused projection output ``qkv [T, (Hq + 2 Hkv) * D]``
    (rows may be strided; v is left alone) at int64 ``positions [T]``, from the float32 ``cos_sin_cache
    [max_positions, D]`` (cos in the first half, sin in the second; ``RotaryEmbedding.cos_sin_cache``).
    Positions must be below ``max_positions``. Raises ValueError on a dtype, layout or shape mismatch."""
    fn = "rotary_inplace"
    lib = _lib(fn)
    code = _dtype_code(fn, qkv.dtype)
    _check(fn, "qkv", qkv, qkv.dtype, rows_strided=True)
    _check(fn, "positions", positions, torch.int64)
    _check(fn, "cos_sin_cache", cos_sin_cache, torch.float32)
    if qkv.shape[1] < (num_heads + 2 * num_kv_heads) * head_dim or cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"{fn}: qkv {tuple(qkv.shape)} / cos_sin_cache {tuple(cos_sin_cache.shape)} do not fit "
                         f"{num_heads} + 2 x {num_kv_heads} heads of {head_dim}")  # fmt: skip
    if positions.shape != (qkv.shape[0],):
        raise ValueError(f"{fn}: positions {tuple(positions.shape)} must be [{qkv.shape[0]}]")
    lib.radixgen_rotary_inplace(code, qkv.data_ptr(), qkv.stride(0), positions.data_ptr(), cos_sin_cache.data_ptr(),
                                qkv.shape[0], num_heads, num_kv_heads, head_dim)  # fmt: skip


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """int64 ``[T]``: the index of each row's largest value of float32 ``x [T, V]`` (contiguous), the first one on
    ties and a row's first NaN where it holds one — ``torch.max(x, dim=-1).indices``. Raises ValueError on another
    dtype or layout."""
    fn = "argmax_rows"
    lib = _lib(fn)
    _check(fn, "x", x, torch.float32)
    if x.dim() != 2:
        raise ValueError(f"{fn}: x must be [T, V], got {tuple(x.shape)}")
    out = torch.empty(x.shape[0], dtype=torch.int64)
    lib.radixgen_argmax_rows(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
    return out


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: ``silu(gate) * up`` of ``gate_up [T, 2I]`` (gate first; rows may be strided) → new
    contiguous ``[T, I]``. Raises ValueError on a dtype or layout mismatch."""
    fn = "silu_and_mul"
    lib = _lib(fn)
    code = _dtype_code(fn, gate_up.dtype)
    _check(fn, "gate_up", gate_up, gate_up.dtype, rows_strided=True)
    num_tokens, width = gate_up.shape
    if width % 2:
        raise ValueError(f"{fn}: gate_up's width {width} must be even")
    out = torch.empty((num_tokens, width // 2), dtype=gate_up.dtype)
    lib.radixgen_silu_and_mul(code, gate_up.data_ptr(), gate_up.stride(0), out.data_ptr(), num_tokens, width // 2)
    return out
