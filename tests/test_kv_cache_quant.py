"""Quantized KV cache (``--kv-cache-dtype int8 | fp8_e4m3 | fp8_e5m2``; radix/kv_quant.py, TokenToKVPool).

* the pool: bytes per token with scales and the capacity they give in a fixed budget, the round-trip error bound
  of each format, fp8 saturation and loaded per-layer scales, and the errors that name the flag;
* stories260K: logits of a 200-token greedy run from BOS, teacher-forced on the float32-KV engine's tokens, within
  a stated max-abs / KL of float32 KV, with the top-1 (greedy) agreement rate; and at the quantized precision,
  the same greedy tokens alone and batched, and with the radix cache on (cascade decode over a shared prefix, dense
  decode copy) and off (gather path);
* the Triton kernels (TRITON_INTERPRET on CPU) with int8 per-slot-and-head and fp8 per-tensor scales against the
  torch references, and the Triton backend against the torch backend on quantized pools.

Measured (stories260K, 200 tokens from BOS, 1 thread): int8 max-abs 1.08, mean KL 8.0e-4, top-1 agreement 98.5%;
fp8_e4m3 2.97, 8.5e-3, 98.0%; fp8_e5m2 7.61, 3.4e-2, 93.5% (bfloat16 KV for comparison: 0.15, 3.1e-5, 100%).
"""

from __future__ import annotations

import pytest
import torch
from model_harness import decode_from_bos
from shared_paths import STORIES
from test_kernels import DECODE_KEYS, DEVICE, EXTEND_KEYS, TOL, _attention_case, check_backends_match

from radixgen.kernels import decode_attention_fwd, extend_attention_fwd
from radixgen.kernels.reference import decode_attention_ref, extend_attention_ref
from radixgen.radix.kv_quant import KV_CACHE_DTYPES, kv_cache_torch_dtype, quantize_per_tensor, quantize_per_token_head
from radixgen.radix.memory_pool import TokenToKVPool
from radixgen.runtime import Engine
from radixgen.runtime.models import ModelConfig, load_model
from radixgen.runtime.server_args import _KV_CACHE_DTYPES, ServerArgs, server_args_from_cli

QUANT = ("int8", "fp8_e4m3", "fp8_e5m2")
STEPS = 200
GREEDY = {"temperature": 0, "ignore_eos": True}


