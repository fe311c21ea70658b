"""radixgen's CPU kernels (runtime/cpu): each against its torch reference, and the attention backend's kernel path
against its torch paths. End to end, every model test on the CPU runs them too (they are the default there):
test_model_numerics compares the whole model with transformers, test_engine the golden stories260K text."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from shared_paths import STORIES

from radixgen.radix import ReqToTokenPool, TokenToKVPool
from radixgen.runtime import Engine
from radixgen.runtime.attention import TorchAttentionBackend
from radixgen.runtime.attention.base import AttentionLayer
from radixgen.runtime.cpu import ops
from radixgen.runtime.forward_batch import ForwardBatch, ForwardMode
from radixgen.runtime.models.llama import RMSNorm
from radixgen.runtime.models.rope import RotaryEmbedding, apply_rotary

_FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
_BUILDABLE = all(f in _FLAGS.split() for f in ("avx512f", "avx512bw", "avx512vl")) and shutil.which("cc")
needs_kernels = pytest.mark.skipif(not ops.available(), reason="CPU kernels unavailable (no AVX-512 or compiler)")


def test_kernels_build_where_they_can() -> None:
    """On a CPU with AVX-512 and a C compiler (this project's machines) the kernels must build: a broken build
    would otherwise only show as slower steps."""
    assert ops.available() == bool(_BUILDABLE)


def _reference_attention(q, k_pool, v_pool, table, rows, kv_lens, scale):
    """Per query token, SDPA in float32 over its request's first kv_len slots: ``[T, Hq, D]`` float32."""
    hq, hkv = q.shape[1], k_pool.shape[1]
    out = []
    for t in range(q.shape[0]):
        slots = table[rows[t], : kv_lens[t]].long()
        k = k_pool[slots].float().transpose(0, 1)  # [Hkv, L, D]
        v = v_pool[slots].float().transpose(0, 1)
        qt = q[t].float().view(hkv, hq // hkv, -1)  # [Hkv, G, D]
        out.append(F.scaled_dot_product_attention(qt, k, v, scale=scale).reshape(hq, -1))
    return torch.stack(out)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("hq", "hkv", "d"), [(8, 4, 64), (4, 4, 8), (6, 2, 24), (40, 2, 128), (2, 1, 256)])
def test_paged_attention_matches_sdpa(dtype: torch.dtype, hq: int, hkv: int, d: int) -> None:
    """GQA group sizes 1..20 (over the kernel's 16-head chunk), head dims with a masked tail (8, 24) and without,
    lengths 1, within one 32-position block and across several, slots scattered over the pool, strided q rows."""
    gen = torch.Generator().manual_seed(hq * d)
    slots_total, rows_total, ctx = 3000, 6, 300
    k_pool = torch.randn(slots_total, hkv, d, generator=gen).to(dtype)
    v_pool = torch.randn(slots_total, hkv, d, generator=gen).to(dtype)
    table = torch.randint(1, slots_total, (rows_total, ctx), generator=gen, dtype=torch.int32)
    rows = torch.tensor([0, 3, 3, 3, 5, 1, 2])
    kv_lens = torch.tensor([1, 31, 32, 33, 100, 300, 7])
    wide = torch.randn(len(rows), hq * d + 16, generator=gen).to(dtype)  # rows hq * d + 16 elements apart
    q = wide[:, : hq * d].view(len(rows), hq, d)
    got = ops.paged_attention(q, k_pool, v_pool, table, rows, kv_lens, d**-0.5)
    want = _reference_attention(q, k_pool, v_pool, table, rows, kv_lens, d**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bfloat16: the output's rounding
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    assert got.dtype == dtype and got.is_contiguous()


@needs_kernels
def test_paged_attention_bad_input_names_the_argument() -> None:
    k_pool = torch.zeros(10, 2, 8)
    table = torch.zeros(2, 4, dtype=torch.int32)
    rows, lens = torch.tensor([0]), torch.tensor([1])
    with pytest.raises(ValueError, match="req_to_token"):
        ops.paged_attention(torch.zeros(1, 2, 8), k_pool, k_pool, table.long(), rows, lens, 1.0)
    with pytest.raises(ValueError, match="q"):
        ops.paged_attention(torch.zeros(1, 2, 8, dtype=torch.float16), k_pool, k_pool, table, rows, lens, 1.0)
    with pytest.raises(ValueError, match="kv_lens"):
        ops.paged_attention(torch.zeros(1, 2, 8), k_pool, k_pool, table, rows, torch.tensor([1, 1]), 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        ops.paged_attention(torch.zeros(1, 8, 2).transpose(1, 2), k_pool, k_pool, table, rows, lens, 1.0)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_matches_module(dtype: torch.dtype, residual: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    norm = RMSNorm(200, 1e-5, dtype)
    norm.weight.data = torch.randn(200, generator=gen).to(dtype)
    x = (torch.randn(37, 208, generator=gen) * 3).to(dtype)[:, :200]  # strided rows
    res = torch.randn(37, 200, generator=gen).to(dtype)
    res_kernel = res.clone()
    if residual:
        got = ops.rms_norm(x, norm.weight, norm.eps, residual=res_kernel)
        summed = x + res  # the torch path's residual add, in the dtype
        torch.testing.assert_close(res_kernel, summed, atol=0, rtol=0)
        want = norm(summed)
    else:
        got = ops.rms_norm(x, norm.weight, norm.eps)
        want = norm(x)
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bfloat16: one rounding step either side
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    if dtype == torch.bfloat16:  # almost everywhere the same bfloat16 value, not just close
        assert (got != want).float().mean() < 0.01


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_inplace_matches_apply_rotary(dtype: torch.dtype) -> None:
    hq, hkv, d = 6, 2, 32
    rope = RotaryEmbedding(d, 512, 10000.0)
    gen = torch.Generator().manual_seed(2)
    positions = torch.tensor([0, 1, 17, 511, 300])
    qkv = torch.randn(5, (hq + 2 * hkv) * d, generator=gen).to(dtype)
    cos, sin = rope.cos_sin(positions, dtype)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    want_q, want_k, want_v = apply_rotary(q, cos, sin, d), apply_rotary(k, cos, sin, d), v.clone()
    ops.rotary_inplace(qkv, positions, rope.cos_sin_cache, hq, hkv, d)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(q.float(), want_q.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(k.float(), want_k.float(), atol=tol, rtol=tol)
    assert torch.equal(v, want_v)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_matches_torch(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    gate_up = (torch.randn(19, 2 * 75 + 5, generator=gen) * 6).to(dtype)[:, : 2 * 75]  # odd width, strided rows
    gate, up = gate_up.chunk(2, dim=-1)
    want = F.silu(gate) * up
    got = ops.silu_and_mul(gate_up)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def _batch(backend, mode, rows, prefix, extend, req_pool, pool):
    table = req_pool.req_to_token
    loc = torch.cat([table[r, p : p + e] for r, p, e in zip(rows, prefix, extend, strict=True)]).long()
    return ForwardBatch.build(mode, [0] * sum(extend), rows, prefix, extend, loc, req_pool, pool, backend)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_kernel_path_matches_torch_paths(dtype: torch.dtype) -> None:
    """A speculative-verify-sized extend (kernel), a decode step (kernel), a long extend (SDPA either way): the
    kernel backend's outputs and pool contents equal the torch-only backend's."""
    hkv, d = 2, 16
    layer = AttentionLayer(0, 4, hkv, d, d**-0.5)
    worlds = []
    slots = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:180].view(3, 60).to(torch.int32) + 1
    for use in (True, False):
        req_pool = ReqToTokenPool(4, 64)
        pool = TokenToKVPool(200, 1, hkv, d, dtype)
        for buf in (*pool.k_buffer, *pool.v_buffer):  # the dense copy reads (masked) slots past each sequence
            buf.zero_()
        req_pool.req_to_token[:3, :60] = slots
        worlds.append((TorchAttentionBackend(1 << 20, cpu_kernel=use), req_pool, pool))
    steps = [
        (ForwardMode.EXTEND, [0, 1], [0, 0], [20, 12]),  # prompts: long extend, SDPA
        (ForwardMode.EXTEND, [0, 1], [20, 12], [5, 3]),  # verify-sized: the kernel
        (ForwardMode.DECODE, [0, 1], [25, 15], [1, 1]),
        (ForwardMode.DECODE, [0, 1], [26, 16], [1, 1]),
    ]
    gen = torch.Generator().manual_seed(4)
    for mode, rows, prefix, extend in steps:
        n = sum(extend)
        q, k, v = (
            torch.randn(n, 4 * d, generator=gen),
            torch.randn(n, hkv * d, generator=gen),
            torch.randn(n, hkv * d, generator=gen),
        )
        outs = []
        for backend, req_pool, pool in worlds:
            batch = _batch(backend, mode, rows, prefix, extend, req_pool, pool)
            backend.init_forward_metadata(batch)
            kernel = "paged" in batch.metadata
            assert kernel == (backend.allow_cpu_kernel and max(extend) <= 8), (mode, extend)
            outs.append(backend.forward(q.to(dtype), k.to(dtype), v.to(dtype), layer, batch).float())
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(outs[0], outs[1], atol=tol, rtol=tol)
    written = torch.cat([slots[0, :27], slots[1, :17]]).long()
    for kind in ("k_buffer", "v_buffer"):
        assert torch.equal(getattr(worlds[0][2], kind)[0][written], getattr(worlds[1][2], kind)[0][written])


@needs_kernels
@pytest.mark.parametrize("tokens", [1, 2, 3, 5, 16, 32])
@pytest.mark.parametrize(("n", "k"), [(7, 64), (130, 172), (67, 520)])
def test_float32_row_kernel_matches_matmul(tokens: int, n: int, k: int) -> None:
    """The fused loop's float32 GEMM (register tiles of 8 x T or 4 x 4 rows, partial tiles, a K tail that is not a
    multiple of 16) against ``x @ W^T``."""
    from radixgen.runtime.cpu.build import load_library

    gen = torch.Generator().manual_seed(tokens * 1000 + n)
    x, w = torch.randn(tokens, k, generator=gen), torch.randn(n, k, generator=gen)
    y, argmax = torch.full((tokens, n), float("nan")), torch.full((tokens,), -7, dtype=torch.int64)
    lib = load_library()
    assert lib is not None
    took = lib.radixgen_linear_rows_f32(x.data_ptr(), tokens, k, w.data_ptr(), n, y.data_ptr(), argmax.data_ptr())
    torch.testing.assert_close(y, x @ w.t(), atol=1e-4, rtol=1e-5)
    assert took == (tokens <= 16)  # the argmax in passing, up to 16 rows
    assert torch.equal(argmax, torch.max(y, dim=-1).indices if took else torch.full_like(argmax, -7))


@needs_kernels
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 6, 8, 9])
@pytest.mark.parametrize(("n", "k"), [(7, 64), (130, 176), (67, 520)])
def test_bfloat16_product_matches_matmul(tokens: int, n: int, k: int) -> None:
    """The fused loop's bfloat16 product (its own vdpbf16ps kernel up to 8 rows in 4-row token tiles, MKL above; K
    tails, partial 8-row tiles) against the float32 product of the same bfloat16 values, rounded to bfloat16 as
    the loop rounds."""
    from radixgen.runtime.cpu.build import load_library
    from radixgen.runtime.cpu.llama_layers import mkl_gemm_address

    gemm = mkl_gemm_address(torch.bfloat16)
    if gemm is None:
        pytest.skip("this torch build has no MKL bfloat16 GEMM")
    gen = torch.Generator().manual_seed(tokens * 1000 + n)
    x, w = torch.randn(tokens, k, generator=gen).bfloat16(), torch.randn(n, k, generator=gen).bfloat16()
    y, argmax = torch.full((tokens, n), float("nan")), torch.full((tokens,), -7, dtype=torch.int64)
    lib = load_library()
    assert lib is not None
    took = lib.radixgen_linear_bf16(gemm, x.data_ptr(), tokens, k, w.data_ptr(), n, y.data_ptr(), argmax.data_ptr())
    ref = (x.float() @ w.float().t()).bfloat16().float()
    torch.testing.assert_close(y, ref, atol=1e-2, rtol=8e-3)  # one bfloat16 rounding step either way
    assert took  # the argmax of the rounded logits, up to 16 rows
    assert torch.equal(argmax, torch.max(y, dim=-1).indices)


@needs_kernels
@pytest.mark.parametrize(("rows", "vocab"), [(1, 32000), (3, 17), (20, 1000), (2, 16)])
def test_argmax_rows_matches_torch_max(rows: int, vocab: int) -> None:
    """Greedy sampling's argmax kernel equals ``torch.max(dim=-1).indices``: first index on ties (within a vector
    and across vectors and the tail), a row's first NaN, all -inf, rows run in parallel from 16 on."""
    gen = torch.Generator().manual_seed(rows * vocab)
    x = torch.randn(rows, vocab, generator=gen)
    top = x[0].max() + 1
    x[0, vocab // 3], x[0, vocab - 1] = top, top  # a tie: the first wins
    if rows > 1:
        x[1, 5], x[1, vocab - 2] = float("nan"), float("nan")
    if rows > 2:
        x[2] = float("-inf")
    got = ops.argmax_rows(x)
    assert got.dtype == torch.int64 and torch.equal(got, torch.max(x, dim=-1).indices)
    with pytest.raises(ValueError, match="argmax_rows: x must be a CPU torch.float32"):
        ops.argmax_rows(x.double())


@needs_kernels
@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 47, 256, 1000, 4099])
def test_argmax_rows_ties_everywhere(vocab: int) -> None:
    """Rows of a few distinct values (ties within lanes, across lanes and in the tail; -0.0 beside 0.0; NaN at
    random places): the kernel's one pass keeps torch.max's first occurrence."""
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randint(-2, 3, (64, vocab), generator=gen).float()  # [64, vocab], values -2..2
    x[x == 0] = torch.where(torch.rand(int((x == 0).sum()), generator=gen) < 0.5, -0.0, 0.0)
    x[7] = float("-inf")
    for r in range(40, 64):
        x[r, int(torch.randint(0, vocab, (1,), generator=gen))] = float("nan")
    for rows in (x[:1], x[:20], x):  # one row, and the parallel path from 16 rows on
        assert torch.equal(ops.argmax_rows(rows.contiguous()), torch.max(rows, dim=-1).indices)


@needs_kernels
@pytest.mark.parametrize("vnni", [True, False])
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 5, 16, 33])
@pytest.mark.parametrize(("n", "k"), [(7, 64), (130, 172), (67, 520)])
def test_w8a8_kernel_matches_int_mm(vnni: bool, tokens: int, n: int, k: int) -> None:
    """The fused loop's int8 x int8 kernel gives the module path's result (``W8A8Int8Linear``: per-token activation
    quantization, ``torch._int_mm``) to the bit — with VNNI's vpdpbusd and, built with ``-mno-avx512vnni``, with
    the AVX512-BW path of CPUs without VNNI: partial 4 x 4 tiles, K padded to 64, an activation outlier, a zero
    row; and it adds to y when accumulating (the residual adds)."""
    from radixgen.runtime.cpu.build import build_library
    from radixgen.runtime.models.linear import W8A8Int8Linear

    lib = build_library(() if vnni else ("-mno-avx512vnni",))
    assert lib is not None
    gen = torch.Generator().manual_seed(tokens * 1000 + n)
    lin = W8A8Int8Linear(torch.randn(n, k, generator=gen) * 0.05, None)
    x = torch.randn(tokens, k, generator=gen)
    x[0, k // 2] = 50.0
    if tokens > 2:
        x[2] = 0.0
    scales, quantized = torch.empty(tokens), torch.empty((tokens, k + lin.k_pad), dtype=torch.uint8)
    ref = lin(x)
    for accumulate, y in ((0, torch.full((tokens, n), float("nan"))), (1, torch.ones(tokens, n))):
        argmax = torch.full((tokens,), -7, dtype=torch.int64)
        took = lib.radixgen_linear_w8a8(
            x.data_ptr(), tokens, k, lin.qdata.data_ptr(), lin.scale.data_ptr(), lin.compensation.data_ptr(), n,
            accumulate, y.data_ptr(), quantized.data_ptr(), scales.data_ptr(), argmax.data_ptr(),
        )  # fmt: skip
        assert torch.equal(y, ref + accumulate), accumulate
        # the argmax in passing: from a fresh output (not accumulating) of at most 16 rows
        assert took == (not accumulate and tokens <= 16)
        assert torch.equal(argmax, torch.max(y, dim=-1).indices if took else torch.full_like(argmax, -7))


@needs_kernels
@pytest.mark.parametrize("tokens", [1, 2, 5, 16])
@pytest.mark.parametrize("head", ["w8a8", "float32", "bfloat16"])
def test_head_kernels_argmax_keeps_torch_max_ties_and_nan(head: str, tokens: int) -> None:
    """The LM head's argmax in passing (``FusedLlamaLayers.logits`` / ``logits_int8``) is ``torch.max``'s index of
    the logits the kernel returns when threads split the vocabulary: three copies of every weight row make each
    maximum appear three times, 67 rows apart across the threads' tasks (the first copy wins), and NaN columns (a
    NaN scale or weight row) give the first NaN's index."""
    from radixgen.runtime.cpu.build import load_library
    from radixgen.runtime.cpu.llama_layers import mkl_gemm_address
    from radixgen.runtime.models.linear import W8A8Int8Linear

    lib = load_library()
    assert lib is not None
    gen = torch.Generator().manual_seed(tokens)
    weight = torch.randn(67, 520, generator=gen) * 0.05
    weight = torch.cat([weight, weight, weight])  # [201, 520]: 201 x 520 x T products run threaded
    x = torch.randn(tokens, 520, generator=gen)
    for nan_cols in ([], [150, 20]):
        y, argmax = torch.empty(tokens, 201), torch.empty(tokens, dtype=torch.int64)
        if head == "w8a8":
            lin = W8A8Int8Linear(weight, None)
            lin.scale[nan_cols] = float("nan")
            scales, quantized = torch.empty(tokens), torch.empty((tokens, 520 + lin.k_pad), dtype=torch.uint8)
            took = lib.radixgen_linear_w8a8(
                x.data_ptr(), tokens, 520, lin.qdata.data_ptr(), lin.scale.data_ptr(), lin.compensation.data_ptr(),
                201, 0, y.data_ptr(), quantized.data_ptr(), scales.data_ptr(), argmax.data_ptr(),
            )  # fmt: skip
        else:
            w = weight.clone()
            w[nan_cols] = float("nan")
            if head == "float32":
                took = lib.radixgen_linear_rows_f32(
                    x.data_ptr(), tokens, 520, w.data_ptr(), 201, y.data_ptr(), argmax.data_ptr()
                )
            else:
                gemm = mkl_gemm_address(torch.bfloat16)
                if gemm is None:
                    pytest.skip("this torch build has no MKL bfloat16 GEMM")
                xb, wb = x.bfloat16(), w.bfloat16()
                took = lib.radixgen_linear_bf16(gemm, xb.data_ptr(), tokens, 520,
                                                wb.data_ptr(), 201, y.data_ptr(), argmax.data_ptr())  # fmt: skip
        assert took
        expected = torch.max(y, dim=-1).indices
        assert torch.equal(argmax, expected), (argmax, expected)
        assert bool((argmax < 67).all()) if not nan_cols else bool((argmax == 20).all())


@needs_kernels
@pytest.mark.parametrize(
    ("dtype", "quant"),
    [(torch.float32, None), (torch.bfloat16, None), (torch.float32, "int8wo"), (torch.float32, "w8a8_int8")],
)
@pytest.mark.parametrize("model_name", ["stories260k", "bench_40m"])
def test_fused_layer_loop_matches_module_path(model_name: str, dtype: torch.dtype, quant: str | None) -> None:
    """The native layer loop (decode steps and verify-sized extends) against the torch-only module path on the
    same weights: a batched prompt, a 4-token extend per request, then decode steps; logits, and float32's greedy
    tokens. bfloat16 rounds where the module path rounds, so only float32 summation order differs — enough to move
    a logit by its last bit (0.125 at 16) and to flip near-ties, so its decode steps are teacher-forced."""
    from model_harness import KVHarness
    from shared_paths import BENCH_40M

    from radixgen.runtime.models import ModelConfig, load_model
    from radixgen.runtime.models.quant_config import QuantizationConfig

    path, fmt = (STORIES, "auto") if model_name == "stories260k" else (BENCH_40M, "dummy")
    cfg = ModelConfig.from_pretrained(path)
    runs = []
    for native in (True, False):
        quantization = None if quant is None else QuantizationConfig.parse(quant, quantize_lm_head=True)
        model = load_model(cfg, dtype=dtype, load_format=fmt, seed=0, quantization=quantization)
        if native:
            assert model.fused_layers is not None and model.fused_layers.int8 == (quant is not None)
        else:
            model._use_fused_cpu_ops(False)
        harness = KVHarness(model, backend=TorchAttentionBackend(cpu_kernel=native))
        rows = [harness.new_request(), harness.new_request()]
        logits = [harness.extend(rows, [[1, 5, 9, 12, 40, 7], [1, 3]])]
        logits.append(harness.extend(rows, [[4, 8, 15, 16], [23, 42, 2, 9]]))  # a speculative verify's shape
        tokens = logits[-1].view(2, 4, -1)[:, -1].argmax(-1).tolist()
        for step in range(6):
            forced = dtype == torch.bfloat16 or quant is not None
            logits.append(harness.decode(rows, [10 + step, 30 + step] if forced else tokens))
            tokens = logits[-1].argmax(-1).tolist()
        runs.append((torch.cat(logits), tokens))
    exact = dtype == torch.float32 and quant is None
    atol, rtol = (2e-5, 1e-5) if exact else (0.15, 0.02)  # else: a bfloat16 rounding step either way
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=atol, rtol=rtol)
    if exact:
        assert runs[0][1] == runs[1][1]


