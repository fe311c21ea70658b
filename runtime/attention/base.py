"""The attention backend interface shared by the torch and Triton backends (see DESIGN.md)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixgen.runtime.forward_batch import ForwardBatch


@dataclass(frozen=True)
class AttentionLayer:
    """Static shape of one attention layer.

    num_heads query heads share num_kv_heads K/V heads (GQA: num_heads % num_kv_heads == 0); scaling is the
    softmax scale, normally head_dim ** -0.5.
    """

    layer_id: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}")


class AttentionBackend(ABC):
    """Computes attention over the token-indexed KV pool.

    Call order per forward: ``init_forward_metadata(batch)`` once, then ``forward`` once per layer.
    ``forward`` first writes the new tokens' K/V into ``batch.token_to_kv_pool`` at ``batch.out_cache_loc``,
    then attends: EXTEND queries see their request's cached prefix (slots read through
    ``req_to_token[req_pool_indices[i], :prefix_len]``) plus the new tokens causally; DECODE queries see the
    request's whole sequence.

    Before the forward, the scheduler has written ``req_to_token[req_pool_indices[i], prefix_len:seq_len]``
    = that request's slice of ``out_cache_loc``, so a backend may read a request's whole sequence (prefix and
    new tokens) through ``req_to_token[req_pool_indices[i], :seq_len]`` once the new K/V are stored.
    """

    @abstractmethod
    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        """Precompute per-batch metadata (index tensors, masks) shared by all layers."""

    @abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch
    ) -> torch.Tensor:
        """Attention for the new tokens of ``batch``.

        Args:
            q: ``[num_tokens, num_heads * head_dim]``.
            k, v: ``[num_tokens, num_kv_heads * head_dim]`` for the new tokens (stored into the pool).
        Returns:
            ``[num_tokens, num_heads * head_dim]`` in q's dtype.
        """
