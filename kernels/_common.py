"""Helpers shared by the kernel wrappers: argument checks (every problem is a ValueError naming the argument).
What only the two attention kernels share is in ``_attention``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from radixgen.kernels import INTERPRET

INDEX_DTYPES = (torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: quantized KV-pool storage (read with scales): int8 and, where this torch has them, the two float8 formats
_FLOAT8 = (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None))
QUANT_KV_DTYPES = (torch.int8, *(d for d in _FLOAT8 if isinstance(d, torch.dtype)))
KV_DTYPES = FLOAT_DTYPES + QUANT_KV_DTYPES


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


def check_index_tensors(fn: str, tensors: Mapping[str, object], batch: int) -> None:
    """Each of ``tensors`` is a contiguous int32 / int64 ``[batch]`` tensor."""
    for name, t in tensors.items():
        check_shape(fn, name, check_tensor(fn, name, t, ndim=1, dtypes=INDEX_DTYPES, contiguous=True), (batch,))


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(n - 1, 0).bit_length()