@needs_kernels
def test_fused_layer_loop_rejects_token_ids_outside_the_vocabulary() -> None:
    """The loop reads embedding rows by address: an id outside [0, vocab) is a ValueError naming input_ids before
    anything runs (never a read past the table), and the model keeps serving other requests."""
    from model_harness import KVHarness

    from radixgen.runtime.models import ModelConfig, load_model

    cfg = ModelConfig.from_pretrained(STORIES)
    model = load_model(cfg, dtype=torch.float32, load_format="auto", seed=0)
    assert model.fused_layers is not None
    harness = KVHarness(model, backend=TorchAttentionBackend(cpu_kernel=True))
    for bad in (cfg.vocab_size, -1):
        with pytest.raises(ValueError, match="^input_ids: token ids must be in"):
            harness.decode([harness.new_request()], [bad])
    rows = [harness.new_request()]
    assert harness.extend(rows, [[1, 5, 9]]).isfinite().all()
    assert harness.decode(rows, [12]).isfinite().all()


@needs_kernels
def test_fused_layer_loop_writes_the_pool_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each KV pool the loop is given gets its K/V writes and is what attention reads, also where a pool has the
    id() of one freed before it (as here for every pool: ``id`` is patched to a constant in the loop's module).
    The loop caches each pool's buffer addresses by the pool object: an id-keyed cache once wrote a test's K/V into
    a freed pool's memory now and then (test_model_numerics' batched-vs-alone test, about 1 run in 200)."""
    from model_harness import KVHarness

    from radixgen.runtime.cpu import llama_layers
    from radixgen.runtime.models import ModelConfig, load_model

    monkeypatch.setattr(llama_layers, "id", lambda obj: 0, raising=False)
    model = load_model(ModelConfig.from_pretrained(STORIES), dtype=torch.float32, load_format="auto", seed=0)
    assert model.fused_layers is not None
    harnesses = [KVHarness(model, backend=TorchAttentionBackend(cpu_kernel=True)) for _ in range(2)]
    expected = None
    for step in range(4):
        harness = harnesses[step % 2]
        buffers = harness.kv_pool.k_buffer + harness.kv_pool.v_buffer
        for buf in buffers:
            buf.fill_(float("nan"))  # a slot the loop did not write reads as NaN
        row = harness.new_request()
        logits = torch.cat([harness.extend([row], [[1, 5, 9]]), harness.decode([row], [12])])  # [4, vocab]
        slots = harness.req_pool.req_to_token[row, :4].long()
        assert all(bool(buf[slots].isfinite().all()) for buf in buffers), "the loop wrote K/V elsewhere"
        expected = logits if expected is None else expected
        torch.testing.assert_close(logits, expected, atol=0, rtol=0)


@needs_kernels
def test_decode_staging_reuses_vectors_and_plan_with_the_same_logits() -> None:
    """Decode steps built in a DecodeStaging (as a CPU model runner's are) give exactly the logits of steps built
    afresh; while the batch size stays they reuse the staging's int64 views and the backend's attention plan, and
    a step of another batch size gets new ones."""
    from model_harness import KVHarness

    from radixgen.runtime.forward_batch import DecodeStaging
    from radixgen.runtime.models import ModelConfig, load_model

    model = load_model(ModelConfig.from_pretrained(STORIES), dtype=torch.float32, load_format="auto", seed=0)
    runs = []
    for staging in (None, DecodeStaging()):
        harness = KVHarness(model, backend=TorchAttentionBackend(cpu_kernel=True), staging=staging)
        rows = [harness.new_request(), harness.new_request()]
        logits = [harness.extend(rows, [[1, 5, 9, 12], [1, 3]])]
        seen = []  # (positions view, attention plan) of every decode step
        for step in range(5):
            if step == 3:  # a third request joins: batch size 3
                rows.append(harness.new_request())
                logits.append(harness.extend(rows[2:], [[1, 7, 7]]))
            logits.append(harness.decode(rows, [20 + step + i for i in range(len(rows))]))
            batch = harness.last_batch
            assert batch is not None and batch.positions.tolist() == [harness.seq_lens[r] - 1 for r in rows]
            seen.append((batch.positions, batch.metadata["paged"]))
        runs.append(torch.cat(logits))
        same = [seen[i][0] is seen[i + 1][0] and seen[i][1] is seen[i + 1][1] for i in range(4)]
        # steps 0-2 at batch 2, 3-4 at batch 3: reused within each, new between them (with a staging only)
        assert same == ([True, True, False, True] if staging is not None else [False] * 4), same
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)


@needs_kernels
def test_server_info_reports_the_decode_path() -> None:
    assert Engine(str(STORIES), max_total_tokens=1024).get_server_info()["cpu_decode_path"] == "fused-layers"
    quantized = Engine(str(STORIES), max_total_tokens=1024, quantization="int4wo-32")  # int4: not in the loop
    assert quantized.get_server_info()["cpu_decode_path"] == "cpu-kernels"


@needs_kernels
@pytest.mark.parametrize(
    "kwargs",
    [{"dtype": "float32"}, {"dtype": "bfloat16"}, {"quantization": "w8a8_int8", "quantize_lm_head": True}],
    ids=["float32", "bfloat16", "w8a8"],
)
def test_head_argmax_in_passing_is_greedy_sampling(kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the LM head in the CPU loop (float32, bfloat16 or w8a8) a decode step's logits come with their argmax
    (torch.max's index);
    greedy requests take it (every decode step of a plain greedy request) and decode to the same tokens as through
    the sampler's own argmax (a zero logit bias takes that path), one request and a batch; a grammar-constrained
    request, whose logits are masked first, never takes it."""
    from radixgen.runtime.schedule_batch import ScheduleBatch

    engine = Engine(str(STORIES), **kwargs)
    model = engine.scheduler.runner.model
    assert model.fused_layers is not None
    hidden = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(model.dtype)
    logits, greedy = model.compute_logits_and_argmax(hidden)
    assert greedy is not None and torch.equal(greedy, torch.max(logits, dim=-1).indices)

    taken: list[bool] = []  # per sampling step: whether it returned the head's argmax
    sample = ScheduleBatch.sample

    def spy(self: ScheduleBatch, *args: object, **kwargs: object) -> torch.Tensor:
        ids = sample(self, *args, **kwargs)  # type: ignore[arg-type]
        taken.append(self.greedy_ids is not None and ids is self.greedy_ids)
        return ids

    monkeypatch.setattr(ScheduleBatch, "sample", spy)
    prompts = ["Once upon a time", "The cat sat", "Tom and Lily went to the"]
    params = {"temperature": 0, "max_new_tokens": 32, "ignore_eos": True}
    for batch in (prompts[:1], prompts):
        taken.clear()
        fused = [o["output_ids"] for o in engine.generate(batch, params)]
        assert sum(taken) == len(taken) - 1  # all but the prefill step's sampling
        taken.clear()
        sampler = [o["output_ids"] for o in engine.generate(batch, {**params, "logit_bias": {"5": 0.0}})]
        assert not any(taken)
        assert fused == sampler
    taken.clear()
    out = engine.generate("Once upon a time", {"temperature": 0, "max_new_tokens": 16, "regex": "[0-9]{6}"})
    assert not any(taken) and out["text"].isdigit() and len(out["text"]) == 6, out["text"]
