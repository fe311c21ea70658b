"""A dense, per-layer copy of the decoding batch's K/V, so decode attention runs without a per-step KV gather.

The KV pool is token-granular: a request's K/V are scattered over the pool, and the plain decode path gathers
every request's whole sequence (``[bs, seq_len, Hkv, D]``, K and V, every layer) before each SDPA call. At batch
64 and ~300 tokens that copy is ~40 MB per layer per step, the largest cost of a decode step after the GEMMs.

``DenseDecodeKV`` keeps the K/V of the current decode batch in dense buffers ``[bs, Hkv, cap, D]`` per layer
(SDPA's native layout; rows sorted by sequence length so length buckets are contiguous slices). While the
batch stays the same (same request rows in the same order, every sequence one token longer than at the previous
step, within ``cap``) a step only writes each request's new K/V into its row (``bs`` vectors per layer);
otherwise the buffers are rebuilt from the pool with one gather per layer (what every step cost before). Any
extend forward, a change of the batch, or growth past ``cap`` triggers a rebuild; so does ``invalidate()``.

With shared-prefix attention a request's row may start at a position ``start > 0`` (it then holds only the
suffix after its group's shared prefix, which is read once per group from the pool instead).

Memory: ``2 * num_layers * bs * Hkv * cap * D * itemsize``; when that exceeds ``budget_bytes`` the step is
refused (``prepare`` returns False) and the caller falls back to the gather path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixgen.radix.memory_pool import TokenToKVPool

# free positions kept past the longest sequence at a rebuild, so the next steps append without rebuilding
CAP_HEADROOM = 64


@dataclass
class DenseStep:
    """Per-step layout shared by all layers.

    Attributes:
        order: int64 ``[bs]`` batch index of each dense row (rows sorted by sequence length).
        inverse: int64 ``[bs]`` dense row of each batch index.
        write_rows: int64 ``[bs * Hkv]`` row of each (dense row, head)'s new token in the dense buffers viewed as
            ``[bs * Hkv * cap, D]``.
        buckets: ``(first_row, end_row, max_len)`` of each length bucket (contiguous dense rows).
        valid: bool ``[bs, max_len]`` position < seq_len of each dense row.
        rebuild_index: int64 ``[bs * cap]`` pool slots of every dense position when this step rebuilds, else None.
    """

    order: torch.Tensor
    inverse: torch.Tensor
    write_rows: torch.Tensor
    buckets: list[tuple[int, int, int]]
    valid: torch.Tensor
    rebuild_index: torch.Tensor | None


class DenseDecodeKV:
    """Dense K/V of the decode batch; see the module docstring.

    Args:
        budget_bytes: largest size of all layers' dense K and V together; 0 disables the copy.
        bucket: rows per length bucket (one SDPA call each).
    """

    def __init__(self, budget_bytes: int, bucket: int) -> None:
        self.budget_bytes = budget_bytes
        self.bucket = bucket
        self._key: tuple[int, ...] | None = None  # request rows (batch order) and starts of the last decode step
        self._seq_lens: list[int] = []  # their positions held, seq_len - start (batch order)
        self._order: list[int] = []  # batch index of each dense row
        self._cap = 0
        self._flat_k: list[torch.Tensor] = []  # per layer, 1-D storage reused across rebuilds
        self._flat_v: list[torch.Tensor] = []
        self._k: list[torch.Tensor] = []  # per layer [bs, Hkv, cap, D] views of the storage
        self._v: list[torch.Tensor] = []
        self._built: list[bool] = []

    def invalidate(self) -> None:
        """Forget the dense copy (the next decode step rebuilds it)."""
        self._key = None

    def prepare(
        self,
        req_pool_indices: list[int],
        seq_lens: list[int],
        req_to_token: torch.Tensor,
        num_layers: int,
        kv_shape: tuple[int, int],
        dtype: torch.dtype,
        starts: list[int] | None = None,
    ) -> DenseStep | None:
        """Plan one decode step; None (and the copy dropped) when it would exceed the budget.

        Args:
            req_pool_indices / seq_lens: per request of the batch, in batch order (lengths include the new token).
            req_to_token: the int32 request→slot table.
            num_layers: layers of the model; kv_shape: ``(Hkv, D)``; dtype: the copy's dtype (the model dtype: a
                quantized pool's K/V are held dequantized).
            starts: per request, the first position the copy holds (default 0): a request's dense row holds
                positions ``start..seq_len-1`` (e.g. only the suffix after a shared prefix); lengths in the
                returned step (``valid``, ``buckets``) count from ``start``.
        """
        bs = len(req_pool_indices)
        starts = [0] * bs if starts is None else starts
        key = (*req_pool_indices, -1, *starts)
        seq_lens = [n - s for n, s in zip(seq_lens, starts, strict=True)]  # positions held per request
        incremental = (
            key == self._key
            and max(seq_lens) <= self._cap
            and all(n == m + 1 for n, m in zip(seq_lens, self._seq_lens, strict=True))
        )
        rebuild_index = None
        device = req_to_token.device
        if not incremental:
            hkv, d = kv_shape
            cap = min(-(-(max(seq_lens) + CAP_HEADROOM) // CAP_HEADROOM) * CAP_HEADROOM, req_to_token.shape[1])
            itemsize = torch.empty((), dtype=dtype).element_size()
            if 2 * num_layers * bs * hkv * cap * d * itemsize > self.budget_bytes:
                self.release()
                return None
            order = sorted(range(bs), key=seq_lens.__getitem__)
            rows_sorted = torch.tensor([req_pool_indices[i] for i in order], dtype=torch.int64, device=device)
            first = torch.tensor([starts[i] for i in order], dtype=torch.int64, device=device)  # [bs]
            cols = (first[:, None] + torch.arange(cap, device=device)).clamp(max=req_to_token.shape[1] - 1)
            rebuild_index = req_to_token[rows_sorted[:, None], cols].to(torch.int64).reshape(-1)  # [bs * cap]
            self._allocate(num_layers, (bs, hkv, cap, d), dtype, device)
            self._key, self._order, self._cap = key, order, cap
        self._seq_lens = list(seq_lens)
        order = self._order
        lens_sorted = [seq_lens[i] for i in order]
        order_t = torch.tensor(order, dtype=torch.int64, device=device)
        inverse = torch.empty_like(order_t)
        inverse[order_t] = torch.arange(bs, device=device)
        lens_t = torch.tensor(lens_sorted, dtype=torch.int64, device=device)
        max_len = lens_sorted[-1]
        hkv = kv_shape[0]
        heads = torch.arange(bs * hkv, device=device).view(bs, hkv)  # r * Hkv + h
        write_rows = heads * self._cap + (lens_t - 1)[:, None]  # [bs, Hkv]
        ends = [min(b + self.bucket, bs) for b in range(0, bs, self.bucket)]
        buckets = [(b, e, lens_sorted[e - 1]) for b, e in zip(range(0, bs, self.bucket), ends, strict=True)]
        return DenseStep(
            order=order_t,
            inverse=inverse,
            write_rows=write_rows.view(-1),
            buckets=buckets,
            valid=torch.arange(max_len, device=device)[None, :] < lens_t[:, None],  # [bs, max_len]
            rebuild_index=rebuild_index,
        )

    def layer_kv(
        self, layer_id: int, step: DenseStep, k_new: torch.Tensor, v_new: torch.Tensor, pool: TokenToKVPool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bring layer ``layer_id``'s dense K/V up to date and return them, each ``[bs, Hkv, cap, D]``.

        ``k_new``/``v_new`` ``[bs, Hkv, D]`` (batch order) are the step's new K/V as read back from ``pool``
        (already written there); a rebuild reads the pool through ``pool.get_kv`` (dequantized to the copy's
        dtype when the pool is quantized).
        """
        dk, dv = self._k[layer_id], self._v[layer_id]
        if step.rebuild_index is not None and not self._built[layer_id]:
            bs, hkv, cap, d = dk.shape
            keys, values = pool.get_kv(layer_id, step.rebuild_index, dk.dtype)  # [bs*cap, Hkv, D] each
            dk.copy_(keys.view(bs, cap, hkv, d).transpose(1, 2))
            dv.copy_(values.view(bs, cap, hkv, d).transpose(1, 2))
            self._built[layer_id] = True
        else:
            bs, hkv, cap, d = dk.shape
            # flat row of (dense row r, head h, position p) in the [bs * Hkv * cap, D] view: (r * Hkv + h) * cap + p
            rows_k = k_new.index_select(0, step.order).to(dk.dtype).view(bs * hkv, d)  # [bs*Hkv, D] dense-row order
            rows_v = v_new.index_select(0, step.order).to(dv.dtype).view(bs * hkv, d)
            dk.view(bs * hkv * cap, d).index_copy_(0, step.write_rows, rows_k)
            dv.view(bs * hkv * cap, d).index_copy_(0, step.write_rows, rows_v)
        return dk, dv

    def _allocate(
        self, num_layers: int, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device
    ) -> None:
        """Dense buffers of ``shape`` per layer, reusing the existing storage when it is large enough."""
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        if not self._flat_k or self._flat_k[0].dtype != dtype or self._flat_k[0].numel() < numel:
            self._flat_k = [torch.empty(numel, dtype=dtype, device=device) for _ in range(num_layers)]
            self._flat_v = [torch.empty(numel, dtype=dtype, device=device) for _ in range(num_layers)]
        self._k = [t[:numel].view(shape) for t in self._flat_k]
        self._v = [t[:numel].view(shape) for t in self._flat_v]
        self._built = [False] * num_layers

    def release(self) -> None:
        """Free the dense buffers."""
        self._flat_k, self._flat_v, self._k, self._v, self._built, self._key = [], [], [], [], [], None
