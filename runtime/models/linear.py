"""How a linear layer's weight is stored and multiplied: one module per weight format, chosen after loading.

Checkpoints load into plain ``nn.Linear`` parameters (``[out_features, in_features]``, the Hugging Face layout);
``convert_linear`` then replaces each projection with the module that runs it fastest on its device:

- ``OneDNNLinear`` (CPU, bfloat16): the weight reordered once into oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``), multiplied by ``_linear_pointwise`` — the prepacking inductor
  applies with ``freezing``. Measured on this project's CPU (AVX-512 + AMX, 2 threads), summed over the 32
  projections of bench-llama-40m: bfloat16 at M = 1 goes from 8.6 ms (unpacked ``F.linear``) to 4.1 ms and the
  32000 x 512 LM head from 1.28 to 0.76 ms (1 thread, single projections: 1024 x 512 145 -> 56 us, 512 x 1408
  278 -> 70 us).
- ``DenseLinear(column_major=True)`` (CPU, float32): ``F.linear`` over a column-major weight, i.e. MKL's
  non-transposed SGEMM. oneDNN's float32 path costs 15-25 us more per call at M = 1 (1024 x 512: 112 vs 52 us;
  stories260K's tiny projections: 27 vs 2 us), which at batch 1 outweighs its 10-50% gain at M = 16-64.
- ``Int8WeightOnlyLinear``: torchao's ``Int8Tensor`` (symmetric int8, one scale per output channel). On CPU
  the product runs in aten's ``_weight_int8pack_mm`` (the kernel inductor emits for torchao's weight-only
  int8 graph) on bfloat16 activations — 1.3 ms for the projections of bench-llama-40m at M = 1; torchao's
  eager ``F.linear`` on the tensor dequantizes the whole weight every call instead (7-10 ms). Elsewhere
  torchao's own ``F.linear`` dispatch.
- ``W8A8Int8Linear``: ``int8wo``'s weights times int8 activations quantized per token (SGLang's
  ``w8a8_int8``): int32 dot products, on CPU ``torch._int_mm`` and, in the fused layer loop, radixgen's VNNI
  kernel.
- ``Int4WeightOnlyLinear``: torchao's group-wise asymmetric int4 (``Int4OpaqueTensor``, the tinygemm CPU layout
  read by ``_weight_int4pack_mm_for_cpu``; on CUDA torchao's ``Int4WeightOnlyConfig`` tensor), bfloat16
  activations.
- ``DenseLinear``: plain ``F.linear`` elsewhere (CUDA).

Every module maps ``x [..., in_features]`` (the model dtype) to ``[..., out_features]`` in the same dtype and
reports ``weight_bytes`` and ``weight_format`` for ``/get_server_info``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radixgen.runtime.models.quant_config import QuantizationConfig

logger = logging.getLogger(__name__)


class LinearKernel(nn.Module):
    """Base: ``forward(x [..., in_features]) -> [..., out_features]`` in ``x.dtype``."""

    in_features: int
    out_features: int
    weight_format: str
    bias: nn.Parameter | None
    _bytes: int

    @property
    def weight_bytes(self) -> int:
        """Bytes held by the weight (and its scales / zero points, and padding), not counting the bias."""
        return self._bytes


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class DenseLinear(LinearKernel):
    """``F.linear`` over a ``[out, in]`` weight.

    ``column_major``: store the weight as the ``[out, in]`` view of ``[in, out]`` storage, so that ``F.linear``
    runs MKL's non-transposed GEMM — on CPU in float32 the fastest at decode batch sizes (see the module
    docstring).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, column_major: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if column_major:
            weight = weight.t().contiguous().t()  # [out, in] view of [in, out] storage
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.weight_format = str(weight.dtype).removeprefix("torch.") + ("-colmajor" if column_major else "")
        self._bytes = _tensor_bytes(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def cpu_float_kernel(dtype: torch.dtype) -> str:
    """The float kernel ``convert_linear`` picks on CPU: ``onednn`` for bfloat16 where this torch build and CPU
    support oneDNN's bfloat16 GEMM, else ``colmajor`` (float32, float16, or no oneDNN bfloat16)."""
    onednn_bf16 = (
        dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )
    return "onednn" if onednn_bf16 else "colmajor"


# the batch size oneDNN's reorder is told to expect: decode steps are small; any M works, the hint only picks
# the blocking (1 and 16 measured within noise of each other at M = 1..64 for the bench-llama-40m shapes)
_PACK_BATCH_HINT = 16


class OneDNNLinear(LinearKernel):
    """A bfloat16 weight prepacked for oneDNN's CPU GEMM (see the module docstring for the figures)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_format = str(weight.dtype).removeprefix("torch.") + "-onednn"
        self._bytes = _tensor_bytes(weight)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), _PACK_BATCH_HINT)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).contiguous()  # [M, in]
        y = torch.ops.mkldnn._linear_pointwise(x2, self.packed_weight, self.bias, "none", [], "")  # [M, out]
        return y.reshape(*shape[:-1], self.out_features)


def _quiet_torchao() -> Any:
    """Import torchao.quantization with its import-time chatter (optional CUDA extension probes) silenced."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as tq
    finally:
        root.setLevel(level)
    return tq


_INT8_K_BLOCK = 16
_INT4_N_BLOCK = 16


def _int8_per_row(weight: torch.Tensor, k_block: int) -> tuple[Any, torch.Tensor, int]:
    """torchao's symmetric per-row int8 of a ``[out, in]`` weight: ``(Int8Tensor, qdata int8 [out, in + k_pad]
    contiguous, k_pad)``, the columns zero-padded to a multiple of ``k_block``."""
    tq = _quiet_torchao()
    from torchao.quantization import PerRow

    qweight = tq.Int8Tensor.from_hp(weight.float(), PerRow())
    k_pad = -weight.shape[1] % k_block
    return qweight, F.pad(qweight.qdata, (0, k_pad)).contiguous(), k_pad


class Int8WeightOnlyLinear(LinearKernel):
    """int8 weights with a per-output-channel scale (torchao ``Int8Tensor``, symmetric, per-row granularity).

    Error bound: each weight is within half a quantization step (``max|w_row| / 127 / 2``) of its float value.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_format = "int8wo"
        # aten's kernel reads K in blocks of 16 at M > 1 (it crashes on other K): padded with zero columns
        qweight, qdata, k_pad = _int8_per_row(weight, _INT8_K_BLOCK)
        self.cpu_kernel = weight.device.type == "cpu"
        if self.cpu_kernel:
            # the kernel's operands: int8 [out, in + k_pad] and a bfloat16 scale [out] (its activation dtype)
            self.k_pad = k_pad
            scale = qweight.scale.reshape(-1).to(torch.bfloat16)  # [out]
            self.register_buffer("qdata", qdata, persistent=False)
            self.register_buffer("scale", scale, persistent=False)
            self._bytes = _tensor_bytes(qdata) + _tensor_bytes(scale)
        else:
            self.k_pad = 0
            self.qweight = nn.Parameter(qweight, requires_grad=False)
            self._bytes = _tensor_bytes(qweight.qdata) + _tensor_bytes(qweight.scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cpu_kernel:
            return F.linear(x, self.qweight, self.bias)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # [M, in]
        if self.k_pad:
            x2 = F.pad(x2, (0, self.k_pad))  # [M, in + k_pad]
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qdata, self.scale).to(x.dtype)  # [M, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


#: the W8A8 kernel's K step: one 64-byte VNNI operand (vpdpbusd) per weight row
W8A8_K_BLOCK = 64


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of each row of ``x [M, K]`` (any float dtype): ``scale = max(max|x_row|,
    1e-10) / 127`` (float32 ``[M, 1]``) and ``q = round_half_even(x / scale)`` (int8 ``[M, K]``, in [-127, 127]).

    The dynamic per-token activation scheme of SGLang's ``w8a8_int8`` (``per_token_quant_int8``) and torchao's
    ``Int8DynamicActivationInt8WeightConfig`` (the same scale; this rounding is half-to-even); radixgen's CPU
    kernel (``int8_linear.c``) computes exactly these values, so the fused layer loop and this module path agree
    on the integer products.
    """
    xf = x.float()
    scale = xf.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 127  # [M, 1] float32
    q = torch.round(xf / scale).clamp(-127, 127).to(torch.int8)  # [M, K]
    return q, scale


class W8A8Int8Linear(LinearKernel):
    """int8 weights (``int8wo``'s: symmetric, one float32 scale per output channel) times int8 activations
    quantized per token at run time (``quantize_per_token``), the products summed in int32:
    ``y [M, N] = (q_x [M, K] q_w [N, K]^T) * (scale_x [M, 1] * scale_w [N])`` — SGLang's ``w8a8_int8``, torchao's
    ``Int8DynamicActivationInt8WeightConfig``, and what llama.cpp's CPU Q8_0 path does (it quantizes the
    activations to Q8_0 blocks for its int8 dot products).

    Storage: ``qdata`` int8 ``[N, Kp]`` (K zero-padded to a multiple of ``W8A8_K_BLOCK``), ``scale`` float32
    ``[N]`` and ``compensation`` int32 ``[N]`` = 128 x the row sums of ``qdata``: the CPU kernel feeds VNNI's
    unsigned-by-signed ``vpdpbusd`` with ``q_x + 128`` and subtracts this. On CPU the module path multiplies with
    ``torch._int_mm`` (exact int32); elsewhere with a float32 matmul of the integer values (exact while a sum
    stays below 2^24 in magnitude).

    Error: the weight's as ``int8wo``'s, plus each activation within half a step (``max|x_row| / 254``) of its
    value — larger than weight-only int8 where a row has outliers.
    """

    qdata: torch.Tensor
    scale: torch.Tensor
    compensation: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_format = "w8a8_int8"
        qweight, qdata, self.k_pad = _int8_per_row(weight, W8A8_K_BLOCK)
        self.cpu_kernel = weight.device.type == "cpu"  # operands the fused loop's int8 kernel can read
        scale = qweight.scale.reshape(-1).float()  # [out]
        compensation = qdata.sum(-1, dtype=torch.int32) * 128  # int32 [out]
        self.register_buffer("qdata", qdata, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("compensation", compensation, persistent=False)
        self._bytes = _tensor_bytes(qdata) + _tensor_bytes(scale) + _tensor_bytes(compensation)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, x_scale = quantize_per_token(x.reshape(-1, self.in_features))  # int8 [M, in], float32 [M, 1]
        if self.k_pad:
            q = F.pad(q, (0, self.k_pad))  # [M, in + k_pad]
        if q.device.type == "cpu":
            acc = torch._int_mm(q, self.qdata.t()).float()  # [M, out] (int32 sums)
        else:
            acc = q.float() @ self.qdata.float().t()  # [M, out]
        y = (acc * (x_scale * self.scale)).to(x.dtype)  # [M, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Int4WeightOnlyLinear(LinearKernel):
    """int4 weights, asymmetric, one bfloat16 scale and zero point per ``group_size`` input channels of a row.

    CPU: torchao's ``Int4OpaqueTensor`` (tinygemm layout for ``_weight_int4pack_mm_for_cpu``); CUDA: torchao's
    ``Int4WeightOnlyConfig`` tensor. Activations are cast to bfloat16 for the product and back. The kernels
    take ``out_features`` in multiples of 16 and ``in_features`` in whole groups, so other shapes are padded
    with zero weights (zero columns meet zero-padded activations; padded outputs are sliced off): exact, at the
    cost of the padding's bytes.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int) -> None:
        super().__init__()
        _quiet_torchao()
        self.out_features, self.in_features = weight.shape
        self.weight_format = f"int4wo-{group_size}"
        self.k_pad = -self.in_features % group_size
        n_pad = -self.out_features % _INT4_N_BLOCK
        w = F.pad(weight.to(torch.bfloat16), (0, self.k_pad, 0, n_pad))  # [out + n_pad, in + k_pad]
        if weight.device.type == "cpu":
            from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor

            qweight: torch.Tensor = Int4OpaqueTensor.from_hp(w, [1, group_size])
        else:
            from torchao.quantization import Int4WeightOnlyConfig, quantize_

            holder = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype, device=w.device)
            holder.weight.data = w
            quantize_(holder, Int4WeightOnlyConfig(group_size=group_size))
            qweight = holder.weight
        self.qweight = nn.Parameter(qweight, requires_grad=False)
        rows, cols = w.shape
        self._bytes = rows * cols // 2 + 2 * 2 * rows * (cols // group_size)  # int4 values + bf16 scale, zero
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # [M, in]
        if self.k_pad:
            x2 = F.pad(x2, (0, self.k_pad))  # [M, in + k_pad]
        y = F.linear(x2, self.qweight)[:, : self.out_features].to(x.dtype)  # [M, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def convert_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, quant: QuantizationConfig | None, row_major: bool = False
) -> LinearKernel:
    """The kernel module for a loaded ``[out, in]`` weight (and optional ``[out]`` bias) on its device.

    Args:
        weight: the float weight, ``[out_features, in_features]``, on the target device.
        bias: ``[out_features]`` or None; kept in the model dtype and added after the product.
        quant: the quantization to apply, or None for the float kernels.
        row_major: keep a float32 or bfloat16 CPU weight as loaded (``DenseLinear``, row-major ``[out, in]``)
            instead of the column-major / oneDNN layouts: the layout ``radixgen.runtime.cpu.llama_layers
            .FusedLlamaLayers`` multiplies (its own float32 kernel at decode sizes, MKL's bfloat16 GEMM at 1.7x
            oneDNN's speed at M = 1: benchmarks/bench_cpu_kernels.py). The module path's ``F.linear`` (long
            extends) is as fast on either float32 layout from M = 64 on; on bfloat16 it was 12-30% slower than
            oneDNN's at M = 16-512 in an ad-hoc measurement.
    Raises:
        ValueError: int4 with ``in_features`` not a multiple of the group size (names ``quantization``).
    """
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if quant is not None and quant.method == "int8wo":
        return Int8WeightOnlyLinear(weight, bias)
    if quant is not None and quant.method == "w8a8_int8":
        return W8A8Int8Linear(weight, bias)
    if quant is not None and quant.method == "int4wo":
        return Int4WeightOnlyLinear(weight, bias, quant.group_size)
    if weight.device.type != "cpu":
        return DenseLinear(weight, bias)
    if row_major and weight.dtype in (torch.float32, torch.bfloat16):
        return DenseLinear(weight.contiguous(), bias)
    if cpu_float_kernel(weight.dtype) == "onednn":
        return OneDNNLinear(weight, bias)
    return DenseLinear(weight, bias, column_major=True)
