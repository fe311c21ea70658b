"""Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) whose attention reads and writes radixgen's KV pool.

Architecture: Llama (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models",
arXiv:2302.13971; Llama 2, arXiv:2307.09288): pre-norm decoder layers with RMSNorm (Zhang & Sennrich 2019),
rotary position embedding (Su et al. 2021), grouped-query attention (Ainslie et al. 2023) and a SwiGLU MLP
(Shazeer 2020). The family members differ only by flags taken from ``ModelConfig``: q/k/v and o biases
(Qwen2, Llama ``attention_bias``), per-head q/k RMSNorm (Qwen3), MLP bias (Llama ``mlp_bias``), tied
embeddings. Numerics follow the transformers implementations, which the tests use as the reference.

The q/k/v projections are fused into one ``qkv_proj`` and gate/up into one ``gate_up_proj`` (one GEMM
each); ``hf_weight_views`` maps the checkpoint's separate tensors onto slices of the fused weights.

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): given a ``TensorParallelGroup`` of ``tp`` ranks, each
rank's model holds its ``TPPartition`` of the heads, the intermediate dimension and the vocabulary (see
``radixgen.runtime.models.tensor_parallel``) and the ranks all-reduce after ``o_proj`` and ``down_proj`` (whose
biases are kept outside the kernel and added after the reduce, at every ``tp``), all-reduce the embedding and
all-gather the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from radixgen.runtime.attention.base import AttentionLayer
from radixgen.runtime.cpu import ops as cpu_ops
from radixgen.runtime.cpu.llama_layers import FusedLlamaLayers
from radixgen.runtime.distributed import TensorParallelGroup
from radixgen.runtime.models.config import ModelConfig
from radixgen.runtime.models.hf_views import hf_weight_views
from radixgen.runtime.models.linear import (
    Int8WeightOnlyLinear,
    LinearKernel,
    W8A8Int8Linear,
    convert_linear,
    cpu_float_kernel,
)
from radixgen.runtime.models.quant_config import QuantizationConfig
from radixgen.runtime.models.rope import RotaryEmbedding, apply_rotary
from radixgen.runtime.models.tensor_parallel import TPPartition, VocabParallelEmbedding, reduce_row_parallel

if TYPE_CHECKING:
    from radixgen.runtime.forward_batch import ForwardBatch
    from radixgen.runtime.lora.manager import LoRABatchInfo


class RMSNorm(nn.Module):
    """Root-mean-square layer norm over the last dimension, computed in float32 as transformers does.

    ``y = weight * (x / sqrt(mean(x^2) + eps)).to(x.dtype)``; input ``[..., dim]``, output same shape/dtype.
    float32 takes torch's fused ``F.rms_norm`` (one pass; bitwise equal to the formula above in float32, 3x
    faster on CPU for 4096 x 512); other dtypes follow transformers op for op. With ``fused_cpu`` (set by
    ``LlamaForCausalLM.process_weights_after_loading``) 2-D inputs take the CPU kernel
    (``radixgen.runtime.cpu.ops.rms_norm``), which rounds where this formula does.
    """

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.eps = eps
        self.fused_cpu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_cpu and x.dim() == 2:
            return cpu_ops.rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        input_dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)  # [..., 1]
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(input_dtype)


def _row_bias(present: bool, size: int, dtype: torch.dtype) -> nn.Parameter | None:
    """A row-parallel projection's bias ``[size]``, added after the all-reduce (zeros until loaded)."""
    return nn.Parameter(torch.zeros(size, dtype=dtype)) if present else None


