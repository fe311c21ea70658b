"""The SGMV LoRA kernels (radixgen.kernels.lora) against their per-segment references and, as a two-step LoRA
delta, against the torch path of radixgen.runtime.lora.ops; plus the wrappers' argument checks.

Without CUDA the kernels run in the Triton interpreter on CPU tensors (conftest sets ``TRITON_INTERPRET=1``), so
shapes are small. Note: Triton 3.x's interpreter rounds float32 → bfloat16 toward zero (compiled CUDA rounds to
nearest even), one of the reasons bfloat16 gets a looser tolerance than float16.
"""

from __future__ import annotations

import random

import pytest
import torch

from radixgen.kernels import INTERPRET
from radixgen.kernels.lora import sgmv_expand_add, sgmv_shrink
from radixgen.kernels.reference import sgmv_expand_add_ref, sgmv_shrink_ref
from radixgen.runtime.lora.ops import LoRASegments, lora_expand_add_torch, lora_shrink_torch

DEVICE = "cpu" if INTERPRET else "cuda"
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
TOL = {F32: (1e-4, 1e-4), BF16: (2e-2, 2e-2), F16: (2e-3, 2e-3)}
I32 = {"dtype": torch.int32, "device": DEVICE}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOL[expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)


def _segments(lens: list[int], slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    indptr = [0]
    for n in lens:
        indptr.append(indptr[-1] + n)
    return torch.tensor(indptr, **I32), torch.tensor(slots, **I32)


def _rows_without_adapter(lens: list[int], slots: list[int]) -> list[int]:
    rows, start = [], 0
    for n, s in zip(lens, slots, strict=True):
        rows += list(range(start, start + n)) if s < 0 else []
        start += n
    return rows


# (dtype, segment lengths, slots, num_slots, K, R, M, max_seg_len): odd sizes, empty and -1 segments, one
# segment longer than a row tile, decode-like one-row segments, many slots, and max_seg_len hints both below the
# longest segment (programs loop over extra row blocks) and above it.
CASES = [
    (F32, [3, 0, 17, 1, 9], [1, 0, -1, 2, 1], 3, 72, 12, 40, None),
    (BF16, [1, 1, 1, 0, 1, 1, 1], [4, 0, -1, 2, 4, 3, 1], 5, 40, 16, 24, None),
    (F16, [70, 2, 5], [0, -1, 0], 1, 24, 8, 72, 9),
    (F32, [5, 4, 3, 2, 6, 1, 2, 3], [11, 3, 7, 0, 9, 3, -1, 5], 12, 33, 5, 17, 100),
    (BF16, [70, 0, 13], [2, 1, 0], 3, 130, 20, 66, None),
]  # fmt: skip


@pytest.mark.parametrize("index", range(len(CASES)))
def test_sgmv_matches_reference(index: int) -> None:
    dtype, lens, slots, num_slots, k, r, m, max_seg_len = CASES[index]
    gen = torch.Generator().manual_seed(index)
    t = sum(lens)
    indptr, indices = _segments(lens, slots)
    x = _randn(gen, t, k + 7, dtype=dtype)[:, 3 : 3 + k]  # a column slice: row stride K + 7
    a_stacked = _randn(gen, num_slots, k, 3 * r, dtype=dtype, scale=k**-0.5)  # e.g. fused q/k/v A matrices
    b = _randn(gen, num_slots, r, m, dtype=dtype, scale=r**-0.5)

    y = sgmv_shrink(x, a_stacked, indptr, indices, max_seg_len=max_seg_len)
    _close(y, sgmv_shrink_ref(x, a_stacked, indptr, indices))
    no_adapter = _rows_without_adapter(lens, slots)
    assert not y[no_adapter].any()

    a = y[:, r : 2 * r]  # the middle projection's rank columns: row stride 3R
    base = _randn(gen, t, m + 9, dtype=dtype)
    got, want = base.clone(), base.clone()
    res = sgmv_expand_add(got[:, 5 : 5 + m], a, b, indptr, indices, max_seg_len=max_seg_len)
    assert res.data_ptr() == got[:, 5:].data_ptr()
    sgmv_expand_add_ref(want[:, 5 : 5 + m], a, b, indptr, indices)
    _close(got, want)
    assert torch.equal(got[:, :5], base[:, :5]) and torch.equal(got[:, 5 + m :], base[:, 5 + m :])
    assert torch.equal(got[no_adapter], base[no_adapter])
    assert not torch.equal(got, base)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_sgmv_delta_matches_runtime_torch_ops(dtype: torch.dtype) -> None:
    """shrink + expand through the kernels == lora_shrink_torch + lora_expand_add_torch (grouped_mm over rows
    sorted by slot) on the final ``out`` (batch row order); dims keep grouped_mm's 16-byte row strides."""
    rng = random.Random(str(dtype))
    gen = torch.Generator().manual_seed(7)
    num_slots, k, r, m = 6, 72, 16, 40
    batches = [
        ([rng.choice([0, 1, rng.randint(2, 9)]) for _ in range(7)], [rng.randint(-1, num_slots - 1) for _ in range(7)]),
        ([4, 0, 3, 6], [0, 2, 2, 5]),  # already in slot order: no sort permutation
        ([3, 5], [-1, -1]),  # no adapter at all
    ]  # fmt: skip
    for lens, slots in batches:
        seg = LoRASegments.build(slots, lens, num_slots, device=DEVICE)
        t = seg.num_rows
        x = _randn(gen, t, k, dtype=dtype)
        a_w = _randn(gen, num_slots, k, r, dtype=dtype, scale=k**-0.5)
        b_w = _randn(gen, num_slots, r, m, dtype=dtype, scale=r**-0.5)
        base = _randn(gen, t, m, dtype=dtype)
        want = base.clone()
        lora_expand_add_torch(want, lora_shrink_torch(x, a_w, seg), b_w, seg)
        got = base.clone()
        sgmv_expand_add(got, sgmv_shrink(x, a_w, seg.seg_indptr, seg.weight_indices), b_w, seg.seg_indptr,
                        seg.weight_indices)  # fmt: skip
        _close(got, want)
        assert torch.equal(got[_rows_without_adapter(lens, slots)], base[_rows_without_adapter(lens, slots)])


def test_sgmv_empty_batches() -> None:
    gen = torch.Generator().manual_seed(3)
    w_a, w_b = _randn(gen, 2, 8, 4, dtype=F32), _randn(gen, 2, 4, 6, dtype=F32)
    for lens, slots in (([], []), ([0, 0], [1, -1])):
        indptr, indices = _segments(lens, slots)
        y = sgmv_shrink(torch.zeros(0, 8, device=DEVICE), w_a, indptr, indices)
        assert y.shape == (0, 4)
        out = torch.zeros(0, 6, device=DEVICE)
        assert sgmv_expand_add(out, torch.zeros(0, 4, device=DEVICE), w_b, indptr, indices) is out
    # rows but only -1 / empty segments: zeros out, out untouched
    indptr, indices = _segments([2, 0, 3], [-1, 0, -1])
    x, out = _randn(gen, 5, 8, dtype=F32), _randn(gen, 5, 6, dtype=F32)
    assert torch.equal(sgmv_shrink(x, w_a, indptr, indices), torch.zeros(5, 4, device=DEVICE))
    before = out.clone()
    assert torch.equal(sgmv_expand_add(out, _randn(gen, 5, 4, dtype=F32), w_b, indptr, indices), before)


def _shrink(**over: object) -> dict:
    kw = {"x": torch.zeros(5, 8, device=DEVICE), "weights": torch.zeros(3, 8, 4, device=DEVICE),
          "seg_indptr": torch.tensor([0, 2, 5], **I32), "weight_indices": torch.tensor([0, -1], **I32)}  # fmt: skip
    return kw | over


def _expand(**over: object) -> dict:
    kw = {"out": torch.zeros(5, 6, device=DEVICE), "a": torch.zeros(5, 4, device=DEVICE),
          "weights": torch.zeros(3, 4, 6, device=DEVICE), "seg_indptr": torch.tensor([0, 2, 5], **I32),
          "weight_indices": torch.tensor([2, 1], **I32)}  # fmt: skip
    return kw | over


FL = {"device": DEVICE}
SH, EX = sgmv_shrink, sgmv_expand_add
BAD_CALLS = [
    (SH, _shrink, {"x": torch.zeros(5, 8, dtype=torch.int32, device=DEVICE)}, "x dtype must be one of"),
    (SH, _shrink, {"x": torch.zeros(5, 8, 1, **FL)}, "x must be 2-D"),
    (SH, _shrink, {"x": torch.zeros(8, 5, **FL).t()}, "x must have stride 1"),
    (SH, _shrink, {"weights": torch.zeros(3, 8, 4, dtype=BF16, device=DEVICE)}, "weights dtype must be x's"),
    (SH, _shrink, {"weights": torch.zeros(3, 9, 4, **FL)}, r"weights must be \[S, K, N\] with K = x's 8"),
    (SH, _shrink, {"weights": torch.zeros(8, 4, **FL)}, "weights must be 3-D"),
    (SH, _shrink, {"weights": [[0.0]]}, "weights must be a torch.Tensor"),
    (SH, _shrink, {"seg_indptr": torch.tensor([0, 2, 5], dtype=torch.int64, device=DEVICE)}, "seg_indptr dtype"),
    (SH, _shrink, {"seg_indptr": torch.tensor([0, 0, 2, 2, 5], **I32)[::2]}, "seg_indptr must be contiguous"),
    (SH, _shrink, {"seg_indptr": torch.zeros(0, **I32), "weight_indices": torch.zeros(0, **I32)}, "num_segments"),
    (SH, _shrink, {"seg_indptr": torch.tensor([0, 2, 4], **I32)}, "seg_indptr must start at 0.*end at the row c"),
    (SH, _shrink, {"seg_indptr": torch.tensor([0, 3, 2, 5], **I32),
                   "weight_indices": torch.tensor([0, 0, 0], **I32)}, "seg_indptr must start at 0, never decrease"),
    (SH, _shrink, {"seg_indptr": torch.tensor([1, 2, 5], **I32)}, "seg_indptr must start at 0"),
    (SH, _shrink, {"weight_indices": torch.tensor([0, 3], **I32)}, r"weight_indices must be in \[-1, 3\)"),
    (SH, _shrink, {"weight_indices": torch.tensor([-2, 0], **I32)}, r"weight_indices must be in \[-1, 3\)"),
    (SH, _shrink, {"weight_indices": torch.tensor([0, 1, 2], **I32)}, r"weight_indices must have shape \(2,\)"),
    (SH, _shrink, {"weight_indices": torch.tensor([0.0, 1.0], **FL)}, "weight_indices dtype"),
    (SH, _shrink, {"max_seg_len": -1}, "max_seg_len must be an int >= 0"),
    (SH, _shrink, {"max_seg_len": True}, "max_seg_len must be an int >= 0"),
    (SH, _shrink, {"max_seg_len": 2.5}, "max_seg_len must be an int >= 0"),
    (SH, _shrink, {"seg_indptr": torch.tensor([0, 2, 5], dtype=torch.int32, device="meta")}, "on one device"),
    (EX, _expand, {"a": torch.zeros(5, 4, dtype=F16, device=DEVICE)}, "a dtype must be out's"),
    (EX, _expand, {"weights": torch.zeros(3, 4, 6, dtype=F16, device=DEVICE)}, "weights dtype must be out's"),
    (EX, _expand, {"a": torch.zeros(4, 4, **FL)}, "a must have out's 5 rows"),
    (EX, _expand, {"weights": torch.zeros(3, 5, 6, **FL)}, r"weights must be \[S, R, M\] with R = a's 4"),
    (EX, _expand, {"weights": torch.zeros(3, 4, 7, **FL)}, r"weights must be \[S, R, M\] .* M = out's 6"),
    (EX, _expand, {"out": torch.zeros(6, 5, **FL).t()}, "out must have stride 1"),
    (EX, _expand, {"out": torch.zeros(5, 6, dtype=torch.int64, device=DEVICE)}, "out dtype must be one of"),
    (EX, _expand, {"a": torch.zeros(4, 5, **FL).t()}, "a must have stride 1"),
    (EX, _expand, {"weight_indices": torch.tensor([3, 1], **I32)}, r"weight_indices must be in \[-1, 3\)"),
    (EX, _expand, {"seg_indptr": torch.tensor([0, 2, 6], **I32)}, "end at the row count 5"),
]  # fmt: skip


@pytest.mark.parametrize("fn, base, override, message", BAD_CALLS, ids=[m for *_, m in BAD_CALLS])
def test_sgmv_wrappers_reject_bad_arguments(fn: object, base: object, override: dict, message: str) -> None:
    assert callable(fn) and callable(base)
    with pytest.raises(ValueError, match=message):
        fn(**base(**override))


def test_sgmv_max_seg_len_skips_value_checks() -> None:
    """With max_seg_len the segment tensors are not read on the host; any bound, even 0, gives the reference."""
    gen = torch.Generator().manual_seed(5)
    indptr, indices = _segments([40, 3], [1, 0])  # hint 1: one 16-row program loops over segment 0's 3 blocks
    x, w = _randn(gen, 43, 8, dtype=F32), _randn(gen, 2, 8, 4, dtype=F32)
    want = sgmv_shrink_ref(x, w, indptr, indices)
    for hint in (0, 1, 6, 1000):
        _close(sgmv_shrink(x, w, indptr, indices, max_seg_len=hint), want)
    # without a hint the values are read and checked
    with pytest.raises(ValueError, match="weight_indices must be in"):
        sgmv_shrink(x, w, indptr, torch.tensor([1, 2], **I32))
