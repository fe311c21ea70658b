"""The KV transfer's wire format: msgspec headers plus raw K/V bytes, page by page, over one ZeroMQ connection.

The decode server's DEALER socket connects to the prefill server's ROUTER socket (bound at
``tcp://<host>:<disaggregation_bootstrap_port>``); one connection carries every transfer between the two, each
named by its ``room`` (SGLang's ``bootstrap_room``: an id the decode side picks). A transfer:

1. decode → prefill ``KVFetch(room, input_ids, start)``: compute the KV of ``input_ids`` and send positions
   ``start..len(input_ids)`` (the decode side already caches ``input_ids[:start]``);
2. prefill → decode ``KVAccepted(room, layout)`` at once (the decode side checks the pool layouts match), then
   one ``KVPage`` per ``PAGE_TOKENS`` tokens once the KV is computed, then ``KVDone`` — or ``KVError`` instead;
3. decode → prefill ``KVAck(room, ok)`` when it has the whole prefix (or gives up): the prefill side unlocks it.

A ``KVPage`` is a multipart message: the header, then ``2 * num_layers`` frames, layer by layer K then V, each the
raw bytes of a ``[num_tokens, num_kv_heads, head_dim]`` tensor of the pool's storage dtype (C order). Pages are
zero-copy on the send side (ZeroMQ holds the tensors' buffers) and read with ``torch.frombuffer`` on the receive
side, then written into the pool's slots: the only copies are the gather out of the source pool and the scatter into
the destination pool, as in SGLang's disaggregation transfer engines (which do the same with RDMA).
"""

from __future__ import annotations

from typing import Any

import msgspec
import torch

from radixgen.radix.memory_pool import TokenToKVPool

#: tokens per transferred page (SGLang transfers the KV in pages of the pool's page size; our pool's page is one
#: token, so pages are a transfer unit only)
PAGE_TOKENS = 64


class KVLayout(msgspec.Struct, frozen=True):
    """The shape of one token's KV in a pool: ``num_layers`` × (K, V) of ``[num_kv_heads, head_dim]`` ``dtype``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str

    @classmethod
    def of(cls, pool: TokenToKVPool) -> KVLayout:
        """The layout of ``pool``'s storage."""
        return cls(pool.num_layers, pool.num_kv_heads, pool.head_dim, str(pool.dtype).removeprefix("torch."))

    def frame_bytes(self, num_tokens: int) -> int:
        """Bytes of one K (or V) frame of ``num_tokens`` tokens."""
        itemsize = getattr(torch, self.dtype).itemsize
        return num_tokens * self.num_kv_heads * self.head_dim * itemsize


class KVFetch(msgspec.Struct, tag=True):
    """Decode → prefill: compute the KV of ``input_ids`` and send positions ``[start, len(input_ids))``."""

    room: int
    input_ids: list[int]
    start: int


class KVAck(msgspec.Struct, tag=True):
    """Decode → prefill: the transfer ``room`` is over (``ok``: every page was written; else: abandoned)."""

    room: int
    ok: bool


class KVAccepted(msgspec.Struct, tag=True):
    """Prefill → decode: the fetch is queued; ``layout`` is the prefill pool's."""

    room: int
    layout: KVLayout


class KVPage(msgspec.Struct, tag=True):
    """Prefill → decode: positions ``[offset, offset + num_tokens)`` of the fetched ids; ``2 * num_layers`` frames
    follow."""

    room: int
    offset: int
    num_tokens: int


class KVDone(msgspec.Struct, tag=True):
    """Prefill → decode: every page of ``room`` was sent."""

    room: int


class KVError(msgspec.Struct, tag=True):
    """Prefill → decode: the fetch ``room`` failed (message: why)."""

    room: int
    message: str


ToPrefill = KVFetch | KVAck
ToDecode = KVAccepted | KVPage | KVDone | KVError
ENCODER = msgspec.msgpack.Encoder()
TO_PREFILL = msgspec.msgpack.Decoder(ToPrefill)
TO_DECODE = msgspec.msgpack.Decoder(ToDecode)


def read_page(pool: TokenToKVPool, slots: torch.Tensor) -> list[memoryview]:
    """The K/V frames of the pool slots ``slots`` (int64 ``[n]``): ``2 * num_layers`` buffers of
    ``n * num_kv_heads * head_dim * itemsize`` bytes each, layer by layer K then V (host memory; copied off the
    device if the pool is on one)."""
    frames = []
    for layer in range(pool.num_layers):
        k, v = pool.get_kv_buffer(layer)
        for buf in (k, v):
            page = buf.index_select(0, slots.to(buf.device)).cpu().contiguous()
            frames.append(memoryview(page.view(torch.uint8).numpy()))
    return frames


def write_page(pool: TokenToKVPool, layout: KVLayout, slots: torch.Tensor, frames: list[Any]) -> None:
    """Write received K/V frames (see ``read_page``; any buffer objects) into the pool slots ``slots`` (int64
    ``[n]``) of every layer.

    Raises:
        ValueError: the number of frames or a frame's size does not match ``layout`` and ``n``.
    """
    n = int(slots.numel())
    if len(frames) != 2 * layout.num_layers:
        raise ValueError(f"KV page: expected {2 * layout.num_layers} frames, got {len(frames)}")
    size = layout.frame_bytes(n)
    dtype = getattr(torch, layout.dtype)
    tensors = []
    for frame in frames:
        raw = memoryview(frame)
        if raw.nbytes != size:
            raise ValueError(f"KV page: a frame of {raw.nbytes} bytes, expected {size} for {n} tokens")
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        tensors.append(flat.view(dtype).view(n, layout.num_kv_heads, layout.head_dim).to(pool.device))
    for layer in range(layout.num_layers):
        pool.set_kv_buffer(layer, slots.to(pool.device), tensors[2 * layer], tensors[2 * layer + 1])
