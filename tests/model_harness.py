"""Test helper: drive a radixgen model through ForwardBatches the way the scheduler does, without a scheduler.

``KVHarness`` owns the memory pools, a slot allocator and an attention backend (torch by default), all on the
model's device; each request gets a ``ReqToTokenPool`` row, and before every forward the harness writes
``req_to_token`` for the new positions (the contract in ``runtime/attention/base.py``), builds the ForwardBatch,
prepares the backend, and returns float32 logits.
"""

from __future__ import annotations

import torch

from radixgen.radix.memory_pool import ReqToTokenPool, TokenSlotAllocator, TokenToKVPool
from radixgen.runtime.attention.base import AttentionBackend
from radixgen.runtime.attention.torch_backend import TorchAttentionBackend
from radixgen.runtime.forward_batch import DecodeStaging, ForwardBatch, ForwardMode
from radixgen.runtime.lora.manager import LoRAManager
from radixgen.runtime.models.llama import LlamaForCausalLM


class KVHarness:
    """Scheduler stand-in for model tests.

    Args:
        model: the model under test (its ``config`` sizes the pools, with the KV heads of its
            ``tp_partition``: a tensor-parallel rank's pool holds its own KV heads; the pools use the model's dtype
            and device).
        max_requests: rows of the ReqToTokenPool.
        num_slots: KV slots; the free list is shuffled with ``seed`` so a request's slots are not contiguous.
        backend: the attention backend (default: the torch backend).
        kv_cache_dtype: the KV pool's storage (``auto`` = the model dtype, ``int8``, ``fp8_e4m3``, ``fp8_e5m2``).
        lora: a LoRAManager; ``extend`` / ``decode`` then take each request's adapter name (None: base model).
        staging: decode steps build their int64 vectors in it, as a CPU model runner's do (``DecodeStaging``).
    Attributes:
        last_batch: the ForwardBatch of the latest forward.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        max_requests: int = 4,
        num_slots: int = 512,
        seed: int = 0,
        backend: AttentionBackend | None = None,
        kv_cache_dtype: str = "auto",
        lora: LoRAManager | None = None,
        staging: DecodeStaging | None = None,
    ):
        cfg = model.config
        device = next(model.parameters()).device
        self.model = model
        self.req_pool = ReqToTokenPool(max_requests, cfg.context_len, device)
        self.kv_pool = TokenToKVPool(
            num_slots, cfg.num_hidden_layers, model.tp_partition.num_kv_heads, cfg.head_dim, model.dtype, device,
            kv_cache_dtype,
        )
        self.allocator = TokenSlotAllocator(num_slots, device)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(num_slots, generator=gen)  # [num_slots]
        self.allocator.free_slots = self.allocator.free_slots[perm.to(device)]
        self.backend = backend or TorchAttentionBackend()
        self.seq_lens: dict[int, int] = {}
        self.lora = lora
        self.staging = staging
        self.last_batch: ForwardBatch | None = None

    def new_request(self) -> int:
        """Allocate a request row (its sequence starts empty)."""
        row = self.req_pool.alloc()
        assert row is not None, "KVHarness: out of request rows"
        self.seq_lens[row] = 0
        return row

    def extend(self, rows: list[int], chunks: list[list[int]], loras: list[str | None] | None = None) -> torch.Tensor:
        """One EXTEND forward appending ``chunks[i]`` to request ``rows[i]`` (under adapter ``loras[i]``): float32
        ``[sum(lens), V]``."""
        return self._forward(ForwardMode.EXTEND, rows, chunks, loras)

    def decode(self, rows: list[int], token_ids: list[int], loras: list[str | None] | None = None) -> torch.Tensor:
        """One DECODE forward appending one token per request; float32 ``[len(rows), vocab]``."""
        return self._forward(ForwardMode.DECODE, rows, [[t] for t in token_ids], loras)

    def _forward(
        self, mode: ForwardMode, rows: list[int], chunks: list[list[int]], loras: list[str | None] | None = None
    ) -> torch.Tensor:
        prefix_lens = [self.seq_lens[r] for r in rows]
        extend_lens = [len(c) for c in chunks]
        slots = self.allocator.alloc(sum(extend_lens))
        assert slots is not None, "KVHarness: out of KV slots"
        offset = 0
        for row, prefix, n in zip(rows, prefix_lens, extend_lens, strict=True):
            # the scheduler's job: req_to_token[row, prefix:prefix+n] = this request's new slots
            self.req_pool.req_to_token[row, prefix : prefix + n] = slots[offset : offset + n].to(torch.int32)
            self.seq_lens[row] = prefix + n
            offset += n
        batch = ForwardBatch.build(
            mode,
            [t for c in chunks for t in c],
            rows,
            prefix_lens,
            extend_lens,
            slots,
            self.req_pool,
            self.kv_pool,
            self.backend,
            self.staging,
        )
        self.last_batch = batch
        self.backend.init_forward_metadata(batch)
        if self.lora is not None:
            batch.lora = self.lora.prepare(loras or [None] * len(rows), extend_lens)
        with torch.no_grad():
            return self.model.compute_logits(self.model(batch))  # [num_tokens, vocab]


def hf_logits(hf_model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """Reference: transformers' logits as float32 ``[len(token_ids), vocab]`` of a full-sequence forward, on the
    model's device."""
    with torch.no_grad():
        ids = torch.tensor([token_ids], device=hf_model.device)  # [1, L]
        return hf_model(input_ids=ids).logits[0].float()  # [L, vocab]


def decode_from_bos(
    model: LlamaForCausalLM, steps: int, tokens: list[int] | None = None, kv_cache_dtype: str = "auto"
) -> tuple[torch.Tensor, list[int]]:
    """Extend BOS (id 1), then ``steps - 1`` DECODE forwards, each feeding the next of ``tokens`` (teacher forcing)
    or, when ``tokens`` is None, the argmax of the previous logits (greedy). Returns the float32 logits
    ``[steps, vocab]`` (row ``i`` predicts token ``i``) and the ``steps`` tokens fed or chosen."""
    harness = KVHarness(model, num_slots=steps + 8, kv_cache_dtype=kv_cache_dtype)
    row = harness.new_request()
    logits, fed = [harness.extend([row], [[1]])[-1]], []
    for i in range(steps):
        fed.append(int(logits[-1].argmax()) if tokens is None else tokens[i])
        if i < steps - 1:
            logits.append(harness.decode([row], [fed[-1]])[0])
    return torch.stack(logits), fed
