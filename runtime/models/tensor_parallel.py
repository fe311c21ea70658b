"""How a Llama-family model is split over the ranks of a tensor-parallel group.

The scheme is Megatron-LM's (Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism", arXiv:1909.08053, section 3), with the head-wise attention split, KV-head replication and
vocabulary-parallel embedding / LM head as vLLM and SGLang serve it. Per decoder layer there are two all-reduces:

- ``qkv_proj`` is column-parallel by heads: rank ``r`` of ``tp`` owns query heads ``[r*Hq/tp, (r+1)*Hq/tp)`` and
  the KV heads they read — ``Hkv/tp`` of them when ``Hkv >= tp``; when ``Hkv < tp`` each KV head is replicated on
  ``tp/Hkv`` ranks and a rank holds the one KV head its query heads share. Attention then runs on the rank's
  heads alone, over a KV pool holding only those KV heads (``TPPartition.num_kv_heads``).
- ``o_proj`` is row-parallel: each rank multiplies its heads' slice of the input columns, the partial sums are
  all-reduced, and the bias is added once, after the reduce.
- ``gate_up_proj`` is column-parallel over the intermediate dimension (a contiguous range of gate rows and the
  same range of up rows), ``down_proj`` row-parallel over it (all-reduce, then bias).
- The embedding is vocabulary-parallel: rank ``r`` holds rows ``[r*P, (r+1)*P)`` (``P = ceil(V/tp)``, the last
  rank zero-padded), looks up the ids in its range, zeroes the others, and the ranks all-reduce. The LM head
  (or the tied embedding slice) gives each rank logits for its ``P`` vocabulary entries, all-gathered along the
  vocabulary (padding dropped).

Norms, RoPE, q/k norm (per head) and row-parallel biases are replicated. ``TPPartition.shard`` cuts a full
checkpoint tensor (Hugging Face name) down to a rank's part; the loader streams the checkpoint through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from radixgen.runtime.distributed import TensorParallelGroup
from radixgen.runtime.models.config import ModelConfig

# <projection>.<weight|bias> at the end of a Hugging Face tensor name
_PROJ_NAME = re.compile(r"\.(\w+)\.(weight|bias)$")


@dataclass(frozen=True)
class TPPartition:
    """One rank's share of a model (all counts are this rank's, ranges are ``[start, start + count)``).

    Attributes:
        tp_rank, tp_size: the rank and the group size.
        head_dim: width of one attention head.
        num_heads, q_head_start: this rank's query heads.
        num_kv_heads, kv_head_start: this rank's KV heads (what its KV pool holds per token and layer).
        intermediate_size, intermediate_start: this rank's range of the MLP's intermediate dimension
            (``floor(I*r/tp)`` to ``floor(I*(r+1)/tp)``: sizes differ by at most one).
        vocab_size: the full vocabulary.
        vocab_part: rows of this rank's embedding / LM-head table (``ceil(V/tp)``; the same on every rank).
        vocab_start, vocab_end: the token ids this rank's table holds (rows past ``vocab_end - vocab_start`` are
            zero padding).
    """

    tp_rank: int
    tp_size: int
    head_dim: int
    num_heads: int
    q_head_start: int
    num_kv_heads: int
    kv_head_start: int
    intermediate_size: int
    intermediate_start: int
    vocab_size: int
    vocab_part: int
    vocab_start: int
    vocab_end: int

    @classmethod
    def build(cls, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> TPPartition:
        """Rank ``tp_rank``'s share of ``config``'s model over ``tp_size`` ranks (``tp_size == 1``: the whole).

        Raises:
            ValueError: ``tp_size`` does not divide ``num_attention_heads``; ``num_key_value_heads`` is neither a
                multiple nor a divisor of ``tp_size``; ``tp_rank`` out of range (each message names the fields).
        """
        if tp_size < 1 or not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_size must be >= 1 and 0 <= tp_rank < tp_size, got {tp_size}, {tp_rank}")
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        if heads % tp_size:
            raise ValueError(f"tp_size ({tp_size}) must divide num_attention_heads ({heads})")
        if kv_heads >= tp_size and kv_heads % tp_size:
            raise ValueError(f"tp_size ({tp_size}) must divide num_key_value_heads ({kv_heads})")
        if kv_heads < tp_size and tp_size % kv_heads:
            raise ValueError(
                f"tp_size ({tp_size}) must be a multiple of num_key_value_heads ({kv_heads}) to replicate them"
            )
        local_kv = max(kv_heads // tp_size, 1)
        # Hkv >= tp: a contiguous block per rank; Hkv < tp: rank r reads KV head r // (tp / Hkv) (replicated)
        kv_start = tp_rank * local_kv if kv_heads >= tp_size else tp_rank // (tp_size // kv_heads)
        inter = config.intermediate_size
        inter_start, inter_end = inter * tp_rank // tp_size, inter * (tp_rank + 1) // tp_size
        vocab, part = config.vocab_size, -(-config.vocab_size // tp_size)
        vocab_start = min(tp_rank * part, vocab)
        return cls(
            tp_rank=tp_rank,
            tp_size=tp_size,
            head_dim=config.head_dim,
            num_heads=heads // tp_size,
            q_head_start=tp_rank * (heads // tp_size),
            num_kv_heads=local_kv,
            kv_head_start=kv_start,
            intermediate_size=inter_end - inter_start,
            intermediate_start=inter_start,
            vocab_size=vocab,
            vocab_part=part,
            vocab_start=vocab_start,
            vocab_end=min(vocab_start + part, vocab),
        )

    def shard(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the full checkpoint tensor ``name`` (a Hugging Face name such as
        ``model.layers.3.self_attn.q_proj.weight``): a view, the same tensor when ``tp_size == 1``.

        Column-parallel weights ``[out, in]`` (and their biases ``[out]``) keep a range of rows (q/k/v by head,
        gate/up by intermediate index, embedding / LM head by vocabulary id); row-parallel weights (``o_proj``,
        ``down_proj``) keep a range of columns; everything else (norms, row-parallel biases) is whole.
        """
        if self.tp_size == 1:
            return full
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            return full[self.vocab_start : self.vocab_end]  # [vocab_end - vocab_start, hidden]
        match = _PROJ_NAME.search(name)
        proj, kind = match.groups() if match else ("", "")
        d = self.head_dim
        rows = {
            "q_proj": (self.q_head_start * d, self.num_heads * d),
            "k_proj": (self.kv_head_start * d, self.num_kv_heads * d),
            "v_proj": (self.kv_head_start * d, self.num_kv_heads * d),
            "gate_proj": (self.intermediate_start, self.intermediate_size),
            "up_proj": (self.intermediate_start, self.intermediate_size),
        }
        cols = {
            "o_proj": (self.q_head_start * d, self.num_heads * d),
            "down_proj": (self.intermediate_start, self.intermediate_size),
        }
        if proj in rows:
            start, size = rows[proj]
            return full[start : start + size]  # [size, in] or [size]
        if proj in cols and kind == "weight":
            start, size = cols[proj]
            return full[:, start : start + size]  # [out, size]
        return full

    def gather_logits(self, local: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
        """Every rank's ``local [n, vocab_part]`` logits → the full ``[n, vocab_size]`` on every rank."""
        if self.tp_size == 1:
            return local
        full = tp.all_gather(local)  # [n, tp * vocab_part]
        return full if full.shape[-1] == self.vocab_size else full[:, : self.vocab_size].contiguous()


class VocabParallelEmbedding(nn.Embedding):
    """An embedding whose table is this rank's ``vocab_part`` rows (see the module docstring).

    ``forward(ids [T] int64) -> [T, hidden]``: ids outside ``[vocab_start, vocab_end)`` contribute zeros and the
    ranks' lookups are summed with one all-reduce. With one rank it is a plain embedding.
    """

    def __init__(self, partition: TPPartition, hidden_size: int, tp: TensorParallelGroup, dtype: torch.dtype) -> None:
        super().__init__(partition.vocab_part, hidden_size, dtype=dtype)
        self.partition = partition
        self.tp = tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.partition.tp_size == 1:
            return F.embedding(ids, self.weight)  # [T, hidden]
        start, end = self.partition.vocab_start, self.partition.vocab_end
        outside = (ids < start) | (ids >= end)  # [T]
        out = F.embedding((ids - start).masked_fill_(outside, 0), self.weight)  # [T, hidden]
        return self.tp.all_reduce(out.masked_fill_(outside.unsqueeze(-1), 0))


def reduce_row_parallel(partial: torch.Tensor, bias: torch.Tensor | None, tp: TensorParallelGroup) -> torch.Tensor:
    """A row-parallel layer's output: the ranks' partial products ``[T, out]`` summed (in place), then ``bias
    [out]`` (replicated) added once. With one rank: ``partial + bias``."""
    out = tp.all_reduce(partial)
    return out if bias is None else out.add_(bias)
