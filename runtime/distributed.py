"""The tensor-parallel process group a sharded model communicates over (see DESIGN.md, "Parallelism").

One ``TensorParallelGroup`` per process: its rank, the group size and the ``torch.distributed`` group (gloo on
CPU, NCCL on CUDA). The model receives it as an argument (``load_model(..., tp_group=group)``) and calls only
``all_reduce`` and ``all_gather``; with ``world_size == 1`` there is no group and both are the identity, so an
unsharded model pays nothing. How the model is split is in ``radixgen.runtime.models.tensor_parallel``.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

INIT_METHOD_SCHEMES: tuple[str, ...] = ("tcp://", "file://", "env://")


class TensorParallelGroup:
    """The ranks one model is sharded over, and the two collectives tensor parallelism needs.

    ``TensorParallelGroup()`` is the single-rank group (rank 0 of 1, no ``torch.distributed`` group). Build a
    real one with ``TensorParallelGroup.initialize`` in each of the ``world_size`` processes.

    Attributes:
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of ranks (the ``tp_size``).
        group: the ``torch.distributed`` process group, None when ``world_size == 1``. Other collectives (rank 0
            broadcasting the batch) may use it directly: ``dist.broadcast_object_list(objs, src=0, group=g.group)``.
        device: the device this rank's tensors (and so the collectives' buffers) live on.

    Raises:
        ValueError: ``world_size < 1``, ``rank`` out of range, or a group given / missing inconsistently with
            ``world_size``.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        group: dist.ProcessGroup | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TensorParallelGroup: need 0 <= rank ({rank}) < world_size ({world_size})")
        if (group is None) != (world_size == 1):
            raise ValueError("TensorParallelGroup: a process group is needed exactly when world_size > 1")
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.device = torch.device(device)

    @classmethod
    def initialize(
        cls,
        tp_size: int,
        rank: int,
        init_method: str,
        device: str | torch.device = "cpu",
        timeout_s: float | None = None,
    ) -> TensorParallelGroup:
        """Join the ``tp_size`` ranks rendezvousing at ``init_method``; every rank calls this with its own
        ``rank`` (it blocks until all have joined). ``tp_size == 1`` returns the single-rank group without
        touching ``torch.distributed``.

        The backend is NCCL for a CUDA ``device`` (this process's GPU, made current) and gloo otherwise. The group
        is this process's ``torch.distributed`` default group (torch keeps one per process); the model only uses
        it through the returned object.

        Args:
            tp_size: number of ranks.
            rank: this process's rank, ``0 <= rank < tp_size``.
            init_method: ``tcp://host:port`` (rank 0 listens there), ``file://path`` or ``env://``.
            device: this rank's device (``cpu``, ``cuda:1``, ...).
            timeout_s: how long a collective (and the rendezvous) may wait; None: torch's default.
        Raises:
            ValueError: ``tp_size``/``rank`` out of range, or an ``init_method`` of another scheme (named).
            RuntimeError: this process already has a ``torch.distributed`` group.
        """
        if tp_size < 1 or not 0 <= rank < tp_size:
            raise ValueError(f"tp_size must be >= 1 and 0 <= rank < tp_size, got tp_size={tp_size}, rank={rank}")
        device = torch.device(device)
        if tp_size == 1:
            return cls(device=device)
        if not init_method.startswith(INIT_METHOD_SCHEMES):
            raise ValueError(f"init_method {init_method!r} must start with one of {list(INIT_METHOD_SCHEMES)}")
        if dist.is_initialized():
            raise RuntimeError("TensorParallelGroup.initialize: this process already has a torch.distributed group")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            init_method=init_method,
            world_size=tp_size,
            rank=rank,
            timeout=None if timeout_s is None else timedelta(seconds=timeout_s),
        )
        return cls(rank, tp_size, dist.group.WORLD, device)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` (any shape, contiguous) over the ranks, in place; returns ``x``. Identity for one rank."""
        if self.group is not None:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x [..., n]`` along the last dim in rank order: ``[..., world_size * n]``
        (every rank passes the same shape). Returns ``x`` itself for one rank."""
        if self.group is None:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=-1)  # [..., world_size * n]

    def destroy(self) -> None:
        """Leave the group (``torch.distributed.destroy_process_group``; collectives fail afterwards); a no-op for
        one rank."""
        if self.group is not None:
            dist.destroy_process_group(self.group)
