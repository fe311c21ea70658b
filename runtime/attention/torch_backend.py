"""Portable attention on plain torch ops (the CPU path and the reference for the Triton backend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radixgen.radix.memory_pool import TokenToKVPool
from radixgen.runtime.attention.base import AttentionBackend, AttentionLayer
from radixgen.runtime.attention.dense_decode_kv import DenseDecodeKV
from radixgen.runtime.attention.shared_prefix import (
    find_prefix_groups,
    flash_with_lse,
    merge_attention,
    plan_step,
    prefix_attention,
)
from radixgen.runtime.cpu import ops as cpu_ops
from radixgen.runtime.forward_batch import ForwardBatch, ForwardMode

# requests per decode length bucket (see init_forward_metadata)
DECODE_BUCKET = 16
# extends of at most this many new tokens per request (speculative verifies, short chunks) take the CPU kernel;
# longer ones SDPA, which reads each K/V row once for all of a request's queries
PAGED_EXTEND_MAX_TOKENS = 8


class TorchAttentionBackend(AttentionBackend):
    """Extend: per request, SDPA of the new queries over [cached prefix + new tokens] with the causal offset
    (query j of a request with prefix p sees keys 0..p+j); the boolean mask is built only for requests that
    have a prefix and is ``[extend_len, seq_len]``, never batch-wide.

    Decode: requests sorted by length into buckets of ``DECODE_BUCKET``, one SDPA call per bucket masked by
    length (no Python loop over requests). K/V come from a dense copy of the decode batch's KV
    (``DenseDecodeKV``: no per-step gather while the batch is unchanged) when it fits ``dense_decode_kv_bytes``;
    else each bucket gathers its requests' KV padded to its longest sequence (``[n, num_kv_heads, max_len,
    head_dim]``, one ``index_select`` per K and V).

    Shared prefixes (``shared_prefix``, cascade attention: FlashInfer, Hydragen 2024; see ``shared_prefix``):
    decode requests whose ``req_to_token`` rows share at least ``MIN_PREFIX`` leading slots (radix-cache hits on
    one prompt prefix) are grouped once per batch composition; each group's prefix K/V is read once per layer
    (a view of the pool when its slots are consecutive) and attended by all its queries in one call. Each
    request's own window (positions ``start..seq_len-1``, ``start`` = its group's prefix length, else 0) takes the
    path above (dense copy or buckets) with the log-sum-exp, and the two parts are merged by their LSEs.

    Every SDPA call gets 4-D inputs: with 3-D inputs torch 2.13 takes the unfused math path on CPU (it
    materialises the ``[H, L, L]`` scores; 10-16x slower for a 512-token prompt). Extend uses ``enable_gqa``
    (the fused CPU kernel reads each KV head for its G query heads, no copy); decode folds the G query heads of a
    KV head into the query-length dimension. New K/V go through the pool's storage before use (``store_kv``:
    rounded to the storage dtype, or quantized and dequantized), so extend sees exactly what later decode steps
    read back.

    CPU kernel (``radixgen.runtime.cpu.ops.PagedAttentionPlan``, built on first use): decode batches and extends
    of at most ``PAGED_EXTEND_MAX_TOKENS`` new tokens per request (speculative verifies, short chunks) read K/V
    straight from the pool through ``req_to_token`` in one call per layer, instead of the paths above, when the
    pool holds the model's float32 / bfloat16 K/V on the CPU (``use_cpu_kernel``). That includes decode batches
    whose requests share a prefix: re-reading each request's prefix (from cache) in the kernel beat the cascade's
    torch ops on this project's CPU (bench_peer shared-prefix c16, float32: 195 -> 289 out tok/s), so the
    cascade below serves the torch-only path. In an extend batch that also holds a long extend (a mixed batch:
    decode rows beside a prefill chunk) the short ones still take the kernel, in one call, and the long ones SDPA.

    Quantized KV (``--kv-cache-dtype int8 | fp8_*``): every read of the pool goes through ``pool.get_kv``, which
    dequantizes the gathered slots to q's dtype; the dense decode copy holds dequantized K/V in the model dtype,
    so decode steps that append to it dequantize only the new token.

    Args:
        dense_decode_kv_bytes: memory budget of the dense decode KV copy (all layers, K and V); 0 disables it.
        shared_prefix: use cascade attention for decode requests that share a KV prefix.
        cpu_kernel: use the CPU kernel where it applies (and builds); False keeps every step on torch ops.
    """

    def __init__(self, dense_decode_kv_bytes: int = 0, shared_prefix: bool = True, cpu_kernel: bool = True) -> None:
        self.dense = DenseDecodeKV(dense_decode_kv_bytes, DECODE_BUCKET) if dense_decode_kv_bytes > 0 else None
        self.shared_prefix = shared_prefix
        self.allow_cpu_kernel = cpu_kernel
        self._kernel_pool: tuple[TokenToKVPool, bool] | None = None  # (pool, use_cpu_kernel(pool)), decided once
        self._groups_key: tuple[int, ...] | None = None  # request rows of the batch the groups were found for
        self._groups: list[tuple[list[int], int]] = []
        self._paged: cpu_ops.PagedAttentionPlan | None = None  # the last decode step's plan (see _paged_plan)

    def _decode_groups(self, batch: ForwardBatch) -> list[tuple[list[int], int]]:
        """Shared-prefix groups of a decode batch, found again only when the batch's request rows change (decode
        steps only append tokens, so the prefixes stay shared; an extend resets the cache)."""
        key = tuple(batch.req_pool_indices.tolist())
        if key != self._groups_key:
            max_len = max(batch.seq_lens_cpu)
            rows = batch.req_to_token_pool.req_to_token[batch.req_pool_indices, :max_len]  # [bs, max_len]
            self._groups = find_prefix_groups(rows, batch.seq_lens_cpu)
            self._groups_key = key
        return self._groups

    def use_cpu_kernel(self, pool: TokenToKVPool) -> bool:
        """True when this backend's steps over ``pool`` may take the CPU kernel (see the class docstring); decided
        once per pool (its device and dtypes are fixed), again if ``allow_cpu_kernel`` is turned off."""
        if self._kernel_pool is None or self._kernel_pool[0] is not pool:
            usable = (
                pool.device.type == "cpu"
                and not pool.quantized
                and cpu_ops.supports(pool.model_dtype, pool.dtype, pool.head_dim)
                and cpu_ops.available()
            )
            self._kernel_pool = (pool, usable)
        return self.allow_cpu_kernel and self._kernel_pool[1]

    @staticmethod
    def _paged_plan_rows(batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per new token, its request row and the positions it sees (int64 ``[T]`` each) for the CPU kernel."""
        if batch.mode == ForwardMode.DECODE:
            return batch.req_pool_indices, batch.seq_lens
        rows = torch.repeat_interleave(batch.req_pool_indices, batch.extend_seq_lens)  # [T]
        return rows, batch.positions + 1

    def _paged_plan(self, batch: ForwardBatch) -> cpu_ops.PagedAttentionPlan:
        """The CPU kernel's plan; a decode step whose row and length vectors are the previous decode step's tensors
        (a model runner's ``DecodeStaging`` writes them in place while the batch size stays) reuses its plan, which
        holds those tensors and reads them when it runs."""
        table = batch.req_to_token_pool.req_to_token
        rows, kv_lens = self._paged_plan_rows(batch)
        plan = self._paged
        if plan is not None and plan.rows is rows and plan.kv_lens is kv_lens and plan.req_to_token is table:
            return plan
        plan = cpu_ops.PagedAttentionPlan(table, rows, kv_lens)
        self._paged = plan if batch.mode == ForwardMode.DECODE else None
        return plan

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        meta = batch.metadata
        pool = batch.token_to_kv_pool
        if self.use_cpu_kernel(pool):
            if batch.mode == ForwardMode.DECODE or max(batch.extend_seq_lens_cpu) <= PAGED_EXTEND_MAX_TOKENS:
                if batch.mode == ForwardMode.EXTEND and self.dense is not None:
                    self.dense.invalidate()
                meta["paged"] = self._paged_plan(batch)
                return
        if batch.mode == ForwardMode.DECODE:
            table = batch.req_to_token_pool.req_to_token
            groups = self._decode_groups(batch) if self.shared_prefix else []
            starts = [0] * batch.batch_size  # per request, the first position of its own window
            if groups:
                rows = table[batch.req_pool_indices, : max(batch.seq_lens_cpu)]  # [bs, max_len]
                meta["shared_step"] = plan_step(groups, rows, batch.batch_size)
                starts = meta["shared_step"].starts  # grouped requests: only the suffix after the shared prefix
            if self.dense is not None:
                pool = batch.token_to_kv_pool
                meta["dense_step"] = self.dense.prepare(
                    batch.req_pool_indices.tolist(),
                    batch.seq_lens_cpu,
                    table,
                    pool.num_layers,
                    (pool.num_kv_heads, pool.head_dim),
                    pool.model_dtype,
                    starts=starts if groups else None,
                )
                if meta["dense_step"] is not None:
                    return
            # length buckets: requests sorted by window length, each bucket padded only to its own longest window,
            # so skewed lengths do not make every request gather (and attend over) the longest one's KV
            window = [n - s for n, s in zip(batch.seq_lens_cpu, starts, strict=True)]
            order = sorted(range(batch.batch_size), key=window.__getitem__)
            starts_t = torch.tensor(starts, dtype=torch.int64, device=table.device)
            buckets = []
            for b in range(0, len(order), DECODE_BUCKET):
                idx = order[b : b + DECODE_BUCKET]
                max_len = window[idx[-1]]
                rows_t = torch.tensor(idx, dtype=torch.int64, device=table.device)
                pos = torch.arange(max_len, device=table.device)
                cols = (starts_t[rows_t][:, None] + pos).clamp(max=table.shape[1] - 1)  # [n, max_len]
                kv_index = table[batch.req_pool_indices[rows_t][:, None], cols].to(torch.int64).view(-1)  # [n*L]
                valid = pos[None, :] < (batch.seq_lens[rows_t] - starts_t[rows_t])[:, None]  # [n, max_len]
                buckets.append((rows_t, kv_index, valid))
            meta["decode_buckets"] = buckets
        else:
            if self.dense is not None:
                self.dense.invalidate()  # an extend changes the batch (and may reuse freed slots)
            self._groups_key = None  # an extend may give a request row new slots
            short = self._short_extends(batch) if self.use_cpu_kernel(pool) else set()
            meta["extend_kv_index"] = [
                None if i in short else batch.req_to_token_pool.req_to_token[int(r), :n].to(torch.int64)
                for i, (r, n) in enumerate(zip(batch.req_pool_indices.tolist(), batch.seq_lens_cpu, strict=True))
            ]
            if short:
                meta["paged_short"] = self._short_plan(batch, short)

    @staticmethod
    def _short_extends(batch: ForwardBatch) -> set[int]:
        """Requests of an extend batch with at most ``PAGED_EXTEND_MAX_TOKENS`` new tokens (a mixed batch's decode
        rows, short chunks) — taken by the CPU kernel together while the long ones take SDPA."""
        lens = batch.extend_seq_lens_cpu
        return {i for i, n in enumerate(lens) if 0 < n <= PAGED_EXTEND_MAX_TOKENS}

    @staticmethod
    def _short_plan(batch: ForwardBatch, short: set[int]) -> tuple[torch.Tensor, cpu_ops.PagedAttentionPlan]:
        """(token indices int64 ``[Ts]`` of the ``short`` requests' new tokens, their kernel plan)."""
        starts = batch.extend_start_loc.tolist()
        lens = batch.extend_seq_lens_cpu
        tokens = torch.cat([torch.arange(starts[i], starts[i] + lens[i]) for i in sorted(short)])  # [Ts]
        rows, kv_lens = TorchAttentionBackend._paged_plan_rows(batch)
        plan = cpu_ops.PagedAttentionPlan(batch.req_to_token_pool.req_to_token, rows[tokens], kv_lens[tokens])
        return tokens, plan

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch
    ) -> torch.Tensor:
        pool = batch.token_to_kv_pool
        num_tokens = q.shape[0]
        k = k.view(num_tokens, layer.num_kv_heads, layer.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, layer.num_kv_heads, layer.head_dim)  # [T, Hkv, D]
        paged = batch.metadata.get("paged")
        if paged is not None:
            pool.set_kv_buffer(layer.layer_id, batch.out_cache_loc, k, v)
            k_buf, v_buf = pool.get_kv_buffer(layer.layer_id)
            q3 = q.view(num_tokens, layer.num_heads, layer.head_dim)  # [T, Hq, D]
            out = paged.run(q3, k_buf, v_buf, layer.scaling)  # [T, Hq, D]
            return out.view(num_tokens, layer.num_heads * layer.head_dim)  # [T, Hq*D]
        meta = batch.metadata  # new_k/new_v: [T, Hkv, D] each as stored (rounded or quantized), read back as q's dtype
        meta["new_k"], meta["new_v"] = pool.store_kv(layer.layer_id, batch.out_cache_loc, k, v, q.dtype)
        q = q.view(num_tokens, layer.num_heads, layer.head_dim)  # [T, Hq, D]
        if batch.mode == ForwardMode.DECODE:
            out = self._decode(q, pool, layer, batch)
        else:
            out = self._extend(q, pool, layer, batch)
        return out.reshape(num_tokens, layer.num_heads * layer.head_dim)  # [T, Hq*D]

    def _extend(self, q: torch.Tensor, pool: TokenToKVPool, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        out = torch.empty_like(q)
        group = layer.num_heads // layer.num_kv_heads
        starts = batch.extend_start_loc.tolist()
        new_k = batch.metadata["new_k"]  # [T, Hkv, D] as written to the pool
        new_v = batch.metadata["new_v"]
        short = batch.metadata.get("paged_short")
        if short is not None:  # the short extends' tokens in one kernel call (K/V are in the pool already)
            tokens, plan = short
            k_buf, v_buf = pool.get_kv_buffer(layer.layer_id)
            out[tokens] = plan.run(q[tokens], k_buf, v_buf, layer.scaling)  # [Ts, Hq, D]
        for i, kv_index in enumerate(batch.metadata["extend_kv_index"]):
            ext = batch.extend_seq_lens_cpu[i]
            if ext == 0 or kv_index is None:
                continue
            prefix = batch.extend_prefix_lens_cpu[i]
            s = starts[i]
            seq = prefix + ext
            qi = q[s : s + ext].transpose(0, 1)[None]  # [1, Hq, ext, D]
            if prefix == 0:
                # no cached prefix: the new K/V are the whole sequence (no gather), and plain causal attention
                # takes SDPA's fused causal kernel (no mask tensor)
                ki, vi, mask = new_k[s : s + ext], new_v[s : s + ext], None  # [ext, Hkv, D]
            else:
                ki, vi = pool.get_kv(layer.layer_id, kv_index, q.dtype)  # [seq, Hkv, D] each
                q_pos = torch.arange(prefix, seq, device=q.device)
                mask = torch.arange(seq, device=q.device)[None, :] <= q_pos[:, None]  # [ext, seq], causal offset
            out[s : s + ext] = F.scaled_dot_product_attention(
                qi,
                ki.transpose(0, 1)[None],  # [1, Hkv, seq, D]
                vi.transpose(0, 1)[None],  # [1, Hkv, seq, D]
                attn_mask=mask,
                is_causal=mask is None,
                scale=layer.scaling,
                enable_gqa=group > 1,
            )[0].transpose(0, 1)  # [ext, Hq, D]
        return out

    def _decode(self, q: torch.Tensor, pool: TokenToKVPool, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        bs = q.shape[0]
        hkv, d = layer.num_kv_heads, layer.head_dim
        group = layer.num_heads // hkv
        qg = q.view(bs, hkv, group, d)  # grouped queries: [bs, Hkv, G, D], no K/V expansion for GQA
        shared = batch.metadata.get("shared_step")
        lse = None if shared is None else torch.empty(bs, hkv, group, dtype=torch.float32, device=q.device)

        def attend(qb: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            """SDPA of ``qb [n, Hkv, G, D]`` over its window ``keys/values [n, Hkv, L, D]`` masked by ``valid
            [n, L]``; with shared prefixes also the log-sum-exp ``[n, Hkv, G]`` (returned as a pair)."""
            if shared is None:
                return F.scaled_dot_product_attention(
                    qb, keys, values, attn_mask=valid[:, None, None, :], scale=layer.scaling
                )
            return flash_with_lse(qb, keys, values, valid, layer.scaling)

        step = batch.metadata.get("dense_step")
        if step is not None:
            assert self.dense is not None
            keys, values = self.dense.layer_kv(
                layer.layer_id, step, batch.metadata["new_k"], batch.metadata["new_v"], pool
            )  # each [bs, Hkv, cap, D], rows in window-length order
            qs = qg.index_select(0, step.order)  # [bs, Hkv, G, D] in dense-row order
            out = torch.empty_like(qs)
            lse_sorted = None if lse is None else torch.empty_like(lse)
            for b0, b1, max_len in step.buckets:
                res = attend(qs[b0:b1], keys[b0:b1, :, :max_len], values[b0:b1, :, :max_len],
                             step.valid[b0:b1, :max_len])  # fmt: skip
                if lse_sorted is None:
                    out[b0:b1] = res  # [n, Hkv, G, D]
                else:
                    out[b0:b1], lse_sorted[b0:b1] = res
            out = out.index_select(0, step.inverse)  # [bs, Hkv, G, D] batch order
            if lse_sorted is not None:
                lse = lse_sorted.index_select(0, step.inverse)  # [bs, Hkv, G]
        else:
            out = torch.empty_like(qg)
            for rows, index, valid in batch.metadata["decode_buckets"]:
                n, max_len = valid.shape
                keys, values = pool.get_kv(layer.layer_id, index, q.dtype)  # [n*L, Hkv, D] each
                keys = keys.view(n, max_len, hkv, d).transpose(1, 2)  # [n, Hkv, L, D]
                values = values.view(n, max_len, hkv, d).transpose(1, 2)
                res = attend(qg[rows], keys, values, valid)
                if lse is None:
                    out[rows] = res  # [n, Hkv, G, D]
                else:
                    out[rows], lse[rows] = res
        if shared is not None:
            assert lse is not None  # computed whenever groups exist
            o1, lse1 = prefix_attention(qg, pool, layer.layer_id, shared, layer.scaling)  # [n, Hkv, G, D], [n, Hkv, G]
            rows = shared.rows
            out[rows] = merge_attention(o1, lse1, out[rows], lse[rows]).to(q.dtype)  # [n, Hkv, G, D]
        return out.view(bs, layer.num_heads, d)  # [bs, Hq, D]
