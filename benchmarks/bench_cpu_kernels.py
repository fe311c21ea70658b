"""The CPU GEMM choices of the fused layer loop (runtime/cpu), each against the alternative, side by side in one run.

    python benchmarks/bench_cpu_kernels.py [--threads 2] [--repeats 200]

On bench-llama-40m's shapes (hidden 512, qkv 1024, gate_up 2816, down 512 x 1408, LM head 32000 x 512):

* bfloat16 at one token: the loop's product over row-major weights (``radixgen_linear_bf16``: its own vdpbf16ps
  kernel up to 4 rows, MKL's ``cblas_gemm_bf16bf16f32`` above) against oneDNN's prepacked GEMM (``OneDNNLinear``,
  the module path's bfloat16 kernel), summed over the 32 projections;
* int8 weight-only at one token: the loop's AVX-512 kernel (``radixgen_linear_int8``) against aten's
  ``_weight_int8pack_mm`` (``Int8WeightOnlyLinear``), per shape, as GB/s of int8 weights;
* a float32 LM head at 1-32 rows: the loop's row kernel (``radixgen_linear_rows_f32``) against ``F.linear`` (MKL),
  on its own, and at 1-2 rows right after the layers' weights as in a decode step (only the head timed).

and on the ~220M config's shapes (hidden 1024, 16 layers; 755 MB of float32 projections, so weights come from
DRAM as in a decode step):

* float32 projections at 1-32 token rows, all 64 of them: the loop's row kernel over row-major weights against
  MKL's sgemm over column-major weights (what the loop called before, through ``torch.mm`` on the ``[in, out]``
  storage);
* int8 weight-only projections at 1-16 token rows, all 64: the loop's kernel against aten's
  ``_weight_int8pack_mm``;
* int8 x int8 (``w8a8_int8``) projections at 1-16 token rows, all 64: the loop's VNNI kernel
  (``radixgen_linear_w8a8``) against its int8 weight-only kernel on the same int8 weights, and against
  ``torch._int_mm`` (``W8A8Int8Linear``, the module path);
* bfloat16 projections at 1-16 token rows, all 64: the loop's product (its own kernel up to 8 rows) against MKL's
  ``cblas_gemm_bf16bf16f32`` called directly.

Times are medians of ``--repeats`` calls after a warm-up, alternating the two sides. Prints a table; writes
``benchmarks/results/bench_cpu_kernels.json``. Needs the CPU kernels (AVX-512 and a C compiler).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import RESULTS

from radixgen.runtime.cpu.build import load_library
from radixgen.runtime.cpu.llama_layers import mkl_gemm_address
from radixgen.runtime.models.linear import Int8WeightOnlyLinear, OneDNNLinear, W8A8Int8Linear

LAYER_SHAPES = [(1024, 512), (512, 512), (2816, 512), (512, 1408)]  # (out, in) of qkv, o, gate_up, down
SHAPES_220M = [(2048, 1024), (1024, 1024), (5632, 1024), (1024, 2816)]  # the same for common.BENCH_220M_CONFIG
HEAD = (32000, 512)


def median_us(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lib = load_library()
    gemm_bf16 = mkl_gemm_address(torch.bfloat16)
    if lib is None or gemm_bf16 is None:
        raise SystemExit("the CPU kernels or MKL's bfloat16 GEMM are unavailable here")
    torch.manual_seed(0)
    rows: list[dict[str, object]] = []

    # bfloat16, one token, all 32 projections of the 8 layers
    weights = [torch.randn(n, k).to(torch.bfloat16) for n, k in LAYER_SHAPES * 8]
    xs = [torch.randn(1, w.shape[1]).to(torch.bfloat16) for w in weights]
    outs = [torch.empty(1, w.shape[0]) for w in weights]
    packed = [OneDNNLinear(w, None) for w in weights]

    def loop_bf16() -> None:
        for w, x, y in zip(weights, xs, outs, strict=True):
            lib.radixgen_linear_bf16(gemm_bf16, x.data_ptr(), 1, w.shape[1], w.data_ptr(), w.shape[0], y.data_ptr(),
                                     None)  # fmt: skip

    def onednn_bf16() -> None:
        for m, x in zip(packed, xs, strict=True):
            m(x)

    a, b = median_us(loop_bf16, args.repeats // 4), median_us(onednn_bf16, args.repeats // 4)
    rows.append({"case": "bf16 32 projections, 1 token", "loop_us": a, "alternative": "oneDNN prepacked",
                 "alternative_us": b})  # fmt: skip

    # int8 weight-only, one token
    for n, k in [*LAYER_SHAPES[2:], HEAD]:
        lin = Int8WeightOnlyLinear(torch.randn(n, k), None)
        x, y, scratch = torch.randn(1, k), torch.empty(1, n), torch.empty(k + 16)

        def ours(lin: Int8WeightOnlyLinear = lin, x: torch.Tensor = x, y: torch.Tensor = y,
                 scratch: torch.Tensor = scratch, n: int = n, k: int = k) -> None:  # fmt: skip
            lib.radixgen_linear_int8(x.data_ptr(), 1, k, lin.qdata.data_ptr(), lin.scale.data_ptr(), n, 0,
                                     y.data_ptr(), scratch.data_ptr())  # fmt: skip

        a, b = median_us(ours, args.repeats), median_us(lambda lin=lin, x=x: lin(x), args.repeats)
        case = f"int8 {n} x {k}, 1 token ({n * k / a / 1e3:.0f} vs {n * k / b / 1e3:.0f} GB/s)"
        rows.append({"case": case, "loop_us": a, "alternative": "aten _weight_int8pack_mm", "alternative_us": b})

    # float32 LM head at 1-32 rows
    head = torch.randn(*HEAD)
    for t in (1, 2, 5, 8, 16, 32):
        x, y = torch.randn(t, HEAD[1]), torch.empty(t, HEAD[0])

        def rows_kernel(x: torch.Tensor = x, y: torch.Tensor = y, t: int = t) -> None:
            lib.radixgen_linear_rows_f32(x.data_ptr(), t, HEAD[1], head.data_ptr(), HEAD[0], y.data_ptr(), None)

        a, b = median_us(rows_kernel, args.repeats // 4), median_us(lambda x=x: F.linear(x, head), args.repeats // 4)
        rows.append({"case": f"f32 head {HEAD[0]} x {HEAD[1]}, {t} rows", "loop_us": a, "alternative": "F.linear (MKL)",
                     "alternative_us": b})  # fmt: skip

    # the same head at 1-2 rows right after the 8 layers' float32 weights (94 MB, through the loop's row kernel,
    # untimed), as in a decode step; the loop's head takes the argmax in passing as it does there
    layers = [torch.randn(n, k) for n, k in LAYER_SHAPES * 8]
    for t in (1, 2):
        x, y, argmax = torch.randn(t, HEAD[1]), torch.empty(t, HEAD[0]), torch.empty(t, dtype=torch.int64)
        xl, yl = torch.randn(t, max(k for _, k in LAYER_SHAPES)), torch.empty(t, max(n for n, _ in LAYER_SHAPES))

        def after_layers(fn: Callable[[], object], t: int = t, xl: torch.Tensor = xl, yl: torch.Tensor = yl) -> float:
            for w in layers:
                n, k = w.shape
                lib.radixgen_linear_rows_f32(xl.data_ptr(), t, k, w.data_ptr(), n, yl.data_ptr(), None)
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        def head_rows(x: torch.Tensor = x, y: torch.Tensor = y, argmax: torch.Tensor = argmax, t: int = t) -> None:
            lib.radixgen_linear_rows_f32(x.data_ptr(), t, HEAD[1], head.data_ptr(), HEAD[0], y.data_ptr(),
                                         argmax.data_ptr())  # fmt: skip

        samples: tuple[list[float], list[float]] = ([], [])
        for _ in range(max(args.repeats // 4, 5)):  # alternating
            samples[0].append(after_layers(head_rows))
            samples[1].append(after_layers(lambda x=x: F.linear(x, head)))
        a, b = (statistics.median(side) * 1e6 for side in samples)
        rows.append({"case": f"f32 head after the layers, {t} rows", "loop_us": a, "alternative": "F.linear (MKL)",
                     "alternative_us": b})  # fmt: skip

    # float32 projections of 16 layers (220M shapes), weights from DRAM, 1-32 token rows
    rowmajor = [torch.randn(n, k) for n, k in SHAPES_220M * 16]
    colmajor = [w.t().contiguous() for w in rowmajor]  # [in, out] storage: MKL's non-transposed sgemm
    for t in (1, 4, 8, 16, 32):
        xs32 = [torch.randn(t, w.shape[1]) for w in rowmajor]
        ys32 = [torch.empty(t, w.shape[0]) for w in rowmajor]

        def rows_f32(t: int = t, xs32: list[torch.Tensor] = xs32, ys32: list[torch.Tensor] = ys32) -> None:
            for w, x, y in zip(rowmajor, xs32, ys32, strict=True):
                lib.radixgen_linear_rows_f32(x.data_ptr(), t, w.shape[1], w.data_ptr(), w.shape[0], y.data_ptr(), None)

        def mkl_f32(xs32: list[torch.Tensor] = xs32, ys32: list[torch.Tensor] = ys32) -> None:
            for wt, x, y in zip(colmajor, xs32, ys32, strict=True):
                torch.mm(x, wt, out=y)

        reps = max(args.repeats // 40, 3)
        a, b = median_us(rows_f32, reps), median_us(mkl_f32, reps)
        rows.append({"case": f"f32 220M projections x 16 layers, {t} rows", "loop_us": a,
                     "alternative": "MKL sgemm, column-major", "alternative_us": b})  # fmt: skip

    # int8 projections of 16 layers (220M shapes), 1-16 token rows: the weight-only kernel against aten's, and the
    # int8 x int8 VNNI kernel against the weight-only one (the same int8 weights, so the same bytes) and against
    # torch._int_mm (W8A8Int8Linear, the module path)
    int8 = [Int8WeightOnlyLinear(w, None) for w in rowmajor]
    w8a8 = [W8A8Int8Linear(w, None) for w in rowmajor]
    widest = max(lin.in_features for lin in int8)
    for t in (1, 4, 8, 16):
        xs8 = [torch.randn(t, lin.in_features) for lin in int8]
        ys8 = [torch.empty(t, lin.out_features) for lin in int8]
        scratch8, scales = torch.empty(t * (widest + 16)), torch.empty(t)
        quantized = torch.empty(t * (widest + 64), dtype=torch.uint8)

        def ours8(t: int = t, xs8: list[torch.Tensor] = xs8, ys8: list[torch.Tensor] = ys8,
                  scratch8: torch.Tensor = scratch8) -> None:  # fmt: skip
            for lin, x, y in zip(int8, xs8, ys8, strict=True):
                lib.radixgen_linear_int8(x.data_ptr(), t, lin.in_features, lin.qdata.data_ptr(), lin.scale.data_ptr(),
                                         lin.out_features, 0, y.data_ptr(), scratch8.data_ptr())  # fmt: skip

        def vnni(t: int = t, xs8: list[torch.Tensor] = xs8, ys8: list[torch.Tensor] = ys8,
                 scales: torch.Tensor = scales, quantized: torch.Tensor = quantized) -> None:  # fmt: skip
            for lin, x, y in zip(w8a8, xs8, ys8, strict=True):
                lib.radixgen_linear_w8a8(x.data_ptr(), t, lin.in_features, lin.qdata.data_ptr(), lin.scale.data_ptr(),
                                         lin.compensation.data_ptr(), lin.out_features, 0, y.data_ptr(),
                                         quantized.data_ptr(), scales.data_ptr(), None)  # fmt: skip

        def modules(kernels: list[torch.nn.Module], xs8: list[torch.Tensor] = xs8) -> None:
            for lin, x in zip(kernels, xs8, strict=True):
                lin(x)

        reps = max(args.repeats // 40, 3)
        a, b = median_us(ours8, reps), median_us(lambda xs8=xs8: modules(int8, xs8), reps)
        rows.append({"case": f"int8 220M projections x 16 layers, {t} rows", "loop_us": a,
                     "alternative": "aten _weight_int8pack_mm", "alternative_us": b})  # fmt: skip
        c, d = median_us(vnni, reps), median_us(lambda xs8=xs8: modules(w8a8, xs8), reps)
        case = f"w8a8 220M projections x 16 layers, {t} rows"
        rows.append({"case": case, "loop_us": c, "alternative": "the loop's int8wo kernel", "alternative_us": a})
        rows.append({"case": case, "loop_us": c, "alternative": "torch._int_mm (module)", "alternative_us": d})

    # bfloat16 projections of 16 layers (220M shapes), 1-16 token rows
    mkl = ctypes.CFUNCTYPE(None, *[ctypes.c_int] * 6, ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int)(gemm_bf16)  # fmt: skip
    bf16 = [w.to(torch.bfloat16) for w in rowmajor]
    for t in (1, 2, 4, 8, 9, 16):
        xs16 = [torch.randn(t, w.shape[1]).to(torch.bfloat16) for w in bf16]
        ys16 = [torch.empty(t, w.shape[0]) for w in bf16]

        def loop16(t: int = t, xs16: list[torch.Tensor] = xs16, ys16: list[torch.Tensor] = ys16) -> None:
            for w, x, y in zip(bf16, xs16, ys16, strict=True):
                n, k = w.shape
                lib.radixgen_linear_bf16(gemm_bf16, x.data_ptr(), t, k, w.data_ptr(), n, y.data_ptr(), None)

        def mkl16(t: int = t, xs16: list[torch.Tensor] = xs16, ys16: list[torch.Tensor] = ys16) -> None:
            for w, x, y in zip(bf16, xs16, ys16, strict=True):  # row-major C = x W^T (CblasRowMajor, NoTrans, Trans)
                n, k = w.shape
                mkl(101, 111, 112, t, n, k, 1.0, x.data_ptr(), k, w.data_ptr(), k, 0.0, y.data_ptr(), n)

        reps = max(args.repeats // 40, 3)
        a, b = median_us(loop16, reps), median_us(mkl16, reps)
        rows.append({"case": f"bf16 220M projections x 16 layers, {t} rows", "loop_us": a,
                     "alternative": "MKL cblas_gemm_bf16bf16f32", "alternative_us": b})  # fmt: skip

    print(f"{'case':46s} {'loop us':>9s} {'alternative':>26s} {'alt us':>9s} {'alt / loop':>10s}")
    for r in rows:
        ratio = float(r["alternative_us"]) / float(r["loop_us"])  # type: ignore[arg-type]
        print(f"{r['case']:46s} {r['loop_us']:9.1f} {r['alternative']:>26s} {r['alternative_us']:9.1f} {ratio:9.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "rows": rows,
           "load_average": list(os.getloadavg())}  # fmt: skip
    (RESULTS / "bench_cpu_kernels.json").write_text(json.dumps(out, indent=2))
    print("load average", out["load_average"])


if __name__ == "__main__":
    main()