class LlamaAttention(nn.Module):
    """Self-attention of one layer over this rank's heads: fused qkv projection (column-parallel), optional q/k
    norm, RoPE, pool attention, o_proj (row-parallel: all-reduce, then ``o_proj_bias``)."""

    def __init__(
        self, config: ModelConfig, layer_id: int, dtype: torch.dtype, part: TPPartition, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        self.head_dim, self.tp = config.head_dim, tp
        self.q_size, self.kv_size = part.num_heads * config.head_dim, part.num_kv_heads * config.head_dim
        self.layer_id = layer_id
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias, dtype=dtype
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False, dtype=dtype)
        self.o_proj_bias = _row_bias(config.o_proj_bias, config.hidden_size, dtype)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype) if config.qk_norm else None
        self.layer = AttentionLayer(
            layer_id=layer_id,
            num_heads=part.num_heads,
            num_kv_heads=part.num_kv_heads,
            head_dim=config.head_dim,
            scaling=config.head_dim**-0.5,
        )
        # the rotary cos/sin cache [max_positions, D] when RoPE runs in place on qkv (CPU kernel), else None
        self.fused_rope_cache: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """``hidden [T, hidden_size]``, ``cos``/``sin [T, 1, D/2]`` → ``[T, hidden_size]`` (summed over the
        ranks); with ``batch.lora`` each projection adds its rows' LoRA deltas. Shapes below are this rank's
        (``Hq``, ``Hkv``: its heads)."""
        num_tokens = hidden.shape[0]
        lora = batch.lora
        qkv = self.qkv_proj(hidden)  # [T, Hq*D + 2*Hkv*D]
        if lora is not None:
            lora.apply(self.layer_id, "qkv_proj", hidden, qkv)
        if self.fused_rope_cache is not None:  # RoPE in place on the q and k columns, then strided views
            cpu_ops.rotary_inplace(
                qkv,
                batch.positions,
                self.fused_rope_cache,
                self.layer.num_heads,
                self.layer.num_kv_heads,
                self.head_dim,
            )
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)  # views [T, Hq*D], [T, Hkv*D] x2
            out = batch.attn_backend.forward(q, k, v, self.layer, batch)  # [T, Hq*D]
            return self._project(out, lora)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)  # [T, Hq*D], [T, Hkv*D] x2
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(num_tokens, -1, self.head_dim))  # [T, Hq, D]
            k = self.k_norm(k.reshape(num_tokens, -1, self.head_dim))  # [T, Hkv, D]
        q = apply_rotary(q, cos, sin, self.head_dim)  # [T, Hq*D]
        k = apply_rotary(k, cos, sin, self.head_dim)  # [T, Hkv*D]
        out = batch.attn_backend.forward(q, k, v.contiguous(), self.layer, batch)  # [T, Hq*D]
        return self._project(out, lora)

    def _project(self, out: torch.Tensor, lora: LoRABatchInfo | None) -> torch.Tensor:
        """``o_proj`` of the attention output ``[T, Hq*D]`` (with its LoRA delta), reduced over the ranks."""
        projected = self.o_proj(out)  # [T, hidden_size], this rank's partial sum
        if lora is not None:
            lora.apply(self.layer_id, "o_proj", out, projected)
        return reduce_row_parallel(projected, self.o_proj_bias, self.tp)


# tokens per MLP block in a long (prefill) batch: the [block, 2 * intermediate] activations of one block stay in
# cache, and the GEMMs run at their best M (float32 gate_up on CPU: 155 GFLOP/s at M = 512 vs 118 at M = 4096)
MLP_TOKEN_BLOCK = 512


