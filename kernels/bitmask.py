"""Apply a packed token bitmask to logits: disallowed tokens get -inf (grammar-constrained decoding).

Layout is xgrammar's: ``bitmask`` is int32 ``[batch, ceil(vocab / 32)]``; bit ``j`` (LSB = 0) of word ``w`` of
a row says whether token ``32 * w + j`` is allowed (1) or not (0). The kernel only writes: each program covers
``BLOCK`` tokens of one row, reads their words, and stores -inf where the bit is 0 (allowed logits are never
read or written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixgen.kernels import INTERPRET
from radixgen.kernels._common import FLOAT_DTYPES, INDEX_DTYPES, check_devices, check_tensor


@triton.jit
def _apply_token_bitmask_kernel(
    Logits, Bitmask, Indices, vocab_size, stride_logits, stride_bitmask,
    HAS_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    if HAS_INDICES:
        row = tl.load(Indices + tl.program_id(0)).to(tl.int64)
    else:
        row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_vocab = offs < vocab_size
    words = tl.load(Bitmask + row * stride_bitmask + offs // 32, mask=in_vocab, other=-1)  # [BLOCK] int32
    bit = (words >> (offs % 32)) & 1
    tl.store(Logits + row * stride_logits + offs, float("-inf"), mask=in_vocab & (bit == 0))


def apply_token_bitmask_inplace(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    indices: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Set ``logits[r, t] = -inf`` wherever bit ``t`` of ``bitmask[r]`` is 0, in place.

    Args:
        logits: ``[batch, V]`` float32 / float16 / bfloat16, stride 1 in the last dim (row stride free).
        bitmask: int32 ``[batch, W]`` with ``W >= ceil(vocab_size / 32)``, stride 1 in the last dim; bit ``j``
            of word ``w`` is token ``32 * w + j`` (xgrammar's ``allocate_token_bitmask`` layout).
        indices: optional int32 / int64 ``[n]`` contiguous rows to apply (row ``indices[i]`` of both logits
            and bitmask); the other rows are untouched. Default: every row. Values are not range-checked
            (out-of-range rows are undefined behaviour).
        vocab_size: number of leading logits columns the mask covers (default ``V``); columns
            ``vocab_size..V-1`` (e.g. a model's vocab padding) are left untouched, as in xgrammar.

    Limits: all tensors on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Returns:
        ``logits`` (modified in place).

    Raises:
        ValueError: a shape, dtype, stride, device or argument is invalid.
    """
    fn = "apply_token_bitmask_inplace"
    check_tensor(fn, "logits", logits, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor(fn, "bitmask", bitmask, ndim=2, dtypes=(torch.int32,))
    if indices is not None:
        check_tensor(fn, "indices", indices, ndim=1, dtypes=INDEX_DTYPES, contiguous=True)
    check_devices(fn, {"logits": logits, "bitmask": bitmask, "indices": indices})
    batch, vocab = logits.shape
    vocab_size = vocab if vocab_size is None else vocab_size
    if not isinstance(vocab_size, int) or not 0 <= vocab_size <= vocab:
        raise ValueError(f"{fn}: vocab_size must be an int in 0..{vocab} (logits width), got {vocab_size!r}")
    if bitmask.shape[0] != batch:
        raise ValueError(f"{fn}: bitmask has {bitmask.shape[0]} rows but logits has {batch}")
    words = triton.cdiv(vocab_size, 32)
    if bitmask.shape[1] < words:
        raise ValueError(
            f"{fn}: bitmask has {bitmask.shape[1]} words per row, vocab_size {vocab_size} needs {words}"
        )
    rows = batch if indices is None else indices.shape[0]
    if rows == 0 or vocab_size == 0:
        return logits
    block = 1024 if INTERPRET else 4096
    grid = (rows, triton.cdiv(vocab_size, block))
    _apply_token_bitmask_kernel[grid](
        logits, bitmask, indices, vocab_size, logits.stride(0), bitmask.stride(0),
        HAS_INDICES=indices is not None, BLOCK=block, num_warps=4 if INTERPRET else 8,
    )  # fmt: skip
    return logits
