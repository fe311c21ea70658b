"""Tensor parallelism across scheduler processes (``--tp-size``): rank 0 schedules; every forward is broadcast to the
other ranks, which run the same forward over their shard of the model and of the KV pool (DESIGN.md "Parallelism").

Rank 0's ``ModelRunner.prepare`` sends a ``ForwardPlan`` — the batch layout, the KV slots of the new tokens, the
logits rows, and each request's ``req_to_token`` row up to its sequence length (the radix cache may rewrite a row's
prefix between steps, so rows travel whole) — over the tensor-parallel group (``torch.distributed`` broadcast: gloo on
CPU, NCCL on CUDA). A follower (``follow``) writes the rows into its own request table, builds the same ForwardBatch
and runs the model; the collectives inside the model (all-reduce, all-gather) then line up. Only rank 0 samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from radixgen.runtime.distributed import TensorParallelGroup
from radixgen.runtime.forward_batch import ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from radixgen.runtime.model_runner import ModelRunner
    from radixgen.runtime.schedule_batch import ScheduleBatch


@dataclass
class ForwardPlan:
    """One forward as the followers need it.

    Attributes:
        mode: ForwardMode value. input_ids / req_pool_indices / prefix_lens / extend_lens: as ``ForwardBatch.build``.
        out_cache_loc: int64 ``[num_tokens]`` KV slots of the new tokens. logits_rows: int64 ``[k]``.
        rows: int32 ``[batch, max(seq_lens)]``: ``req_to_token[req_pool_indices[i], :seq_len_i]`` (zero-padded).
    """

    mode: int
    input_ids: list[int]
    req_pool_indices: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    out_cache_loc: torch.Tensor
    logits_rows: torch.Tensor
    rows: torch.Tensor


class TPBroadcast:
    """Rank 0 → all ranks, over the tensor-parallel group (a CPU object broadcast; tensors travel pickled)."""

    def __init__(self, tp: TensorParallelGroup) -> None:
        self.tp = tp

    def send(self, obj: Any) -> None:
        dist.broadcast_object_list([obj], src=0, group=self.tp.group)

    def recv(self) -> Any:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.tp.group)
        return box[0]

    def sync(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (rank 0 sends, the others receive)."""
        if self.tp.rank == 0:
            self.send(obj)
            return obj
        return self.recv()


def plan_of(runner: ModelRunner, plan: ScheduleBatch) -> ForwardPlan:
    """Rank 0: the ForwardPlan of a scheduler batch (reads the request rows from ``runner.req_to_token_pool``)."""
    seq_lens = [p + e for p, e in zip(plan.prefix_lens, plan.extend_lens, strict=True)]
    table = runner.req_to_token_pool.req_to_token
    width = max(seq_lens, default=0)
    idx = torch.tensor(plan.req_pool_indices, dtype=torch.int64, device=table.device)
    rows = table[idx, :width].clone()  # [batch, width]; entries past a request's seq_len are ignored
    return ForwardPlan(
        int(plan.mode), list(plan.input_ids), list(plan.req_pool_indices), list(plan.prefix_lens),
        list(plan.extend_lens), plan.out_cache_loc.cpu(), plan.logits_rows_tensor(), rows.cpu(),
    )  # fmt: skip


def follow(runner: ModelRunner, channel: TPBroadcast) -> None:
    """A follower rank's loop: run every forward rank 0 broadcasts, until it broadcasts None (shutdown)."""
    table = runner.req_to_token_pool.req_to_token
    while True:
        fp: ForwardPlan | None = channel.recv()
        if fp is None:
            return
        rows = fp.rows.to(table.device)
        for i, (row, p, e) in enumerate(zip(fp.req_pool_indices, fp.prefix_lens, fp.extend_lens, strict=True)):
            table[row, : p + e] = rows[i, : p + e]
        batch = ForwardBatch.build(
            ForwardMode(fp.mode), fp.input_ids, fp.req_pool_indices, fp.prefix_lens, fp.extend_lens,
            fp.out_cache_loc, runner.req_to_token_pool, runner.token_to_kv_pool, runner.attn_backend,
            runner.decode_staging,
        )  # fmt: skip
        runner.attn_backend.init_forward_metadata(batch)
        runner.run(batch, fp.logits_rows)
