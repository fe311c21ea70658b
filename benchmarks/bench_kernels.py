"""Benchmark the Triton kernels of radixgen.kernels on a CUDA GPU.

    python benchmarks/bench_kernels.py [--out bench_kernels.json] [--quick]
    python benchmarks/bench_kernels.py --compile-only [--arch 90]

Measures, with ``triton.testing.do_bench`` (median of repeated runs, L2 flushed between runs):

* decode attention at batch 64, context 4096 (Llama-3-8B heads: 32 query / 8 KV heads, head_dim 128,
  bfloat16, KV slots shuffled through ``req_to_token``): achieved memory bandwidth (bytes the kernel must move
  / time) against a device-to-device copy (``torch.clone`` of a tensor as large as the KV read) measured in
  the same run. Target: >= 60% of copy bandwidth. ``num_kv_splits`` is swept; the default heuristic is
  reported too.
* extend attention, causal prefill of equal-length prompts without a prefix, in TFLOP/s against
  ``torch.nn.functional.scaled_dot_product_attention`` (``is_causal=True``, ``enable_gqa=True``) on the same
  shapes. Target: time within 1.5x of SDPA. One case with a cached prefix is reported without a baseline.
* the token bitmask at batch 64, vocab 128256 (bandwidth).

Prints a table and writes the results as JSON to ``--out``. Without CUDA it prints that a CUDA GPU is
required and exits with status 1 (status 0 with ``--allow-no-gpu``, for scripted runs on CPU machines).

``--compile-only`` needs no GPU: it compiles every kernel, with the launch configuration the wrappers use, to
a cubin for each ``--arch`` (sets ``TRITON_INTERPRET=0``) and checks its shared memory fits that GPU; exit
status 1 if one does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

COPY_TARGET = 0.60  # decode bandwidth / copy bandwidth
SDPA_TARGET = 1.5  # extend time / SDPA time


@dataclass
class AttnShape:
    """One benchmark shape: ``batch`` requests, each with ``prefix`` cached and ``extend`` new tokens."""

    batch: int
    prefix: int
    extend: int
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128


def attention_flops(shape: AttnShape) -> float:
    """FLOPs of causal attention (QK^T and PV, 2 FLOPs per multiply-add) over the visible (query, key) pairs.

    Query j of a request (0-based among its ``extend`` new tokens) sees ``prefix + j + 1`` keys.
    """
    e, p = shape.extend, shape.prefix
    pairs = e * p + e * (e + 1) // 2
    return 4.0 * shape.batch * shape.num_heads * shape.head_dim * pairs


def decode_bytes(shape: AttnShape, itemsize: int) -> int:
    """Bytes decode attention must move: K and V of every cached token, the req_to_token entries (int32),
    and q plus the output. ``shape.prefix`` is the context length (the decode token included)."""
    kv = 2 * shape.batch * shape.prefix * shape.num_kv_heads * shape.head_dim * itemsize
    index = 4 * shape.batch * shape.prefix
    q_out = 2 * shape.batch * shape.num_heads * shape.head_dim * itemsize
    return kv + index + q_out


def copy_bytes(numel: int, itemsize: int) -> int:
    """Bytes a device-to-device copy of ``numel`` elements moves (read + write)."""
    return 2 * numel * itemsize


def bitmask_bytes(batch: int, vocab: int, itemsize: int) -> int:
    """Bytes the bitmask kernel moves at most: the packed words plus a write of every logit."""
    return batch * (4 * ((vocab + 31) // 32) + vocab * itemsize)


def _bench(fn: Callable[[], object], device: str = "cuda") -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` (CUDA events, L2 flushed) on CUDA. On the CPU,
    where Triton only interprets, the time of one call after a warm-up: dry runs of the benchmark's code path."""
    if device == "cpu":
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _pool(shape: AttnShape, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A KV pool holding every request's prefix at shuffled slots, and q/k/v of the new tokens."""
    gen = torch.Generator(device=device).manual_seed(seed)
    b, hq, hkv, d = shape.batch, shape.num_heads, shape.num_kv_heads, shape.head_dim
    seq = shape.prefix + shape.extend
    slots = b * seq + 1  # slot 0 is the padding slot
    perm = torch.randperm(slots - 1, generator=gen, device=device).to(torch.int32) + 1
    req_to_token = perm.view(b, seq)  # [B, seq]: request i's token j lives at slot perm[i * seq + j]
    t = b * shape.extend

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, device=device, dtype=torch.float32).to(dtype)

    return {
        "k_buffer": randn(slots, hkv, d),
        "v_buffer": randn(slots, hkv, d),
        "req_to_token": req_to_token,
        "req_pool_indices": torch.arange(b, device=device),
        "prefix_lens": torch.full((b,), shape.prefix, device=device),
        "extend_lens": torch.full((b,), shape.extend, device=device),
        "extend_start_loc": torch.arange(b, device=device) * shape.extend,
        "q": randn(t, hq, d),
        "k": randn(t, hkv, d),
        "v": randn(t, hkv, d),
    }


