"""Attention on the Triton kernels of ``radixgen.kernels`` (the GPU path; runs under the Triton interpreter
on CPU tensors when no CUDA device is present, see ``radixgen.kernels``)."""

from __future__ import annotations

import torch

from radixgen.kernels.decode_attention import decode_attention_fwd
from radixgen.kernels.extend_attention import extend_attention_fwd
from radixgen.runtime.attention.base import AttentionBackend, AttentionLayer
from radixgen.runtime.forward_batch import ForwardBatch, ForwardMode


class TritonAttentionBackend(AttentionBackend):
    """Same contract as ``TorchAttentionBackend``; one kernel launch per layer for the whole ragged batch.

    Extend: ``extend_attention_fwd`` reads each request's cached prefix from the pool through
    ``req_to_token`` and the new tokens' K/V from this forward's ``k``/``v`` as the pool stored them
    (``store_kv``: rounded to the storage dtype, or quantized and dequantized), so they are exactly the values
    later decode steps read back. Decode: ``decode_attention_fwd`` (split-KV flash-decoding). A quantized pool
    (int8 / fp8) is passed with its scales (``get_kv_scales``) and dequantized on load inside the kernels. The
    host-side maxima that size the grids come from the batch's ``*_cpu`` lists, so a forward makes no device sync.
    """

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        meta = batch.metadata
        if batch.mode == ForwardMode.DECODE:
            meta["triton_max_seq_len"] = max(batch.seq_lens_cpu, default=0)
        else:
            meta["triton_max_extend_len"] = max(batch.extend_seq_lens_cpu, default=0)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch
    ) -> torch.Tensor:
        pool = batch.token_to_kv_pool
        num_tokens = q.shape[0]
        hq, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
        k = k.view(num_tokens, hkv, d)  # [T, Hkv, D]
        v = v.view(num_tokens, hkv, d)  # [T, Hkv, D]
        if batch.mode == ForwardMode.DECODE:
            pool.set_kv_buffer(layer.layer_id, batch.out_cache_loc, k, v)
        else:  # [T, Hkv, D] each, as stored: the extend kernel reads the new tokens from these
            k_new, v_new = pool.store_kv(layer.layer_id, batch.out_cache_loc, k, v, q.dtype)
        if num_tokens == 0:
            return q.new_empty((0, hq * d))
        k_buf, v_buf = pool.get_kv_buffer(layer.layer_id)
        k_scale, v_scale = pool.get_kv_scales(layer.layer_id)
        q = q.view(num_tokens, hq, d)  # [T, Hq, D]
        out = torch.empty((num_tokens, hq, d), dtype=q.dtype, device=q.device)
        req_to_token = batch.req_to_token_pool.req_to_token
        if batch.mode == ForwardMode.DECODE:
            decode_attention_fwd(
                q, k_buf, v_buf, req_to_token, batch.req_pool_indices, batch.seq_lens,
                max_seq_len=batch.metadata["triton_max_seq_len"], sm_scale=layer.scaling, out=out,
                k_scale=k_scale, v_scale=v_scale,
            )  # fmt: skip
        else:
            extend_attention_fwd(
                q, k_new, v_new, k_buf, v_buf, req_to_token, batch.req_pool_indices, batch.extend_prefix_lens,
                batch.extend_seq_lens, batch.extend_start_loc, batch.metadata["triton_max_extend_len"],
                sm_scale=layer.scaling, out=out, k_scale=k_scale, v_scale=v_scale,
            )  # fmt: skip
        return out.view(num_tokens, hq * d)  # [T, Hq*D]
