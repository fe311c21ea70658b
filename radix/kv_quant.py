"""KV cache dtypes (``--kv-cache-dtype``) and the encode/decode of quantized K/V, in plain torch.

``auto`` stores K/V in the model dtype (no scales). The quantized dtypes follow SGLang / vLLM naming:

* ``int8``: symmetric, one float32 scale per (token, KV head), computed when the token's K/V are written:
  ``scale = max|x| / 127`` over the head's ``head_dim`` values, ``q = round(x / scale)`` in ``[-127, 127]``;
  read back as ``q * scale`` (error at most ``scale / 2`` per value). The scales cost 4 bytes per token, head and
  K or V, so an int8 pool holds ``4 * D / (D + 4)`` times the tokens of a float32 one (3.88x at ``head_dim``
  128, 3.76x at 64, 2.67x at 8).
* ``fp8_e4m3`` / ``fp8_e5m2`` (``torch.float8_e4m3fn`` / ``torch.float8_e5m2``): one float32 scale per layer for
  K and one for V (per tensor; default 1.0, or loaded from a checkpoint's ``k_scale`` / ``v_scale``):
  ``q = fp8(clamp(x / scale, -max, max))`` (saturating, never NaN for finite x), read back as ``q * scale``.
  Relative error ``2^-4`` (e4m3) / ``2^-3`` (e5m2) within the format's range.

Dequantization is one float32 multiply, ``q.float() * scale``; the Triton kernels (``radixgen.kernels``) compute
exactly the same, so the torch and Triton paths read identical K/V.
"""

from __future__ import annotations

import torch

#: the values of ``--kv-cache-dtype`` (SGLang's names)
KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2", "int8")
_FP8_NAMES = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
#: scale dtype of every quantized KV format
SCALE_DTYPE = torch.float32
INT8_MAX = 127


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype | None) -> torch.dtype:
    """The storage dtype of a ``kv_cache_dtype`` (``auto`` → ``model_dtype``; None only to validate a name that
    is not ``auto``).

    Raises:
        ValueError: unknown name, or an fp8 name on a torch build without float8 dtypes; the message names
            ``kv_cache_dtype``.
    """
    if kv_cache_dtype == "auto":
        if model_dtype is None:
            raise ValueError("kv_cache_dtype: auto needs the model dtype")
        return model_dtype
    if kv_cache_dtype == "int8":
        return torch.int8
    if kv_cache_dtype in _FP8_NAMES:
        dtype = getattr(torch, _FP8_NAMES[kv_cache_dtype], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(
                f"kv_cache_dtype: {kv_cache_dtype} needs torch.{_FP8_NAMES[kv_cache_dtype]}, which this torch "
                f"({torch.__version__}) does not have; use int8 or auto"
            )
        return dtype
    raise ValueError(f"kv_cache_dtype: must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")


def is_per_token_scaled(dtype: torch.dtype) -> bool:
    """True for int8 (a scale per token and head), False for float and fp8 storage."""
    return dtype == torch.int8


def is_quantized(dtype: torch.dtype) -> bool:
    """True for the quantized storage dtypes (int8, float8), which need scales to be read."""
    return dtype == torch.int8 or (dtype.is_floating_point and dtype.itemsize == 1)


def quantize_per_token_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per row of the last dim.

    Args:
        x: float ``[..., D]`` (e.g. ``[T, Hkv, D]``).
    Returns:
        ``(q, scale)``: int8 ``[..., D]`` and float32 ``[...]`` with ``x ≈ q * scale[..., None]``, error at most
        ``scale / 2``; ``scale = max(max|row| / 127, 2^-126)`` (an all-zero row reads back as zeros).
    """
    xf = x.to(SCALE_DTYPE)
    # at least the smallest normal float32: no division by 0 (an all-zero row) or by a subnormal
    scale = (xf.abs().amax(dim=-1) / INT8_MAX).clamp_(min=torch.finfo(SCALE_DTYPE).tiny)  # [...]
    q = (xf / scale[..., None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_per_tensor(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp8 quantization with one scale: ``dtype(clamp(x / scale, -max, max))``.

    Args:
        x: float ``[...]``; scale: float32 0-d tensor (> 0); dtype: a float8 dtype.
    """
    fmax = torch.finfo(dtype).max
    return (x.to(SCALE_DTYPE) / scale).clamp_(-fmax, fmax).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` in float32, then cast to ``dtype``.

    Args:
        q: ``[..., D]`` stored values; scale: None (float storage: a plain cast), float32 ``[...]`` (per row of
            the last dim) or a 0-d tensor (per tensor).
    """
    if scale is None:
        return q.to(dtype)
    s = scale if scale.dim() == 0 else scale[..., None]
    return (q.to(SCALE_DTYPE) * s).to(dtype)
