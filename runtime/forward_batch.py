"""The tensors one model forward needs, built by the scheduler from a batch of requests.

Follows SGLang's ForwardBatch (sglang/srt/model_executor/forward_batch_info.py), reduced to what a
token-granular KV pool needs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from radixgen.radix.memory_pool import ReqToTokenPool, TokenToKVPool
    from radixgen.runtime.attention.base import AttentionBackend
    from radixgen.runtime.lora.manager import LoRABatchInfo


class ForwardMode(enum.IntEnum):
    """EXTEND: prefill of the uncached part of each prompt (any number of new tokens per request).
    DECODE: exactly one new token per request."""

    EXTEND = 1
    DECODE = 2


class DecodeStaging:
    """A reusable host buffer for the int64 vectors of CPU decode steps (``ForwardBatch.build``).

    A decode step of ``bs`` requests needs seven int64 ``[bs]`` vectors. Made afresh each step they cost a tensor
    from a nested list and seven views — at batch 1, tens of microseconds of a ~1 ms int8 step, as the Python and
    torch code run cold after the forward has streamed the weights through the caches. The staging buffer keeps one
    int64 ``[7, bs]`` tensor and its views for as long as the batch size stays, and writes each step's values through
    a numpy view of the same memory. Consumers may key caches on the views' identity (the attention plan does):
    same objects, same memory. The previous step's vectors are overwritten, so one staging serves one model runner.
    """

    def __init__(self) -> None:
        self._packed: torch.Tensor | None = None  # int64 [7, bs]
        self._host: np.ndarray | None = None  # numpy view of _packed
        self._views: tuple[torch.Tensor, ...] = ()

    def fill(self, rows: list[list[int]]) -> tuple[torch.Tensor, ...]:
        """Write ``rows`` (7 lists of ``bs`` ints) and return the seven int64 ``[bs]`` views (the same objects
        while ``bs`` stays)."""
        bs = len(rows[0])
        if self._host is None or self._host.shape[1] != bs:
            self._packed = torch.empty((len(rows), bs), dtype=torch.int64)  # [7, bs]
            self._host = self._packed.numpy()
            self._views = self._packed.unbind(0)
        self._host[...] = rows
        return self._views


@dataclass
class ForwardBatch:
    """Inputs of one forward pass over ``batch_size`` requests and ``num_tokens`` new tokens.

    Token-major tensors list the new tokens of request 0, then request 1, ... (ragged, no padding).

    Attributes:
        mode: EXTEND or DECODE.
        input_ids: int64 ``[num_tokens]`` new token ids.
        positions: int64 ``[num_tokens]`` absolute position of each new token in its sequence.
        out_cache_loc: int64 ``[num_tokens]`` KV slot where each new token's K/V is written.
        req_pool_indices: int64 ``[batch_size]`` each request's row in ``req_to_token_pool``.
        seq_lens: int64 ``[batch_size]`` sequence length after this forward (prefix + new tokens).
        extend_prefix_lens: int64 ``[batch_size]`` tokens already in the KV pool before this forward
            (cached prefix or earlier chunks); zeros-equivalent ``seq_lens - 1`` in DECODE.
        extend_seq_lens: int64 ``[batch_size]`` new tokens per request (all 1 in DECODE).
        extend_start_loc: int64 ``[batch_size]`` offset of each request's first new token in ``input_ids``.
        seq_lens_cpu / extend_seq_lens_cpu / extend_prefix_lens_cpu: the same as Python lists (no device sync).
        req_to_token_pool, token_to_kv_pool: the memory pools attention reads and writes.
        attn_backend: the attention backend, prepared by ``init_forward_metadata`` before the forward.
        lora: the rows' LoRA adapters and slot buffers (runtime/lora), None when no request uses an adapter.
        greedy_ids: int64 ``[batch_size]``, set by ``ModelRunner.run`` on a decode step whose LM head took each
            row's argmax in passing (``LlamaForCausalLM.compute_logits_and_argmax``); None otherwise.
    """

    mode: ForwardMode
    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    extend_prefix_lens: torch.Tensor
    extend_seq_lens: torch.Tensor
    extend_start_loc: torch.Tensor
    seq_lens_cpu: list[int]
    extend_seq_lens_cpu: list[int]
    extend_prefix_lens_cpu: list[int]
    req_to_token_pool: ReqToTokenPool
    token_to_kv_pool: TokenToKVPool
    attn_backend: AttentionBackend
    metadata: dict = field(default_factory=dict)
    lora: LoRABatchInfo | None = None
    greedy_ids: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def build(
        cls,
        mode: ForwardMode,
        input_ids: list[int] | torch.Tensor,
        req_pool_indices: list[int],
        prefix_lens: list[int],
        extend_lens: list[int],
        out_cache_loc: torch.Tensor,
        req_to_token_pool: ReqToTokenPool,
        token_to_kv_pool: TokenToKVPool,
        attn_backend: AttentionBackend,
        staging: DecodeStaging | None = None,
    ) -> ForwardBatch:
        """Build the tensors from per-request prefix and extend lengths (positions are prefix..seq_len-1).

        With ``staging`` (CPU pools only) a decode step's int64 vectors are views of the staging buffer, written in
        place: they hold this step's values until the next decode step built with the same staging.

        Raises:
            ValueError: list lengths disagree, or DECODE with an extend length other than 1.
        """
        bs = len(req_pool_indices)
        if not (len(prefix_lens) == len(extend_lens) == bs):
            raise ValueError("ForwardBatch.build: req_pool_indices, prefix_lens, extend_lens differ in length")
        if mode == ForwardMode.DECODE and any(n != 1 for n in extend_lens):
            raise ValueError("ForwardBatch.build: DECODE needs exactly one new token per request")
        device = req_to_token_pool.device
        seq_lens_cpu = [p + e for p, e in zip(prefix_lens, extend_lens, strict=True)]
        if mode == ForwardMode.DECODE and isinstance(input_ids, list):
            # every int64 vector of a decode step from one host list: one tensor op instead of eight (at batch 1
            # each costs microseconds of a ~1 ms int8 step); the rows are disjoint views
            rows = [input_ids, prefix_lens, extend_lens, list(range(bs)), prefix_lens, req_pool_indices, seq_lens_cpu]
            if staging is not None:
                (ids, prefix_t, extend_t, start_loc, positions, pool_rows, seq_lens) = staging.fill(rows)
            else:
                packed = torch.tensor(rows, dtype=torch.int64, device=device)  # [7, bs]
                (ids, prefix_t, extend_t, start_loc, positions, pool_rows, seq_lens) = packed.unbind(0)
        else:
            ids = torch.as_tensor(input_ids, dtype=torch.int64, device=device)
            prefix_t = torch.tensor(prefix_lens, dtype=torch.int64, device=device)
            extend_t = torch.tensor(extend_lens, dtype=torch.int64, device=device)
            start_loc = torch.zeros(bs, dtype=torch.int64, device=device)
            if bs > 1:
                start_loc[1:] = torch.cumsum(extend_t[:-1], dim=0)
            if mode == ForwardMode.DECODE:
                positions = prefix_t.clone()
            else:
                # position of token j of request i = prefix_i + j: repeat_interleave builds it without a loop
                offsets = torch.arange(ids.shape[0], dtype=torch.int64, device=device)
                positions = offsets - torch.repeat_interleave(start_loc - prefix_t, extend_t)
            pool_rows = torch.tensor(req_pool_indices, dtype=torch.int64, device=device)
            seq_lens = prefix_t + extend_t
        out_loc = out_cache_loc  # the allocator's int64 slots on the pool's device, as a rule: no conversion call
        if out_loc.dtype != torch.int64 or out_loc.device != device:
            out_loc = out_loc.to(device=device, dtype=torch.int64)
        return cls(
            mode=mode,
            input_ids=ids,
            positions=positions,
            out_cache_loc=out_loc,
            req_pool_indices=pool_rows,
            seq_lens=seq_lens,
            extend_prefix_lens=prefix_t,
            extend_seq_lens=extend_t,
            extend_start_loc=start_loc,
            seq_lens_cpu=seq_lens_cpu,
            extend_seq_lens_cpu=list(extend_lens),
            extend_prefix_lens_cpu=list(prefix_lens),
            req_to_token_pool=req_to_token_pool,
            token_to_kv_pool=token_to_kv_pool,
            attn_backend=attn_backend,
        )