class LlamaMLP(nn.Module):
    """SwiGLU MLP: ``down(silu(gate(x)) * up(x))`` with gate and up fused into one projection, over this rank's
    range of the intermediate dimension (gate_up column-parallel, down row-parallel: one all-reduce, then
    ``down_proj_bias``). Batches of more than ``MLP_TOKEN_BLOCK`` tokens run block by block (rows are
    independent, so the result is the same) — except with LoRA, whose segments span the whole batch."""

    def __init__(
        self, config: ModelConfig, layer_id: int, dtype: torch.dtype, part: TPPartition, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        self.layer_id, self.tp = layer_id, tp
        self.intermediate_size = part.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=config.mlp_bias, dtype=dtype)
        self.down_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=False, dtype=dtype)
        self.down_proj_bias = _row_bias(config.mlp_bias, config.hidden_size, dtype)
        self.fused_cpu = False  # silu(gate) * up in the CPU kernel (process_weights_after_loading)

    def forward(self, x: torch.Tensor, lora: LoRABatchInfo | None = None) -> torch.Tensor:
        """``x [T, hidden_size]`` → ``[T, hidden_size]`` (summed over the ranks); ``lora``: the batch's LoRA
        deltas, if any."""
        num_tokens = x.shape[0]
        if num_tokens <= MLP_TOKEN_BLOCK or lora is not None:
            out = self._block(x, lora)
        else:
            out = torch.empty_like(x)
            for start in range(0, num_tokens, MLP_TOKEN_BLOCK):
                out[start : start + MLP_TOKEN_BLOCK] = self._block(x[start : start + MLP_TOKEN_BLOCK], None)
        return reduce_row_parallel(out, self.down_proj_bias, self.tp)

    def _block(self, x: torch.Tensor, lora: LoRABatchInfo | None) -> torch.Tensor:
        """This rank's partial ``down_proj`` output ``[T, hidden_size]`` (before the reduce and the bias)."""
        gate_up = self.gate_up_proj(x)  # [T, 2 * intermediate_size] (this rank's range)
        if lora is not None:
            lora.apply(self.layer_id, "gate_up_proj", x, gate_up)
        if self.fused_cpu:
            act = cpu_ops.silu_and_mul(gate_up)  # [T, intermediate_size]
        else:
            gate, up = gate_up.chunk(2, dim=-1)  # each [T, intermediate_size]
            act = F.silu(gate).mul_(up)  # [T, intermediate_size]
        out = self.down_proj(act)  # [T, hidden_size]
        if lora is not None:
            lora.apply(self.layer_id, "down_proj", act, out)
        return out


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: ``h = h + attn(norm(h)); h = h + mlp(norm(h))``."""

    def __init__(
        self, config: ModelConfig, layer_id: int, dtype: torch.dtype, part: TPPartition, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(config, layer_id, dtype, part, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(config, layer_id, dtype, part, tp)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """``hidden [T, hidden_size]`` → ``[T, hidden_size]``."""
        norm = self.post_attention_layernorm
        if norm.fused_cpu:  # the residual add fused into the norm: hidden += attn; x = norm(hidden)
            attn = self.self_attn(self.input_layernorm(hidden), cos, sin, batch)  # [T, hidden_size]
            x = cpu_ops.rms_norm(attn, norm.weight, norm.eps, residual=hidden)  # hidden updated in place
            return self.mlp(x, batch.lora).add_(hidden)
        hidden = self.self_attn(self.input_layernorm(hidden), cos, sin, batch).add_(hidden)  # residual, in place
        return self.mlp(self.post_attention_layernorm(hidden), batch.lora).add_(hidden)


class LlamaModel(nn.Module):
    """Embedding (vocabulary-parallel), decoder layers and final norm (the ``model.`` prefix of Hugging Face
    checkpoints)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, part: TPPartition, tp: TensorParallelGroup) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(part, config.hidden_size, tp, dtype)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, i, dtype, part, tp) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


