"""Helpers shared by the kernel wrappers: argument checks (every problem is a ValueError naming the argument)
and the dtype the attention kernels feed to ``tl.dot``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton.language as tl

from radixgen.kernels import INTERPRET

INDEX_DTYPES = (torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(
    fn: str,
    name: str,
    t: object,
    *,
    ndim: int,
    dtypes: Sequence[torch.dtype],
    last_dim_contiguous: bool = True,
    contiguous: bool = False,
) -> torch.Tensor:
    """Check that ``t`` is a tensor of rank ``ndim`` with one of ``dtypes`` and the required strides."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{fn}: {name} dtype must be one of ({allowed}), got {t.dtype}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous, got strides {t.stride()}")
    if last_dim_contiguous and t.numel() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{fn}: {name} must have stride 1 in its last dim, got strides {t.stride()}")
    return t


def check_shape(fn: str, name: str, t: torch.Tensor, expected: Sequence[int]) -> None:
    """Check ``t.shape == expected``."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{fn}: {name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_devices(fn: str, tensors: dict[str, torch.Tensor | None]) -> torch.device:
    """All tensors on one device; a CUDA device unless the kernels run in the Triton interpreter."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) != 1:
        where = ", ".join(f"{k}={v.device}" for k, v in present.items())
        raise ValueError(f"{fn}: all tensors must be on one device, got {where}")
    device = devices.pop()
    if not INTERPRET and device.type != "cuda":
        raise ValueError(
            f"{fn}: compiled Triton kernels need CUDA tensors, got {device}; "
            "set TRITON_INTERPRET=1 before importing radixgen.kernels to run on CPU"
        )
    return device


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(n - 1, 0).bit_length()


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