def bench_decode(batch: int, context: int, quick: bool, device: str = "cuda") -> list[dict]:
    from radixgen.kernels.decode_attention import decode_attention_fwd

    shape = AttnShape(batch=batch, prefix=context, extend=0)
    t = _pool(shape, torch.bfloat16, device)
    q = torch.randn(batch, shape.num_heads, shape.head_dim, device=device, dtype=torch.bfloat16)
    seq_lens = torch.full((batch,), context, device=device)
    moved = decode_bytes(shape, 2)
    src = torch.empty(moved // 2, dtype=torch.bfloat16, device=device)  # a copy reading as many bytes
    copy_gbs = copy_bytes(src.numel(), 2) / _bench(src.clone, device) / 1e6
    rows = []
    for splits in [None] if quick else [None, 1, 2, 4, 8, 16]:

        def run(splits: int | None = splits) -> None:
            decode_attention_fwd(
                q, t["k_buffer"], t["v_buffer"], t["req_to_token"], t["req_pool_indices"], seq_lens,
                max_seq_len=context, num_kv_splits=splits,
            )  # fmt: skip

        ms = _bench(run, device)
        gbs = moved / ms / 1e6
        rows.append({
            "kernel": "decode_attention", "shape": asdict(shape), "num_kv_splits": splits or "default",
            "ms": ms, "GB/s": gbs, "copy GB/s": copy_gbs, "ratio": gbs / copy_gbs, "target": COPY_TARGET,
        })  # fmt: skip
    return rows


def bench_extend(quick: bool, device: str = "cuda", shapes: list[AttnShape] | None = None) -> list[dict]:
    """Extend attention at ``shapes`` (default: 4 x 2048 and 1 x 8192 causal prefills, and 8 x 512 tokens over
    a 2048-token prefix; the first only with ``quick``)."""
    import torch.nn.functional as F

    from radixgen.kernels.extend_attention import extend_attention_fwd

    if shapes is None:
        shapes = [AttnShape(batch=4, prefix=0, extend=2048), AttnShape(batch=1, prefix=0, extend=8192)]
        shapes = shapes[:1] if quick else shapes + [AttnShape(batch=8, prefix=2048, extend=512)]
    rows = []
    for shape in shapes:
        t = _pool(shape, torch.bfloat16, device)

        def run(t: dict[str, torch.Tensor] = t, shape: AttnShape = shape) -> None:
            extend_attention_fwd(
                t["q"], t["k"], t["v"], t["k_buffer"], t["v_buffer"], t["req_to_token"],
                t["req_pool_indices"], t["prefix_lens"], t["extend_lens"], t["extend_start_loc"],
                max_extend_len=shape.extend,
            )  # fmt: skip

        ms = _bench(run, device)
        flops = attention_flops(shape)
        row = {"kernel": "extend_attention", "shape": asdict(shape), "ms": ms, "TFLOP/s": flops / ms / 1e9}
        if shape.prefix == 0:
            b, e, hq, hkv, d = shape.batch, shape.extend, shape.num_heads, shape.num_kv_heads, shape.head_dim
            qs = t["q"].view(b, e, hq, d).transpose(1, 2).contiguous()  # [B, Hq, E, D]
            ks = t["k"].view(b, e, hkv, d).transpose(1, 2).contiguous()  # [B, Hkv, E, D]
            vs = t["v"].view(b, e, hkv, d).transpose(1, 2).contiguous()  # [B, Hkv, E, D]
            sdpa_ms = _bench(lambda qs=qs, ks=ks, vs=vs: F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, enable_gqa=True), device)  # fmt: skip
            row.update({"sdpa ms": sdpa_ms, "sdpa TFLOP/s": flops / sdpa_ms / 1e9, "ratio": ms / sdpa_ms,
                        "target": SDPA_TARGET})  # fmt: skip
        rows.append(row)
    return rows


