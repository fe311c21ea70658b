"""KV memory: the request→token table, the per-layer K/V buffers and the token-slot allocator.

Layout follows SGLang's memory pool (sglang/srt/mem_cache/memory_pool.py): KV is token-granular (page size 1).
Slot 0 of the KV buffers is a reserved padding slot that is never handed out: padded gathers (rows of
``req_to_token`` past a request's length hold 0) read it harmlessly, and writes for padding tokens land there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from radixgen.radix.kv_quant import (
    SCALE_DTYPE,
    dequantize,
    is_per_token_scaled,
    is_quantized,
    kv_cache_torch_dtype,
    quantize_per_tensor,
    quantize_per_token_head,
)


class ReqToTokenPool:
    """Maps (request slot, position) → KV slot index.

    ``req_to_token``: int32 tensor ``[size, max_context_len]``. Row ``r`` belongs to one running request;
    entry ``[r, p]`` is the KV slot holding that request's token at position ``p``. Unused entries are 0
    (the padding slot). ``req_to_token_host``: on the CPU, a numpy view of the same memory (``None`` on other
    devices), for writes of a few entries without a torch call each (a decode step's new slots).
    """

    def __init__(self, size: int, max_context_len: int, device: str | torch.device = "cpu") -> None:
        if size <= 0 or max_context_len <= 0:
            raise ValueError(f"ReqToTokenPool: size ({size}) and max_context_len ({max_context_len}) must be > 0")
        self.size = size
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=self.device)
        self.req_to_token_host = self.req_to_token.numpy() if self.device.type == "cpu" else None
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
    """Per-layer K and V buffers, indexed by KV slot, stored in the model dtype or quantized (``kv_cache_dtype``).

    ``k_buffer[layer]`` and ``v_buffer[layer]``: ``[size + 1, num_kv_heads, head_dim]`` of ``self.dtype`` (the
    storage dtype); slot 0 is the padding slot, slots ``1..size`` are allocatable. Quantized storage (see
    ``radixgen.radix.kv_quant``) also keeps float32 scales, per layer for K and for V:

    * ``int8``: ``k_scale_buffer[layer]`` / ``v_scale_buffer[layer]`` ``[size + 1, num_kv_heads]``, one scale per
      (slot, head), written together with the slot's K/V;
    * ``fp8_e4m3`` / ``fp8_e5m2``: a 0-d scale per layer (default 1.0; ``load_kv_scales`` takes a checkpoint's
      per-layer ``k_scale`` / ``v_scale`` before anything is written).

    Writers call ``set_kv_buffer`` (or ``store_kv``, which also returns what was stored); readers either take the
    raw storage with its scales (``get_kv_buffer`` + ``get_kv_scales``: the Triton kernels dequantize on load) or
    dequantized K/V of some slots (``get_kv``). Either way a slot reads back as ``stored * scale`` in float32.

    Args:
        size: allocatable slots (tokens).
        dtype: the model dtype: K/V arrive in it and ``get_kv``/``store_kv`` return it by default; the storage
            dtype when ``kv_cache_dtype`` is ``auto``.
        kv_cache_dtype: ``auto`` | ``fp8_e4m3`` | ``fp8_e5m2`` | ``int8``.

    Raises:
        ValueError: a size is not positive, or ``kv_cache_dtype`` is unknown or unsupported by this torch.
    """

    def __init__(
        self,
        size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        kv_cache_dtype: str = "auto",
    ) -> None:
        if min(size, num_layers, num_kv_heads, head_dim) <= 0:
            raise ValueError("TokenToKVPool: size, num_layers, num_kv_heads and head_dim must be > 0")
        self.size = size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.model_dtype = dtype
        self.kv_cache_dtype = kv_cache_dtype
        self.dtype = kv_cache_torch_dtype(kv_cache_dtype, dtype)  # storage dtype of the K/V buffers
        self.device = torch.device(device)
        shape = (size + 1, num_kv_heads, head_dim)
        # torch.empty: the OS commits pages as slots are first written, so start-up does not touch the whole pool.
        # Only the padding slot 0 is ever read without having been written (masked positions of padded
        # gathers), and it must be finite so masked-out (zero-weight) values cannot turn into NaN.
        self.k_buffer = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(num_layers)]
        self.v_buffer = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(num_layers)]
        self.k_scale_buffer: list[torch.Tensor] = []  # int8: per (slot, head); fp8: 0-d per layer; else empty
        self.v_scale_buffer: list[torch.Tensor] = []
        if self.quantized:
            for scales in (self.k_scale_buffer, self.v_scale_buffer):
                for _ in range(num_layers):
                    if is_per_token_scaled(self.dtype):  # written with each slot; slot 0 zeroed below
                        scales.append(torch.empty((size + 1, num_kv_heads), dtype=SCALE_DTYPE, device=self.device))
                    else:
                        scales.append(torch.ones((), dtype=SCALE_DTYPE, device=self.device))
        self._written = False
        for buf in (*self.k_buffer, *self.v_buffer, *self.k_scale_buffer, *self.v_scale_buffer):
            if buf.dim() > 0:  # not fp8's 0-d scales
                buf[0].zero_()

    @property
    def quantized(self) -> bool:
        """True when K/V are stored quantized (int8 / fp8) with scales."""
        return is_quantized(self.dtype)

    @staticmethod
    def bytes_per_token(
        num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, kv_cache_dtype: str = "auto"
    ) -> int:
        """Bytes of K plus V one token occupies across all layers, scales included: ``2 * L * Hkv * D * itemsize``,
        plus ``2 * L * Hkv * 4`` for int8's per-(token, head) float32 scales (fp8's per-layer scales are not per
        token). ``dtype`` is the model dtype (the storage dtype for ``auto``)."""
        store = kv_cache_torch_dtype(kv_cache_dtype, dtype)
        per_head = head_dim * store.itemsize
        if is_per_token_scaled(store):
            per_head += SCALE_DTYPE.itemsize
        return 2 * num_layers * num_kv_heads * per_head

    def get_kv_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw (K, V) storage of one layer, each ``[size + 1, num_kv_heads, head_dim]`` of ``self.dtype``."""
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def get_kv_scales(self, layer_id: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The (K, V) scales of one layer: float32 ``[size + 1, num_kv_heads]`` (int8), 0-d (fp8), or
        ``(None, None)`` for unquantized storage. K of slot ``s``, head ``h`` reads back as
        ``k_buffer[s, h].float() * k_scale[s, h]`` (or ``* k_scale`` for a 0-d scale)."""
        if not self.k_scale_buffer:
            return None, None
        return self.k_scale_buffer[layer_id], self.v_scale_buffer[layer_id]

    def get_kv(
        self, layer_id: int, index: torch.Tensor | slice, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the slots ``index`` (int64 ``[n]``, or a ``slice``), dequantized and cast to ``dtype``
        (default the model dtype): each ``[n, num_kv_heads, head_dim]``. Unquantized storage of the same dtype
        indexed by a slice is returned as a view (no copy)."""
        dtype = self.model_dtype if dtype is None else dtype
        k_scale, v_scale = self.get_kv_scales(layer_id)
        out = []
        for buf, scale in ((self.k_buffer[layer_id], k_scale), (self.v_buffer[layer_id], v_scale)):
            if isinstance(index, slice):
                values = buf[index]
                if scale is not None and scale.dim() > 0:
                    scale = scale[index]
            else:
                values = buf.index_select(0, index)
                if scale is not None and scale.dim() > 0:
                    scale = scale.index_select(0, index)
            out.append(dequantize(values, scale, dtype))
        return out[0], out[1]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write K/V of new tokens, quantized to the storage dtype (int8: their scales are computed here).

        Args:
            loc: int64 ``[num_tokens]`` KV slots.
            k, v: ``[num_tokens, num_kv_heads, head_dim]`` float.
        """
        self._write(layer_id, loc, k, v, None)

    def store_kv(
        self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``set_kv_buffer``, returning the K/V exactly as later reads of these slots will see them (rounded to
        the storage dtype, dequantized), cast to ``dtype`` (default the model dtype); each ``[num_tokens,
        num_kv_heads, head_dim]``. Attention over the new tokens uses these, so a forward sees what later steps
        read back."""
        out = self._write(layer_id, loc, k, v, self.model_dtype if dtype is None else dtype)
        assert out is not None
        return out

    def _write(
        self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor, read_dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Quantize and store; with ``read_dtype``, also return the stored values dequantized to it."""
        self._written = True
        k_scale, v_scale = self.get_kv_scales(layer_id)
        stored = []
        for x, buf, scale in ((k, self.k_buffer[layer_id], k_scale), (v, self.v_buffer[layer_id], v_scale)):
            if scale is None:
                q, s = x.to(self.dtype), None
            elif scale.dim() > 0:  # int8: a scale per (token, head), stored with the token
                q, s = quantize_per_token_head(x)
                scale.index_copy_(0, loc, s)
            else:  # fp8: the layer's scale
                q, s = quantize_per_tensor(x, scale, self.dtype), scale
            if q.dtype.itemsize == 1 and q.dtype.is_floating_point:  # torch has no CPU index_copy_ for float8
                buf.view(torch.uint8).index_copy_(0, loc, q.view(torch.uint8))
            else:
                buf.index_copy_(0, loc, q)
            if read_dtype is not None:
                stored.append(dequantize(q, s, read_dtype))
        return (stored[0], stored[1]) if stored else None

    def load_kv_scales(self, k_scales: Sequence[float], v_scales: Sequence[float]) -> None:
        """Per-layer fp8 scales, e.g. a checkpoint's ``model.layers.{i}.self_attn.k_scale`` / ``v_scale`` (vLLM /
        SGLang convention: stored = x / scale, read = stored * scale). Call before any K/V is written.

        Args:
            k_scales, v_scales: ``num_layers`` positive finite floats each.
        Raises:
            ValueError: the pool is not fp8, K/V were already written (they were encoded with the old scales),
                or a list has the wrong length or a non-positive / non-finite value.
        """
        if not self.quantized or is_per_token_scaled(self.dtype):
            kind = self.kv_cache_dtype
            raise ValueError(f"load_kv_scales: per-layer scales need an fp8 KV cache, this one is {kind}")
        if self._written:
            raise ValueError("load_kv_scales: K/V were already written with the previous scales")
        parsed = {}
        for name, values in (("k_scales", k_scales), ("v_scales", v_scales)):
            if len(values) != self.num_layers:
                raise ValueError(
                    f"load_kv_scales: {name} needs {self.num_layers} values (one per layer), got {len(values)}"
                )
            try:
                parsed[name] = [float(x) for x in values]
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"load_kv_scales: {name} must be numbers: {e}") from e
            bad = [x for x in parsed[name] if not 0.0 < x < float("inf")]
            if bad:
                raise ValueError(f"load_kv_scales: {name} must be positive and finite, got {bad[0]!r}")
        for i in range(self.num_layers):
            self.k_scale_buffer[i].fill_(parsed["k_scales"][i])
            self.v_scale_buffer[i].fill_(parsed["v_scales"][i])


class TokenSlotAllocator:
    """Free list of KV slots ``1..size`` (slot 0 is the padding slot and never handed out).

    ``alloc(n)`` returns the int64 slot indices ``[n]`` or ``None`` when fewer than ``n`` are free; ``free``
    returns slots. Both are O(n) tensor ops, no per-slot Python loop; ``alloc`` is one slice (a view) — the free
    list is a tensor and a head offset, so a decode step's one-slot allocation costs one torch call.
    """

    def __init__(self, size: int, device: str | torch.device = "cpu") -> None:
        if size <= 0:
            raise ValueError(f"TokenSlotAllocator: size must be > 0, got {size}")
        self.size = size
        self.device = torch.device(device)
        self.free_slots = torch.arange(1, size + 1, dtype=torch.int64, device=self.device)

    @property
    def free_slots(self) -> torch.Tensor:
        """The free slots, int64 ``[available_size()]`` (a view; allocation takes from the front)."""
        return self._slots[self._head :]

    @free_slots.setter
    def free_slots(self, slots: torch.Tensor) -> None:
        self._slots = slots  # int64 [k]: the free list from _head on
        self._head = 0
        self._num_free = int(slots.numel())

    def available_size(self) -> int:
        """Number of free slots (tokens)."""
        return self._num_free

    def alloc(self, n: int) -> torch.Tensor | None:
        """Take ``n`` free slots: int64 ``[n]``, or ``None`` if fewer than ``n`` are free."""
        if n < 0:
            raise ValueError(f"TokenSlotAllocator.alloc: n must be >= 0, got {n}")
        if n > self._num_free:
            return None
        head = self._head
        self._head, self._num_free = head + n, self._num_free - n
        return self._slots[head : head + n]

    def free(self, slots: torch.Tensor) -> None:
        """Return slots (int64 ``[k]``) to the free list."""
        if slots.numel() == 0:
            return
        self.free_slots = torch.cat((self.free_slots, slots.to(torch.int64).flatten()))

    def clear(self) -> None:
        self.free_slots = torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)
