"""The Hugging Face checkpoint names of a Llama-family model's parameters (what the loader fills)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixgen.runtime.models.llama import LlamaForCausalLM


def hf_weight_views(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Map every Hugging Face checkpoint tensor name to the parameter storage it fills.

    Values are views (``.data`` slices, no autograd) of the model's parameters with exactly the checkpoint
    tensor's shape — with ``tp_size > 1``, the shape of this rank's part of it (``tp_partition.shard``):
    ``q_proj``/``k_proj``/``v_proj`` are row ranges of ``qkv_proj`` (``[q_size | kv_size | kv_size]``),
    ``gate_proj``/``up_proj`` row halves of ``gate_up_proj``, the embedding (and LM head) the table's rows without
    the vocabulary padding. With tied embeddings there is no ``lm_head.weight`` entry.

    Raises:
        RuntimeError: after ``process_weights_after_loading`` (the projections are repacked).
    """
    if model.weights_processed:
        raise RuntimeError("hf_weight_views: the weights were repacked by process_weights_after_loading")
    c, part = model.config, model.tp_partition
    q, kv, inter = part.num_heads * c.head_dim, part.num_kv_heads * c.head_dim, part.intermediate_size
    vocab_rows = part.vocab_end - part.vocab_start
    views: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": model.model.embed_tokens.weight.data[:vocab_rows],
        "model.norm.weight": model.model.norm.weight.data,
    }
    if model.lm_head is not None:
        views["lm_head.weight"] = model.lm_head.weight.data[:vocab_rows]
    kinds = ["weight"] + (["bias"] if c.attention_bias else [])
    for i, module in enumerate(model.model.layers):
        pre = f"model.layers.{i}."
        layer, attn, mlp = module, module.self_attn, module.mlp
        for kind in kinds:
            fused = getattr(attn.qkv_proj, kind).data  # [q + 2kv, hidden] or [q + 2kv]
            views[pre + f"self_attn.q_proj.{kind}"] = fused[:q]
            views[pre + f"self_attn.k_proj.{kind}"] = fused[q : q + kv]
            views[pre + f"self_attn.v_proj.{kind}"] = fused[q + kv :]
        views[pre + "self_attn.o_proj.weight"] = attn.o_proj.weight.data
        if attn.o_proj_bias is not None:
            views[pre + "self_attn.o_proj.bias"] = attn.o_proj_bias.data
        if attn.q_norm is not None and attn.k_norm is not None:
            views[pre + "self_attn.q_norm.weight"] = attn.q_norm.weight.data
            views[pre + "self_attn.k_norm.weight"] = attn.k_norm.weight.data
        for kind in ["weight"] + (["bias"] if c.mlp_bias else []):
            fused = getattr(mlp.gate_up_proj, kind).data  # [2 * inter, hidden] or [2 * inter]
            views[pre + f"mlp.gate_proj.{kind}"] = fused[:inter]
            views[pre + f"mlp.up_proj.{kind}"] = fused[inter:]
        views[pre + "mlp.down_proj.weight"] = mlp.down_proj.weight.data
        if mlp.down_proj_bias is not None:
            views[pre + "mlp.down_proj.bias"] = mlp.down_proj_bias.data
        views[pre + "input_layernorm.weight"] = layer.input_layernorm.weight.data
        views[pre + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight.data
    return views