def bench_bitmask(batch: int = 64, vocab: int = 128256, device: str = "cuda") -> list[dict]:
    from radixgen.kernels.bitmask import apply_token_bitmask_inplace

    logits = torch.randn(batch, vocab, device=device)
    words = (vocab + 31) // 32
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, words), device=device, dtype=torch.int32)
    ms = _bench(lambda: apply_token_bitmask_inplace(logits, bitmask), device)
    return [{"kernel": "token_bitmask", "shape": {"batch": batch, "vocab": vocab}, "ms": ms,
             "GB/s": bitmask_bytes(batch, vocab, 4) / ms / 1e6}]  # fmt: skip


# Largest shared memory one block may use (opt-in), by compute capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}


def compile_kernels(arch: int) -> list[dict]:
    """Compile every kernel with the wrappers' launch configuration for ``sm_<arch>``; no GPU needed.

    Must run with ``TRITON_INTERPRET=0`` (``main`` sets it before importing the kernels). Each row says
    whether the kernel's shared memory fits the architecture's per-block limit.
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from radixgen.kernels import INTERPRET
    from radixgen.kernels.bitmask import _apply_token_bitmask_kernel
    from radixgen.kernels.decode_attention import (
        _decode_stage1_kernel,
        _decode_stage2_kernel,
        decode_block_h,
        decode_block_n,
    )
    from radixgen.kernels.extend_attention import _extend_attention_kernel, extend_launch_config
    from radixgen.kernels.lora import _sgmv_kernel, sgmv_launch_config

    if INTERPRET:
        raise RuntimeError("compile_kernels needs TRITON_INTERPRET=0 before radixgen.kernels is imported")
    names = {tl.float32: "fp32", tl.float16: "fp16", tl.bfloat16: "bf16"}
    unscaled = {"KV_SCALED": False}  # float KV pools; the K_scale / V_scale pointers are never read
    limit = SHARED_LIMIT.get(arch, 101376)

    def build(kernel: Any, ptrs: dict[str, str], consts: dict[str, Any], **opts: int) -> dict:
        args = kernel.arg_names
        sig = {}
        for i, name in enumerate(args):
            if kernel.params[i].is_constexpr:
                sig[name] = "constexpr"
            else:
                sig[name] = "*" + ptrs[name] if name in ptrs else "fp32" if name == "qk_scale" else "i32"
        src = ASTSource(kernel, sig, constexprs={(args.index(k),): v for k, v in consts.items()})
        start = time.perf_counter()
        out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
        info = {k: names.get(v, v) for k, v in consts.items()} | ({"kv": ptrs["K_buf"]} if "K_buf" in ptrs else {})
        shared = out.metadata.shared
        return {"arch": arch, "kernel": kernel.fn.__name__, "consts": info, "shared_bytes": shared,
                "fits": shared <= limit, "compile_s": time.perf_counter() - start}  # fmt: skip

    rows = []
    for dtype, d, group in ((tl.bfloat16, 128, 4), (tl.float16, 64, 1), (tl.float32, 128, 8)):
        elem = names[dtype]
        itemsize = 4 if elem == "fp32" else 2
        bm, bn, warps, stages = extend_launch_config(d, itemsize, (arch // 10, arch % 10))
        common = {"IN_DTYPE": dtype, "DOT_DTYPE": dtype, "DOT_PRECISION": "ieee" if itemsize == 4 else "tf32"}
        ext_ptrs = {n: elem for n in ("Q", "K_ext", "V_ext", "O", "K_buf", "V_buf")} | {"Req_to_token": "i32"}
        ext_ptrs |= {n: "i64" for n in ("Req_pool_indices", "Prefix_lens", "Extend_lens", "Extend_start")}
        ext_ptrs |= {"K_scale": "fp32", "V_scale": "fp32"}
        ext_consts = {"GROUP": group, "HEAD_DIM": d, "BLOCK_D": d, "BLOCK_M": bm, "BLOCK_N": bn, **common}
        rows.append(build(_extend_attention_kernel, ext_ptrs, ext_consts | unscaled, num_warps=warps,
                          num_stages=stages))  # fmt: skip
        dec_ptrs = {"Q": elem, "K_buf": elem, "V_buf": elem, "Req_to_token": "i32", "Req_pool_indices": "i64",
                    "Seq_lens": "i64", "Mid_o": "fp32", "Mid_lse": "fp32", "K_scale": "fp32", "V_scale": "fp32"}
        bh = decode_block_h(group, interpret=False)
        dec_consts = {"GROUP": group, "HEAD_BLOCKS": triton.cdiv(group, bh), "HEAD_DIM": d, "BLOCK_D": d,
                      "BLOCK_H": bh, "BLOCK_N": decode_block_n(interpret=False), **common}  # fmt: skip
        rows.append(build(_decode_stage1_kernel, dec_ptrs, dec_consts | unscaled, num_warps=4, num_stages=2))
        if elem == "bf16":  # quantized KV pools (--kv-cache-dtype), dequantized on load; fp8e4nv needs sm_89+
            for kv in ("i8", "fp8e5", *(("fp8e4nv",) if arch >= 89 else ())):
                pool = {"K_buf": kv, "V_buf": kv}
                scaled = {"KV_SCALED": True}
                rows.append(build(_extend_attention_kernel, ext_ptrs | pool, ext_consts | scaled, num_warps=warps,
                                  num_stages=stages))  # fmt: skip
                rows.append(build(_decode_stage1_kernel, dec_ptrs | pool, dec_consts | scaled, num_warps=4,
                                  num_stages=2))  # fmt: skip
        ptrs = {"Mid_o": "fp32", "Mid_lse": "fp32", "O": elem, "Seq_lens": "i64"}
        consts = {"HEAD_DIM": d, "BLOCK_D": d, "BLOCK_N": decode_block_n(interpret=False), "BLOCK_S": 16}
        rows.append(build(_decode_stage2_kernel, ptrs, consts, num_warps=4))
        ptrs = {"Logits": elem, "Bitmask": "i32", "Indices": "i32"}
        consts = {"HAS_INDICES": elem != "fp16", "BLOCK": 4096}
        rows.append(build(_apply_token_bitmask_kernel, ptrs, consts, num_warps=8))
        ptrs = {"X": elem, "W": elem, "Out": elem, "Seg_indptr": "i32", "Weight_indices": "i32"}
        for seg_len, k, n, accumulate in ((1, 4096, 64, False), (4096, 64, 4096, True)):  # LoRA shrink, expand
            bm, bn, bk, warps, stages = sgmv_launch_config(seg_len, k, n, itemsize)
            consts = {"ACCUMULATE": accumulate, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "DOT_DTYPE": dtype,
                      "DOT_PRECISION": common["DOT_PRECISION"]}  # fmt: skip
            rows.append(build(_sgmv_kernel, ptrs, consts, num_warps=warps, num_stages=stages))
    return rows


def _print_table(rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    cells = [[_fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench_kernels.json", help="JSON results path")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (no split sweep)")
    parser.add_argument("--batch", type=int, default=64, help="decode batch size")
    parser.add_argument("--context", type=int, default=4096, help="decode context length")
    parser.add_argument("--allow-no-gpu", action="store_true", help="exit 0 instead of 1 without CUDA")
    parser.add_argument("--compile-only", action="store_true", help="compile for --arch, run nothing")
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities, e.g. 90 80")
    args = parser.parse_args(argv)

    if args.compile_only:
        os.environ["TRITON_INTERPRET"] = "0"
        rows = [row for arch in args.arch for row in compile_kernels(arch)]
        _print_table(rows)
        return 0 if all(row["fits"] for row in rows) else 1
    if not torch.cuda.is_available():
        print(
            "bench_kernels.py: a CUDA GPU is required (torch.cuda.is_available() is False); nothing "
            "measured. Kernel correctness on CPU: pytest tests/test_kernels.py (Triton interpreter).",
            file=sys.stderr,
        )
        return 0 if args.allow_no_gpu else 1
    device = torch.cuda.get_device_name()
    rows = bench_decode(args.batch, args.context, args.quick) + bench_extend(args.quick) + bench_bitmask()
    _print_table(rows)
    best = max((r for r in rows if r["kernel"] == "decode_attention"), key=lambda r: r["ratio"])
    ext = [r for r in rows if "sdpa ms" in r]
    summary = {
        "decode_best_ratio_vs_copy": best["ratio"],
        "decode_meets_target": best["ratio"] >= COPY_TARGET,
        "extend_worst_ratio_vs_sdpa": max(r["ratio"] for r in ext),
        "extend_meets_target": all(r["ratio"] <= SDPA_TARGET for r in ext),
    }
    print(json.dumps(summary, indent=2))
    with open(args.out, "w") as f:
        record = {"device": device, "torch": torch.__version__, "results": rows, "summary": summary}
        json.dump(record, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
