"""``FusedLlamaLayers``: the embedding lookup, every decoder layer and the final norm of a float32 or bfloat16
Llama model in one native call per step (and the LM head in a second: ``logits`` / ``logits_int8``).

The C loop (``llama_layers.c``) runs the layers of a decode step or a short extend (the batches the paged
attention kernel takes) with the fused element-wise kernels and, for the projections, the loop's own float32 kernel
at decode sizes (row-major weights; MKL's ``sgemm_`` above 32 rows), its own bfloat16 kernel up to 8 rows and
MKL's ``cblas_gemm_bf16bf16f32`` above, over row-major bfloat16 weights (MKL is the library torch itself uses on
the CPU; its functions are called by address from ``libtorch_cpu``) — instead of ~30 torch and ctypes calls per
layer from Python. Measured on bench-llama-40m (2 threads): see benchmarks/README.md, "CPU peer".

It applies where the module path would compute exactly these layers: one rank (no tensor parallelism), no LoRA
in the batch, projections in the loop's layout (``DenseLinear``: the model keeps float weights row-major when
``FusedLlamaLayers.applies``; or, in a float32 model, int8 weight-only ``Int8WeightOnlyLinear``, multiplied by the
loop's own AVX-512 kernel with the numerics of aten's ``_weight_int8pack_mm``, or ``W8A8Int8Linear``, multiplied by
its VNNI kernel with the module path's exact int32 sums: ``int8_linear.c``), no output/MLP biases and no q/k
norm (q/k/v biases are taken).
Everything else, and long extends, keeps the module path.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from typing import TYPE_CHECKING

import torch

from radixgen.runtime.cpu.build import load_library
from radixgen.runtime.cpu.ops import DTYPE_CODES, MIN_PARALLEL_WORK, PagedAttentionPlan
from radixgen.runtime.models.linear import DenseLinear, Int8WeightOnlyLinear, W8A8Int8Linear

if TYPE_CHECKING:
    from radixgen.radix.memory_pool import TokenToKVPool
    from radixgen.runtime.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


#: the MKL GEMM the loop calls per dtype (code 0 / 1 in llama_layers.c; float32: only above ROWS_GEMM_MAX_T rows)
_GEMMS = {torch.float32: "sgemm_", torch.bfloat16: "cblas_gemm_bf16bf16f32"}
#: rows a float32 LM head takes the loop's row kernel for (ROWS_GEMM_MAX_T in llama_layers.c; see
#: FusedLlamaLayers.logits)
ROWS_KERNEL_TOKENS = range(1, 33)
#: bytes of native scratch (activations, quantized rows) kept from one call to the next: a decode batch's needs
#: stay below it, so steps do not allocate theirs; a long extend's is allocated for its call
SCRATCH_KEEP_BYTES = 8 * 2**20


@cache
def mkl_gemm_address(dtype: torch.dtype) -> int | None:
    """Address of the MKL GEMM for ``dtype`` in torch's ``libtorch_cpu`` (None when this torch build lacks it)."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = getattr(ctypes.CDLL(path), _GEMMS[dtype])
    except (OSError, AttributeError, KeyError):
        logger.info("no MKL GEMM for %s in %s: the fused layer loop is unavailable", dtype, path)
        return None
    return ctypes.cast(fn, ctypes.c_void_p).value


#: the projections' storage as llama_layers.c's WEIGHTS_* codes: float (the model dtype), int8wo, w8a8_int8
WEIGHTS_KINDS = {DenseLinear: 0, Int8WeightOnlyLinear: 1, W8A8Int8Linear: 2}


def _in_loop_layout(linear: object, dtype: torch.dtype, bias_ok: bool = False) -> bool:
    """True for a projection the loop multiplies: a row-major ``DenseLinear`` of ``dtype`` or, in a float32
    model, an ``Int8WeightOnlyLinear`` with its CPU operands or a ``W8A8Int8Linear``; without a bias unless
    ``bias_ok``."""
    if isinstance(linear, Int8WeightOnlyLinear | W8A8Int8Linear):
        return dtype == torch.float32 and linear.cpu_kernel and (bias_ok or linear.bias is None)
    if not isinstance(linear, DenseLinear) or linear.weight.dtype != dtype:
        return False
    return linear.weight.stride() == (linear.in_features, 1) and (bias_ok or linear.bias is None)


