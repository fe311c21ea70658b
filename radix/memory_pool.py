"""KV memory: the request→token table, the per-layer K/V buffers and the token-slot allocator.

Layout follows SGLang's memory pool (sglang/srt/mem_cache/memory_pool.py): KV is token-granular (page size 1).
Slot 0 of the KV buffers is a reserved padding slot that is never handed out: padded gathers (rows of
``req_to_token`` past a request's length hold 0) read it harmlessly, and writes for padding tokens land there.
"""

from __future__ import annotations

import torch


class ReqToTokenPool:
    """Maps (request slot, position) → KV slot index.

    ``req_to_token``: int32 tensor ``[size, max_context_len]``. Row ``r`` belongs to one running request;
    entry ``[r, p]`` is the KV slot holding that request's token at position ``p``. Unused entries are 0
    (the padding slot).
    """

    def __init__(self, size: int, max_context_len: int, device: str | torch.device = "cpu") -> None:
        if size <= 0 or max_context_len <= 0:
            raise ValueError(f"ReqToTokenPool: size ({size}) and max_context_len ({max_context_len}) must be > 0")
        self.size = size
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=self.device)
        self._free: list[int] = list(range(size))

    def available_size(self) -> int:
        """Number of free request rows."""
        return len(self._free)

    def alloc(self) -> int | None:
        """Take one free request row; ``None`` when all rows are in use."""
        if not self._free:
            return None
        return self._free.pop()

    def free(self, row: int) -> None:
        """Return a request row; its entries are reset to the padding slot 0.

        Raises:
            ValueError: the row is out of range or already free.
        """
        if not 0 <= row < self.size:
            raise ValueError(f"ReqToTokenPool.free: row {row} out of range [0, {self.size})")
        if row in self._free:
            raise ValueError(f"ReqToTokenPool.free: row {row} is already free")
        self.req_to_token[row].zero_()
        self._free.append(row)

    def clear(self) -> None:
        self.req_to_token.zero_()
        self._free = list(range(self.size))


class TokenToKVPool:
    """Per-layer K and V buffers, indexed by KV slot.

    ``k_buffer[layer]`` and ``v_buffer[layer]``: ``[size + 1, num_kv_heads, head_dim]`` of ``dtype``; slot 0 is
    the padding slot, slots ``1..size`` are allocatable.
    """

    def __init__(
        self,
        size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if min(size, num_layers, num_kv_heads, head_dim) <= 0:
            raise ValueError("TokenToKVPool: size, num_layers, num_kv_heads and head_dim must be > 0")
        self.size = size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (size + 1, num_kv_heads, head_dim)
        # torch.empty: the OS commits pages as slots are first written, so start-up does not touch the whole pool.
        # Only the padding slot 0 is ever read without having been written (masked positions of padded
        # gathers), and it must be finite so masked-out (zero-weight) values cannot turn into NaN.
        self.k_buffer = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.v_buffer = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        for buf in (*self.k_buffer, *self.v_buffer):
            buf[0].zero_()

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes of K plus V one token occupies across all layers."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * itemsize

    def get_kv_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (K, V) buffers of one layer, each ``[size + 1, num_kv_heads, head_dim]``."""
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write K/V of new tokens.

        Args:
            loc: int64 ``[num_tokens]`` KV slots.
            k, v: ``[num_tokens, num_kv_heads, head_dim]``; cast to the pool dtype.
        """
        self.k_buffer[layer_id].index_copy_(0, loc, k.to(self.dtype))
        self.v_buffer[layer_id].index_copy_(0, loc, v.to(self.dtype))


class TokenSlotAllocator:
    """Free list of KV slots ``1..size`` (slot 0 is the padding slot and never handed out).

    ``alloc(n)`` returns the int64 slot indices ``[n]`` or ``None`` when fewer than ``n`` are free; ``free``
    returns slots. Both are O(n) tensor ops, no per-slot Python loop.
    """

    def __init__(self, size: int, device: str | torch.device = "cpu") -> None:
        if size <= 0:
            raise ValueError(f"TokenSlotAllocator: size must be > 0, got {size}")
        self.size = size
        self.device = torch.device(device)
        self.free_slots = torch.arange(1, size + 1, dtype=torch.int64, device=self.device)

    def available_size(self) -> int:
        """Number of free slots (tokens)."""
        return int(self.free_slots.numel())

    def alloc(self, n: int) -> torch.Tensor | None:
        """Take ``n`` free slots: int64 ``[n]``, or ``None`` if fewer than ``n`` are free."""
        if n < 0:
            raise ValueError(f"TokenSlotAllocator.alloc: n must be >= 0, got {n}")
        if n > self.free_slots.numel():
            return None
        out = self.free_slots[:n]
        self.free_slots = self.free_slots[n:]
        return out

    def free(self, slots: torch.Tensor) -> None:
        """Return slots (int64 ``[k]``) to the free list."""
        if slots.numel() == 0:
            return
        self.free_slots = torch.cat((self.free_slots, slots.to(torch.int64).flatten()))

    def clear(self) -> None:
        self.free_slots = torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)
