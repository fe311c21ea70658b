"""``FusedLlamaLayers``: every decoder layer of a float32 Llama-family model in one native call per step.

The C loop (``llama_layers.c``) runs the layers of a decode step or a short extend (the batches the paged
attention kernel takes) with the fused element-wise kernels and MKL's sgemm — the library torch itself uses for
float32 GEMMs on the CPU, called by address from ``libtorch_cpu`` — instead of ~30 torch and ctypes calls per
layer from Python. Measured on bench-llama-40m at batch 1 (2 threads): see benchmarks/README.md, "CPU peer".

It applies where the module path would compute exactly these layers: one rank (no tensor parallelism), no LoRA
in the batch, float32 projections stored column-major (``DenseLinear``; not quantized), no output/MLP biases and
no q/k norm (q/k/v biases are taken). Everything else, and long extends, keeps the module path.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from typing import TYPE_CHECKING

import torch

from radixgen.runtime.cpu.build import load_library
from radixgen.runtime.cpu.ops import MIN_PARALLEL_WORK, PagedAttentionPlan
from radixgen.runtime.models.linear import DenseLinear

if TYPE_CHECKING:
    from radixgen.radix.memory_pool import TokenToKVPool
    from radixgen.runtime.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


@cache
def mkl_sgemm_address() -> int | None:
    """Address of MKL's Fortran ``sgemm_`` in torch's ``libtorch_cpu`` (None when this torch build lacks it)."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).sgemm_
    except (OSError, AttributeError):
        logger.info("no MKL sgemm_ in %s: the fused float32 layer loop is unavailable", path)
        return None
    return ctypes.cast(fn, ctypes.c_void_p).value


def _is_colmajor_f32(linear: object) -> bool:
    return (
        isinstance(linear, DenseLinear)
        and linear.weight.dtype == torch.float32
        and linear.weight.stride() == (1, linear.out_features)
        and linear.bias is None
    )


class FusedLlamaLayers:
    """The per-layer weight addresses of one model and the call that runs its layers (see the module docstring).

    Build with ``FusedLlamaLayers.build(model)``, which returns None where the loop does not apply. The model's
    parameters must stay where they are (they do: weights are fixed after ``process_weights_after_loading``).
    """

    def __init__(self, model: LlamaForCausalLM, sgemm: int) -> None:
        cfg = model.config
        self.sgemm = sgemm
        self.hidden_size, self.head_dim = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads = model.tp_partition.num_heads, model.tp_partition.num_kv_heads
        self.intermediate_size = model.tp_partition.intermediate_size
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.head_dim**-0.5
        self.cos_sin = model.rotary_emb.cos_sin_cache  # [max_positions, D] float32 (stays on the CPU)
        rows = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            bias = attn.qkv_proj.bias
            rows.append([
                layer.input_layernorm.weight.data_ptr(), attn.qkv_proj.weight.data_ptr(),
                0 if bias is None else bias.data_ptr(), attn.o_proj.weight.data_ptr(),
                layer.post_attention_layernorm.weight.data_ptr(), mlp.gate_up_proj.weight.data_ptr(),
                mlp.down_proj.weight.data_ptr(),
            ])  # fmt: skip
        self.weights = torch.tensor(rows, dtype=torch.int64)  # [num_layers, 7] addresses
        self.num_layers = len(rows)
        self._pools: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (id(pool), k addresses, v addresses)

    @staticmethod
    def build(model: LlamaForCausalLM) -> FusedLlamaLayers | None:
        """The fused loop for ``model``, or None where it does not apply (see the module docstring)."""
        cfg = model.config
        if model.tp_group.world_size != 1 or model.dtype != torch.float32 or cfg.qk_norm:
            return None
        if cfg.o_proj_bias or cfg.mlp_bias or next(model.parameters()).device.type != "cpu":
            return None
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            projections = (attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            qkv = attn.qkv_proj
            qkv_ok = isinstance(qkv, DenseLinear) and qkv.weight.stride() == (1, qkv.out_features)
            if not (qkv_ok and qkv.weight.dtype == torch.float32 and all(map(_is_colmajor_f32, projections))):
                return None
        sgemm = mkl_sgemm_address()
        if sgemm is None or load_library() is None:
            return None
        return FusedLlamaLayers(model, sgemm)

    def _pool_addresses(self, pool: TokenToKVPool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each layer's K and V storage address (int64 ``[num_layers]`` each), cached per pool."""
        if self._pools is None or self._pools[0] != id(pool):
            k = torch.tensor([b.data_ptr() for b in pool.k_buffer], dtype=torch.int64)
            v = torch.tensor([b.data_ptr() for b in pool.v_buffer], dtype=torch.int64)
            self._pools = (id(pool), k, v)
        return self._pools[1], self._pools[2]

    def run(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        out_cache_loc: torch.Tensor,
        pool: TokenToKVPool,
        plan: PagedAttentionPlan,
    ) -> None:
        """Run every layer over ``hidden [T, hidden_size]`` float32 (contiguous; updated in place), writing the new
        tokens' K/V at ``out_cache_loc`` (int64 ``[T]``) into ``pool`` (float32, ``[S, Hkv, D]`` per layer) at
        ``positions`` (int64 ``[T]``) and attending as ``plan`` says.

        Raises:
            ValueError: a tensor of another dtype, shape or layout than the loop takes (named).
        """
        num_tokens = hidden.shape[0]
        if hidden.dtype != torch.float32 or not hidden.is_contiguous() or hidden.shape[1] != self.hidden_size:
            raise ValueError(f"FusedLlamaLayers.run: hidden must be contiguous float32 [T, {self.hidden_size}]")
        if pool.dtype != torch.float32 or pool.num_layers != self.num_layers or plan.num_tokens != num_tokens:
            raise ValueError("FusedLlamaLayers.run: pool must be float32 with the model's layers, plan for T tokens")
        if positions.dtype != torch.int64 or out_cache_loc.dtype != torch.int64:
            raise ValueError("FusedLlamaLayers.run: positions and out_cache_loc must be int64")
        q, kv, inter = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        work = torch.empty(num_tokens * (self.hidden_size + 2 * q + 2 * kv + 3 * inter), dtype=torch.float32)
        k_addr, v_addr = self._pool_addresses(pool)
        rtt, rtt_stride, rows, kv_lens = plan.pointers
        load_library().radixgen_llama_layers(  # type: ignore[union-attr]
            self.sgemm, self.num_layers, self.weights.data_ptr(), k_addr.data_ptr(), v_addr.data_ptr(),
            hidden.data_ptr(), num_tokens, self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, inter,
            self.eps, positions.data_ptr(), self.cos_sin.data_ptr(), out_cache_loc.contiguous().data_ptr(), rtt,
            rtt_stride, rows, kv_lens, self.scale, MIN_PARALLEL_WORK, work.data_ptr(),
        )  # fmt: skip
