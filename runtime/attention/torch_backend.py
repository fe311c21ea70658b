"""Portable attention on plain torch ops (the CPU path and the reference for the Triton backend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radixgen.runtime.attention.base import AttentionBackend, AttentionLayer
from radixgen.runtime.forward_batch import ForwardBatch, ForwardMode


class TorchAttentionBackend(AttentionBackend):
    """Extend: per request, SDPA of the new queries over [cached prefix + new tokens] with the causal offset
    (query j of a request with prefix p sees keys 0..p+j); the boolean mask is built only for requests that
    have a prefix and is ``[extend_len, seq_len]``, never batch-wide.

    Decode: one batched gather of every request's KV, padded to the longest sequence
    (``[batch, max_len, num_kv_heads, head_dim]``), masked by length — no Python loop over requests.
    Scores accumulate in float32.
    """

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        meta = batch.metadata
        if batch.mode == ForwardMode.DECODE:
            max_len = max(batch.seq_lens_cpu)
            rows = batch.req_to_token_pool.req_to_token[batch.req_pool_indices, :max_len]
            meta["decode_kv_index"] = rows.to(torch.int64)  # [bs, max_len]
            pos = torch.arange(max_len, device=rows.device)
            meta["decode_valid"] = pos[None, :] < batch.seq_lens[:, None]  # [bs, max_len]
        else:
            meta["extend_kv_index"] = [
                batch.req_to_token_pool.req_to_token[int(r), :n].to(torch.int64)
                for r, n in zip(batch.req_pool_indices.tolist(), batch.seq_lens_cpu, strict=True)
            ]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch
    ) -> torch.Tensor:
        pool = batch.token_to_kv_pool
        num_tokens = q.shape[0]
        k = k.view(num_tokens, layer.num_kv_heads, layer.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, layer.num_kv_heads, layer.head_dim)  # [T, Hkv, D]
        pool.set_kv_buffer(layer.layer_id, batch.out_cache_loc, k, v)
        k_buf, v_buf = pool.get_kv_buffer(layer.layer_id)
        q = q.view(num_tokens, layer.num_heads, layer.head_dim)  # [T, Hq, D]
        if batch.mode == ForwardMode.DECODE:
            out = self._decode(q, k_buf, v_buf, layer, batch)
        else:
            out = self._extend(q, k_buf, v_buf, layer, batch)
        return out.reshape(num_tokens, layer.num_heads * layer.head_dim)  # [T, Hq*D]

    def _extend(
        self,
        q: torch.Tensor,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
        layer: AttentionLayer,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        out = torch.empty_like(q)
        group = layer.num_heads // layer.num_kv_heads
        starts = batch.extend_start_loc.tolist()
        for i, kv_index in enumerate(batch.metadata["extend_kv_index"]):
            ext = batch.extend_seq_lens_cpu[i]
            if ext == 0:
                continue
            prefix = batch.extend_prefix_lens_cpu[i]
            s = starts[i]
            qi = q[s : s + ext].transpose(0, 1)  # [Hq, ext, D]
            ki = k_buf[kv_index].to(q.dtype).transpose(0, 1)  # [Hkv, seq, D]
            vi = v_buf[kv_index].to(q.dtype).transpose(0, 1)  # [Hkv, seq, D]
            if group > 1:
                ki = ki.repeat_interleave(group, dim=0)  # [Hq, seq, D]
                vi = vi.repeat_interleave(group, dim=0)  # [Hq, seq, D]
            if prefix == 0:
                oi = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=layer.scaling)
            else:
                seq = prefix + ext
                q_pos = torch.arange(prefix, seq, device=q.device)
                mask = torch.arange(seq, device=q.device)[None, :] <= q_pos[:, None]  # [ext, seq]
                oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=layer.scaling)
            out[s : s + ext] = oi.transpose(0, 1)  # [ext, Hq, D]
        return out

    def _decode(
        self,
        q: torch.Tensor,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
        layer: AttentionLayer,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        bs = q.shape[0]
        hkv, group, d = layer.num_kv_heads, layer.num_heads // layer.num_kv_heads, layer.head_dim
        index = batch.metadata["decode_kv_index"]  # [bs, L]
        keys = k_buf[index].float()  # [bs, L, Hkv, D]
        values = v_buf[index].float()  # [bs, L, Hkv, D]
        qg = q.float().view(bs, hkv, group, d)  # [bs, Hkv, G, D]
        scores = torch.einsum("bkgd,blkd->bkgl", qg, keys) * layer.scaling  # [bs, Hkv, G, L]
        valid = batch.metadata["decode_valid"][:, None, None, :]  # [bs, 1, 1, L]
        scores = scores.masked_fill(~valid, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("bkgl,blkd->bkgd", probs, values)  # [bs, Hkv, G, D]
        return out.reshape(bs, layer.num_heads, d).to(q.dtype)  # [bs, Hq, D]