class LlamaForCausalLM(nn.Module):
    """A Llama-family causal LM over radixgen's paged-by-token KV pool.

    Args:
        config: the model's ``ModelConfig`` (any of ``SUPPORTED_ARCHITECTURES``).
        dtype: parameter dtype (float32, bfloat16 or float16).
        tp_group: the tensor-parallel group this rank's model is a shard of (None: one rank, the whole model).

    Use ``radixgen.runtime.models.load_model`` to build one with checkpoint or dummy weights; constructing
    directly gives PyTorch's default initialisation. ``forward`` returns final-normed hidden states;
    ``compute_logits`` projects them to the vocabulary (tied embeddings reuse ``embed_tokens.weight``).
    ``tp_partition`` says which heads this rank holds: its KV pool is sized with ``tp_partition.num_kv_heads``.

    Raises:
        ValueError: the group size cannot split the heads (``TPPartition.build``).
    """

    def __init__(
        self, config: ModelConfig, dtype: torch.dtype = torch.float32, tp_group: TensorParallelGroup | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.tp_group = tp_group if tp_group is not None else TensorParallelGroup()
        self.tp_partition = TPPartition.build(config, self.tp_group.rank, self.tp_group.world_size)
        self.model = LlamaModel(config, dtype, self.tp_partition, self.tp_group)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, self.tp_partition.vocab_part, bias=False, dtype=dtype)
        )
        self.logits_proj: LinearKernel | None = None  # set by process_weights_after_loading
        self.weights_processed = False
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.context_len, config.rope_theta, config.rope_scaling)
        self.fused_rope = False  # the CPU kernel runs RoPE in place (process_weights_after_loading)
        self.fused_layers: FusedLlamaLayers | None = None  # every layer in one native call (CPU decode steps)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Run all layers over the new tokens of ``batch``, writing their K/V into ``batch.token_to_kv_pool``.

        The caller (the model runner) has written ``req_to_token`` for the new positions and called
        ``batch.attn_backend.init_forward_metadata(batch)``.

        With ``tp_size > 1`` every rank runs the same batch (its own KV pool holding its KV heads) and gets the
        same hidden states.

        Args:
            batch: EXTEND or DECODE batch; ``input_ids`` and ``positions`` int64 ``[num_tokens]``, positions
                in ``[0, config.context_len)``.
        Returns:
            Final-normed hidden states ``[num_tokens, hidden_size]`` in the model dtype.
        Raises:
            ValueError: ``batch.lora`` with ``tp_size > 1`` (LoRA is not sharded).
        """
        if batch.lora is not None and self.tp_group.world_size > 1:
            raise ValueError(f"LoRA is not supported with tensor parallelism (tp_size {self.tp_group.world_size})")
        plan = batch.metadata.get("paged")  # set by the torch backend for decode steps and short extends
        if self.fused_layers is not None and isinstance(plan, cpu_ops.PagedAttentionPlan) and batch.lora is None:
            # embedding, layers and final norm in one native call
            pool = batch.token_to_kv_pool
            return self.fused_layers.run(batch.input_ids, batch.positions, batch.out_cache_loc, pool, plan)
        hidden = self.model.embed_tokens(batch.input_ids)  # [T, hidden_size]
        if self.fused_rope:  # RoPE runs in place on qkv from the cos/sin cache (LlamaAttention.fused_rope_cache)
            cos = sin = hidden
        else:
            cos, sin = self.rotary_emb.cos_sin(batch.positions, hidden.dtype)  # each [T, 1, D/2]
        for layer in self.model.layers:
            hidden = layer(hidden, cos, sin, batch)
        return self.model.norm(hidden)

    @torch.no_grad()
    def process_weights_after_loading(self, quant: QuantizationConfig | None = None) -> None:
        """Swap every projection's ``nn.Linear`` for the kernel module of its weight format, in place.

        Called once after the checkpoint (or dummy weights) is loaded (vLLM's hook of the same name). Each
        decoder-layer projection becomes ``convert_linear(weight, bias, quant)`` (oneDNN-prepacked float on CPU,
        torchao int8 / int4 weight-only or int8 x int8 with ``quant``; see ``radixgen.runtime.models.linear``).
        The LM head gets its own kernel module on CPU too (quantized only with ``quant.quantize_lm_head``); with
        tied embeddings that is a prepacked or quantized copy of the table, which the embedding lookup keeps
        reading in float — except a tied float32 head, which keeps reading the table itself. On the CPU, with
        float32 or bfloat16 weights, norms, RoPE and SiLU-and-mul then take radixgen's CPU kernels where they built.
        ``hf_weight_views`` is unavailable afterwards (the weights are repacked). With ``tp_size > 1`` the
        kernels take this rank's shards (int8 / int4 scales of the row-parallel ``o_proj`` / ``down_proj`` then
        cover this rank's input columns only, so a quantized sharded model is close to, not equal to, tp_size 1).

        Raises:
            ValueError: a weight shape the quantization cannot take (names ``quantization``).
        """
        # float weights stay row-major where the fused layer loop will multiply them
        row_major = quant is None and FusedLlamaLayers.applies(self)
        for module in self.model.layers:
            layer = cast(LlamaDecoderLayer, module)
            attn, mlp = layer.self_attn, layer.mlp
            for owner, name in ((attn, "qkv_proj"), (attn, "o_proj"), (mlp, "gate_up_proj"), (mlp, "down_proj")):
                linear = getattr(owner, name)
                setattr(owner, name, convert_linear(linear.weight, linear.bias, quant, row_major))
        head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        head_quant = quant if quant is not None and quant.quantize_lm_head else None
        tied_float32 = self.lm_head is None and head_quant is None and cpu_float_kernel(head.dtype) == "colmajor"
        # with the fused layer loop a float head is read row-major by the loop's GEMMs (compute_logits)
        plain_head = tied_float32 or (row_major and head_quant is None)
        if head_quant is not None or (head.device.type == "cpu" and not plain_head):
            # a prepacked / quantized head (a copy of the table when tied); a tied float32 head keeps reading the
            # embedding table (row-major: equal to a column-major copy at M = 1, and no extra memory)
            self.logits_proj = convert_linear(head, None, head_quant)
            self.lm_head = None
        self.weights_processed = True
        self._use_fused_cpu_ops(head.device.type == "cpu" and cpu_ops.supports(self.dtype) and cpu_ops.available())

    def _use_fused_cpu_ops(self, enable: bool) -> None:
        """Route RMSNorm, RoPE and SiLU-and-mul through radixgen's CPU kernels (``radixgen.runtime.cpu.ops``):
        one call each instead of several torch ops per layer; RoPE stays on torch ops for Qwen3's q/k norm. Where
        ``FusedLlamaLayers`` applies (float32, bfloat16 or int8 projections in its layout, one rank),
        decode steps and short extends run every layer in one native call."""
        self.fused_rope = enable and not self.config.qk_norm
        self.fused_layers = FusedLlamaLayers.build(self) if enable else None
        for module in self.modules():
            if isinstance(module, (RMSNorm, LlamaMLP)):
                module.fused_cpu = enable
            elif isinstance(module, LlamaAttention):
                module.fused_rope_cache = self.rotary_emb.cos_sin_cache if self.fused_rope else None

    def weight_report(self) -> dict[str, object]:
        """Weight formats and bytes for ``/get_server_info``: ``{"formats": {format: count}, "bytes": int}``.

        ``bytes`` counts the projections in their stored format (scales and zero points included, a tied LM
        head's packed copy included), plus the embedding table, norms and biases — this rank's shards when
        ``tp_size > 1``.
        """
        formats: dict[str, int] = {}
        total = 0
        for module in self.modules():
            if isinstance(module, LinearKernel):
                formats[module.weight_format] = formats.get(module.weight_format, 0) + 1
                total += module.weight_bytes
                params = [] if module.bias is None else [module.bias]
            else:
                params = list(module.parameters(recurse=False))
            total += sum(p.numel() * p.element_size() for p in params)
        return {"formats": formats, "bytes": total}

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states ``[n, hidden_size]`` to float32 logits ``[n, vocab_size]`` (on every rank).

        The projection runs in the model dtype (as transformers does) and is then upcast; with ``tp_size > 1``
        each rank projects onto its vocabulary slice and the slices are all-gathered.
        """
        return self.compute_logits_and_argmax(hidden)[0]

    def compute_logits_and_argmax(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``compute_logits``, and each row's argmax (int64 ``[n]``, ``torch.max``'s index) where the LM head
        takes it in passing — the CPU loop's float32, bfloat16 or w8a8 head at up to 16 rows
        (``FusedLlamaLayers.logits`` / ``logits_int8``) —, else None."""
        fused = self.fused_layers
        if fused is not None and fused.int8 and isinstance(self.logits_proj, Int8WeightOnlyLinear | W8A8Int8Linear):
            return fused.logits_int8(hidden, self.logits_proj)  # [n, vocab_part] float32; one rank: no gather
        if self.logits_proj is not None:
            local = self.logits_proj(hidden)  # [n, vocab_part]
        else:
            weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            taken = None if fused is None or fused.int8 else fused.logits(hidden, weight)
            if taken is not None:
                return taken  # [n, vocab_part] float32, [n] or None; one rank: no gather
            local = F.linear(hidden, weight)  # [n, vocab_part]
        return self.tp_partition.gather_logits(local, self.tp_group).float(), None  # [n, vocab_size]

    def hf_weight_views(self) -> dict[str, torch.Tensor]:
        """Every Hugging Face checkpoint tensor name → the parameter storage it fills (views; see
        ``radixgen.runtime.models.hf_views.hf_weight_views``).

        Raises:
            RuntimeError: after ``process_weights_after_loading`` (the projections are repacked).
        """
        return hf_weight_views(self)
