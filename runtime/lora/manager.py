"""LoRAManager: the loaded adapters, the stacked slot buffers one forward reads, and which adapter sits in which slot.

S-LoRA's split (Sheng et al. 2023, "S-LoRA: Serving Thousands of Concurrent LoRA Adapters"): every loaded adapter
is kept in host memory; ``max_loras_per_batch`` slots of preallocated, stacked buffers (per layer and fused
projection: ``A [slots, in, n * R]``, one ``B [slots, R, out_i]`` per fused part, ``R = max_lora_rank``) hold the
adapters of the current batch, filled on demand and recycled least recently used first. A lower-rank adapter is
zero-padded to ``R``; a module an adapter does not adapt is zero in its slot. On the CPU the buffers are float32
(the deltas are computed in float32 whatever the model dtype) with every dimension zero-padded to a multiple of 4
elements, the 16-byte alignment ``torch._grouped_mm`` needs; on CUDA they are in the model dtype, unpadded. The
scheduler keeps the distinct adapters of a batch within the slot count, so the adapters of a batch always have
slots.

Requests hold a reference on their adapter (``acquire`` / ``release``): ``unload`` of an adapter in use only marks
it, new requests are refused at once, and the adapter goes when its last request finishes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

from radixgen.runtime.errors import LoRAError
from radixgen.runtime.lora.adapter import LoRAAdapter, module_shape
from radixgen.runtime.lora.config import LORA_SITES, LoRAConfig
from radixgen.runtime.lora.ops import LoRASegments, lora_site_torch
from radixgen.runtime.models.config import ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class LoRASiteBuffers:
    """The slot buffers of one fused projection of one layer.

    Attributes:
        a: ``[slots, in, n * R]``: part ``i``'s ``A^T`` in columns ``i*R : i*R + r`` (``in`` and ``R`` padded on CPU).
        b: per part ``i``, ``[slots, R, out_i]``: ``scaling * B^T`` in rows ``:r`` (``out_i`` padded on CPU).
        cols: per part, its ``(start, end)`` columns in the fused projection's output.
    """

    a: torch.Tensor
    b: list[torch.Tensor]
    cols: list[tuple[int, int]]


@dataclass
class LoRABatchInfo:
    """What the linear layers of one forward need to add the LoRA deltas (``ForwardBatch.lora``).

    Attributes:
        seg: the rows of each adapter (``LoRASegments``). sites: per layer, fused projection name → buffers.
        active: fused projection name → indices of its parts that some adapter of the batch adapts.
        rank: ``R``, the buffers' (padded) rank. use_triton: run ``radixgen.kernels.lora`` (CUDA) instead of torch.
    """

    seg: LoRASegments
    sites: list[dict[str, LoRASiteBuffers]]
    active: dict[str, list[int]]
    rank: int
    use_triton: bool

    def apply(self, layer_id: int, site: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out += delta`` in place for the projection ``site`` (a key of ``LORA_SITES``) of layer ``layer_id``.

        Args:
            x: ``[T, in]`` the projection's input; out: ``[T, out_total]`` its output (model dtype).
        """
        parts = self.active.get(site)
        bufs = self.sites[layer_id].get(site)
        if not parts or bufs is None:
            return
        seg, r = self.seg, self.rank
        if self.use_triton:
            from radixgen.kernels.lora import sgmv_expand_add, sgmv_shrink

            a = sgmv_shrink(x, bufs.a, seg.seg_indptr, seg.weight_indices, max_seg_len=seg.max_seg_len)  # [T, n*R]
            for i in parts:
                lo, hi = bufs.cols[i]
                sgmv_expand_add(
                    out[:, lo:hi], a[:, i * r : (i + 1) * r], bufs.b[i], seg.seg_indptr, seg.weight_indices,
                    max_seg_len=seg.max_seg_len,
                )  # fmt: skip
            return
        lora_site_torch(x, out, bufs.a, bufs.b, bufs.cols, r, parts, seg)


