"""Triton kernels against their plain-torch references, the Triton attention backend against the torch one,
the wrappers' argument checks, and the benchmark's CPU-side logic.

Without CUDA the kernels run in the Triton interpreter on CPU tensors: ``radixgen.kernels`` sets
``TRITON_INTERPRET=1`` before importing triton when no CUDA device is present. With CUDA they run compiled.
Shapes are small by default (the interpreter is slow); ``RADIXGEN_SLOW_TESTS=1`` adds larger shapes and a
compile of every kernel for sm_90/sm_80/sm_86 (no GPU needed).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from shared_paths import REPO, load_benchmark

from radixgen.kernels import (
    INTERPRET,
    apply_token_bitmask_inplace,
    decode_attention_fwd,
    extend_attention_fwd,
)
from radixgen.kernels.reference import apply_token_bitmask_ref, decode_attention_ref, extend_attention_ref
from radixgen.radix.memory_pool import ReqToTokenPool, TokenSlotAllocator, TokenToKVPool
from radixgen.runtime.attention.base import AttentionLayer
from radixgen.runtime.attention.torch_backend import TorchAttentionBackend
from radixgen.runtime.attention.triton_backend import TritonAttentionBackend
from radixgen.runtime.forward_batch import ForwardBatch, ForwardMode

DEVICE = "cpu" if INTERPRET else "cuda"
SLOW = os.environ.get("RADIXGEN_SLOW_TESTS") == "1"
slow = pytest.mark.skipif(not SLOW, reason="larger shapes; set RADIXGEN_SLOW_TESTS=1 to run")
TOL = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOL[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def _attention_case(
    seed: int, prefix_lens: list[int], extend_lens: list[int], num_kv_heads: int, group: int, head_dim: int,
    dtype: torch.dtype, pool_dtype: torch.dtype | None = None,
) -> dict:  # fmt: skip
    """Random tensors for one ragged batch: prefixes at shuffled pool slots, req_to_token rows shuffled, q a
    strided view into a fused QKV projection (row stride != Hq * D)."""
    gen = torch.Generator().manual_seed(seed)
    bs, hq, d = len(prefix_lens), num_kv_heads * group, head_dim
    pool_dtype = pool_dtype or dtype
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens, strict=True)]
    num_slots = sum(seq_lens) + 8
    slots = torch.randperm(num_slots, generator=gen)[: sum(seq_lens)] + 1  # slot 0 is padding
    rows = torch.randperm(bs + 3, generator=gen)[:bs]
    req_to_token = torch.zeros((bs + 3, max(seq_lens, default=0) + 5), dtype=torch.int32)
    offsets = [0, *torch.tensor(seq_lens, dtype=torch.int64).cumsum(0).tolist()]
    for i, n in enumerate(seq_lens):
        req_to_token[rows[i], :n] = slots[offsets[i] : offsets[i] + n].to(torch.int32)
    t = sum(extend_lens)
    fused = torch.randn(t, (hq + 2 * num_kv_heads) * d, generator=gen).to(dtype)  # [T, (Hq+2Hkv)*D]
    q = fused[:, : hq * d].view(t, hq, d)  # [T, Hq, D], row stride (Hq+2Hkv)*D
    k = torch.randn(t, num_kv_heads, d, generator=gen).to(pool_dtype)
    v = torch.randn(t, num_kv_heads, d, generator=gen).to(pool_dtype)
    k_buffer = torch.randn(num_slots + 1, num_kv_heads, d, generator=gen).to(pool_dtype)
    v_buffer = torch.randn(num_slots + 1, num_kv_heads, d, generator=gen).to(pool_dtype)
    extend = torch.tensor(extend_lens, dtype=torch.int64)
    case = {
        "q": q, "k": k, "v": v, "k_buffer": k_buffer, "v_buffer": v_buffer, "req_to_token": req_to_token,
        "req_pool_indices": rows.to(torch.int64), "prefix_lens": torch.tensor(prefix_lens, dtype=torch.int64),
        "extend_lens": extend, "extend_start_loc": extend.cumsum(0) - extend,
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32),
    }  # fmt: skip
    return {name: x.to(DEVICE) for name, x in case.items()}


EXTEND_KEYS = ("q", "k", "v", "k_buffer", "v_buffer", "req_to_token", "req_pool_indices", "prefix_lens",
               "extend_lens", "extend_start_loc")  # fmt: skip
DECODE_KEYS = ("k_buffer", "v_buffer", "req_to_token", "req_pool_indices", "seq_lens")


def _random_lens(rng: random.Random, batch: int, longest: int) -> list[int]:
    """Lengths mixing the edge values 0 and 1 with random ones up to ``longest``."""
    return [rng.choice([0, 1, rng.randint(2, longest), rng.randint(2, longest)]) for _ in range(batch)]


# (dtype, head_dim, group, num_kv_heads): every GQA ratio in both dtypes, both head dims in each dtype.
F32, BF16 = torch.float32, torch.bfloat16
ATTN_CONFIGS = [
    (F32, 64, 1, 2), (F32, 128, 2, 1), (F32, 64, 4, 1), (F32, 128, 8, 1),
    (BF16, 128, 1, 2), (BF16, 64, 2, 2), (BF16, 128, 4, 1), (BF16, 64, 8, 1),
]  # fmt: skip


def _check_extend(
    seed: int, prefix: list[int], extend: list[int], cfg: tuple, pool: torch.dtype | None = None, **kw: int
) -> None:
    dtype, head_dim, group, num_kv_heads = cfg
    case = _attention_case(seed, prefix, extend, num_kv_heads, group, head_dim, dtype, pool)
    args = [case[k] for k in EXTEND_KEYS]
    out = extend_attention_fwd(*args, max_extend_len=max(extend, default=0), **kw)
    assert out.shape == case["q"].shape and out.dtype == dtype
    _assert_close(out, extend_attention_ref(*args))


@pytest.mark.parametrize("index", range(len(ATTN_CONFIGS)))
def test_extend_attention_matches_reference(index: int) -> None:
    rng = random.Random(1000 + index)
    batch = rng.randint(1, 4)
    prefix, extend = _random_lens(rng, batch, 40), _random_lens(rng, batch, 24)
    blocks = {"block_m": 16, "block_n": 16} if index % 2 else {}  # several tiles per request
    _check_extend(index, prefix, extend, ATTN_CONFIGS[index], **blocks)


def test_extend_attention_edge_lengths() -> None:
    # extend 0 and 1, prefix 0 and 1, a request longer than one tile, mixed dtypes (pool float32, q bfloat16)
    cfg = (torch.bfloat16, 64, 2, 1)
    _check_extend(7, [0, 1, 0, 1, 19], [1, 1, 0, 0, 37], cfg, torch.float32, block_m=16, block_n=16)
    _check_extend(8, [3], [0], cfg)  # no new token at all
    _check_extend(9, [], [], cfg)  # empty batch
    _check_extend(10, [5, 0], [9, 3], (torch.float16, 64, 4, 1))  # float16


def _check_decode(seed: int, seq_lens: list[int], cfg: tuple, **kw: int | None) -> None:
    dtype, head_dim, group, num_kv_heads = cfg
    case = _attention_case(seed, seq_lens, [0] * len(seq_lens), num_kv_heads, group, head_dim, dtype)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(len(seq_lens), num_kv_heads * group, head_dim, generator=gen).to(dtype).to(DEVICE)
    args = [q] + [case[k] for k in DECODE_KEYS]
    out = decode_attention_fwd(*args, **kw)
    assert out.shape == q.shape and out.dtype == dtype
    _assert_close(out, decode_attention_ref(*args))


@pytest.mark.parametrize("index", range(len(ATTN_CONFIGS)))
def test_decode_attention_matches_reference(index: int) -> None:
    rng = random.Random(2000 + index)
    seq_lens = [rng.choice([1, rng.randint(2, 150)]) for _ in range(rng.randint(1, 4))]
    splits = [None, 1, 2, 3, 5, None, 4, 7][index]
    group = ATTN_CONFIGS[index][2]
    block_h = max(group // 2, 1) if index % 3 == 1 else None  # several head blocks per KV head
    _check_decode(index, seq_lens, ATTN_CONFIGS[index], num_kv_splits=splits, block_h=block_h)


def test_decode_attention_edge_lengths() -> None:
    cfg = (torch.float32, 64, 4, 1)
    # seq_len 0 gives zeros; more splits than tiles leaves empty splits; one token
    _check_decode(11, [0, 1, 33, 2], cfg, num_kv_splits=6)
    _check_decode(12, [1], (torch.bfloat16, 128, 8, 1), num_kv_splits=1)
    _check_decode(13, [40, 7], (torch.float16, 128, 2, 2), num_kv_splits=2)  # float16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 1000, 2077])
def test_bitmask_matches_reference(dtype: torch.dtype, vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    batch, words = 5, (vocab + 31) // 32
    storage = torch.randn(batch, vocab + 7, generator=gen).to(dtype).to(DEVICE)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, words + 1), generator=gen, dtype=torch.int32)
    bitmask = bitmask.to(DEVICE)
    bitmask[0] = -1  # all allowed
    bitmask[1] = 0  # none allowed
    for indices in (None, torch.tensor([4, 1, 2], dtype=torch.int32, device=DEVICE)):
        for vocab_size in (None, max(vocab - 5, 0)):
            buf = storage.clone()  # apply to a view with row stride vocab + 7
            got = apply_token_bitmask_inplace(buf[:, :vocab], bitmask, indices, vocab_size)
            want = apply_token_bitmask_ref(storage[:, :vocab].clone(), bitmask, indices, vocab_size)
            torch.testing.assert_close(got, want, atol=0, rtol=0)
            assert torch.equal(buf[:, vocab:], storage[:, vocab:])
    masked = apply_token_bitmask_inplace(storage[:, :vocab].clone(), bitmask)
    assert torch.equal(masked[0], storage[0, :vocab]) and torch.isneginf(masked[1]).all()


class _World:
    """Pools, allocator and one attention backend: the state a model runner keeps."""

    def __init__(
        self, backend: object, dtype: torch.dtype, num_kv_heads: int, head_dim: int, kv_cache_dtype: str = "auto"
    ) -> None:
        self.backend = backend
        self.req_to_token_pool = ReqToTokenPool(8, 64, device=DEVICE)
        self.kv_pool = TokenToKVPool(256, 2, num_kv_heads, head_dim, dtype, DEVICE, kv_cache_dtype)
        self.allocator = TokenSlotAllocator(256, device=DEVICE)

    def batch(self, mode: ForwardMode, rows: list[int], prefix: list[int], extend: list[int]) -> ForwardBatch:
        loc = self.allocator.alloc(sum(extend))
        assert loc is not None
        table, start = self.req_to_token_pool.req_to_token, 0
        for row, p, e in zip(rows, prefix, extend, strict=True):  # what the scheduler writes before a forward
            table[row, p : p + e] = loc[start : start + e].to(torch.int32)
            start += e
        batch = ForwardBatch.build(mode, [0] * sum(extend), rows, prefix, extend, loc, self.req_to_token_pool,
                                   self.kv_pool, self.backend)  # fmt: skip
        self.backend.init_forward_metadata(batch)
        return batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_backend_matches_torch_backend(dtype: torch.dtype) -> None:
    check_backends_match(dtype)


def check_backends_match(dtype: torch.dtype, kv_cache_dtype: str = "auto") -> None:
    """The Triton backend's outputs match the torch backend's over extends (chunked, prefix hit) and decodes, and
    both leave the same K/V (and scales) in their pools; also run for quantized KV (test_kv_cache_quant.py)."""
    hkv, d = 2, 64
    layers = [AttentionLayer(0, 8, hkv, d, d**-0.5), AttentionLayer(1, 2, hkv, d, 0.3)]  # GQA 4, then MHA
    worlds = [_World(backend, dtype, hkv, d, kv_cache_dtype) for backend in (TritonAttentionBackend(),
              TorchAttentionBackend())]  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    steps = [
        (ForwardMode.EXTEND, [5, 2], [0, 0], [13, 1]),  # two prompts, no cache
        (ForwardMode.EXTEND, [5, 2, 3], [13, 1, 0], [6, 0, 4]),  # chunked prefill, an idle row, a new prompt
        (ForwardMode.EXTEND, [1], [9], [5]),  # prefix hit: row 1 shares row 5's first 9 slots (set below)
        (ForwardMode.DECODE, [5, 2, 3, 1], [19, 1, 4, 14], [1, 1, 1, 1]),
        (ForwardMode.DECODE, [5, 2, 3, 1], [20, 2, 5, 15], [1, 1, 1, 1]),
    ]
    for step, (mode, rows, prefix, extend) in enumerate(steps):
        if step == 2:
            for w in worlds:
                table = w.req_to_token_pool.req_to_token
                table[1, :9] = table[5, :9]
        batches = [w.batch(mode, rows, prefix, extend) for w in worlds]
        t = sum(extend)
        for layer in layers:
            q = torch.randn(t, layer.num_heads * d, generator=gen).to(dtype).to(DEVICE)
            k = torch.randn(t, hkv * d, generator=gen).to(dtype).to(DEVICE)
            v = torch.randn(t, hkv * d, generator=gen).to(dtype).to(DEVICE)
            got, want = (w.backend.forward(q, k, v, layer, b) for w, b in zip(worlds, batches, strict=True))
            assert got.shape == (t, layer.num_heads * d) and got.dtype == dtype
            _assert_close(got, want)
    # the slots the forwards wrote (never-written slots of a lazily allocated pool hold arbitrary bytes)
    written = torch.arange(1, 1 + sum(sum(e) for *_, e in steps))
    assert worlds[0].allocator.available_size() == 256 - written.numel()
    for layer_id in range(2):
        pools = [w.kv_pool for w in worlds]
        for a, b in zip(pools[0].get_kv_buffer(layer_id), pools[1].get_kv_buffer(layer_id), strict=True):
            assert torch.equal(a[written].view(torch.uint8), b[written].view(torch.uint8))  # float8: compare bits
        for a, b in zip(pools[0].get_kv_scales(layer_id), pools[1].get_kv_scales(layer_id), strict=True):
            if a is None or b is None:
                assert a is None and b is None
            else:  # int8: per slot and head; fp8: 0-d per layer
                assert torch.equal(a, b) if a.dim() == 0 else torch.equal(a[written], b[written])


def _ext(**over: object) -> dict:
    case = _attention_case(0, [2, 3], [3, 1], 2, 2, 64, torch.float32)
    kwargs = {k: case[k] for k in EXTEND_KEYS} | {"max_extend_len": 3}
    return kwargs | over


def _dec(**over: object) -> dict:
    case = _attention_case(0, [2, 3], [0, 0], 2, 2, 64, torch.float32)
    kwargs = {k: case[k] for k in DECODE_KEYS} | {"q": torch.randn(2, 4, 64, device=DEVICE)}
    return kwargs | over


def _bit(**over: object) -> dict:
    kwargs = {"logits": torch.zeros(3, 70, device=DEVICE), "bitmask": torch.zeros(3, 3, dtype=torch.int32,
              device=DEVICE)}  # fmt: skip
    return kwargs | over


FL = {"device": DEVICE}
I32 = {"device": DEVICE, "dtype": torch.int32}
I64 = {"device": DEVICE, "dtype": torch.int64}
EXT, DEC, BIT = extend_attention_fwd, decode_attention_fwd, apply_token_bitmask_inplace
BAD_CALLS = [
    (EXT, _ext, {"q": torch.zeros(4, 256, **FL)}, "q must be 3-D"),
    (EXT, _ext, {"q": torch.zeros(4, 4, 64, **I32)}, "q dtype must be one of"),
    (EXT, _ext, {"q": torch.zeros(4, 3, 64, **FL)}, "multiple of k heads"),
    (EXT, _ext, {"k": torch.zeros(5, 2, 64, **FL)}, r"k must have shape \(4, 2, 64\)"),
    (EXT, _ext, {"q": torch.zeros(4, 64, 4, **FL).transpose(1, 2)}, "stride 1"),
    (EXT, _ext, {"req_to_token": torch.zeros(4, 9, **I64)}, "req_to_token dtype"),
    (EXT, _ext, {"prefix_lens": torch.zeros(3, **I32)}, "prefix_lens must have shape"),
    (EXT, _ext, {"extend_lens": torch.zeros(4, **I32)[::2]}, "must be contiguous"),
    (EXT, _ext, {"max_extend_len": -1}, "max_extend_len"),
    (EXT, _ext, {"block_m": 24}, "block_m must be a power of two"),
    (EXT, _ext, {"out": torch.zeros(4, 4, 32, **FL)}, "out must have shape"),
    (EXT, _ext, {"k_buffer": torch.zeros(9, 2, 32, **FL), "v_buffer": torch.zeros(9, 2, 32, **FL)},
     "k_buffer must be"),
    (EXT, _ext, {"out": torch.zeros(4, 4, 64, device="meta")}, "on one device"),
    (DEC, _dec, {"q": torch.zeros(2, 4, 512, **FL)}, "head_dim must be in"),
    (DEC, _dec, {"num_kv_splits": 0}, "num_kv_splits must be"),
    (DEC, _dec, {"num_kv_splits": 65}, "num_kv_splits must be"),
    (DEC, _dec, {"seq_lens": torch.zeros(2, 1, **I32)}, "seq_lens must be 1-D"),
    (DEC, _dec, {"seq_lens": torch.zeros(2, device=DEVICE)}, "seq_lens dtype"),
    (DEC, _dec, {"block_h": 3}, "block_h must be a power of two"),
    (DEC, _dec, {"v_buffer": torch.zeros(3, 2, 64, **FL)}, "v_buffer must have shape"),
    (DEC, _dec, {"k_buffer": [1.0]}, "k_buffer must be a torch.Tensor"),
    (BIT, _bit, {"bitmask": torch.zeros(3, 3, **I64)}, "bitmask dtype"),
    (BIT, _bit, {"bitmask": torch.zeros(3, 2, **I32)}, "needs 3"),
    (BIT, _bit, {"bitmask": torch.zeros(2, 3, **I32)}, "rows"),
    (BIT, _bit, {"vocab_size": 71}, "vocab_size must be"),
    (BIT, _bit, {"indices": torch.zeros(1, 2, **I32)}, "indices must be 1-D"),
    (BIT, _bit, {"logits": torch.zeros(3, 70, **I32)}, "logits dtype"),
]  # fmt: skip


@pytest.mark.parametrize("fn, base, override, message", BAD_CALLS, ids=[m for *_, m in BAD_CALLS])
def test_wrappers_reject_bad_arguments(
    fn: Callable[..., object], base: Callable[..., dict], override: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fn(**base(**override))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only mode selection")
def test_interpreter_mode_selection() -> None:
    """triton imported first (compiled mode): importing the kernels still works (transformers may import a
    top-level ``kernels`` module while probing), INTERPRET is False, and a kernel call on CPU tensors says to
    set TRITON_INTERPRET=1. The same holds for an explicit TRITON_INTERPRET=0."""
    script = (
        "import triton, torch\n"
        "import radixgen.kernels as K\nprint('INTERPRET', K.INTERPRET)\n"
        "try:\n    K.apply_token_bitmask_inplace(torch.zeros(1, 4), torch.zeros(1, 1, dtype=torch.int32))\n"
        "except ValueError as e:\n    print('VALUE', 'set TRITON_INTERPRET=1' in str(e))\n"
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.split("\n")[:2] == ["INTERPRET False", "VALUE True"], res.stderr
    res = subprocess.run(
        [sys.executable, "-c", script.replace("import triton, torch", "import torch")],
        env={**env, "TRITON_INTERPRET": "0"}, capture_output=True, text=True, timeout=120,
    )
    assert res.stdout.split("\n")[:2] == ["INTERPRET False", "VALUE True"], res.stderr


def _bench_module() -> ModuleType:
    return load_benchmark("bench_kernels")


def test_bench_formulas_and_no_gpu_exit(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench_module()
    shape = bench.AttnShape(batch=2, prefix=3, extend=4, num_heads=4, num_kv_heads=2, head_dim=8)
    # (query, key) pairs one request attends to: queries at positions 3..6 over keys 0..6, causally
    visible = (torch.arange(7)[None, :] <= torch.arange(3, 7)[:, None]).sum().item()
    assert bench.attention_flops(shape) == 4 * 2 * 4 * 8 * visible
    decode = bench.AttnShape(batch=64, prefix=4096, extend=0)
    kv_bytes = 2 * 64 * 4096 * 8 * 128 * 2
    assert kv_bytes < bench.decode_bytes(decode, 2) < 1.01 * kv_bytes
    assert bench.copy_bytes(10, 2) == 40 and bench.bitmask_bytes(2, 33, 4) == 2 * (8 + 132)
    if not torch.cuda.is_available():
        assert bench.main(["--out", os.devnull]) == 1
        assert bench.main(["--out", os.devnull, "--allow-no-gpu"]) == 0
        assert "CUDA GPU is required" in capsys.readouterr().err


@slow
@pytest.mark.parametrize("index", range(len(ATTN_CONFIGS)))
def test_attention_larger_shapes(index: int) -> None:
    rng = random.Random(3000 + index)
    batch = rng.randint(3, 6)
    _check_extend(index, _random_lens(rng, batch, 300), _random_lens(rng, batch, 160), ATTN_CONFIGS[index])
    _check_decode(index, [rng.randint(1, 1500) for _ in range(batch)], ATTN_CONFIGS[index])


@slow
def test_bitmask_large_vocab() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 128256, generator=gen).to(DEVICE)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (16, 4008), generator=gen, dtype=torch.int32).to(DEVICE)
    indices = torch.tensor([15, 0, 7], device=DEVICE)
    got = apply_token_bitmask_inplace(logits.clone(), bitmask, indices)
    assert torch.equal(got, apply_token_bitmask_ref(logits.clone(), bitmask, indices))


@slow
def test_kernels_compile_for_cuda_targets() -> None:
    """Every kernel lowers to a cubin for sm_90, sm_80 and sm_86 within shared memory (no GPU needed)."""
    script = str(REPO / "benchmarks" / "bench_kernels.py")
    cmd = [sys.executable, script, "--compile-only", "--arch", "90", "80", "86"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