def _operands(linear: object) -> tuple[int, int, int]:
    """(weight address, int8 scale address or 0, w8a8 compensation address or 0) of a projection in the loop's
    layout."""
    if isinstance(linear, W8A8Int8Linear):
        return linear.qdata.data_ptr(), linear.scale.data_ptr(), linear.compensation.data_ptr()
    if isinstance(linear, Int8WeightOnlyLinear):
        return linear.qdata.data_ptr(), linear.scale.data_ptr(), 0
    assert isinstance(linear, DenseLinear)
    return linear.weight.data_ptr(), 0, 0


class FusedLlamaLayers:
    """The per-layer weight addresses of one model and the call that runs its forward (see the module docstring).

    Build with ``FusedLlamaLayers.build(model)``, which returns None where the loop does not apply. The model's
    parameters must stay where they are (they do: weights are fixed after ``process_weights_after_loading``).
    """

    def __init__(self, model: LlamaForCausalLM, gemm: int) -> None:
        cfg = model.config
        self.gemm = gemm
        self.dtype = model.dtype
        # int8 projections (float32 model): the loop's own int8 kernels instead of MKL (WEIGHTS_KINDS)
        self.weights_kind = WEIGHTS_KINDS[type(model.model.layers[0].self_attn.qkv_proj)]
        self.hidden_size, self.head_dim = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads = model.tp_partition.num_heads, model.tp_partition.num_kv_heads
        self.intermediate_size = model.tp_partition.intermediate_size
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.head_dim**-0.5
        self.cos_sin = model.rotary_emb.cos_sin_cache  # [max_positions, D] float32 (stays on the CPU)
        self.embed = model.model.embed_tokens.weight  # [vocab, hidden_size] of the model dtype (one rank: all rows)
        self.final_norm = model.model.norm.weight  # [hidden_size]
        rows = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            bias = attn.qkv_proj.bias
            projections = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            weight, scale, compensation = zip(*map(_operands, projections), strict=True)
            rows.append([
                layer.input_layernorm.weight.data_ptr(), weight[0], 0 if bias is None else bias.data_ptr(), weight[1],
                layer.post_attention_layernorm.weight.data_ptr(), weight[2], weight[3], *scale, *compensation,
            ])  # fmt: skip
        self.weights = torch.tensor(rows, dtype=torch.int64)  # [num_layers, LAYER_FIELDS = 15] addresses
        self.num_layers = len(rows)
        # (pool, its k addresses, its v addresses): the pool itself, not its id(), which a pool made after this one
        # was freed may reuse (the addresses would then be the freed pool's)
        self._pools: tuple[TokenToKVPool, torch.Tensor, torch.Tensor] | None = None
        self._kept_scratch: torch.Tensor | None = None  # uint8, see _scratch

    def _scratch(self, nbytes: int) -> torch.Tensor:
        """uint8 scratch of at least ``nbytes`` for one native call (64-byte aligned: torch's CPU allocator). A
        scratch of up to ``SCRATCH_KEEP_BYTES`` is kept and handed to the next call (the calls run one at a time
        and nothing reads a scratch after its call)."""
        kept = self._kept_scratch
        if kept is not None and kept.numel() >= nbytes:
            return kept
        scratch = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes <= SCRATCH_KEEP_BYTES:
            self._kept_scratch = scratch
        return scratch

    @property
    def int8(self) -> bool:
        """The projections are int8 (int8wo or w8a8_int8) in a float32 model."""
        return self.weights_kind != WEIGHTS_KINDS[DenseLinear]

    @staticmethod
    def applies(model: LlamaForCausalLM) -> bool:
        """True when the loop can run this model once its projections are in the loop's layout: CPU, float32 or
        bfloat16, one rank, no output/MLP bias, no q/k norm, the kernels built and the MKL GEMM found."""
        cfg = model.config
        if model.tp_group.world_size != 1 or model.dtype not in _GEMMS or cfg.qk_norm:
            return False
        if cfg.o_proj_bias or cfg.mlp_bias or next(model.parameters()).device.type != "cpu":
            return False
        return mkl_gemm_address(model.dtype) is not None and load_library() is not None

    @staticmethod
    def build(model: LlamaForCausalLM) -> FusedLlamaLayers | None:
        """The fused loop for ``model``, or None where it does not apply (see the module docstring)."""
        if not FusedLlamaLayers.applies(model):
            return None
        dtype = model.dtype
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if not _in_loop_layout(attn.qkv_proj, dtype, bias_ok=True) or not all(
                _in_loop_layout(p, dtype) for p in (attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            ):
                return None
        gemm = mkl_gemm_address(dtype)
        assert gemm is not None  # applies() checked it
        return FusedLlamaLayers(model, gemm)

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The LM head of a float model through the loop's GEMMs, where they beat ``F.linear``: ``hidden [n,
        hidden_size]`` times the row-major ``weight [vocab, hidden_size]`` (the tied embedding table itself, no
        copy) → float32 logits ``[n, vocab]``, and at up to 16 rows each row's argmax, int64 ``[n]``
        (``torch.max``'s index: the first on ties, a row's first NaN), taken while the kernel writes the logits
        (greedy sampling then need not read them back), else None. None instead of the pair where the caller's
        ``F.linear`` is as fast.

        - bfloat16: MKL's bfloat16 GEMM (the loop's own kernel below 9 rows), the logits rounded to bfloat16 as
          transformers' head returns them, the argmax over the rounded values;
        - float32 at ``ROWS_KERNEL_TOKENS`` rows (decode batches, speculative verifies): the loop's row kernel,
          which reads the head once for all rows. On bench-llama-40m's 32000 x 512 head ``F.linear`` (MKL) takes
          1.5x its time at 5 rows and 2.4x at 8; at 1-2 rows, on its own, MKL is as fast, but right after the
          layers' weights, as in a decode step, it takes 1.19x / 1.11x (benchmarks/bench_cpu_kernels.py).

        Raises:
            ValueError: tensors of another dtype or layout than the model's (named).
        """
        if hidden.dtype != self.dtype or weight.dtype != self.dtype or self.int8:
            raise ValueError("FusedLlamaLayers.logits: hidden and weight must have the float loop's dtype")
        if not weight.is_contiguous() or weight.shape[1] != self.hidden_size or hidden.shape[1] != self.hidden_size:
            raise ValueError(f"FusedLlamaLayers.logits: weight must be contiguous [vocab, {self.hidden_size}]")
        rows = hidden.shape[0]
        lib = load_library()
        assert lib is not None  # build() checked it
        if self.dtype == torch.float32 and rows not in ROWS_KERNEL_TOKENS:
            return None
        x = hidden.contiguous()  # [n, hidden_size]
        out = torch.empty((rows, weight.shape[0]), dtype=torch.float32)
        argmax = torch.empty(rows, dtype=torch.int64)
        args = (x.data_ptr(), rows, self.hidden_size, weight.data_ptr(), weight.shape[0], out.data_ptr())
        if self.dtype == torch.bfloat16:
            took = lib.radixgen_linear_bf16(self.gemm, *args, argmax.data_ptr())
        else:
            took = lib.radixgen_linear_rows_f32(*args, argmax.data_ptr())
        return out, argmax if took else None

    def logits_int8(
        self, hidden: torch.Tensor, head: Int8WeightOnlyLinear | W8A8Int8Linear
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An int8 LM head (``--quantize-lm-head``) of a float32 model through the loop's int8 kernels: float32
        ``[n, vocab]`` equal to what ``head(hidden).float()`` computes (int8wo: bfloat16-rounded products; w8a8:
        the exact int32 sums, scaled), and with a w8a8 head at up to 16 rows each row's argmax, int64 ``[n]``,
        taken while the kernel computes the logits (``torch.max``'s index: the first on ties, a row's first NaN)
        — greedy sampling then need not read the logits back — else None.

        Raises:
            ValueError: hidden not float32 ``[n, hidden_size]``, or a head without CPU operands (named).
        """
        if hidden.dtype != torch.float32 or hidden.shape[-1] != head.in_features or not head.cpu_kernel:
            raise ValueError("FusedLlamaLayers.logits_int8: hidden must be float32 [n, in_features], head on CPU")
        x = hidden.contiguous()  # [n, hidden_size]
        rows = x.shape[0]
        out = torch.empty((rows, head.out_features), dtype=torch.float32)
        lib = load_library()
        assert lib is not None  # build() checked it
        if isinstance(head, W8A8Int8Linear):
            # one scratch: the token scales (float32 [n]), then 64-byte aligned the quantized rows (uint8 [n, Kp])
            scratch = self._scratch(4 * rows + 64 + rows * (head.in_features + head.k_pad))
            scales = scratch.data_ptr()
            quantized = (scales + 4 * rows + 63) & ~63
            argmax = torch.empty(rows, dtype=torch.int64)
            took = lib.radixgen_linear_w8a8(
                x.data_ptr(), rows, head.in_features, head.qdata.data_ptr(), head.scale.data_ptr(),
                head.compensation.data_ptr(), head.out_features, 0, out.data_ptr(), quantized, scales,
                argmax.data_ptr(),
            )  # fmt: skip
            return out, argmax if took else None
        scratch = self._scratch(4 * rows * (head.in_features + head.k_pad))  # float32 [n, Kp]
        lib.radixgen_linear_int8(
            x.data_ptr(), rows, head.in_features, head.qdata.data_ptr(), head.scale.data_ptr(),
            head.out_features, 0, out.data_ptr(), scratch.data_ptr(),
        )  # fmt: skip
        return out, None

    def _pool_addresses(self, pool: TokenToKVPool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each layer's K and V storage address (int64 ``[num_layers]`` each), cached per pool."""
        if self._pools is None or self._pools[0] is not pool:
            k = torch.tensor([b.data_ptr() for b in pool.k_buffer], dtype=torch.int64)
            v = torch.tensor([b.data_ptr() for b in pool.v_buffer], dtype=torch.int64)
            self._pools = (pool, k, v)
        return self._pools[1], self._pools[2]

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        out_cache_loc: torch.Tensor,
        pool: TokenToKVPool,
        plan: PagedAttentionPlan,
    ) -> torch.Tensor:
        """The model's hidden states for ``input_ids`` (int64 ``[T]``): the embedding lookup, every layer — writing
        the new tokens' K/V at ``out_cache_loc`` (int64 ``[T]``) into ``pool`` (the model dtype, ``[S, Hkv, D]``
        per layer) at ``positions`` (int64 ``[T]``), attending as ``plan`` says — and the final norm, in one native
        call → ``[T, hidden_size]`` of the model dtype.

        Raises:
            ValueError: a tensor of another dtype, shape or layout than the loop takes, or an input id outside
                the vocabulary (named).
        """
        num_tokens = input_ids.shape[0]
        if input_ids.dtype != torch.int64 or positions.dtype != torch.int64 or out_cache_loc.dtype != torch.int64:
            raise ValueError("FusedLlamaLayers.run: input_ids, positions and out_cache_loc must be int64")
        if pool.dtype != self.dtype or pool.num_layers != self.num_layers or plan.num_tokens != num_tokens:
            raise ValueError("FusedLlamaLayers.run: pool must hold the model dtype and layers, plan T tokens")
        q, kv, inter = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        activations = num_tokens * (2 * self.hidden_size + 2 * q + 2 * kv + 3 * inter)
        if self.dtype == torch.float32 and not self.int8:  # float32 activations
            work = self._scratch(4 * activations)
        elif self.int8:  # float32 activations, 64 bytes of alignment, one product's bfloat16-rounded padded input
            widest = max(self.hidden_size, q, inter) + 16
            work = self._scratch(4 * activations + 64 + 4 * num_tokens * widest)
        else:  # bfloat16 activations, 64 bytes of alignment, the float32 output of one product
            widest = max(q + 2 * kv, 2 * inter, self.hidden_size)
            work = self._scratch(2 * activations + 64 + 4 * num_tokens * widest)
        out = torch.empty((num_tokens, self.hidden_size), dtype=self.dtype)
        k_addr, v_addr = self._pool_addresses(pool)
        rtt, rtt_stride, rows, kv_lens = plan.pointers
        ids, out_loc = input_ids.contiguous(), out_cache_loc.contiguous()  # held while the call reads them
        shape = (num_tokens, self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, inter)
        model = (DTYPE_CODES[self.dtype], self.weights_kind, self.gemm, self.num_layers, self.weights.data_ptr())
        ends = (ids.data_ptr(), self.embed.data_ptr(), self.embed.shape[0], self.final_norm.data_ptr(), out.data_ptr())
        kv = (k_addr.data_ptr(), v_addr.data_ptr())
        step = (self.eps, positions.data_ptr(), self.cos_sin.data_ptr(), out_loc.data_ptr())
        attention = (rtt, rtt_stride, rows, kv_lens, self.scale, MIN_PARALLEL_WORK)
        lib = load_library()
        assert lib is not None  # build() checked it
        if lib.radixgen_llama_layers(*model, *kv, *ends, *shape, *step, *attention, work.data_ptr()) != 0:
            raise ValueError(f"input_ids: token ids must be in [0, {self.embed.shape[0]})")
        return out