class LoRAManager:
    """Adapters, slots and references.

    Args:
        config: the server's ``LoRAConfig`` (start-up adapters are loaded here).
        model_config: the base model; dtype / device: of the slot buffers (the model's).

    Raises:
        LoRAError: a start-up adapter that cannot be loaded (``param`` ``lora_paths``).
    """

    def __init__(self, config: LoRAConfig, model_config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        self.config = config
        self.model_config = model_config
        self.num_slots = config.max_loras_per_batch
        self.device = device
        self.use_triton = device.type == "cuda"
        align = 1 if self.use_triton else 4  # elements: torch._grouped_mm needs 16-byte float32 strides
        dtype = dtype if self.use_triton else torch.float32

        def pad(n: int) -> int:
            return -(-n // align) * align

        self.rank = pad(config.max_lora_rank)
        r, s = self.rank, self.num_slots
        self.sites: list[dict[str, LoRASiteBuffers]] = []
        for _ in range(model_config.num_hidden_layers):
            layer: dict[str, LoRASiteBuffers] = {}
            for site, modules in LORA_SITES.items():
                if not any(m in config.lora_target_modules for m in modules):
                    continue
                fan_in = module_shape(model_config, modules[0])[0]
                outs = [module_shape(model_config, m)[1] for m in modules]
                cols, start = [], 0
                for o in outs:
                    cols.append((start, start + o))
                    start += o
                layer[site] = LoRASiteBuffers(
                    a=torch.zeros(s, pad(fan_in), len(modules) * r, dtype=dtype, device=device),
                    b=[torch.zeros(s, r, pad(o), dtype=dtype, device=device) for o in outs],
                    cols=cols,
                )
            self.sites.append(layer)
        self.adapters: dict[str, LoRAAdapter] = {}
        self.refs: dict[str, int] = {}
        self.unloading: set[str] = set()
        self.slot_uid: list[int | None] = [None] * s
        self.slot_lru: OrderedDict[int, None] = OrderedDict((i, None) for i in range(s))
        self._next_uid = 1
        for name, path in config.lora_paths:
            self.load(name, path, field_name="lora_paths")

    # ------------------------------------------------------------------ registry
    def buffer_bytes(self) -> int:
        """Bytes of the slot buffers."""
        return sum(
            t.numel() * t.element_size() for layer in self.sites for b in layer.values() for t in (b.a, *b.b)
        )

    def loaded(self) -> dict[str, str]:
        """Adapters requests may use now: name → path (those being unloaded are left out)."""
        return {n: a.path for n, a in self.adapters.items() if n not in self.unloading}

    def load(self, name: str, path: str, field_name: str = "lora_path") -> LoRAAdapter:
        """Read an adapter into host memory under ``name``.

        Raises:
            LoRAError: ``name`` is empty or already loaded (``lora_name``), or the adapter is bad (see
                ``LoRAAdapter.load``).
        """
        if not isinstance(name, str) or not name:
            raise LoRAError("lora_name", "lora_name: must be a non-empty string")
        if name in self.adapters:
            raise LoRAError("lora_name", f"lora_name: an adapter named {name!r} is already loaded")
        adapter = LoRAAdapter.load(
            name, path, self._next_uid, self.model_config, self.rank, self.config.lora_target_modules, field_name
        )
        self._next_uid += 1
        self.adapters[name] = adapter
        self.refs[name] = 0
        logger.info("LoRA adapter %r loaded from %s (rank %d, %s)", name, path, adapter.rank, sorted(adapter.modules))
        return adapter

    def unload(self, name: str) -> bool:
        """Unload ``name``: at once (True) when no request uses it, else when its last request ends (False; new
        requests for it are refused from now on).

        Raises:
            LoRAError: 404 when no adapter of that name is loaded (or it is already being unloaded).
        """
        if name not in self.adapters or name in self.unloading:
            raise LoRAError("lora_name", f"lora_name: no LoRA adapter named {name!r} is loaded", status=404)
        if self.refs[name] > 0:
            self.unloading.add(name)
            return False
        self._drop(name)
        return True

    def _drop(self, name: str) -> None:
        adapter = self.adapters.pop(name)
        del self.refs[name]
        self.unloading.discard(name)
        for slot, uid in enumerate(self.slot_uid):
            if uid == adapter.uid:
                self.slot_uid[slot] = None
        logger.info("LoRA adapter %r unloaded", name)

    def acquire(self, name: str) -> int:
        """A request starts using ``name``; returns the adapter's ``uid`` (its radix-cache namespace).

        Raises:
            LoRAError: 404 when ``name`` is not loaded or is being unloaded (``lora_path``).
        """
        if name not in self.adapters or name in self.unloading:
            raise LoRAError("lora_path", f"lora_path: no LoRA adapter named {name!r} is loaded", status=404)
        self.refs[name] += 1
        return self.adapters[name].uid

    def release(self, name: str) -> bool:
        """A request using ``name`` ended; True when that completed a pending unload."""
        self.refs[name] -= 1
        if self.refs[name] == 0 and name in self.unloading:
            self._drop(name)
            return True
        return False

    # ------------------------------------------------------------------ slots
    def prepare(self, names: list[str | None], extend_lens: list[int]) -> LoRABatchInfo | None:
        """Put the batch's adapters into slots and describe its rows; None when no request uses an adapter.

        Args:
            names: per request, its adapter (None: the base model). extend_lens: per request, its new tokens.
        Raises:
            RuntimeError: more distinct adapters than slots (the scheduler's admission prevents it).
        """
        distinct = list(dict.fromkeys(n for n in names if n is not None))
        if not distinct:
            return None
        if len(distinct) > self.num_slots:
            raise RuntimeError(f"{len(distinct)} adapters in one batch; --max-loras-per-batch is {self.num_slots}")
        slot_of: dict[str, int] = {}
        for name in distinct:
            uid = self.adapters[name].uid
            if uid in self.slot_uid:
                slot_of[name] = self.slot_uid.index(uid)
        for name in distinct:
            if name not in slot_of:
                taken = set(slot_of.values())
                victim = next(s for s in self.slot_lru if s not in taken)  # least recently used, not in this batch
                self._fill(victim, self.adapters[name])
                slot_of[name] = victim
        for slot in slot_of.values():
            self.slot_lru.move_to_end(slot)
        modules = set().union(*(self.adapters[n].modules for n in distinct))
        active = {site: [i for i, m in enumerate(mods) if m in modules] for site, mods in LORA_SITES.items()}
        seg = LoRASegments.build(
            [-1 if n is None else slot_of[n] for n in names], extend_lens, self.num_slots, self.device
        )
        return LoRABatchInfo(seg, self.sites, active, self.rank, self.use_triton)

    @torch.no_grad()
    def _fill(self, slot: int, adapter: LoRAAdapter) -> None:
        """Copy ``adapter`` into ``slot`` of every buffer (zero where it adapts nothing)."""
        for layer_id, layer in enumerate(self.sites):
            for site, bufs in layer.items():
                bufs.a[slot].zero_()
                for i, module in enumerate(LORA_SITES[site]):
                    b = bufs.b[i]
                    b[slot].zero_()
                    pair = adapter.weights.get((layer_id, module))
                    if pair is None:
                        continue
                    a_t, b_t = pair  # [in, r], [r, out]
                    fan_in, r = a_t.shape
                    bufs.a[slot, :fan_in, i * self.rank : i * self.rank + r] = a_t.to(bufs.a.dtype)
                    b[slot, :r, : b_t.shape[1]] = b_t.to(b.dtype)
        self.slot_uid[slot] = adapter.uid

    def check_integrity(self) -> None:
        """Slots hold loaded adapters only, each at most once; references are non-negative; only adapters with
        references are pending unload.

        Raises:
            AssertionError: naming the broken invariant.
        """
        uids = {a.uid for a in self.adapters.values()}
        held = [u for u in self.slot_uid if u is not None]
        assert len(held) == len(set(held)), f"an adapter occupies two slots: {self.slot_uid}"
        assert set(held) <= uids, f"a slot holds an unloaded adapter: {self.slot_uid}"
        assert set(self.refs) == set(self.adapters), "reference counts and adapters differ"
        assert all(v >= 0 for v in self.refs.values()), f"negative reference count: {self.refs}"
        assert all(self.refs[n] > 0 for n in self.unloading), "an unused adapter is pending unload"
        assert sorted(self.slot_lru) == list(range(self.num_slots)), "slot LRU order lost a slot"