# ------------------------------------------------------------------------------------------------------ pool
@pytest.mark.parametrize("head_dim", [8, 64, 128])
def test_bytes_per_token_and_capacity(head_dim: int) -> None:
    """int8 stores D bytes + a 4-byte scale per token, head and K/V: 4*D/(D+4) x float32's tokens in the same
    bytes (2.67x at D=8, 3.76x at 64, 3.88x at 128); fp8 exactly 4x (its scales are per layer)."""
    layers, heads = 3, 4
    per = {kv: TokenToKVPool.bytes_per_token(layers, heads, head_dim, torch.float32, kv) for kv in KV_CACHE_DTYPES}
    assert per["auto"] == 2 * layers * heads * head_dim * 4
    assert per["int8"] == 2 * layers * heads * (head_dim + 4)
    assert per["fp8_e4m3"] == per["fp8_e5m2"] == 2 * layers * heads * head_dim
    budget = 64 << 20
    ratio = (budget // per["int8"]) / (budget // per["auto"])
    assert ratio == pytest.approx(4 * head_dim / (head_dim + 4), rel=1e-3)
    assert (budget // per["fp8_e4m3"]) / (budget // per["auto"]) == pytest.approx(4.0, rel=1e-3)
    for kv in KV_CACHE_DTYPES:  # what the pool really allocates per slot (fp8's 0-d scales are per layer)
        pool = TokenToKVPool(100, layers, heads, head_dim, torch.float32, kv_cache_dtype=kv)
        tensors = [*pool.k_buffer, *pool.v_buffer, *pool.k_scale_buffer, *pool.v_scale_buffer]
        per_slot = sum(t.nbytes for t in tensors if t.dim() > 0) / (pool.size + 1)
        assert per_slot == per[kv], kv


def _kv(seed: int, tokens: int = 12, heads: int = 3, dim: int = 16) -> torch.Tensor:
    """Random K/V ``[tokens, heads, dim]`` whose magnitude varies by 10^4 across tokens (per-token scales)."""
    gen = torch.Generator().manual_seed(seed)
    mag = torch.logspace(-2, 2, tokens)[:, None, None]
    return torch.randn(tokens, heads, dim, generator=gen) * mag


@pytest.mark.parametrize("kv_cache_dtype", QUANT)
def test_pool_round_trip(kv_cache_dtype: str) -> None:
    pool = TokenToKVPool(40, 2, 3, 16, torch.float32, kv_cache_dtype=kv_cache_dtype)
    assert pool.quantized and pool.dtype == kv_cache_torch_dtype(kv_cache_dtype, torch.float32)
    k, v = _kv(0), _kv(1)
    loc = torch.randperm(40)[:12] + 1
    k_read, v_read = pool.store_kv(1, loc, k, v)
    got_k, got_v = pool.get_kv(1, loc)
    assert torch.equal(got_k, k_read) and torch.equal(got_v, v_read)  # a forward sees what later steps read
    pool.set_kv_buffer(0, torch.arange(5, 17), k, v)  # consecutive slots: a slice reads the same as an index
    for by_slice, by_index in zip(pool.get_kv(0, slice(5, 17)), pool.get_kv(0, torch.arange(5, 17)), strict=True):
        assert torch.equal(by_slice, by_index)
    assert torch.equal(pool.get_kv(0, slice(5, 17))[0], k_read)  # the same K at other slots reads the same
    for x, read in ((k, k_read), (v, v_read)):
        err = (read - x).abs()
        if kv_cache_dtype == "int8":  # at most half a step, step = max|x| / 127 per (token, head)
            bound = x.abs().amax(-1, keepdim=True) / 254 * (1 + 1e-5)
        else:  # half an ulp: 3 (e4m3) / 2 (e5m2) mantissa bits, for values in the normal range
            bits = 3 if kv_cache_dtype == "fp8_e4m3" else 2
            bound = x.abs() * 2.0 ** -(bits + 1) + torch.finfo(pool.dtype).smallest_normal
        assert bool((err <= bound).all()), (err - bound).max()
    zero_k, zero_v = pool.get_kv(0, torch.tensor([0]))  # the padding slot reads as zeros in every layer
    assert not zero_k.any() and not zero_v.any()
    k_scale, _ = pool.get_kv_scales(1)
    assert k_scale is not None and k_scale.dtype == torch.float32
    assert k_scale.shape == ((41, 3) if kv_cache_dtype == "int8" else ())


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_scales_default_loaded_and_saturating(kv_cache_dtype: str) -> None:
    pool = TokenToKVPool(16, 2, 1, 4, torch.float32, kv_cache_dtype=kv_cache_dtype)
    fmax = torch.finfo(pool.dtype).max
    assert all(float(s) == 1.0 for layer in range(2) for s in pool.get_kv_scales(layer))  # default scale 1.0
    pool.load_kv_scales([0.5, 4.0], [2.0, 1.0])  # e.g. a checkpoint's self_attn.k_scale / v_scale per layer
    x = torch.tensor([[[1.0, -3.0, 8.0 * fmax, -1e30]]])  # the last two beyond layer 1's K range
    loc = torch.tensor([3])
    k_read, _ = pool.store_kv(1, loc, x, x)
    assert torch.equal(pool.k_buffer[1][3].float(), torch.tensor([[0.25, -0.75, fmax, -fmax]]))  # x / 4, clamped
    assert torch.equal(k_read, torch.tensor([[[1.0, -3.0, 4 * fmax, -4 * fmax]]]))  # saturated, not NaN / inf
    with pytest.raises(ValueError, match="already written"):
        pool.load_kv_scales([1.0, 1.0], [1.0, 1.0])
    fresh = TokenToKVPool(16, 2, 1, 4, torch.float32, kv_cache_dtype=kv_cache_dtype)
    for bad, match in (([1.0], "needs 2 values"), ([1.0, 0.0], "positive and finite"),
                       ([1.0, float("nan")], "positive and finite"), ([1.0, "x"], "must be numbers")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            fresh.load_kv_scales(bad, [1.0, 1.0])  # type: ignore[arg-type]
    fresh.load_kv_scales(torch.tensor([0.5, 2.0]), [1, 1])  # 0-d tensors and ints are numbers too
    assert float(fresh.get_kv_scales(1)[0]) == 2.0  # type: ignore[arg-type]
    for kv in ("int8", "auto"):
        with pytest.raises(ValueError, match="need an fp8 KV cache"):
            TokenToKVPool(16, 2, 1, 4, kv_cache_dtype=kv).load_kv_scales([1.0, 1.0], [1.0, 1.0])


def test_int8_zero_rows_and_tiny_values() -> None:
    pool = TokenToKVPool(8, 1, 2, 4, torch.float32, kv_cache_dtype="int8")
    x = torch.zeros(2, 2, 4)
    x[1, 1] = torch.tensor([1e-38, -3e-39, 0.0, 2e-38])  # max / 127 is subnormal: the scale is 2^-126 instead
    k_read, _ = pool.store_kv(0, torch.tensor([1, 2]), x, x)
    assert torch.isfinite(k_read).all() and not k_read[0].any()
    assert (k_read - x).abs().max() <= torch.finfo(torch.float32).tiny / 2


def test_kv_cache_dtype_flag_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _KV_CACHE_DTYPES == KV_CACHE_DTYPES  # the flag's choices are the pool's formats
    assert server_args_from_cli(["--model", str(STORIES), "--kv-cache-dtype", "int8"]).kv_cache_dtype == "int8"
    with pytest.raises(SystemExit):
        server_args_from_cli(["--model", str(STORIES), "--kv-cache-dtype", "int4"])
    with pytest.raises(ValueError, match="^kv_cache_dtype: must be one of"):
        ServerArgs(model_path=str(STORIES), kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="^kv_cache_dtype"):
        TokenToKVPool(4, 1, 1, 4, kv_cache_dtype="int4")
    monkeypatch.delattr(torch, "float8_e4m3fn")  # a torch build without float8 dtypes
    with pytest.raises(ValueError, match=r"^kv_cache_dtype: fp8_e4m3 needs torch\.float8_e4m3fn"):
        ServerArgs(model_path=str(STORIES), kv_cache_dtype="fp8_e4m3")
    ServerArgs(model_path=str(STORIES), kv_cache_dtype="int8")


# ---------------------------------------------------------------------------------------------- stories260K
@pytest.fixture(scope="module")
def stories() -> torch.nn.Module:
    return load_model(ModelConfig.from_pretrained(str(STORIES)), dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def f32_run(stories: torch.nn.Module) -> tuple[torch.Tensor, list[int]]:
    return decode_from_bos(stories, STEPS)


# kv dtype: (max |logit diff|, mean KL(f32 || quantized), top-1 agreement) bounds; measured values in the docstring
BOUNDS = {"int8": (1.6, 2e-3, 0.95), "fp8_e4m3": (4.5, 2e-2, 0.95), "fp8_e5m2": (12.0, 8e-2, 0.90)}


@pytest.mark.parametrize("kv_cache_dtype", QUANT)
def test_logits_close_to_float32_kv(stories: torch.nn.Module, f32_run: tuple, kv_cache_dtype: str) -> None:
    """Teacher-forced on the float32-KV greedy run from BOS: every position's logits within the bounds, and the
    greedy choice (argmax) the same at >= the stated share of the 200 positions."""
    ref, tokens = f32_run
    got, _ = decode_from_bos(stories, STEPS, tokens, kv_cache_dtype)
    log_p, log_q = ref.log_softmax(-1), got.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [STEPS]
    max_abs, mean_kl = (got - ref).abs().max().item(), kl.mean().item()
    agreement = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"{kv_cache_dtype}: max-abs {max_abs:.3f}, mean KL {mean_kl:.2e}, greedy agreement {agreement:.3f}")
    bound_abs, bound_kl, bound_agree = BOUNDS[kv_cache_dtype]
    assert max_abs < bound_abs and mean_kl < bound_kl and agreement >= bound_agree
    assert max_abs > 0  # the quantized pool really was used


@pytest.mark.parametrize("kv_cache_dtype", ["int8", "fp8_e4m3"])
def test_batching_invariance_at_quantized_precision(kv_cache_dtype: str) -> None:
    engine = Engine(str(STORIES), kv_cache_dtype=kv_cache_dtype, max_total_tokens=2048)
    assert engine.model_runner.token_to_kv_pool.quantized
    prompts = [[1, *range(20 + 5 * i, 26 + 9 * i)] for i in range(4)]
    params = GREEDY | {"max_new_tokens": 20}
    alone = [engine.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
    batched = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
    assert alone == batched
    engine.scheduler.check_integrity()


def test_prefix_reuse_at_quantized_precision() -> None:
    """int8 KV: radix cache on (the prompts' shared 90-token prefix read back from the pool, decoded with cascade
    attention and the dense copy) and off (each prompt prefilled whole, decode through the gather path) give the
    same greedy tokens."""
    prefix = [1, *(10 + (7 * i) % 200 for i in range(89))]
    prompts = [prefix + [30 + i, 40 + 2 * i][: 1 + i % 2] for i in range(4)]
    params = GREEDY | {"max_new_tokens": 16}
    results = []
    for kwargs in ({}, {"disable_radix_cache": True, "dense_decode_kv_mb": 0}):
        engine = Engine(str(STORIES), kv_cache_dtype="int8", max_total_tokens=4096, **kwargs)
        engine.generate(input_ids=prefix, sampling_params=params | {"max_new_tokens": 1})  # caches the prefix
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        cached = [o["meta_info"]["cached_tokens"] for o in outs]
        assert all(c >= len(prefix) - 1 for c in cached) if not kwargs else cached == [0] * 4
        results.append([o["output_ids"] for o in outs])
        engine.scheduler.check_integrity()
    assert results[0] == results[1]


def test_server_info_reports_kv_dtype_and_capacity() -> None:
    budget = 1280 * 10_000  # stories260K: float32 KV 1,280 bytes per token, int8 480 (2 x 5 x 4 x (8 + 4))
    info = {kv: Engine(str(STORIES), kv_cache_dtype=kv, kv_cache_budget_bytes=budget).get_server_info()
            for kv in ("auto", "int8")}  # fmt: skip
    assert (info["auto"]["kv_cache_dtype"], info["auto"]["kv_bytes_per_token"]) == ("float32", 1280)
    assert (info["int8"]["kv_cache_dtype"], info["int8"]["kv_bytes_per_token"]) == ("int8", 480)
    assert info["auto"]["max_total_tokens"] == 10_000 and info["int8"]["max_total_tokens"] == budget // 480


# ------------------------------------------------------------------------------------------- Triton kernels
def _quantize_pool(case: dict, kind: str) -> None:
    """Replace the case's float pool buffers by int8 (scales per slot and head, stored transposed: strided) or fp8
    (a per-tensor scale) ones, adding ``k_scale`` / ``v_scale``."""
    for name in ("k", "v"):
        buf = case[f"{name}_buffer"]
        if kind == "int8":
            q, scale = quantize_per_token_head(buf)
            case[f"{name}_scale"] = scale.t().contiguous().t()  # [S, Hkv] with strides (1, S)
        else:
            scale = torch.tensor(0.5 if name == "k" else 2.0, device=buf.device)
            q = quantize_per_tensor(buf, scale, kv_cache_torch_dtype(kind, None))
            case[f"{name}_scale"] = scale.reshape(1) if name == "v" else scale  # [1] and 0-d both mean per tensor
        case[f"{name}_buffer"] = q


@pytest.mark.parametrize(
    "kind, dtype",
    [("int8", torch.float32), ("int8", torch.bfloat16), ("fp8_e4m3", torch.bfloat16), ("fp8_e5m2", torch.float32)],
    ids=["int8-f32", "int8-bf16", "fp8_e4m3-bf16", "fp8_e5m2-f32"],
)
def test_kernels_with_quantized_pool_match_reference(kind: str, dtype: torch.dtype) -> None:
    atol, rtol = TOL[dtype]
    # extend: prefixes read from the quantized pool, new tokens float
    prefix, extend = [0, 19, 5, 40], [3, 7, 1, 20]
    case = _attention_case(21, prefix, extend, num_kv_heads=2, group=2, head_dim=64, dtype=dtype)
    _quantize_pool(case, kind)
    args = [case[k] for k in EXTEND_KEYS]
    scales = {"k_scale": case["k_scale"], "v_scale": case["v_scale"]}
    out = extend_attention_fwd(*args, max_extend_len=max(extend), block_m=16, block_n=16, **scales)
    want = extend_attention_ref(*args, **scales)
    torch.testing.assert_close(out.float(), want.float(), atol=atol, rtol=rtol)
    # the reference reads the pool as float32(stored) * scale: the same attention over a dequantized float pool
    deq = {f"{n}_buffer": case[f"{n}_buffer"].float() * (case[f"{n}_scale"][..., None] if kind == "int8" else
           case[f"{n}_scale"].reshape(())) for n in ("k", "v")}  # fmt: skip
    plain = extend_attention_ref(*[deq.get(k, case[k]) for k in EXTEND_KEYS])
    torch.testing.assert_close(want.float(), plain.float(), atol=atol, rtol=rtol)
    # decode over the whole quantized sequence, several splits
    seq = [1, 33, 70]
    case = _attention_case(22, seq, [0] * 3, num_kv_heads=1, group=4, head_dim=32, dtype=dtype)
    _quantize_pool(case, kind)
    q = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    args = [q] + [case[k] for k in DECODE_KEYS]
    scales = {"k_scale": case["k_scale"], "v_scale": case["v_scale"]}
    out = decode_attention_fwd(*args, num_kv_splits=2, **scales)
    torch.testing.assert_close(out.float(), decode_attention_ref(*args, **scales).float(), atol=atol, rtol=rtol)


def test_kernel_scale_errors() -> None:
    case = _attention_case(0, [2, 3], [0, 0], 2, 2, 64, torch.float32)
    _quantize_pool(case, "int8")
    args = {k: case[k] for k in DECODE_KEYS} | {"q": torch.randn(2, 4, 64, device=DEVICE)}
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        decode_attention_fwd(**args)
    with pytest.raises(ValueError, match="given together"):
        decode_attention_fwd(**args, k_scale=case["k_scale"])
    with pytest.raises(ValueError, match="k_scale must have shape"):
        decode_attention_fwd(**args, k_scale=case["k_scale"][:-1], v_scale=case["v_scale"])
    with pytest.raises(ValueError, match="v_scale dtype must be float32"):
        decode_attention_fwd(**args, k_scale=case["k_scale"], v_scale=case["v_scale"].double())
    with pytest.raises(ValueError, match="k_buffer dtype must be one of"):
        decode_attention_fwd(**args | {"k_buffer": case["k_buffer"].to(torch.int16)})


@pytest.mark.parametrize(
    "kv_cache_dtype, dtype", [("int8", torch.float32), ("fp8_e5m2", torch.bfloat16)], ids=["int8-f32", "fp8_e5m2-bf16"]
)
def test_triton_backend_matches_torch_backend_quantized(kv_cache_dtype: str, dtype: torch.dtype) -> None:
    check_backends_match(dtype, kv_cache_dtype)
